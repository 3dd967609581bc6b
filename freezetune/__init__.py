"""freezetune: explicit, verified parameter freezing for fine-tuning torchvision models.

Subpackages by role, lower never importing higher (docs/architecture.md):
utils < config < plan < measure < record < data, models < train < report < apps < cli.
The names below are the ones most scripts need; each subpackage exports its own."""

from freezetune.config import Config, ConfigError, load_config
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
