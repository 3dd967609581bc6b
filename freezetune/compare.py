"""Run several configs, each in its own process (so its peak memory is its own),
and predict each one's cost from the per-module profile."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import torch

from freezetune.config import Config, load_config
from freezetune.estimate import estimate, profile_full
from freezetune.run import prepare_model

__all__ = ["estimate_config", "train_in_subprocess"]

log = logging.getLogger(__name__)

TRAIN_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "train.py"


def train_in_subprocess(config: str | Path, overrides: list[str]) -> Path:
    """``scripts/train.py --config ... --overwrite`` in a fresh interpreter; returns the run folder."""
    cfg = load_config(config, overrides)  # fail here, with the message, before spawning
    cmd = [sys.executable, str(TRAIN_SCRIPT), "--config", str(config), *overrides, "--overwrite", "--no-progress"]
    log.info("training %s: %s", cfg.name, " ".join(cmd[1:]))
    done = subprocess.run(cmd, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{config} failed with exit status {done.returncode}")
    return cfg.output_dir


def estimate_config(cfg: Config, reps: int = 3, cache: dict | None = None) -> dict:
    """The prediction for ``cfg`` on one batch of its shape (weights do not change timing).

    ``cache`` shares the full-fine-tuning profile between configs of the same
    architecture, batch shape and optimizer."""
    prepared = prepare_model(cfg)
    size, n = cfg.data.image_size, cfg.data.batch_size
    x = torch.randn(n, 3, size, size, device=prepared.device)
    key = (cfg.model.arch, size, n, cfg.train.optimizer.name, str(prepared.device))
    full = cache.get(key) if cache is not None else None
    if full is None:
        full = profile_full(prepared.model, x, cfg.train.optimizer, reps)
        if cache is not None:
            cache[key] = full
    return estimate(prepared.model, x, cfg.train.optimizer, reps, full).to_json()
