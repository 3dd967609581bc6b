"""The one way freezetune writes a file: whole or not at all.

Every file a command writes (a run's record, an export and its sidecar, predict's and
evaluate's tables and plots, reports) is serialised to bytes in memory first and handed to
:func:`write_files`. It checks that the bytes fit on the file system, writes each file to a
hidden temporary sibling, flushes it to disk and renames it onto its path, so a reader (or a
crash) never finds half a file; on any failure the temporaries, and the folders the call made,
are removed again. A failure names the file: a :class:`~freezetune.utils.errors.CannotWrite`
(the user's to change, exit 2) or a :class:`~freezetune.utils.errors.WriteFailed` (a full disk,
exit 1), which :func:`~freezetune.utils.errors.os_error` turns into one line with the fix.

Libraries that write a file themselves (``torch.jit.save``, ``torch.export.save``, onnx) are
given a ``BytesIO`` instead of a path: torch's C++ writer aborts the whole process on a full
disk (SIGABRT, before any ``finally`` runs), which memory cannot do."""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

from freezetune.utils.errors import CannotWrite, WriteFailed, write_error
from freezetune.utils.text import format_bytes

__all__ = ["check_writable", "free_bytes", "make_folder", "temporary", "write_file", "write_files", "writing"]


def temporary(path: Path) -> Path:
    """The hidden sibling ``path`` is written under first."""
    return path.with_name(f".{path.name}.tmp")


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """Turn an OSError of the block into :class:`CannotWrite` or :class:`WriteFailed` naming
    ``path``: a failed ``write()`` names no file, and a temporary's name is not the user's."""
    try:
        yield
    except (CannotWrite, WriteFailed):
        raise
    except OSError as exc:
        raise write_error(exc.errno, exc.strerror or str(exc), str(path)) from exc


def free_bytes(folder: Path) -> int:
    """Bytes this process can still write on ``folder``'s file system (root may use the blocks
    reserved for it, which ``shutil.disk_usage`` leaves out)."""
    st = os.statvfs(folder)
    return (st.f_bfree if os.geteuid() == 0 else st.f_bavail) * st.f_frsize


def _nearest_folder(path: Path) -> Path:
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    return existing


def check_writable(folder: Path) -> None:
    """Raise :class:`CannotWrite` unless this process can create files in ``folder`` (or in the
    nearest folder above it that exists, where it would be made): a probe file, since
    ``os.access`` says yes to root even on a read-only file system. Nothing is left behind."""
    existing = _nearest_folder(Path(folder))
    if not existing.is_dir():
        raise CannotWrite(errno.ENOTDIR, f"{existing} is a file, not a folder", str(folder))
    with writing(existing):
        with open(existing / f".freezetune-probe-{os.getpid()}", "wb") as probe:
            probe_path = Path(probe.name)
        probe_path.unlink()


def make_folder(folder: Path) -> list[Path]:
    """Make ``folder`` and its missing parents (an error names ``folder`` as a failed write);
    returns those made, deepest first."""
    made = [p for p in (folder, *folder.parents) if not p.exists()]
    with writing(folder):
        folder.mkdir(parents=True, exist_ok=True)
    return made


def _check_space(contents: Mapping[Path, bytes]) -> None:
    """Refuse bytes that cannot fit before writing any, rather than fill the disk to the brim."""
    need: dict[Path, int] = {}
    for path, data in contents.items():
        need[path.parent] = need.get(path.parent, 0) + len(data)
    for folder, size in need.items():
        first = next(p for p in contents if p.parent == folder)
        with writing(first):  # a folder that is gone: named as the file it was to hold
            free = free_bytes(folder)
        if size > free:
            raise WriteFailed(
                errno.ENOSPC,
                f"No space left on device ({format_bytes(size)} to write, {format_bytes(free)} free)",
                str(first),
            )


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_files(contents: Mapping[Path, bytes], make_folders: bool = False) -> None:
    """Write each file of ``contents`` whole, or none of them.

    Their folders are made if asked (else a missing one is an error: a run folder deleted while
    it runs is not silently made again); the bytes are checked to fit; each file goes to a hidden
    temporary sibling, is flushed to disk, and only when all are written are they renamed onto
    their paths, in the order given (so a crash between two renames leaves the earlier files new
    and the later ones as they were, each whole). On any failure the temporaries and the folders
    made here are removed and :class:`CannotWrite` (exit 2) or :class:`WriteFailed` (exit 1)
    names the file.

    Args:
        contents: path -> the file's bytes.
        make_folders: make the folders of the paths, and their parents, when missing.
    """
    paths = [Path(p) for p in contents]
    data = dict(zip(paths, contents.values(), strict=True))
    made: list[Path] = []
    tmps = {path: temporary(path) for path in paths}
    try:
        for folder in dict.fromkeys(p.parent for p in paths) if make_folders else ():
            made += make_folder(folder)
        _check_space(data)
        for path, tmp in tmps.items():
            with writing(path):
                with open(tmp, "wb") as f:
                    f.write(data[path])
                _fsync(tmp)
        for path, tmp in tmps.items():
            with writing(path):
                os.replace(tmp, path)
    except BaseException:
        for tmp in tmps.values():
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
        for folder in made:  # deepest first; one that holds something else now stays
            try:
                folder.rmdir()
            except OSError:
                break
        raise


def write_file(path: Path, data: bytes, make_folders: bool = False) -> None:
    """Write ``data`` to ``path`` whole or not at all (:func:`write_files`)."""
    write_files({Path(path): data}, make_folders)
