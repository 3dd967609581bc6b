"""Checks of a typed config that need more than types: names of models, weights and
presets, and how the schedule fits the run (the syntax of rules, schedule events and
optimizer groups is checked as the loader reads them, freezetune.config.records).

Anything that needs the built model (does a pattern match?) is checked when the
plan is built (freezetune.plan)."""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
import re
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from freezetune.config.records import PRESETS, EventSpec
from freezetune.config.schema import AutoFreezeConfig, Config, ConfigError

__all__ = [
    "FASHION_MNIST_CLASSES",
    "LOGGERS",
    "TIMM_PREFIX",
    "arch_kind",
    "classification_models",
    "event_problems",
    "exception_line",
    "fashion_mnist_index",
    "load_callable",
    "semantic_problems",
    "timm_name",
    "timm_pretrained_cfg",
    "weights_kind",
]

# torchvision.datasets.FashionMNIST.classes, in label order (here so that a config naming them
# is checked without the dataset on disk).
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

_NAMED_PRESETS = [p for p in PRESETS if not p.endswith("<module>")]  # all but until:<module>


def classification_models() -> list[str]:
    """Names of the torchvision models that end in a class head."""
    # list_models(module=torchvision.models) excludes detection, segmentation,
    # video, optical-flow and quantized models: the ones a class head fits.
    import torchvision.models as tvm  # here: importing torchvision takes a second (it imports torch's
    # compile stack), which commands that never check a model name (--help, report) need not pay

    return tvm.list_models(module=tvm)


TIMM_PREFIX = "timm/"
# module.sub:attr, attr possibly dotted (a class's factory method): what model.arch calls.
_IMPORT_PATH = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
_TIMM_EXTRA = "pip install 'freezetune[timm]'"


def arch_kind(arch: str) -> str:
    """How ``model.arch`` is built: ``timm`` (``timm/<name>``), ``import`` (``module.sub:callable``,
    anything with a colon) or ``torchvision`` (a plain name)."""
    if arch.startswith(TIMM_PREFIX):
        return "timm"
    return "import" if ":" in arch else "torchvision"


def timm_name(arch: str) -> str:
    """The timm model name of ``timm/<name>`` (a pretrained tag included: resnet18.a1_in1k)."""
    return arch[len(TIMM_PREFIX) :]


def weights_kind(arch: str, weights: str | None) -> str:
    """``none``, ``torchvision`` (a weights enum name), ``timm`` (DEFAULT with a timm arch:
    timm's pretrained weights) or ``file`` (anything else: a path)."""
    if weights is None:
        return "none"
    kind = arch_kind(arch)
    if kind == "timm":
        return "timm" if weights == "DEFAULT" else "file"
    if kind == "import":
        return "file"  # a function of the user's has no named weights
    name = weights.split(".")[-1] if re.fullmatch(r"\w+_Weights\.\w+", weights) else weights
    if name == "DEFAULT" or name in _weight_names(arch):
        return "torchvision"
    return "file"


def _weight_names(arch: str) -> list[str]:
    import torchvision.models as tvm  # here: see classification_models

    try:
        return [w.name for w in tvm.get_model_weights(arch)]
    except (KeyError, ValueError):
        return []


def load_callable(arch: str) -> Callable[..., Any]:
    """The callable an import-path ``model.arch`` (``module.sub:attr``) names.

    The module is imported as ``import`` would, with the working directory searched last
    (the ``freezetune`` console script, unlike ``python -m``, does not put it on sys.path).

    Raises:
        ConfigError: one line: the module is not found, importing it raised, the attribute
            is missing or not callable.
    """
    if not _IMPORT_PATH.fullmatch(arch):
        raise ConfigError(
            [
                f"model.arch: {arch!r} is not an import path module.sub:callable (e.g. mypkg.models:build; "
                "a dotted module name, not a file path)"
            ]
        )
    module_name, _, attr = arch.partition(":")
    module = _import_user_module(module_name)
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            owner = module_name if obj is module else f"{module_name}:{attr.rsplit('.', 1)[0]}"
            public = [n for n in dir(obj) if not n.startswith("_")]
            near = difflib.get_close_matches(part, public, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise ConfigError([f"model.arch: {owner} has no attribute {part!r}{hint}"])
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(
            [
                f"model.arch: {arch} is {type(obj).__name__} {_short(obj)}, not a callable; it must name a function "
                "or class that returns an nn.Module when called as fn(num_classes=K, **model.kwargs)"
            ]
        )
    return obj


def _import_user_module(name: str) -> Any:
    cwd = os.getcwd()
    added = cwd not in sys.path and "" not in sys.path
    if added:
        sys.path.append(cwd)
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (name == exc.name or name.startswith(exc.name + ".")):
            raise ConfigError(
                [
                    f"model.arch: module {name!r} not found (no {exc.name!r}): it must be importable from the "
                    f"working directory ({cwd}) or installed. HINT: run from the folder that holds it, add that "
                    "folder to PYTHONPATH, or pip install your package"
                ]
            ) from None
        raise ConfigError([f"model.arch: importing {name!r} failed: {exception_line(exc)}"]) from None
    except (Exception, SystemExit) as exc:  # the user's module may raise anything at import
        raise ConfigError([f"model.arch: importing {name!r} raised {exception_line(exc)}"]) from None
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)


def exception_line(exc: BaseException) -> str:
    """``Type: first line of the message (file:line)``: an exception as one line of a config error."""
    first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), "")
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" ({Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {first[:160]}{where}" if first else f"{type(exc).__name__}{where}"


def _short(obj: Any) -> str:
    text = repr(obj)
    return text if len(text) <= 40 else text[:37] + "..."


def timm_pretrained_cfg(arch: str) -> Any:
    """timm's pretrained config of ``timm/<name>`` (input size, crop, mean/std, where its weights
    live), read from timm's registry without downloading anything; None when it has none."""
    import timm.models  # optional, and slow to import: only for timm archs

    try:
        return timm.models.get_pretrained_cfg(timm_name(arch))
    except RuntimeError:  # an unknown pretrained tag
        return None


def _arch_problems(cfg: Config) -> list[str]:
    """model.arch, model.kwargs and model.weights: does the architecture exist, and do they fit it."""
    arch, weights, kwargs = cfg.model.arch, cfg.model.weights, cfg.model.kwargs
    if not isinstance(arch, str):
        return []  # its type problem is already reported
    kind = arch_kind(arch)
    problems = _kwargs_problems(arch, kind, kwargs)
    if kind == "torchvision":
        models = classification_models()
        if arch not in models:
            near = difflib.get_close_matches(arch, models, n=3)
            hint = (
                f"; did you mean {', '.join(near)}?"
                if near
                else "; a timm model is timm/<name>, a model of your own module.sub:callable"
            )
            problems.append(f"model.arch: {arch!r} is not a torchvision classification model{hint}")
        elif isinstance(weights, str) and weights_kind(arch, weights) == "file" and _looks_like_a_name(weights):
            # Looks like an enum name, not a path: say which names exist.
            names = ["DEFAULT", *_weight_names(arch)]
            problems.append(f"model.weights: {weights!r} is not a weights name of {arch}; valid: {', '.join(names)}")
        return problems
    if kind == "timm":
        problems.extend(_timm_problems(arch, weights))
        return problems
    if arch.startswith("timm:"):
        return [*problems, f"model.arch: {arch!r}: a timm model is written {TIMM_PREFIX}{arch[len('timm:') :]}"]
    try:
        fn = load_callable(arch)
    except ConfigError as exc:
        return problems + exc.problems
    if isinstance(kwargs, dict) and not problems:
        problems.extend(_signature_problems(arch, fn, kwargs))
    if isinstance(weights, str) and _looks_like_a_name(weights):
        problems.append(
            f"model.weights: {weights!r} is no file here, and a model of your own has no named weights: give a "
            "state_dict or freezetune model.pt file, or null"
        )
    return problems


def _looks_like_a_name(weights: str) -> bool:
    """DEFAULT, IMAGENET1K_V1: an enum-like name rather than a path (unless such a file exists)."""
    return bool(re.fullmatch(r"[A-Z][A-Z0-9_]*", weights)) and not Path(weights).exists()


def _kwargs_problems(arch: str, kind: str, kwargs: Any) -> list[str]:
    if not isinstance(kwargs, dict) or not kwargs:
        return []
    if kind == "torchvision":
        return [
            f"model.kwargs: {kwargs} given, but torchvision models take none here (freezetune builds {arch} with "
            "num_classes only). HINT: remove model.kwargs, or build it in a function of your own: "
            "model.arch: mypkg.models:build"
        ]
    problems = []
    bad = [k for k in kwargs if not isinstance(k, str) or not k.isidentifier()]
    if bad:
        problems.append(f"model.kwargs: keys {bad} are not keyword argument names")
    if "num_classes" in kwargs:
        problems.append(
            "model.kwargs: num_classes is passed by freezetune: set model.num_classes (or leave it null to follow "
            "the data) and remove it from model.kwargs"
        )
    if kind == "timm" and "pretrained" in kwargs:
        problems.append("model.kwargs: pretrained is chosen by model.weights (DEFAULT: timm's pretrained weights)")
    return problems


def _signature_problems(arch: str, fn: Callable[..., Any], kwargs: dict[str, Any]) -> list[str]:
    """Would ``fn(num_classes=K, **kwargs)`` bind? Checked now, before anything is built."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin or C extension: no signature to read
        return []
    takes_k = "num_classes" in sig.parameters or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values()
    )
    if not takes_k:  # the contract, not the kwargs, is what is missing
        return [
            f"model.arch: {arch}{sig} takes no num_classes. HINT: give it a num_classes parameter and build the "
            "model's last layer with that many outputs (freezetune calls it as "
            f"{arch.rsplit(':', 1)[-1]}(num_classes=K, **model.kwargs))"
        ]
    try:
        sig.bind(num_classes=2, **kwargs)
    except TypeError as exc:
        key = "model.kwargs" if kwargs else "model.arch"
        given = ", ".join(["num_classes", *kwargs])
        return [f"{key}: {arch} cannot be called with {given} ({exc}); its signature is {sig}"]
    return []


def _timm_problems(arch: str, weights: Any) -> list[str]:
    try:
        import timm  # optional, and slow to import: only for timm archs
    except ImportError:
        return [f"model.arch: {arch} needs timm, which is not installed. HINT: {_TIMM_EXTRA}"]
    name = timm_name(arch)
    base, _, tag = name.partition(".")
    if not timm.is_model(base):
        near = difflib.get_close_matches(base, timm.list_models(), n=3)
        hint = f"; did you mean {', '.join(TIMM_PREFIX + n for n in near)}?" if near else ""
        return [f"model.arch: {arch!r} is not a timm model{hint}"]
    if tag and timm_pretrained_cfg(arch) is None:
        tags = [t.partition(".")[2] for t in timm.list_pretrained(base + ".*")]
        valid = f"; valid: {', '.join(tags)}" if tags else f"; {base} has no pretrained tags"
        return [f"model.arch: {arch!r}: {tag!r} is not a pretrained tag of timm's {base}{valid}"]
    if not isinstance(weights, str):
        return []
    if weights == "DEFAULT":
        pcfg = timm_pretrained_cfg(arch)
        if pcfg is None or not (pcfg.hf_hub_id or pcfg.url or pcfg.file):
            return [f"model.weights: timm has no pretrained weights for {name}; use null or a file"]
    elif _looks_like_a_name(weights):
        return [
            f"model.weights: {weights!r} is not a file; a timm model takes DEFAULT (timm's pretrained weights, "
            f"chosen by a tag in model.arch: timm/{base}.<tag>), a file, or null"
        ]
    return []


def semantic_problems(cfg: Config) -> list[str]:
    """Every problem with ``cfg`` that its types do not show, one line each (empty: none)."""
    problems = []
    if cfg.name == "":
        problems.append("name: missing: every run needs a non-empty name (its folder is runs/<name>)")
    elif isinstance(cfg.name, str) and len(cfg.name) > 100:
        problems.append(f"name: {len(cfg.name)} characters; at most 100 (it names the run folder)")
    elif not isinstance(cfg.name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]*", cfg.name):
        # The run folder is runs/<name>: no path separators, no '.' or '..', no hidden folder.
        problems.append(
            f"name: {cfg.name!r} must be a non-empty run name of letters, digits, '_', '-' and '.', "
            "starting with a letter or digit"
        )
    problems.extend(_arch_problems(cfg))
    problems.extend(_data_problems(cfg))
    if cfg.data.dataset != "fake" and isinstance(cfg.data.root, str) and isinstance(cfg.train.output_dir, str):
        out, root = Path(cfg.train.output_dir).expanduser().resolve(), Path(cfg.data.root).expanduser().resolve()
        if out == root or root in out.parents:
            problems.append(
                f"train.output_dir: {cfg.train.output_dir} is inside data.root ({cfg.data.root}): the run's files "
                "would mix with the data (an imagefolder would read its folder as a class)"
            )
    problems.extend(_freeze_problems(cfg))
    problems.extend(_train_problems(cfg))
    return problems


def _data_problems(cfg: Config) -> list[str]:
    problems = []
    workers, cores = cfg.data.num_workers, os.cpu_count() or 1
    if isinstance(workers, int) and workers > 4 * cores:
        problems.append(
            f"data.num_workers: {workers} is more than 4 x the {cores} CPU cores here (each worker is a process "
            "with its own copy of the dataset code)"
        )
    problems.extend(_class_problems(cfg))
    for key in ("mean", "std"):
        values = getattr(cfg.data, key)
        if isinstance(values, list) and len(values) != 3:
            problems.append(f"data.{key}: {values} needs 3 values, one per channel (R, G, B)")
    std = cfg.data.std
    if isinstance(std, list) and any(isinstance(v, float) and v <= 0 for v in std):
        problems.append(f"data.std: {std} must be > 0 (images are divided by it)")
    size, resize = cfg.data.image_size, cfg.data.resize_size
    if isinstance(size, int) and isinstance(resize, int) and resize < size:
        problems.append(
            f"data.resize_size: {resize} is smaller than data.image_size {size}: the center crop must fit in the "
            "resized image"
        )
    return problems


def _class_problems(cfg: Config) -> list[str]:
    classes = cfg.data.classes
    if not isinstance(classes, list):
        return []
    ints = all(isinstance(c, int) and not isinstance(c, bool) for c in classes)
    names = not ints and all(isinstance(c, str) for c in classes)
    if not (ints or names):
        return [f"data.classes: {classes} must be all class indices (integers) or all class names (strings)"]
    problems = []
    if len(classes) < 2:
        n = f"{len(classes)} class{'es' if len(classes) != 1 else ''}"
        problems.append(f"data.classes: {classes} names {n}; a classifier needs two or more")
    if len(set(classes)) != len(classes):
        problems.append(f"data.classes: {classes} has duplicates")
    if ints and any(c < 0 for c in classes):
        problems.append(f"data.classes: {classes} has negative class indices")
    if ints and cfg.data.dataset == "fashion_mnist" and any(c > 9 for c in classes):
        problems.append(f"data.classes: {classes}: Fashion-MNIST has classes 0..9")
    if names and cfg.data.dataset == "fake":
        problems.append(f"data.classes: {classes}: fake data has no class names; give indices, e.g. [0, 1]")
    if names and cfg.data.dataset == "fashion_mnist":
        known = {_name_key(c): c for c in FASHION_MNIST_CLASSES}
        unknown = [c for c in classes if _name_key(c) not in known]
        if unknown:
            problems.append(
                f"data.classes: {unknown} not among Fashion-MNIST's classes ({', '.join(FASHION_MNIST_CLASSES)})"
            )
    if isinstance(cfg.model.num_classes, int) and cfg.model.num_classes < len(classes):
        problems.append(
            f"model.num_classes: {cfg.model.num_classes} is fewer than the {len(classes)} classes in data.classes"
        )
    return problems


def _name_key(name: str) -> str:
    """Fashion-MNIST names match ignoring case and punctuation: sneaker, Ankle boot, t_shirt_top."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


def fashion_mnist_index(name: str) -> int:
    """The Fashion-MNIST class index of ``name`` (as :func:`_name_key` matches it); KeyError if none."""
    keys = [_name_key(c) for c in FASHION_MNIST_CLASSES]
    if _name_key(name) not in keys:
        raise KeyError(name)
    return keys.index(_name_key(name))


def _freeze_problems(cfg: Config) -> list[str]:
    # The rules' and events' own syntax was checked as the loader read them (freezetune.config.records).
    preset = cfg.freeze.preset
    problems = event_problems(preset, cfg.freeze.schedule, cfg.freeze.gradual, cfg.train.epochs)
    if (
        isinstance(preset, str)
        and preset not in _NAMED_PRESETS
        and not (preset.startswith("until:") and len(preset) > len("until:"))
    ):
        near = difflib.get_close_matches(preset, _NAMED_PRESETS, n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        problems.append(f"freeze.preset: {preset!r} is not one of {', '.join(PRESETS)}{hint}")
    problems.extend(_frozen_dtype_problems(cfg.freeze.frozen_dtype, cfg.train.precision))
    if preset != "auto" and cfg.freeze.auto != AutoFreezeConfig():
        problems.append(f"freeze.auto: only used with freeze.preset: auto (the preset is {preset!r})")
    if preset == "auto" and (cfg.freeze.schedule or cfg.freeze.gradual):
        problems.append("freeze.schedule: preset 'auto' decides the schedule itself; give no freeze.schedule events")
    return problems


def _frozen_dtype_problems(frozen: Any, precision: Any) -> list[str]:
    """Frozen weights in bf16/fp16 are only fed inputs of their dtype under autocast to it."""
    if frozen not in ("bf16", "fp16") or precision not in ("fp32", "bf16", "fp16") or frozen == precision:
        return []  # a value outside the choices is reported as such
    why = (
        f"the frozen layers would get fp32 inputs and {frozen} weights"
        if precision == "fp32"
        else f"autocast would cast the {frozen} weights to {precision} at every step"
    )
    return [
        f"freeze.frozen_dtype: {frozen} needs train.precision: {frozen}, and train.precision is {precision}: {why}. "
        f"HINT: train.precision: {frozen}, or freeze.frozen_dtype: fp32"
    ]


def event_problems(preset: Any, events: list[EventSpec] | None, gradual: Any, epochs: Any) -> list[str]:
    """What can be wrong with a schedule, its events already read (freezetune.config.records), without
    looking at a model. ``events``, ``gradual`` and ``epochs`` may be None (a type problem reported before)."""
    problems: list[str] = []
    gradual = gradual if isinstance(gradual, list) else []
    if preset == "gradual" and not gradual:
        problems.append("freeze.gradual: preset 'gradual' needs the groups to unfreeze, e.g. [layer4, layer3, layer2]")
    if gradual and preset != "gradual":
        problems.append(f"freeze.gradual: only used with freeze.preset: gradual (the preset is {preset!r})")
    if isinstance(epochs, int):
        for ev in events or []:
            if ev.epoch > epochs:
                problems.append(
                    f"{ev.origin}: epoch {ev.epoch} is past the last epoch (train.epochs is {epochs}): "
                    "it would never happen"
                )
        if preset == "gradual" and gradual and len(gradual) + 1 > epochs:
            problems.append(
                f"freeze.gradual: {len(gradual)} groups need {len(gradual) + 1} epochs (the head alone, then one group "
                f"per epoch); train.epochs is {epochs}"
            )
    return problems


LOGGERS = ("jsonl", "csv", "tensorboard")


def _train_problems(cfg: Config) -> list[str]:
    # train.param_groups' syntax was checked as the loader read them (freezetune.config.records).
    problems = []
    opt = cfg.train.optimizer
    if opt.nesterov is True and opt.name != "sgd":
        problems.append(f"train.optimizer.nesterov: only for sgd (the optimizer is {opt.name})")
    if opt.nesterov is True and opt.name == "sgd" and isinstance(opt.momentum, float) and opt.momentum == 0:
        problems.append("train.optimizer.nesterov: needs train.optimizer.momentum > 0")
    betas = opt.betas
    if isinstance(betas, list) and (len(betas) != 2 or any(isinstance(b, float) and not 0 <= b < 1 for b in betas)):
        problems.append(f"train.optimizer.betas: {betas} must be two numbers in [0, 1), e.g. [0.9, 0.999]")
    logs = cfg.train.log
    if isinstance(logs, list):
        unknown = [x for x in logs if x not in LOGGERS]
        if unknown:
            problems.append(f"train.log: {unknown} not among {', '.join(LOGGERS)}")
    sched = cfg.train.scheduler
    if sched.name == "onecycle" and isinstance(sched.warmup_epochs, float) and sched.warmup_epochs > 0:
        problems.append("train.scheduler.warmup_epochs: onecycle warms up by itself (train.scheduler.pct_start)")
    if sched.name == "onecycle" and isinstance(sched.pct_start, float) and sched.pct_start >= 1:
        problems.append(f"train.scheduler.pct_start: {sched.pct_start} must be < 1 (the share of steps spent rising)")
    if (
        isinstance(cfg.train.epochs, int)
        and isinstance(sched.warmup_epochs, float)
        and cfg.train.epochs >= 1
        and sched.warmup_epochs > cfg.train.epochs
    ):
        problems.append(
            f"train.scheduler.warmup_epochs: {sched.warmup_epochs} is longer than the run ({cfg.train.epochs} epochs)"
        )
    if sched.name == "cosine" and isinstance(sched.min_lr_scale, float) and sched.min_lr_scale > 1:
        problems.append(
            f"train.scheduler.min_lr_scale: {sched.min_lr_scale} must be <= 1 (a fraction of each group's LR)"
        )
    return problems
