"""The feature cache on ten torchvision architectures, for the linear probe and one ``until:``
prefix each: where it cuts, that cached training equals uncached training (per-epoch losses
within 1e-5, the same final weights), and that the modules run in the modes the plan says.

Two architectures run in ``make test``; the rest are marked ``heavy`` and run in
``make test-all`` (ViT needs 224 px images)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from freezetune.config import from_dict, to_dict
from freezetune.train import prepare_model, run

# arch -> (image size, an until: prefix, the linear probe's frontier, the prefix's frontier)
ARCHS = {
    "resnet18": (32, "until:layer3", "flatten", "layer2_1_relu_1"),
    "mobilenet_v3_small": (32, "until:features.9", "classifier_1", "add_3"),
    "efficientnet_b0": (32, "until:features.6", "flatten", "add_5"),
    "convnext_tiny": (32, "until:features.5", "classifier_1", "features_4_1"),
    "vit_b_16": (224, "until:encoder.layers.encoder_layer_10", "getitem_29", "add_20"),
    "swin_t": (64, "until:features.5", "flatten", "features_4_reduction"),
    "regnet_y_400mf": (32, "until:trunk_output.block3", "flatten", "trunk_output_block2_block2_2_activation"),
    "densenet121": (32, "until:features.denseblock4", "flatten", "features_transition3_pool"),
    "squeezenet1_1": (32, "until:features.9", "cat_7", "features_8"),
    "shufflenet_v2_x0_5": (32, "until:stage4", "mean", "view_23"),
}
FAST = {"mobilenet_v3_small", "efficientnet_b0"}  # a head Dropout; stochastic depth in the prefix


def cases() -> list:
    out = []
    for arch, (_, until, *_rest) in ARCHS.items():
        for preset in ("linear_probe", until):
            marks = [] if arch in FAST else [pytest.mark.heavy]
            out.append(pytest.param(arch, preset, marks=marks, id=f"{arch}-{preset}"))
    return out


# Not conftest's tiny run: one run per architecture, each at its own image size (ARCHS).
def config(tmp: Path, arch: str, preset: str, cache: str):
    size = ARCHS[arch][0]
    return from_dict(
        {
            "name": f"{arch}_{cache}",
            "seed": 0,
            "model": {"arch": arch, "num_classes": 3},
            "data": {"dataset": "fake", "image_size": size, "batch_size": 4, "train_samples": 8, "val_samples": 4},
            "freeze": {"preset": preset},
            "train": {
                "epochs": 2,
                "device": "cpu",
                "cache_features": cache,
                "output_dir": str(tmp / cache),
                "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9},
            },
        }
    )


def rows(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize(("arch", "preset"), cases())
def test_the_cache_cuts_where_it_belongs_and_changes_nothing_but_time(tmp_path: Path, arch: str, preset: str) -> None:
    expected = ARCHS[arch][2] if preset == "linear_probe" else ARCHS[arch][3]
    cached = run(config(tmp_path, arch, preset, "on")).summary
    assert cached.cache["used"] is True and cached.cache["frontier"] == expected
    uncached = run(config(tmp_path, arch, preset, "off")).summary
    for a, b in zip(rows(tmp_path / "on"), rows(tmp_path / "off"), strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-5)
        assert a["val_loss"] == pytest.approx(b["val_loss"], abs=1e-5)
    weights = [torch.load(tmp_path / m / "model.pt", weights_only=True)["model"] for m in ("on", "off")]
    for key, tensor in weights[0].items():
        if tensor.is_floating_point():
            torch.testing.assert_close(tensor, weights[1][key], atol=1e-5, rtol=1e-4, msg=key)
    assert cached.frozen_unchanged and uncached.frozen_unchanged


@pytest.mark.skipif(importlib.util.find_spec("timm") is None, reason="timm is not installed")
def test_a_timm_vit_caches_its_frozen_blocks_and_trains_as_uncached(tmp_path: Path) -> None:
    # timm's VisionTransformer.forward(x, attn_mask=None, is_causal=False) hands both on to every block:
    # traced as inputs they were two more values beside the features at every cut, and the cache refused.
    # configs/fmnist/vit's small ViT, narrower, 4 blocks at 28 px.
    def vit(cache: str):
        tree = to_dict(config(tmp_path, "resnet18", "until:blocks.3", cache))
        tree["model"] = {
            "arch": "timm/vit_tiny_patch16_224",
            "num_classes": 3,
            "kwargs": {"img_size": 28, "patch_size": 7, "embed_dim": 32, "depth": 4, "num_heads": 2},
        }
        tree["data"]["image_size"] = 28
        return from_dict(tree)

    cached = run(vit("on")).summary
    assert cached.cache["used"] is True and cached.cache["frontier"] == "add_6"  # blocks.2: its second residual add
    run(vit("off"))
    for a, b in zip(rows(tmp_path / "on"), rows(tmp_path / "off"), strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-5)
        assert a["val_loss"] == pytest.approx(b["val_loss"], abs=1e-5)


# The Dropout that feeds each head under the linear probe: it trains with the head.
HEAD_DROPOUT = {
    "mobilenet_v3_small": "classifier.2",
    "efficientnet_b0": "classifier.0",
    "squeezenet1_1": "classifier.0",
}


@pytest.mark.parametrize(("arch", "preset"), cases())
def test_modules_run_in_the_modes_the_plan_says(arch: str, preset: str) -> None:
    p = prepare_model(config(Path("unused"), arch, preset, "on"))
    p.model.train()  # what the training loop does first
    modules = dict(p.model.named_modules())
    frozen = set(p.plan.frozen)
    assert p.plan.pinned and all(not modules[n].training for n in p.plan.pinned)
    for name in p.plan.pinned_other:  # only frozen modules, or parameter-free ones, are pinned
        assert all(f"{name}.{q}" in frozen for q, _ in modules[name].named_parameters()), name
    for name in {n.rsplit(".", 1)[0] for n in p.plan.trainable}:  # whatever owns a trainable tensor trains
        assert modules[name].training or name in p.plan.pinned_bn, name
    random = [n for n, m in modules.items() if type(m).__name__ in ("Dropout", "StochasticDepth") and m.p > 0]
    if preset == "linear_probe":
        head_dropout = HEAD_DROPOUT.get(arch)
        assert [n for n in random if modules[n].training] == ([head_dropout] if head_dropout else [])
    else:  # random layers train in the trainable blocks only
        stage = preset.split(":", 1)[1]
        first = next(i for i, n in enumerate(modules) if n == stage)
        for n in random:
            assert modules[n].training == (list(modules).index(n) > first), n
