"""``freezetune plan``'s header: the threads its predictions time steps on, and the busy-machine
warning (the load monkeypatched: no real load in tests)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml

from freezetune.cli.main import main
from freezetune.train import threads as threads_mod

TINY = {
    "name": "tiny",
    "model": {"arch": "resnet18", "num_classes": 3},
    "data": {"dataset": "fake", "image_size": 32, "batch_size": 4, "train_samples": 8, "val_samples": 4},
    "freeze": {"preset": "linear_probe"},
    "train": {"epochs": 1, "device": "cpu"},
}


@pytest.fixture
def tiny(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """tiny.yaml in the working folder, on a 2-core machine with a 1-minute load of 3, none of it ours."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    monkeypatch.setattr(threads_mod.os, "getloadavg", lambda: (3.0, 0.0, 0.0))
    monkeypatch.setattr(threads_mod.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(threads_mod, "process_age_s", lambda: (86400.0, "process start"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_the_header_says_the_threads_and_warns_on_a_busy_machine(
    tiny: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["plan", "--config", "tiny.yaml", "--no-probe", "train.threads=2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("config tiny.yaml: resnet18")
    assert lines[1] == "threads: 2 (train.threads, overriding OMP_NUM_THREADS=1), 2 cores, 1-minute load 3.00"
    assert lines[2] == (
        "warning: the machine is busy: a 1-minute load of 3.00 besides this run on 2 cores leaves 0.00 free for 2 "
        "threads, and a thread that waits for a core stalls every step. HINT: train.threads=1"
    )
    assert lines[3].startswith("preprocessing: ")
    assert sum(line.startswith("warning:") for line in lines) == 1


def test_the_fix_taken_leaves_the_header_quiet(tiny: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--config", "tiny.yaml", "--no-probe", "train.threads=1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == "threads: 1 (train.threads, overriding OMP_NUM_THREADS=1), 2 cores, 1-minute load 3.00"
    assert lines[2].startswith("preprocessing: ")
    assert not any(line.startswith("warning:") for line in lines)


def test_the_environments_count_is_named_as_the_source(tiny: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--config", "tiny.yaml", "--no-probe"]) == 0
    own = threads_mod._torch_own[0]  # what OMP_NUM_THREADS gave torch at import
    assert capsys.readouterr().out.splitlines()[1] == f"threads: {own} (OMP_NUM_THREADS), 2 cores, 1-minute load 3.00"


def test_a_bad_thread_count_is_one_error_line(tiny: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--config", "tiny.yaml", "train.threads=0"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == "error: tiny.yaml: train.threads: 0 must be >= 1 (set on the command line)\n"
