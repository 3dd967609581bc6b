"""Strict, typed configuration: the schema, loading with ``extends`` and ``key=value``
edits, the records inside it (rules, events, groups) and their validation.

The bottom layer: nothing here imports another freezetune package but utils."""

from freezetune.config.load import apply_overrides, from_dict, load_config, load_yaml_tree, to_dict
from freezetune.config.preprocess import (
    AUGMENTS,
    Preprocessing,
    dataset_defaults,
    resolve,
    resolve_data,
    weights_preprocessing,
)
from freezetune.config.records import (
    EVENT_KINDS,
    PRESETS,
    RULE_KINDS,
    EventSpec,
    GroupRule,
    Rule,
    gradual_events,
    parse_events,
    parse_param_groups,
    parse_records,
    parse_rules,
)
from freezetune.config.schema import (
    Config,
    ConfigError,
    DataConfig,
    EarlyStoppingConfig,
    FreezeConfig,
    ModelConfig,
    OptimizerConfig,
    SchedulerConfig,
    TrainConfig,
)
from freezetune.config.validate import (
    FASHION_MNIST_CLASSES,
    classification_models,
    event_problems,
    fashion_mnist_index,
    semantic_problems,
    weights_kind,
)
from freezetune.config.values import finite_number, number

__all__ = [
    "AUGMENTS",
    "FASHION_MNIST_CLASSES",
    "EarlyStoppingConfig",
    "Preprocessing",
    "dataset_defaults",
    "fashion_mnist_index",
    "resolve",
    "resolve_data",
    "weights_preprocessing",
    "EVENT_KINDS",
    "PRESETS",
    "RULE_KINDS",
    "Config",
    "ConfigError",
    "DataConfig",
    "EventSpec",
    "FreezeConfig",
    "GroupRule",
    "ModelConfig",
    "OptimizerConfig",
    "Rule",
    "SchedulerConfig",
    "TrainConfig",
    "apply_overrides",
    "classification_models",
    "event_problems",
    "finite_number",
    "from_dict",
    "gradual_events",
    "load_config",
    "load_yaml_tree",
    "number",
    "parse_events",
    "parse_param_groups",
    "parse_records",
    "parse_rules",
    "semantic_problems",
    "to_dict",
    "weights_kind",
]
