"""The Lightning side of ``freezetune benchmark --peer lightning``: a LightningModule and
Trainer doing a shipped config's work the way Lightning's documentation does it.

Imports Lightning at module level, so only the benchmark's worker process imports this
module (freezetune.bench.peer_worker), and only for a Lightning run; freezetune itself never
needs Lightning. The model, its head initialisation and the DataLoaders are freezetune's own
(built from the same config and seed), so both frameworks see the same weights and the same
batches in the same order; what differs is how each freezes, schedules and runs."""

from __future__ import annotations

import logging
import statistics
import tempfile
import traceback
import warnings
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn as nn
import torch.nn.functional as F
from lightning.pytorch.callbacks import BackboneFinetuning, BaseFinetuning, Callback
from torch.nn.modules.batchnorm import _BatchNorm

from freezetune.bench.features import bn_state, head_input_norms
from freezetune.checks import resolve
from freezetune.config import Config, OptimizerConfig
from freezetune.data import build_loaders
from freezetune.measure import device_clock
from freezetune.models import build_model
from freezetune.plan import describe, find_head
from freezetune.train import LRSchedule, num_outputs, resolve_device, seed_everything
from freezetune.train.loop import steps_in
from freezetune.train.setup import schedule_for

__all__ = ["LIGHTNING_VARIANTS", "PeerModule", "fit_lightning", "peer_module"]

# Each variant: what it does, in the words of the table.
LIGHTNING_VARIANTS = {
    "full": "LightningModule, everything trains",
    "probe_train_bn_false": "BaseFinetuning.freeze(backbone, train_bn=False)",
    "probe_bn_eval": "freeze(backbone, train_bn=False) + frozen BatchNorm in eval",
    "gradual": "BackboneFinetuning(unfreeze_backbone_at_epoch=1, backbone_initial_ratio_lr=0.5)",
    "gradual_lambdalr": "BackboneFinetuning + LambdaLR (the config's cosine)",
}
WARMUP_STEPS = 3  # as freezetune's summary: the first steps of a phase are left out of the median
_PRECISION = {"fp32": "32-true", "bf16": "bf16-mixed", "fp16": "16-mixed"}


class PeerModule(pl.LightningModule):
    """A classifier as a LightningModule: cross-entropy in fp32, accuracy over the validation
    set, SGD/Adam/AdamW as the config says, and optionally a per-step ``LambdaLR``.

    Args:
        model: the classifier (freezetune's build, so the head starts from the same draw).
        head: the top-level child that is the head (``fc`` for a resnet).
        backbone_names: the top-level children that :class:`BackboneFinetuning` unfreezes
            (``backbone`` is the attribute it requires).
        optimizer: ``train.optimizer``.
        lr_factor: the LR multiplier by optimizer step (None: a constant LR).
        head_only_optimizer: build the optimizer over the head alone, as BackboneFinetuning's
            documented example does; otherwise over every parameter that requires grad.
    """

    def __init__(
        self,
        model: nn.Module,
        head: str,
        backbone_names: list[str],
        optimizer: OptimizerConfig,
        lr_factor: Callable[[int], float] | None,
        head_only_optimizer: bool = False,
    ) -> None:
        super().__init__()
        self.model = model
        self.head_name, self.backbone_names = head, backbone_names
        self.optimizer_cfg, self.lr_factor, self.head_only_optimizer = optimizer, lr_factor, head_only_optimizer
        self.first_loss: float | None = None
        self.val_acc: float | None = None
        self._correct = self._seen = 0

    @property
    def backbone(self) -> nn.ModuleList:
        """What BaseFinetuning and BackboneFinetuning freeze and unfreeze (a view: not registered twice)."""
        return nn.ModuleList([getattr(self.model, n) for n in self.backbone_names])

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.model(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:  # noqa: D102
        x, y = batch
        loss = F.cross_entropy(self.model(x).float(), y)
        if self.first_loss is None:
            self.first_loss = loss.item()
        return loss

    def on_validation_epoch_start(self) -> None:  # noqa: D102
        self._correct = self._seen = 0

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:  # noqa: D102
        x, y = batch
        self._correct += int((self.model(x).argmax(1) == y).sum())
        self._seen += y.shape[0]

    def on_validation_epoch_end(self) -> None:  # noqa: D102
        self.val_acc = self._correct / max(self._seen, 1)

    def configure_optimizers(self) -> Any:  # noqa: D102
        o = self.optimizer_cfg
        head = getattr(self.model, self.head_name)
        params = (
            list(head.parameters()) if self.head_only_optimizer else [p for p in self.parameters() if p.requires_grad]
        )
        if o.name == "sgd":
            opt: torch.optim.Optimizer = torch.optim.SGD(
                params, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov, weight_decay=o.weight_decay
            )
        else:
            kind = torch.optim.Adam if o.name == "adam" else torch.optim.AdamW
            opt = kind(params, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)
        if self.lr_factor is None:
            return opt
        scheduler = torch.optim.lr_scheduler.LambdaLR(opt, self.lr_factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class _Clock(Callback):
    """Each step's seconds (end of the previous step to the end of this one, the batch's fetch
    included, as freezetune's step clock), and each epoch's training pass without validation."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.steps: list[tuple[int, float]] = []  # (epoch from 1, seconds)
        self.train_s = 0.0
        self._epoch_start = self._last = 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:  # noqa: D102
        self._epoch_start = self._last = device_clock(self.device)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:  # noqa: D102
        now = device_clock(self.device)
        self.steps.append((trainer.current_epoch + 1, now - self._last))
        self._last = now

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:  # noqa: D102
        self.train_s += device_clock(self.device) - self._epoch_start


def _children(model: nn.Module, cfg: Config) -> tuple[str, list[str]]:
    """The head's top-level child, and every other top-level child."""
    head = find_head(describe(model)).split(".")[0]
    return head, [n for n, _ in model.named_children() if n != head]


def peer_module(cfg: Config, variant: str, steps_per_epoch: int) -> PeerModule:
    """``cfg``'s model as ``variant`` sets it up before ``Trainer.fit`` (freezing and modes
    applied; BackboneFinetuning's own freezing happens in its ``setup`` hook)."""
    if variant not in LIGHTNING_VARIANTS:
        raise ValueError(f"unknown Lightning variant {variant!r}; expected one of {', '.join(LIGHTNING_VARIANTS)}")
    seed_everything(cfg.seed)  # as freezetune.train.prepare_model: the fresh head is the same draw
    model, _ = build_model(cfg.model, num_outputs(cfg))
    head, others = _children(model, cfg)
    factor = None
    if cfg.train.scheduler.name != "none" or cfg.train.scheduler.warmup_epochs:
        factor = LRSchedule(cfg.train.scheduler, steps_per_epoch, cfg.train.epochs).factor
    if variant == "full":
        return PeerModule(model, head, others, cfg.train.optimizer, factor)
    if variant.startswith("probe"):
        backbone = [getattr(model, n) for n in others]
        BaseFinetuning.freeze(backbone, train_bn=False)  # Lightning's idiom: sets track_running_stats=False
        if variant == "probe_bn_eval":
            for m in model.modules():
                if isinstance(m, _BatchNorm) and not any(p.requires_grad for p in m.parameters()):
                    m.eval()  # Lightning (2.6 checked) does not call model.train() in fit; validation restores modes
        return PeerModule(model, head, others, cfg.train.optimizer, factor)
    # Gradual: BackboneFinetuning unfreezes one `backbone` at one epoch; freezetune's config names
    # the stages it unfreezes (freeze.gradual), so they are the backbone. What never unfreezes
    # (the stem, layer1, layer2) is frozen the way that keeps its BatchNorm statistics: in eval.
    stages = list(cfg.freeze.gradual or [])
    stem = [getattr(model, n) for n in others if n not in stages]
    BaseFinetuning.freeze(stem, train_bn=False)
    for m in stem:
        m.eval()
    # The documented recipe optimizes the head only; the callback adds the backbone's group.
    # Without LambdaLR: that crashes once the group is added (see fit_lightning).
    return PeerModule(model, head, stages, cfg.train.optimizer, factor if variant == "gradual_lambdalr" else None, True)


def _callbacks(variant: str) -> list[Callback]:
    if variant.startswith("gradual"):
        # Unfreeze at epoch index 1 (freezetune's epoch 2, where layer4 joins) at half the head's LR
        # (layer4's layer_decay share); the default lambda then raises it 1.5x per epoch.
        return [BackboneFinetuning(unfreeze_backbone_at_epoch=1, backbone_initial_ratio_lr=0.5)]
    return []


def _quiet() -> None:
    """No info lines, no advice about workers or eval-mode modules: the worker's output is the JSON."""
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("lightning.fabric").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="lightning")


def fit_lightning(cfg: Config, variant: str, features: bool = False) -> dict[str, Any]:
    """Train ``cfg`` with Lightning as ``variant`` says; returns what the benchmark compares. An
    exception during ``fit`` (gradual_lambdalr's) is returned as ``error``, not raised.

    With ``features``, nothing trains: the head input norms of the first validation batch."""
    _quiet()
    cfg, _ = resolve(cfg)
    device = resolve_device(cfg.train.device)
    loaders = build_loaders(cfg.data, cfg.seed, num_outputs(cfg))
    steps = steps_in(len(loaders.train), 1, cfg.train.max_steps_per_epoch)
    module = peer_module(cfg, variant, steps)
    if features:
        x, _ = next(iter(loaders.val))
        head = getattr(module.model, module.head_name)
        return {"head_input_norm": head_input_norms(module.model, head, x), "bn": bn_state(module.model)}
    clock = _Clock(device)
    # Lightning's default checkpointing stays on (a checkpoint of the model and optimizer at each
    # epoch's end, replacing the last), into a folder deleted afterwards: freezetune writes its
    # checkpoint.pt at each epoch's end too, so that a stopped run loses nothing. Equal work.
    root = tempfile.TemporaryDirectory(prefix="lightning-peer-")
    trainer = pl.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1,
        precision=_PRECISION[cfg.train.precision],  # type: ignore[arg-type]
        max_epochs=cfg.train.epochs,
        limit_train_batches=steps,
        logger=False,
        enable_checkpointing=True,
        default_root_dir=root.name,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        deterministic=True,
        use_distributed_sampler=False,  # freezetune's loader, its seeded generator and order, as they are
        callbacks=[clock, *_callbacks(variant)],  # the clock first: an unfreeze counts as training time
    )
    start = device_clock(device)
    error = None
    deterministic = torch.are_deterministic_algorithms_enabled()  # the Trainer turns it on for the process
    try:
        trainer.fit(module, loaders.train, loaders.val)
    except Exception as exc:  # gradual_lambdalr: reported, not raised
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        path = frame.filename.split("site-packages/")[-1]
        error = {
            "type": type(exc).__name__,
            "message": str(exc),
            "where": f"{path}:{frame.lineno} in {frame.name}: {frame.line}",
            "epoch": trainer.current_epoch + 1,
            "global_step": trainer.global_step,
        }
    finally:
        torch.use_deterministic_algorithms(deterministic)
    fit_s = device_clock(device) - start
    root.cleanup()
    # The steps of the last phase of freezetune's schedule for this config, after warm-up.
    last = schedule_for(cfg, describe(module.model)).phases[-1].start
    durations = [s for e, s in clock.steps if e >= last]
    durations = durations[WARMUP_STEPS:] if len(durations) > WARMUP_STEPS else durations
    return {
        "first_loss": module.first_loss,
        "val_acc": module.val_acc if error is None else None,
        "train_s": clock.train_s,
        "fit_s": fit_s,
        "step_s": statistics.median(durations) if durations else None,
        "steps": len(clock.steps),
        "bn": bn_state(module.model),
        "error": error,
    }
