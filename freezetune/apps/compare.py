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

from freezetune import checks
from freezetune.checks import resolve
from freezetune.config import Config, load_config, to_dict
from freezetune.data import build_loaders
from freezetune.measure import Estimate, StepFormat, estimate, profile_model
from freezetune.models import weights_kind
from freezetune.record import OWN_FILES, RunExistsError
from freezetune.report import config_differences
from freezetune.train import Prepared, make_optimizer, num_outputs, prepare_model
from freezetune.utils import TrainingFailed

__all__ = [
    "SeedRun",
    "TrainingFailed",
    "check_runnable",
    "estimate_config",
    "interleave",
    "run_action",
    "seed_runs",
    "train_in_subprocess",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SeedRun:
    """One run of a comparison: a config file, the edits that make it this seed's run, and
    the config they load to."""

    file: str
    overrides: list[str]
    cfg: Config


def seed_runs(file: str, overrides: list[str], seeds: int | None = None) -> list[SeedRun]:
    """The runs that compare trains for one config file: its ``seeds`` (``--seeds``, else the
    config's own ``seeds:``) from ``seed`` up, each in its folder ``<output_dir>-seed<S>`` with
    ``seeds: 1`` (a run is one seed), so a finished seed is found and reused whatever N a later
    comparison asks for. A config of ``seeds: 1`` compared without ``--seeds`` is its run as it
    stands, in ``<output_dir>``."""
    cfg = checks.load(file, overrides).cfg  # every error here, the model's and the data's too, before anything trains
    if seeds is None and cfg.seeds == 1:
        return [SeedRun(file, overrides, cfg)]
    n = seeds if seeds is not None else cfg.seeds
    out = []
    # The keys each seed's run sets itself; the user's own (the first seed, the base folder) are in cfg.
    own = [o for o in overrides if o.split("=", 1)[0].strip() not in ("seed", "seeds", "train.output_dir")]
    for seed in range(cfg.seed, cfg.seed + n):
        edits = [*own, f"seed={seed}", "seeds=1", f"train.output_dir={cfg.output_dir}-seed{seed}"]
        out.append(SeedRun(file, edits, load_config(file, edits)))
    return out


def interleave(plans: list[list[SeedRun]]) -> list[SeedRun]:
    """Seed by seed across the configs (A0 B0 A1 B1 ...): a slow minute of the machine hits
    every config, not one."""
    return [p[i] for i in range(max(len(p) for p in plans)) for p in plans if i < len(p)]


def check_runnable(cfg: Config) -> None:
    """What training would refuse at its start, found before a comparison trains anything: the
    model, its weights and the freezing plan (prepare_model), the data's folders and classes
    (the images themselves are decoded by each run)."""
    prepared = prepare_model(cfg)
    build_loaders(prepared.cfg.data, cfg.seed, prepared.num_classes, check_images=False)


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
    what = stale or _what_differs(folder, cfg)
    raise RunExistsError(
        f"{folder} holds another run than {cfg.name}'s config asks for ({what}). "
        "HINT: pass --overwrite to replace it, or give the config another name in its file to keep both"
    )


def _what_differs(folder: Path, cfg: Config) -> str:
    """Why a run folder does not hold this config's run, as the keys that differ."""
    if not (folder / "summary.json").is_file():
        return "an unfinished run"
    try:
        saved = yaml.safe_load((folder / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return "a run without a readable config.yaml"
    keys = config_differences({"run": saved or {}, "config": to_dict(resolve(cfg)[0])})
    if not keys:
        return "a different config"
    shown = [f"{k}: {v['run']!r} there, {v['config']!r} now" for k, v in list(keys.items())[:3]]
    return "its config differs in " + "; ".join(shown) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")


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
    cfg = checks.load(config, overrides).cfg  # fail here, with the message, before spawning
    cmd = [sys.executable, "-m", "freezetune", "train", "--config", str(config), *overrides, "--no-progress"]
    if overwrite:
        cmd.append("--overwrite")
    log.info("training %s: %s", cfg.name, " ".join([Path(sys.executable).name, *cmd[1:]]))
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
    return estimate(prepared.model, x, k, make, reps, profile, StepFormat(t.precision, t.channels_last))
