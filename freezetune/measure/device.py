"""Which device a run or a command runs on: the one place ``auto`` and a missing CUDA are
decided, for ``train.device`` and the inference commands' ``--device`` alike."""

from __future__ import annotations

import torch

from freezetune.config import ConfigError

__all__ = ["resolve_device"]


def resolve_device(name: str, setting: str = "train.device") -> torch.device:
    """``name`` (``cpu``, ``cuda``, ``cuda:N``, ``auto``) as a device; ``auto`` is CUDA when available.

    Args:
        name: the device asked for.
        setting: where it was asked for, for the error: a config key (``train.device``) or a
            command-line flag (``--device``), which the error's hint repeats.

    Raises:
        ConfigError: ``cuda`` asked for on a machine without it.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        if setting.startswith("--"):  # a flag: the hint gives the flags that work
            problem = f"{setting} cuda: torch.cuda.is_available() is False. HINT: {setting} cpu or {setting} auto"
        else:
            problem = f"{setting}: 'cuda' asked for, but torch.cuda.is_available() is False"
        raise ConfigError([problem])
    return torch.device(name)
