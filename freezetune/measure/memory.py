"""Memory accounting, exact where PyTorch lets us count: bytes of parameters,
gradients, optimizer state and tensors saved for backward, plus the process peak.

Every count deduplicates by storage, so tied weights and views are counted once."""

from __future__ import annotations

import resource
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn as nn

__all__ = [
    "SavedBytes",
    "grad_bytes",
    "optimizer_state_bytes",
    "param_bytes",
    "param_bytes_by_dtype",
    "peak_memory",
    "reset_peak_memory",
    "storage_bytes",
    "count_saved_tensors",
]


def _storage_key(t: torch.Tensor) -> tuple[str, int]:
    return (str(t.device), t.untyped_storage().data_ptr())


def storage_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind ``tensors``."""
    seen: dict[tuple[str, int], int] = {}
    for t in tensors:
        seen.setdefault(_storage_key(t), t.untyped_storage().nbytes())
    return sum(seen.values())


def param_bytes(model: nn.Module) -> tuple[int, int]:
    """(trainable, frozen) parameter bytes."""
    params = list(model.parameters())
    return (
        storage_bytes(p for p in params if p.requires_grad),
        storage_bytes(p for p in params if not p.requires_grad),
    )


def param_bytes_by_dtype(model: nn.Module) -> dict[str, int]:
    """Parameter bytes per dtype (``{"float32": ..., "bfloat16": ...}``, dtypes in first-seen
    order): what ``freeze.frozen_dtype`` moves from one to the other."""
    by: dict[str, list[torch.Tensor]] = {}
    for p in model.parameters():
        by.setdefault(str(p.dtype).removeprefix("torch."), []).append(p)
    return {dtype: storage_bytes(ps) for dtype, ps in by.items()}


def grad_bytes(model: nn.Module) -> int:
    """Bytes held by ``.grad`` tensors right now (call it after backward)."""
    return storage_bytes(p.grad for p in model.parameters() if p.grad is not None)


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of every tensor in ``optimizer.state`` (momentum buffers, Adam moments and steps)."""
    return storage_bytes(v for state in optimizer.state.values() for v in state.values() if isinstance(v, torch.Tensor))


@dataclass
class SavedBytes:
    """What autograd kept for backward during one step."""

    total: int = 0  # distinct storages
    activations: int = 0  # of which not parameters: the memory freezing can save
    tensors: int = 0  # pack calls
    _seen: dict = field(default_factory=dict, repr=False)

    def to_json(self) -> dict:
        """As summary.json's ``memory`` keys."""
        return {"saved_bytes": self.total, "saved_activation_bytes": self.activations, "saved_tensors": self.tensors}


@contextmanager
def count_saved_tensors(model: nn.Module | None = None) -> Iterator[SavedBytes]:
    """Count the bytes autograd saves for backward inside the block.

    Uses ``torch.autograd.graph.saved_tensors_hooks``: the pack hook sees every
    tensor an operation saves and returns it unchanged, so nothing is copied."""
    params = {_storage_key(p) for p in model.parameters()} if model is not None else set()
    out = SavedBytes()

    def pack(t: torch.Tensor) -> torch.Tensor:
        out.tensors += 1
        key = _storage_key(t)
        if key not in out._seen:
            n = t.untyped_storage().nbytes()
            out._seen[key] = n
            out.total += n
            if key not in params:
                out.activations += n
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield out


_CLEAR_REFS = "/proc/self/clear_refs"
_STATUS = "/proc/self/status"


def reset_peak_memory(device: torch.device) -> None:
    """Start a fresh peak: CUDA's allocator counter, or on Linux the process's
    high-water mark (VmHWM, reset by writing 5 to /proc/self/clear_refs), so that
    several runs in one process each get their own peak."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        with open(_CLEAR_REFS, "w") as f:
            f.write("5")
    except OSError:
        pass  # not Linux, or not allowed: peak_memory falls back to the whole process's peak


def _vm_hwm() -> int | None:
    try:
        with open(_STATUS) as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def peak_memory(device: torch.device) -> tuple[int, str]:
    """(bytes, what was measured): CUDA's allocator peak on GPU; on CPU the peak
    resident set size since the last reset (Linux), else since the process started."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), "cuda_max_memory_allocated"
    hwm = _vm_hwm()
    if hwm is not None:
        return hwm, "cpu_peak_rss"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return (rss if sys.platform == "darwin" else rss * 1024), "cpu_peak_rss_process"
