"""freezetune's own cost on the models people fine-tune: ``freezetune benchmark --models``.

Each model trains as a user trains it, ``freezetune train`` in a fresh process: torchvision's
ImageNet weights (random values in the real file name, written to a temporary torch hub cache,
since nothing is downloaded here), a folder of PNG images read through the ImageFolder path,
its last stage and head trainable (``freeze.preset: until:<last stage>``), with the feature
cache ``on``, ``off`` and ``auto`` in turn, in an order that changes every round (:data:`MODE_ORDERS`:
six rounds run each mode in each place and after each other mode alike). Each run is measured
from outside (the process, and the time from its last epoch line to its exit) and from its own
``summary.json`` (``startup_s``, ``train_time_s``, ``finish_s``, the cache's decisions and
builds); the run folder's bytes on disk are counted. Before each model's runs,
``freezetune plan``'s prediction of the same build is taken in a process of its own
(freezetune.bench.plan_worker). The goals are checked in freezetune.bench.model_goals."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision.models as tvm
import yaml
from PIL import Image

from freezetune import checks
from freezetune.config import ConfigError
from freezetune.models import classification_models
from freezetune.plan import NORM_TYPES, ModelTree, describe, find_head
from freezetune.utils import TrainingFailed, first_line

__all__ = [
    "CACHE_MODES",
    "MODE_ORDERS",
    "DESCEND_SHARE",
    "MODELS",
    "ModelRun",
    "ModelsReport",
    "ModelsSettings",
    "PlanPrediction",
    "Timed",
    "arch_tree",
    "benchmark_models",
    "folder_bytes",
    "last_stage",
    "make_images",
    "mode_order",
    "place_weights",
    "run_timed",
    "size_problem",
    "weights_file",
]

# The five models issue 25 measured: what people fine-tune from torchvision's ImageNet weights.
MODELS = ("resnet18", "mobilenet_v3_small", "efficientnet_b0", "convnext_tiny", "vit_b_16")
CACHE_MODES = ("on", "off", "auto")
# last_stage descends into a module that holds at least this share of the parameters before the
# head: ViT's encoder holds 99% of them and its layers 99.99%, MobileNet's features all of them;
# resnet18's layer4 holds 75% and is still one of four stages.
DESCEND_SHARE = 0.9
# freezetune.plan.NORM_TYPES by name (a ModelTree holds names): BatchNorm's base, LayerNorm (and
# ConvNeXt's LayerNorm2d under it), GroupNorm, RMSNorm.
_NORM_NAMES = frozenset(t.__name__ for t in NORM_TYPES)


@dataclass(frozen=True)
class ModelsSettings:
    """What every run of the benchmark trains on.

    Args:
        models: torchvision architecture names.
        threads: ``train.threads`` of every run and plan (None: torch's own count).
        rounds: how many times each model's three runs are repeated, in :data:`MODE_ORDERS`.
        overrides: ``key=value`` edits applied to every run's config after the benchmark's own.
    """

    models: tuple[str, ...] = MODELS
    train_images: int = 128
    val_images: int = 64
    image_size: int = 224
    batch_size: int = 16
    epochs: int = 2
    classes: int = 4
    threads: int | None = 1
    rounds: int = 1
    overrides: tuple[str, ...] = ()

    def problems(self) -> list[str]:
        """One line per option out of range or model freezetune cannot benchmark."""
        out = [
            f"--{name.replace('_', '-')}: at least {least}, got {value}"
            for name, value, least in (
                ("train_images", self.train_images, 1),
                ("val_images", self.val_images, 1),
                ("image_size", self.image_size, 8),
                ("batch_size", self.batch_size, 1),
                ("epochs", self.epochs, 1),
                ("classes", self.classes, 2),
                ("rounds", self.rounds, 1),
            )
            if value < least
        ]
        if min(self.train_images, self.val_images) < self.classes:
            out.append(f"--classes {self.classes}: every class needs a training and a validation image")
        known = set(classification_models())
        for arch in self.models:
            if arch not in known:
                out.append(f"--models: {arch!r} is not a torchvision classification model")
            elif not list(tvm.get_model_weights(arch)):
                out.append(f"--models: {arch!r} has no torchvision weights to place in the hub cache")
        return out


def arch_tree(arch: str) -> ModelTree:
    """The names-only view of a torchvision ``arch``, built without storage where it can be."""
    try:
        with torch.device("meta"):
            return describe(tvm.get_model(arch))
    except (NotImplementedError, RuntimeError):  # regnet computes its widths from tensors while it builds
        return describe(tvm.get_model(arch))


def size_problem(arch: str, image_size: int) -> str | None:
    """Why ``arch`` cannot take ``image_size`` px images (ViT takes 224 only, ConvNeXt 32 or more),
    from one forward without storage; None when it can. Training checks the same with a real
    forward once the model is built: here it is known before the first of many runs starts."""
    try:
        with torch.device("meta"), torch.no_grad():
            tvm.get_model(arch).eval()(torch.zeros(1, 3, image_size, image_size))
    except Exception as exc:  # each architecture fails its own way (assert, shape or size errors)
        return f"--image-size {image_size} does not fit {arch}: {first_line(exc)[:160]}"
    return None


def _children(tree: ModelTree, parent: str) -> list[str]:
    """The direct children of module ``parent`` ("" is the root), in registration order."""
    depth = parent.count(".") + 1 if parent else 0
    prefix = f"{parent}." if parent else ""
    return [m.name for m in tree.modules if m.name.startswith(prefix) and m.name.count(".") == depth and m.name]


def _is_norm(tree: ModelTree, module: str) -> bool:
    info = tree.module(module)
    return info is not None and any(t in _NORM_NAMES for t in info.type_names)


def _numel(tree: ModelTree, module: str) -> int:
    return sum(n for p, n in tree.numel.items() if p.startswith(module + "."))


def last_stage(tree: ModelTree) -> str:
    """The module that ``until:`` should name for the last stage and the head to train: of the
    modules before the head, the last one that owns parameters, after descending into any
    module that holds nearly all of them (:data:`DESCEND_SHARE`). ``layer4`` for resnet18,
    ``features.12`` for mobilenet_v3_small, ``encoder.layers.encoder_layer_11`` for vit_b_16."""
    head = find_head(tree)
    parent = ""
    while True:
        before = []
        for child in _children(tree, parent):
            if head == child or head.startswith(child + "."):
                break  # the head's branch and what follows it train anyway
            # A norm layer closing the features (DenseNet's norm5) is no stage.
            if _numel(tree, child) and not _is_norm(tree, child):
                before.append(child)
        if not before:
            raise ConfigError([f"no module with parameters comes before the head {head!r}"])
        total = sum(_numel(tree, c) for c in before)
        big = [c for c in before if _numel(tree, c) >= DESCEND_SHARE * total]
        if not big or not any(_numel(tree, c) for c in _children(tree, big[0])):
            return before[-1]
        parent = big[0]


def weights_file(arch: str) -> tuple[str, str]:
    """``arch``'s default torchvision weights: the name ``model.weights`` takes
    (``ResNet18_Weights.IMAGENET1K_V1``) and the file name the torch hub cache keeps it under
    (the last part of its URL, ``resnet18-f37072fd.pth``)."""
    weights = tvm.get_model_weights(arch).DEFAULT
    return str(weights), Path(weights.url).name


def place_weights(torch_home: Path, arch: str) -> Path:
    """Put a randomly initialised ``arch`` (1000 classes: the real file's keys and shapes) where
    ``TORCH_HOME=torch_home`` makes torchvision find its default weights without a download;
    returns the file. Timing does not depend on the values."""
    path = torch_home / "hub" / "checkpoints" / weights_file(arch)[1]
    if not path.is_file():
        torch.manual_seed(0)
        state = tvm.get_model(arch).state_dict()
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(state, path)
    return path


def make_images(root: Path, s: ModelsSettings, seed: int = 0) -> None:
    """An ImageFolder of PNGs under ``root/train`` and ``root/val``: ``s.classes`` folders,
    4:3 images whose short side is the resize an evaluation makes before its crop
    (``image_size · 256/224``), smooth colour fields that PNG compresses as it does photos."""
    rng = np.random.default_rng(seed)
    height = round(s.image_size * 256 / 224)
    size = (height * 4 // 3, height)
    for split, n in (("train", s.train_images), ("val", s.val_images)):
        for i in range(n):
            folder = root / split / f"class{i % s.classes}"
            folder.mkdir(parents=True, exist_ok=True)
            coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
            Image.fromarray(coarse).resize(size, Image.Resampling.BICUBIC).save(folder / f"{i:04d}.png")


# The orders of six rounds (a Williams design for three modes): over them every mode runs in every
# place twice and right after every other mode twice, and each even round is the round before it
# backwards. A rotation alone (on off auto, off auto on, auto on off) kept each mode after the same
# one in every round: auto always ran after off, the long uncached run, and on the large models
# auto came out 4-14% slower than on in every round for doing the same work (2026-12-07).
MODE_ORDERS: tuple[tuple[str, ...], ...] = (
    ("on", "off", "auto"),
    ("auto", "off", "on"),
    ("off", "auto", "on"),
    ("on", "auto", "off"),
    ("auto", "on", "off"),
    ("off", "on", "auto"),
)


def mode_order(round_index: int) -> tuple[str, ...]:
    """The cache modes in the order round ``round_index`` (0-based) runs them (:data:`MODE_ORDERS`):
    no mode always runs first (on a cold page cache) or after the same one; six rounds balance both."""
    return MODE_ORDERS[round_index % len(MODE_ORDERS)]


def folder_bytes(root: Path) -> tuple[int, dict[str, int]]:
    """The bytes ``root``'s files take on disk (allocated blocks, as ``du`` counts them), and
    each file's own size by its path relative to ``root``."""
    on_disk, files = 0, {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            st = path.stat()
            blocks = getattr(st, "st_blocks", None)  # no blocks on Windows: the size instead
            on_disk += blocks * 512 if blocks is not None else st.st_size
            files[str(path.relative_to(root))] = st.st_size
    return on_disk, files


@dataclass(frozen=True)
class Timed:
    """A child process's output lines, each with the seconds since it was started, and its end."""

    lines: list[tuple[float, str]]
    exit_s: float
    returncode: int

    def last_line_s(self, prefix: str) -> float | None:
        """When the last line starting with ``prefix`` arrived."""
        return next((t for t, line in reversed(self.lines) if line.startswith(prefix)), None)

    def tail(self, n: int = 5) -> str:
        """The last ``n`` lines, for a failure's message."""
        return "\n".join(line for _, line in self.lines[-n:])


def run_timed(cmd: list[str], env: dict[str, str], echo: Callable[[str], None]) -> Timed:
    """Run ``cmd``, its stderr merged into its stdout; ``echo`` each line as it arrives, with
    the seconds since the start."""
    start = time.perf_counter()
    lines = []
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as proc:
        assert proc.stdout is not None
        for raw in proc.stdout:
            t = time.perf_counter() - start
            lines.append((t, raw.rstrip("\n")))
            echo(f"    {t:7.1f}s | {raw.rstrip()}")
        code = proc.wait()
    return Timed(lines, time.perf_counter() - start, code)


@dataclass
class ModelRun:
    """One ``freezetune train`` process of the benchmark, measured.

    ``process_s`` and ``after_s`` (the last epoch line on stdout to the process's exit) are
    timed from outside; ``startup_s`` (the process's start, by the kernel's clock, to the
    training loop), ``train_s`` (``train_time_s``: the epochs, a cache build included) and
    ``finish_s`` (the last epoch's end to ``summary.json``) are the run's own. ``built``: a cache
    was built; ``build_s`` its measured seconds, ``predicted_build_s`` and ``setup_s`` what the
    run's decision predicted and spent before it (also for auto's build not made)."""

    arch: str
    round: int
    cache: str
    process_s: float
    after_s: float | None
    startup_s: float | None
    train_s: float
    finish_s: float | None
    folder_bytes: int
    built: bool
    build_s: float | None
    predicted_build_s: float | None
    setup_s: float | None
    reason: str | None
    val_acc: float
    threads: dict[str, Any] = field(default_factory=dict)
    files: dict[str, int] = field(default_factory=dict)
    load_s: float | None = None  # of build_s, the seconds the build waited for the loader

    @property
    def decision(self) -> str:
        """What the run trained on: ``off``, ``built``, or ``not built`` (auto, or refused)."""
        return "off" if self.cache == "off" else "built" if self.built else "not built"

    def line(self) -> str:
        """The run in one line, printed when it ends."""
        after = f"{self.after_s:.2f}s" if self.after_s is not None else "? (no last epoch line)"
        finish = f" (finish_s {self.finish_s:.2f}s)" if self.finish_s is not None else ""
        startup = f"{self.startup_s:.1f}s" if self.startup_s is not None else "-"
        cache = self.decision
        if self.built and self.build_s is not None and self.predicted_build_s is not None:
            reading = f"; reading the images {self.load_s:.2f}s of it" if self.load_s is not None else ""
            cache += f" in {self.build_s:.2f}s (predicted {self.predicted_build_s:.2f}s{reading})"
        return (
            f"{self.arch} cache {self.cache}: process {self.process_s:.1f}s, start-up {startup}, "
            f"train {self.train_s:.1f}s, after the last epoch {after}{finish}, run folder "
            f"{self.folder_bytes / 1e6:.1f} MB, cache {cache}"
        )

    @classmethod
    def of(cls, arch: str, round_: int, cache: str, timed: Timed, run_dir: Path, epochs: int) -> ModelRun:
        """The run whose process was ``timed`` and whose record is ``run_dir``."""
        s = json.loads((run_dir / "summary.json").read_text())
        c = s.get("cache") or {}
        builds, decisions = c.get("builds") or [], c.get("decisions") or []
        weighed = builds[0] if builds else decisions[0] if decisions else {}
        # The line cli/train.py prints at each epoch's end: the moment the issue measures from.
        last = timed.last_line_s(f"epoch {epochs}:")
        on_disk, files = folder_bytes(run_dir)
        return cls(
            arch=arch,
            round=round_,
            cache=cache,
            process_s=timed.exit_s,
            after_s=timed.exit_s - last if last is not None else None,
            startup_s=s.get("startup_s"),
            train_s=s["train_time_s"],
            finish_s=s.get("finish_s"),
            folder_bytes=on_disk,
            built=bool(builds),
            build_s=builds[0]["build_s"] if builds else None,
            predicted_build_s=weighed.get("predicted_build_s"),
            setup_s=weighed.get("setup_s"),
            reason=c.get("reason"),
            val_acc=s["final_val_acc"],
            threads=s.get("threads") or {},
            files=files,
            load_s=builds[0].get("load_s") if builds else None,
        )


@dataclass
class PlanPrediction:
    """``freezetune plan``'s cache prediction for a model before a round's runs."""

    arch: str
    round: int
    action: str
    predicted_build_s: float | None
    setup_s: float | None
    frontier: str | None
    process_s: float

    def line(self) -> str:
        """What plan predicted, in one line."""
        if self.predicted_build_s is None:
            return f"{self.arch}: plan predicts no cache ({self.action})"
        setup = f" after {self.setup_s:.2f}s of set-up" if self.setup_s is not None else ""
        return (
            f"{self.arch}: plan predicts a build at '{self.frontier}' of {self.predicted_build_s:.2f}s{setup}; "
            f"auto would {self.action}"
        )


@dataclass
class ModelsReport:
    """Everything measured; :meth:`to_json` is the JSON file."""

    settings: ModelsSettings
    stages: dict[str, str] = field(default_factory=dict)
    weights: dict[str, str] = field(default_factory=dict)
    runs: list[ModelRun] = field(default_factory=list)
    plans: list[PlanPrediction] = field(default_factory=list)
    machine: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The settings, the machine, each model's stage and weights, every run and plan."""
        return {
            "settings": asdict(self.settings),
            "machine": self.machine,
            "stages": self.stages,
            "weights": self.weights,
            "plans": [asdict(p) for p in self.plans],
            "runs": [asdict(r) for r in self.runs],
        }


def _machine() -> dict[str, Any]:
    """The cores and the load averages now (None where the platform has none)."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"cores": os.cpu_count(), "load": list(load) if load is not None else None, "at": time.time()}


class _Bench:
    """One benchmark's temporary folder, configs and child environment."""

    def __init__(self, s: ModelsSettings, tmp: Path, echo: Callable[[str], None]) -> None:
        self.s, self.tmp, self.echo = s, tmp, echo
        self.env = os.environ | {"TORCH_HOME": str(tmp / "torch_home"), "PYTHONUNBUFFERED": "1"}
        self.report = ModelsReport(s)
        self.configs: dict[str, Path] = {}

    def _write_config(self, arch: str) -> Path:
        """The model's config file (cache mode and run folder are edits of each run)."""
        s, stage = self.s, self.report.stages[arch]
        tree = {
            "name": f"bench_{arch}",
            "model": {"arch": arch, "weights": self.report.weights[arch]},
            "data": {
                "dataset": "imagefolder",
                "root": str(self.tmp / "images"),
                "image_size": s.image_size,
                "batch_size": s.batch_size,
                "augment": "none",  # random crops would rule the cache out
            },
            "freeze": {"preset": f"until:{stage}"},
            "train": {"epochs": s.epochs, "threads": s.threads},
        }
        path = self.tmp / f"{arch}.yaml"
        path.write_text(yaml.safe_dump(tree, sort_keys=False))
        return path

    def prepare(self) -> None:
        """The images, each model's stage, weights name and config, all checked before any run."""
        s = self.s
        self.echo(f"making {s.train_images} training and {s.val_images} validation PNG images ({s.classes} classes)")
        make_images(self.tmp / "images", s)
        problems = []
        for arch in s.models:
            self.report.stages[arch] = last_stage(arch_tree(arch))
            self.report.weights[arch] = weights_file(arch)[0]
            size = size_problem(arch, s.image_size)
            if size:
                problems.append(size)
            self.configs[arch] = self._write_config(arch)
            try:
                checks.load(self.configs[arch], [*s.overrides, "train.cache_features=on"])
            except ConfigError as exc:
                problems += [f"{arch}: {p}" for p in exc.problems]
        if problems:
            raise ConfigError(problems)

    def plan(self, arch: str, round_: int) -> PlanPrediction:
        out = self.tmp / f"plan_{arch}.json"
        cmd = [sys.executable, "-m", "freezetune.bench.plan_worker", str(self.configs[arch]), str(out)]
        timed = run_timed([*cmd, *self.s.overrides, "train.cache_features=auto"], self.env, self.echo)
        if timed.returncode != 0:
            raise TrainingFailed(f"{arch}: the plan's prediction failed:\n{timed.tail()}")
        p = json.loads(out.read_text())
        return PlanPrediction(
            arch, round_, p["action"], p["predicted_build_s"], p["setup_s"], p["frontier"], timed.exit_s
        )

    def train(self, arch: str, round_: int, cache: str) -> ModelRun:
        run_dir = self.tmp / "runs" / f"{arch}_{cache}_{round_}"
        edits = [*self.s.overrides, f"train.cache_features={cache}", f"train.output_dir={run_dir}"]
        cmd = [sys.executable, "-m", "freezetune", "train", "--config", str(self.configs[arch]), "--no-progress"]
        timed = run_timed([*cmd, *edits], self.env, self.echo)
        if timed.returncode != 0:
            raise TrainingFailed(f"{arch} with train.cache_features={cache} failed:\n{timed.tail()}")
        run = ModelRun.of(arch, round_, cache, timed, run_dir, self.s.epochs)
        shutil.rmtree(run_dir)  # measured: a vit_b_16 run folder is hundreds of MB
        return run


def benchmark_models(
    s: ModelsSettings,
    echo: Callable[[str], None],
    on_run: Callable[[ModelsReport, ModelRun | PlanPrediction], None] | None = None,
) -> ModelsReport:
    """Train every model of ``s`` with the cache on, off and auto, each run a fresh process,
    ``s.rounds`` times; ``echo`` gets every line of progress (the children's too), ``on_run``
    the report after each run and plan.

    Raises:
        ConfigError: a setting out of range, or a config the runs would refuse (before any run).
        TrainingFailed: a run or plan that exited with an error.
    """
    if s.problems():
        raise ConfigError(s.problems())
    with tempfile.TemporaryDirectory(prefix="freezetune-models-") as tmp:
        bench = _Bench(s, Path(tmp), echo)
        bench.report.machine = {"start": _machine()}
        bench.prepare()
        for r in range(s.rounds):
            for arch in s.models:
                if r == 0:
                    echo(f"{arch}: random weights as {bench.report.weights[arch]} in a temporary torch hub cache")
                    place_weights(Path(tmp) / "torch_home", arch)
                echo(f"round {r + 1}/{s.rounds} {arch} (until:{bench.report.stages[arch]}): freezetune plan ...")
                plan = bench.plan(arch, r)
                echo(plan.line())
                bench.report.plans.append(plan)
                if on_run:
                    on_run(bench.report, plan)
                for cache in mode_order(r):
                    echo(f"round {r + 1}/{s.rounds} {arch}: freezetune train, train.cache_features={cache} ...")
                    run = bench.train(arch, r, cache)
                    echo(run.line())
                    bench.report.runs.append(run)
                    if on_run:
                        on_run(bench.report, run)
        bench.report.machine["end"] = _machine()
    return bench.report
