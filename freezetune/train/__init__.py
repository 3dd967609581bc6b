"""Training: the step loop and inference-mode evaluation, the optimizer kept equal to
the trainable set, LR schedules, the frozen-prefix feature cache, torchrun/DDP,
Ctrl-C handling, the trainer across schedule phases, and one run end to end."""

from freezetune.train.cache import (
    CacheRefused,
    Compute,
    FeatureCache,
    Split,
    build_cache,
    cached_loaders,
    check_split,
    prefix_problem,
    split_model,
)
from freezetune.train.cache_policy import (
    CacheAction,
    CacheDecision,
    CachePolicy,
    HeldCache,
    Weighing,
    cache_batches,
    cache_on_refused,
    cache_pays,
    cache_skip_reason,
    compute_of,
    prefix_still_frozen,
    preview_cache,
)
from freezetune.train.compiled import PhaseCompiler
from freezetune.train.distributed import Dist
from freezetune.train.estimate import estimate_config
from freezetune.train.interrupt import StopRequest
from freezetune.train.loop import (
    Diverged,
    EpochStats,
    LoopOptions,
    Progress,
    Resume,
    evaluate,
    fit_epoch,
    no_progress,
    to_device,
    train_one_epoch,
)
from freezetune.train.lr_schedule import LRSchedule, set_lr
from freezetune.train.nets import CacheLifecycle, TrainTarget
from freezetune.train.optim import (
    add_trainable,
    check_optimizer,
    group_label,
    group_table,
    make_optimizer,
    remove_frozen,
)
from freezetune.train.runner import CHECKPOINT, load_resume_state, run
from freezetune.train.setup import (
    Prepared,
    num_outputs,
    prepare,
    prepare_model,
    resolve_device,
    seed_everything,
    steps_per_epoch,
)
from freezetune.train.threads import Threads, set_threads
from freezetune.train.trainer import STATE_FORMAT, Trainer

__all__ = [
    "CHECKPOINT",
    "STATE_FORMAT",
    "CacheAction",
    "CacheDecision",
    "CacheLifecycle",
    "CachePolicy",
    "CacheRefused",
    "Compute",
    "Dist",
    "Diverged",
    "EpochStats",
    "FeatureCache",
    "HeldCache",
    "LRSchedule",
    "LoopOptions",
    "Prepared",
    "PhaseCompiler",
    "Progress",
    "Resume",
    "Split",
    "StopRequest",
    "Threads",
    "TrainTarget",
    "Trainer",
    "Weighing",
    "add_trainable",
    "build_cache",
    "cache_on_refused",
    "cached_loaders",
    "check_optimizer",
    "check_split",
    "compute_of",
    "estimate_config",
    "evaluate",
    "fit_epoch",
    "group_label",
    "group_table",
    "load_resume_state",
    "make_optimizer",
    "no_progress",
    "num_outputs",
    "prefix_problem",
    "prefix_still_frozen",
    "prepare",
    "prepare_model",
    "cache_batches",
    "cache_pays",
    "cache_skip_reason",
    "preview_cache",
    "remove_frozen",
    "resolve_device",
    "run",
    "seed_everything",
    "set_lr",
    "set_threads",
    "split_model",
    "steps_per_epoch",
    "to_device",
    "train_one_epoch",
]
