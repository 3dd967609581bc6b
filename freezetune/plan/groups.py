"""Discriminative learning rates: each parameter's LR scale and weight decay, as pure
functions over names (the optimizer is built from them in freezetune.train.optim).

A parameter's learning rate is ``lr * layer_decay**depth * group.lr_scale *
event.lr_scale``: the factors multiply, so each can be read on its own.

* ``train.layer_decay: F``: ``depth`` counts top-level modules back from the one
  holding the head (resnet18: fc 0, layer4 1, ..., bn1 5, conv1 6). Parameters
  owned by the root itself (ViT's class token) count as the deepest.
* ``train.param_groups``: ``{match: P, lr_scale: F, weight_decay: W}``; P as in
  freezing rules (module, parameter name or glob); when several match, the last wins.
* an unfreeze event's ``lr_scale`` (freezetune.plan.schedule).
"""

from __future__ import annotations

from dataclasses import dataclass

from freezetune.config.records import GroupRule, Rule, parse_param_groups
from freezetune.plan.rules import ModelTree, find_head, match_rule, suggest_names

__all__ = ["Setting", "assign_settings", "stage_depths"]


@dataclass(frozen=True)
class Setting:
    """One parameter's learning-rate scale and weight decay, and why."""

    lr_scale: float  # layer decay times the matching group's scale (events not included)
    weight_decay: float | None
    source: str  # why: "layer_decay^2, train.param_groups[0]", or "" for the defaults


def stage_depths(tree: ModelTree) -> dict[str, int]:
    """Each parameter's distance, in top-level modules, from the module holding the head."""
    stages: list[str] = []  # top-level modules that hold parameters, in registration order
    stage_of: dict[str, str] = {}
    for name in tree.param_names:
        top = name.split(".")[0] if "." in name else ""  # "" = owned by the root
        if top and top not in stages:
            stages.append(top)
        stage_of[name] = top
    head_top = find_head(tree).split(".")[0]
    head_at = stages.index(head_top) if head_top in stages else len(stages) - 1
    deepest = head_at + 1
    return {n: (max(head_at - stages.index(s), 0) if s else deepest) for n, s in stage_of.items()}


def assign_settings(
    tree: ModelTree, raw_groups: list, layer_decay: float | None
) -> tuple[dict[str, Setting], list[str]]:
    """Every parameter's :class:`Setting`; returns (settings, problems)."""
    rules, problems = parse_param_groups(raw_groups)
    depths = stage_depths(tree) if layer_decay is not None else {}
    chosen: dict[str, GroupRule] = {}
    for rule in rules:
        hits = match_rule(Rule("freeze", rule.match, rule.origin), tree)
        if not hits:
            near = suggest_names(Rule("freeze", rule.match, rule.origin), tree)
            problems.append(f"{rule.origin}: match {rule.match!r} matches no parameter{near}")
        chosen.update(dict.fromkeys(hits, rule))
    settings = {}
    for name in tree.param_names:
        scale, why = 1.0, []
        if layer_decay is not None:
            scale *= layer_decay ** depths[name]
            why.append(f"layer_decay^{depths[name]}")
        rule = chosen.get(name)
        if rule is not None:
            scale *= rule.lr_scale
            why.append(rule.origin)
        settings[name] = Setting(scale, rule.weight_decay if rule else None, ", ".join(why))
    return settings, problems
