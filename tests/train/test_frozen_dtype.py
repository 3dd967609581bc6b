"""freeze.frozen_dtype in whole runs, with train.precision: bf16 (autocast on the CPU).

Pinned here: frozen tensors are stored in bf16 (normalisation layers and every buffer in
fp32) and proven bitwise unchanged as stored; their bytes are exactly halved; an unfreeze
event up-casts in place and the tensor trains, a freeze event casts down and is then
watched as bf16; a delta model.pt rebuilds the trained model bitwise, dtypes included; a
stopped run resumes bitwise; a model.pt with bf16 tensors loads as another run's weights
and through load_run (in fp32) for predict and export. All on mobilenet_v3_small at 32 px,
32 fake images, batches of 8 (a 3-epoch run takes seconds); the feature cache is off, so that
every step runs the bf16 frozen weights."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from freezetune.config import Config, from_dict, set_key
from freezetune.data import build_loaders
from freezetune.infer import check_batch, export_model, load_run, predict_dataset
from freezetune.measure import param_bytes, param_bytes_by_dtype
from freezetune.models import load_state_dict_file
from freezetune.plan import norm_parameters
from freezetune.record import TIMING_KEYS, Summary
from freezetune.train import CHECKPOINT, Interrupted, StopRequest, prepare_model, run

STEPS = 4  # 32 images / batch 8
BF16, FP32 = torch.bfloat16, torch.float32
FC, HEAD, LAST = "classifier.0", "classifier.3", "features.12"
# Epoch 1: the classifier trains; epoch 2: features.12 joins (up-cast); epoch 3: classifier.0 leaves (cast down).
EVENTS = {
    "freeze.rules": [{"freeze": "*"}, {"unfreeze": "classifier"}],
    "freeze.schedule": [{"epoch": 2, "unfreeze": LAST}, {"epoch": 3, "freeze": FC}],
}


# Not conftest's tiny run: mobilenet_v3_small in bf16 over 3 epochs with a warm-up (the module
# docstring says why).
def config(tmp: Path, name: str, **edits: Any) -> Config:
    tree: dict[str, Any] = {
        "name": name,
        "seed": 5,
        "model": {"arch": "mobilenet_v3_small", "num_classes": 3},
        "data": {"dataset": "fake", "image_size": 32, "batch_size": 8, "train_samples": 32, "val_samples": 8},
        "freeze": {"frozen_dtype": "bf16"},
        "train": {
            "epochs": 3,
            "output_dir": str(tmp / name),
            "precision": "bf16",
            "cache_features": "off",
            "scheduler": {"name": "cosine", "warmup_epochs": 0.5},
            "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4},
        },
    }
    for key, value in edits.items():
        assert set_key(tree, key, value) is None, key
    return from_dict(tree)


def rows(folder: Path, name: str) -> list[dict]:
    return [json.loads(line) for line in (folder / name).read_text().splitlines()]


def assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert list(a) == list(b)
    differ = [k for k in a if a[k].dtype != b[k].dtype or not torch.equal(a[k], b[k])]
    assert not differ, f"{len(differ)} tensors differ, first {differ[:3]}"


def under(state: dict[str, torch.Tensor], module: str) -> list[str]:
    return [k for k in state if k.startswith(module + ".")]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Summary]:
    """The events run, saved as a delta, that every other run is compared with."""
    tmp = tmp_path_factory.mktemp("reference")
    summary = run(config(tmp, "ref", **EVENTS, **{"train.save": "delta"})).summary
    return tmp / "ref", summary


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same run saved in full."""
    tmp = tmp_path_factory.mktemp("full")
    run(config(tmp, "full", **EVENTS))
    return tmp / "full"


@pytest.fixture(scope="module")
def norms() -> set[str]:
    return norm_parameters(prepare_model(config(Path("/x"), "n")).model)


def test_frozen_tensors_are_bf16_and_bitwise_unchanged(reference: tuple[Path, Summary], norms: set[str]) -> None:
    folder, summary = reference
    assert summary.frozen_unchanged and summary.frozen_until_event_unchanged
    assert summary.frozen_check["unchanged"] and summary.frozen_check["grads_none"]
    trained = load_state_dict_file(folder / "model.pt")  # base + delta
    model = prepare_model(config(folder.parent, "ref", **EVENTS)).model  # epoch 1's plan applied
    params, base = dict(model.named_parameters()), model.state_dict()
    moved = {*under(trained, "classifier"), *under(trained, LAST)}
    still = [k for k in trained if k in params and k not in moved]
    assert still and all(torch.equal(trained[k], base[k]) for k in still)
    low = {k for k, t in trained.items() if t.dtype == BF16}
    assert low == {k for k in still if k not in norms} | {f"{FC}.weight", f"{FC}.bias"}
    assert all(trained[k].dtype == FP32 for k in norms)
    assert {t.dtype for k, t in trained.items() if k not in params} == {FP32, torch.int64}  # buffers: never cast


def test_an_unfreeze_up_casts_and_the_tensor_trains(reference: tuple[Path, Summary], norms: set[str]) -> None:
    folder, _ = reference
    event = next(e for e in rows(folder, "events.jsonl") if e["event"] == "unfreeze")
    assert (event["epoch"], event["target"], event["unchanged_until_event"]) == (2, LAST, True)
    trained = load_state_dict_file(folder / "model.pt")
    base = prepare_model(config(folder.parent, "ref", **EVENTS)).model.state_dict()
    weight = f"{LAST}.0.weight"
    assert base[weight].dtype == BF16 and trained[weight].dtype == FP32
    assert not torch.equal(trained[weight], base[weight].float())  # trained from its bf16 rounding
    assert {trained[k].dtype for k in under(trained, LAST) if k.endswith(("weight", "bias"))} == {FP32}


def test_a_freeze_event_casts_down_and_the_tensor_is_watched_as_bf16(
    tmp_path: Path, reference: tuple[Path, Summary], stop_after: Callable[[int], StopRequest]
) -> None:
    cfg = config(tmp_path, "cut", **EVENTS, **{"train.save": "delta"})
    assert isinstance(run(cfg, stop=stop_after(2 * STEPS)), Interrupted)  # after epoch 2, before the freeze event
    before = torch.load(tmp_path / "cut" / CHECKPOINT, weights_only=True)["delta"]["tensors"]
    assert before[f"{FC}.weight"].dtype == FP32
    trained = load_state_dict_file(reference[0] / "model.pt")
    assert torch.equal(trained[f"{FC}.weight"], before[f"{FC}.weight"].to(BF16))  # epoch 3 left it alone


def test_bf16_halves_the_bytes_of_the_frozen_tensors_it_casts(tmp_path: Path, norms: set[str]) -> None:
    edits = {"freeze.preset": "linear_probe", "train.epochs": 1}
    model = prepare_model(config(tmp_path, "fp32", **edits, **{"freeze.frozen_dtype": "fp32"})).model
    trainable, frozen = param_bytes(model)  # what an fp32 run reports
    assert param_bytes_by_dtype(model) == {"float32": trainable + frozen}
    memory = run(config(tmp_path, "bf16", **edits)).summary.memory
    norm_bytes = sum(model.get_parameter(n).numel() for n in norms) * 4
    assert memory["param_bytes_trainable"] == trainable
    assert memory["param_bytes_frozen"] == (frozen - norm_bytes) // 2 + norm_bytes
    assert memory["param_bytes_by_dtype"] == {"bfloat16": (frozen - norm_bytes) // 2, "float32": trainable + norm_bytes}
    assert (frozen, norm_bytes, memory["param_bytes_by_dtype"]["bfloat16"]) == (6_071_424, 48_448, 3_011_488)


def test_a_delta_model_pt_rebuilds_the_trained_model_bitwise(reference: tuple[Path, Summary], full: Path) -> None:
    folder, summary = reference
    saved = torch.load(folder / "model.pt", weights_only=True)["delta"]
    assert saved["base"]["dtypes"] and set(saved["base"]["dtypes"].values()) == {"bfloat16"}
    assert saved["tensors"][f"{FC}.weight"].dtype == BF16  # frozen at epoch 3: stored as it was kept
    assert_same_state(
        load_state_dict_file(folder / "model.pt"), torch.load(full / "model.pt", weights_only=True)["model"]
    )
    assert summary.checkpoint["delta_bytes"] < summary.checkpoint["full_bytes"] // 2


# After the up-cast, between the two events, after the cast down.
@pytest.mark.parametrize("stop_at", [STEPS + 2, 2 * STEPS, 2 * STEPS + 1], ids=["mid-2", "end-2", "mid-3"])
def test_a_stopped_and_resumed_run_ends_bitwise_equal(
    tmp_path: Path, reference: tuple[Path, Summary], stop_after: Callable[[int], StopRequest], stop_at: int
) -> None:
    ref_folder, ref = reference
    cfg = config(tmp_path, "ref", **EVENTS, **{"train.save": "delta"})
    assert isinstance(run(cfg, stop=stop_after(stop_at)), Interrupted)
    done = run(cfg, resume=tmp_path / "ref").summary
    mine = torch.load(tmp_path / "ref" / "model.pt", weights_only=True)["delta"]
    theirs = torch.load(ref_folder / "model.pt", weights_only=True)["delta"]
    assert_same_state(mine["tensors"], theirs["tensors"])
    assert mine["base"]["hash"] == theirs["base"]["hash"]
    strip = TIMING_KEYS
    got = [{k: v for k, v in r.items() if k not in strip} for r in rows(tmp_path / "ref", "metrics.jsonl")]
    want = [{k: v for k, v in r.items() if k not in strip} for r in rows(ref_folder, "metrics.jsonl")]
    assert got == want
    assert done.frozen_unchanged and done.frozen_until_event_unchanged
    assert done.memory["param_bytes_by_dtype"] == ref.memory["param_bytes_by_dtype"]


@pytest.mark.parametrize("frozen_dtype", ["fp32", "bf16"])
def test_a_model_pt_with_bf16_tensors_loads_as_weights(tmp_path: Path, full: Path, frozen_dtype: str) -> None:
    saved = torch.load(full / "model.pt", weights_only=True)["model"]
    edits = {"model.weights": str(full / "model.pt"), "freeze.preset": "linear_probe", "train.epochs": 1}
    precision = "fp32" if frozen_dtype == "fp32" else "bf16"
    cfg = config(tmp_path, f"next_{frozen_dtype}", **edits, **{"freeze.frozen_dtype": frozen_dtype})
    cfg.train.precision = precision
    state = prepare_model(cfg).model.state_dict()
    key = "features.1.block.0.0.weight"
    assert saved[key].dtype == BF16
    assert state[key].dtype == (FP32 if frozen_dtype == "fp32" else BF16)
    assert torch.equal(state[key], saved[key].to(state[key].dtype))  # load_state_dict casts
    if frozen_dtype == "bf16":
        assert run(cfg).summary.frozen_unchanged


def test_load_run_gives_an_fp32_model_that_predicts_and_exports(
    tmp_path: Path, full: Path, run_builds: list[str]
) -> None:
    saved = torch.load(full / "model.pt", weights_only=True)["model"]
    loaded = load_run(full, "last")
    # bf16 tensors are not assigned as they are (the meta build's fast path): copied into a real build, in fp32.
    assert run_builds == ["meta", "cpu"]
    state = loaded.model.state_dict()
    assert {t.dtype for t in state.values()} == {FP32, torch.int64}
    assert all(torch.equal(state[k], t.to(state[k].dtype)) for k, t in saved.items())  # bf16 values, exactly
    batch, _ = check_batch(loaded, n=4)
    out = export_model(loaded, "torchscript", batch, tmp_path / "model.ts")
    assert out.path.is_file()
    val = build_loaders(loaded.config.data, loaded.config.seed, 3).val.dataset
    probs = predict_dataset(loaded.model, val, batch_size=4).probs
    assert probs.shape == (8, 3) and bool(torch.isfinite(probs).all())
