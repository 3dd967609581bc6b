"""train.compile: the net that trains is compiled once per phase (a schedule event recompiles it,
it never falls back to eager), trains as the eager net does, and the record says what it cost."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import torch

from freezetune.config import from_dict
from freezetune.train import run


# Not conftest's tiny run: any arch, 16 px, 32 images in full batches of 8 and an unfreeze at
# epoch 2: what torch.compile must recompile for, and nothing else.
def cfg(tmp: Path, arch: str, name: str, **train: Any):
    return from_dict(
        {
            "name": name,
            "seed": 1,
            "model": {"arch": arch, "num_classes": 3},
            # 32 images in batches of 8: no shorter last batch, whose new shape would compile another graph.
            "data": {"dataset": "fake", "image_size": 16, "batch_size": 8, "train_samples": 32, "val_samples": 16},
            "freeze": {"preset": "linear_probe", "schedule": [{"epoch": 2, "unfreeze": "body"}]},
            "train": {"epochs": 2, "output_dir": str(tmp / name), "optimizer": {"name": "sgd", "lr": 0.05}, **train},
        }
    )


def losses(tmp: Path, name: str) -> list[float]:
    return [json.loads(line)["train_loss"] for line in (tmp / name / "metrics.jsonl").read_text().splitlines()]


def test_each_phase_is_compiled_once_and_the_record_says_so(
    tmp_path: Path, user_models: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    compiled: list[torch.nn.Module] = []

    def fake_compile(net: torch.nn.Module) -> torch.nn.Module:  # the wiring, without inductor's seconds
        compiled.append(net)
        return net

    monkeypatch.setattr(torch, "compile", fake_compile)
    arch = f"{user_models}.nets:build"
    with caplog.at_level(logging.INFO, logger="freezetune"):
        # Cache forced on: under auto, the last epoch's phase would skip a cache that cannot pay.
        summary = run(cfg(tmp_path, arch, "c", compile=True, cache_features="on")).summary
    # Phase 1 trains the head on cached features, phase 2 the body too: a new suffix, compiled anew.
    assert [type(n).__name__ for n in compiled] == ["GraphModule", "GraphModule"]
    assert compiled[0] is not compiled[1]
    c = summary.compile
    assert c["enabled"] is True and c["phases_compiled"] == 2
    assert [p["net"] for p in c["phases"]] == [
        "the suffix after the cached 'flatten'",
        "the suffix after the cached 'stem_2'",
    ]
    assert [p["trainable_params"] for p in c["phases"]] == [27, 27 + 600]
    assert all(p["first_step_s"] > 0 for p in c["phases"])
    assert sum("compiling the trained part for the new phase" in r.message for r in caplog.records) == 2
    off = run(cfg(tmp_path, arch, "off")).summary
    assert off.compile == {"enabled": False, "phases_compiled": 0, "phases": []}


# Real inductor compiles: 4-6 s each with warm caches, 10-20 s on a fresh machine (C++ kernels built with g++).
@pytest.mark.heavy
@pytest.mark.parametrize("cache", ["off", "on"])
def test_compiled_training_follows_a_schedule_event_like_eager(tmp_path: Path, user_models: str, cache: str) -> None:
    arch = f"{user_models}.nets:build"
    compiled = run(cfg(tmp_path, arch, "compiled", compile=True, cache_features=cache)).summary
    eager = run(cfg(tmp_path, arch, "eager", cache_features=cache)).summary
    c = compiled.compile
    # One graph per phase: the event recompiles (dynamo guards on requires_grad), nothing runs eagerly.
    assert c["phases_compiled"] == 2 and [p["graphs"] for p in c["phases"]] == [1, 1]
    assert [p["graph_breaks"] for p in c["phases"]] == [0, 0]
    # Each phase's first step includes its compile (not compared with the others: inductor's on-disk
    # cache makes a repeated compile a look-up).
    assert all(p["first_step_s"] > 0 and p["later_step_s"] > 0 for p in c["phases"])
    assert losses(tmp_path, "compiled") == pytest.approx(losses(tmp_path, "eager"), rel=1e-5)
    assert compiled.final_val_loss == pytest.approx(eager.final_val_loss, rel=1e-5)
    assert compiled.frozen_unchanged and eager.frozen_unchanged
    w_c = torch.load(tmp_path / "compiled" / "model.pt", weights_only=True)["model"]
    w_e = torch.load(tmp_path / "eager" / "model.pt", weights_only=True)["model"]
    for key in w_c:
        torch.testing.assert_close(w_c[key], w_e[key], rtol=1e-5, atol=1e-6)
    assert torch.equal(w_c["stem.0.weight"], w_e["stem.0.weight"])  # frozen throughout: untouched by both
