"""The frozen-prefix feature cache changes nothing but the time."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from freezetune.config import RULES, ConfigError, from_dict, read_records
from freezetune.plan import apply_plan, describe, plan_from_config
from freezetune.record import TIMING_KEYS, Summary
from freezetune.report import render_cache
from freezetune.train import (
    CacheAction,
    CacheDecision,
    CachePolicy,
    CacheRefused,
    Compute,
    Weighing,
    build_cache,
    cache_pays,
    cache_policy,
    cache_skip_reason,
    check_split,
    in_order,
    prefix_problem,
    prepare_model,
    preview_cache,
    probe_images,
    run,
    split_model,
)

# One epoch with the cache forced on: under auto a one-epoch run skips the cache (the build costs
# what the epoch would spend in the prefix anyway), and these tests are about the cache itself.
ONE_EPOCH_CACHED = {"train.epochs": 1, "train.cache_features": "on"}


# Not conftest's tiny run: frozen until layer3, 40 + 16 images, 2 epochs of SGD with momentum and
# weight decay: the cached and uncached runs must agree over several steps and an epoch boundary.
def cfg(tmp: Path, name: str, **edits: object):
    tree = {
        "name": name,
        "seed": 3,
        "model": {"arch": "freezetune_testnets:resnet18_narrow", "num_classes": 3},
        "data": {"dataset": "fake", "image_size": 32, "batch_size": 8, "train_samples": 40, "val_samples": 16},
        "freeze": {"preset": "until:layer3"},
        "train": {
            "epochs": 2,
            "output_dir": str(tmp / name),
            "optimizer": {"name": "sgd", "lr": 0.02, "momentum": 0.9, "weight_decay": 1e-3},
        },
    }
    for key, value in edits.items():
        node = tree
        *parents, last = key.split(".")
        for part in parents:
            node = node[part]
        node[last] = value
    return from_dict(tree)


# For the runs that compare cached with uncached training, to the bit: 24 px still leaves layer2's
# output (until:layer3's cache) 3 x 3 maps, so a layout mistake (channels-last) still shows, and 24
# images in batches of 8 still make three steps an epoch and an epoch boundary; about half the
# convolutions and 60 % of the images of cfg's, which a CPU runs in bf16 slowly. Not 16 px: there
# layer4 sees 1 x 1 maps, bf16 training diverged, and the channels-last pair no longer agreed.
SMALL = {"data.image_size": 24, "data.train_samples": 24, "data.val_samples": 8}


def metrics(tmp: Path, name: str) -> list[dict]:
    return [json.loads(line) for line in (tmp / name / "metrics.jsonl").read_text().splitlines()]


def weights(tmp: Path, name: str) -> dict[str, torch.Tensor]:
    return torch.load(tmp / name / "model.pt", weights_only=True)["model"]


@pytest.mark.parametrize("preset", ["until:layer3", "linear_probe"])
def test_cache_on_and_off_train_the_same_model(tmp_path: Path, preset: str) -> None:
    on = run(cfg(tmp_path, "on", **SMALL, **{"freeze.preset": preset, "train.cache_features": "on"})).summary
    off = run(cfg(tmp_path, "off", **SMALL, **{"freeze.preset": preset, "train.cache_features": "off"})).summary
    assert on.cache["used"] and not off.cache["used"]
    for a, b in zip(metrics(tmp_path, "on"), metrics(tmp_path, "off"), strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-5)
        assert a["val_loss"] == pytest.approx(b["val_loss"], abs=1e-5)
        assert a["val_acc"] == pytest.approx(b["val_acc"], abs=1e-5)
    w_on, w_off = weights(tmp_path, "on"), weights(tmp_path, "off")
    for key in w_on:
        torch.testing.assert_close(w_on[key], w_off[key], atol=1e-5, rtol=1e-4)
    assert on.frozen_unchanged and off.frozen_unchanged
    # The prefix's weights stay in memory with the cache: counted all the same.
    for key in ("param_bytes_trainable", "param_bytes_frozen", "optimizer_state_bytes"):
        assert on.memory[key] == off.memory[key], key


def test_cache_beyond_its_memory_budget_is_a_memory_mapped_file(tmp_path: Path) -> None:
    summary = run(cfg(tmp_path, "mm", **{"train.cache_max_bytes": 0, **ONE_EPOCH_CACHED})).summary
    assert summary.cache["storage"] == "memmap"
    assert summary.cache["bytes"] > 40 * 16 * 4 * 4 * 4  # layer2: 16 channels at 4x4 (the narrow resnet18)
    assert not (tmp_path / "mm" / "cache_train.npy").exists()  # the spill is removed when the run finishes
    in_memory = run(cfg(tmp_path, "mem", **ONE_EPOCH_CACHED)).summary
    assert in_memory.cache["storage"] == "memory"
    assert metrics(tmp_path, "mm")[0]["train_loss"] == pytest.approx(
        metrics(tmp_path, "mem")[0]["train_loss"], abs=1e-6
    )


def test_random_augmentation_is_refused_with_on_and_falls_back_with_auto(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="train.cache_features: 'on'.*data.augment: flip_crop gives every epoch"):
        run(cfg(tmp_path, "aug_on", **{"data.augment": "flip_crop", "train.cache_features": "on", "train.epochs": 1}))
    assert not (tmp_path / "aug_on").exists()  # refused before anything was written
    summary = run(cfg(tmp_path, "aug_auto", **{"data.augment": "flip_crop", "train.epochs": 1})).summary
    assert summary.cache["used"] is False and "data.augment: flip_crop" in summary.cache["reason"]


def test_batchnorm_in_train_mode_ends_the_cached_prefix(tmp_path: Path) -> None:
    # bn1's statistics follow the batch in train mode: the cut comes before it, after conv1.
    summary = run(
        cfg(tmp_path, "bn", **{"freeze.batchnorm": "train", "train.cache_features": "on", "train.epochs": 1})
    ).summary
    assert summary.cache["used"] is True and summary.cache["frontier"] == "conv1"
    assert summary.cache["first_trainable"] == "bn1"


def test_nothing_frozen_first_means_nothing_to_cache(tmp_path: Path) -> None:
    summary = run(cfg(tmp_path, "full", **{"freeze.preset": "full", "train.epochs": 1})).summary
    assert summary.cache["used"] is False and "no frozen prefix" in summary.cache["reason"]


def planned(arch: str, preset: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.get_model(arch, num_classes=4)
    apply_plan(model, plan_from_config(describe(model), preset, [], "eval", "eval"))  # the config's defaults
    return model


def test_mobilenet_splits_and_matches() -> None:
    model = planned("mobilenet_v3_small", "until:features.6")
    split = split_model(model)
    assert split.first_trainable.startswith("features_6")
    assert prefix_problem(augment="none") is None
    assert check_split(model, split, torch.randn(2, 3, 64, 64)) <= 1e-5
    # The suffix is the model's own modules: its parameters are the model's, by identity.
    model_params = {id(p) for p in model.parameters()}
    assert {id(p) for p in split.suffix.parameters()} <= model_params


def test_the_cut_comes_before_a_dropout_that_feeds_the_head() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.Dropout(0.2), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 2)
    )
    for frozen_modules in ("eval", "train"):  # the Dropout feeds the trainable head: it trains either way
        apply_plan(model, plan_from_config(describe(model), "linear_probe", [], "eval", frozen_modules))
        split = split_model(model.train())
        assert (split.frontier, split.first_trainable) == ("_0", "_1")  # cached: the conv's output
        x = torch.randn(2, 3, 8, 8)
        assert check_split(model, split, x) == 0.0
        torch.manual_seed(1)
        whole = model(x)
        torch.manual_seed(1)
        assert torch.equal(split.suffix(split.prefix(x)), whole)  # the same Dropout draw in train mode


def test_a_dropout_in_the_frozen_part_is_pinned_so_the_cut_passes_it() -> None:
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3),
        torch.nn.Dropout(0.2),
        torch.nn.Conv2d(4, 4, 1),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 6 * 6, 2),
    )
    rules = read_records(RULES, [{"freeze": "*"}, {"unfreeze": "4"}], "freeze.rules")
    apply_plan(model, plan_from_config(describe(model), None, rules, "eval", "eval"))
    assert split_model(model.train()).frontier == "_3"  # Dropout '1' is frozen and pinned in eval
    apply_plan(model, plan_from_config(describe(model), None, rules, "eval", "train"))
    split = split_model(model.train())  # left in train mode, it is random: the cut moves before it
    assert (split.frontier, split.first_trainable) == ("_0", "_1")


class _FunctionalDropout(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.dropout(x, 0.3, self.training)


def test_a_mode_baked_into_the_traced_graph_is_refused() -> None:
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), _FunctionalDropout(), torch.nn.Flatten(), torch.nn.Linear(144, 2)
    )
    apply_plan(model, plan_from_config(describe(model), "linear_probe", [], "eval"))
    with pytest.raises(CacheRefused, match="with its train/eval switch fixed when torch.fx traced"):
        split_model(model)


def test_stochastic_depth_stays_a_module_so_efficientnet_splits() -> None:
    model = planned("efficientnet_b0", "until:features.4")
    split = split_model(model)
    assert split.first_trainable.startswith("features_4")
    assert check_split(model, split, torch.randn(2, 3, 32, 32)) <= 1e-5


def test_a_split_that_does_not_reproduce_the_model_is_refused() -> None:
    model = planned("resnet18", "until:layer3")
    split = split_model(model)
    split.prefix = torch.nn.Sequential(split.prefix, _Scale(1.001))
    with pytest.raises(CacheRefused, match="differs from model"):
        check_split(model, split, torch.randn(2, 3, 32, 32))


class _Scale(torch.nn.Module):
    def __init__(self, k: float) -> None:
        super().__init__()
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.k


# ------------------------------------------------------------------ precision


def results(tmp: Path, name: str) -> list[dict]:
    """metrics.jsonl without its timings."""
    return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in metrics(tmp, name)]


def feature_bytes(summary: Summary) -> int:
    """The cache's bytes without its int64 labels."""
    c = summary.cache
    return c["bytes"] - 8 * (c["train_shape"][0] + c["val_shape"][0])


@pytest.mark.parametrize("preset", ["until:layer3", "linear_probe"])
def test_bf16_cache_trains_bitwise_the_uncached_model_in_half_the_bytes(tmp_path: Path, preset: str) -> None:
    bf16 = {"freeze.preset": preset, "train.precision": "bf16", **SMALL}
    on = run(cfg(tmp_path, "on", **bf16, **{"train.cache_features": "on"})).summary
    off = run(cfg(tmp_path, "off", **bf16, **{"train.cache_features": "off"})).summary
    one_step = {"freeze.preset": preset, **ONE_EPOCH_CACHED, "train.max_steps_per_epoch": 1, **SMALL}
    fp32 = run(cfg(tmp_path, "fp32", **one_step)).summary
    assert on.cache["dtype"] == "bfloat16" and fp32.cache["dtype"] == "float32"
    assert on.cache["train_shape"] == fp32.cache["train_shape"]
    assert 2 * feature_bytes(on) == feature_bytes(fp32)
    # The suffix sees bitwise the features the uncached forward computes: the same run, to the bit.
    assert results(tmp_path, "on") == results(tmp_path, "off")
    w_on, w_off = weights(tmp_path, "on"), weights(tmp_path, "off")
    assert w_on.keys() == w_off.keys()
    assert all(torch.equal(w_on[k], w_off[k]) for k in w_on)
    assert on.frozen_unchanged and off.frozen_unchanged


def test_bf16_cache_spilled_to_a_file_is_the_cache_in_memory(tmp_path: Path) -> None:
    bf16 = {"freeze.preset": "linear_probe", "train.precision": "bf16", **ONE_EPOCH_CACHED}
    spilled = run(cfg(tmp_path, "mm", **bf16, **{"train.cache_max_bytes": 0})).summary
    in_memory = run(cfg(tmp_path, "mem", **bf16)).summary
    assert spilled.cache["storage"] == "memmap" and in_memory.cache["storage"] == "memory"
    assert spilled.cache["dtype"] == "bfloat16" and spilled.cache["bytes"] == in_memory.cache["bytes"]
    assert metrics(tmp_path, "mm")[0]["train_loss"] == metrics(tmp_path, "mem")[0]["train_loss"]
    w_mm, w_mem = weights(tmp_path, "mm"), weights(tmp_path, "mem")
    assert all(torch.equal(w_mm[k], w_mem[k]) for k in w_mm)


def test_build_cache_under_autocast_stores_what_the_prefix_produces(tmp_path: Path) -> None:
    model = planned("resnet18", "until:layer3").to(memory_format=torch.channels_last)
    split = split_model(model)
    images = torch.utils.data.TensorDataset(torch.randn(10, 3, 32, 32), torch.arange(10))
    compute = Compute(torch.device("cpu"), "bf16", channels_last=True)
    with torch.autocast("cpu", torch.bfloat16), torch.no_grad():
        expected = split.prefix(images.tensors[0].to(memory_format=torch.channels_last))
    assert expected.dtype == torch.bfloat16 and expected.is_contiguous(memory_format=torch.channels_last)
    in_memory = build_cache(model, split, in_order((images, images), 4), compute, 2**30, tmp_path)
    spilled = build_cache(model, split, in_order((images, images), 4), compute, 0, tmp_path)
    assert (in_memory.storage, spilled.storage) == ("memory", "memmap")
    for cache in (in_memory, spilled):
        assert cache.dtype == torch.bfloat16 and cache.to_json()["dtype"] == "bfloat16"
        assert torch.equal(cache.train.tensors[0], expected) and torch.equal(cache.val.tensors[0], expected)
        assert cache.bytes == 2 * expected.numel() * 2 + 2 * 10 * 8
    # numpy has no bfloat16: the file holds the bits as int16, read back as the same bfloat16 values.
    on_disk = np.load(tmp_path / "cache_train.npy")
    assert on_disk.dtype == np.int16 and on_disk.shape == tuple(expected.shape)
    assert torch.equal(torch.from_numpy(on_disk).view(torch.bfloat16), expected)


class _SlowImages(torch.utils.data.Dataset):
    """Images that take ``delay`` seconds each to arrive, as decoding a large PNG does."""

    def __init__(self, x: torch.Tensor, delay: float) -> None:
        self.x, self.delay = x, delay

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        time.sleep(self.delay)
        return self.x[i], i


def test_build_cache_says_how_much_of_its_time_went_to_reading_the_images(tmp_path: Path) -> None:
    # What plan and auto predict is the prefix's work; the loader's share of a build is shown beside it.
    model = planned("resnet18", "until:layer3")
    split = split_model(model)
    x = torch.randn(6, 3, 32, 32)
    slow, quick = _SlowImages(x, 0.05), _SlowImages(x, 0.0)
    cache = build_cache(model, split, in_order((slow, slow), 4), Compute(torch.device("cpu")), 2**30, tmp_path)
    assert 0.6 <= cache.load_s <= cache.build_s and cache.to_json()["load_s"] == cache.load_s
    fast = build_cache(model, split, in_order((quick, quick), 4), Compute(torch.device("cpu")), 2**30, tmp_path)
    assert fast.load_s < 0.3 and torch.equal(fast.train.tensors[0], cache.train.tensors[0])


@pytest.mark.parametrize("channels_last", [False, True])
def test_check_split_runs_in_the_runs_precision(channels_last: bool) -> None:
    model = planned("resnet18", "until:layer3")
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    split = split_model(model)
    x = torch.randn(2, 3, 32, 32)
    assert check_split(model, split, x, Compute(torch.device("cpu"), "bf16", channels_last)) == 0.0
    split.prefix = torch.nn.Sequential(split.prefix, _Scale(1.1))  # beyond bf16's tolerance
    with pytest.raises(CacheRefused, match="differs from model"):
        check_split(model, split, x, Compute(torch.device("cpu"), "bf16", channels_last))


# The linear probe's cached features are 2-D: the step must leave them out of channels-last.
@pytest.mark.parametrize("preset", ["until:layer3", "linear_probe"])
def test_bf16_channels_last_cache_trains_bitwise_the_uncached_model(tmp_path: Path, preset: str) -> None:
    edits = {"freeze.preset": preset, "train.precision": "bf16", "train.channels_last": True, "train.epochs": 1} | SMALL
    on = run(cfg(tmp_path, "on", **edits, **{"train.cache_features": "on"})).summary
    run(cfg(tmp_path, "off", **edits, **{"train.cache_features": "off"}))
    assert on.cache["used"] and on.cache["dtype"] == "bfloat16"
    assert metrics(tmp_path, "on")[0]["train_loss"] == metrics(tmp_path, "off")[0]["train_loss"]
    w_on, w_off = weights(tmp_path, "on"), weights(tmp_path, "off")
    assert all(torch.equal(w_on[k], w_off[k]) for k in w_on)


def test_plan_predicts_the_cache_in_the_compute_dtype() -> None:
    model = planned("resnet18", "until:layer3")
    previews = {}
    for precision in ("fp32", "bf16"):
        c = cfg(Path("unused"), "p", **{"train.precision": precision})
        policy = CachePolicy.of(c, 100, 0, torch.device("cpu"))
        previews[precision] = policy.decide(model, policy.probe_batch(32), None, None)
    fp32, bf16 = previews["fp32"], previews["bf16"]
    assert (fp32.feature_dtype, bf16.feature_dtype) == (torch.float32, torch.bfloat16)
    assert fp32.feature_shape == bf16.feature_shape == (128, 4, 4)
    assert fp32.bytes == 100 * (128 * 4 * 4 * 4 + 8) and bf16.bytes == 100 * (128 * 4 * 4 * 2 + 8)
    assert "'layer2_1_relu_1' (128x4x4 per image)" in render_cache([(1, fp32)], "auto", 100)
    assert "'layer2_1_relu_1' (128x4x4 bfloat16 per image)" in render_cache([(1, bf16)], "auto", 100)


def test_cache_pays_when_the_epochs_left_repeat_more_prefix_work_than_the_build() -> None:
    assert cache_pays(epochs_left=2, batches_per_epoch=7, batches_to_build=7)
    assert not cache_pays(epochs_left=1, batches_per_epoch=7, batches_to_build=7)  # a tie: the copy is extra
    assert not cache_pays(epochs_left=3, batches_per_epoch=2, batches_to_build=7)  # max_steps_per_epoch: 1
    assert cache_pays(epochs_left=4, batches_per_epoch=2, batches_to_build=7)


def test_a_build_pays_only_for_more_than_its_build_and_set_up_and_a_tie_is_no_build() -> None:
    # 2 epochs of 6 batches at 1 s: 12 s of prefix work without a cache, a 6 s build with one.
    tie = Weighing(epochs_left=2, batches_per_epoch=6, build_batches=6, batch_s=1.0, setup_s=6.0)
    assert (tie.prefix_s, tie.build_s, tie.predicted_saving_s) == (12.0, 6.0, 0.0) and not tie.pays
    assert not cache_pays(2, 6, 6, setup_batches=6.0)
    counted = Weighing(2, 6, 6, batch_s=1.0, setup_s=7.0)  # the build alone (6 s) is under the saving
    assert counted.build_s < counted.prefix_s and not counted.pays and counted.predicted_saving_s == -1.0
    assert "no more than its ~7.00s set-up" in cache_skip_reason(counted)
    assert Weighing(2, 6, 6, batch_s=1.0, setup_s=5.0).pays
    assert not Weighing(2, 6, 6, batch_s=0.0, setup_s=0.1).pays  # an untimeable prefix saves nothing
    assert Weighing(2, 6, 6, batch_s=0.0).pays  # no set-up: the batch counts decide, as before
    assert "no more batches than a build" in cache_skip_reason(Weighing(1, 6, 6, batch_s=1.0))


def test_reading_the_images_counts_on_both_sides_of_the_weighing() -> None:
    # A build reads every image once; every uncached epoch reads them again; a cached one reads none.
    # 7 s of set-up sinks a 1 s/batch prefix alone (above); with 1 s/batch of reading it pays.
    read = Weighing(2, 6, 6, batch_s=1.0, setup_s=7.0, load_s=1.0)
    assert (read.prefix_s, read.build_s, read.predicted_saving_s) == (24.0, 12.0, 5.0) and read.pays
    assert "of prefix work and reading images over" in cache_skip_reason(Weighing(2, 6, 6, 1.0, 13.0, 1.0))
    assert "of prefix work over" in cache_skip_reason(Weighing(2, 6, 6, 1.0, 7.0))


class _Unreadable(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        raise OSError(f"cannot identify image file 'val/a/{i}.png'")


def test_plan_reads_and_times_the_first_validation_batch_and_still_previews_when_it_cannot(
    setup_free: None,
) -> None:
    c = cfg(Path("unused"), "preview", **{"freeze.preset": "until:layer3", "train.cache_features": "auto"})
    p = prepare_model(c)
    readable = _SlowImages(torch.randn(8, 3, 32, 32), 0.01)
    (_, read), *_ = preview_cache(c, p.model, p.schedule, p.device, (40, 16), readable)
    assert read.action is CacheAction.BUILD and read.load_s == pytest.approx(0.08, rel=0.5)
    # An image training's check would refuse (with the fix) does not stop plan: no reading counted.
    (_, unread), *_ = preview_cache(c, p.model, p.schedule, p.device, (40, 16), _Unreadable())
    assert unread.action is CacheAction.BUILD and unread.load_s == 0.0


@pytest.mark.parametrize(("workers", "counted"), [(0, True), (2, False)])
def test_a_decision_counts_the_reading_it_timed_unless_workers_read_ahead(workers: int, counted: bool) -> None:
    c = cfg(Path("unused"), "read", **{"data.num_workers": workers})
    policy = CachePolicy.of(c, 24, 8, torch.device("cpu"))
    d = policy.decide(planned("resnet18", "until:layer3"), torch.randn(8, 3, 32, 32), None, 3, read_s=0.5)
    assert d.weighed is not None and d.load_s == d.weighed.load_s == (0.5 if counted else 0.0)
    assert d.build_s == pytest.approx((d.batch_s + d.load_s) * policy.build_batches)
    assert d.reading_s == pytest.approx(d.load_s * policy.build_batches)  # what plan and the build's log show
    assert d.to_json()["load_s"] == d.load_s


def test_the_cut_is_checked_and_the_prefix_timed_on_a_few_images_where_they_are_large() -> None:
    assert [probe_images(16, size) for size in (16, 32, 64, 224, 384)] == [16, 16, 16, 5, 4]
    assert probe_images(64, 32) == 64 and probe_images(64, 64) == 64 and probe_images(64, 112) == 20


def test_a_decision_counts_its_set_up_and_skips_a_build_the_batch_counts_alone_would_make(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # At 16 px resnet18's trace and check of the cut cost many times the ~1 ms a batch's prefix
    # takes, so the 8 batches of prefix work 3 epochs save over the build cannot pay for them.
    c = cfg(tmp_path, "setup", **{"data.image_size": 16, "freeze.preset": "until:layer2"})
    policy = CachePolicy.of(c, 24, 8, torch.device("cpu"))
    timed: list[int] = []
    check = cache_policy.check_and_time_split

    def spy(model: torch.nn.Module, split: object, x: torch.Tensor, *args: object) -> object:
        timed.append(len(x))
        return check(model, split, x, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(cache_policy, "check_and_time_split", spy)
    d = policy.decide(planned("resnet18", "until:layer2"), torch.randn(8, 3, 16, 16), None, epochs_left=3)
    w = d.weighed
    assert timed == [8] and w is not None and d.setup_s == w.setup_s > 0
    assert cache_pays(w.epochs_left, w.batches_per_epoch, w.build_batches)  # 12 batches against 4
    assert w.prefix_s > w.build_s and w.setup_s > w.prefix_s - w.build_s
    assert d.action is CacheAction.SKIP and not w.pays and "set-up (tracing, checking the cut, timing)" in d.reason
    assert d.build_s == w.build_s == w.batch_s * 4 and d.to_json()["setup_s"] == w.setup_s


@pytest.fixture
def setup_free(cache_setup_free: Callable[[], contextlib.AbstractContextManager[None]]) -> Iterator[None]:
    """auto decided by the batch counts alone (conftest's cache_setup_free): these tests are about
    what a build, an extension or a skip does."""
    with cache_setup_free():
        yield


def _grown(tmp_path: Path, name: str, epochs: int, cache: str) -> Summary:
    """until:layer2, then layer2 frozen too from epoch 2: the frozen prefix grows mid-run."""
    edits = {"freeze.preset": "until:layer2", "freeze.schedule": [{"epoch": 2, "freeze": "layer2"}]}
    small = {"data.image_size": 16, "data.train_samples": 24, "data.val_samples": 8}  # test time, not coverage
    return run(cfg(tmp_path, name, **edits, **small, **{"train.epochs": epochs, "train.cache_features": cache})).summary


def test_a_grown_prefix_extends_the_cache_from_its_features_and_trains_bitwise_the_uncached_run(
    tmp_path: Path, setup_free: None
) -> None:
    on, off = _grown(tmp_path, "grown", 3, "auto"), _grown(tmp_path, "grown_off", 3, "off")
    first, second = on.cache["builds"]
    assert first["frontier"].startswith("layer1") and not first["extended"]
    assert second["frontier"].startswith("layer2") and second["extended"]  # layer2 run over layer1's features
    assert on.cache["frontier"] == second["frontier"]
    assert [d["built"] for d in on.cache["decisions"]] == [True, True]  # 3, then 2 epochs left
    assert results(tmp_path, "grown") == results(tmp_path, "grown_off")
    w_on, w_off = weights(tmp_path, "grown"), weights(tmp_path, "grown_off")
    assert all(torch.equal(w_on[k], w_off[k]) for k in w_on) and on.frozen_unchanged and off.frozen_unchanged


def test_a_cache_that_would_not_pay_is_skipped_and_the_earlier_one_kept(
    tmp_path: Path, setup_free: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    traced: list[str] = []
    trace = CachePolicy._checked
    monkeypatch.setattr(CachePolicy, "_checked", lambda self, *a: traced.append("trace") or trace(self, *a))
    on, off = _grown(tmp_path, "late", 2, "auto"), _grown(tmp_path, "late_off", 2, "off")
    (build,) = on.cache["builds"]  # layer2 frozen for the last epoch only: one epoch cannot pay for a build
    assert build["frontier"].startswith("layer1")
    # Epoch 2's decision comes from the batch counts alone: one epoch runs the prefix over no more
    # batches than a build, whatever it costs, so nothing is traced, checked or timed for it.
    assert [d["built"] for d in on.cache["decisions"]] == [True] and traced == ["trace"]
    assert on.cache["used"] and on.cache["frontier"] == build["frontier"]  # layer2 runs, frozen, in the suffix
    assert results(tmp_path, "late") == results(tmp_path, "late_off")
    w_on, w_off = weights(tmp_path, "late"), weights(tmp_path, "late_off")
    assert all(torch.equal(w_on[k], w_off[k]) for k in w_on) and on.frozen_unchanged and off.frozen_unchanged


def _decisions_of_plan_and_train(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, **edits: object):
    """(plan's preview, the decisions train made, summary.json): plan's previews come from
    preview_cache, train's from its run, each through a spy on the one CachePolicy.decide."""
    calls: list[CacheDecision] = []
    decide = CachePolicy.decide

    def spy(self: CachePolicy, *args: object, **kwargs: object) -> CacheDecision:
        calls.append(decide(self, *args, **kwargs))  # type: ignore[arg-type]
        return calls[-1]

    monkeypatch.setattr(CachePolicy, "decide", spy)
    small = {"data.image_size": 16, "data.train_samples": 24, "data.val_samples": 8}
    c = cfg(tmp_path, name, **small, **edits)
    p = prepare_model(c)
    previews = preview_cache(c, p.model, p.schedule, p.device, (24, 8))
    assert [d for _, d in previews] == calls  # every preview is what decide answered
    planned = len(calls)
    summary = run(c).summary
    return previews, calls[planned:], summary


@pytest.mark.parametrize(
    ("epochs", "event", "actions"),
    [
        (3, {"epoch": 2, "freeze": "layer2"}, [CacheAction.BUILD, CacheAction.EXTEND]),
        (2, {"epoch": 2, "freeze": "layer2"}, [CacheAction.BUILD, CacheAction.KEEP]),  # kept: a build would not pay
        (2, {"epoch": 2, "unfreeze": "layer1"}, [CacheAction.BUILD, CacheAction.SKIP]),  # the old prefix trains again
        (3, {"epoch": 2, "freeze": "layer4"}, [CacheAction.BUILD, CacheAction.KEEP]),  # after the frontier
    ],
)
def test_plan_previews_the_decisions_training_makes(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    setup_free: None,
    epochs: int,
    event: dict,
    actions: list[CacheAction],
) -> None:
    edits = {"freeze.preset": "until:layer2", "freeze.schedule": [event], "train.epochs": epochs}
    previews, trained, summary = _decisions_of_plan_and_train(tmp_path, monkeypatch, "p", **edits)
    assert [(e, d.action) for e, d in previews] == [(1, actions[0]), (2, actions[1])]
    assert [d.action for d in trained] == actions
    for (_, planned), done in zip(previews, trained):
        said = [(d.reason, d.split and d.split.frontier, d.weighed and d.weighed.pays) for d in (planned, done)]
        assert said[0] == said[1]
        if planned.weighed is not None:  # one formula: the prediction plan shows is the one training weighs
            for d in (planned, done):
                assert d.weighed is not None and d.setup_s == d.weighed.setup_s > 0
                w = d.weighed
                assert d.build_s == w.build_s == pytest.approx((w.batch_s + w.load_s) * w.build_batches)
            assert (planned.feature_shape, planned.bytes, planned.storage) == (
                done.feature_shape,
                done.bytes,
                done.storage,
            )
    for row in summary.cache["decisions"]:  # predicted and spent, side by side
        assert row["predicted_saving_s"] == pytest.approx(
            row["predicted_prefix_s"] - row["predicted_build_s"] - row["setup_s"]
        )
        assert row["predicted_prefix_s"] == pytest.approx(
            (row["batch_s"] + row["load_s"]) * row["batches_per_epoch"] * row["epochs_left"]
        )
    # Training times reading its first batch; an extension reads features already in memory.
    assert all((d.load_s > 0) == (d.action is CacheAction.BUILD) for d in trained if d.builds)
    for built, d in zip(summary.cache["builds"], [d for d in trained if d.builds]):
        assert (built["predicted_build_s"], built["setup_s"]) == (d.build_s, d.setup_s) and built["build_s"] > 0
    assert [d["built"] for d in summary.cache["decisions"]] == [d.builds for d in trained if d.weighed]
    assert [b["extended"] for b in summary.cache["builds"]] == [
        d.action is CacheAction.EXTEND for d in trained if d.builds
    ]
    text = render_cache(previews, "auto", 32)
    if actions[1] is CacheAction.KEEP:
        # With one epoch left no build can pay: decided from the batch counts, nothing traced.
        kept = " (the plan changes after it)" if event["freeze"] == "layer4" else ", its prefix still frozen; a new one"
        assert f"from epoch 2: used: the cache of '{previews[0][1].split.frontier}' is kept{kept}" in text
        if epochs == 2:
            assert "is not built: 1 epoch(s) left" in text and "nothing traced" in text
        assert summary.cache["used"] and summary.cache["frontier"] == previews[0][1].split.frontier
    elif actions[1] is CacheAction.SKIP:
        assert "from epoch 2: not used: not built: 1 epoch(s) left" in text
    else:
        assert f"extended from the features cached at '{previews[0][1].split.frontier}' in about" in text


def test_a_policy_off_or_under_ddp_decides_without_the_model(tmp_path: Path) -> None:
    model = planned("resnet18", "until:layer3")
    off = CachePolicy.of(cfg(tmp_path, "off", **{"train.cache_features": "off"}), 40, 16, torch.device("cpu"))
    ddp = CachePolicy.of(cfg(tmp_path, "ddp"), 40, 16, torch.device("cpu"), distributed=True)
    assert off.decide(model, torch.empty(0), None, 2) == CacheDecision(CacheAction.OFF, "train.cache_features: off")
    assert ddp.decide(model, torch.empty(0), None, 2).reason.startswith("off under DDP (multi-process)")
    on = CachePolicy.of(
        cfg(tmp_path, "on", **{"train.cache_features": "on", "data.augment": "flip_crop"}), 40, 16, torch.device("cpu")
    )
    with pytest.raises(ConfigError, match=r"cannot be cached \(from epoch 3\): data.augment: flip_crop"):
        on.decide(model, torch.randn(2, 3, 32, 32), None, 2, epoch=3)
