"""The optimizer and its param groups, kept equal to the trainable set by identity.

Groups are made from each parameter's :class:`~freezetune.plan.groups.Setting` (LR
scale and weight decay) and, after an unfreeze event, the event's ``lr_scale``.
Parameters that join later get *new* groups (``add_trainable``), so groups that
already hold momentum or Adam moments are never rebuilt; parameters that freeze
later leave the optimizer with their state (``remove_frozen``). After every
change :func:`check_optimizer` proves that the optimizer holds exactly the
parameters that require grad, each once. Lightning compared parameters by
value and let duplicates in (#6879); here every check is by ``id``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from freezetune.config import OptimizerConfig
from freezetune.plan.groups import Setting

__all__ = ["add_trainable", "check_optimizer", "group_label", "group_table", "make_optimizer", "remove_frozen"]


def group_label(epoch: int, setting: Setting, event_scale: float) -> str:
    """A group's name: when it joined, why its LR is what it is, and the total scale."""
    why = [w for w in (setting.source, f"event x{event_scale:g}" if event_scale != 1.0 else "") if w]
    return f"epoch {epoch}: " + (", ".join(why) if why else "default") + f" (x{setting.lr_scale * event_scale:g})"


def _groups(
    named: list[tuple[str, nn.Parameter]],
    cfg: OptimizerConfig,
    settings: dict[str, Setting] | None,
    event_scales: dict[str, float] | None,
    epoch: int,
    factor: float,
) -> list[dict[str, Any]]:
    """One group per distinct (label, weight decay), in model order of first appearance."""
    groups: dict[tuple[str, float], dict[str, Any]] = {}
    for name, p in named:
        s = (settings or {}).get(name) or Setting(1.0, None, "")
        event = (event_scales or {}).get(name, 1.0)
        label = group_label(epoch, s, event)
        wd = cfg.weight_decay if s.weight_decay is None else s.weight_decay
        g = groups.get((label, wd))
        if g is None:
            base = cfg.lr * s.lr_scale * event
            g = groups[(label, wd)] = {
                "params": [],
                "names": [],
                "name": label,
                "lr_scale": s.lr_scale * event,
                "base_lr": base,
                "lr": base * factor,
                "weight_decay": wd,
            }
        g["params"].append(p)
        g["names"].append(name)
    return list(groups.values())


def make_optimizer(
    model: nn.Module,
    cfg: OptimizerConfig,
    settings: dict[str, Setting] | None = None,
    event_scales: dict[str, float] | None = None,
    epoch: int = 1,
    factor: float = 1.0,
) -> torch.optim.Optimizer:
    """An optimizer over exactly the parameters that require grad.

    Frozen parameters never enter it, so neither momentum nor weight decay can
    move them (weight decay alone would, if they were in it with a zero grad)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError("no parameter requires grad: nothing to optimize")
    groups = _groups(named, cfg, settings, event_scales, epoch, factor)
    if cfg.name == "sgd":
        return torch.optim.SGD(
            groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=cfg.weight_decay
        )
    # adam adds weight decay to the gradient (L2), adamw decays the weights directly (decoupled).
    kind = torch.optim.Adam if cfg.name == "adam" else torch.optim.AdamW
    return kind(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)


def add_trainable(
    optimizer: torch.optim.Optimizer,
    model: nn.Module,
    cfg: OptimizerConfig,
    settings: dict[str, Setting] | None,
    event_scales: dict[str, float] | None,
    epoch: int,
    factor: float,
) -> list[dict[str, Any]]:
    """Add every parameter that requires grad and is not yet in the optimizer, as new
    groups whose LR is already the schedule's value at this step; returns them."""
    held = {id(p) for g in optimizer.param_groups for p in g["params"]}
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad and id(p) not in held]
    new = _groups(named, cfg, settings, event_scales, epoch, factor) if named else []
    for g in new:
        optimizer.add_param_group(g)  # torch fills momentum, betas, ... from the defaults
    return new


def remove_frozen(optimizer: torch.optim.Optimizer) -> int:
    """Drop parameters that no longer require grad, with their state; returns how many."""
    removed = 0
    for g in optimizer.param_groups:
        keep = [i for i, p in enumerate(g["params"]) if p.requires_grad]
        for i in set(range(len(g["params"]))) - set(keep):
            optimizer.state.pop(g["params"][i], None)
            removed += 1
        g["params"] = [g["params"][i] for i in keep]
        if "names" in g:
            g["names"] = [g["names"][i] for i in keep]
    optimizer.param_groups[:] = [g for g in optimizer.param_groups if g["params"]]
    return removed


def check_optimizer(optimizer: torch.optim.Optimizer, model: nn.Module) -> None:
    """Raise unless the optimizer holds each trainable parameter exactly once, and nothing else."""
    held = [id(p) for g in optimizer.param_groups for p in g["params"]]
    wanted = {id(p) for p in model.parameters() if p.requires_grad}
    if len(held) != len(set(held)):
        raise RuntimeError("a parameter is in the optimizer twice")
    if set(held) != wanted:
        names = {id(p): n for n, p in model.named_parameters()}
        extra = [names.get(i, "?") for i in set(held) - wanted]
        missing = [names[i] for i in wanted - set(held)]
        raise RuntimeError(
            f"the optimizer does not hold exactly the trainable parameters: "
            f"frozen or foreign {extra[:5]}, missing {missing[:5]}"
        )


def group_table(optimizer: torch.optim.Optimizer) -> list[dict[str, Any]]:
    """Per group: its name, tensor count, base LR and current LR (for the run record)."""
    return [
        {
            "name": g.get("name", str(i)),
            "tensors": len(g["params"]),
            "params": sum(p.numel() for p in g["params"]),
            "base_lr": g.get("base_lr", g["lr"]),
            "lr": g["lr"],
            "weight_decay": g["weight_decay"],
        }
        for i, g in enumerate(optimizer.param_groups)
    ]
