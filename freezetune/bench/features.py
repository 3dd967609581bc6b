"""What the head of a classifier sees: the features entering it in training and in evaluation
mode, and the BatchNorm modes behind any difference. ``freezetune benchmark --peer`` measures both
frameworks' linear probes with it (docs/lightning.md); torch only, so either side may import it."""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["bn_state", "head_input_norms"]


@torch.no_grad()
def head_input_norms(model: nn.Module, head: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """The mean L2 norm of what enters ``head`` for the batch ``x``, with ``model`` in the mode
    training leaves it in (as given) and in eval mode, and the relative difference between the two
    (on copies: a BatchNorm in train mode would otherwise update its statistics)."""
    seen: list[torch.Tensor] = []

    def features(m: nn.Module, mode: str) -> torch.Tensor:
        copy_ = copy.deepcopy(m)
        if mode == "eval":
            copy_.eval()
        target = dict(m.named_modules())
        name = next(n for n, mod in target.items() if mod is head)
        hook = copy_.get_submodule(name).register_forward_pre_hook(lambda _m, args: seen.append(args[0].flatten(1)))
        copy_(x)
        hook.remove()
        return seen.pop()

    train, evaluated = features(model, "train"), features(model, "eval")
    return {
        "train": train.norm(dim=1).mean().item(),
        "eval": evaluated.norm(dim=1).mean().item(),
        "relative_difference": ((train - evaluated).norm() / evaluated.norm()).item(),
    }


def bn_state(model: nn.Module) -> dict[str, int]:
    """How many BatchNorm modules there are, track running statistics, and are in training mode."""
    bns = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    return {
        "modules": len(bns),
        "track_running_stats": sum(m.track_running_stats for m in bns),
        "training": sum(m.training for m in bns),
    }
