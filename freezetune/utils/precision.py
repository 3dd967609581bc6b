"""Mixed precision: the dtypes of ``train.precision`` and ``freeze.frozen_dtype``, the
autocast context a step and an evaluation run under, and whether a device can run one."""

from __future__ import annotations

import contextlib

import torch

__all__ = ["DTYPES", "autocast", "dtype_of", "precision_problem"]

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def dtype_of(name: str) -> torch.dtype:
    """``fp32`` / ``bf16`` / ``fp16`` as a torch dtype."""
    return DTYPES[name]


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Autocast to ``precision`` on ``device`` (no-op for fp32). Matmuls and convolutions run
    in the low dtype, reductions and losses stay in fp32 (torch's autocast op lists)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype_of(precision))


def precision_problem(device: torch.device, precision: str) -> str | None:
    """Why ``device`` cannot train in ``precision`` (a config error's text), or None."""
    if precision == "fp32":
        return None
    if not torch.amp.is_autocast_available(device.type):
        return f"train.precision: {precision} needs autocast, which torch does not offer on {device.type}"
    if device.type == "cuda" and precision == "bf16" and not torch.cuda.is_bf16_supported():
        name = torch.cuda.get_device_name(device)
        return f"train.precision: bf16 is not supported by {name} (compute capability below 8.0). HINT: fp16"
    return None
