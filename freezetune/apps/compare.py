"""Run several configs, each in its own process (so its peak memory is its own),
and predict each one's cost from the per-module profile."""

from __future__ import annotations

import logging
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from freezetune.config import Config, load_config, resolve, to_dict, weights_kind
from freezetune.measure import Estimate, estimate, profile_model
from freezetune.record import OWN_FILES, RunExistsError
from freezetune.train import Prepared, make_optimizer, num_outputs, prepare_model

__all__ = ["SeedRun", "TrainingFailed", "estimate_config", "run_action", "seed_runs", "train_in_subprocess"]

log = logging.getLogger(__name__)


class TrainingFailed(RuntimeError):
    """A config's training process exited with an error (it printed its own message)."""


@dataclass(frozen=True)
class SeedRun:
    """One run of a comparison: a config file, the edits that make it this seed's run, and
    the config they load to."""

    file: str
    overrides: list[str]
    cfg: Config


def seed_runs(file: str, overrides: list[str], seeds: int | None = None) -> list[SeedRun]:
    """The runs that compare trains for one config file: its ``seeds`` (``--seeds``, else the
    config's own ``seeds:``) from ``seed`` up. One seed is the config's run as it stands;
    several each get their folder ``<output_dir>-seed<S>`` and ``seeds: 1`` (a run is one
    seed), so a finished seed is found and reused whatever N a later comparison asks for."""
    cfg = load_config(file, overrides)  # every error here, before anything trains
    n = seeds if seeds is not None else cfg.seeds
    if n == 1:
        return [SeedRun(file, overrides, cfg)]
    out = []
    for seed in range(cfg.seed, cfg.seed + n):
        edits = [*overrides, f"seed={seed}", "seeds=1", f"train.output_dir={cfg.output_dir}-seed{seed}"]
        out.append(SeedRun(file, edits, load_config(file, edits)))
    return out


def run_action(cfg: Config, overwrite: bool) -> str:
    """What compare does with ``cfg``'s run folder: ``reuse`` a finished run of this very
    config, ``train`` into an empty folder, or ``replace`` another run (only with
    ``overwrite``; without it, RunExistsError names the run, before anything trains).

    A run is not reused when its ``model.weights`` file changed after it finished (a
    retrained backbone, under the same path)."""
    folder = cfg.output_dir
    stale = ""
    if (folder / "summary.json").is_file() and (folder / "config.yaml").is_file():
        try:
            saved = yaml.safe_load((folder / "config.yaml").read_text())
        except yaml.YAMLError:
            saved = None
        if saved == to_dict(resolve(cfg)[0]):  # config.yaml holds the resolved preprocessing
            stale = _weights_newer(cfg, folder / "summary.json")
            if not stale:
                return "reuse"
    if not any((folder / f).exists() for f in OWN_FILES):
        return "train"
    if overwrite:
        return "replace"
    what = stale or "a different config, or unfinished"
    raise RunExistsError(
        f"{folder} holds another run than {cfg.name}'s config asks for ({what}). "
        "HINT: pass --overwrite to compare to replace it, or set name=... / train.output_dir=... for new runs"
    )


def _weights_newer(cfg: Config, finished: Path) -> str:
    """Why a finished run of this config is out of date: its weights file is newer ('' if not)."""
    weights = cfg.model.weights
    if weights_kind(cfg.model.arch, weights) != "file":
        return ""
    path = Path(str(weights)).expanduser()
    if path.is_file() and path.stat().st_mtime > finished.stat().st_mtime:
        return f"its model.weights {path} changed after it finished"
    return ""


def train_in_subprocess(config: str | Path, overrides: list[str], overwrite: bool = False) -> Path:
    """``python -m freezetune train --config ...`` in a fresh interpreter (the installed
    package, wherever it runs from), so each run's peak memory is its own; returns the run folder."""
    cfg = load_config(config, overrides)  # fail here, with the message, before spawning
    cmd = [sys.executable, "-m", "freezetune", "train", "--config", str(config), *overrides, "--no-progress"]
    if overwrite:
        cmd.append("--overwrite")
    log.info("training %s: %s", cfg.name, " ".join(cmd[1:]))
    done = subprocess.run(cmd, check=False)
    if done.returncode != 0:
        raise TrainingFailed(f"training {config} failed with exit status {done.returncode} (its error is above)")
    return cfg.output_dir


def estimate_config(
    cfg: Config, reps: int = 7, cache: dict | None = None, prepared: Prepared | None = None
) -> Estimate:
    """The prediction for ``cfg`` on one batch of its shape (weights do not change timing),
    its steps in the run's precision and memory format (``train.precision``, ``train.channels_last``).

    ``cache`` shares the profile between configs of the same architecture, batch shape,
    class count, optimizer, precision and memory format; ``prepared`` reuses a model already built."""
    prepared = prepared or prepare_model(cfg)
    cfg = prepared.cfg  # its preprocessing resolved: the image size the weights want
    size, n, t = cfg.data.image_size, cfg.data.batch_size, cfg.train
    k = num_outputs(cfg)
    x = torch.randn(n, 3, size, size, device=prepared.device)
    key = (cfg.model.arch, size, n, k, t.optimizer.name, str(prepared.device), t.precision, t.channels_last)
    profile = cache.get(key) if cache is not None else None

    def make(model: torch.nn.Module) -> torch.optim.Optimizer:
        return make_optimizer(model, t.optimizer)

    if profile is None:
        profile = profile_model(prepared.model, x, k, make, reps, precision=t.precision, channels_last=t.channels_last)
        if cache is not None:
            cache[key] = profile
    return estimate(prepared.model, x, k, make, reps, profile, precision=t.precision, channels_last=t.channels_last)
