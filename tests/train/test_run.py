"""End to end: the real CLI on a tiny checkpoint and fake data, and in-process
runs (``freezetune.run.run``) for reproducibility and the BatchNorm policy.

The commands run in this process through ``freezetune.cli.main.main`` (conftest's
``freezetune_cli``), their output captured: a subprocess would pay for importing torch
and torchvision (seconds of CPU each) and test nothing more. One command still runs as
the user runs it, ``python scripts/train.py`` in a fresh interpreter: the config error,
whose exit status and clean stderr are the real script's; it starts first, in the
background, while the others run here."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import math
import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn as nn
import torchvision
import yaml

from freezetune.checks import resolve
from freezetune.config import Config, load_config, to_dict
from freezetune.plan import FreezeError
from freezetune.record import RECORD_FILES
from freezetune.train import run

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 180
FROZEN_PREFIX = ("conv1", "bn1", "layer1", "layer2")  # what until:layer3 freezes in resnet18
METRIC_KEYS = {"epoch", "train_loss", "val_loss", "val_acc", "epoch_time_s", "samples_per_s"}


def top(name: str) -> str:
    return name.split(".")[0]


def resnet18_batchnorms() -> list[str]:
    with torch.device("meta"):
        model = torchvision.models.resnet18(num_classes=2)
    return [n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]


# --------------------------------------------------------------------------- subprocess plumbing


@dataclass
class Done:
    rc: int
    stdout: str
    stderr: str


class Launched:
    """A script started in the background; ``done()`` waits for it once."""

    def __init__(self, script: str, *args: str) -> None:
        env = {**os.environ, "CI": "1", "OMP_NUM_THREADS": "1"}  # no bars; no thread oversubscription
        self._proc = subprocess.Popen(
            [sys.executable, f"scripts/{script}", *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._done: Done | None = None

    def done(self) -> Done:
        if self._done is None:
            out, err = self._proc.communicate(timeout=TIMEOUT_S)
            self._done = Done(self._proc.returncode, out, err)
        return self._done

    def kill(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.communicate()


def folder_state(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file's content hash and modification time."""
    return {
        p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir())
    }


def make_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """A 3-class resnet18 whose every tensor differs from a fresh initialisation.

    Another seed than the runs' (0), and BatchNorm values far from the defaults,
    so "equal to the checkpoint" can only mean "loaded and never touched"."""
    torch.manual_seed(1234)
    model = torchvision.models.resnet18(num_classes=3)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_()
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
                m.num_batches_tracked.fill_(7)
    state = model.state_dict()
    torch.save(state, path)
    return state


class Ran:
    """A command that ran in this process: the same ``done()`` as :class:`Launched`."""

    def __init__(self, result: Done) -> None:
        self._done = result

    def done(self) -> Done:
        return self._done


@dataclass
class Cli:
    tmp: Path
    config: Path
    out: Path
    ckpt_path: Path
    ckpt: dict[str, torch.Tensor]
    overrides: list[str]
    train: Ran
    config_error: Launched
    freeze_error: Ran
    plan: Ran


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory, freezetune_cli: Callable[..., Done]):
    tmp = tmp_path_factory.mktemp("cli")
    ckpt_path = tmp / "resnet18_3class.pt"
    ckpt = make_checkpoint(ckpt_path)
    out = tmp / "run"
    config = tmp / "tiny.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "name": "tiny_cli",
                "seed": 0,
                # 2 classes against the checkpoint's 3: the head is replaced.
                "model": {"arch": "resnet18", "weights": str(ckpt_path), "num_classes": 2},
                "data": {"dataset": "fake", "image_size": 32, "batch_size": 8, "train_samples": 16, "val_samples": 8},
                "freeze": {"preset": "linear_probe"},
                "train": {"epochs": 1, "device": "cpu", "output_dir": str(out)},
            },
            sort_keys=False,
        )
    )
    overrides = ["train.epochs=2", "freeze.preset=until:layer3", "train.optimizer.lr=0.05", "seed=3"]
    cfg = str(config)
    config_error = Launched(
        "train.py",
        "--config",
        cfg,
        f"train.output_dir={tmp / 'config_error'}",
        "train.epoch=3",
        "freeze.preset=linear_prob",
        "--no-progress",
    )
    try:
        train = Ran(freezetune_cli(["train", "--config", cfg, *overrides, "--no-progress"]))
        freeze_error = Ran(
            freezetune_cli(
                [
                    "train",
                    "--config",
                    cfg,
                    f"train.output_dir={tmp / 'freeze_error'}",
                    "freeze.rules=[{freeze: layer9}]",
                    "--no-progress",
                ]
            )
        )
        # --no-estimate: the estimate has its own tests (test_estimate.py); its profile is seconds of CPU.
        plan = Ran(freezetune_cli(["plan", "--config", cfg, "freeze.preset=until:layer3", "--no-estimate"]))
        yield Cli(tmp, config, out, ckpt_path, ckpt, overrides, train, config_error, freeze_error, plan)
    finally:
        config_error.kill()


@dataclass
class Record:
    config: dict[str, Any]
    plan: dict[str, Any]
    metrics: list[dict[str, Any]]
    summary: dict[str, Any]
    checkpoint: dict[str, Any]
    files: list[str]


@pytest.fixture(scope="module")
def record(cli: Cli) -> Record:
    """The first CLI run's record, read once (later tests overwrite the folder)."""
    done = cli.train.done()
    assert done.rc == 0, done.stderr
    o = cli.out
    return Record(
        config=yaml.safe_load((o / "config.yaml").read_text()),
        plan=json.loads((o / "freeze_plan.json").read_text()),
        metrics=[json.loads(line) for line in (o / "metrics.jsonl").read_text().splitlines()],
        summary=json.loads((o / "summary.json").read_text()),
        checkpoint=torch.load(o / "model.pt", map_location="cpu", weights_only=True),
        files=sorted(p.name for p in o.iterdir()),
    )


def two_class_resnet18() -> nn.Module:
    with torch.device("meta"):
        return torchvision.models.resnet18(num_classes=2)


# --------------------------------------------------------------------------- in-process runs


@pytest.fixture(scope="session")
def tiny_cfg(tiny_config: Callable[..., Config]) -> Callable[..., Config]:
    """conftest's tiny run as this file trains it: FakeData's 10 classes, 16 + 8 images in
    batches of 8 (two steps an epoch: the BatchNorm counts below), every parameter trainable."""

    def make(
        out: Path, seed: int = 0, preset: str = "full", batchnorm: str = "eval", rules: list | None = None, **model: Any
    ) -> Config:
        return tiny_config(
            {
                "seed": seed,
                "model.num_classes": None,
                "data.batch_size": 8,
                "data.train_samples": 16,
                "data.val_samples": 8,
                "freeze.preset": preset,
                "freeze.batchnorm": batchnorm,
                "freeze.rules": rules or [],
                "train.output_dir": str(out),
                **{f"model.{key}": value for key, value in model.items()},
            }
        )

    return make


def saved(out: Path) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    state = torch.load(out / "model.pt", map_location="cpu", weights_only=True)["model"]
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return state, metrics


def losses(metrics: list[dict[str, Any]]) -> list[tuple[float, float, float]]:
    return [(m["train_loss"], m["val_loss"], m["val_acc"]) for m in metrics]


def test_same_seed_is_bitwise_reproducible_and_another_seed_differs(
    tmp_path: Path, tiny_cfg: Callable[..., Config]
) -> None:
    first = run(tiny_cfg(tmp_path / "a", seed=0)).summary
    second = run(tiny_cfg(tmp_path / "b", seed=0)).summary
    run(tiny_cfg(tmp_path / "c", seed=1))
    # A later run of the same process has no start-up of its own (the earlier runs' time).
    assert second.startup_s is None and second.startup_from is None
    (state_a, metrics_a), (state_b, metrics_b), (state_c, metrics_c) = (saved(tmp_path / x) for x in "abc")

    assert first.to_json() == json.loads((tmp_path / "a" / "summary.json").read_text())  # run() returns what it wrote
    assert list(state_a) == list(state_b)
    assert [k for k in state_a if not torch.equal(state_a[k], state_b[k])] == []
    assert losses(metrics_a) == losses(metrics_b)

    assert [k for k in state_a if k.endswith("weight") and torch.equal(state_a[k], state_c[k])] == []
    assert losses(metrics_a) != losses(metrics_c)


def test_fine_tune_from_a_freezetune_checkpoint(tmp_path: Path, tiny_cfg: Callable[..., Config]) -> None:
    """The demo's flow: a run's model.pt is the next run's weights, head reset."""
    run(tiny_cfg(tmp_path / "a"))
    state_a, _ = saved(tmp_path / "a")
    ckpt = str(tmp_path / "a" / "model.pt")
    summary = run(tiny_cfg(tmp_path / "b", seed=5, preset="linear_probe", weights=ckpt, reset_head=True)).summary
    state_b, _ = saved(tmp_path / "b")

    assert summary.weights_source == ckpt
    assert summary.loaded_tensors == [k for k in state_a if not k.startswith("fc.")]
    assert summary.new_tensors == ["fc.weight", "fc.bias"]  # same shape, reset all the same
    # Backbone and its BatchNorm statistics: bitwise run A's. Head: trained afresh.
    assert [k for k in summary.loaded_tensors if not torch.equal(state_a[k], state_b[k])] == []
    assert not torch.equal(state_a["fc.weight"], state_b["fc.weight"])


def test_a_rejected_config_leaves_an_existing_run_untouched(tmp_path: Path, tiny_cfg: Callable[..., Config]) -> None:
    # Even with overwrite=True: every check runs before the first file is touched.
    run(tiny_cfg(tmp_path))
    before = folder_state(tmp_path)
    with pytest.raises(FreezeError, match="layer9"):
        run(tiny_cfg(tmp_path, rules=[{"freeze": "layer9"}]), overwrite=True)
    assert folder_state(tmp_path) == before


@pytest.mark.parametrize("batchnorm", ["eval", "train"])
def test_linear_probe_batchnorm_policy(tmp_path: Path, batchnorm: str, tiny_cfg: Callable[..., Config]) -> None:
    out = tmp_path / batchnorm
    summary = run(tiny_cfg(out, preset="linear_probe", batchnorm=batchnorm)).summary
    plan = json.loads((out / "freeze_plan.json").read_text())
    state, _ = saved(out)
    bns = resnet18_batchnorms()
    assert len(bns) == 20

    # Either way the frozen parameters are bitwise unchanged ...
    assert summary.frozen_unchanged is True
    assert summary.params_trainable == 64 * 10 + 10  # fc: the narrow resnet18's 64 features, 10 classes
    # ... starting from a fresh init, BN weights are all ones and biases zeros.
    assert all(torch.equal(state[f"{b}.weight"], torch.ones_like(state[f"{b}.weight"])) for b in bns)
    assert all(torch.equal(state[f"{b}.bias"], torch.zeros_like(state[f"{b}.bias"])) for b in bns)

    # ... but only "eval" keeps the running statistics fixed (2 steps in one epoch).
    tracked = {int(state[f"{b}.num_batches_tracked"]) for b in bns}
    at_init = [torch.equal(state[f"{b}.running_mean"], torch.zeros(state[f"{b}.running_mean"].shape)) for b in bns]
    if batchnorm == "eval":
        assert plan["pinned_bn"] == bns
        assert summary.pinned_bn == 20
        assert tracked == {0}
        assert all(at_init)
    else:
        assert plan["pinned_bn"] == []
        assert summary.pinned_bn == 0
        assert tracked == {2}
        assert not any(at_init)


# --------------------------------------------------------------------------- the CLI run and its record


def test_cli_train_succeeds_and_reports_each_epoch(cli: Cli, record: Record) -> None:
    done = cli.train.done()
    assert "epoch 1: train_loss" in done.stdout and "epoch 2: train_loss" in done.stdout
    assert "frozen tensors bitwise unchanged: yes" in done.stdout
    assert "Traceback" not in done.stderr
    # Exactly the record files: no temporary files or extras left behind.
    assert record.files == sorted(set(RECORD_FILES) - {"checkpoint.pt"})  # deleted when the run finishes


def test_config_yaml_is_the_fully_resolved_config_with_overrides(cli: Cli, record: Record) -> None:
    # Resolved: the preprocessing the config left null is written out as used.
    expected = to_dict(resolve(load_config(cli.config, cli.overrides))[0])
    assert record.config == expected
    assert record.config["data"]["resize_size"] == record.config["data"]["image_size"] == 32
    assert record.config["train"]["epochs"] == 2
    assert record.config["freeze"]["preset"] == "until:layer3"
    assert record.config["train"]["optimizer"]["lr"] == 0.05
    assert record.config["seed"] == 3
    assert record.config["train"]["output_dir"] == str(cli.out)
    # Defaults are written out too, so the file alone reproduces the run.
    assert record.config["data"]["num_workers"] == 0
    assert record.config["freeze"]["batchnorm"] == "eval"
    assert to_dict(load_config(cli.out / "config.yaml")) == expected


def test_freeze_plan_lists_every_parameter_and_the_pinned_batchnorm(record: Record) -> None:
    model = two_class_resnet18()
    rows = record.plan["parameters"]
    assert [(r["name"], r["numel"]) for r in rows] == [(n, p.numel()) for n, p in model.named_parameters()]
    assert all(r["trainable"] is (top(r["name"]) not in FROZEN_PREFIX) for r in rows)
    assert record.plan["pinned_bn"] == [n for n in resnet18_batchnorms() if top(n) in FROZEN_PREFIX]
    assert len(record.plan["pinned_bn"]) == 10


def test_metrics_has_one_row_per_epoch(record: Record) -> None:
    assert [row["epoch"] for row in record.metrics] == [1, 2]
    for row in record.metrics:
        assert METRIC_KEYS <= set(row)
        assert all(isinstance(row[k], (int, float)) and math.isfinite(row[k]) for k in METRIC_KEYS)
        assert row["train_loss"] > 0 and row["val_loss"] > 0
        assert 0.0 <= row["val_acc"] <= 1.0
        assert row["epoch_time_s"] > 0 and row["samples_per_s"] > 0


def test_summary_agrees_with_the_plan_metrics_and_checkpoint(cli: Cli, record: Record) -> None:
    s, rows = record.summary, record.plan["parameters"]
    assert s["params_total"] == s["params_trainable"] + s["params_frozen"]
    assert s["params_total"] == sum(r["numel"] for r in rows)
    assert s["params_total"] == sum(p.numel() for p in two_class_resnet18().parameters())
    assert s["params_trainable"] == sum(r["numel"] for r in rows if r["trainable"])
    assert s["tensors_trainable"] == sum(r["trainable"] for r in rows)
    assert s["tensors_frozen"] == sum(not r["trainable"] for r in rows)
    assert s["pinned_bn"] == len(record.plan["pinned_bn"])
    assert s["final_val_acc"] == record.metrics[-1]["val_acc"]
    assert s["final_val_loss"] == record.metrics[-1]["val_loss"]
    assert s["best_val_acc"] == max(r["val_acc"] for r in record.metrics)
    assert s["epochs"] == 2 and s["train_samples"] == 16
    assert s["frozen_unchanged"] is True
    assert s["frozen_check"]["changed"] == []
    assert s["weights_source"] == str(cli.ckpt_path)
    assert s["head"] == "fc"
    assert s["loaded_tensors"] == [k for k in cli.ckpt if not k.startswith("fc.")]
    assert s["new_tensors"] == ["fc.weight", "fc.bias"]
    # The subprocess runs with OMP_NUM_THREADS=1 and no train.threads: torch as that set it, said first.
    assert {k: s["threads"][k] for k in ("torch", "from", "omp_num_threads")} == {
        "torch": 1,
        "from": "OMP_NUM_THREADS",
        "omp_num_threads": None,
    }
    assert s["threads"]["cores"] == os.cpu_count() and s["threads"]["load_1min"] >= 0
    first = cli.train.done().stderr.splitlines()[0]
    assert re.fullmatch(r"\S+: threads: 1 \(OMP_NUM_THREADS\), \d+ cores, 1-minute load \d+\.\d\d", first), first


def test_model_pt_holds_the_full_state_dict_config_and_epoch(record: Record) -> None:
    ckpt = record.checkpoint
    assert set(ckpt) == {"model", "config", "epoch", "format", "classes", "num_classes", "preprocessing", "cwd"}
    assert ckpt["config"] == record.config
    assert ckpt["epoch"] == 2
    # What predict, evaluate and export need without the config: outputs' names and the input's preparation.
    assert ckpt["format"] == "freezetune-model/1" and ckpt["num_classes"] == 2
    assert ckpt["classes"] == record.summary["classes"] == ["0", "1"]
    assert ckpt["preprocessing"] == {k: record.config["data"][k] for k in ckpt["preprocessing"]}
    assert ckpt["preprocessing"]["image_size"] == 32 and ckpt["preprocessing"]["augment"] == "none"
    state = ckpt["model"]
    expected = two_class_resnet18().state_dict()
    assert list(state) == list(expected)
    assert all(state[k].shape == expected[k].shape for k in state)


def test_frozen_tensors_are_bitwise_the_checkpoints_and_trainable_ones_moved(cli: Cli, record: Record) -> None:
    state = record.checkpoint["model"]
    frozen = [k for k in state if top(k) in FROZEN_PREFIX]
    # Parameters and the running statistics of the pinned BatchNorm alike.
    assert any(k.endswith("running_mean") for k in frozen)
    unequal = [k for k in frozen if not torch.equal(state[k], cli.ckpt[k])]
    assert unequal == []
    trainable_params = [r["name"] for r in record.plan["parameters"] if r["trainable"] and top(r["name"]) != "fc"]
    assert len(trainable_params) == 30
    unmoved = [k for k in trainable_params if torch.equal(state[k], cli.ckpt[k])]
    assert unmoved == []
    # The unpinned BatchNorm counted its 2 epochs x 2 steps on top of the checkpoint's 7.
    assert int(state["layer3.0.bn1.num_batches_tracked"]) == 7 + 4
    assert int(state["layer2.0.bn1.num_batches_tracked"]) == 7


# --------------------------------------------------------------------------- the CLI refusing work


def line_with(text: str, *parts: str) -> bool:
    return any(all(p in line for p in parts) for line in text.splitlines())


def assert_one_clean_error(done) -> None:
    """Exit 2, nothing on stdout, one "error:" message on stderr and no traceback."""
    assert done.rc == 2
    assert done.stdout == ""
    assert done.stderr.startswith("error: ")
    assert "Traceback" not in done.stderr
    assert done.stderr.count("error:") == 1


def test_config_errors_exit_2_naming_each_dotted_key(cli: Cli) -> None:
    done = cli.config_error.done()
    assert_one_clean_error(done)
    # Both problems in the one message, each on its own line naming its dotted key.
    assert line_with(done.stderr, "train.epoch:", "unknown key", "epochs")
    assert line_with(done.stderr, "freeze.preset:", "'linear_prob'", "'linear_probe'")
    assert not (cli.tmp / "config_error").exists()


def test_a_rule_matching_nothing_exits_2_with_the_nearest_names(cli: Cli) -> None:
    done = cli.freeze_error.done()
    assert_one_clean_error(done)
    assert line_with(done.stderr, "freeze.rules[0]", "layer9", "matches no parameter")
    nearest = re.search(r"nearest names: (.*)", done.stderr)
    assert nearest is not None
    names = nearest.group(1).strip().split(", ")
    assert len(names) == 3 and set(names) <= {"layer1", "layer2", "layer3", "layer4"}
    assert not (cli.tmp / "freeze_error").exists()


# --------------------------------------------------------------------------- freezetune plan


def test_plan_script_prints_table_totals_and_autograd_probe(cli: Cli) -> None:
    done = cli.plan.done()
    assert done.rc == 0, done.stderr
    # A loaded machine adds a threads warning under the threads line (tests/train/test_threads.py checks it).
    lines = [line for line in done.stdout.splitlines() if not line.startswith("warning: ")]
    assert lines[0] == f"config {cli.config}: resnet18, weights {cli.ckpt_path}, head 'fc'"
    assert re.fullmatch(r"threads: \d+ \(.+\), \d+ cores?, 1-minute load [\d.]+", lines[1]), lines[1]
    # A plain state_dict says nothing of its preprocessing: the dataset's defaults fill what the config leaves open.
    assert lines[2].startswith("preprocessing: resize 32 (bilinear), center crop 32")
    assert lines[3].strip() == "resize_size, interpolation, mean, std, augment from fake default"
    assert lines[4].split() == ["module", "type", "params", "status", "mode"]
    table_lines = lines[6 : lines.index("")]  # the per-module table ends at the first blank line
    table = {line.split()[0]: line.split(None, 1)[1] for line in table_lines}
    # One row per module that owns parameters: 20 conv, 20 BatchNorm, the head.
    assert len(table) == len(table_lines) == 41
    assert re.fullmatch(r"Conv2d\s+9,408\s+frozen\s+eval \(pinned\)", table["conv1"])  # freeze.frozen_modules
    assert re.fullmatch(r"BatchNorm2d\s+128\s+frozen\s+eval \(pinned\)", table["bn1"])
    assert re.fullmatch(r"Conv2d\s+147,456\s+frozen\s+eval \(pinned\)", table["layer2.1.conv2"])
    assert re.fullmatch(r"Conv2d\s+294,912\s+trainable\s+train", table["layer3.0.conv1"])
    assert re.fullmatch(r"BatchNorm2d\s+512\s+trainable\s+train", table["layer3.0.bn1"])
    assert re.fullmatch(r"Linear\s+1,026\s+trainable\s+train", table["fc"])

    model = two_class_resnet18()
    total = sum(p.numel() for p in model.parameters())
    train = sum(p.numel() for n, p in model.named_parameters() if top(n) not in FROZEN_PREFIX)
    pct = 100.0 * train / total
    totals = f"parameters: {total:,} total, {train:,} trainable ({pct:.2f}%), {total - train:,} frozen"
    assert totals in lines

    probe = {}
    start = lines.index(next(line for line in lines if line.startswith("autograd, from one forward pass")))
    for line in lines[start + 3 :]:
        m = re.fullmatch(r"(\w+)\s+(\w+)\s+(True|False)\s+(.+?)\s*", line)
        if m:
            probe[m.group(1)] = (m.group(3), m.group(4))
    assert list(probe) == ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool", "fc"]
    for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2"):
        assert probe[name] == ("False", "None (no graph recorded)"), name
    requires_grad, grad_fn = probe["layer3"]
    assert requires_grad == "True" and re.fullmatch(r"\w+Backward\d*", grad_fn)
    assert "the autograd graph starts at 'layer3'; backward() does no work before it." in lines


# --------------------------------------------------------------------------- a second run into the same folder


def train_script_main():
    """``scripts/train.py``'s ``main``, imported from its file (scripts/ is no package)."""
    spec = importlib.util.spec_from_file_location("freezetune_scripts_train", ROOT / "scripts" / "train.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_rerun_into_the_same_folder_needs_overwrite(
    cli: Cli, record: Record, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Last in the module: it replaces the record the tests above read.
    # main() calls logging.basicConfig: whatever it installs goes away with this test.
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", list(root.handlers))
    monkeypatch.setattr(root, "level", root.level)
    main = train_script_main()
    before = folder_state(cli.out)
    rc = main(["--config", str(cli.config), *cli.overrides, "--no-progress"])
    refused = capsys.readouterr()
    assert rc == 2
    assert refused.err.startswith("error: ")
    assert "--overwrite" in refused.err
    assert str(cli.out) in refused.err
    assert refused.out == ""
    assert folder_state(cli.out) == before  # no file rewritten, not even touched

    # With --overwrite (and one epoch now) the folder holds the new run only.
    rc = main(["--config", str(cli.config), *cli.overrides, "train.epochs=1", "--overwrite", "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "epoch 1: train_loss" in out and "epoch 2" not in out
    rows = [json.loads(line) for line in (cli.out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1]  # not appended to the old run's two rows
    assert yaml.safe_load((cli.out / "config.yaml").read_text())["train"]["epochs"] == 1
    assert json.loads((cli.out / "summary.json").read_text())["epochs"] == 1
    assert sorted(p.name for p in cli.out.iterdir()) == record.files


def test_output_dir_that_is_a_file_is_a_run_folder_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tiny_cfg: Callable[..., Config]
) -> None:
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", list(root.handlers))
    monkeypatch.setattr(root, "level", root.level)
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(to_dict(tiny_cfg(tmp_path / "unused"))))
    not_a_folder = tmp_path / "results.txt"
    not_a_folder.write_text("my notes")
    rc = train_script_main()(["--config", str(config), f"train.output_dir={not_a_folder}", "--no-progress"])
    assert rc == 2
    assert capsys.readouterr().err.startswith("error: ")
    assert not_a_folder.read_text() == "my notes"
