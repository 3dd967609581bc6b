"""freezetune: explicit, verified parameter freezing for fine-tuning torchvision models."""

from freezetune.config import Config, ConfigError, load_config
from freezetune.freezing import FreezeError, FreezePlan, build_plan, describe, plan_from_config

__all__ = ["Config", "ConfigError", "FreezeError", "FreezePlan", "build_plan", "describe", "load_config", "plan_from_config"]
__version__ = "0.1.0"
