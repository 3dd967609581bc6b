"""freezetune benchmark --peer lightning: both frameworks do the same work where they should (first
losses equal), Lightning's train_bn=False idiom normalises frozen BatchNorm with batch statistics,
BackboneFinetuning with LambdaLR crashes when the backbone joins and is reported, not raised, and
without Lightning the command is one error line that writes nothing. Tiny runs on FakeData and the
tests' small convnet (tests/conftest.py), a couple of steps each."""

from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from freezetune.bench import peer
from freezetune.bench.features import bn_state
from freezetune.bench.peer import FIRST_LOSS_TOLERANCE, run_worker
from freezetune.bench.peer_worker import freezetune_features, run_freezetune
from freezetune.bench.peer_worker import main as worker_main
from freezetune.cli.benchmark import main
from freezetune.config import load_config


@pytest.fixture
def lightning_peer() -> ModuleType:
    pytest.importorskip("lightning", reason="the Lightning side needs the [peers] extra")
    import freezetune.bench.lightning_peer as module

    return module


def tiny_config(folder: Path, user_models: str, preset: str, **train: object) -> str:
    freeze: dict = {"preset": preset}
    if preset == "gradual":
        freeze["gradual"] = ["body"]
    cfg = {
        "name": f"peer_{preset}",
        "seed": 3,
        "model": {"arch": f"{user_models}.nets:build", "num_classes": 3},
        "data": {"dataset": "fake", "image_size": 16, "batch_size": 4, "train_samples": 8, "val_samples": 8},
        "freeze": freeze,
        "train": {
            "epochs": 2,
            "scheduler": "cosine",
            "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
            **train,
        },
    }
    path = folder / f"{preset}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_full_fine_tuning_is_the_same_work_in_both(tmp_path: Path, user_models: str, lightning_peer) -> None:
    config = tiny_config(tmp_path, user_models, "full")
    ft = run_freezetune(config, [])
    lit = lightning_peer.fit_lightning(load_config(config), "full")
    assert lit["error"] is None
    # The same weights, head draw and first batch: the same loss, to the last bit on one device.
    assert abs(ft["first_loss"] - lit["first_loss"]) <= FIRST_LOSS_TOLERANCE
    assert ft["steps"] == lit["steps"] == 4  # 2 epochs of 2 batches
    assert ft["val_acc"] == lit["val_acc"]
    assert lit["bn"] == {"modules": 2, "track_running_stats": 2, "training": 2}


def test_train_bn_false_normalises_frozen_batchnorm_with_batch_statistics(
    tmp_path: Path, user_models: str, lightning_peer
) -> None:
    config = tiny_config(tmp_path, user_models, "linear_probe")
    cfg = load_config(config)
    idiom = lightning_peer.peer_module(cfg, "probe_train_bn_false", steps_per_epoch=2)
    # freeze_module turns tracking off; the modules stay in train mode: batch statistics in training,
    # the stored ones in evaluation.
    assert bn_state(idiom.model) == {"modules": 2, "track_running_stats": 0, "training": 2}
    assert [n for n, p in idiom.model.named_parameters() if p.requires_grad] == ["fc.weight", "fc.bias"]
    held = lightning_peer.peer_module(cfg, "probe_bn_eval", steps_per_epoch=2)
    assert bn_state(held.model) == {"modules": 2, "track_running_stats": 0, "training": 0}
    # So the head sees other features in training than in evaluation, unless BatchNorm is held in eval.
    ft = freezetune_features(config, [])
    assert ft["head_input_norm"]["relative_difference"] == 0.0
    idiom_out = lightning_peer.fit_lightning(cfg, "probe_train_bn_false", features=True)
    assert idiom_out["head_input_norm"]["relative_difference"] > 0.05
    assert lightning_peer.fit_lightning(cfg, "probe_bn_eval", features=True)["head_input_norm"] == ft["head_input_norm"]
    # Trained: held in eval it is freezetune's work; the idiom's first loss is another.
    first = run_freezetune(config, [])["first_loss"]
    assert abs(lightning_peer.fit_lightning(cfg, "probe_bn_eval")["first_loss"] - first) <= FIRST_LOSS_TOLERANCE
    assert abs(lightning_peer.fit_lightning(cfg, "probe_train_bn_false")["first_loss"] - first) > FIRST_LOSS_TOLERANCE


def test_backbone_finetuning_with_lambdalr_crash_is_reported_not_raised(
    tmp_path: Path, user_models: str, lightning_peer
) -> None:
    cfg = load_config(tiny_config(tmp_path, user_models, "gradual", epochs=3, max_steps_per_epoch=1))
    crashed = lightning_peer.fit_lightning(cfg, "gradual_lambdalr")
    # The scheduler knows one group; BackboneFinetuning added the backbone's at epoch 2.
    assert crashed["error"]["type"] == "ValueError"
    assert "zip() argument 2 is shorter than argument 1" in crashed["error"]["message"]
    assert crashed["error"]["epoch"] == 2 and crashed["val_acc"] is None
    without = lightning_peer.fit_lightning(cfg, "gradual")
    assert without["error"] is None and without["steps"] == 3 and without["val_acc"] is not None


def test_without_lightning_one_error_line_exit_2_and_nothing_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("lightning", "lightning.pytorch"):
        monkeypatch.setitem(sys.modules, name, None)  # `import lightning` now raises ImportError
    assert main(["--peer", "lightning"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --peer lightning needs Lightning")
    assert "pip install 'freezetune[peers]'" in err[0]
    assert list(tmp_path.iterdir()) == []


def test_a_worker_is_a_fresh_process_timed_from_start_to_exit(
    tmp_path: Path, user_models: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The workers are fresh interpreters: they find the tests' model package on PYTHONPATH.
    monkeypatch.setenv("PYTHONPATH", str(Path(importlib.import_module(user_models).__file__).parents[1]))
    config = tiny_config(tmp_path, user_models, "linear_probe")
    spec = {"framework": "freezetune", "variant": "config", "config": config, "overrides": [], "features": True}
    result = run_worker(spec | {"out": str(tmp_path / "out.json")})
    assert result["pid"] != os.getpid() and result["peak_rss_bytes"] > 0
    assert result["wall_s"] > 0 and result["head_input_norm"]["relative_difference"] == 0.0


def test_cli_alternates_the_sides_and_writes_the_tables_and_json(
    tmp_path: Path, user_models: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("lightning", reason="the Lightning side needs the [peers] extra")
    monkeypatch.chdir(tmp_path)

    def in_process(spec: dict) -> dict:  # the worker's own code, without a process start per run
        worker_main([json.dumps(spec)])
        return json.loads(Path(spec["out"]).read_text()) | {"wall_s": 1.0 + len(spec["variant"])}

    monkeypatch.setattr(peer, "run_worker", in_process)
    edits = [
        f"model.arch={user_models}.nets:build",
        "model.weights=null",
        "model.reset_head=false",
        "model.num_classes=3",
        "data.dataset=fake",
        "data.classes=null",
        "data.image_size=16",
        "data.batch_size=4",
        "data.train_samples=8",
        "data.val_samples=4",
        "train.epochs=1",
    ]
    assert main(["--peer", "lightning", "--pairs", "full", "--repeats", "2", "--out", "peer.json", *edits]) == 0
    out = capsys.readouterr().out
    assert "process (ft/L)" in out and "lightning:full" in out
    report = json.loads((tmp_path / "peer.json").read_text())
    assert set(report) == {"repeats", "overrides", "first_loss_tolerance", "pairs", "features", "lambdalr", "runs"}
    (pair,) = report["pairs"]
    assert (pair["pair"], pair["peer"], pair["same_work"], pair["first_loss_equal"]) == (
        "full",
        "lightning:full",
        True,
        True,
    )
    assert pair["repeats_identical"]
    assert pair["ratio_freezetune_over_peer"]["wall_s"] == {"median": 7 / 5, "min": 7 / 5, "max": 7 / 5}
    assert set(pair["ratio_freezetune_over_peer"]) == {"wall_s", "train_s", "step_s", "peak_rss_bytes"}
    # A B, then B A.
    order = [(r["framework"], r["repeat"]) for r in report["runs"]]
    assert order == [("freezetune", 0), ("lightning", 0), ("lightning", 1), ("freezetune", 1)]
    assert list(tmp_path.iterdir()) == [tmp_path / "peer.json"]  # the run records went with their temp folder
