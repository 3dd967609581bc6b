"""freezetune: explicit, verified parameter freezing for fine-tuning torchvision models.

Subpackages by role, lower never importing higher (docs/architecture.md):
utils < config < plan < measure < record < data, models < checks < train, infer < report < apps < bench < cli.
The names below are the ones most scripts need; each subpackage exports its own."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from freezetune.config import Config, ConfigError, load_config

if TYPE_CHECKING:
    from freezetune.plan import FreezeError, FreezePlan, build_plan, describe, plan_from_config

__all__ = [
    "Config",
    "ConfigError",
    "FreezeError",
    "FreezePlan",
    "build_plan",
    "describe",
    "load_config",
    "plan_from_config",
]
__version__ = "0.1.0"

# The plan's names import torch (a second or more): loaded on first use, so that `import freezetune`,
# the config layer and `freezetune --help` do not pay for it.
_LAZY = dict.fromkeys(("FreezeError", "FreezePlan", "build_plan", "describe", "plan_from_config"), "freezetune.plan")


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # once: later lookups find it without this hook
        return value
    raise AttributeError(f"module 'freezetune' has no attribute {name!r}")
