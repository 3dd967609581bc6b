"""Every failure a user can cause, as the command ends it: the exit status, one ``error:``
line (no traceback), and exactly which files exist afterwards, the user's own files
beside ``runs/`` included.

The commands run in process (``freezetune.cli.main.main``) in a working directory made
for each test; a few tiny resnet18 runs on FakeData or a folder of PNGs made here."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import importlib.util
import io
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from freezetune.cli.main import main
from freezetune.cli.train import main as train_main
from freezetune.record import read_checkpoint


@pytest.fixture(autouse=True)
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_tree: Callable[..., dict]) -> Path:
    """A working directory with the user's own things in it, tiny.yaml (conftest's tiny run)
    among them, and a clean root logger (each command calls logging.basicConfig; what it
    installs goes away with the test). It is a folder of the test's own tmp_path, so that
    ``files(workdir.parent)`` also sees a write above it (name=../escape) but not the files
    of the worker's earlier tests (tmp_path's parent holds them all: hashing those made each
    test here take 2 s late in a run)."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])
    monkeypatch.setattr(root, "level", root.level)
    (work / "notes.txt").write_text("the user's notes")
    (work / "runs" / "mine").mkdir(parents=True)
    (work / "runs" / "mine" / "keep.txt").write_text("not freezetune's")
    (work / "tiny.yaml").write_text(yaml.safe_dump(tiny_tree()))
    return work


def files(root: Path) -> dict[str, str]:
    """Every file under ``root``: its path and a digest of its bytes."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()[:16]
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def command(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    rc = main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


def error_line(err: str) -> str:
    """The one ``error:`` line (config errors list their problems under it); never a traceback."""
    assert "Traceback" not in err
    lines = err.rstrip("\n").splitlines()
    errors = [i for i, line in enumerate(lines) if line.startswith("error:")]
    assert len(errors) == 1, err
    assert all(line.startswith("  - ") for line in lines[errors[0] + 1 :]), err
    return "\n".join(lines[errors[0] :])


def png_folder(root: Path, classes: dict[str, int], split_sizes: tuple[int, int] = (4, 2)) -> None:
    """root/train/CLASS/i.png and root/val/CLASS/i.png, random 8-bit RGB."""
    rng = np.random.default_rng(0)
    for split, n in zip(("train", "val"), split_sizes):
        for name in classes:
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")


def imagefolder_config(workdir: Path, root: str = "images", **data: object) -> None:
    cfg = yaml.safe_load((workdir / "tiny.yaml").read_text())  # the tiny run workdir wrote
    cfg["data"] = {"dataset": "imagefolder", "root": root, "image_size": 16, "batch_size": 2, **data}
    (workdir / "tiny.yaml").write_text(yaml.safe_dump(cfg))


# --------------------------------------------------------------------------- mistakes: exit 2, nothing written

CONFIG_MISTAKES = [
    # (edits, the words the error line must hold)
    (["name=.."], "name: '..' must be a non-empty run name"),
    (["name=."], "name: '.' must be a non-empty run name"),
    (["name=../escape"], "name: '../escape' must be a non-empty run name"),
    (["train.output_dir=."], "is the working directory or a folder above it"),
    (["train.output_dir=.."], "is the working directory or a folder above it"),
    (["train.output_dir=notes.txt/run"], "notes.txt is a file, not a folder"),
    (["seed=4294967296"], "seed: 4294967296 must be <= 4294967295 (set on the command line)"),
    (
        ["data.train_samples=1000000000000000000000000000000"],
        "data.train_samples: 1000000000000000000000000000000 must be <=",
    ),
    (
        ["freeze.preset=null", "freeze.rules=[{freeze: 'layer[12'}]"],
        "'[' opens a glob character class that is never closed",
    ),
    (["train.epochs=two"], "train.epochs: expected an integer, got 'two' (set on the command line)"),
    (["freeze.rules=[{unfreeze: fc}]"], "freeze.rules[0] {unfreeze: fc}: changes nothing"),
    (["model.weights=missing.pt"], "model.weights: file not found: missing.pt"),
]


@pytest.mark.parametrize(("edits", "words"), CONFIG_MISTAKES, ids=[" ".join(e) for e, _ in CONFIG_MISTAKES])
def test_a_config_mistake_is_one_error_exit_2_and_writes_nothing(
    workdir: Path, capsys: pytest.CaptureFixture[str], edits: list[str], words: str
) -> None:
    before = files(workdir.parent)
    rc, out, err = command(capsys, "train", "--config", "tiny.yaml", *edits, "--no-progress")
    assert rc == 2
    assert words in error_line(err)
    assert files(workdir.parent) == before


def test_a_folder_that_cannot_be_written_is_refused_before_anything_is_made(
    workdir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Root ignores file modes, so the refusal of the probe file is what a read-only disk does.
    def read_only(path: object, *args: object, **kwargs: object) -> object:
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr("freezetune.record.rundir.open", read_only, raising=False)
    before = files(workdir.parent)
    rc, _, err = command(capsys, "train", "--config", "tiny.yaml", "--no-progress")
    assert rc == 2
    assert "cannot write in" in error_line(err) and "Read-only file system" in err
    assert files(workdir.parent) == before


@pytest.mark.parametrize(
    ("content", "words"),
    [(b"garbage, not a checkpoint", "is not a readable torch file"), (None, "is not a readable torch file")],
    ids=["garbage", "truncated"],
)
def test_a_corrupt_checkpoint_on_resume_gets_freezetunes_message(
    workdir: Path, capsys: pytest.CaptureFixture[str], content: bytes | None, words: str
) -> None:
    state = workdir / "runs" / "tiny" / "checkpoint.pt"
    state.parent.mkdir()
    torch.save({"format": "freezetune-train-state/1", "blob": torch.zeros(4096)}, state)
    state.write_bytes(content if content is not None else state.read_bytes()[:-100])
    before = files(workdir.parent)
    rc, _, err = command(capsys, "train", "--config", "tiny.yaml", "train.epochs=2", "--resume", "runs/tiny")
    assert rc == 2
    line = error_line(err)
    assert words in line and "resume:" in line
    assert "weights_only=False" not in err  # never torch's advice to turn the safety check off
    assert files(workdir.parent) == before


def test_a_garbage_weights_file_is_one_error(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (workdir / "weights.pt").write_bytes(b"\x80\x04not a pickle")
    before = files(workdir.parent)
    rc, _, err = command(capsys, "train", "--config", "tiny.yaml", "model.weights=weights.pt")
    assert rc == 2
    assert "model.weights: weights.pt is not a readable torch file" in error_line(err)
    assert files(workdir.parent) == before


# --------------------------------------------------------------------------- data mistakes: exit 2, nothing written


def truncated_png(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


DATA_MISTAKES: list[tuple[str, Callable[[Path], None], dict, str]] = [
    ("no train folder", lambda r: __import__("shutil").rmtree(r / "train"), {}, "imagefolder needs the folders"),
    ("no folder at all", lambda r: __import__("shutil").rmtree(r), {}, "imagefolder needs the folders"),
    ("empty class folder", lambda r: [p.unlink() for p in (r / "train" / "cat").iterdir()], {}, "cat"),
    ("truncated png", lambda r: truncated_png(r / "train" / "dog" / "1.png"), {}, "train/dog/1.png"),
    ("text named .jpg", lambda r: (r / "val" / "cat" / "x.jpg").write_text("hello"), {}, "val/cat/x.jpg"),
    ("class index outside", lambda r: None, {"classes": [0, 5]}, "data.classes: [5] not in images/train"),
    ("val lacks a class", lambda r: __import__("shutil").rmtree(r / "val" / "dog"), {}, "only in one: dog"),
]


@pytest.mark.parametrize(
    ("break_it", "data", "words"), [c[1:] for c in DATA_MISTAKES], ids=[c[0] for c in DATA_MISTAKES]
)
def test_a_data_mistake_is_one_error_exit_2_and_writes_nothing(
    workdir: Path, capsys: pytest.CaptureFixture[str], break_it: Callable[[Path], None], data: dict, words: str
) -> None:
    png_folder(workdir / "images", {"cat": 0, "dog": 1})
    break_it(workdir / "images")
    imagefolder_config(workdir, **data)
    before = files(workdir.parent)
    rc, _, err = command(capsys, "train", "--config", "tiny.yaml", "--no-progress")
    assert rc == 2
    assert words in error_line(err)
    assert files(workdir.parent) == before


def test_unreadable_images_skipped_on_request_are_listed_in_the_record(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    png_folder(workdir / "images", {"cat": 0, "dog": 1})
    truncated_png(workdir / "images" / "train" / "dog" / "1.png")
    imagefolder_config(workdir, on_bad_image="skip")
    rc, _, _ = command(capsys, "train", "--config", "tiny.yaml", "--no-progress")
    assert rc == 0
    summary = json.loads((workdir / "runs" / "tiny" / "summary.json").read_text())
    assert [s["path"] for s in summary["skipped_images"]] == ["images/train/dog/1.png"]
    assert summary["train_samples"] == 7


def test_sixteen_bit_greyscale_is_scaled_not_clipped(tmp_path: Path) -> None:
    from freezetune.data.imagefolder import load_image

    values = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)  # 0, 1, 128, 255 in 8 bits
    Image.fromarray(values).save(tmp_path / "wide.png")
    assert Image.open(tmp_path / "wide.png").mode.startswith("I")
    rgb = np.asarray(load_image(str(tmp_path / "wide.png")))
    assert rgb[0, :, 0].tolist() == [0, 1, 128, 255] and (rgb[..., 0] == rgb[..., 2]).all()


# --------------------------------------------------------------------------- faults while running: exit 1


DIVERGING = ["train.epochs=2", "freeze.schedule=[{epoch: 2, unfreeze: layer4, lr_scale: 1.0e+20}]"]


def test_a_diverged_run_stops_exit_1_keeps_the_good_checkpoint_and_saves_no_model(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, err = command(capsys, "train", "--config", "tiny.yaml", *DIVERGING, "--no-progress")
    assert rc == 1
    line = error_line(err)
    assert line.startswith("error: training diverged: non-finite loss in epoch 2, step ")
    assert "the last finite loss was" in line
    run = workdir / "runs" / "tiny"
    assert sorted(p.name for p in run.iterdir()) == [
        "FAILED",
        "best.pt",  # epoch 1's: the best so far, and finite
        "checkpoint.pt",
        "config.yaml",
        "events.jsonl",
        "freeze_plan.json",
        "frozen.pt",  # the frozen tensors best.pt and checkpoint.pt refer to, until model.pt holds them
        "metrics.jsonl",
        "steps.jsonl",  # epoch 2's finite steps too: a --resume drops them
    ]
    state = read_checkpoint(run / "checkpoint.pt", "test")  # whole: its frozen tensors read from frozen.pt
    assert state["epoch"] == 1 and all(
        torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point()
    )
    assert (run / "FAILED").read_text().startswith("error: training diverged")
    assert "--resume runs/tiny" in (run / "FAILED").read_text()
    # A rerun is told why the folder is taken, and how to go on.
    rc, _, err = command(capsys, "train", "--config", "tiny.yaml", *DIVERGING, "--no-progress")
    assert rc == 2 and "holds a run that failed (FAILED: error: training diverged" in error_line(err)


def test_max_nonfinite_skips_that_many_bad_steps(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Four steps an epoch: the first bad step (2) is skipped, the second (3) stops the run.
    edits = [*DIVERGING, "data.train_samples=16", "train.max_nonfinite=1", "--no-progress"]
    rc, _, err = command(capsys, "train", "--config", "tiny.yaml", *edits)
    assert rc == 1 and "non-finite loss in epoch 2, step 3" in error_line(err)


def test_disk_full_while_saving_the_model_keeps_the_last_checkpoint(
    workdir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import freezetune.record.rundir as rundir

    real = rundir.atomic_write_bytes

    def full_disk(path: Path, data: bytes) -> None:
        if path.name == "model.pt":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, data)

    monkeypatch.setattr(rundir, "atomic_write_bytes", full_disk)
    rc, _, err = command(capsys, "train", "--config", "tiny.yaml", "train.epochs=2", "--no-progress")
    assert rc == 1
    line = error_line(err)
    assert "runs/tiny/model.pt: No space left on device" in line and "--resume" in line
    run = workdir / "runs" / "tiny"
    assert "model.pt" not in {p.name for p in run.iterdir()}
    assert torch.load(run / "checkpoint.pt", weights_only=True)["epoch"] == 1
    assert "No space left on device" in (run / "FAILED").read_text()


def test_a_failed_overwrite_leaves_the_previous_run_byte_for_byte(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert command(capsys, "train", "--config", "tiny.yaml", "--no-progress")[0] == 0
    before = files(workdir / "runs")
    rc, _, err = command(capsys, "train", "--config", "tiny.yaml", *DIVERGING, "--overwrite", "--no-progress")
    assert rc == 1 and "training diverged" in error_line(err)
    after = files(workdir / "runs")
    assert {k: v for k, v in after.items() if not k.startswith("tiny.overwriting/")} == before
    failed = (workdir / "runs" / "tiny.overwriting" / "FAILED").read_text()
    assert "runs/tiny (the previous run) is unchanged" in failed
    # A successful overwrite replaces it, keeps the user's own file, and leaves no staging folder.
    (workdir / "runs" / "tiny" / "my_plot.png").write_bytes(b"mine")
    assert command(capsys, "train", "--config", "tiny.yaml", "train.epochs=2", "--overwrite", "--no-progress")[0] == 0
    assert sorted(p.name for p in (workdir / "runs").iterdir()) == ["mine", "tiny"]
    assert (workdir / "runs" / "tiny" / "my_plot.png").read_bytes() == b"mine"
    assert json.loads((workdir / "runs" / "tiny" / "summary.json").read_text())["epochs"] == 2


def test_an_interrupted_overwrite_resumes_into_place(
    workdir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from freezetune.train import StopRequest

    assert command(capsys, "train", "--config", "tiny.yaml", "--no-progress")[0] == 0
    old = files(workdir / "runs" / "tiny")
    # As if Ctrl-C came during the first step of the replacing run (the stop is read after each step).
    asked = StopRequest.__call__
    monkeypatch.setattr(StopRequest, "__call__", lambda self: True)
    rc, out, _ = command(capsys, "train", "--config", "tiny.yaml", "train.epochs=2", "--overwrite", "--no-progress")
    # The run had a key=value edit: the hint resumes from the run's own (resolved) config.yaml, which has it.
    hint = "--config runs/tiny.overwriting/config.yaml --resume runs/tiny.overwriting"
    assert rc == 130 and hint in out
    assert files(workdir / "runs" / "tiny") == old
    monkeypatch.setattr(StopRequest, "__call__", asked)
    rc, _, err = command(capsys, "train", *hint.split())
    assert rc == 0, err
    assert sorted(p.name for p in (workdir / "runs").iterdir()) == ["mine", "tiny"]
    summary = json.loads((workdir / "runs" / "tiny" / "summary.json").read_text())
    assert summary["epochs"] == 2 and summary["run_dir"] == "runs/tiny"


def test_an_unexpected_error_is_one_line_and_the_traceback_is_there_with_debug(
    workdir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def bug(*args: object, **kwargs: object) -> None:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr("freezetune.train.runner.epoch_row", bug)
    rc, _, err = command(capsys, "train", "--config", "tiny.yaml", "--no-progress")
    assert rc == 1
    assert error_line(err) == "error: internal error (ZeroDivisionError: a bug); rerun with --debug for the traceback"
    rc, _, err = command(capsys, "train", "--config", "tiny.yaml", "--no-progress", "--overwrite", "--debug")
    assert rc == 1 and "Traceback" in err and "ZeroDivisionError: a bug" in err


# --------------------------------------------------------------------------- compare: reuse, refuse, replace


@pytest.mark.usefixtures("compare_trains_here")  # the runs train in this process, as the command would
def test_compare_reuses_a_finished_run_and_replaces_another_only_when_told(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, _ = command(capsys, "compare", "--configs", "tiny.yaml", "--no-estimate")
    assert rc == 0 and "tiny: training into runs/tiny" in out
    model = workdir / "runs" / "tiny" / "model.pt"
    stamp = model.stat().st_mtime_ns
    rc, out, _ = command(capsys, "compare", "--configs", "tiny.yaml", "--no-estimate")
    assert rc == 0 and "tiny: reusing runs/tiny (finished, same config)" in out
    assert model.stat().st_mtime_ns == stamp  # not trained again

    before = files(workdir / "runs")
    rc, _, err = command(capsys, "compare", "--configs", "tiny.yaml", "train.epochs=2", "--no-estimate")
    assert rc == 2 and "runs/tiny holds another run" in error_line(err)
    assert files(workdir / "runs") == before

    rc, out, _ = command(capsys, "compare", "--configs", "tiny.yaml", "train.epochs=2", "--no-estimate", "--overwrite")
    assert rc == 0 and "tiny: replacing the run in runs/tiny" in out
    assert json.loads((workdir / "runs" / "tiny" / "summary.json").read_text())["epochs"] == 2


# --------------------------------------------------------------------------- found by a new-user trial


def test_a_run_never_writes_into_a_folder_of_other_files_or_into_the_data(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    png_folder(workdir / "images", {"cat": 0, "dog": 1})
    imagefolder_config(workdir)
    before = files(workdir.parent)
    for edit, words in [
        ("train.output_dir=images/train/cat", "is inside data.root (images)"),
        ("train.output_dir=images", "is inside data.root (images)"),
        ("train.output_dir=runs/mine", "runs/mine already holds files freezetune did not write (keep.txt)"),
    ]:
        rc, _, err = command(capsys, "train", "--config", "tiny.yaml", edit, "--no-progress")
        assert rc == 2 and words in error_line(err), err
    assert files(workdir.parent) == before


def test_input_sizes_and_class_counts_that_cannot_work_are_refused_before_anything_is_written(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    png_folder(workdir / "images", {"cat": 0, "dog": 1, "owl": 2})
    imagefolder_config(workdir)
    before = files(workdir.parent)
    rc, _, err = command(capsys, "train", "--config", "tiny.yaml", "model.num_classes=2", "--no-progress")
    assert rc == 2 and "model.num_classes: 2 outputs, but the data has 3 classes" in error_line(err)
    rc, _, err = command(capsys, "train", "--config", "tiny.yaml", "model.arch=vit_b_16", "--no-progress")
    line = error_line(err)
    assert rc == 2 and "data.image_size: 16 px does not fit vit_b_16 (Wrong image height! Expected 224" in line
    assert line.endswith("HINT: vit_b_16 takes exactly 224 px (data.image_size: 224, or null to follow the weights)")
    rc, _, err = command(capsys, "train", "--config", "tiny.yaml", "model.arch=convnext_tiny", "data.image_size=8")
    assert rc == 2 and error_line(err).endswith(
        "HINT: convnext_tiny takes 32 px or more; its weights were trained at 224 (data.image_size: 224, or null to "
        "follow the weights)"
    )
    rc, _, err = command(capsys, "plan", "--config", "tiny.yaml", "model.arch=vit_b_16")
    assert rc == 2 and "does not fit vit_b_16" in error_line(err)
    assert files(workdir.parent) == before


def test_torchvision_weights_that_cannot_be_fetched_name_the_cache_path(
    workdir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import urllib.error

    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setenv("TORCH_HOME", str(workdir / "torch_home"))
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    before = files(workdir.parent)
    rc, _, err = command(
        capsys, "train", "--config", "tiny.yaml", "model.arch=resnet18", "model.weights=DEFAULT", "--no-progress"
    )
    line = error_line(err)
    assert rc == 2 and "model.weights: ResNet18_Weights.IMAGENET1K_V1 is not in the torch hub cache" in line
    assert f"{workdir}/torch_home/hub/checkpoints/resnet18-f37072fd.pth" in line and "HINT: download https://" in line
    assert files(workdir.parent) == before


def test_compare_refuses_two_configs_of_one_folder_a_failed_run_and_an_out_that_is_a_file(
    workdir: Path, capsys: pytest.CaptureFixture[str], tiny_tree: Callable[..., dict]
) -> None:
    tiny = tiny_tree()
    (workdir / "other.yaml").write_text(yaml.safe_dump({**tiny, "freeze": {"preset": "bitfit"}}))  # name: tiny too
    (workdir / "third.yaml").write_text(yaml.safe_dump({**tiny, "name": "third", "train": {"output_dir": "runs/tiny"}}))
    before = files(workdir.parent)
    rc, _, err = command(capsys, "compare", "--configs", "tiny.yaml", "other.yaml", "--no-estimate")
    assert rc == 2 and "tiny.yaml (name tiny) and other.yaml (name tiny) are one config name" in error_line(err)
    rc, _, err = command(capsys, "compare", "--configs", "tiny.yaml", "third.yaml", "--no-estimate")
    assert rc == 2 and "tiny.yaml (runs/tiny) and third.yaml (runs/tiny) are the same run folder" in error_line(err)
    rc, _, err = command(capsys, "compare", "runs/mine", "runs/mine")
    assert rc == 2 and "runs/mine and runs/mine are the same run folder" in error_line(err)
    rc, _, err = command(capsys, "compare", "runs/mine")
    assert rc == 2 and "runs/mine: no finished run there (no summary.json)" in error_line(err)
    assert files(workdir.parent) == before
    assert command(capsys, "train", "--config", "tiny.yaml", "name=fine", "--no-progress")[0] == 0
    rc, _, err = command(capsys, "compare", "runs/fine", "--out", "notes.txt")
    assert rc == 2 and "--out notes.txt: a file; choose a folder for the report" in error_line(err)
    assert command(capsys, "train", "--config", "tiny.yaml", *DIVERGING, "--no-progress")[0] == 1
    rc, _, err = command(capsys, "compare", "runs/tiny")
    assert rc == 2 and "runs/tiny holds a run that failed (error: training diverged" in error_line(err)


def test_a_tilde_in_the_output_folder_is_the_home_folder(
    workdir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(workdir / "home"))
    assert command(capsys, "train", "--config", "tiny.yaml", "train.output_dir=~/exp", "--no-progress")[0] == 0
    assert (workdir / "home" / "exp" / "summary.json").is_file() and not (workdir / "~").exists()


def test_sigterm_is_asked_to_stop_like_ctrl_c() -> None:
    import os
    import signal

    from freezetune.train import StopRequest

    with StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_running_out_of_memory_is_a_fault_with_the_fix(
    workdir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def oom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")

    monkeypatch.setattr("freezetune.train.runner.epoch_row", oom)
    rc, _, err = command(capsys, "train", "--config", "tiny.yaml", "--no-progress")
    assert rc == 1 and error_line(err).endswith("HINT: lower data.batch_size or data.image_size")


def test_a_bad_image_in_a_class_the_run_does_not_use_is_not_its_problem(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    png_folder(workdir / "images", {"cat": 0, "dog": 1, "owl": 2})
    (workdir / "images" / "train" / "owl" / "broken.png").write_bytes(b"not a png")
    imagefolder_config(workdir)
    rc, _, err = command(capsys, "train", "--config", "tiny.yaml", "--no-progress")
    assert rc == 2 and "images/train/owl/broken.png" in error_line(err)
    rc, _, err = command(capsys, "train", "--config", "tiny.yaml", "data.classes=[dog, cat]", "--no-progress")
    assert rc == 0, err
    summary = json.loads((workdir / "runs" / "tiny" / "summary.json").read_text())
    assert (
        summary["classes"][:2] == ["dog", "cat"] and summary["train_samples"] == 8 and summary["skipped_images"] == []
    )


def test_an_auto_ceiling_that_is_no_stage_is_refused_before_the_plan_prints(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, err = command(
        capsys,
        "plan",
        "--config",
        "tiny.yaml",
        "freeze.preset=auto",
        "freeze.auto.ceiling=relu",
        "train.epochs=3",
        "--no-probe",
    )
    assert rc == 2 and out == ""
    assert error_line(err) == (
        "error: freezing plan rejected: freeze.auto.ceiling: 'relu' is no top-level module with parameters; "
        "one of conv1, bn1, layer1, layer2, layer3, layer4, fc"
    )


def test_config_model_and_data_mistakes_are_reported_together(
    workdir: Path, capsys: pytest.CaptureFixture[str], tiny_tree: Callable[..., dict]
) -> None:
    # A bad key (the config's), a bad weights name (the model's) and a missing folder (the data's): one
    # run reports all three, and another only after fixing the first would be a round trip too many.
    cfg = tiny_tree()
    cfg["train"]["epochz"] = 3
    cfg["model"].update(arch="resnet18", weights="IMAGENET_V9")
    cfg["data"] = {"dataset": "imagefolder", "root": "no_images"}
    (workdir / "bad.yaml").write_text(yaml.safe_dump(cfg))
    before = files(workdir.parent)
    rc = train_main(["--config", "bad.yaml", "--no-progress", "train.device=cpu"])
    out, err = capsys.readouterr()
    assert rc == 2 and out == ""
    assert error_line(err).splitlines() == [
        "error: 3 config problems in bad.yaml:",
        "  - train.epochz: unknown key; did you mean epochs?",
        "  - model.weights: 'IMAGENET_V9' is not a weights name of resnet18; valid: DEFAULT, IMAGENET1K_V1",
        "  - data.root: imagefolder needs the folders no_images/train, no_images/val",
    ]
    assert files(workdir.parent) == before
    assert not (workdir / "runs" / "tiny").exists()


# --------------------------------------------------------------------------- writing files (issue 26): one writer,
# whole files or none, and one mapping from an OS error to a line and a status whose hint names the command's flag

# A net of a few hundred parameters (model.arch: MODULE:FUNCTION), so that an export takes a fraction of a second.
TINY_NET = """
import torch.nn as nn


def build(num_classes):
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(4, num_classes),
    )
"""


@pytest.fixture(scope="module")
def tiny_net_run(tmp_path_factory: pytest.TempPathFactory, tiny_tree: Callable[..., dict]) -> Iterator[Path]:
    """A finished one-epoch run of TINY_NET on FakeData (outside the test's working directory),
    and a PNG to predict on beside it."""
    from freezetune.config import from_dict
    from freezetune.train import run as train_run

    root = tmp_path_factory.mktemp("tiny_net")
    (root / "ftwrite").mkdir()
    (root / "ftwrite" / "__init__.py").write_text("")
    (root / "ftwrite" / "nets.py").write_text(TINY_NET)
    sys.path.insert(0, str(root))
    edits = {"name": "net", "model.arch": "ftwrite.nets:build", "train.output_dir": str(root / "run")}
    train_run(from_dict(tiny_tree(edits)))
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(root / "image.png")
    yield root / "run"
    sys.path.remove(str(root))
    for name in [n for n in sys.modules if n == "ftwrite" or n.startswith("ftwrite.")]:
        del sys.modules[name]


def disk_with_free_bytes(monkeypatch: pytest.MonkeyPatch, free: int) -> None:
    """The file system reports ``free`` bytes left (to this process, root or not)."""
    real = os.statvfs

    def statvfs(path: object) -> os.statvfs_result:
        st = real(path)  # type: ignore[arg-type]
        return os.statvfs_result((st.f_bsize, 1, st.f_blocks, free, free, *st[5:]))

    monkeypatch.setattr("freezetune.utils.files.os.statvfs", statvfs)


def disk_full_while_writing(monkeypatch: pytest.MonkeyPatch, after: int, fail_on: str = "") -> None:
    """A disk that fills up mid-write: every file the writer opens (those whose name holds
    ``fail_on``) takes ``after`` bytes, then ENOSPC; the bytes written stay on disk."""
    import builtins

    class Filling:
        def __init__(self, path: object) -> None:
            self.file = builtins.open(path, "wb")  # type: ignore[call-overload]
            self.name = self.file.name

        def write(self, data: bytes) -> int:
            self.file.write(data[:after])
            raise OSError(errno.ENOSPC, "No space left on device")

        def __enter__(self) -> Filling:
            return self

        def __exit__(self, *exc: object) -> None:
            self.file.close()

    def opener(path: object, mode: str = "r", *args: object, **kwargs: object) -> object:
        if "w" in mode and fail_on in str(path):
            return Filling(path)
        return builtins.open(path, mode, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr("freezetune.utils.files.open", opener, raising=False)


def read_only(monkeypatch: pytest.MonkeyPatch, code: int = errno.EROFS) -> None:
    """Every file the writer (or its probe) opens is refused, as on a read-only disk (root ignores modes)."""

    def refuse(path: object, *args: object, **kwargs: object) -> object:
        raise OSError(code, os.strerror(code), str(path))

    monkeypatch.setattr("freezetune.utils.files.open", refuse, raising=False)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit's deprecation
# torch.export's first call costs a second: the other formats are for make test-all (the writer is the same).
@pytest.mark.parametrize(
    "fmt", ["torchscript", *(pytest.param(f, marks=pytest.mark.heavy) for f in ("exported_program", "onnx"))]
)
def test_export_to_a_full_disk_is_one_line_exit_1_and_leaves_nothing(
    workdir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tiny_net_run: Path, fmt: str
) -> None:
    # Not "torch cannot export ... try --format torchscript", as exported_program and onnx said of a full disk.
    disk_with_free_bytes(monkeypatch, 0)
    out = "exports/new/model.pt2"  # two folders to make, and removed again
    before = files(workdir.parent)
    rc, out_text, err = command(capsys, "export", "--run", str(tiny_net_run), "--format", fmt, "--out", out)
    assert rc == 1 and out_text == ""
    line = error_line(err)
    assert line.startswith(f"error: {out}: No space left on device (") and " to write, 0 bytes free)" in line
    assert line.endswith("HINT: free space on its disk, then run the command again")
    assert files(workdir.parent) == before and not (workdir / "exports").exists()


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_a_torch_writer_that_would_abort_on_a_full_disk_never_writes_the_file_itself(
    workdir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tiny_net_run: Path
) -> None:
    # torch's C++ writer aborts the process on a full disk (SIGABRT, exit 134, its temporary left
    # behind, no finally run). Here it "aborts" whenever it is given a path: an exception no
    # handler catches. The export serialises to memory, so only freezetune's writer meets the
    # disk, fills it mid-write, and takes its temporary away again.
    class Aborted(BaseException):
        pass

    real_save = torch.jit.save

    def save(obj: object, f: object, *args: object, **kwargs: object) -> None:
        if isinstance(f, str | os.PathLike):
            Path(f).write_bytes(b"half a file")
            raise Aborted(f"SIGABRT: torch wrote to {f} itself")
        real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch.jit, "save", save)
    disk_full_while_writing(monkeypatch, after=100)
    before = files(workdir.parent)
    rc, _, err = command(capsys, "export", "--run", str(tiny_net_run), "--format", "torchscript", "--out", "m.pt")
    assert rc == 1
    assert error_line(err) == (
        "error: m.pt: No space left on device. HINT: free space on its disk, then run the command again"
    )
    assert files(workdir.parent) == before  # no .m.pt.tmp: the 100 bytes written were removed


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize(
    ("code", "reason", "hint"),
    [
        (errno.EROFS, "Read-only file system", "the file system is read-only: write elsewhere (--out)"),
        (errno.EACCES, "Permission denied", "choose a folder you can write (--out)"),
    ],
    ids=["read-only", "permission"],
)
@pytest.mark.parametrize("cmd", ["export", "predict", "evaluate"])
def test_an_out_that_cannot_be_written_is_exit_2_naming_out(
    workdir: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tiny_net_run: Path,
    cmd: str,
    code: int,
    reason: str,
    hint: str,
) -> None:
    # Refused before the work, as train refuses its folder: a usage mistake, not training's key in the hint.
    args = {
        "export": ["--format", "torchscript", "--out", "ro/model.pt"],
        "predict": [str(tiny_net_run.parent / "image.png"), "--out", "ro/preds"],
        "evaluate": ["--out", "ro/eval"],
    }[cmd]
    (workdir / "ro").mkdir()
    read_only(monkeypatch, code)
    before = files(workdir.parent)
    rc, out, err = command(capsys, cmd, "--run", str(tiny_net_run), *args)
    assert rc == 2 and out == ""
    assert error_line(err) == f"error: ro: {reason}. HINT: {hint}"
    assert files(workdir.parent) == before


@pytest.mark.parametrize(
    ("cmd", "args", "written"),
    [
        ("predict", ["--out", "out/preds"], ["out/preds.csv", "out/preds.json"]),
        ("evaluate", ["--out", "out/eval"], ["out/eval.json", "out/eval.png"]),
    ],
)
def test_predict_and_evaluate_write_both_files_or_neither(
    workdir: Path,
    capsys: pytest.CaptureFixture[str],
    tiny_net_run: Path,
    cmd: str,
    args: list[str],
    written: list[str],
) -> None:
    # The disk fills up on the second file: the first, already whole in its temporary, is not
    # left alone (a table without its plot), and no temporary stays.
    image = [str(tiny_net_run.parent / "image.png")] if cmd == "predict" else []
    before = files(workdir.parent)
    with pytest.MonkeyPatch.context() as disk:
        disk_full_while_writing(disk, after=10, fail_on=Path(written[1]).name)
        rc, out, err = command(capsys, cmd, "--run", str(tiny_net_run), *image, *args)
    assert rc == 1 and out == ""
    assert error_line(err) == (
        f"error: {written[1]}: No space left on device. HINT: free space on its disk, then run the command again"
    )
    assert files(workdir.parent) == before


RECORD_START = ["FAILED", "config.yaml", "events.jsonl", "freeze_plan.json"]


@pytest.mark.usefixtures("tiny_net_run")  # TINY_NET importable: two runs of it take a fraction of resnet18's time
@pytest.mark.parametrize(
    ("full_at", "left"),
    [
        ("frozen.pt", RECORD_START),  # the run's start: the frozen tensors, as large as the model
        ("best.pt", [*RECORD_START, "frozen.pt", "metrics.jsonl", "steps.jsonl"]),  # epoch 1's end
    ],
)
def test_disk_full_before_the_first_checkpoint_says_rerun_not_resume(
    workdir: Path, capsys: pytest.CaptureFixture[str], full_at: str, left: list[str]
) -> None:
    # "the last checkpoint is kept, so --resume continues from it" was said with no checkpoint,
    # and --resume then failed; a full disk at the start left no FAILED and said "run the command
    # again", which the folder then refused. What is said now follows what the folder holds.
    import freezetune.record.rundir as rundir

    real = rundir.atomic_write_bytes

    def full_disk(path: Path, data: bytes) -> None:
        if path.name == full_at:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, data)

    edits = ["model.arch=ftwrite.nets:build", "train.epochs=2"]
    with pytest.MonkeyPatch.context() as disk:
        disk.setattr(rundir, "atomic_write_bytes", full_disk)
        rc, _, err = command(capsys, "train", "--config", "tiny.yaml", *edits, "--no-progress")
    assert rc == 1
    assert error_line(err) == (
        f"error: runs/tiny/{full_at}: No space left on device. HINT: free space on its disk, then rerun with "
        "--overwrite (no checkpoint was saved yet, so --resume has nothing to continue from)"
    )
    run = workdir / "runs" / "tiny"
    assert sorted(p.name for p in run.iterdir()) == sorted(left)
    assert (run / "FAILED").read_text().splitlines() == [
        error_line(err),
        "fix the problem and rerun with --overwrite",
    ]
    # The rerun the hint names works once there is space.
    rc, _, err = command(capsys, "train", "--config", "tiny.yaml", *edits, "--overwrite", "--no-progress")
    assert rc == 0, err


@pytest.mark.parametrize(
    ("code", "status", "hint"),
    [
        (errno.ENOSPC, 1, "free space on its disk, then run the command again"),
        (errno.EDQUOT, 1, "free space or raise your disk quota, then run the command again"),
        (errno.EROFS, 2, "the file system is read-only: write elsewhere (--out)"),
        (errno.EACCES, 2, "choose a folder you can write (--out)"),
        (errno.EPERM, 2, "choose a folder you can write (--out)"),
        (errno.ENOENT, 2, "a folder on its path is gone (removed while the command ran?): write elsewhere (--out)"),
        (errno.ENOTDIR, 2, "a part of its path is a file, not a folder: write elsewhere (--out)"),
        (errno.EISDIR, 2, "it is a folder: give a file path (--out)"),
        (errno.EFBIG, 1, "write to a file system that takes larger files (--out)"),
    ],
    ids=lambda v: errno.errorcode.get(v, str(v)) if isinstance(v, int) and v > 2 else None,
)
def test_every_os_error_of_a_write_is_one_line_with_its_status_and_the_commands_flag(
    code: int, status: int, hint: str
) -> None:
    from freezetune.cli.common import guarded
    from freezetune.utils.errors import write_error

    def fails() -> int:
        raise write_error(code, os.strerror(code), "out/model.pt")

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert guarded(fails, output="--out") == status
    assert err.getvalue() == f"error: out/model.pt: {os.strerror(code)}. HINT: {hint}\n"


# ------------------------------------------------- issue 26 (i26-words): divergence, settings that cannot act, words


@pytest.mark.parametrize(
    ("lr", "what"),
    [
        # The weights and BatchNorm statistics stay finite (up to ~1e16), but in eval mode the model outputs NaN.
        ("1.0e+8", "validation loss (nan) in epoch 1; the last finite loss was "),
        # layer1's BatchNorm statistics overflow float32 (its running variance is inf); the validation loss is NaN too.
        ("1.0e+9", "BatchNorm running statistics (layer1.0.bn1.running_var) in epoch 1; the last finite loss was "),
    ],
    ids=["nan-validation-loss", "inf-running-var"],
)
def test_a_run_whose_training_loss_stays_finite_but_whose_model_does_not_is_diverged(
    workdir: Path, capsys: pytest.CaptureFixture[str], lr: str, what: str
) -> None:
    before = files(workdir.parent)
    edits = ["freeze.preset=full", f"train.optimizer.lr={lr}", "--no-progress"]
    rc, out, err = command(capsys, "train", "--config", "tiny.yaml", *edits)
    assert rc == 1 and out == ""
    line = error_line(err)
    assert line.startswith(f"error: training diverged: non-finite {what}")
    assert line.endswith("HINT: lower train.optimizer.lr, or add warm-up (train.scheduler)")
    run = workdir / "runs" / "tiny"
    # Nothing of the epoch: no model.pt, no best.pt, no checkpoint.pt, no metrics row.
    assert set(files(workdir.parent)) - set(before) == {
        f"work/runs/tiny/{name}"
        for name in ("FAILED", "config.yaml", "events.jsonl", "freeze_plan.json", "steps.jsonl")
    }
    assert (run / "FAILED").read_text().startswith(line)
    assert "rerun with --overwrite" in (run / "FAILED").read_text()  # no checkpoint to resume from


AUTO_THAT_CANNOT_ACT = [
    (
        ["freeze.preset=auto", "freeze.auto.warmup_epochs=5", "train.epochs=3"],
        "error: tiny.yaml: freeze.auto.warmup_epochs: 5: auto decides first after epoch 5 and a decision acts from "
        "the next epoch, so with train.epochs 3 it could never freeze anything. HINT: freeze.auto.warmup_epochs: 2 or "
        "less, or train.epochs: 6 or more (set on the command line)",
    ),
    (
        ["freeze.preset=auto"],  # tiny.yaml's one epoch
        "error: tiny.yaml: train.epochs: 1 is too short for freeze.preset auto: it decides first after epoch 2 (a "
        "change rate needs two epochs) and a decision acts from the next epoch, so it could never freeze anything. "
        "HINT: train.epochs: 3 or more, or a fixed preset (e.g. freeze.preset: full)",
    ),
    (
        ["freeze.preset=auto", "freeze.auto.ceiling=conv1", "train.epochs=3"],
        "error: freezing plan rejected: freeze.auto.ceiling: 'conv1' is the first stage, so auto has nothing to "
        "freeze (stages from the ceiling on always train). HINT: a later stage (bn1, layer1, layer2, layer3, layer4), "
        "or null to let auto freeze up to the head 'fc'",
    ),
]


@pytest.mark.parametrize(("edits", "line"), AUTO_THAT_CANNOT_ACT, ids=["warmup-5-of-3", "epochs-1", "ceiling-conv1"])
@pytest.mark.parametrize("cmd", ["train", "plan"])
def test_an_auto_policy_that_could_never_act_is_a_config_error_in_train_and_plan(
    workdir: Path, capsys: pytest.CaptureFixture[str], cmd: str, edits: list[str], line: str
) -> None:
    before = files(workdir.parent)
    rc, out, err = command(capsys, cmd, "--config", "tiny.yaml", *edits, *(["--no-probe"] if cmd == "plan" else []))
    assert rc == 2 and out == "" and error_line(err) == line
    assert files(workdir.parent) == before


def test_a_run_name_in_any_script_names_its_folder_and_one_that_is_not_nfc_is_refused(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Decomposed 'é' (e + U+0301): macOS would find the composed name's folder under it, Linux would not.
    before = files(workdir.parent)
    rc, out, err = command(capsys, "train", "--config", "tiny.yaml", "name=cafe\u0301", "--no-progress")
    assert rc == 2 and out == ""
    assert error_line(err) == (
        "error: tiny.yaml: name: 'cafe\u0301' is not in Unicode NFC form, so it could name two folders on one system "
        "and one on another. HINT: name: caf\u00e9 (the same letters, composed) (set on the command line)"
    )
    assert files(workdir.parent) == before
    rc, out, err = command(
        capsys, "train", "--config", "tiny.yaml", "name=модель_测试", "train.measure='off'", "--no-progress"
    )
    assert rc == 0, err
    assert "модель_测试" in out
    summary = json.loads((workdir / "runs" / "модель_测试" / "summary.json").read_text(encoding="utf-8"))
    assert summary["name"] == "модель_测试" and summary["run_dir"] == "runs/модель_测试"
    assert {p.name for p in (workdir / "runs").iterdir()} == {"mine", "модель_测试"}


def test_the_tour_explains_the_plan_it_is_given_not_a_frozen_prefix_it_does_not_have(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = files(workdir.parent)
    rc, out, err = command(capsys, "tour", "--config", "tiny.yaml", "freeze.preset=bitfit", "--repeats", "1")
    assert rc == 0, err
    # BitFit: the biases of BatchNorms train all through the network, so its frozen convolutions are no prefix.
    assert "the graph starts at 'bn1'" in out
    assert "19 module(s) with frozen parameters run after it (the first: 'layer1.0.conv1')" in out
    why = " ".join(out.split("why: ")[-1].split())
    assert why.startswith("Here the frozen parameters are no prefix: 19 module(s) with frozen parameters run after")
    assert "They still run backward, to pass the gradient on to the trainable parameters before them" in why
    assert "record no nodes and save no tensors" not in out  # the prefix's explanation, which is not true here
    assert files(workdir.parent) == before  # the tour writes nothing


# -------------------------------------------------- issue 26: Ctrl-C, resuming, the terminal (part i26-compare)

# A finished run's folder: no checkpoint.pt, no frozen.pt (model.pt holds the frozen tensors now).
FINISHED_RUN = sorted(["best.pt", "config.yaml", "events.jsonl", "freeze_plan.json", "metrics.jsonl", "model.pt"])
FINISHED_RUN += ["steps.jsonl", "summary.json"]


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def ctrl_c_at(monkeypatch: pytest.MonkeyPatch, *steps: int) -> list[int]:
    """SIGINT, as a terminal's Ctrl-C, right after the given optimizer steps, counted across every
    run of this process (one signal per entry: a step given twice is Ctrl-C pressed twice). The
    runs' per-step log (RunLogs.step) is the hook; returns the count so far."""
    import signal

    from freezetune.record import RunLogs

    real, seen = RunLogs.step, [0]

    def step(self: RunLogs, *args: object) -> None:
        real(self, *args)
        seen[0] += 1
        for _ in range(steps.count(seen[0])):
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(RunLogs, "step", step)
    return seen


def logged(caplog: pytest.LogCaptureFixture, words: str) -> list[str]:
    """The log lines holding ``words`` (pytest's log capture holds them: the command's
    logging.basicConfig finds its handler installed and adds none for stderr)."""
    lines = [r.getMessage() for r in caplog.records if words in r.getMessage()]
    caplog.clear()
    return lines


def tensors(run: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A finished run's model.pt: (frozen, trainable) tensors by name, as its freeze plan says."""
    model = read_checkpoint(run / "model.pt", "test")["model"]
    trainable = {p["name"] for p in json.loads((run / "freeze_plan.json").read_text())["parameters"] if p["trainable"]}
    return {k: v for k, v in model.items() if k not in trainable}, {k: v for k, v in model.items() if k in trainable}


def assert_bitwise(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys() and a
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]


@pytest.mark.usefixtures("compare_trains_here")
def test_ctrl_c_stops_a_comparison_after_a_step_and_the_same_command_continues_it(
    workdir: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    tiny_tree: Callable[..., dict],
) -> None:
    (workdir / "bitfit.yaml").write_text(yaml.safe_dump(tiny_tree({"name": "bitfit", "freeze.preset": "bitfit"})))
    argv = ["compare", "--configs", "tiny.yaml", "bitfit.yaml", "--seeds", "2", "--no-estimate"]
    monkeypatch.setattr("freezetune.apps.compare.write_report", lambda report, out: [])  # its plots: seconds
    ctrl_c_at(monkeypatch, 3)  # two steps a run: bitfit seed 0's first step (tiny 0, bitfit 0, tiny 1, bitfit 1)
    rc, out, err = command(capsys, *argv)
    assert rc == 130
    assert logged(caplog, "interrupt") == [
        "interrupt: finishing this step, then saving a checkpoint and stopping (Ctrl-C again to abort at once)"
    ]
    assert out.count("Continue with") == 1 and "--resume" not in out  # compare's one command, not train's
    assert out.splitlines()[-2:] == [
        "compare stopped: finished tiny seed 0 (runs/tiny-seed0); stopped bitfit seed 0 "
        "(runs/bitfit-seed0/checkpoint.pt continues it); not started tiny seed 1, bitfit seed 1.",
        "Continue with: freezetune compare --configs tiny.yaml bitfit.yaml --seeds 2 --no-estimate "
        "(finished runs are reused, the stopped one continues)",
    ]
    runs = workdir / "runs"
    assert names(runs) == ["bitfit-seed0", "mine", "tiny-seed0"]  # no further run started
    assert names(runs / "tiny-seed0") == FINISHED_RUN
    stopped = runs / "bitfit-seed0"
    assert names(stopped) == ["checkpoint.pt", "config.yaml", "events.jsonl", "freeze_plan.json", "frozen.pt"] + [
        "steps.jsonl"
    ]
    state = read_checkpoint(stopped / "checkpoint.pt", "test")
    assert (state["epoch"], state["partial"]["steps"]) == (1, 1)  # after the step it was in

    rc, out, err = command(capsys, *argv)  # the same command, uninterrupted now (its 4th step is past)
    assert rc == 0, err
    assert "tiny seed 0: reusing runs/tiny-seed0" in out
    assert "bitfit seed 0: continuing runs/bitfit-seed0 from its checkpoint (same config)" in out
    assert names(runs) == ["bitfit-seed0", "bitfit-seed1", "mine", "tiny-seed0", "tiny-seed1"]
    assert all(names(runs / d) == FINISHED_RUN for d in names(runs) if "seed" in d)
    # The stopped run, trained uninterrupted (the others ran as in any comparison): the same tensors,
    # bit for bit, frozen and trainable alike.
    monkeypatch.undo()  # no more Ctrl-C
    monkeypatch.chdir(workdir)
    edits = ["seed=0", "seeds=1", "train.output_dir=runs/uninterrupted", "--no-progress"]
    assert command(capsys, "train", "--config", "bitfit.yaml", *edits)[0] == 0
    (frozen, trained), (frozen_ref, trained_ref) = tensors(stopped), tensors(runs / "uninterrupted")
    assert_bitwise(frozen, frozen_ref)
    assert_bitwise(trained, trained_ref)


def test_one_ctrl_c_in_train_is_said_once_and_the_resumed_epoch_counts_only_its_own_samples(
    workdir: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctrl_c_at(monkeypatch, 1)
    rc, out, err = command(capsys, "train", "--config", "tiny.yaml", "--no-progress")
    assert rc == 130 and err == ""
    assert logged(caplog, "interrupt") == [
        "interrupt: finishing this step, then saving a checkpoint and stopping (Ctrl-C again to abort at once)"
    ]
    assert out.splitlines() == [
        "tiny: stopped in epoch 1 after 1 steps; checkpoint saved. "
        "Continue with: freezetune train --config tiny.yaml --resume runs/tiny"
    ]
    assert logged(caplog, "continue") == []  # the command's line is the only one
    run = workdir / "runs" / "tiny"
    assert names(run) == [
        "checkpoint.pt",
        "config.yaml",
        "events.jsonl",
        "freeze_plan.json",
        "frozen.pt",
        "steps.jsonl",
    ]
    rc, out, _ = command(capsys, "train", "--config", "tiny.yaml", "--resume", "runs/tiny", "--no-progress")
    assert rc == 0 and names(run) == FINISHED_RUN
    (row,) = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    # This process trained one step of 4 samples in epoch_time_s; the first step's 4 were the earlier one's.
    assert row["samples_per_s"] == pytest.approx(4 / row["epoch_time_s"])


def test_a_forked_dataloader_worker_leaves_the_ctrl_c_to_the_trainer() -> None:
    import os
    import signal

    from freezetune.train import StopRequest

    # A terminal's Ctrl-C reaches the workers too; each used to say the interrupt line again.
    with StopRequest() as stop:
        pid = os.fork()
        if pid == 0:  # the worker: the trainer's handler, inherited
            signal.raise_signal(signal.SIGINT)
            os._exit(1 if stop.requested else 0)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0 and not stop.requested


def test_a_closed_terminal_does_not_stop_training_and_its_handlers_are_put_back() -> None:
    import os
    import signal

    from freezetune.train import StopRequest

    before = signal.getsignal(signal.SIGHUP)
    with StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGHUP)  # the terminal closed: this process is still here
        assert not stop()
    assert signal.getsignal(signal.SIGHUP) is before


def test_a_second_ctrl_c_aborts_at_once_and_names_what_it_left(
    workdir: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctrl_c_at(monkeypatch, 3, 3)  # pressed twice in epoch 2's first step
    rc, out, err = command(capsys, "train", "--config", "tiny.yaml", "train.epochs=2", "--no-progress")
    assert rc == 130 and [line.split(":")[0] for line in out.splitlines()] == ["epoch 1"]
    assert err.splitlines() == ["interrupted at once by a second Ctrl-C; runs/tiny/FAILED says how to go on"]
    assert len(logged(caplog, "interrupt")) == 1
    run = workdir / "runs" / "tiny"
    assert names(run) == [
        "FAILED",
        "best.pt",
        "checkpoint.pt",  # epoch 1's
        "config.yaml",
        "events.jsonl",
        "freeze_plan.json",
        "frozen.pt",
        "metrics.jsonl",
        "steps.jsonl",
    ]
    assert (run / "FAILED").read_text().splitlines() == [
        "error: interrupted at once by a second Ctrl-C",
        "continue with --resume runs/tiny (from its last checkpoint), or rerun with --overwrite",
    ]
    assert read_checkpoint(run / "checkpoint.pt", "test")["epoch"] == 1


def test_ctrl_c_while_the_finished_run_is_saved_lets_it_finish_and_says_so(
    workdir: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import signal

    from freezetune.record import RunDir

    real = RunDir.save_checkpoint

    def save(self: RunDir, name: str, state: dict) -> int:
        if name == "model.pt":
            signal.raise_signal(signal.SIGINT)
        return real(self, name, state)

    monkeypatch.setattr(RunDir, "save_checkpoint", save)
    rc, out, err = command(capsys, "train", "--config", "tiny.yaml", "--no-progress")
    assert rc == 0 and err == "" and "frozen tensors bitwise unchanged: yes" in out
    assert logged(caplog, "interrupt") == [
        "interrupt: the run has begun its last step or is past it, so it finishes instead: model.pt and summary.json "
        "as usual (Ctrl-C again to abort at once)"
    ]
    assert names(workdir / "runs" / "tiny") == FINISHED_RUN


def test_a_closed_pipe_does_not_end_the_run(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import io
    import os
    import sys

    # `freezetune train ... 2>&1 | head -5` once head has exited: every write meets a closed pipe.
    read, write = os.pipe()
    os.close(read)
    closed = io.TextIOWrapper(io.FileIO(write, "w"), line_buffering=True)
    monkeypatch.setattr(sys, "stdout", closed)
    monkeypatch.setattr(sys, "stderr", closed)
    try:
        rc = main(["train", "--config", "tiny.yaml", "--no-progress"])
    finally:
        monkeypatch.undo()
        closed.close()  # its fd is /dev/null's now: what was buffered goes there
    assert rc == 0
    run = workdir / "runs" / "tiny"
    assert names(run) == FINISHED_RUN
    assert json.loads((run / "summary.json").read_text())["frozen_unchanged"] is True
    assert len((run / "steps.jsonl").read_text().splitlines()) == 2  # the run's own record is whole


@pytest.mark.usefixtures("compare_trains_here")
def test_compare_checks_its_data_without_a_line_per_config_and_each_run_says_its_check_once(
    workdir: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    png_folder(workdir / "images", {"cat": 0, "dog": 1})
    imagefolder_config(workdir)
    monkeypatch.setattr("freezetune.apps.compare.write_report", lambda report, out: [])  # its plots: seconds
    caplog.set_level(logging.INFO)
    rc, _, err = command(capsys, "compare", "--configs", "tiny.yaml", "--no-estimate")
    assert rc == 0, err
    # The checks before training decode no image (so say nothing); the run decodes each folder once.
    checked = [" ".join(line.split()[:5]) for line in logged(caplog, "checked ")]
    assert checked == ["checked 8 images in images/train", "checked 4 images in images/val"]


@pytest.mark.usefixtures("compare_trains_here")
def test_compare_continues_this_configs_failed_run_and_names_another_configs_unfinished_one(
    workdir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Failed in epoch 2, after epoch 1's checkpoint: the same command continues it (and it fails again).
    rc, _, err = command(capsys, "compare", "--configs", "tiny.yaml", *DIVERGING, "--no-estimate")
    assert rc == 1 and "training tiny.yaml failed with exit status 1" in err.splitlines()[-1]
    run = workdir / "runs" / "tiny"
    before = names(run)
    assert "checkpoint.pt" in before and "FAILED" in before
    rc, out, err = command(capsys, "compare", "--configs", "tiny.yaml", *DIVERGING, "--no-estimate")
    assert rc == 1 and "holds another run" not in err
    (line,) = [line for line in out.splitlines() if line.startswith("tiny:")]
    assert line.startswith(
        "tiny: continuing runs/tiny from its checkpoint (same config; it failed: error: training diverged: "
        "non-finite loss in epoch 2, step "
    )
    assert names(run) == before
    # Another config's unfinished run is refused, saying so, and nothing is touched.
    stamp = files(workdir / "runs")
    rc, _, err = command(capsys, "compare", "--configs", "tiny.yaml", "--no-estimate")
    assert rc == 2
    line = error_line(err)
    assert line.startswith(
        "error: runs/tiny holds another run than tiny's config asks for (an unfinished run whose config differs in "
        "freeze.schedule: "
    )
    assert "; train.epochs: 2 there, 1 now). HINT: pass --overwrite to replace it" in line
    assert files(workdir / "runs") == stamp

    # Failed before its first checkpoint (a fault in epoch 1): the same command starts it again.
    def bug(*args: object, **kwargs: object) -> None:
        raise ZeroDivisionError("a bug")

    with monkeypatch.context() as patched:
        patched.setattr("freezetune.train.runner.epoch_row", bug)
        assert command(capsys, "compare", "--configs", "tiny.yaml", "name=early", "--no-estimate")[0] == 1
    early = workdir / "runs" / "early"
    assert "FAILED" in names(early) and "checkpoint.pt" not in names(early)
    monkeypatch.setattr("freezetune.apps.compare.write_report", lambda report, out: [])  # its plots: seconds
    rc, out, _ = command(capsys, "compare", "--configs", "tiny.yaml", "name=early", "--no-estimate")
    assert rc == 0 and names(early) == FINISHED_RUN
    assert (
        "early: starting again in runs/early (this config's run there failed or stopped before its first checkpoint)"
        in out.splitlines()
    )


# --------------------------------------------------------------------------- freeze.adapters (issue 27)


def test_an_adapter_selector_that_matches_no_layer_is_one_line_and_writes_nothing(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if importlib.util.find_spec("peft") is None:
        pytest.skip("peft is not installed")
    before = files(workdir.parent)
    rc, out, err = command(
        capsys,
        "train",
        "--config",
        "tiny.yaml",
        "freeze.adapters=[{modules: layer5, rank: 4, alpha: 8}]",
        "--no-progress",
    )
    assert rc == 2 and out == ""
    assert error_line(err) == (
        "error: freezing plan rejected: freeze.adapters[0].modules 'layer5': matches no module; "
        "nearest names: layer4, layer3, layer2"
    )
    assert files(workdir.parent) == before


def test_a_ctrl_c_before_the_first_checkpoint_says_there_is_nothing_to_continue_from(
    workdir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    ctrl_c_at(monkeypatch, 1, 1)  # pressed twice in the first step: aborted before any checkpoint
    rc, _, err = command(capsys, "train", "--config", "tiny.yaml", "--no-progress")
    assert rc == 130
    assert err.splitlines() == ["interrupted at once by a second Ctrl-C; runs/tiny/FAILED says how to go on"]
    run = workdir / "runs" / "tiny"
    assert not (run / "checkpoint.pt").exists() and not (run / "model.pt").exists()
    assert (run / "FAILED").read_text().splitlines() == [
        "error: interrupted at once by a second Ctrl-C",
        "no checkpoint was saved yet, so there is nothing to continue from: rerun with --overwrite",
    ]
