"""Freezing plans: rules and presets resolved against a model's names into a
:class:`FreezePlan`, schedules of plans over epochs, per-parameter learning-rate
settings, and the one small step that applies a plan to a live model.

Everything but :mod:`freezetune.plan.apply` works on names only (a
:class:`ModelTree`) and is tested without training."""

from freezetune.plan.apply import (
    NORM_TYPES,
    apply_plan,
    is_pinned_eval,
    norm_parameters,
    pin_eval,
    set_dtype,
    stored_dtypes,
    trainable_parameters,
    unpin_eval,
)
from freezetune.plan.groups import Setting, assign_settings, stage_depths
from freezetune.plan.rules import (
    FreezeError,
    FreezePlan,
    ModelTree,
    ModuleInfo,
    ParamDecision,
    build_plan,
    describe,
    find_head,
    match_rule,
    plan_from_config,
    preset_rules,
    stage_of,
    suggest_names,
)
from freezetune.plan.schedule import Event, Phase, Schedule, build_schedule

__all__ = [
    "NORM_TYPES",
    "Event",
    "FreezeError",
    "FreezePlan",
    "ModelTree",
    "ModuleInfo",
    "ParamDecision",
    "Phase",
    "Schedule",
    "Setting",
    "apply_plan",
    "assign_settings",
    "build_plan",
    "build_schedule",
    "describe",
    "find_head",
    "is_pinned_eval",
    "match_rule",
    "norm_parameters",
    "pin_eval",
    "plan_from_config",
    "preset_rules",
    "set_dtype",
    "stage_depths",
    "stage_of",
    "stored_dtypes",
    "suggest_names",
    "trainable_parameters",
    "unpin_eval",
]
