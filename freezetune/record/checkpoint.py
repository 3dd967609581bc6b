"""Checkpoints: the model as full or delta weights, and the whole training state for resume.

A *delta* stores only the tensors that may have changed (every parameter that
was ever trainable, every buffer not pinned throughout) plus where the base
weights came from and a hash of every tensor it leaves out. Frozen tensors are
bitwise unchanged by training (freezetune.record.integrity checks it), so base plus
delta is the trained model exactly; a different base is refused by the hash. Frozen
tensors stored in low precision (``freeze.frozen_dtype``) are hashed so: the delta names
their dtypes, and the base is cast the same way before it is hashed.

Everything is plain tensors and Python data, so ``torch.load(weights_only=True)``
reads it; freezetune.record.rundir writes it through a temporary file and ``os.replace``.
"""

from __future__ import annotations

import pickle
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from freezetune.config import ConfigError
from freezetune.plan import set_dtype
from freezetune.record.integrity import ledger_tensors, state_hash
from freezetune.record.shared import is_shared, resolve_shared
from freezetune.utils.errors import UserError

__all__ = [
    "MODEL_FORMAT",
    "BaseMismatch",
    "base_hash",
    "delta_keys",
    "get_rng_state",
    "is_delta",
    "load_payload",
    "model_payload",
    "read_checkpoint",
    "serialized_bytes",
    "set_rng_state",
]

DELTA_FORMAT = "freezetune-delta/1"
MODEL_FORMAT = "freezetune-model/1"  # model.pt and best.pt: the weights plus classes, preprocessing, config
# The dtypes freeze.frozen_dtype stores frozen tensors in, by the names a delta records.
_LOW = {"bfloat16": torch.bfloat16, "float16": torch.float16}


class BaseMismatch(UserError, ValueError):
    """A delta checkpoint was applied to base weights other than the ones it was trained from."""


def read_checkpoint(path: str | Path, what: str) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, with freezetune's own message when
    the file is missing, truncated, corrupt or holds more than tensors and plain data.

    A ``best.pt`` or ``checkpoint.pt`` that refers to its run's frozen tensors comes back
    whole, with ``"model"`` (freezetune.record.shared): every caller sees a full save.

    torch's message for a refused file advises ``weights_only=False``, which would run any
    code the file carries; ours never does. ``what`` names the key or option that pointed
    at the file (``resume``, ``model.weights``)."""
    obj = _load(path, what)
    return resolve_shared(obj, Path(path), what, _load) if is_shared(obj) else obj


def _load(path: str | Path, what: str) -> Any:
    if not Path(path).is_file():
        raise ConfigError([f"{what}: {path}: no such file"])
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch words every failure as "Weights only load failed"; a refused class says "Unsupported global".
        lines = [ln.strip() for ln in str(exc).splitlines() if "Unsupported global" in ln]
        if not lines:  # bytes that are no pickle at all
            raise ConfigError([_unreadable(path, what, exc)]) from None
        reason = f" ({lines[0][:160]})"
        raise ConfigError(
            [
                f"{what}: {path} holds more than tensors and plain data{reason}, so freezetune does not load it. "
                "HINT: save the weights as a state_dict (torch.save(model.state_dict(), path))"
            ]
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, IndexError, KeyError) as exc:
        raise ConfigError([_unreadable(path, what, exc)]) from None


def _unreadable(path: str | Path, what: str, exc: BaseException) -> str:
    return (
        f"{what}: {path} is not a readable torch file (truncated or corrupt: {type(exc).__name__}). "
        "HINT: use another copy of it; freezetune replaces its files only whole, so a copy it wrote is complete"
    )


class _ByteCount:
    """A write-only sink that keeps the count and drops the bytes."""

    def __init__(self) -> None:
        self.n = 0

    def write(self, data: Any) -> int:
        size = memoryview(data).nbytes
        self.n += size
        return size

    def flush(self) -> None:
        pass


def serialized_bytes(obj: Any) -> int:
    """The size ``torch.save`` would write for ``obj``, to the byte: the same stream, counted and
    dropped rather than held in memory (half the time of a BytesIO for resnet18's 47 MB, which a
    run pays after its last epoch for the train.save choice it did not write)."""
    sink = _ByteCount()
    torch.save(obj, sink)  # type: ignore[arg-type]  # torch.save needs only write and flush
    return sink.n


# --------------------------------------------------------------------------- delta


def delta_keys(model: nn.Module, frozen: set[str], pinned: set[str]) -> list[str]:
    """State keys that may differ from the base: all but frozen parameters and the
    buffers of BatchNorm modules pinned in eval."""
    fixed = ledger_tensors(model, frozen, pinned)
    return [k for k in model.state_dict() if k not in fixed]


def base_hash(
    state: dict[str, torch.Tensor], excluded: list[str] | set[str], known: Mapping[str, str] | None = None
) -> str:
    """SHA-256 over the names and bytes of every tensor of ``state`` not in ``excluded``
    (``known``: digests still true of some of them, see :func:`state_hash`)."""
    skip = set(excluded)
    return state_hash({k: t for k, t in state.items() if k not in skip}, known)


def model_payload(
    model: nn.Module,
    save: str,
    frozen: set[str],
    pinned: set[str],
    base: dict[str, Any],
    known: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """``{"model": state_dict}`` (full) or ``{"delta": ...}``; ``base`` says how to rebuild the
    base model (its model config and class count) for a delta; ``known``: digests still true of
    some of the base's tensors (the ledger's), not hashed again."""
    state = model.state_dict()
    if save == "full":
        return {"model": state}
    keys = delta_keys(model, frozen, pinned)
    left_out = [k for k in state if k not in set(keys)]
    # Tensors left out in bf16/fp16 (freeze.frozen_dtype): the base is cast so before it is hashed.
    dtypes = {k: _dtype_name(state[k].dtype) for k in left_out if state[k].dtype in _LOW.values()}
    return {
        "delta": {
            "format": DELTA_FORMAT,
            "tensors": {k: state[k] for k in keys},
            "base": {**base, "hash": base_hash(state, keys, known), "tensors": len(left_out), "dtypes": dtypes},
        }
    }


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def is_delta(obj: Any) -> bool:
    """Whether a loaded checkpoint holds a delta rather than full weights."""
    return isinstance(obj, dict) and isinstance(obj.get("delta"), dict) and obj["delta"].get("format") == DELTA_FORMAT


def load_payload(model: nn.Module, obj: dict[str, Any], where: str = "checkpoint") -> None:
    """Load a full or delta payload into ``model``, which holds the base weights for a delta."""
    if not is_delta(obj):
        model.load_state_dict(obj["model"])
        return
    delta = obj["delta"]
    state = model.state_dict()
    unknown = sorted(set(delta["tensors"]) - set(state))
    if unknown:
        raise BaseMismatch(f"{where}: the delta holds tensors this model does not have: {unknown[:5]}")
    # Stored as the trained model stored them: frozen tensors in their low precision (bitwise what
    # training kept, so the hash holds), the delta's own tensors in their saved dtype.
    recorded = delta["base"].get("dtypes", {})  # none before frozen_dtype existed
    odd = sorted({name for name in recorded.values() if name not in _LOW})
    if odd:
        raise BaseMismatch(f"{where}: the delta records base tensors in dtypes freezetune does not store: {odd}")
    wanted = {k: _LOW[name] for k, name in recorded.items() if k in state}  # a missing one: the hash tells
    wanted |= {k: t.dtype for k, t in delta["tensors"].items() if t.dtype in _LOW.values()}
    now = base_hash({k: t.to(wanted[k]) if k in wanted else t for k, t in state.items()}, list(delta["tensors"]))
    if now != delta["base"]["hash"]:
        src = delta["base"].get("model", {}).get("weights")
        raise BaseMismatch(
            f"{where} is a delta against base weights {src!r} with hash {delta['base']['hash'][:12]}, but the base "
            f"built now hashes to {now[:12]}: the base weights changed since training, so base + delta would not be "
            "the trained model. HINT: restore the original base weights file, or use a checkpoint saved with "
            "train.save: full"
        )
    for key, dtype in wanted.items():
        set_dtype(model, key, dtype)
    model.load_state_dict(delta["tensors"], strict=False)


# --------------------------------------------------------------------------- RNG


def get_rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU and CUDA generators, as weights_only-loadable data."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "python": [version, list(internal), gauss_next],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`get_rng_state` saved."""
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
