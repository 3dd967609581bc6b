"""Proof that frozen means frozen: fingerprints of every tensor the plan promises
not to change (frozen parameters and the buffers of pinned BatchNorm): the ledger (docs/glossary.md)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from freezetune.plan.apply import stored_dtypes
from freezetune.plan.rules import FreezePlan

__all__ = [
    "FrozenCheck",
    "Ledger",
    "fingerprint",
    "ledger_tensors",
    "ledger_tensors_of",
    "state_hash",
    "tensor_bytes",
    "tensor_digest",
    "verify_frozen",
]


def _byte_view(t: torch.Tensor) -> np.ndarray:
    # The tensor's own memory as bytes (a copy only off the CPU or when not contiguous): hashlib
    # reads it in place, where tobytes() would first copy it (a third of a digest's time).
    return t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()


def tensor_bytes(t: torch.Tensor) -> bytes:
    """A tensor's exact bytes, on the CPU, in row-major order."""
    return _byte_view(t).tobytes()


def tensor_digest(t: torch.Tensor) -> str:
    """SHA-256 of the exact bytes (dtype and shape included): bitwise, not allclose."""
    h = hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(_byte_view(t))
    return h.hexdigest()


def state_hash(tensors: Mapping[str, torch.Tensor], known: Mapping[str, str] | None = None) -> str:
    """SHA-256 over the names and exact bytes of every tensor in ``tensors``, in name order.

    ``known``: digests (:func:`tensor_digest`) already taken of some of these tensors and still
    true of them, such as a :class:`Ledger`'s of the frozen ones: used rather than hashed again
    (a run hashes its frozen weights twice, not four times)."""
    known = known or {}
    h = hashlib.sha256()
    for key in sorted(tensors):
        h.update(f"{key}={known.get(key) or tensor_digest(tensors[key])};".encode())
    return h.hexdigest()


def ledger_tensors(model: nn.Module, frozen: Iterable[str], pinned: Iterable[str]) -> dict[str, torch.Tensor]:
    """The named ``frozen`` parameters, plus every buffer (running stats, counters) of the
    ``pinned`` BatchNorm modules: the tensors training must leave bitwise unchanged."""
    frozen, pinned = set(frozen), set(pinned)
    out = {n: p for n, p in model.named_parameters() if n in frozen}
    for name, module in model.named_modules():
        if name in pinned:
            for bname, buf in module.named_buffers(recurse=False):
                out[f"{name}.{bname}" if name else bname] = buf
    return out


def ledger_tensors_of(model: nn.Module, plan: FreezePlan) -> dict[str, torch.Tensor]:
    """What ``plan`` promises not to change: its frozen parameters and its pinned BatchNorm's buffers."""
    return ledger_tensors(model, plan.frozen, plan.pinned_bn)


def fingerprint(model: nn.Module, plan: FreezePlan) -> dict[str, str]:
    """The digest of every tensor ``plan`` protects, by name."""
    return {n: tensor_digest(t) for n, t in ledger_tensors_of(model, plan).items()}


@dataclass
class FrozenCheck:
    """The end-of-run proof: did every tensor in the ledger keep its bytes, and its ``.grad`` None?"""

    unchanged: bool
    checked: int  # tensors compared
    changed: list[str]  # names whose bytes differ
    grads_none: bool  # every frozen parameter still has .grad None

    def to_json(self) -> dict:
        """As summary.json's ``frozen_check``."""
        return {
            "unchanged": self.unchanged,
            "checked": self.checked,
            "changed": self.changed,
            "grads_none": self.grads_none,
        }


def verify_frozen(model: nn.Module, plan: FreezePlan, before: dict[str, str]) -> FrozenCheck:
    """Compare the tensors ``plan`` protects with the digests ``before`` took of them."""
    after = fingerprint(model, plan)
    changed = sorted(n for n in before if after.get(n) != before[n])
    frozen = set(plan.frozen)
    grads_none = all(p.grad is None for n, p in model.named_parameters() if n in frozen)
    return FrozenCheck(not changed, len(before), changed, grads_none)


class Ledger:
    """The digest of every tensor training must not change, taken when it became frozen.

    A schedule moves the ledger from plan to plan: tensors that become frozen are
    hashed then; tensors that an event unfreezes are checked against the digest
    from when they froze, so "unchanged until its event" is proven per tensor.

    With ``frozen_dtype`` (``freeze.frozen_dtype``) a tensor is hashed as it is *stored*
    while frozen (in bf16, say): :meth:`move_to` runs before the new plan is applied, so it
    hashes a newly frozen tensor cast as :func:`freezetune.plan.apply_plan` will cast it, and
    checks a released one before its up-cast."""

    def __init__(self, model: nn.Module, plan: FreezePlan, frozen_dtype: str | None = None) -> None:
        self.model, self.plan, self.frozen_dtype = model, plan, frozen_dtype
        self.digests = {n: tensor_digest(t) for n, t in self._as_stored(plan).items()}

    def _as_stored(self, plan: FreezePlan) -> dict[str, torch.Tensor]:
        """What ``plan`` protects, each tensor in the dtype it is stored in under ``plan``."""
        tensors = ledger_tensors_of(self.model, plan)
        if self.frozen_dtype is None:
            return tensors
        dtypes = stored_dtypes(self.model, plan, self.frozen_dtype)
        return {n: t.to(dtypes[n]) if n in dtypes else t for n, t in tensors.items()}  # no copy when equal

    def move_to(self, plan: FreezePlan) -> dict[str, bool]:
        """Follow the trainable set to ``plan``; call it before applying ``plan``.

        Returns:
            For each tensor ``plan`` no longer protects: whether it is still bitwise
            what it was when it froze.
        """
        before, after = ledger_tensors_of(self.model, self.plan), self._as_stored(plan)
        released = {n: tensor_digest(before[n]) == d for n, d in self.digests.items() if n not in after}
        # Tensors new to the ledger are hashed now; the others keep the digest from when they froze.
        self.digests = {n: self.digests.get(n) or tensor_digest(t) for n, t in after.items()}
        self.plan = plan
        return released

    def verify(self) -> FrozenCheck:
        """The end-of-run check of every tensor the current plan protects."""
        return verify_frozen(self.model, self.plan, self.digests)
