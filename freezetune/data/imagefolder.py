"""A folder of the user's own images (``root/train/CLASS/*.png``, ``root/val/CLASS/*``),
checked before a run starts: the folders exist, train and val have the same classes,
every class has images, and every image decodes.

Each image is decoded once up front, so a truncated PNG or a text file named
``.jpg`` stops the run before its folder is created (``data.on_bad_image: error``,
the default, naming the file), or is left out and listed in the run record
(``data.on_bad_image: skip``). Greyscale images of 16 bits per pixel are scaled to
8 bits (value / 257, which maps 0..65535 onto 0..255 exactly at both ends), where
PIL's own conversion would clip them."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image
from torchvision import datasets

from freezetune.config import ConfigError

__all__ = ["IMAGE_EXTENSIONS", "checked_image_folder", "folder_classes", "load_image"]

IMAGE_EXTENSIONS = datasets.folder.IMG_EXTENSIONS  # what ImageFolder reads: .jpg, .png, .webp, ...

log = logging.getLogger(__name__)

_WIDE_GREY = ("I;16", "I;16B", "I;16L", "I;16N", "I")  # 16 bits a pixel (PIL opens 16-bit PNGs as these)


def load_image(path: str) -> Image.Image:
    """The image at ``path`` as 8-bit RGB; 16-bit greyscale is scaled, not clipped."""
    with open(path, "rb") as f:
        img = Image.open(f)
        img.load()  # decode now: a truncated file fails here, not in the middle of an epoch
    if img.mode == "I" and img.format != "PNG":
        raise ValueError("32-bit integer images are not supported: save them as 8- or 16-bit PNG")
    if img.mode in _WIDE_GREY:
        values = np.asarray(img, dtype=np.float64)
        img = Image.fromarray(np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8), mode="L")
    elif img.mode == "F":
        raise ValueError("32-bit float images are not supported: save them as 8- or 16-bit PNG")
    return img.convert("RGB")


def folder_classes(root: Path) -> list[str]:
    """The class folders of ``root`` (sorted, as ImageFolder numbers them); ConfigError if none."""
    if not root.is_dir():
        raise ConfigError(
            [f"data.root: imagefolder needs the folders {root.parent}/train and {root.parent}/val; {root} is not one"]
        )
    classes = sorted(e.name for e in root.iterdir() if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise ConfigError([f"data.root: {root} has no class folders (expected {root}/CLASS/image.png)"])
    return classes


def checked_image_folder(
    root: Path, transform: Callable, on_bad_image: str, decode: bool = True, only: set[str] | None = None
) -> tuple[datasets.ImageFolder, list[dict[str, str]]]:
    """An ImageFolder over ``root`` whose every image decodes; returns it and the files left out.

    Args:
        root: ``data.root/train`` or ``data.root/val``.
        transform: applied to each loaded image.
        on_bad_image: ``error`` (ConfigError naming the files) or ``skip`` (leave them out).
        decode: False skips decoding each image (counting samples only).
        only: the class folders the run uses (data.classes); None: all. Images of other
            classes are neither decoded nor checked.
    """
    folder_classes(root)
    try:
        ds = datasets.ImageFolder(str(root), transform=transform, loader=load_image)
    except FileNotFoundError as exc:  # a class folder with no file of an image extension
        raise ConfigError(
            [f"data.root: {root}: {exc} HINT: put images in each class folder, or remove the empty ones"]
        ) from None
    start = time.perf_counter()
    bad = []
    wanted = {i for i, c in enumerate(ds.classes) if only is None or c in only}
    checked = [path for path, target in ds.samples if target in wanted] if decode else []
    for path in checked:
        try:
            load_image(path)
        except Exception as exc:  # PIL raises several kinds for files that are no (whole) image
            bad.append({"path": path, "reason": f"{type(exc).__name__}: {exc}"[:200]})
    if checked:  # not when nothing was decoded (counting samples only: plan, compare's checks before training)
        log.info("checked %d images in %s in %.1fs", len(checked), root, time.perf_counter() - start)
    if bad and on_bad_image == "error":
        shown = "; ".join(f"{b['path']} ({b['reason']})" for b in bad[:3])
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise ConfigError(
            [
                f"data.root: {len(bad)} file(s) in {root} cannot be read as images: {shown}{more}. "
                "HINT: remove or replace them, or set data.on_bad_image: skip to leave them out (they are then "
                "listed in summary.json)"
            ]
        )
    if bad:
        skipped = {b["path"] for b in bad}
        ds.samples = [s for s in ds.samples if s[0] not in skipped]
        ds.imgs, ds.targets = ds.samples, [t for _, t in ds.samples]
        log.warning("left out %d unreadable image(s) in %s (data.on_bad_image: skip)", len(bad), root)
    empty = [c for i, c in enumerate(ds.classes) if i in wanted and i not in set(ds.targets)]
    if empty:
        raise ConfigError([f"data.root: {root}: class folder(s) {', '.join(empty)} hold no readable image"])
    return ds, bad
