"""A run's frozen tensors, stored once in its folder.

The tensors frozen in every phase of a run's schedule (and the buffers of BatchNorm pinned
throughout) are bitwise the same in every file the run writes. With ``train.save: full``,
``model.pt`` holds them as any full save does, but ``best.pt`` and ``checkpoint.pt`` hold only
the other tensors and a *reference*: the names of the frozen ones and a SHA-256 over them. The
tensors themselves are in ``frozen.pt``, written when the run starts (``best.pt`` and
``checkpoint.pt`` exist before ``model.pt`` does, and an interrupted run never gets one) and
deleted once ``model.pt`` holds them. A reference is resolved from whichever of the two lies
beside the file that holds it; the hash is checked, so another run's file is refused, never
combined. A tensor that a schedule unfreezes later is not frozen throughout: it stays in every
file. Deltas against an external base (``train.save: delta``) need none of this and stay as
they are (freezetune.record.checkpoint).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from freezetune.config import ConfigError
from freezetune.record.integrity import ledger_tensors, state_hash

__all__ = ["FROZEN_FILE", "SharedFrozen", "is_shared", "resolve_shared"]

FROZEN_FILE = "frozen.pt"  # the run's frozen tensors until model.pt holds them
SHARED_FORMAT = "freezetune-shared/1"  # best.pt / checkpoint.pt weights: the rest plus a reference
STORE_FORMAT = "freezetune-frozen/1"  # frozen.pt
# Where a reference is looked up, beside the file that holds it: the store while the run is
# unfinished, model.pt (a full save, every tensor) once it has finished.
SOURCES = (FROZEN_FILE, "model.pt")


@dataclass(frozen=True)
class SharedFrozen:
    """The tensors a run shares between its files: their state keys and the hash over their bytes."""

    keys: tuple[str, ...]  # sorted; empty when nothing stays frozen throughout (a full fine-tune)
    hash: str

    @classmethod
    def of(
        cls, model: nn.Module, frozen: Iterable[str], pinned: Iterable[str], known: Mapping[str, str] | None = None
    ) -> SharedFrozen:
        """The ``frozen`` parameters and the buffers of the ``pinned`` BatchNorm modules of ``model``,
        as they are stored now (``freeze.frozen_dtype`` included): pass the sets that hold in every
        phase of the run, so that the bytes hashed now are the bytes of every later save.
        ``known``: digests already taken of these tensors as stored (the run's ledger), used
        rather than hashed again."""
        state = model.state_dict()
        keys = tuple(sorted(k for k in ledger_tensors(model, frozen, pinned) if k in state))  # persistent ones
        return cls(keys, state_hash({k: state[k] for k in keys}, known))

    def store(self, model: nn.Module) -> dict[str, Any]:
        """What ``frozen.pt`` holds: the shared tensors and their hash."""
        state = model.state_dict()
        return {"format": STORE_FORMAT, "hash": self.hash, "tensors": {k: state[k] for k in self.keys}}

    def payload(self, model: nn.Module) -> dict[str, Any]:
        """``{"shared": ...}``: every tensor but the shared ones, and the reference to those;
        ``{"model": state_dict}`` when nothing is shared."""
        state = model.state_dict()
        if not self.keys:
            return {"model": state}
        shared = set(self.keys)
        return {
            "shared": {
                "format": SHARED_FORMAT,
                "tensors": {k: t for k, t in state.items() if k not in shared},
                "frozen": {"keys": list(self.keys), "hash": self.hash, "files": list(SOURCES)},
                "order": list(state),  # the state_dict's own key order, restored on loading
            }
        }


def is_shared(obj: Any) -> bool:
    """Whether a loaded checkpoint refers to its run's frozen tensors rather than holding them."""
    return (
        isinstance(obj, dict) and isinstance(obj.get("shared"), dict) and obj["shared"].get("format") == SHARED_FORMAT
    )


def _tensors_in(obj: Any) -> dict[str, torch.Tensor]:
    """The tensors a candidate source holds: a store's, or a full save's state_dict."""
    if isinstance(obj, dict) and obj.get("format") == STORE_FORMAT and isinstance(obj.get("tensors"), dict):
        return obj["tensors"]
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        return obj["model"]
    return {}


def resolve_shared(obj: dict[str, Any], path: Path, what: str, read: Callable[[Path, str], Any]) -> dict[str, Any]:
    """``obj`` (read from ``path``) with ``"model"``: the whole state_dict, its shared tensors
    taken from ``frozen.pt`` or ``model.pt`` beside ``path`` (read with ``read``), their hash checked.

    Raises:
        ConfigError: neither file is there, or neither holds the tensors ``obj`` was saved with.
    """
    ref = obj["shared"]["frozen"]
    keys, want = list(ref["keys"]), ref["hash"]
    folder = path.parent
    tried = []
    for name in ref.get("files", SOURCES):
        source = folder / name
        if not source.is_file() or source.resolve() == path.resolve():
            continue
        held = _tensors_in(read(source, what))
        found = {k: held[k] for k in keys if k in held}
        if len(found) == len(keys) and state_hash(found) == want:
            state = {**found, **obj["shared"]["tensors"]}
            order = obj["shared"].get("order") or list(state)
            rest = {k: v for k, v in obj.items() if k != "shared"}
            return {**rest, "model": {k: state[k] for k in order}}
        tried.append(source)
    kept = (
        f"{path} holds only the tensors its run could change: the {len(keys)} frozen throughout the run are kept "
        f"once, in {FROZEN_FILE} while it runs and in model.pt once it finished"
    )
    if not tried:
        raise ConfigError(
            [
                f"{what}: {kept}, and neither is in {folder}. HINT: put the run's {FROZEN_FILE} or model.pt back "
                f"beside {path.name}: copy or move a run folder whole, not file by file"
            ]
        )
    raise ConfigError(
        [
            f"{what}: {kept}, but {' and '.join(str(t) for t in tried)} {'does' if len(tried) == 1 else 'do'} not hold "
            f"the ones {path.name} was saved "
            f"with (hash {want[:12]}): another run's file, or changed since. HINT: put back the model.pt (or "
            f"{FROZEN_FILE}) that this run wrote"
        ]
    )
