"""The demo experiment: pretrain on Fashion-MNIST classes 0-4, fine-tune on 5-9
under several freezing configs, and tabulate what each cost and achieved."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from freezetune.apps.compare import interleave, run_action, seed_runs
from freezetune.apps.shipped import shipped_config
from freezetune.checks import resolve
from freezetune.config import Config, load_config, to_dict
from freezetune.record import EpochResult
from freezetune.report import build_report, load_run, write_report
from freezetune.train import Interrupted, Progress, estimate_config, no_progress, run
from freezetune.utils import format_table

__all__ = [
    "FINETUNE_CONFIGS",
    "PRETRAIN_CONFIG",
    "REPORT_DIR",
    "demo_report",
    "pretrain_is_current",
    "results_table",
    "run_demo",
]

log = logging.getLogger(__name__)

# Shipped configs (configs/ in the repository, freezetune/configs/ once installed). Their
# run folders, data root and the pretrained checkpoint they share are relative to the
# working directory: the demo writes runs/ and reads data/ where it is started.
PRETRAIN_CONFIG = "fmnist/pretrain_a.yaml"
REPORT_DIR = "runs/report"
FINETUNE_CONFIGS = (
    "fmnist/full.yaml",
    "fmnist/linear_probe.yaml",
    "fmnist/freeze_until_layer3.yaml",
    "fmnist/bitfit.yaml",
    # ULMFiT: the head, then layer4, then layer3, one epoch each.
    "fmnist/gradual.yaml",
    # The same two without the feature cache, for the report to show its effect.
    "fmnist/linear_probe_uncached.yaml",
    "fmnist/freeze_until_layer3_uncached.yaml",
)


def pretrain_is_current(cfg: Config) -> bool:
    """True when the run folder already holds a checkpoint trained from exactly this config."""
    ckpt = cfg.output_dir / "model.pt"
    if not ckpt.is_file() or not (cfg.output_dir / "summary.json").is_file():
        return False
    try:
        saved = torch.load(ckpt, map_location="cpu", weights_only=True).get("config")
    except Exception:  # a truncated or foreign file: retrain rather than trust it
        return False
    return saved == to_dict(resolve(cfg)[0])


def run_demo(
    overrides: list[str] | None = None,
    progress: Progress = no_progress,
    on_epoch: Callable[[str, EpochResult], None] | None = None,
) -> list[dict[str, Any]]:
    """Run (or reuse) the pretraining, then every fine-tune over its seeds (the configs'
    ``seeds:``), seed by seed across the configs; returns the runs (freezetune.report.load_run).
    A fine-tune already finished from the same config and backbone is reused, not retrained."""
    overrides = overrides or []
    pre = load_config(shipped_config(PRETRAIN_CONFIG), overrides)
    plans = [seed_runs(str(shipped_config(path)), overrides) for path in FINETUNE_CONFIGS]  # all errors first
    if pretrain_is_current(pre):
        log.info("pretraining: %s is current for %s, reusing it", pre.output_dir / "model.pt", PRETRAIN_CONFIG)
    else:
        log.info("pretraining %s on classes %s", pre.name, pre.data.classes)
        _stopped(run(pre, overwrite=True, progress=progress, on_epoch=_tagged(pre.name, on_epoch)), "pretraining")
    order = interleave(plans)
    done = {}
    for r in order:
        cfg = r.cfg
        label = f"{cfg.name} seed {cfg.seed}"
        # A run of the same config whose backbone has not changed since (run_action checks both).
        if run_action(cfg, overwrite=True) == "reuse":
            log.info("%s: reusing %s (finished, same config and backbone)", label, cfg.output_dir)
        else:
            log.info("fine-tuning %s into %s", label, cfg.output_dir)
            # In-process: run() resets the peak-memory mark, so each run still gets its own peak.
            _stopped(run(cfg, overwrite=True, progress=progress, on_epoch=_tagged(label, on_epoch)), label)
        done[(cfg.name, cfg.seed)] = load_run(cfg.output_dir)
    # Config by config, each one's seeds in order: how the tables read.
    return [done[(p.cfg.name, p.cfg.seed)] for plan in plans for p in plan]


def demo_report(
    runs: list[dict[str, Any]], overrides: list[str] | None = None, out_dir: str | Path = REPORT_DIR
) -> tuple[dict[str, Any], list[Path]]:
    """Predict each fine-tune's cost, then write the comparison report over seeds."""
    cache: dict = {}
    estimates = {}
    for path in FINETUNE_CONFIGS:
        cfg = load_config(shipped_config(path), overrides or [])
        if cfg.freeze.scheduled:
            continue  # one prediction per plan: a run whose plan changes has several
        estimates[cfg.name] = estimate_config(cfg, cache=cache).to_json()
    report = build_report(runs, estimates)
    return report, write_report(report, out_dir)


def _stopped(outcome: object, label: str) -> None:
    """A run stopped by Ctrl-C (or SIGTERM) stops the demo, saying what a rerun does: the runs
    after it are not started, and the tables are not written from a run that has no result."""
    if isinstance(outcome, Interrupted):
        raise KeyboardInterrupt(
            f"demo stopped: {label} was interrupted in epoch {outcome.epoch}. Run the demo again to go on: "
            "finished runs are reused, this one trains again"
        )


def _tagged(name: str, cb: Callable[[str, EpochResult], None] | None) -> Callable[[EpochResult], None] | None:
    return (lambda r: cb(name, r)) if cb else None


def results_table(summaries: list[dict[str, Any]]) -> str:
    """The demo's console table, one row per run: accuracy, time (``train s``: training passes and
    cache builds; ``run s``: the whole run, evaluation and measurement included), checkpoint
    sizes, the frozen check."""
    rows = []
    for s in summaries:
        cache = s.get("cache") or {}
        rows.append(
            [
                s["name"],
                str(s.get("seed", 0)),
                f"{s['params_trainable']:,}",
                f"{s['trainable_pct']:.2f}%",
                f"{s['final_val_acc']:.4f}",
                str(s["epochs"]),
                f"{s['epoch_time_s']:.1f}",
                f"{cache['build_s']:.1f}" if cache.get("used") else "-",
                f"{s.get('train_time_s', s['wall_time_s']):.1f}",
                f"{s['wall_time_s']:.1f}",
                f"{s['checkpoint']['full_bytes'] / 2**20:.1f} / {s['checkpoint']['delta_bytes'] / 2**20:.3f}",
                "yes" if s["frozen_unchanged"] else "NO",
            ]
        )
    headers = [
        "config",
        "seed",
        "trainable params",
        "trainable",
        "val acc",
        "epochs",
        "epoch s",
        "cache build s",
        "train s",
        "run s",
        "model.pt MiB full / delta",
        "frozen unchanged",
    ]
    return format_table(headers, rows, right={1, 2, 3, 4, 5, 6, 7, 8, 9, 10})
