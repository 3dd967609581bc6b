"""freeze.adapters under torchrun (gloo, 2 CPU processes) against one process with the
double batch: the adapters are injected before DDP wraps the model, every rank starts from
the same adapters, the replicas stay bitwise identical, and they train what one process
trains; only rank 0 writes the adapter files. Heavy (a torchrun launch, about a minute on 2
busy cores): ``make test-all``."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import yaml

from freezetune.config import from_dict
from freezetune.train import run
from freezetune.train.distributed import Dist

# Skipped without peft, found rather than imported: importing peft (with transformers, 3 to 5 s)
# at collection would cost every test worker, not only the one that runs these tests.
pytestmark = [
    pytest.mark.heavy,
    pytest.mark.skipif(importlib.util.find_spec("peft") is None, reason="peft is not installed"),
]

ROOT = Path(__file__).resolve().parents[2]


def tree(folder: Path, batch: int) -> dict[str, Any]:
    # Every BatchNorm pinned (linear_probe), so a sample's output does not depend on its batch.
    return {
        "name": "ddp_lora",
        "seed": 7,
        "model": {"arch": "freezetune_testnets:resnet18_narrow", "num_classes": 3},
        "data": {"dataset": "fake", "image_size": 16, "train_samples": 32, "val_samples": 10, "batch_size": batch},
        "freeze": {"preset": "linear_probe", "adapters": [{"modules": "layer4", "rank": 2, "alpha": 4}]},
        "train": {"epochs": 1, "output_dir": str(folder), "optimizer": {"name": "sgd", "lr": 0.05}},
    }


def test_two_processes_train_the_adapters_one_process_trains(tmp_path: Path) -> None:
    config = tmp_path / "two.yaml"
    config.write_text(yaml.safe_dump(tree(tmp_path / "two", 4)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "scripts/train.py"]
    env = {**os.environ, "CI": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [*cmd, "--config", str(config), "--no-progress"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # One process in a process group of its own: the same sharded sampler, so the same batches.
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        one = run(from_dict(tree(tmp_path / "one", 8)), dist=Dist(0, 1, 0, "gloo", torch.device("cpu"))).summary
    finally:
        dist.destroy_process_group()
    two = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert two["distributed"]["replicas_identical"] is True and two["frozen_unchanged"] is True
    assert one.frozen_unchanged
    w1 = torch.load(tmp_path / "one" / "model.pt", weights_only=True)["model"]
    w2 = torch.load(tmp_path / "two" / "model.pt", weights_only=True)["model"]
    assert w1["layer4.1.conv2.lora_B.default.weight"].abs().max() > 0  # B starts at zero: the adapters trained
    for key in w1:
        torch.testing.assert_close(w2[key], w1[key], rtol=1e-5, atol=1e-6)
    assert {"adapters.pt", "merged.pt", "adapters"} <= {p.name for p in (tmp_path / "two").iterdir()}
