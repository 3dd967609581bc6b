"""Multi-process training under torchrun (gloo, 2 CPU processes) against one process.

Pinned here: two processes with batch B train the same model as one process with
batch 2B (trainable parameters allclose, frozen ones bitwise equal and unchanged);
validation metrics are summed over both shards, not rank 0's; with an unfreeze
event mid-run, both ranks end with bitwise-identical parameters (without the
re-wrap they diverge, Lightning #20340: checked by hand, the digests differ and
the run exits 1); only rank 0 writes. One torchrun launch runs in the background
while the one-process reference trains in this process, in a process group of one.
The sharding itself is checked in process, without a process group."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import yaml
from torch.utils.data import DataLoader, TensorDataset

from freezetune.config import from_dict
from freezetune.record import Summary
from freezetune.train import run
from freezetune.train.distributed import Dist, ShardSampler, from_env, shard_loaders

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 240
# layer4's convolutions and the head train from epoch 1, layer3's convolutions join at
# epoch 2 (DDP must be rebuilt); every BatchNorm stays pinned in eval, so a sample's
# output does not depend on which process's batch it is in, and one process with batch
# 2B must train what two with batch B train.
TREE: dict[str, Any] = {
    "name": "ddp",
    "seed": 7,
    "model": {"arch": "freezetune_testnets:resnet18_narrow", "num_classes": 3},
    "data": {"dataset": "fake", "image_size": 16, "train_samples": 32, "val_samples": 10},
    "freeze": {
        "preset": "until:layer4",
        "rules": [{"freeze_type": "_BatchNorm"}],
        "schedule": [{"epoch": 2, "unfreeze": "layer3.*.conv*"}],
    },
    "train": {"epochs": 2, "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4}},
}


def config_tree(folder: Path, batch: int) -> dict[str, Any]:
    tree = json.loads(json.dumps(TREE))
    tree["data"]["batch_size"] = batch
    tree["train"]["output_dir"] = str(folder)
    return tree


class Launch:
    """``torchrun --standalone --nproc_per_node=2 scripts/train.py``, started in the background."""

    def __init__(self, config: Path) -> None:
        env = {**os.environ, "CI": "1", "OMP_NUM_THREADS": "1"}
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "scripts/train.py",
            "--config",
            str(config),
            "--no-progress",
        ]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.result: tuple[int, str, str] | None = None

    def done(self) -> tuple[int, str, str]:
        if self.result is None:
            out, err = self.proc.communicate(timeout=TIMEOUT_S)
            self.result = (self.proc.returncode, out, err)
        return self.result


@dataclass
class Runs:
    one: Path  # one process, batch 8, in this process (a process group of one)
    two: Path  # two processes under torchrun, batch 4 each
    one_summary: Summary
    two_summary: dict
    stdout: str


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    tmp = tmp_path_factory.mktemp("ddp")
    config = tmp / "two.yaml"
    config.write_text(yaml.safe_dump(config_tree(tmp / "two", 4)))
    launch = Launch(config)  # runs while the one-process run below trains
    dist.init_process_group("gloo", init_method=f"file://{tmp / 'pg'}", rank=0, world_size=1)
    try:
        one = run(from_dict(config_tree(tmp / "one", 8)), dist=Dist(0, 1, 0, "gloo", torch.device("cpu")))
    finally:
        dist.destroy_process_group()
    rc, out, err = launch.done()
    assert rc == 0, f"exit {rc}\n{out}\n{err[-3000:]}"
    return Runs(tmp / "one", tmp / "two", one.summary, json.loads((tmp / "two" / "summary.json").read_text()), out)


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return torch.load(folder / "model.pt", weights_only=True)["model"]


def metrics(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


# --------------------------------------------------------------------------- in process


def test_two_shards_of_batch_b_are_one_batch_of_2b() -> None:
    ds = TensorDataset(torch.arange(32.0), torch.zeros(32))
    one = shard_loaders(DataLoader(ds, batch_size=8), DataLoader(ds, batch_size=8), Dist(0, 1, 0), seed=3)[0]
    shards = [
        shard_loaders(DataLoader(ds, batch_size=4), DataLoader(ds, batch_size=4), Dist(r, 2, r), seed=3)[0]
        for r in (0, 1)
    ]
    for epoch in (0, 1):
        for loader in (one, *shards):
            loader.sampler.set_epoch(epoch)  # type: ignore[attr-defined]
        steps = [sorted(torch.cat([a[0], b[0]]).tolist()) for a, b in zip(*shards, strict=True)]
        assert steps == [sorted(x.tolist()) for x, _ in one]
    one.sampler.set_epoch(0)  # type: ignore[attr-defined]
    first = [x.tolist() for x, _ in one]
    one.sampler.set_epoch(1)  # type: ignore[attr-defined]
    assert first != [x.tolist() for x, _ in one]  # set_epoch reshuffles


def test_validation_shards_cover_every_sample_once() -> None:
    shards = [list(ShardSampler(10, r, 3)) for r in range(3)]
    assert shards == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]
    assert sorted(i for s in shards for i in s) == list(range(10))


def test_from_env_reads_torchrun_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    assert from_env() is None
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    d = from_env()
    assert d is not None and (d.rank, d.world, d.local_rank, d.is_main) == (3, 4, 1, False)


# --------------------------------------------------------------------------- torchrun


def test_two_processes_train_what_one_process_trains(runs: Runs) -> None:
    assert runs.two_summary["distributed"] | {"rank_parameter_sha256": None} == {
        "world_size": 2,
        "backend": "gloo",
        "batch_per_process": 4,
        "global_batch": 8,
        "rank_parameter_sha256": None,
        "replicas_identical": True,
    }
    assert runs.one_summary.distributed["global_batch"] == 8
    w1, w2 = weights(runs.one), weights(runs.two)
    base = prepared_base()
    expected = (
        {k for k in w1 if k.startswith("layer3.") and ".conv" in k}
        | {k for k in w1 if k.startswith("layer4.") and (".conv" in k or "downsample.0" in k)}
        | {"fc.weight", "fc.bias"}
    )
    assert len(expected) == 4 + 5 + 2  # layer3's convolutions, layer4's and its downsample, the head
    assert {k for k in w1 if not torch.equal(w1[k], base[k])} == expected  # exactly these trained
    for key in w1:
        if key in expected:
            torch.testing.assert_close(w2[key], w1[key], rtol=1e-5, atol=1e-6)
        else:
            assert torch.equal(w2[key], w1[key]), key  # frozen tensors and pinned BatchNorm buffers: bitwise
    assert runs.one_summary.frozen_unchanged and runs.two_summary["frozen_unchanged"]


def test_metrics_are_reduced_over_all_ranks(runs: Runs) -> None:
    m1, m2 = metrics(runs.one), metrics(runs.two)
    assert [r["steps"] for r in m2] == [4, 4]  # 32 samples / (2 x 4) per step
    for a, b in zip(m1, m2, strict=True):
        # 10 validation images split 5 / 5; rank 0's half alone could not give the same
        # accuracy in general, and the losses are means over all 10.
        assert b["val_acc"] == a["val_acc"]
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-5)
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5)


def test_an_unfreeze_event_under_ddp_keeps_replicas_identical(runs: Runs) -> None:
    summary = runs.two_summary
    digests = summary["distributed"]["rank_parameter_sha256"]
    assert len(digests) == 2 and digests[0] == digests[1]
    events = [e for e in summary["schedule"] if e["event"] == "unfreeze"]
    assert [(e["epoch"], e["target"], e["tensors"], e["unchanged_until_event"]) for e in events] == [
        (2, "layer3.*.conv*", 4, True)
    ]
    assert [r["trainable_tensors"] for r in metrics(runs.two)] == [7, 11]  # layer4's 5 + head's 2, then + 4
    assert summary["cache"]["used"] is False and "DDP" in summary["cache"]["reason"]
    assert "2 processes (gloo), global batch 8, replicas bitwise identical: yes" in runs.stdout
    # One writer: the record's files, once each; rank 0's lines only.
    assert sorted(p.name for p in runs.two.iterdir()) == sorted(
        [
            "config.yaml",
            "freeze_plan.json",
            "metrics.jsonl",
            "events.jsonl",
            "steps.jsonl",
            "summary.json",
            "model.pt",
            "best.pt",
        ]
    )
    lines = runs.stdout.splitlines()  # rank 0's alone: two epoch lines, each line once
    assert sum(line.startswith("epoch ") for line in lines) == 2 and len(set(lines)) == len(lines)


@cache
def prepared_base() -> dict[str, torch.Tensor]:
    from freezetune.train import prepare_model

    return prepare_model(from_dict(config_tree(Path("/unused"), 8))).model.state_dict()


# --------------------------------------------------------------------------- freeze.preset auto


# Three interpreters (11 s of a 2-core run, a tenth of `make test`): under `make test-all`. The rule it
# checks end to end, deciding on the sums of every rank, is checked in process by the next test.
@pytest.mark.heavy
def test_auto_decides_the_same_prefix_on_both_ranks(tmp_path: Path) -> None:
    """Each rank samples its own gradients' norms; the decision is taken on their all-reduced
    sums, so both freeze the same stages at the same step (else DDP's rebuild would hang or the
    replicas would differ). One process with the global batch decides the same."""
    raw = config_tree(tmp_path / "two", 4)
    raw["freeze"] = {"preset": "auto", "auto": {"threshold": 1e9, "ceiling": "layer3", "sample_every": 1}}
    raw["train"]["epochs"] = 3
    # Two steps an epoch (16 images, 2 x 4 a step) sample each rank's norms as well as four: what
    # is checked is that both ranks decide on the same sums; most of the time is three interpreters.
    raw["data"] |= {"train_samples": 16, "val_samples": 4}
    (tmp_path / "auto.yaml").write_text(yaml.safe_dump(raw))
    rc, out, err = Launch(tmp_path / "auto.yaml").done()
    assert rc == 0, f"exit {rc}\n{out}\n{err[-3000:]}"
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["distributed"]["replicas_identical"] is True and summary["frozen_unchanged"]
    decided = [d["freeze"] for d in summary["auto"]["decisions"]]
    assert decided == [[], ["conv1", "bn1", "layer1", "layer2"], []]
    events = [json.loads(line) for line in (tmp_path / "two" / "events.jsonl").read_text().splitlines()]
    assert [e["target"] for e in events if e["event"] == "freeze"] == ["conv1", "bn1", "layer1", "layer2"]


def test_auto_decides_on_the_sums_of_every_rank() -> None:
    """end_epoch all-reduces the epoch's sums before deciding: a rank whose own norms say
    "still learning" freezes when the global ones say "converged", as its peers do."""
    from freezetune.config import AutoFreezeConfig
    from freezetune.plan import describe
    from freezetune.train.auto import AutoFreezer

    class Peer:
        """One other rank, whose stage-0 gradient norm is 9 * sqrt(6) in both epochs (one sample each)."""

        calls = 0

        def sum_(self, t: torch.Tensor) -> torch.Tensor:
            Peer.calls += 1
            return t + (9 * 6**0.5 if Peer.calls % 2 else 1.0)  # the sums, then the counts

    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))  # stage "0", head "1"
    tree = describe(model)
    auto = AutoFreezer(model, tree, AutoFreezeConfig(threshold=0.5), 5, torch.device("cpu"))
    auto.dist = Peer()  # type: ignore[assignment]
    for epoch, grad in ((1, 1.0), (2, 2.0)):  # our own norm doubles: rate 1.0, still learning alone
        for p in model.parameters():
            p.grad = torch.full_like(p, grad)
        auto.sample(0)
        decision, stages = auto.end_epoch(epoch)
    # Globally: (1 + 9) / 2 -> (2 + 9) / 2 times sqrt(6): rate 0.1, converged.
    assert auto.history[0]["0"] == pytest.approx(5 * 6**0.5) and auto.history[1]["0"] == pytest.approx(5.5 * 6**0.5)
    assert decision.rates["0"] == pytest.approx(0.1) and stages == ["0"]
