"""A finished run's model, ready to use: rebuilt from its ``model.pt`` (the last epoch)
or ``best.pt`` (the best by ``train.monitor``) with the class names and the
preprocessing it was trained with (freezetune.train.trainer.MODEL_FORMAT), in eval
mode with every parameter's ``requires_grad`` off."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from torchvision.transforms import v2

from freezetune.config import Config, ConfigError, Preprocessing, from_dict
from freezetune.data import eval_transform
from freezetune.models import build_model, inject_adapters, load_state_dict_file
from freezetune.record import FAILED, MODEL_FORMAT, read_checkpoint
from freezetune.utils.errors import first_line

__all__ = ["CHECKPOINT_FILES", "MODEL_FORMAT", "RunModel", "load_run"]

# merged and adapters: a run with freeze.adapters also saves its model merged (the plain
# architecture) and its adapters alone (a delta over the base weights), freezetune.train.files.
CHECKPOINT_FILES = {"best": "best.pt", "last": "model.pt", "merged": "merged.pt", "adapters": "adapters.pt"}


@dataclass
class RunModel:
    """A trained model with what it takes to use it."""

    model: nn.Module  # eval mode, CPU, requires_grad off everywhere
    classes: list[str]  # the name of each output, in output order
    preprocessing: Preprocessing
    config: Config  # the run's resolved config
    epoch: int  # the epoch whose weights these are
    path: Path  # the file they were read from
    run_dir: Path

    def transform(self) -> v2.Compose:
        """PIL image -> the normalised tensor the model was evaluated on during training."""
        return eval_transform(self.preprocessing)

    def describe(self) -> str:
        """One line: which weights, which classes."""
        return (
            f"{self.path} ({self.config.model.arch}, epoch {self.epoch}, {len(self.classes)} classes: "
            f"{', '.join(self.classes[:8])}{' ...' if len(self.classes) > 8 else ''})"
        )


def _finished_model(run: Path, checkpoint: str) -> Path:
    """The file ``checkpoint`` names in ``run``; ConfigError saying why there is none."""
    if checkpoint not in CHECKPOINT_FILES:
        raise ConfigError([f"--checkpoint: {checkpoint!r} is not one of {', '.join(CHECKPOINT_FILES)}"])
    if run.is_file():  # runs/NAME/best.pt for runs/NAME: the file is chosen by --checkpoint
        key = {name: key for key, name in CHECKPOINT_FILES.items()}.get(run.name)
        which = f" --checkpoint {key}" if key else ""
        raise ConfigError([f"--run: {run} is a file, not a run folder. HINT: --run {run.parent}{which}"])
    if not run.is_dir():
        raise ConfigError([f"--run: {run}: no such run folder"])
    finished = (run / "model.pt").is_file() and (run / "summary.json").is_file()
    if not finished:
        if (run / FAILED).is_file():
            reason = ((run / FAILED).read_text().splitlines() or [""])[0]
            raise ConfigError([f"--run: {run} holds a run that failed ({reason}); it has no finished model"])
        if (run / "checkpoint.pt").is_file():
            raise ConfigError(
                [
                    f"--run: {run} is not finished (it has a checkpoint.pt, no model.pt). "
                    f"HINT: finish it with freezetune train --config {run}/config.yaml --resume {run}"
                ]
            )
        raise ConfigError([f"--run: {run} has no finished model (no model.pt and summary.json): is it a run folder?"])
    path = run / CHECKPOINT_FILES[checkpoint]
    if not path.is_file():
        why = "a run without freeze.adapters" if checkpoint in ("merged", "adapters") else "a run from before best.pt"
        raise ConfigError([f"--checkpoint {checkpoint}: {run} has no {path.name} ({why}). HINT: --checkpoint last"])
    return path


def _data_root(root: str, trained_in: str | None) -> str:
    """``data.root`` as the run meant it: a relative path is relative to the folder training ran
    in, which need not be this process's working directory."""
    path = Path(root).expanduser()
    if path.is_absolute() or trained_in is None:
        return root
    there = Path(trained_in) / path
    return str(there) if there.exists() else root  # else as it is: the error names it


def _architecture(cfg: Config, num_classes: int) -> nn.Module:
    """The run's architecture alone (the trained tensors replace every weight), with its adapters: a
    run with adapters is used with them (merged.pt's config has none)."""
    model, _ = build_model(dataclasses.replace(cfg.model, weights=None), num_classes)
    inject_adapters(model, cfg.freeze.adapters)
    return model


def _uninitialised(cfg: Config, num_classes: int, state: dict[str, torch.Tensor]) -> nn.Module | None:
    """The architecture built on the meta device and given the saved tensors themselves: every
    weight is replaced anyway, and initialising vit_b_16's 86M parameters first took 1-2 s of every
    predict, evaluate and export. None when that cannot stand for a real build: a tensor the file
    does not hold or holds in another dtype (a copy into the built model casts: frozen_dtype bf16
    saves the frozen tensors so), a buffer the model computes in its constructor and does not save,
    or an architecture that cannot be built without storage (a model of the user's own)."""
    try:
        with torch.device("meta"):
            model = _architecture(cfg, num_classes)
        if any(k not in state or state[k].dtype != t.dtype for k, t in model.state_dict().items()):
            return None
        model.load_state_dict(state, assign=True)
    except Exception:  # noqa: BLE001 - whatever fails here, the ordinary build below runs and reports it
        return None
    return None if any(t.is_meta for t in [*model.parameters(), *model.buffers()]) else model


def load_run(run: str | Path, checkpoint: str = "best") -> RunModel:
    """The model of a finished run, as trained, with its class names and preprocessing.

    Args:
        run: the run folder (``runs/NAME``).
        checkpoint: ``best`` (``best.pt``) or ``last`` (``model.pt``).

    Raises:
        ConfigError: the folder holds no finished model, or its file cannot be used.
    """
    run = Path(run).expanduser()
    path = _finished_model(run, checkpoint)
    obj = read_checkpoint(path, "--run")
    if not isinstance(obj, dict) or obj.get("format") != MODEL_FORMAT:
        raise ConfigError(
            [
                f"--run: {path} was written before freezetune stored class names and preprocessing with the "
                "model. HINT: train the run again with this version"
            ]
        )
    cfg = from_dict(obj["config"], source=f"{path} (its config)")
    cfg.data.root = _data_root(cfg.data.root, obj.get("cwd"))
    # A full save's weights are read already (best.pt's frozen tensors resolved from its run,
    # freezetune.record.shared); a delta is rebuilt on its base.
    state = obj["model"] if isinstance(obj.get("model"), dict) else load_state_dict_file(path, merge=False)
    try:
        num_classes = int(obj["num_classes"])
        model = _uninitialised(cfg, num_classes, state)  # the saved tensors assigned already
        if model is None:
            model = _architecture(cfg, num_classes)
            model.load_state_dict(state)
    except RuntimeError as exc:
        first = first_line(exc)
        raise ConfigError([f"--run: {path} does not fit {cfg.model.arch}: {first[:200]}"]) from None
    model.eval().requires_grad_(False)
    return RunModel(
        model=model,
        classes=list(obj["classes"]),
        preprocessing=Preprocessing.from_json(obj["preprocessing"]),
        config=cfg,
        epoch=int(obj["epoch"]),
        path=path,
        run_dir=run,
    )
