"""Predicting with a finished run's model: which files to read, batches of them through
the model under ``torch.inference_mode``, softmax probabilities out.

A file that does not decode (truncated, a text file named ``.png``) is left out of its
batch and returned with the reason; the other files of the batch are predicted as usual.
``freezetune predict`` and ``freezetune evaluate`` both go through :func:`_run_batches`."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
from PIL import UnidentifiedImageError
from torch.utils.data import Dataset

from freezetune.config import ConfigError
from freezetune.data import IMAGE_EXTENSIONS, load_image
from freezetune.infer.runs import RunModel

__all__ = [
    "LabelledPredictions",
    "Prediction",
    "find_images",
    "labelled_images",
    "predict_dataset",
    "predict_files",
    "top_k",
]

_REASON_CHARS = 200  # PIL's messages can quote whole file headers


@dataclass
class Prediction:
    """The model's output for one file: ``probs`` (softmax over the model's classes, in
    output order), or ``error`` saying why the file could not be read."""

    path: str
    probs: torch.Tensor | None = None
    error: str | None = None


@dataclass
class LabelledPredictions:
    """Predictions for labelled samples: row ``i`` of ``probs`` belongs to ``targets[i]``."""

    probs: torch.Tensor  # (n, k) float32
    targets: torch.Tensor  # (n,) int64, model output order
    skipped: list[dict[str, str]] = field(default_factory=list)  # {"path", "reason"} of each unreadable sample


def _has_image_extension(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)  # ImageFolder's own test


def _images_under(folder: Path) -> list[Path]:
    """The image files below ``folder``, at any depth, sorted by path."""
    found = []
    # followlinks: ImageFolder follows symlinked folders too; a folder read by training reads the same here.
    for parent, _, names in os.walk(folder, followlinks=True):
        found += [Path(parent) / n for n in names if _has_image_extension(n)]
    return sorted(found, key=str)


def _extensions() -> str:
    return ", ".join(IMAGE_EXTENSIONS)


def find_images(paths: Sequence[str | Path]) -> list[Path]:
    """The files to predict: each file as given, and the image files below each folder.

    A file named on the command line is tried whatever its extension; in folders only
    names ending in :data:`freezetune.data.IMAGE_EXTENSIONS` are taken (what ImageFolder
    reads). A file found twice is listed once.

    Raises:
        ConfigError: no paths, a path that does not exist, or a folder with no image
            (every problem at once).
    """
    if not paths:
        raise ConfigError(
            ["no images given: name image files or folders after the options (predict --run R a.png dir/)"]
        )
    problems, found, seen = [], [], set()
    for path in map(Path, paths):
        if path.is_dir():
            files = _images_under(path)
            if not files:
                problems.append(f"{path}: a folder with no image files (read: {_extensions()})")
        elif path.exists():
            files = [path]
        else:
            problems.append(f"{path}: no such file or folder")
            files = []
        for f in files:
            if f.resolve() not in seen:
                seen.add(f.resolve())
                found.append(f)
    if problems:
        raise ConfigError(problems)
    return found


def labelled_images(root: str | Path, classes: list[str]) -> tuple[list[tuple[Path, int]], list[str], list[str]]:
    """The images of an ImageFolder-layout folder (``root/CLASS/*.png``) with their labels
    in the model's output order, matched by class name; also the class folders with no image,
    and the class folders left out because the model does not know them.

    A model trained on some classes of a folder (``data.classes``) is evaluated on those: the
    other folders are left out, and said so. A folder that differs from a class only in case, or
    a ``train``/``val`` level, is a mistake and refused.

    Args:
        root: the folder; its sub-folders are the classes (hidden ones are ignored).
        classes: the model's class names.

    Raises:
        ConfigError: ``root`` is not a folder, has no class folders, none the model knows, a
            folder that is a class but for its case, or no image at all.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        what = "a file, not a folder" if root.exists() else "no such folder"
        raise ConfigError([f"--data: {root}: {what} (expected {root}/CLASS/image.png)"])
    folders = sorted(e.name for e in root.iterdir() if e.is_dir() and not e.name.startswith("."))
    if not folders:
        raise ConfigError([f"--data: {root} has no class folders (expected {root}/CLASS/image.png)"])
    unknown = [f for f in folders if f not in classes]
    lower = {c.lower(): c for c in classes}
    near = [f"{f!r} is {lower[f.lower()]!r}" for f in unknown if f.lower() in lower]
    if unknown and (near or len(unknown) == len(folders)):
        hint = f" (case matters: {', '.join(near)})" if near else ""
        if not near and {"train", "val"} & set(unknown):
            hint = f". HINT: point --data at one split, e.g. --data {root / 'val'}"
        raise ConfigError(
            [
                f"--data: class folder(s) {', '.join(unknown)} of {root} are not classes of the model, "
                f"which has {len(classes)}: {', '.join(classes)}{hint}"
            ]
        )
    samples, empty = [], []
    for name in (f for f in folders if f in classes):
        files = _images_under(root / name)
        samples += [(f, classes.index(name)) for f in files]
        if not files:
            empty.append(name)
    if not samples:
        raise ConfigError([f"--data: {root}: its class folders hold no image files (read: {_extensions()})"])
    return samples, empty, unknown


def _reason(exc: Exception) -> str:
    """Why a file could not be used, in one short line."""
    if isinstance(exc, UnidentifiedImageError):
        # PIL's message only repeats the path, as the repr of a file object.
        return "UnidentifiedImageError: not an image format PIL can read"
    return f"{type(exc).__name__}: {exc}"[:_REASON_CHARS]


def _run_batches(
    model: nn.Module,
    n: int,
    load: Callable[[int], torch.Tensor],
    batch_size: int,
    device: torch.device,
    on_error: Callable[[int, Exception], None],
) -> tuple[list[int], torch.Tensor]:
    """Softmax outputs of the samples ``0..n-1`` that load; returns their indices and probabilities.

    ``load(i)`` gives sample ``i`` as a preprocessed ``(3, H, W)`` tensor; a sample whose
    ``load`` raises goes to ``on_error`` and is left out, not the batch around it.
    """
    model.to(device).eval()
    kept: list[int] = []
    outputs: list[torch.Tensor] = []
    batch: list[torch.Tensor] = []
    batch_ids: list[int] = []

    def flush() -> None:
        if batch:
            with torch.inference_mode():
                logits = model(torch.stack(batch).to(device))
            # float32 softmax: a half-precision model's probabilities would not sum to 1 closely.
            outputs.append(torch.softmax(logits.float(), dim=1).cpu())
            kept.extend(batch_ids)
            batch.clear()
            batch_ids.clear()

    for i in range(n):
        try:
            x = load(i)
        except Exception as exc:  # PIL raises several kinds for files that are no (whole) image
            on_error(i, exc)
            continue
        batch.append(x)
        batch_ids.append(i)
        if len(batch) == batch_size:
            flush()
    flush()
    return kept, torch.cat(outputs) if outputs else torch.empty(0, 0)


def predict_files(
    run: RunModel, paths: Sequence[str | Path], batch_size: int = 32, device: str | torch.device = "cpu"
) -> list[Prediction]:
    """The model's class probabilities for each file, in the order given.

    Each file is read with :func:`freezetune.data.load_image` and preprocessed as the run
    was evaluated in training (:meth:`RunModel.transform`).

    Returns:
        One :class:`Prediction` per path: ``probs`` set, or ``error`` for a file that
        could not be read or preprocessed.
    """
    transform = run.transform()
    results = [Prediction(str(p)) for p in paths]

    def on_error(i: int, exc: Exception) -> None:
        results[i].error = _reason(exc)

    kept, probs = _run_batches(
        run.model,
        len(results),
        lambda i: transform(load_image(results[i].path)),
        batch_size,
        torch.device(device),
        on_error,
    )
    for row, i in enumerate(kept):
        results[i].probs = probs[row]
    return results


def _sample_path(ds: Dataset, i: int) -> str:
    """The file behind sample ``i`` of an ImageFolder, or of a subset of one (freezetune.data
    wraps a class subset as ``base`` + ``indices``); ``sample i`` for other datasets."""
    if hasattr(ds, "samples"):
        return str(ds.samples[i][0])
    if hasattr(ds, "base") and hasattr(ds, "indices"):
        return _sample_path(ds.base, ds.indices[i])
    return f"sample {i}"


def predict_dataset(
    model: nn.Module, dataset: Dataset, batch_size: int = 32, device: str | torch.device = "cpu"
) -> LabelledPredictions:
    """The model's class probabilities for every ``(image, label)`` sample of ``dataset``
    (a run's validation split), sample by sample so that an unreadable file is skipped
    and listed rather than stopping the whole evaluation."""
    targets: dict[int, int] = {}
    skipped: list[dict[str, str]] = []

    def load(i: int) -> torch.Tensor:
        x, y = dataset[i]
        targets[i] = int(y)
        return x

    def on_error(i: int, exc: Exception) -> None:
        skipped.append({"path": _sample_path(dataset, i), "reason": _reason(exc)})

    kept, probs = _run_batches(model, len(dataset), load, batch_size, torch.device(device), on_error)  # type: ignore[arg-type]
    return LabelledPredictions(probs, torch.tensor([targets[i] for i in kept], dtype=torch.long), skipped)


def top_k(probs: torch.Tensor, k: int, classes: list[str]) -> list[tuple[str, float]]:
    """The ``k`` most probable classes (at most all of them), most probable first."""
    values, indices = probs.topk(min(k, probs.numel()))
    return [(classes[int(i)], float(v)) for v, i in zip(values, indices)]
