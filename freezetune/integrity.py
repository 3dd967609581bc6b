"""Proof that frozen means frozen: fingerprints of every tensor the plan promises
not to change (frozen parameters and the buffers of BatchNorm kept in eval)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterable

import torch
import torch.nn as nn

from freezetune.freezing import FreezePlan

__all__ = ["FrozenCheck", "fingerprint", "fixed_tensors", "protected_tensors", "tensor_bytes", "tensor_digest", "verify_frozen"]


def tensor_bytes(t: torch.Tensor) -> bytes:
    """A tensor's exact bytes, on the CPU, in row-major order."""
    return t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def tensor_digest(t: torch.Tensor) -> str:
    """SHA-256 of the exact bytes (dtype and shape included): bitwise, not allclose."""
    h = hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(tensor_bytes(t))
    return h.hexdigest()


def fixed_tensors(model: nn.Module, frozen: Iterable[str], pinned: Iterable[str]) -> dict[str, torch.Tensor]:
    """The named ``frozen`` parameters, plus every buffer (running stats, counters) of the
    ``pinned`` BatchNorm modules: the tensors training must leave bitwise unchanged."""
    frozen, pinned = set(frozen), set(pinned)
    out = {n: p for n, p in model.named_parameters() if n in frozen}
    for name, module in model.named_modules():
        if name in pinned:
            for bname, buf in module.named_buffers(recurse=False):
                out[f"{name}.{bname}" if name else bname] = buf
    return out


def protected_tensors(model: nn.Module, plan: FreezePlan) -> dict[str, torch.Tensor]:
    """What ``plan`` promises not to change: its frozen parameters and its pinned BatchNorm's buffers."""
    return fixed_tensors(model, plan.frozen, plan.bn_eval)


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
