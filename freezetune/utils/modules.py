"""Helpers for live ``nn.Module`` objects that more than one layer needs."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn as nn

__all__ = ["eval_mode", "first_tensor", "train_mode"]


@contextmanager
def _mode(model: nn.Module, training: bool) -> Iterator[nn.Module]:
    was_training = model.training
    model.train(training)
    try:
        yield model
    finally:
        # train(mode) recurses through every child's own train(): modules pinned in
        # eval (freezetune.plan.apply) stay in eval either way.
        model.train(was_training)


def eval_mode(model: nn.Module) -> contextlib.AbstractContextManager[nn.Module]:
    """``with eval_mode(model):`` runs the block in eval mode, then restores the mode ``model`` had."""
    return _mode(model, False)


def train_mode(model: nn.Module) -> contextlib.AbstractContextManager[nn.Module]:
    """``with train_mode(model):`` runs the block in train mode, then restores the mode ``model`` had."""
    return _mode(model, True)


def first_tensor(obj: object) -> torch.Tensor | None:
    """The tensor a module returned, or the first one in a tuple or torchvision output."""
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, (tuple, list)):
        return next((t for t in map(first_tensor, obj) if t is not None), None)
    if hasattr(obj, "logits"):  # torchvision's InceptionOutputs / GoogLeNetOutputs
        return first_tensor(obj.logits)
    return None
