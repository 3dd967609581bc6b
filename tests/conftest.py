"""Fixtures shared across the test folders."""

from __future__ import annotations

import contextlib
import copy
import importlib
import io
import logging
import os
import random
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn as nn
import torchvision

from freezetune.config import Config, from_dict, set_key
from freezetune.plan import ModelTree, describe
from freezetune.train import StopRequest, Weighing

# --------------------------------------------------------------------------- the order tests run in


# Modules whose tests are long and cannot be split (torchrun launches: three interpreters each, half
# a minute on 2 cores). Collected near the end (tests/train), they can be what one worker still runs
# when the other has nothing left; run first, the short tests fill in around them. The order is the
# same in every worker (xdist needs that), and no test depends on it.
LONG_FIRST = ("train/test_distributed.py",)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Move the tests of :data:`LONG_FIRST` to the front, keeping every other order."""
    tests = Path(__file__).parent

    def long(item: pytest.Item) -> bool:
        return any(item.path == tests / name for name in LONG_FIRST)

    items[:] = [i for i in items if long(i)] + [i for i in items if not long(i)]


def _meta_model(arch: str, **kwargs: object) -> nn.Module:
    # Meta tensors have shapes but no storage: building vit_b_16 takes ~0.1 s.
    with torch.device("meta"):
        return torchvision.models.get_model(arch, **kwargs)


@pytest.fixture(scope="session")
def meta_model() -> Callable[..., nn.Module]:
    """``meta_model("resnet18", num_classes=3)``: a torchvision model without storage."""
    return _meta_model


@pytest.fixture(scope="session")
def meta_tree() -> Callable[..., ModelTree]:
    """``meta_tree("resnet18", num_classes=3)``: the names-only view plans are built on."""
    return lambda arch, **kwargs: describe(_meta_model(arch, **kwargs))


# --------------------------------------------------------------------------- the tests' own networks

SUPPORT = Path(__file__).parent / "support"


@pytest.fixture(scope="session", autouse=True)
def _testnets_importable() -> Iterator[None]:
    """tests/support (freezetune_testnets: the tiny run's network) importable here and in every
    subprocess a test starts (torchrun, the scripts), as a user's own model package would be."""
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(SUPPORT))
        mp.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(SUPPORT), os.environ.get("PYTHONPATH")])))
        yield


# --------------------------------------------------------------------------- the file system


@pytest.fixture(scope="session", autouse=True)
def _no_fsync() -> Iterator[None]:
    """Writes stay atomic (a temporary, then a rename) but are not forced to the disk: durability
    across a power cut is not what these tests check, and each run's fsyncs of its model files
    (tens of MB) made the suite wait on the disk. tests/record/test_checkpoint.py patches os.fsync
    itself where a failing fsync is the point."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "fsync", lambda fd: None)
        yield


@pytest.fixture(scope="session", autouse=True)
def _no_zip_checksums() -> Iterator[None]:
    """torch.save without the CRC-32 of each record (torch.serialization.set_crc32_options): torch.load
    never checks it (a flipped byte loads as a wrong value either way; freezetune's own hashes are what
    catch that), and computing it took 30 ms of every 45 MB model file, 60 ms of every tiny run."""
    before = torch.serialization.get_crc32_options()
    torch.serialization.set_crc32_options(False)
    yield
    torch.serialization.set_crc32_options(before)


# --------------------------------------------------------------------------- building torchvision models


class _BuiltModels:
    """torchvision architectures as freezetune builds them, remembered by everything their
    weights depend on: the architecture, the class count, the default dtype and torch's RNG state
    before the build. A build found again is a copy of the first, and leaves the RNG where that
    build left it: bitwise what building again gives, without the initialisation's random draws
    (0.09 s for each build of resnet18's 11M parameters, which the tests of torchvision's weights,
    exports and architectures make again and again). The few most recent are kept (each holds a
    model's weights)."""

    KEEP = 4

    def __init__(self, build: Callable[..., nn.Module]) -> None:
        self.build = build
        self.kept: dict[tuple, tuple[nn.Module, torch.Tensor]] = {}

    def __call__(self, cfg: Any, num_classes: int) -> nn.Module:
        from freezetune.models.arch import arch_kind

        if arch_kind(cfg.arch) != "torchvision" or torch.empty(0).device.type != "cpu":
            return self.build(cfg, num_classes)
        state = torch.get_rng_state()
        key = (cfg.arch, num_classes, torch.get_default_dtype(), hash(state.numpy().tobytes()))
        if key not in self.kept:
            model = self.build(cfg, num_classes)
            self.kept[key] = (copy.deepcopy(model), torch.get_rng_state())
            while len(self.kept) > self.KEEP:
                self.kept.pop(next(iter(self.kept)))
            return model
        self.kept[key] = self.kept.pop(key)  # most recently used last
        model, after = self.kept[key]
        torch.set_rng_state(after)
        return copy.deepcopy(model)


@pytest.fixture(scope="session", autouse=True)
def _built_models_kept() -> Iterator[None]:
    import freezetune.models.build as build

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(build, "_architecture", _BuiltModels(build._architecture))
        yield


@pytest.fixture
def run_builds(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The device of each architecture ``freezetune.infer.load_run`` builds, in order: ``meta`` (no
    storage, the saved tensors assigned) or ``cpu`` (an ordinary build they are copied into)."""
    import freezetune.infer.runs as runs

    devices: list[str] = []
    build = runs._architecture

    def recorded(*args: Any) -> nn.Module:
        model = build(*args)
        devices.append(next(model.parameters()).device.type)
        return model

    monkeypatch.setattr(runs, "_architecture", recorded)
    return devices


# --------------------------------------------------------------------------- the tiny run


# The run most tests train or refuse: resnet18 at an eighth of its width (tests/support/freezetune_testnets.py)
# with 3 classes on 32 px FakeData, 8 training and
# 4 validation images in batches of 4 (two steps an epoch), one epoch on the CPU, linear probe.
# A test states only what it changes, as dotted keys (freezetune.config.set_key).
TINY_RUN: dict[str, Any] = {
    "name": "tiny",
    "model": {"arch": "freezetune_testnets:resnet18_narrow", "num_classes": 3},
    "data": {"dataset": "fake", "image_size": 32, "batch_size": 4, "train_samples": 8, "val_samples": 4},
    "freeze": {"preset": "linear_probe"},
    "train": {"epochs": 1, "device": "cpu"},
}


def _tiny_tree(edits: Mapping[str, Any] | None = None) -> dict[str, Any]:
    tree = copy.deepcopy(TINY_RUN)
    for key, value in (edits or {}).items():
        blocked = set_key(tree, key, value)
        assert blocked is None, f"{key}: {blocked} is no mapping in the tiny run"
    return tree


@pytest.fixture(scope="session")
def tiny_tree() -> Callable[..., dict[str, Any]]:
    """``tiny_tree({"train.epochs": 2, "train.output_dir": str(out)})``: the tiny run's config as
    plain data (to write as YAML), with those keys set; a fresh copy each call."""
    return _tiny_tree


@pytest.fixture(scope="session")
def tiny_config() -> Callable[..., Config]:
    """``tiny_config({"seed": 3})``: the tiny run's validated :class:`Config`, with those keys set."""
    return lambda edits=None: from_dict(_tiny_tree(edits))


# A package of the user's own models, for model.arch: "ftuser.nets:build". Written under tmp_path and
# put on sys.path: importable under --import-mode=importlib, and gone (sys.modules too) after the test.
USER_MODELS = """
import torch.nn as nn


class TinyNet(nn.Module):
    def __init__(self, num_classes, width=8):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.body(self.stem(x))).flatten(1))


def build(num_classes, width=8):
    return TinyNet(num_classes, width)


def ignores_num_classes(num_classes):
    return TinyNet(10)


def returns_a_list(num_classes):
    return [TinyNet(num_classes)]


def raises(num_classes):
    raise ValueError("width must be even")


def headless(num_classes):
    return nn.Sequential(nn.Flatten(), nn.BatchNorm1d(3), nn.ReLU())


def forgets_num_classes(width=8):
    return TinyNet(10, width)


NOT_CALLABLE = 3
"""


@pytest.fixture
def user_models(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The package ``ftuser`` (``ftuser.nets``: TinyNet and friends; ``ftuser.broken`` raises on
    import; ``ftuser.needs_dep`` imports a package that is not installed); returns its name."""
    root = tmp_path_factory.mktemp("user_models")
    pkg = root / "ftuser"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text(USER_MODELS)
    (pkg / "broken.py").write_text("raise RuntimeError('CUDA kernels not built')\n")
    (pkg / "needs_dep.py").write_text("import ftuser_missing_dependency  # noqa: F401\n")
    monkeypatch.syspath_prepend(str(root))
    importlib.invalidate_caches()
    yield "ftuser"
    for name in [n for n in sys.modules if n == "ftuser" or n.startswith("ftuser.")]:
        del sys.modules[name]


@contextlib.contextmanager
def _cache_setup_free() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Weighing, "setup_batches", property(lambda self: 0.0))
        yield


@pytest.fixture(scope="session")
def cache_setup_free() -> Callable[[], contextlib.AbstractContextManager[None]]:
    """``with cache_setup_free():`` cache_features: auto weighs without its set-up term. On the
    tests' tiny models (16-32 px) tracing resnet18 alone outweighs every prefix second a cache
    saves, so auto never builds there; tests of what a build, an extension or a skip does use
    this to let the batch counts decide (the set-up term has its own tests in tests/train/test_cache.py)."""
    return _cache_setup_free


@pytest.fixture(scope="session")
def stop_after() -> Callable[[int], StopRequest]:
    """``stop_after(n)``: a stop request that says yes from the n-th time the training loop asks
    (it asks once after every step but an epoch's last, and once after each epoch)."""

    class StopAfter(StopRequest):
        def __init__(self, n: int) -> None:
            super().__init__()
            self.n, self.calls = n, 0

        def __call__(self) -> bool:
            self.calls += 1
            return self.requested or self.calls >= self.n

    return StopAfter


# --------------------------------------------------------------------------- the CLI, in this process


@dataclass
class CliResult:
    """What a command left behind: its exit status and everything it printed."""

    rc: int
    stdout: str
    stderr: str


@contextlib.contextmanager
def _process_state_kept() -> Iterator[None]:
    """Give back what a command changes in the process: the working directory, the root logger
    (each command calls logging.basicConfig), torch's thread count, default dtype and the seeds."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    cwd = os.getcwd()
    threads, dtype = torch.get_num_threads(), torch.get_default_dtype()
    rng = torch.get_rng_state(), random.getstate(), np.random.get_state()
    try:
        yield
    finally:
        os.chdir(cwd)
        root.handlers[:] = handlers
        root.setLevel(level)
        torch.set_num_threads(threads)
        torch.set_default_dtype(dtype)
        torch.set_rng_state(rng[0])
        random.setstate(rng[1])
        np.random.set_state(rng[2])


def run_cli(argv: Sequence[str], cwd: Path | None = None) -> CliResult:
    """``freezetune ARGV`` (``freezetune.cli.main.main``) in this process, from ``cwd``: what a
    subprocess would print and return, without paying a fresh interpreter's torch import (seconds
    of CPU each). The root logger starts empty, as in a fresh process, so the command's own
    logging.basicConfig sends its log lines to the captured stderr."""
    from freezetune.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    with _process_state_kept():
        logging.getLogger().handlers[:] = []
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = main(list(argv))
            except SystemExit as exc:  # argparse: --help and usage errors
                rc = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 2
    return CliResult(rc, out.getvalue(), err.getvalue())


@pytest.fixture(scope="session")
def freezetune_cli() -> Callable[..., CliResult]:
    """``freezetune_cli(["train", "--config", ...], cwd=folder)``: the command run in this
    process (see :func:`run_cli`); module-scoped fixtures may use it (capsys may not)."""
    return run_cli


@pytest.fixture
def compare_trains_here(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """``freezetune compare --configs`` trains each run in a fresh interpreter by design (its
    peak memory is its own). Here that command (``python -m freezetune train ...``) runs in this
    process instead, printing where the child's output would go; returns the commands it ran.
    A signal raised during its training reaches the run's own handler, as compare forwards it."""
    import freezetune.apps.compare as compare

    ran: list[list[str]] = []

    class RunHere:
        """subprocess.Popen's part that compare uses: the command runs as wait() is called."""

        def __init__(self, cmd: list[str], start_new_session: bool = False) -> None:
            assert cmd[:3] == [sys.executable, "-m", "freezetune"], cmd
            assert start_new_session  # the terminal's Ctrl-C reaches compare alone, which passes it on
            self.cmd, self.returncode = cmd, None

        def wait(self) -> int:
            ran.append(self.cmd[3:])
            from freezetune.cli.main import main

            with _process_state_kept():
                self.returncode = main(self.cmd[3:])
            return self.returncode

        def poll(self) -> int | None:
            return self.returncode

        def send_signal(self, signum: int) -> None:
            raise AssertionError("in this process the run's own handler gets the signal")

    monkeypatch.setattr(compare, "subprocess", SimpleNamespace(Popen=RunHere))
    return ran
