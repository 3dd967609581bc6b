"""The one writer: whole files or none, its temporaries and the folders it made removed on any
failure, the bytes checked to fit before any is written; and what an OS error means."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from freezetune.utils.errors import CannotWrite, RunFault, UserError, WriteFailed, os_error, write_error
from freezetune.utils.files import check_writable, write_files


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_files_are_written_whole_in_folders_made_for_them(tmp_path: Path) -> None:
    write_files({tmp_path / "a" / "b" / "x.json": b"{}\n", tmp_path / "a" / "y.bin": bytes(range(256))}, True)
    assert (tmp_path / "a" / "b" / "x.json").read_bytes() == b"{}\n"
    assert (tmp_path / "a" / "y.bin").read_bytes() == bytes(range(256))
    assert listing(tmp_path) == ["a", "a/b", "a/b/x.json", "a/y.bin"]


def test_a_missing_folder_is_not_made_unless_asked(tmp_path: Path) -> None:
    # A run folder deleted while it runs must not come back holding a few of its files.
    with pytest.raises(CannotWrite) as raised:
        write_files({tmp_path / "gone" / "summary.json": b"{}"})
    assert raised.value.errno == errno.ENOENT and raised.value.filename == str(tmp_path / "gone" / "summary.json")
    assert listing(tmp_path) == []


def test_a_failure_on_the_second_file_leaves_neither_nor_their_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "old.csv").write_bytes(b"the previous table")
    real = os.fsync
    calls = []

    def fsync(fd: int) -> None:
        calls.append(fd)
        if len(calls) == 2:  # the second file reaches the disk: full
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(WriteFailed) as raised:
        write_files({tmp_path / "old.csv": b"new table", tmp_path / "new" / "plot.png": b"png"}, True)
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(tmp_path / "new" / "plot.png")
    assert listing(tmp_path) == ["old.csv"] and (tmp_path / "old.csv").read_bytes() == b"the previous table"


def test_bytes_that_cannot_fit_are_refused_before_any_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = os.statvfs

    def statvfs(path: object) -> os.statvfs_result:
        st = real(path)  # type: ignore[arg-type]
        return os.statvfs_result((st.f_bsize, 1024, st.f_blocks, 3, 3, *st[5:]))  # 3 KiB free

    monkeypatch.setattr(os, "statvfs", statvfs)
    opened: list[object] = []
    monkeypatch.setattr("freezetune.utils.files.open", lambda *a, **k: opened.append(a), raising=False)
    with pytest.raises(WriteFailed, match=r"No space left on device \(4\.0 KiB to write, 3\.0 KiB free\)"):
        write_files({tmp_path / "a.bin": b"x" * 2048, tmp_path / "b.bin": b"y" * 2048})
    assert opened == [] and listing(tmp_path) == []


def test_check_writable_leaves_nothing_and_refuses_a_file_in_the_way(tmp_path: Path) -> None:
    check_writable(tmp_path / "not" / "yet")
    assert listing(tmp_path) == []
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(CannotWrite, match="notes.txt is a file, not a folder"):
        check_writable(tmp_path / "notes.txt" / "out")


def test_a_read_gets_no_advice_about_outputs_and_ours_pass_through() -> None:
    denied = os_error(PermissionError(errno.EACCES, "Permission denied", "runs/x/best.pt"), "--out")
    assert isinstance(denied, RunFault) and str(denied) == (
        "runs/x/best.pt: Permission denied. HINT: freezetune cannot read it: check its permissions"
    )
    # An errno only a write raises is a write's, wherever it comes from.
    assert isinstance(os_error(OSError(errno.EROFS, "Read-only file system", "f"), "--out"), UserError)
    refused = write_error(errno.EISDIR, "Is a directory", "out")
    assert isinstance(refused, CannotWrite) and isinstance(refused, OSError)
    mine = UserError("already one line")
    assert os_error(mine, "--out") is mine  # type: ignore[arg-type]
