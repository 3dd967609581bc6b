"""What ``model.pt`` and ``best.pt`` hold, and the model part of a training state: the
weights (full, or a delta over a base that can be rebuilt), with all that predict,
evaluate and export need beside them (freezetune.infer). ``best.pt`` and a training state
refer to the run's frozen tensors, which ``frozen.pt`` keeps once (freezetune.record.shared)."""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from freezetune.config import Config, Preprocessing
from freezetune.models import merged_copy, weights_kind
from freezetune.plan import Schedule
from freezetune.plan.adapters import ADAPTER_PARTS
from freezetune.record import MODEL_FORMAT, SharedFrozen, model_payload

__all__ = ["ModelFiles"]


class ModelFiles:
    """One run's model files: ``resolved`` is the config they record, ``classes`` the name of
    each output in order."""

    def __init__(
        self,
        cfg: Config,
        model: torch.nn.Module,
        num_classes: int,
        classes: list[str],
        resolved: dict[str, Any],
        known: Callable[[], Mapping[str, str]] = dict,
    ) -> None:
        self.cfg, self.model, self.num_classes, self.classes, self.resolved = cfg, model, num_classes, classes, resolved
        # The ledger's digests of the frozen tensors (true of them while they stay frozen, which the
        # run verifies): the hashes below reuse them rather than hash the frozen weights again.
        self.known = known
        self._shared: SharedFrozen | None = None  # hashed on first use (freezetune.record.shared)

    def model_file(self, save: str, epoch: int, schedule: Schedule, shared: bool = False) -> dict[str, Any]:
        """``model.pt`` or ``best.pt``: the weights after ``epoch`` (``save``: full or delta;
        ``shared``: see :meth:`payload`), the resolved config, the class names in output order
        and the preprocessing."""
        return self._described(self.payload(save, epoch, schedule, shared), self.resolved, epoch)

    def merged_file(self, epoch: int) -> dict[str, Any]:
        """``merged.pt`` of a run with adapters: a full save of the model with every adapter folded
        into its layer's weight (freezetune.models.merged_copy), recorded with the config less its
        adapters, so that it loads as the plain architecture (its adapters in ``merged_from``)."""
        resolved = copy.deepcopy(self.resolved)
        adapters = resolved["freeze"].pop("adapters")
        merged = {"model": merged_copy(self.model).state_dict(), "merged_from": adapters}
        return self._described(merged, resolved, epoch)

    def trained_modules(self, delta: dict[str, Any]) -> list[str]:
        """The modules whose tensors a ``delta`` payload holds, less the adapters: what a peft user
        needs beside them (``modules_to_save``: the head, and whatever else trained)."""
        names = [n for n, _ in self.model.named_modules() if n]
        owners = []
        for key in delta["delta"]["tensors"]:
            if any(f".{part}." in key for part in ADAPTER_PARTS):
                continue
            owner = max((n for n in names if key.startswith(n + ".")), key=len)
            if owner not in owners:
                owners.append(owner)
        return owners

    def _described(self, payload: dict[str, Any], resolved: dict[str, Any], epoch: int) -> dict[str, Any]:
        return {
            **payload,
            "format": MODEL_FORMAT,
            "config": resolved,
            "epoch": epoch,
            "num_classes": self.num_classes,
            "classes": self.classes,
            "preprocessing": Preprocessing.of(self.cfg.data).to_json(),
            # Relative paths of the config (data.root) are relative to this folder: evaluate and
            # export, run from elsewhere, find the run's data through it.
            "cwd": os.getcwd(),
        }

    def payload(self, save: str, epoch: int, schedule: Schedule, shared: bool = False) -> dict[str, Any]:
        """The model as ``save`` (full or delta) stores it after ``epoch``: a delta leaves out
        what stayed frozen (and pinned) in every phase of ``schedule`` so far, and records how
        to rebuild it. ``shared`` (best.pt, checkpoint.pt): a full save leaves out the tensors
        frozen throughout the run and refers to the run's one copy of them (:meth:`frozen_store`)."""
        if save == "full" and shared:
            return self.shared_frozen(schedule).payload(self.model)
        model = dict(vars(self.cfg.model))
        if weights_kind(model["arch"], model["weights"]) == "file":  # found again from any working directory
            model["weights"] = str(Path(model["weights"]).expanduser().resolve())
        # The seed rebuilds a random base (model.weights: null) bitwise: prepare_model seeds, then builds.
        base = {"model": model, "num_classes": self.num_classes, "seed": self.cfg.seed}
        if self.cfg.freeze.adapters:  # the base is rebuilt with them (zero-initialised B: the base's outputs)
            base["adapters"] = copy.deepcopy(self.resolved["freeze"]["adapters"])
        return model_payload(
            self.model, save, schedule.frozen_throughout(epoch), schedule.pinned_throughout(epoch), base, self.known()
        )

    def shared_frozen(self, schedule: Schedule) -> SharedFrozen:
        """The tensors frozen (or pinned) in every phase of the whole run, and their hash. A
        schedule's later events can only unfreeze what is not among them, and auto only freezes
        more, so the set of ``schedule`` as it stands at the start holds for the whole run."""
        if self._shared is None:
            last = self.cfg.train.epochs
            frozen, pinned = schedule.frozen_throughout(last), schedule.pinned_throughout(last)
            self._shared = SharedFrozen.of(self.model, frozen, pinned, self.known())
        return self._shared

    def frozen_store(self, schedule: Schedule) -> dict[str, Any] | None:
        """What ``frozen.pt`` holds for best.pt and checkpoint.pt to refer to; None when they refer
        to nothing (``train.save: delta``, or nothing frozen throughout)."""
        if self.cfg.train.save != "full" or not self.shared_frozen(schedule).keys:
            return None
        return self.shared_frozen(schedule).store(self.model)
