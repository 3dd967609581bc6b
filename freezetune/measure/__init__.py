"""Measuring what training costs: per-phase step time, evaluation speed with and
without autograd, memory by kind (parameters, gradients, optimizer state, tensors
saved for backward, process peak), and the per-module profile that predicts a
plan's cost before training."""

from freezetune.measure.device import resolve_device
from freezetune.measure.estimate import (
    Estimate,
    ModuleCost,
    ModuleProfile,
    OptimizerFactory,
    Profile,
    StepFormat,
    estimate,
    predict,
    profile_model,
    reference_copy,
)
from freezetune.measure.memory import (
    SavedBytes,
    count_saved_tensors,
    grad_bytes,
    optimizer_state_bytes,
    param_bytes,
    param_bytes_by_dtype,
    peak_memory,
    reset_peak_memory,
    storage_bytes,
)
from freezetune.measure.timing import (
    PHASES,
    PhaseMedians,
    StepClock,
    batch_speed,
    device_clock,
    eval_speed,
    medians,
    process_age_s,
)

__all__ = [
    "PHASES",
    "Estimate",
    "ModuleCost",
    "ModuleProfile",
    "OptimizerFactory",
    "PhaseMedians",
    "Profile",
    "SavedBytes",
    "StepClock",
    "StepFormat",
    "batch_speed",
    "count_saved_tensors",
    "device_clock",
    "estimate",
    "eval_speed",
    "grad_bytes",
    "medians",
    "process_age_s",
    "optimizer_state_bytes",
    "param_bytes",
    "param_bytes_by_dtype",
    "peak_memory",
    "predict",
    "profile_model",
    "reference_copy",
    "reset_peak_memory",
    "resolve_device",
    "storage_bytes",
]
