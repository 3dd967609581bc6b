"""The checks of a config that need the dataset: its class names and count, and the folders
an imagefolder reads (freezetune.checks runs them with the config's own checks, so that a
missing folder is reported with every other problem, before anything is built)."""

from __future__ import annotations

from pathlib import Path

from freezetune.config import Config, ConfigError
from freezetune.data.fashion_mnist import FASHION_MNIST_CLASSES, name_key
from freezetune.data.loaders import class_indices

__all__ = ["data_problems"]


def data_problems(cfg: Config) -> list[str]:
    """Every problem of ``cfg.data`` against its dataset, one line each (empty: none)."""
    data = cfg.data
    classes = data.classes if isinstance(data.classes, list) else []
    ints = all(isinstance(c, int) and not isinstance(c, bool) for c in classes)
    names = not ints and all(isinstance(c, str) for c in classes)
    problems = []
    if ints and data.dataset == "fashion_mnist" and any(c > 9 for c in classes):
        problems.append(f"data.classes: {classes}: Fashion-MNIST has classes 0..9")
    if names and data.dataset == "fake":
        problems.append(f"data.classes: {classes}: fake data has no class names; give indices, e.g. [0, 1]")
    if names and data.dataset == "fashion_mnist":
        known = {name_key(c) for c in FASHION_MNIST_CLASSES}
        unknown = [c for c in classes if name_key(c) not in known]
        if unknown:
            problems.append(
                f"data.classes: {unknown} not among Fashion-MNIST's classes ({', '.join(FASHION_MNIST_CLASSES)})"
            )
    if data.dataset == "imagefolder" and isinstance(data.root, str):
        problems.extend(_folder_problems(cfg, names))
    return problems


def _folder_problems(cfg: Config, names: bool) -> list[str]:
    """The train and val folders exist, and the class names data.classes gives are among train's."""
    root = Path(cfg.data.root).expanduser()
    missing = [str(root / s) for s in ("train", "val") if not (root / s).is_dir()]
    if missing:  # the message the loader gives (freezetune.data.loaders), now before anything is built
        return [f"data.root: imagefolder needs the folders {', '.join(missing)}"]
    if not names:
        return []
    try:
        class_indices(cfg.data)
    except ConfigError as exc:
        return exc.problems
    return []
