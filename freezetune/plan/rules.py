"""Freezing rules -> freezing plan, as pure functions over a model's *names*.

Nothing here touches a tensor. A model is described once by :func:`describe`
(module names in registration order, their classes and their direct
parameters); rules (parsed by freezetune.config.records) and presets are
resolved against that description into a :class:`FreezePlan`. Applying a plan
to a live model is freezetune.plan.apply.

Rule forms (a list of one-key mappings, the last matching rule wins):

* ``{freeze: P}`` / ``{unfreeze: P}``: P is a parameter name, a module name
  (the module and everything under it) or a glob over parameter names.
* ``{freeze_type: T}`` / ``{unfreeze_type: T}``: every module whose class, or a
  base class, is named T (``BatchNorm2d``, ``_BatchNorm``, ``Linear``).
* ``{until: M}``: freeze every parameter registered before module M, i.e.
  before M's first parameter in ``model.named_parameters()`` order.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch.nn as nn

from freezetune.config.records import PRESETS, Rule
from freezetune.utils.errors import UserError

# peft keeps an adapted layer's own tensors under <layer>.base_layer (freezetune.plan.adapters).
ADAPTED_BASE = "base_layer"

__all__ = [
    "ADAPTED_BASE",
    "FreezeError",
    "FreezePlan",
    "ModelTree",
    "ModuleInfo",
    "ParamDecision",
    "build_plan",
    "describe",
    "find_head",
    "match_rule",
    "plan_from_config",
    "preset_rules",
    "stage_of",
    "suggest_names",
    "unmatched",
]

_GLOB_CHARS = set("*?[")


class FreezeError(UserError, ValueError):
    """The rules cannot produce a usable plan; ``problems`` holds one line each."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        if len(self.problems) == 1:  # one line, as the command prints every single mistake
            super().__init__(f"freezing plan rejected: {self.problems[0]}")
            return
        super().__init__("freezing plan rejected:\n" + "\n".join(f"  - {p}" for p in self.problems))


@dataclass(frozen=True)
class ModuleInfo:
    """One module of a model, by name: its class (with bases) and the parameters it owns."""

    name: str  # "" is the root module
    type_names: tuple[str, ...]  # the class name, then its bases (MRO order)
    params: tuple[str, ...]  # full names of the parameters it owns directly

    @property
    def type_name(self) -> str:
        """The module's own class name."""
        return self.type_names[0]

    @property
    def is_batchnorm(self) -> bool:
        """BatchNorm1d/2d/3d or SyncBatchNorm: running statistics that train mode updates."""
        return "_BatchNorm" in self.type_names  # BatchNorm1d/2d/3d, SyncBatchNorm


def stage_of(param: str) -> str:
    """The stage (top-level module) parameter ``param`` belongs to; "" for one the root owns."""
    return param.split(".")[0] if "." in param else ""


@dataclass(frozen=True)
class ModelTree:
    """Names only: modules in ``named_modules()`` order, parameters with sizes."""

    modules: tuple[ModuleInfo, ...]
    numel: dict[str, int] = field(hash=False)
    # The module the model names as its classifier (timm's get_classifier()), when it names one.
    head: str | None = None

    @property
    def param_names(self) -> list[str]:
        """Every parameter name, in ``named_parameters()`` order."""
        # named_parameters() walks modules in this same pre-order, own params first.
        return [p for m in self.modules for p in m.params]

    @property
    def stages(self) -> list[str]:
        """The model's stages: its top-level modules that own parameters, in registration order.
        Layer decay counts them back from the head (freezetune.plan.groups); auto freezes a
        prefix of them (freezetune.plan.auto)."""
        return list(dict.fromkeys(s for s in map(stage_of, self.param_names) if s))

    def module(self, name: str) -> ModuleInfo | None:
        """The module called ``name`` (```` is the root), or None."""
        return next((m for m in self.modules if m.name == name), None)


@dataclass(frozen=True)
class ParamDecision:
    """One parameter's fate in a plan, and the rule that decided it."""

    name: str
    numel: int
    trainable: bool
    decided_by: str | None  # the last matching rule, None when no rule matched


@dataclass(frozen=True)
class FreezePlan:
    """Which parameters train, and which modules stay in eval: the whole decision."""

    params: tuple[ParamDecision, ...]
    pinned_bn: tuple[str, ...]  # pinned: BatchNorm modules kept in eval mode (their running statistics fixed)
    batchnorm: str
    rules: tuple[Rule, ...]
    # Other pinned modules (freeze.frozen_modules: eval): frozen ones, and parameter-free
    # ones (Dropout, stochastic depth) inside a frozen module or feeding one.
    pinned_other: tuple[str, ...] = ()
    frozen_modules: str = "train"
    # freeze.adapters resolved (freezetune.plan.adapters.AdapterPlan): their rules are among `rules`.
    adapters: tuple = ()

    @property
    def pinned(self) -> tuple[str, ...]:
        """Every module the plan keeps in eval, BatchNorm or not, in model order of the two lists."""
        return (*self.pinned_bn, *self.pinned_other)

    @property
    def trainable(self) -> list[str]:
        """Names of the parameters that train, in model order."""
        return [p.name for p in self.params if p.trainable]

    @property
    def frozen(self) -> list[str]:
        """Names of the frozen parameters (``requires_grad=False``), in model order."""
        return [p.name for p in self.params if not p.trainable]

    @property
    def numel_trainable(self) -> int:
        """Elements in trainable parameters."""
        return sum(p.numel for p in self.params if p.trainable)

    @property
    def numel_total(self) -> int:
        """Elements in all parameters."""
        return sum(p.numel for p in self.params)

    def is_trainable(self, name: str) -> bool:
        """Whether parameter ``name`` trains; KeyError for a name the plan does not have."""
        for p in self.params:
            if p.name == name:
                return p.trainable
        raise KeyError(f"{name!r} is not a parameter of this plan")

    def to_json(self) -> dict:
        """The plan as ``freeze_plan.json`` stores it."""
        return {
            "batchnorm": self.batchnorm,
            "rules": [{"rule": str(r), "origin": r.origin} for r in self.rules],
            "parameters": [
                {"name": p.name, "numel": p.numel, "trainable": p.trainable, "decided_by": p.decided_by}
                for p in self.params
            ],
            "pinned_bn": list(self.pinned_bn),
            "frozen_modules": self.frozen_modules,
            "pinned_other": list(self.pinned_other),
            **({"adapters": [a.to_json() for a in self.adapters]} if self.adapters else {}),
        }


# --------------------------------------------------------------------------- model -> names


def describe(model: nn.Module) -> ModelTree:
    """The names-only view of ``model`` that every planning function works on."""
    modules = []
    numel: dict[str, int] = {}
    seen: set[int] = set()
    for name, module in model.named_modules():
        owned = []
        for pname, p in module.named_parameters(recurse=False):
            if id(p) in seen:  # tied weights: named_parameters() reports the first owner only
                continue
            seen.add(id(p))
            full = f"{name}.{pname}" if name else pname
            owned.append(full)
            numel[full] = p.numel()
        types_ = tuple(c.__name__ for c in type(module).__mro__ if c not in (nn.Module, object))
        modules.append(ModuleInfo(name, types_ or ("Module",), tuple(owned)))
    return ModelTree(tuple(modules), numel, _named_classifier(model))


def _named_classifier(model: nn.Module) -> str | None:
    """The name of the module ``model.get_classifier()`` returns (timm's convention), if it is
    one module of ``model`` with parameters. timm knows its heads better than the last-Linear
    rule: an MLP head (``head.fc``, not ``head.fc.fc2``) or a head holding two (repvit's ``head``)."""
    get = getattr(model, "get_classifier", None)
    if not callable(get):
        return None
    try:
        head = get()
    except Exception:  # a user's method of that name that wants arguments, or fails: use the rule
        return None
    if not isinstance(head, nn.Module) or next(head.parameters(), None) is None:
        return None  # a pair of heads (timm's distilled models), nn.Identity, None
    return next((name for name, m in model.named_modules() if m is head and name), None)


def find_head(tree: ModelTree) -> str:
    """The classification head: the module the model's ``get_classifier()`` returns (timm),
    else the last ``Linear`` that owns parameters (``fc``, ``classifier.3``, ``heads.head``),
    else the last ``Conv2d`` (squeezenet)."""
    if tree.head is not None:
        return tree.head
    for wanted in ("Linear", "Conv2d"):
        for m in reversed(tree.modules):
            if wanted in m.type_names and m.params:  # subclasses of Linear count too
                return m.name
    raise FreezeError(
        [
            "no Linear or Conv2d layer with parameters: cannot tell which module is the head. HINT: end the "
            "model in an nn.Linear (the last one with parameters is the head), or give it a get_classifier() "
            "method that returns the head module, as timm's models have"
        ]
    )


# --------------------------------------------------------------------------- rules


def preset_rules(preset: str | None, tree: ModelTree) -> list[Rule]:
    """The rules a preset stands for; they run before the user's own rules."""
    if preset in (None, "full", "auto"):
        return []  # auto starts from the config's own rules and freezes at run time (freezetune.plan.auto)
    origin = f"preset {preset}"
    if preset in ("linear_probe", "gradual"):
        # gradual starts as a linear probe; freezetune.schedule unfreezes the rest epoch by epoch.
        return [Rule("freeze", "*", origin), Rule("unfreeze", find_head(tree), origin)]
    if preset == "bitfit":
        # BitFit (Ben Zaken et al. 2021): biases only; we also train the norm
        # layers' affine parameters and the new head, as practitioners do.
        return [
            Rule("freeze", "*", origin),
            Rule("unfreeze", "*bias", origin, optional=True),
            Rule("unfreeze_type", "_BatchNorm", origin, optional=True),
            Rule("unfreeze_type", "LayerNorm", origin, optional=True),
            Rule("unfreeze", find_head(tree), origin),
        ]
    if preset.startswith("until:") and preset[len("until:") :]:
        return [Rule("until", preset[len("until:") :], origin)]
    raise FreezeError([f"freeze.preset: unknown preset {preset!r}; valid: {', '.join(PRESETS)}"])


def _under(name: str, module: str) -> bool:
    return module == "" or name == module or name.startswith(module + ".")


def match_rule(rule: Rule, tree: ModelTree) -> list[str]:
    """The parameter names a rule selects (in model order)."""
    names = tree.param_names
    if rule.kind in ("freeze", "unfreeze"):
        t = rule.target
        is_module = tree.module(t) is not None
        is_glob = bool(_GLOB_CHARS & set(t))
        return [n for n in names if (is_module and _under(n, t)) or n == t or (is_glob and fnmatch.fnmatchcase(n, t))]
    if rule.kind in ("freeze_type", "unfreeze_type"):
        roots = [m.name for m in tree.modules if rule.target in m.type_names]
        return [n for n in names if any(_under(n, r) for r in roots)]
    # until: everything owned by modules that come before M in pre-order.
    before: list[str] = []
    for m in tree.modules:
        if m.name == rule.target:
            return before
        before.extend(m.params)
    return []


def suggest_names(rule: Rule, tree: ModelTree) -> str:
    """``; nearest names: a, b`` for a rule that matched nothing (empty when none is near)."""
    if rule.kind.endswith("_type"):
        pool = sorted({t for m in tree.modules for t in m.type_names})
    elif rule.kind == "until":
        pool = [m.name for m in tree.modules if m.name]
    else:
        pool = [m.name for m in tree.modules if m.name] + tree.param_names
    near = difflib.get_close_matches(rule.target, pool, n=3, cutoff=0.5)
    return f"; nearest names: {', '.join(near)}" if near else ""


def _moved_by_adapter(rule: Rule, tree: ModelTree) -> str | None:
    """The problem with a rule naming an adapted layer's weight by its name before the adapter:
    peft keeps the layer's own tensors under ``<layer>.base_layer``, so ``layer4.0.conv1.weight``
    is ``layer4.0.conv1.base_layer.weight`` once the layer has an adapter."""
    if rule.kind.endswith("_type") or rule.kind == "until":
        return None
    part = f".{ADAPTED_BASE}."
    moved = {n.replace(part, "."): n for n in tree.param_names if part in n}
    old = next((o for o in moved if o == rule.target or fnmatch.fnmatchcase(o, rule.target)), None)
    if old is None:
        return None
    layer = old.rsplit(".", 1)[0]
    return (
        f"{rule.origin} {rule}: {layer} has an adapter (freeze.adapters), so its own weight is {moved[old]}, "
        f"frozen beside the adapter. HINT: to train {layer} whole, leave it out of freeze.adapters' modules"
    )


def unmatched(rule: Rule, tree: ModelTree) -> str:
    """The problem with a rule (or schedule event) that selects no parameter, and what is near."""
    if rule.kind == "until" and tree.module(rule.target) is not None:
        return f"{rule.origin} {rule}: nothing is registered before {rule.target!r}"
    if rule.kind.endswith("_type") and any(rule.target in m.type_names for m in tree.modules):
        return f"{rule.origin} {rule}: modules of class {rule.target} exist but hold no parameters"
    return _moved_by_adapter(rule, tree) or f"{rule.origin} {rule}: matches no parameter{suggest_names(rule, tree)}"


def build_plan(
    tree: ModelTree, rules: list[Rule], batchnorm: str = "eval", frozen_modules: str = "train"
) -> FreezePlan:
    """Resolve ordered rules into a plan. Every parameter starts trainable.

    Args:
        batchnorm: ``eval`` pins BatchNorm whose parameters are all frozen, ``eval_all`` every
            BatchNorm (its affine parameters may still train), ``train`` none.
        frozen_modules: ``eval`` pins every other frozen module in eval too (Dropout and stochastic
            depth off where nothing trains), ``train`` leaves them to the trainer.
    """
    problems = []
    decided: dict[str, tuple[bool, str | None]] = {n: (True, None) for n in tree.param_names}
    for rule in rules:
        hits = match_rule(rule, tree)
        if hits and rule.origin.startswith("freeze.rules") and all(decided[n][0] != rule.freezes for n in hits):
            # As a schedule event that changes nothing is an error: the rule says something the plan ignores.
            state = "frozen" if rule.freezes else "trainable"
            problems.append(
                f"{rule.origin} {rule}: changes nothing: all {len(hits)} parameter tensors it matches are already "
                f"{state} at this point (rules apply in order, after the preset's)"
            )
        if not hits and not rule.optional:
            problems.append(unmatched(rule, tree))
        for n in hits:
            decided[n] = (not rule.freezes, f"{rule.origin} {rule}")
    if not problems and not any(trainable for trainable, _ in decided.values()):
        problems.append(
            "the plan leaves no parameter trainable, so backward() would fail with "
            "'element 0 of tensors does not require grad and does not have a grad_fn'. "
            f"HINT: unfreeze the head, e.g. add {{unfreeze: {_head_or_last(tree)}}}"
        )
    if problems:
        raise FreezeError(problems)
    params = tuple(ParamDecision(n, tree.numel[n], *decided[n]) for n in tree.param_names)
    trainable = {n: t for n, (t, _) in decided.items()}
    if batchnorm == "eval_all":
        pinned_bn = tuple(m.name for m in tree.modules if m.is_batchnorm)
    else:
        pinned_bn = _batchnorm_to_pin(tree, trainable) if batchnorm == "eval" else ()
    pinned_other = _frozen_modules_to_pin(tree, trainable) if frozen_modules == "eval" else ()
    return FreezePlan(params, pinned_bn, batchnorm, tuple(rules), pinned_other, frozen_modules)


def _params_under(tree: ModelTree) -> dict[str, list[str]]:
    """Each module's parameters, its submodules' included, in model order: each parameter is
    added to every module above it (linear, where asking each module about each parameter took
    a tenth of a second per plan on resnet18)."""
    under: dict[str, list[str]] = {m.name: [] for m in tree.modules}
    for n in tree.param_names:
        parts = n.split(".")
        for depth in range(len(parts)):
            owner = ".".join(parts[:depth])
            if owner in under:
                under[owner].append(n)
    return under


def _frozen_modules_to_pin(tree: ModelTree, trainable: dict[str, bool]) -> tuple[str, ...]:
    """Modules other than BatchNorm (the batchnorm policy decides those) that stay in eval.

    A module with parameters is pinned when all of them are frozen. A parameter-free module
    (Dropout, StochasticDepth, ReLU) is pinned when its nearest enclosing module with
    parameters is all frozen, or when the next parameter after it in registration order is
    frozen: it feeds the frozen part (ViT's ``encoder.dropout``). A head's Dropout feeds the
    trainable head, so it keeps training, as a regulariser of what trains."""
    under = _params_under(tree)
    next_param: dict[str, str | None] = {}
    upcoming = None
    for m in reversed(tree.modules):  # the first parameter registered after each module
        next_param[m.name] = upcoming
        if m.params:
            upcoming = m.params[0]
    pinned = []
    for m in tree.modules:
        if m.is_batchnorm or not m.name:
            continue
        if under[m.name]:
            if not any(trainable[p] for p in under[m.name]):
                pinned.append(m.name)
            continue
        parts = m.name.split(".")
        enclosing = next(
            (under[a] for a in (".".join(parts[:d]) for d in range(len(parts) - 1, 0, -1)) if under[a]), []
        )
        nxt = next_param[m.name]
        if (enclosing and not any(trainable[p] for p in enclosing)) or (nxt is not None and not trainable[nxt]):
            pinned.append(m.name)
    return tuple(pinned)


def _batchnorm_to_pin(tree: ModelTree, trainable: dict[str, bool]) -> tuple[str, ...]:
    """BatchNorm modules whose running statistics must stay fixed.

    A BatchNorm with affine parameters is pinned when all of them are frozen:
    its statistics are part of what "frozen" promises. One without parameters
    (affine=False) follows the nearest enclosing module that has any: pinned
    when everything in it is frozen."""
    names = tree.param_names
    pinned = []
    for m in tree.modules:
        if not m.is_batchnorm:
            continue
        if m.params:
            if not any(trainable[p] for p in m.params):
                pinned.append(m.name)
            continue
        parts = m.name.split(".")
        for depth in range(len(parts) - 1, 0, -1):
            under = [n for n in names if _under(n, ".".join(parts[:depth]))]
            if under:
                if not any(trainable[n] for n in under):
                    pinned.append(m.name)
                break
    return tuple(pinned)


def _head_or_last(tree: ModelTree) -> str:
    try:
        return find_head(tree)
    except FreezeError:
        return tree.param_names[-1] if tree.param_names else "<module>"


def plan_from_config(
    tree: ModelTree, preset: str | None, rules: Sequence[Rule], batchnorm: str, frozen_modules: str = "train"
) -> FreezePlan:
    """Preset rules, then the config's rules (``freeze.rules`` as the config loader read them),
    resolved into a plan (arguments as :func:`build_plan`)."""
    return build_plan(tree, preset_rules(preset, tree) + list(rules), batchnorm, frozen_modules)
