"""``freeze.adapters`` resolved against a model's names: which layers get a low-rank adapter,
and the freezing rules that follow (each adapted layer's own weights frozen, its adapter
trained), as pure functions over a :class:`ModelTree`.

The same resolution holds before the adapters are injected (the layers are plain ``Linear``
and ``Conv2d``) and after (peft's LoRA layers, whose own weights moved to ``<layer>.base_layer``
and whose adapter is ``<layer>.lora_A`` and ``<layer>.lora_B``): freezetune.models.adapters
injects what this module selects, and the plan then sees the adapters' parameters by name."""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from freezetune.config.records import Rule
from freezetune.config.schema import AdapterConfig
from freezetune.plan.rules import ADAPTED_BASE, FreezeError, ModelTree, ModuleInfo, find_head

__all__ = [
    "ADAPTABLE_TYPES",
    "ADAPTER_PARTS",
    "AdapterPlan",
    "adapter_rules",
    "resolve_adapters",
]

ADAPTABLE_TYPES = ("Linear", "Conv2d")  # what peft's LoRA adds to here (and what the docs promise)
ADAPTER_PARTS = ("lora_A", "lora_B")  # peft's names for an adapted layer's trained parts
_LORA_LAYER = "LoraLayer"  # the base class of every layer peft has given an adapter
_MHA = "MultiheadAttention"
_GLOB_CHARS = set("*?[")


@dataclass(frozen=True)
class AdapterPlan:
    """One ``freeze.adapters`` entry resolved: the layers it adapts and what that adds."""

    origin: str  # "freeze.adapters[0]"
    selectors: tuple[str, ...]  # the entry's modules, as written
    kind: str
    rank: int
    alpha: float
    dropout: float
    layers: tuple[str, ...]  # the adapted layers' module names, in model order
    numel: int  # parameters the adapters add (0 before they are injected)

    def to_json(self) -> dict[str, Any]:
        """As ``freeze_plan.json``'s ``adapters`` lists it."""
        return {
            "origin": self.origin,
            "modules": list(self.selectors),
            "kind": self.kind,
            "rank": self.rank,
            "alpha": self.alpha,
            "dropout": self.dropout,
            "layers": list(self.layers),
            "params": self.numel,
        }


def _under(name: str, root: str) -> bool:
    return root == "" or name == root or name.startswith(root + ".")


def _is_adapted(m: ModuleInfo) -> bool:
    return _LORA_LAYER in m.type_names


def _adaptable(m: ModuleInfo) -> bool:
    return _is_adapted(m) or (bool(m.params) and any(t in m.type_names for t in ADAPTABLE_TYPES))


def _roots(selector: str, tree: ModelTree) -> list[str]:
    """The modules ``selector`` names: a module name, a glob over module or parameter names
    (a parameter selects the module that owns it), or a class name."""
    if tree.module(selector) is not None:
        return [selector]
    owner = [m.name for m in tree.modules if selector in m.params]
    if owner:
        return owner
    if _GLOB_CHARS & set(selector):
        return [
            m.name
            for m in tree.modules
            if m.name
            and (fnmatch.fnmatchcase(m.name, selector) or any(fnmatch.fnmatchcase(p, selector) for p in m.params))
        ]
    return [m.name for m in tree.modules if selector in m.type_names]


def _select(selector: str, where: str, tree: ModelTree, head: str, problems: list[str]) -> list[str]:
    """The layers ``selector`` adapts, in model order; its problem noted when there are none."""
    roots = _roots(selector, tree)
    if not roots:
        pool = [m.name for m in tree.modules if m.name] + sorted({t for m in tree.modules for t in m.type_names})
        near = difflib.get_close_matches(selector, pool, n=3, cutoff=0.5)
        hint = f"; nearest names: {', '.join(near)}" if near else ""
        problems.append(f"{where} {selector!r}: matches no module{hint}")
        return []
    attention = [m.name for m in tree.modules if _MHA in m.type_names]
    inside = [a for a in attention if any(_under(r, a) for r in roots)]
    if inside:
        problems.append(
            f"{where} {selector!r}: {inside[0]} is torch's nn.MultiheadAttention, whose forward reads "
            "in_proj_weight and out_proj.weight itself (F.multi_head_attention_forward), so an adapter there would "
            "never run. HINT: adapt the block's MLP, or the whole block (its attention is then left as it is)"
        )
        return []
    layers, covered = [], []
    for m in tree.modules:
        if not any(_under(m.name, r) for r in roots) or any(_under(m.name, c) for c in covered):
            continue
        if _under(m.name, head) or any(_under(m.name, a) for a in attention) or not _adaptable(m):
            continue
        layers.append(m.name)
        covered.append(m.name)  # an adapted layer's own parts (lora_A, lora_B) are no layers to adapt
    if not layers:
        only_head = all(_under(r, head) for r in roots)
        why = (
            f"selects only the head ({head}), which trains whole already"
            if only_head
            else f"holds no {' or '.join(ADAPTABLE_TYPES)} layer to adapt (outside the head {head})"
        )
        problems.append(f"{where} {selector!r}: {why}. HINT: name frozen layers that hold them, e.g. modules: layer4")
    return layers


def resolve_adapters(tree: ModelTree, adapters: Sequence[AdapterConfig]) -> tuple[AdapterPlan, ...]:
    """Each ``freeze.adapters`` entry as the layers it adapts (never the head, which trains
    whole, nor torch's MultiheadAttention, which would bypass them).

    Raises:
        FreezeError: one line per selector that matches no module or no adaptable layer, and per
            layer two entries both adapt.
    """
    problems: list[str] = []
    plans, owner = [], {}
    head = find_head(tree) if adapters else ""
    for i, entry in enumerate(adapters):
        origin = f"freeze.adapters[{i}]"
        layers: list[str] = []
        for selector in entry.selectors:
            layers.extend(n for n in _select(selector, f"{origin}.modules", tree, head, problems) if n not in layers)
        for name in layers:
            if name in owner:
                problems.append(
                    f"{origin}: {name} is adapted by {owner[name]} already; an adapted layer has one adapter"
                )
            owner.setdefault(name, origin)
        order = {m.name: k for k, m in enumerate(tree.modules)}
        layers.sort(key=order.__getitem__)
        added = sum(
            tree.numel[p]
            for p in tree.param_names
            if any(_under(p, f"{n}.{part}") for n in layers for part in ADAPTER_PARTS)
        )
        plans.append(
            AdapterPlan(
                origin, tuple(entry.selectors), entry.kind, entry.rank, entry.alpha, entry.dropout, tuple(layers), added
            )
        )
    if problems:
        raise FreezeError(problems)
    return tuple(plans)


def adapter_rules(plans: Sequence[AdapterPlan]) -> list[Rule]:
    """The rules adapters stand for, applied after the preset's and ``freeze.rules``: each
    adapted layer's own weights frozen, its adapter trainable (the tree must hold them injected)."""
    rules = []
    for plan in plans:
        for layer in plan.layers:
            rules.append(Rule("freeze", f"{layer}.{ADAPTED_BASE}", plan.origin))
            rules.extend(Rule("unfreeze", f"{layer}.{part}", plan.origin) for part in ADAPTER_PARTS)
    return rules
