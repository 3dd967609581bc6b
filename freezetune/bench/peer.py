"""freezetune against another framework doing the same work: ``freezetune benchmark --peer lightning``.

Each pair trains one shipped config of the Fashion-MNIST transfer demo twice: with freezetune
(``freezetune.train.run``, as a user runs it) and with Lightning the way its documentation
does it (freezetune.bench.lightning_peer). Both build the model, the fresh head and the
DataLoaders with freezetune's code from the same config and seed, so the same weights see
the same batches in the same order under the same optimizer and LR schedule. Every run is
a fresh process (freezetune.bench.peer_worker), the pair's runs alternated and their order
reversed every other repeat, so that drift in the machine's speed lands on both sides alike.

That the work really was the same is checked, not assumed: where it should be, the first
step's loss must agree to :data:`FIRST_LOSS_TOLERANCE`; a pair that does not is flagged.

This module does not import Lightning: the worker does, in the Lightning runs only."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from freezetune.apps.shipped import shipped_config
from freezetune.config import ConfigError
from freezetune.utils import TrainingFailed, format_table

__all__ = [
    "FIRST_LOSS_TOLERANCE",
    "PAIRS",
    "PEERS",
    "Pair",
    "PeerReport",
    "Side",
    "benchmark_peer",
    "peer_tables",
    "require_peer",
    "run_worker",
]

PEERS = ("lightning",)
PEERS_HINT = "pip install 'freezetune[peers]' (pip install '.[peers]' in the repository)"
# Both frameworks run the same float32 ops on the same batch: on one device the first losses
# agree to the last bit; the tolerance allows for a kernel chosen differently on another device.
FIRST_LOSS_TOLERANCE = 1e-5
# The once-only reproduction of BackboneFinetuning with LambdaLR needs only to reach the unfreeze.
CRASH_STEPS_PER_EPOCH = 2


@dataclass(frozen=True)
class Side:
    """One framework's way of doing a pair's work.

    Args:
        framework: ``freezetune`` or ``lightning``.
        variant: for Lightning, a key of freezetune.bench.lightning_peer.LIGHTNING_VARIANTS.
        same_work: whether it does exactly freezetune's work, so the first losses must agree.
    """

    framework: str
    variant: str = "config"
    same_work: bool = True

    @property
    def label(self) -> str:
        """How tables name it."""
        return self.framework if self.variant == "config" else f"{self.framework}:{self.variant}"


FREEZETUNE = Side("freezetune")


@dataclass(frozen=True)
class Pair:
    """A shipped config and the Lightning variants that do (or attempt) its work."""

    name: str
    config: str  # shipped, relative to freezetune's configs
    peers: tuple[Side, ...]


PAIRS = (
    Pair("full", "fmnist/full.yaml", (Side("lightning", "full"),)),
    # train_bn=False normalises the frozen backbone with batch statistics in training: not
    # freezetune's work, and its first loss shows it. Held in eval, it is the same work.
    Pair(
        "linear_probe",
        "fmnist/linear_probe.yaml",
        (Side("lightning", "probe_train_bn_false", same_work=False), Side("lightning", "probe_bn_eval")),
    ),
    # BackboneFinetuning unfreezes one backbone at one epoch: the nearest mapping, not the same work.
    Pair("gradual", "fmnist/gradual.yaml", (Side("lightning", "gradual", same_work=False),)),
)


def require_peer(peer: str) -> None:
    """Raise :class:`ConfigError` (nothing written, exit 2) unless ``peer`` is known and installed."""
    if peer not in PEERS:
        raise ConfigError([f"--peer: {peer!r} is not a framework freezetune compares with; choose {', '.join(PEERS)}"])
    try:
        import lightning.pytorch  # noqa: F401  (an optional extra: pyproject's [peers])
    except ImportError:
        raise ConfigError([f"--peer lightning needs Lightning, which is not installed. HINT: {PEERS_HINT}"]) from None


def run_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Run ``spec`` in a fresh ``python -m freezetune.bench.peer_worker``; returns its result
    with ``wall_s``, the whole process from start to exit as seen from here."""
    cmd = [sys.executable, "-m", "freezetune.bench.peer_worker", json.dumps(spec)]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-5:])
        raise TrainingFailed(f"{spec['framework']} {spec.get('variant', '')} on {spec['config']} failed: {tail}")
    return json.loads(Path(spec["out"]).read_text()) | {"wall_s": wall}


@dataclass
class PeerReport:
    """Every run, the pairs summarised over repeats, the BatchNorm feature check and the
    LambdaLR reproduction; :meth:`to_json` is runs/benchmark_peer.json."""

    repeats: int
    overrides: list[str]
    runs: list[dict[str, Any]] = field(default_factory=list)
    pairs: list[dict[str, Any]] = field(default_factory=list)
    features: list[dict[str, Any]] = field(default_factory=list)
    lambdalr: dict[str, Any] | None = None

    @property
    def mismatches(self) -> list[str]:
        """The pairs that should have done the same work and did not (first losses differ)."""
        return [f"{p['pair']} vs {p['peer']}" for p in self.pairs if p["same_work"] and not p["first_loss_equal"]]

    def to_json(self) -> dict[str, Any]:
        """Everything, as written to the JSON file."""
        return {
            "repeats": self.repeats,
            "overrides": self.overrides,
            "first_loss_tolerance": FIRST_LOSS_TOLERANCE,
            "pairs": self.pairs,
            "features": self.features,
            "lambdalr": self.lambdalr,
            "runs": self.runs,
        }


def benchmark_peer(
    overrides: list[str] | None = None,
    repeats: int = 3,
    pairs: tuple[Pair, ...] = PAIRS,
    on_run: Callable[[dict[str, Any]], None] | None = None,
) -> PeerReport:
    """Train every pair's sides ``repeats`` times, each run in its own process, alternated
    (A B, then B A); then, untimed, the head input norms of the linear probe's sides and,
    with the gradual pair, BackboneFinetuning with LambdaLR once. ``overrides`` edit every
    config; ``on_run`` sees each run's result as it finishes."""
    overrides = list(overrides or [])
    report = PeerReport(repeats, overrides)
    with tempfile.TemporaryDirectory(prefix="freezetune-peer-") as tmp:
        count = 0

        def one(pair: Pair, side: Side, extra: list[str] | None = None, **flags: Any) -> dict[str, Any]:
            nonlocal count
            count += 1
            spec = {
                "framework": side.framework,
                "variant": side.variant,
                "config": str(shipped_config(pair.config)),
                "overrides": [*overrides, *(extra or [])],
                "out": f"{tmp}/{count}.json",
                **flags,
            }
            return run_worker(spec) | {"pair": pair.name, "framework": side.framework, "variant": side.variant}

        for r in range(repeats):
            for pair in pairs:
                sides = [FREEZETUNE, *pair.peers]
                for side in sides if r % 2 == 0 else reversed(sides):
                    result = one(pair, side) | {"repeat": r}
                    report.runs.append(result)
                    if on_run:
                        on_run(result)
        report.pairs = [_summarise(pair, peer, report.runs) for pair in pairs for peer in pair.peers]
        for pair in pairs:
            if pair.name == "linear_probe":
                for side in (FREEZETUNE, *pair.peers):
                    report.features.append(one(pair, side, features=True) | {"label": side.label})
            if pair.name == "gradual":
                crash = one(
                    pair, Side("lightning", "gradual_lambdalr"), [f"train.max_steps_per_epoch={CRASH_STEPS_PER_EPOCH}"]
                )
                report.lambdalr = {"error": crash["error"], "steps_per_epoch": CRASH_STEPS_PER_EPOCH}
    return report


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


_METRICS = ("wall_s", "train_s", "step_s", "peak_rss_bytes")


def _summarise(pair: Pair, peer: Side, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One pair over its repeats: each side's medians, freezetune / peer per repeat (median,
    min, max), and whether the first losses agree."""

    def mine(side: Side) -> list[dict[str, Any]]:
        return sorted(
            (
                r
                for r in runs
                if r["pair"] == pair.name and r["framework"] == side.framework and r["variant"] == side.variant
            ),
            key=lambda r: r["repeat"],
        )

    ft, other = mine(FREEZETUNE), mine(peer)
    ratios = {
        m: _spread([a[m] / b[m] for a, b in zip(ft, other, strict=True) if a[m] and b[m]])
        for m in _METRICS
        if all(a[m] and b[m] for a, b in zip(ft, other, strict=True))
    }
    medians = {
        side.label: {
            m: statistics.median(r[m] for r in rs) for m in (*_METRICS, "val_acc") if all(r[m] is not None for r in rs)
        }
        for side, rs in ((FREEZETUNE, ft), (peer, other))
    }
    first_ft, first_peer = ft[0]["first_loss"], other[0]["first_loss"]
    diff = abs(first_ft - first_peer) if first_ft is not None and first_peer is not None else None
    return {
        "pair": pair.name,
        "config": pair.config,
        "peer": peer.label,
        "same_work": peer.same_work,
        "first_loss": {"freezetune": first_ft, peer.label: first_peer, "abs_difference": diff},
        "first_loss_equal": diff is not None and diff <= FIRST_LOSS_TOLERANCE,
        # Each side's first loss in every repeat: seeded runs repeat exactly.
        "repeats_identical": len({r["first_loss"] for r in ft}) == 1 and len({r["first_loss"] for r in other}) == 1,
        "medians": medians,
        "ratio_freezetune_over_peer": ratios,
    }


def _mib(n: float) -> str:
    return f"{n / 2**20:.0f}"


def _ratio(r: dict[str, float] | None) -> str:
    return f"{r['median']:.2f} [{r['min']:.2f}–{r['max']:.2f}]" if r else "-"


def peer_tables(report: PeerReport) -> str:
    """The console tables: per run kind (medians over repeats), per pair (ratios with their
    min–max over repeats and the first-loss check), the BatchNorm features, the LambdaLR crash."""
    parts = [
        _runs_table(report),
        "",
        f"freezetune / Lightning, median [min–max] over {report.repeats} repeat(s):",
        _pairs_table(report),
    ]
    if report.features:
        parts += [
            "",
            "linear probe, the features entering the head (first validation batch, mean L2 norm):",
            _features_table(report),
        ]
    if report.lambdalr is not None:
        err = report.lambdalr["error"]
        parts.append("")
        if err is None:
            parts.append("BackboneFinetuning with LambdaLR: ran without error")
        else:
            parts.append(
                f"BackboneFinetuning with LambdaLR: {err['type']}: {err['message']} "
                f"(epoch {err['epoch']}, after step {err['global_step']}; at {err['where']})"
            )
    return "\n".join(parts)


def _runs_table(report: PeerReport) -> str:
    """One row per pair, framework and variant: medians over the repeats."""
    kinds: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in report.runs:
        kinds.setdefault((r["pair"], r["framework"], r["variant"]), []).append(r)
    rows = []
    for (pair, framework, variant), rs in kinds.items():

        def med(key: str, rs: list[dict[str, Any]] = rs) -> float | None:
            values = [r[key] for r in rs if r[key] is not None]
            return statistics.median(values) if values else None

        step = med("step_s")
        rows.append(
            [
                pair,
                Side(framework, variant).label,
                f"{med('wall_s'):.1f}",
                f"{med('train_s'):.1f}",
                f"{1000 * step:.1f}" if step is not None else "-",
                _mib(med("peak_rss_bytes") or 0),
                f"{med('val_acc'):.4f}" if med("val_acc") is not None else "-",
                f"{rs[0]['first_loss']:.6f}" if rs[0]["first_loss"] is not None else "-",
            ]
        )
    return format_table(
        ["pair", "run", "process s", "train s", "step ms", "peak RSS MiB", "val acc", "first loss"],
        rows,
        right={2, 3, 4, 5, 6, 7},
    )


def _pairs_table(report: PeerReport) -> str:
    """One row per pair and peer: freezetune's costs over the peer's, and the first-loss check."""
    rows = []
    for p in report.pairs:
        ratios = p["ratio_freezetune_over_peer"]
        diff = p["first_loss"]["abs_difference"]
        if p["same_work"]:
            check = "yes" if p["first_loss_equal"] else "NO: not the same work"
        else:
            check = "differs (expected)" if not p["first_loss_equal"] else "equal"
        rows.append(
            [
                p["pair"],
                p["peer"],
                _ratio(ratios.get("wall_s")),
                _ratio(ratios.get("train_s")),
                _ratio(ratios.get("step_s")),
                _ratio(ratios.get("peak_rss_bytes")),
                f"{diff:.1e}" if diff is not None else "-",
                check,
            ]
        )
    headers = [
        "pair",
        "vs",
        "process (ft/L)",
        "train (ft/L)",
        "step (ft/L)",
        "peak RSS (ft/L)",
        "|Δ first loss|",
        "same first loss",
    ]
    return format_table(headers, rows, right={2, 3, 4, 5, 6})


def _features_table(report: PeerReport) -> str:
    """The linear probes' head inputs in training and eval mode, and their BatchNorm modes."""
    rows = [
        [
            f["label"],
            f"{f['head_input_norm']['train']:.3f}",
            f"{f['head_input_norm']['eval']:.3f}",
            f"{f['head_input_norm']['relative_difference']:.3f}",
            f"{f['bn']['training']} / {f['bn']['modules']}",
            f"{f['bn']['track_running_stats']} / {f['bn']['modules']}",
        ]
        for f in report.features
    ]
    headers = [
        "run",
        "norm, training mode",
        "norm, eval mode",
        "‖train − eval‖ / ‖eval‖",
        "BatchNorm in train mode",
        "tracking running stats",
    ]
    return format_table(headers, rows, right={1, 2, 3})
