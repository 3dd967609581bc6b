"""The configs that ship with freezetune: the repository's ``configs/``, installed
inside the package as ``freezetune/configs/`` (pyproject.toml maps one onto the
other), so the demo and the benchmark find them from any working directory."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from freezetune.config import ConfigError

__all__ = ["shipped_config", "shipped_configs_dir"]


def shipped_configs_dir() -> Path:
    """The folder holding the shipped configs (``fmnist/``, ``bench/``, ``examples/``)."""
    spec = importlib.util.find_spec("freezetune.configs")
    for location in (spec.submodule_search_locations or []) if spec else []:
        if (Path(location) / "fmnist").is_dir():
            return Path(location)
    raise ConfigError(
        [
            "the shipped configs (freezetune/configs/fmnist/*.yaml) are not installed. HINT: reinstall freezetune "
            "from its repository (pip install /path/to/freezetune), or pass your own --config files"
        ]
    )


def shipped_config(name: str) -> Path:
    """A shipped config by its path under ``configs/``, e.g. ``fmnist/full.yaml``."""
    path = shipped_configs_dir() / name
    if not path.is_file():
        raise ConfigError([f"no shipped config {name} in {path.parent}"])
    return path
