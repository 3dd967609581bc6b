"""The typed run configuration: one dataclass per section, with the bounds and
choices each field accepts in its ``metadata`` (checked by freezetune.config.load).

Every field's comment says what it is for; the key table in docs/configs.md
says the same for users."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Union

from freezetune.config.records import EVENTS, GROUPS, RULES, EventSpec, GroupRule, Rule
from freezetune.utils.errors import UserError

__all__ = [
    "ADAPTER_KINDS",
    "AdapterConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "EarlyStoppingConfig",
    "FreezeConfig",
    "ModelConfig",
    "OptimizerConfig",
    "SchedulerConfig",
    "TrainConfig",
]


class ConfigError(UserError, ValueError):
    """One or more configuration problems; ``problems`` holds one line each."""

    def __init__(self, problems: list[str], source: str | None = None) -> None:
        self.problems = list(problems)
        self.source = source
        where = f" in {source}" if source else ""
        if len(self.problems) == 1:  # one line: the problem itself, where it is, the fix
            super().__init__(f"{source}: {self.problems[0]}" if source else self.problems[0])
            return
        head = f"{len(self.problems)} config problems{where}:"
        super().__init__("\n".join([head, *(f"  - {p}" for p in self.problems)]))


def _choice(*choices: str, **extra: Any) -> dict[str, Any]:
    return {"choices": choices, **extra}


@dataclass
class ModelConfig:
    """``model``: the architecture, its pretrained weights and its head."""

    # A torchvision classification model (resnet18, vit_b_16, ...), an import path to a
    # callable that returns an nn.Module ("mypkg.models:build", called with num_classes=K and
    # model.kwargs), or a timm model ("timm/convnext_atto", with the timm extra installed).
    arch: str = "resnet18"
    # null, a torchvision weights name (DEFAULT, IMAGENET1K_V1, ...) or a file path.
    weights: Union[str, None] = None
    # null: take the class count from the data (len(data.classes) or the dataset's).
    num_classes: Union[int, None] = field(default=None, metadata={"min": 1})
    # Re-initialise the head even when its shape matches the checkpoint: the
    # checkpoint's classes are not this task's classes (transfer A -> B).
    reset_head: bool = False
    # Keyword arguments for an import-path or timm architecture (torchvision models take none here).
    kwargs: dict = field(default_factory=dict)


@dataclass
class DataConfig:
    """``data``: the dataset, class subset, preprocessing, batches and sample caps.

    The preprocessing keys (image_size .. augment) left null follow the weights: torchvision
    weights' own ``transforms()``, or what a freezetune model.pt was trained with; else the
    dataset's default (freezetune.checks.resolve, docs/preprocessing.md)."""

    dataset: str = field(default="fake", metadata=_choice("fashion_mnist", "fake", "imagefolder"))
    root: str = "data"
    # Class indices ([5, 6, 7]) or names ([sneaker, trouser]: imagefolder folder names,
    # Fashion-MNIST's names); the model's outputs follow this order.
    classes: Union[list[Any], None] = None
    # The side of the square the network sees (the center crop at evaluation).
    image_size: Union[int, None] = field(default=None, metadata={"min": 8, "max": 4096})
    # Evaluation: the shorter side is resized to this, then the center image_size crop is taken.
    resize_size: Union[int, None] = field(default=None, metadata={"min": 8, "max": 8192})
    interpolation: Union[str, None] = field(default=None, metadata=_choice("bilinear", "bicubic", "nearest"))
    mean: Union[list[float], None] = None  # per channel (R, G, B), after scaling to 0..1
    std: Union[list[float], None] = None
    # Training images only: none (as evaluation), flip_crop (RandomResizedCrop + flip), or
    # that plus one of torchvision's policies.
    augment: Union[str, None] = field(
        default=None,
        # A switch before 0.2 (true: flip and crop): name what true and false mean now.
        metadata=_choice("none", "flip_crop", "trivialaugment", "randaugment", "autoaugment", was_switch="flip_crop"),
    )
    batch_size: int = field(default=64, metadata={"min": 1})
    train_samples: Union[int, None] = field(default=None, metadata={"min": 1, "max": 2**31 - 1})
    val_samples: Union[int, None] = field(default=None, metadata={"min": 1, "max": 2**31 - 1})
    num_workers: int = field(default=0, metadata={"min": 0})
    # imagefolder: a file that is no readable image stops the run before it starts (error),
    # or is left out and listed in summary.json (skip).
    on_bad_image: str = field(default="error", metadata=_choice("error", "skip"))


@dataclass
class AutoFreezeConfig:
    """``freeze.auto``: adaptive freezing (``freeze.preset: auto``, freezetune.plan.auto). After
    each epoch, the longest prefix of stages (top-level modules) whose gradient-norm change rate
    fell below ``threshold`` is frozen from the next epoch on."""

    # A stage whose mean gradient norm changed by less than this fraction between two epochs has converged.
    threshold: float = field(default=0.1, metadata={"min_exclusive": 0.0})
    # No decision before this many epochs have trained (the first rate needs two epochs anyway).
    warmup_epochs: int = field(default=2, metadata={"min": 1})
    # The first top-level module auto never freezes (null: the head). Stages from it on always train.
    ceiling: Union[str, None] = None
    # Steps between gradient-norm samples: the signal's cost (one norm per trainable tensor).
    sample_every: int = field(default=5, metadata={"min": 1})


ADAPTER_KINDS = ("lora",)


@dataclass
class AdapterConfig:
    """One ``freeze.adapters`` entry: low-rank adapters beside every adaptable layer (Linear,
    Conv2d) inside the selected modules, whose own weights are then frozen (docs/adapters.md)."""

    # A module name (that module and everything under it), a glob over module or parameter names,
    # or a class name (BatchNorm2d, Linear), as in freeze.rules; or a list of them.
    modules: Any = None
    # The adapter's inner size r: each adapted layer gains r * (inputs + outputs) parameters.
    rank: int = field(default=8, metadata={"min": 1})
    # The update B.A is scaled by alpha / rank (LoRA's convention: alpha = 2 * rank is common).
    alpha: float = field(default=16.0, metadata={"min_exclusive": 0.0})
    # Dropout on the adapter's input (not on the frozen path).
    dropout: float = field(default=0.0, metadata={"min": 0.0, "max": 0.99})
    kind: str = field(default="lora", metadata=_choice(*ADAPTER_KINDS))

    @property
    def selectors(self) -> list[str]:
        """``modules`` as a list (a single name stands for a list of one)."""
        return [self.modules] if isinstance(self.modules, str) else list(self.modules or [])


@dataclass
class FreezeConfig:
    """``freeze``: what is frozen (preset, rules), BatchNorm's policy, and the schedule of events."""

    # full | linear_probe | bitfit | until:<module>; applied before `rules`.
    preset: Union[str, None] = None
    # {kind: target} mappings, read once into Rules (freezetune.config.records) by the loader.
    rules: list[Rule] = field(default_factory=list, metadata={"records": RULES})
    # eval: BatchNorm whose parameters are all frozen stays in eval (running statistics fixed);
    # eval_all: every BatchNorm in eval, its affine parameters trainable where the plan says
    # (mmpretrain's norm_eval); train: all left to the trainer.
    batchnorm: str = field(default="eval", metadata=_choice("eval", "eval_all", "train"))
    # eval: frozen modules behave as frozen (Dropout, stochastic depth off), pinned like
    # BatchNorm (freezetune.plan.rules); train: only BatchNorm is pinned.
    frozen_modules: str = field(default="eval", metadata=_choice("eval", "train"))
    # Frozen parameters stored in this dtype (no fp32 master copy is needed for what never
    # updates): half their memory, no per-step autocast casts. An unfreeze event casts a
    # tensor back to fp32 before it trains (freezetune.plan.apply).
    frozen_dtype: str = field(default="fp32", metadata=_choice("fp32", "bf16", "fp16"))
    # Events at the start of an epoch: {epoch: N, unfreeze: P, lr_scale: F} or {epoch: N, freeze: P}
    # (freezetune/schedule.py). P is a module name, parameter name or glob, as in `rules`.
    schedule: list[EventSpec] = field(default_factory=list, metadata={"records": EVENTS})
    # preset gradual (ULMFiT): the head trains alone in epoch 1, then one entry of this list
    # is unfrozen at the start of each following epoch, e.g. [layer4, layer3, layer2].
    gradual: list[str] = field(default_factory=list)
    # preset auto: when the policy freezes the next stages (AutoFreezeConfig).
    auto: AutoFreezeConfig = field(default_factory=AutoFreezeConfig)
    # Low-rank adapters (AdapterConfig): the adapted layers' weights frozen, the adapters trained.
    adapters: list[AdapterConfig] = field(default_factory=list)

    @property
    def scheduled(self) -> bool:
        """Whether the trainable set changes during the run (one cost prediction does not fit it)."""
        return bool(self.schedule or self.gradual or self.preset == "auto")


@dataclass
class OptimizerConfig:
    """``train.optimizer``: which optimizer, at what learning rate."""

    name: str = field(default="sgd", metadata=_choice("sgd", "adam", "adamw"))
    lr: float = field(default=0.01, metadata={"min_exclusive": 0.0})
    momentum: float = field(default=0.9, metadata={"min": 0.0, "max": 1.0})  # sgd
    nesterov: bool = False  # sgd (needs momentum > 0)
    weight_decay: float = field(default=0.0, metadata={"min": 0.0})
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # adam, adamw
    eps: float = field(default=1e-8, metadata={"min_exclusive": 0.0})  # adam, adamw


@dataclass
class SchedulerConfig:
    """``train.scheduler``: the LR multiplier over the run (freezetune.train.lr_schedule)."""

    # `train.scheduler: cosine` is short for `train.scheduler: {name: cosine}`.
    SHORTHAND: ClassVar[str] = "name"
    # The LR multiplier is set before every optimizer step, on every param group,
    # including groups that join later (freezetune/lr_schedule.py).
    name: str = field(default="none", metadata=_choice("none", "cosine", "step", "onecycle"))
    # Linear warm-up over the first epochs (fractions allowed); not for onecycle, which has pct_start.
    warmup_epochs: float = field(default=0.0, metadata={"min": 0.0})
    # step: multiply by gamma every step_epochs epochs.
    step_epochs: int = field(default=1, metadata={"min": 1})
    gamma: float = field(default=0.1, metadata={"min_exclusive": 0.0})
    # cosine: the floor, as a fraction of each group's LR.
    min_lr_scale: float = field(default=0.0, metadata={"min": 0.0})
    # onecycle (as torch.optim.lr_scheduler.OneCycleLR, LR only): rise over pct_start of the
    # steps from lr/div_factor to lr, then cosine down to lr/(div_factor*final_div_factor).
    pct_start: float = field(default=0.3, metadata={"min_exclusive": 0.0})
    div_factor: float = field(default=25.0, metadata={"min_exclusive": 0.0})
    final_div_factor: float = field(default=1e4, metadata={"min_exclusive": 0.0})


@dataclass
class EarlyStoppingConfig:
    """``train.early_stopping``: stop when ``train.monitor`` has not improved for a while."""

    # Epochs without an improvement of more than min_delta before the run stops.
    patience: int = field(default=3, metadata={"min": 1})
    min_delta: float = field(default=0.0, metadata={"min": 0.0})


@dataclass
class TrainConfig:
    """``train``: epochs, optimizer, device, output, cache, LR groups and schedule, checkpoints."""

    epochs: int = field(default=1, metadata={"min": 1})
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    device: str = field(default="auto", metadata=_choice("auto", "cpu", "cuda"))
    # null: runs/<name>
    output_dir: Union[str, None] = None
    # Cap on optimizer steps per epoch (null = the whole loader); for smoke runs.
    max_steps_per_epoch: Union[int, None] = field(default=None, metadata={"min": 1})
    # Compute a frozen prefix once and train on its cached output (freezetune/cache.py).
    cache_features: str = field(default="auto", metadata=_choice("auto", "on", "off"))
    # In memory up to this many bytes, beyond that a memory-mapped file in the run folder.
    cache_max_bytes: int = field(default=4 * 1024**3, metadata={"min": 0})
    # Optimizer groups: {match: P, lr_scale: F, weight_decay: W}; scales multiply. Read into GroupRules.
    param_groups: list[GroupRule] = field(default_factory=list, metadata={"records": GROUPS})
    # Each top-level module gets lr * layer_decay ** (its distance from the head's module).
    layer_decay: Union[float, None] = field(default=None, metadata={"min_exclusive": 0.0, "max": 1.0})
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    # Keep the last training state (checkpoint.pt) when the run finishes, so that
    # `--resume runs/NAME train.epochs=M` can continue it exactly; costs the optimizer
    # state and the weights once more on disk.
    keep_state: bool = False
    # Steps with a non-finite loss to skip before the run stops as diverged (0: stop at the first).
    max_nonfinite: int = field(default=0, metadata={"min": 0})
    # Checkpoints hold every tensor (full), or only those that were ever trainable plus
    # a hash of the base weights they apply to (delta).
    save: str = field(default="full", metadata=_choice("full", "delta"))
    # fp32, or autocast to bf16 / fp16 on the run's device (fp16 with a gradient scaler);
    # the loss is computed in fp32; evaluation runs in the same precision.
    precision: str = field(default="fp32", metadata=_choice("fp32", "bf16", "fp16"))
    # Model and inputs in channels-last memory format (faster convolutions in low precision).
    channels_last: bool = False
    # torch's intra-op CPU threads (torch.set_num_threads), set before the model is built; null
    # leaves torch's own count (OMP_NUM_THREADS when set). 1 on a machine busy with other work:
    # one thread waiting for a core stalls every operation (freezetune.train.threads).
    threads: Union[int, None] = field(default=None, metadata={"min": 1, "max": 1024})
    # summary.json's evaluation speed after the last epoch: full (extra passes over 3 validation
    # batches, with and without autograd), quick (the epochs' own evaluation, and one small
    # sub-batch with and without autograd), off (the epochs' own evaluation only).
    measure: str = field(default="quick", metadata=_choice("full", "quick", "off"))
    # Micro-batches per optimizer step; steps (LR schedule, max_steps_per_epoch, logs) count
    # optimizer steps, and an epoch's last group may hold fewer micro-batches.
    accumulate: int = field(default=1, metadata={"min": 1})
    # Clip the gradients' total norm (over the trainable parameters) before each step; null: off.
    clip_grad_norm: Union[float, None] = field(default=None, metadata={"min_exclusive": 0.0})
    label_smoothing: float = field(default=0.0, metadata={"min": 0.0, "max": 0.99})
    # torch.compile the net that trains; rebuilt (and so recompiled) when the trainable set changes.
    compile: bool = False
    # Where metrics go besides metrics.jsonl: csv (metrics.csv, steps.csv) and tensorboard
    # (tb/ in the run folder; the tensorboard extra).
    log: list[str] = field(default_factory=lambda: ["jsonl"])
    # What "best" means for best.pt and early stopping: validation accuracy (higher is
    # better) or validation loss (lower is better).
    monitor: str = field(default="val_acc", metadata=_choice("val_acc", "val_loss"))
    # null: train every epoch; {patience: N} stops after N epochs without improvement.
    early_stopping: Union[EarlyStoppingConfig, None] = None


@dataclass
class Config:
    """A whole run's configuration, as loaded and checked by freezetune.config.load."""

    name: str = ""
    seed: int = field(default=0, metadata={"min": 0, "max": 2**32 - 1})  # NumPy's seeds are 32-bit
    # How many seeds compare and the demo train this config with: seed, seed + 1, ... each in
    # its own run folder (<output_dir>-seed<S>), for intervals over seeds. train trains `seed` alone.
    seeds: int = field(default=1, metadata={"min": 1, "max": 1000})
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    freeze: FreezeConfig = field(default_factory=FreezeConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    @property
    def output_dir(self) -> Path:
        """The run folder: ``train.output_dir``, else ``runs/<name>``."""
        return Path(self.train.output_dir or f"runs/{self.name}").expanduser()
