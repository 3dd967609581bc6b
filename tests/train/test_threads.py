"""torch's threads for a run (freezetune.train.threads): the count and its source, the start
line, the busy-machine warning, and summary.json's record. The machine's load is always
monkeypatched: a test never depends on, or creates, real load."""

from __future__ import annotations

import logging
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from freezetune.config import from_dict
from freezetune.train import run, setup
from freezetune.train import threads as threads_mod
from freezetune.train.threads import Threads, choose_threads, others_load, set_threads, threads_that_fit


@pytest.fixture(autouse=True)
def torch_threads_kept() -> Iterator[None]:
    """A test that sets torch's threads gives the process its count back."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def machine(monkeypatch: pytest.MonkeyPatch, load: float, cores: int = 2) -> None:
    """A machine with ``cores`` CPUs and a 1-minute load of ``load``, all of it others': this
    process looks a day old and idle, so its own share (CPU seconds over its age) is nil (an xdist
    worker that has run tests for minutes has spent CPU seconds of its own)."""
    monkeypatch.setattr(threads_mod.os, "getloadavg", lambda: (load, 0.0, 0.0))
    monkeypatch.setattr(threads_mod.os, "cpu_count", lambda: cores)
    monkeypatch.setattr(threads_mod.os, "times", lambda: types.SimpleNamespace(user=0.0, system=0.0))
    monkeypatch.setattr(threads_mod, "process_age_s", lambda: (86400.0, "process start"))


def test_the_config_wins_over_the_environment_which_wins_over_torchs_default() -> None:
    assert choose_threads(3, "1", current=2) == (3, "train.threads")
    assert choose_threads(None, "1", current=1) == (1, "OMP_NUM_THREADS")  # torch read it at import
    assert choose_threads(None, None, current=2) == (2, "torch default")
    assert choose_threads(None, "", current=2) == (2, "torch default")  # set but empty: torch ignores it too


def test_the_own_share_is_what_the_load_average_counted_of_this_process() -> None:
    # One core busy for a whole minute: 1 - e^-1 of it is in the 1-minute average.
    assert others_load(3.0, cpu_s=60.0, age_s=60.0) == pytest.approx(3.0 - (1 - 0.36787944))
    assert others_load(3.0, cpu_s=0.0, age_s=60.0) == 3.0  # idle: nothing of it is ours
    assert others_load(0.2, cpu_s=600.0, age_s=300.0) == 0.0  # never below zero
    assert others_load(1.5, cpu_s=1.0, age_s=0.0) == 1.5


@pytest.mark.parametrize(
    ("cores", "others", "fit"),
    [(2, 0.0, 2), (2, 0.99, 2), (2, 1.0, 1), (2, 2.0, 1), (2, 7.0, 1), (16, 3.9, 13), (16, 4.0, 12), (1, 0.0, 1)],
)
def test_the_threads_that_fit_are_the_cores_others_leave_free(cores: int, others: float, fit: int) -> None:
    assert threads_that_fit(cores, others) == fit


def test_the_start_line_names_each_source_and_the_override() -> None:
    quiet = Threads(torch=2, source="torch default", cores=2, load_1min=0.25)
    assert quiet.describe() == "threads: 2 (torch default), 2 cores, 1-minute load 0.25"
    env = Threads(torch=1, source="OMP_NUM_THREADS", cores=2, load_1min=0.25)
    assert env.describe() == "threads: 1 (OMP_NUM_THREADS), 2 cores, 1-minute load 0.25"
    both = Threads(torch=2, source="train.threads", cores=2, load_1min=0.25, omp_num_threads="1")
    assert both.describe() == "threads: 2 (train.threads, overriding OMP_NUM_THREADS=1), 2 cores, 1-minute load 0.25"
    windows = Threads(torch=4, source="train.threads", cores=8, load_1min=None)
    assert windows.describe() == "threads: 4 (train.threads), 8 cores, no load average on this platform"


def test_the_warning_comes_with_the_fix_only_when_there_is_one() -> None:
    busy = Threads(torch=2, source="torch default", cores=2, load_1min=2.3, own_load=0.3)
    assert busy.warning() == (
        "the machine is busy: a 1-minute load of 2.00 besides this run on 2 cores leaves 0.00 free for 2 threads, "
        "and a thread that waits for a core stalls every step. HINT: train.threads=1"
    )
    with_workers = Threads(torch=2, source="torch default", cores=2, load_1min=2.0, workers=2)
    assert str(with_workers.warning()).endswith("HINT: train.threads=1 and fewer data.num_workers")
    # One thread: the run already asks for the least it can.
    assert Threads(torch=1, source="train.threads", cores=2, load_1min=5.0, workers=2).warning() is None
    assert Threads(torch=2, source="torch default", cores=2, load_1min=0.4).warning() is None
    # This run's own load is not the machine being busy.
    assert Threads(torch=2, source="torch default", cores=2, load_1min=2.2, own_load=2.0).warning() is None
    assert Threads(torch=2, source="torch default", cores=2, load_1min=None).warning() is None


def test_set_threads_sets_torch_and_records_the_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    machine(monkeypatch, load=3.0, cores=2)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    record = set_threads(2)
    assert torch.get_num_threads() == 2
    assert record.to_json() == {
        "torch": 2,
        "from": "train.threads",
        "omp_num_threads": "1",
        "cores": 2,
        "load_1min": 3.0,
        "others_load_1min": 3.0,
        "workers": 0,
    }
    # null afterwards: torch's own count comes back, not the earlier run's 2.
    again = set_threads(None)
    assert (again.torch, again.source, again.omp_num_threads) == (threads_mod._torch_own[0], "OMP_NUM_THREADS", None)
    assert torch.get_num_threads() == threads_mod._torch_own[0]


def test_no_load_average_means_no_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    def windows() -> tuple[float, float, float]:
        raise OSError("getloadavg unavailable")

    monkeypatch.setattr(threads_mod.os, "getloadavg", windows)
    record = set_threads(2)
    assert record.load_1min is None and record.warning() is None
    assert record.to_json()["others_load_1min"] is None


def test_threads_are_set_before_the_model_is_built(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []
    build = setup.build_model

    def counting(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        seen.append(torch.get_num_threads())
        return build(*args, **kwargs)

    monkeypatch.setattr(setup, "build_model", counting)
    cfg = tiny(Path("unused"), threads=2)
    p = setup.prepare_model(cfg)
    assert seen == [2] and p.threads is not None and p.threads.torch == 2


def tiny(out: Path, threads: int | None = None, epochs: int = 1):  # noqa: ANN201
    return from_dict(
        {
            "name": "tiny",
            "model": {"arch": "freezetune_testnets:resnet18_narrow", "num_classes": 2},
            "data": {"dataset": "fake", "image_size": 32, "batch_size": 8, "train_samples": 8, "val_samples": 8},
            "freeze": {"preset": "linear_probe"},
            "train": {"epochs": epochs, "device": "cpu", "output_dir": str(out), "threads": threads},
        }
    )


def test_a_run_starts_with_its_threads_warns_once_and_records_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    machine(monkeypatch, load=4.0, cores=2)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    with caplog.at_level(logging.INFO, logger="freezetune"):
        summary = run(tiny(tmp_path / "busy", threads=2, epochs=2)).summary
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "tiny: threads: 2 (train.threads, overriding OMP_NUM_THREADS=1), 2 cores, 1-minute load 4.00"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "tiny: the machine is busy: a 1-minute load of 4.00 besides this run on 2 cores leaves 0.00 free for 2 "
        "threads, and a thread that waits for a core stalls every step. HINT: train.threads=1"
    ]  # once, before the first of the two epochs
    assert lines[1] == warnings[0]
    assert summary.threads == {
        "torch": 2,
        "from": "train.threads",
        "omp_num_threads": "1",
        "cores": 2,
        "load_1min": 4.0,
        "others_load_1min": 4.0,
        "workers": 0,
    }

    # The fix taken: one thread, no warning; the environment unset, torch's own count otherwise.
    caplog.clear()
    monkeypatch.delenv("OMP_NUM_THREADS")
    with caplog.at_level(logging.INFO, logger="freezetune"):
        summary = run(tiny(tmp_path / "fixed", threads=1)).summary
    assert caplog.records[0].getMessage() == "tiny: threads: 1 (train.threads), 2 cores, 1-minute load 4.00"
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert summary.threads["from"] == "train.threads" and summary.threads["omp_num_threads"] is None

    caplog.clear()
    machine(monkeypatch, load=0.1, cores=2)
    with caplog.at_level(logging.INFO, logger="freezetune"):
        summary = run(tiny(tmp_path / "default")).summary
    own = threads_mod._torch_own[0]
    assert caplog.records[0].getMessage() == f"tiny: threads: {own} (torch default), 2 cores, 1-minute load 0.10"
    assert summary.threads["torch"] == own and summary.threads["from"] == "torch default"
