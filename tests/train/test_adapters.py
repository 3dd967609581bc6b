"""freeze.adapters in whole runs: LoRA (peft) on a Conv2d and a Linear of mobilenet_v3_small,
beside a linear probe.

Pinned here: the adapted layers' own weights and every other frozen tensor are bitwise what
the run started from; the optimizer holds the adapters and the head, nothing else; the
feature cache holds the frozen prefix before the first adapted layer; the merged model
computes what the adapted one does (fp32 tolerance), as does peft loading the run's
``adapters/`` folder; ``adapters.pt`` is small and rebuilds the model on its base, and starts
another run as merged weights; export writes the merged model, checked against the adapted
one; a stopped run resumes bitwise. One 2-epoch run of 16 fake 32 px images serves them all."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from freezetune.config import Config, from_dict, set_key
from freezetune.infer import check_batch, export_model, load_run
from freezetune.models import load_state_dict_file
from freezetune.train import CHECKPOINT, Interrupted, StopRequest, prepare_model, run

# Skipped without peft, found rather than imported: importing peft (with transformers, 3 to 5 s)
# at collection would cost every test worker, not only the one that runs these tests.
pytestmark = pytest.mark.skipif(importlib.util.find_spec("peft") is None, reason="peft is not installed")

ADAPTED = ("features.12.0", "classifier.0")  # a 1x1 Conv2d (96 -> 576) and a Linear (576 -> 1024)
HEAD = "classifier.3"


def config(tmp: Path, name: str, **edits: Any) -> Config:
    tree: dict[str, Any] = {
        "name": name,
        "seed": 3,
        "model": {"arch": "mobilenet_v3_small", "num_classes": 3},
        "data": {"dataset": "fake", "image_size": 32, "batch_size": 8, "train_samples": 16, "val_samples": 8},
        "freeze": {"preset": "linear_probe", "adapters": [{"modules": list(ADAPTED), "rank": 2, "alpha": 4}]},
        "train": {
            "epochs": 2,
            "output_dir": str(tmp / name),
            "cache_features": "on",
            "keep_state": True,
            "measure": "off",
            "optimizer": {"name": "adam", "lr": 0.01},
        },
    }
    for key, value in edits.items():
        assert set_key(tree, key, value) is None, key
    return from_dict(tree)


@pytest.fixture(scope="module")
def lora(tmp_path_factory: pytest.TempPathFactory) -> tuple[Config, Path]:
    tmp = tmp_path_factory.mktemp("lora")
    cfg = config(tmp, "lora")
    run(cfg)
    return cfg, tmp / "lora"


def adapter_tensors(state: dict[str, torch.Tensor]) -> list[str]:
    return [k for k in state if ".lora_A." in k or ".lora_B." in k]


def test_adapted_weights_and_every_frozen_tensor_are_bitwise_unchanged(lora: tuple[Config, Path]) -> None:
    cfg, folder = lora
    start = prepare_model(cfg).model.state_dict()  # the same seed: the same head and adapters at step 0
    end = torch.load(folder / "model.pt", weights_only=True)["model"]
    plan = json.loads((folder / "freeze_plan.json").read_text())
    frozen = [p["name"] for p in plan["parameters"] if not p["trainable"]]
    assert "features.12.0.base_layer.weight" in frozen and "classifier.0.base_layer.bias" in frozen
    assert [k for k in frozen if not torch.equal(start[k], end[k])] == []
    trained = [p["name"] for p in plan["parameters"] if p["trainable"]]
    assert trained == [*adapter_tensors(start), f"{HEAD}.weight", f"{HEAD}.bias"]
    assert all(not torch.equal(start[k], end[k]) for k in trained)  # B starts at zero and moved
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["frozen_unchanged"] is True
    # The cache holds the prefix up to the first adapted layer: features.11's output, 96 channels.
    cache = summary["cache"]
    assert cache["used"] and cache["first_trainable"] == "features_12_0" and cache["train_shape"] == [16, 96, 1, 1]


def test_the_optimizer_holds_only_the_adapters_and_the_head(lora: tuple[Config, Path]) -> None:
    _, folder = lora
    state = torch.load(folder / CHECKPOINT, weights_only=True)
    names = [n for g in state["optimizer"]["param_groups"] for n in g["names"]]
    lora = [f"{layer}.lora_{ab}.default.weight" for layer in ADAPTED for ab in "AB"]
    assert names == [*lora, f"{HEAD}.weight", f"{HEAD}.bias"]


def test_merged_and_peft_loaded_models_compute_what_the_adapted_model_does(lora: tuple[Config, Path]) -> None:
    cfg, folder = lora
    adapted, merged = load_run(folder, "last"), load_run(folder, "merged")
    assert adapter_tensors(merged.model.state_dict()) == []
    assert "features.12.0.weight" in merged.model.state_dict()
    batch, _ = check_batch(adapted, n=4)
    want = adapted.model(batch)
    torch.testing.assert_close(merged.model(batch), want, rtol=1e-5, atol=1e-5)
    # A peft user: the base model (here the run's own start, which model.weights would give) and the folder.
    base = prepare_model(config(folder.parent, "base", **{"freeze.adapters": []})).model
    from peft import PeftModel  # here: the one test that needs it itself

    peft_model = PeftModel.from_pretrained(base, str(folder / "adapters")).eval()
    torch.testing.assert_close(peft_model(batch), want, rtol=1e-5, atol=1e-5)
    # The two files alone (no model card, no temporaries), readable as the run's other files: safetensors
    # itself writes 0600.
    modes = {p.name: p.stat().st_mode & 0o777 for p in (folder / "adapters").iterdir()}
    assert modes == dict.fromkeys(
        ["adapter_config.json", "adapter_model.safetensors"], (folder / "model.pt").stat().st_mode & 0o777
    )


def test_adapters_pt_is_small_rebuilds_the_run_and_starts_another_merged(lora: tuple[Config, Path]) -> None:
    cfg, folder = lora
    assert (folder / "adapters.pt").stat().st_size < (folder / "model.pt").stat().st_size / 20
    alone, last = load_run(folder, "adapters").model.state_dict(), load_run(folder, "last").model.state_dict()
    assert list(alone) == list(last) and all(torch.equal(alone[k], last[k]) for k in last)
    as_weights = load_state_dict_file(folder / "adapters.pt")  # model.weights: merged, the plain names
    merged = torch.load(folder / "merged.pt", weights_only=True)["model"]
    assert list(as_weights) == list(merged)
    for key in merged:
        torch.testing.assert_close(as_weights[key], merged[key], rtol=0, atol=1e-6)


def test_export_writes_the_merged_model_checked_against_the_adapted_one(
    tmp_path: Path, lora: tuple[Config, Path]
) -> None:
    _, folder = lora
    adapted = load_run(folder, "last")
    batch, _ = check_batch(adapted, n=4)
    out = export_model(adapted, "torchscript", batch, tmp_path / "model.ts")
    assert out.max_abs_diff <= out.atol
    names = [n for n, _ in torch.jit.load(str(out.path)).named_parameters()]
    assert "features.12.0.weight" in names and not [n for n in names if "lora_" in n]


def test_a_stopped_and_resumed_run_ends_bitwise_equal(
    tmp_path: Path, lora: tuple[Config, Path], stop_after: type[StopRequest]
) -> None:
    _, folder = lora
    cfg = config(tmp_path, "lora")
    assert isinstance(run(cfg, stop=stop_after(3)), Interrupted)  # mid-epoch 2
    run(cfg, resume=tmp_path / "lora")
    mine = torch.load(tmp_path / "lora" / "model.pt", weights_only=True)["model"]
    theirs = torch.load(folder / "model.pt", weights_only=True)["model"]
    assert [k for k in theirs if not torch.equal(mine[k], theirs[k])] == []


def test_bf16_base_weights_beside_fp32_adapters(tmp_path: Path) -> None:
    # freeze.frozen_dtype: bf16 stores the adapted layers' own weights in bf16 with every frozen
    # tensor; the adapters and the head train in fp32, under bf16 autocast.
    cfg = config(tmp_path, "bf16", **{"freeze.frozen_dtype": "bf16", "train.precision": "bf16", "train.epochs": 1})
    summary = run(cfg).summary
    state = torch.load(tmp_path / "bf16" / "model.pt", weights_only=True)["model"]
    assert state["features.12.0.base_layer.weight"].dtype == torch.bfloat16
    assert {state[k].dtype for k in adapter_tensors(state)} == {torch.float32}
    assert state[f"{HEAD}.weight"].dtype == torch.float32
    assert summary.frozen_unchanged
    merged = torch.load(tmp_path / "bf16" / "merged.pt", weights_only=True)["model"]
    assert merged["features.12.0.weight"].dtype == torch.float32  # merged in fp32
