"""Model and weights knowledge: how ``model.arch`` is built (torchvision, timm, or a callable of
the user's own), which weights names exist, loading the user's callable, and the checks of
``model.arch``, ``model.kwargs`` and ``model.weights`` that need torchvision, timm or the
user's module (freezetune.checks runs them with the config's own checks)."""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from freezetune.config import Config, ConfigError
from freezetune.utils import exception_line

__all__ = [
    "TIMM_PREFIX",
    "arch_kind",
    "classification_models",
    "load_callable",
    "model_problems",
    "timm_name",
    "timm_pretrained_cfg",
    "weight_names",
    "weights_kind",
]


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
    if name == "DEFAULT" or name in weight_names(arch):
        return "torchvision"
    return "file"


def weight_names(arch: str) -> list[str]:
    """The names of torchvision's weights for ``arch`` (IMAGENET1K_V1, ...); empty for none."""
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


def model_problems(cfg: Config) -> list[str]:
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
            names = ["DEFAULT", *weight_names(arch)]
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
