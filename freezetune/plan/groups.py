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

from collections.abc import Sequence
from dataclasses import dataclass

from freezetune.config.records import GroupRule, Rule
from freezetune.plan.rules import ModelTree, find_head, match_rule, stage_of, suggest_names

__all__ = ["Setting", "assign_settings", "stage_depths"]


@dataclass(frozen=True)
class Setting:
    """One parameter's learning-rate scale and weight decay, and why."""

    lr_scale: float  # layer decay times the matching group's scale (events not included)
    weight_decay: float | None
    source: str  # why: "layer_decay^2, train.param_groups[0]", or "" for the defaults


def stage_depths(tree: ModelTree) -> dict[str, int]:
    """Each parameter's distance, in stages (top-level modules), from the stage holding the head."""
    stages = tree.stages
    head_stage = find_head(tree).split(".")[0]
    head_at = stages.index(head_stage) if head_stage in stages else len(stages) - 1
    deepest = head_at + 1  # parameters the root owns ("" stage: ViT's class token)
    depths = {}
    for name in tree.param_names:
        stage = stage_of(name)
        depths[name] = max(head_at - stages.index(stage), 0) if stage else deepest
    return depths


def assign_settings(
    tree: ModelTree, groups: Sequence[GroupRule], layer_decay: float | None
) -> tuple[dict[str, Setting], list[str]]:
    """Every parameter's :class:`Setting` from ``train.param_groups`` (as the config loader read
    them) and ``train.layer_decay``; returns (settings, problems: a group that matches nothing)."""
    problems: list[str] = []
    depths = stage_depths(tree) if layer_decay is not None else {}
    chosen: dict[str, GroupRule] = {}
    for rule in groups:
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
