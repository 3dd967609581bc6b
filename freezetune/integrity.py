"""Proof that frozen means frozen: fingerprints of every tensor the plan promises
not to change (frozen parameters and the buffers of BatchNorm kept in eval)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
import torch.nn as nn

from freezetune.freezing import FreezePlan

__all__ = ["FrozenCheck", "fingerprint", "protected_tensors", "tensor_digest", "verify_frozen"]


def tensor_digest(t: torch.Tensor) -> str:
    """SHA-256 of the exact bytes (dtype and shape included): bitwise, not allclose."""
    data = t.detach().to("cpu").contiguous()
    h = hashlib.sha256(f"{data.dtype}{tuple(data.shape)}".encode())
    h.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def protected_tensors(model: nn.Module, plan: FreezePlan) -> dict[str, torch.Tensor]:
    """Frozen parameters, plus every buffer (running stats, counters) of pinned BatchNorm."""
    frozen = set(plan.frozen)
    out = {n: p for n, p in model.named_parameters() if n in frozen}
    pinned = set(plan.bn_eval)
    for name, module in model.named_modules():
        if name in pinned:
            for bname, buf in module.named_buffers(recurse=False):
                out[f"{name}.{bname}"] = buf
    return out


def fingerprint(model: nn.Module, plan: FreezePlan) -> dict[str, str]:
    return {n: tensor_digest(t) for n, t in protected_tensors(model, plan).items()}


@dataclass
class FrozenCheck:
    unchanged: bool
    checked: int  # tensors compared
    changed: list[str]  # names whose bytes differ
    grads_none: bool  # every frozen parameter still has .grad None

    def to_json(self) -> dict:
        return {"unchanged": self.unchanged, "checked": self.checked, "changed": self.changed, "grads_none": self.grads_none}


def verify_frozen(model: nn.Module, plan: FreezePlan, before: dict[str, str]) -> FrozenCheck:
    after = fingerprint(model, plan)
    changed = sorted(n for n in before if after.get(n) != before[n])
    frozen = set(plan.frozen)
    grads_none = all(p.grad is None for n, p in model.named_parameters() if n in frozen)
    return FrozenCheck(not changed, len(before), changed, grads_none)
