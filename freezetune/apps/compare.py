"""Run several configs, each in its own process (so its peak memory is its own),
and predict each one's cost from the per-module profile."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import torch

from freezetune.config import Config, load_config
from freezetune.measure import Estimate, estimate, profile_model
from freezetune.train import Prepared, make_optimizer, num_outputs, prepare_model

__all__ = ["estimate_config", "train_in_subprocess"]

log = logging.getLogger(__name__)


def train_in_subprocess(config: str | Path, overrides: list[str]) -> Path:
    """``python -m freezetune train --config ... --overwrite`` in a fresh interpreter (the
    installed package, wherever it runs from); returns the run folder."""
    cfg = load_config(config, overrides)  # fail here, with the message, before spawning
    cmd = [
        sys.executable,
        "-m",
        "freezetune",
        "train",
        "--config",
        str(config),
        *overrides,
        "--overwrite",
        "--no-progress",
    ]
    log.info("training %s: %s", cfg.name, " ".join(cmd[1:]))
    done = subprocess.run(cmd, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{config} failed with exit status {done.returncode}")
    return cfg.output_dir


def estimate_config(
    cfg: Config, reps: int = 7, cache: dict | None = None, prepared: Prepared | None = None
) -> Estimate:
    """The prediction for ``cfg`` on one batch of its shape (weights do not change timing).

    ``cache`` shares the profile between configs of the same architecture,
    batch shape, class count and optimizer; ``prepared`` reuses a model already built."""
    prepared = prepared or prepare_model(cfg)
    size, n = cfg.data.image_size, cfg.data.batch_size
    k = num_outputs(cfg)
    x = torch.randn(n, 3, size, size, device=prepared.device)
    key = (cfg.model.arch, size, n, k, cfg.train.optimizer.name, str(prepared.device))
    profile = cache.get(key) if cache is not None else None

    def make(model: torch.nn.Module) -> torch.optim.Optimizer:
        return make_optimizer(model, cfg.train.optimizer)

    if profile is None:
        profile = profile_model(prepared.model, x, k, make, reps)
        if cache is not None:
            cache[key] = profile
    return estimate(prepared.model, x, k, make, reps, profile)
