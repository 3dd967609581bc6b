"""Apply a :class:`FreezePlan` to a live model: ``requires_grad`` and module modes.

Kept apart from the planning logic so that the plan can be computed, printed and
tested without touching tensors.
"""

from __future__ import annotations

import functools

import torch.nn as nn

from freezetune.plan.rules import FreezePlan

__all__ = ["apply_plan", "is_pinned_eval", "pin_eval", "trainable_parameters", "unpin_eval"]

_PIN = "_freezetune_pinned_eval"


def _train_pinned(self: nn.Module, mode: bool = True, subtree: bool = True) -> nn.Module:
    # nn.Module.train() recurses by calling each child's own `train`, so this
    # instance-level override catches every model.train() from any trainer.
    if subtree:
        return nn.Module.train(self, False)
    nn.Module.train(self, mode)  # the children follow the call (and their own pins)
    self.training = False
    return self


def pin_eval(module: nn.Module, subtree: bool = True) -> None:
    """Put ``module`` in eval mode and keep it there through every ``train()`` call.

    ``subtree=False`` pins the module itself only: its children follow ``train()`` as
    usual, so a BatchNorm inside a frozen block can still follow its own policy."""
    # A partial of a module-level function, not a bound method: it pickles and deep-copies.
    module.train = functools.partial(_train_pinned, module, subtree=subtree)  # type: ignore[method-assign]
    setattr(module, _PIN, True)
    if subtree:
        nn.Module.train(module, False)
    else:
        module.training = False


def unpin_eval(module: nn.Module) -> None:
    """Undo :func:`pin_eval`; the module follows its parent's mode again."""
    if getattr(module, _PIN, False):
        del module.train
        delattr(module, _PIN)


def is_pinned_eval(module: nn.Module) -> bool:
    """Whether :func:`pin_eval` holds ``module`` in eval."""
    return bool(getattr(module, _PIN, False))


def apply_plan(model: nn.Module, plan: FreezePlan) -> None:
    """Set ``requires_grad`` per the plan and pin the plan's modules in eval: BatchNorm with its
    subtree, every other module (``freeze.frozen_modules: eval``) on its own."""
    wanted = {p.name: p.trainable for p in plan.params}
    params = dict(model.named_parameters())
    # Check before touching anything: a mismatched plan must not leave the model half-applied.
    extra, missing = sorted(set(params) - set(wanted)), sorted(set(wanted) - set(params))
    if extra or missing:
        raise ValueError(
            f"the plan was made for another model: not in the plan {extra[:5]}, not in the model {missing[:5]}"
        )
    for name, p in params.items():
        p.requires_grad_(wanted[name])
        if not wanted[name]:
            p.grad = None  # frozen mid-run: a stale gradient must not linger (nor be stepped on)
    bn, others = set(plan.bn_eval), set(plan.eval_modules)
    for name, module in model.named_modules():
        if name in bn:
            pin_eval(module)
        elif name in others:
            pin_eval(module, subtree=False)
        else:
            unpin_eval(module)


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """What the optimizer gets: exactly the parameters that require grad, in model order."""
    return [p for p in model.parameters() if p.requires_grad]
