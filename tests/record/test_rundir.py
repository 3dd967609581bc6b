"""The run folder (``freezetune.record``): a run never silently replaces another,
overwriting removes only our own files, and every write is whole or not at all."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import yaml

from freezetune.record import RECORD_FILES, RunDir, RunExistsError, atomic_write_bytes


def listing(folder: Path) -> list[str]:
    """Every entry in ``folder``, hidden ones included (temporary files start with '.')."""
    return sorted(p.name for p in folder.iterdir())


# --------------------------------------------------------------------------- check_free


def test_record_files_are_the_documented_nine() -> None:
    assert set(RECORD_FILES) == {
        "config.yaml",
        "freeze_plan.json",
        "metrics.jsonl",
        "events.jsonl",
        "steps.jsonl",
        "summary.json",
        "model.pt",
        "best.pt",
        "checkpoint.pt",
    }


@pytest.mark.parametrize("name", RECORD_FILES)
def test_check_free_refuses_a_folder_holding_any_record_file(tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_bytes(b"x")
    with pytest.raises(RunExistsError) as info:
        RunDir.check_free(tmp_path, overwrite=False)
    # A FileExistsError, so callers that catch the builtin still catch it.
    assert isinstance(info.value, FileExistsError)
    message = str(info.value)
    assert name in message
    assert str(tmp_path) in message
    assert "HINT" in message and "--overwrite" in message


def test_check_free_names_every_existing_record_file(tmp_path: Path) -> None:
    for name in ("summary.json", "model.pt"):
        (tmp_path / name).write_bytes(b"x")
    with pytest.raises(RunExistsError) as info:
        RunDir.check_free(tmp_path, overwrite=False)
    assert "summary.json" in str(info.value) and "model.pt" in str(info.value)
    assert "config.yaml" not in str(info.value)


def test_check_free_with_overwrite_accepts_an_existing_run(tmp_path: Path) -> None:
    for name in RECORD_FILES:
        (tmp_path / name).write_bytes(b"x")
    RunDir.check_free(tmp_path, overwrite=True)  # no exception
    assert listing(tmp_path) == sorted(RECORD_FILES)  # and checking deletes nothing


def test_check_free_accepts_an_empty_folder(tmp_path: Path) -> None:
    RunDir.check_free(tmp_path, overwrite=False)


def test_check_free_accepts_a_missing_folder_and_does_not_create_it(tmp_path: Path) -> None:
    missing = tmp_path / "not" / "there"
    RunDir.check_free(missing, overwrite=False)
    assert not missing.exists()


def test_check_free_refuses_a_folder_of_someone_elses_files(tmp_path: Path) -> None:
    # A run needs a folder of its own: writing beside the user's files (a dataset, say) is refused.
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "model.pt.bak").write_bytes(b"x")  # a near-name is still not ours
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "summary.json").write_text("{}")  # record names one level down do not count
    for path in (tmp_path, str(tmp_path)):  # str paths work too
        with pytest.raises(RunExistsError, match=r"holds files freezetune did not write \(model.pt.bak, notes.txt"):
            RunDir.check_free(path, overwrite=True)
    (tmp_path / ".hidden").write_text("")
    for name in ("notes.txt", "model.pt.bak"):
        (tmp_path / name).unlink()
    __import__("shutil").rmtree(tmp_path / "plots")
    RunDir.check_free(tmp_path, overwrite=False)  # hidden files (.gitkeep) do not count


# --------------------------------------------------------------------------- create


def test_create_makes_missing_parent_folders(tmp_path: Path) -> None:
    out = RunDir(tmp_path / "a" / "b" / "run")
    out.create(overwrite=False)
    assert out.path.is_dir()
    assert listing(out.path) == []


def test_create_without_overwrite_refuses_and_removes_nothing(tmp_path: Path) -> None:
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1}\n')
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(RunExistsError):
        RunDir(tmp_path).create(overwrite=False)
    assert (tmp_path / "metrics.jsonl").read_text() == '{"epoch": 1}\n'
    assert listing(tmp_path) == ["metrics.jsonl", "notes.txt"]


def test_create_with_overwrite_removes_only_record_files(tmp_path: Path) -> None:
    for name in RECORD_FILES:
        (tmp_path / name).write_bytes(b"old run")
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "model.pt.bak").write_bytes(b"backup")
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "loss.png").write_bytes(b"png")

    RunDir(tmp_path).create(overwrite=True)

    assert listing(tmp_path) == ["model.pt.bak", "notes.txt", "plots"]
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert (tmp_path / "model.pt.bak").read_bytes() == b"backup"
    assert (tmp_path / "plots" / "loss.png").read_bytes() == b"png"


def test_create_with_overwrite_removes_the_logs_train_log_asked_for(tmp_path: Path) -> None:
    """metrics.csv, steps.csv and tb/ (train.log: csv, tensorboard) are freezetune's too: they do
    not make the folder someone else's, and an overwrite removes them, tb/ with its files."""
    (tmp_path / "config.yaml").write_text("name: old\n")
    (tmp_path / "metrics.csv").write_text("epoch\n1\n")
    (tmp_path / "steps.csv").write_text("step\n1\n")
    (tmp_path / "tb").mkdir()
    (tmp_path / "tb" / "events.out.tfevents.1.host.1.0").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(RunExistsError, match="config.yaml"):
        RunDir.check_free(tmp_path, overwrite=False)
    RunDir(tmp_path).create(overwrite=True)
    assert listing(tmp_path) == ["notes.txt"]


def test_overwrite_starts_metrics_afresh(tmp_path: Path) -> None:
    """metrics.jsonl is appended to: an overwritten run must not inherit old rows."""
    out = RunDir(tmp_path)
    out.create(overwrite=False)
    out.append_jsonl("metrics.jsonl", {"epoch": 1})
    out.append_jsonl("metrics.jsonl", {"epoch": 2})
    out.create(overwrite=True)
    out.append_jsonl("metrics.jsonl", {"epoch": 1, "new": True})
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows == [{"epoch": 1, "new": True}]


# --------------------------------------------------------------------------- writers


def test_write_json_round_trips_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    out = RunDir(tmp_path)
    data = {"a": 1, "b": [1.5, None, "x"], "c": {"d": True}}
    out.write_json("summary.json", data)
    assert listing(tmp_path) == ["summary.json"]
    assert json.loads((tmp_path / "summary.json").read_text()) == data
    assert out.read_json("summary.json") == data
    assert (tmp_path / "summary.json").read_text().endswith("\n")


def test_write_json_replaces_previous_content_whole(tmp_path: Path) -> None:
    out = RunDir(tmp_path)
    out.write_json("summary.json", {"long": "x" * 1000})
    out.write_json("summary.json", {"short": 1})
    assert out.read_json("summary.json") == {"short": 1}
    assert listing(tmp_path) == ["summary.json"]


def test_write_yaml_round_trips_in_key_order_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    out = RunDir(tmp_path)
    data = {"name": "r", "seed": 3, "train": {"epochs": 2, "lr": 0.01, "output_dir": None}, "a": [1, 2]}
    out.write_yaml("config.yaml", data)
    assert listing(tmp_path) == ["config.yaml"]
    text = (tmp_path / "config.yaml").read_text()
    assert yaml.safe_load(text) == data
    # sort_keys=False: the file reads in the config's own order (name first).
    assert list(yaml.safe_load(text)) == ["name", "seed", "train", "a"]
    assert text.startswith("name: r\n")


def test_save_checkpoint_round_trips_with_weights_only_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    out = RunDir(tmp_path)
    state = {"model": {"w": torch.arange(6.0).reshape(2, 3)}, "config": {"name": "r"}, "epoch": 2}
    out.save_checkpoint("model.pt", state)
    assert listing(tmp_path) == ["model.pt"]
    loaded = torch.load(tmp_path / "model.pt", map_location="cpu", weights_only=True)
    assert loaded.keys() == state.keys()
    assert torch.equal(loaded["model"]["w"], state["model"]["w"])
    assert loaded["config"] == {"name": "r"} and loaded["epoch"] == 2


def test_append_jsonl_writes_one_object_per_line(tmp_path: Path) -> None:
    out = RunDir(tmp_path)
    out.append_jsonl("metrics.jsonl", {"epoch": 1, "val_acc": 0.5})
    out.append_jsonl("metrics.jsonl", {"epoch": 2, "val_acc": 0.75})
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [{"epoch": 1, "val_acc": 0.5}, {"epoch": 2, "val_acc": 0.75}]


# --------------------------------------------------------------------------- atomicity


def test_atomic_write_bytes_writes_exact_bytes_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "blob.bin"
    atomic_write_bytes(target, bytes(range(256)))
    assert target.read_bytes() == bytes(range(256))
    atomic_write_bytes(target, b"")
    assert target.read_bytes() == b""
    assert listing(tmp_path) == ["blob.bin"]


def _crash(*args: object, **kwargs: object) -> None:
    raise OSError("simulated crash before the rename")


def test_atomic_write_bytes_crash_keeps_previous_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "summary.json"
    target.write_bytes(b'{"old": true}\n')
    monkeypatch.setattr(os, "replace", _crash)
    with pytest.raises(OSError, match="simulated crash"):
        atomic_write_bytes(target, b'{"new": true, "padding": "' + b"x" * 10_000 + b'"}\n')
    # The reader sees the old file, whole: never a mix of old and new bytes.
    assert target.read_bytes() == b'{"old": true}\n'
    monkeypatch.undo()
    # The next successful write replaces it whole and picks up the stale temporary file.
    atomic_write_bytes(target, b'{"newer": 1}\n')
    assert target.read_bytes() == b'{"newer": 1}\n'
    assert listing(tmp_path) == ["summary.json"]


def test_write_json_and_yaml_crash_keep_previous_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = RunDir(tmp_path)
    out.write_json("summary.json", {"v": 1})
    out.write_yaml("config.yaml", {"v": 1})
    monkeypatch.setattr(os, "replace", _crash)
    with pytest.raises(OSError):
        out.write_json("summary.json", {"v": 2})
    with pytest.raises(OSError):
        out.write_yaml("config.yaml", {"v": 2})
    assert out.read_json("summary.json") == {"v": 1}
    assert yaml.safe_load((tmp_path / "config.yaml").read_text()) == {"v": 1}


def test_save_checkpoint_crash_keeps_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = RunDir(tmp_path)
    out.save_checkpoint("model.pt", {"model": {"w": torch.zeros(3)}, "epoch": 1})
    before = (tmp_path / "model.pt").read_bytes()
    monkeypatch.setattr(os, "replace", _crash)
    with pytest.raises(OSError):
        out.save_checkpoint("model.pt", {"model": {"w": torch.ones(1000)}, "epoch": 2})
    assert (tmp_path / "model.pt").read_bytes() == before
    loaded = torch.load(tmp_path / "model.pt", map_location="cpu", weights_only=True)
    assert loaded["epoch"] == 1 and torch.equal(loaded["model"]["w"], torch.zeros(3))
