"""Apply a :class:`FreezePlan` to a live model: ``requires_grad``, module modes and the
dtype frozen parameters are stored in (``freeze.frozen_dtype``).

Kept apart from the planning logic so that the plan can be computed, printed and
tested without touching tensors.
"""

from __future__ import annotations

import functools
import logging

import torch
import torch.nn as nn

from freezetune.plan.rules import FreezePlan
from freezetune.utils.precision import dtype_of

__all__ = [
    "NORM_TYPES",
    "apply_plan",
    "is_pinned_eval",
    "norm_parameters",
    "pin_eval",
    "set_dtype",
    "stored_dtypes",
    "trainable_parameters",
    "unpin_eval",
]

log = logging.getLogger(__name__)

_PIN = "_freezetune_pinned_eval"

# Normalisation layers keep fp32 parameters whatever freeze.frozen_dtype says. On CPU,
# batch_norm, layer_norm and group_norm refuse bf16 weights next to an fp32 input ("mixed
# dtype (CPU): expect parameter to have scalar type of Float"), autocast or not, and an fp32
# input reaches them wherever an fp32 parameter is added first (ViT's pos_embedding, a
# residual); with fp32 weights they take bf16 and fp32 inputs alike. They are a few KiB, and
# their statistics are buffers, which are never cast.
NORM_TYPES: tuple[type[nn.Module], ...] = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)
_FP32_FAMILY = (torch.float32, torch.bfloat16, torch.float16)  # what frozen_dtype casts between
_LOW = (torch.bfloat16, torch.float16)


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


def apply_plan(model: nn.Module, plan: FreezePlan, frozen_dtype: str | torch.dtype | None = None) -> None:
    """Set ``requires_grad`` per the plan and pin the plan's modules in eval: BatchNorm with its
    subtree, every other module (``freeze.frozen_modules: eval``) on its own.

    Args:
        frozen_dtype: ``freeze.frozen_dtype``: store each parameter as :func:`stored_dtypes` says
            (frozen ones in it, trainable ones up-cast to fp32 before they join an optimizer);
            ``None`` leaves every dtype as it is (a plan applied for a look, as ``plan`` does)."""
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
    bn, others = set(plan.pinned_bn), set(plan.pinned_other)
    for name, module in model.named_modules():
        if name in bn:
            pin_eval(module)
        elif name in others:
            pin_eval(module, subtree=False)
        else:
            unpin_eval(module)
    if frozen_dtype is not None:
        _store(model, stored_dtypes(model, plan, frozen_dtype))


def norm_parameters(model: nn.Module) -> set[str]:
    """Names of the parameters that normalisation layers (:data:`NORM_TYPES`) own directly."""
    return {
        f"{m}.{n}" if m else n
        for m, module in model.named_modules()
        if isinstance(module, NORM_TYPES)
        for n, _ in module.named_parameters(recurse=False)
    }


def stored_dtypes(model: nn.Module, plan: FreezePlan, frozen_dtype: str | torch.dtype) -> dict[str, torch.dtype]:
    """The dtype each parameter is kept in under ``plan``: frozen ones in ``frozen_dtype``, but
    those of normalisation layers in fp32; trainable ones in fp32 (an optimizer keeps fp32
    master weights). A parameter outside fp32/bf16/fp16 (float64, say) keeps its own dtype."""
    low = dtype_of(frozen_dtype) if isinstance(frozen_dtype, str) else frozen_dtype
    frozen, norm = set(plan.frozen), norm_parameters(model)
    out = {}
    for name, p in model.named_parameters():
        if p.dtype not in _FP32_FAMILY:
            out[name] = p.dtype
        elif name in frozen and name not in norm and low in _LOW:
            out[name] = low
        else:
            out[name] = torch.float32
    return out


def set_dtype(model: nn.Module, name: str, dtype: torch.dtype) -> None:
    """Store parameter or buffer ``name`` (a state_dict key) in ``dtype``, in place: a parameter
    stays the same ``nn.Parameter`` object (optimizers and the plan know it by identity)."""
    owner, _, attr = name.rpartition(".")
    module = model.get_submodule(owner)
    if attr in module._parameters:
        p = module._parameters[attr]
        if p is not None and p.dtype != dtype:
            p.data = p.data.to(dtype)
    elif attr in module._buffers:
        b = module._buffers[attr]
        if b is not None and b.dtype != dtype:
            module._buffers[attr] = b.to(dtype)
    else:
        raise KeyError(f"{name}: no such parameter or buffer")


def _store(model: nn.Module, dtypes: dict[str, torch.dtype]) -> None:
    moved: dict[tuple[torch.dtype, torch.dtype], list[str]] = {}
    for name, p in model.named_parameters():
        if p.dtype != dtypes[name]:
            moved.setdefault((p.dtype, dtypes[name]), []).append(name)
            p.data = p.data.to(dtypes[name])  # .data: the same Parameter object, for the optimizer's identity checks
    for (was, now), names in moved.items():
        was_name, now_name = str(was).removeprefix("torch."), str(now).removeprefix("torch.")
        if now == torch.float32:  # an unfreeze: the weight it froze with, rounded to `was`, exactly in fp32
            more = ", ..." if len(names) > 3 else ""
            log.info(
                "frozen_dtype: %d tensor(s) up-cast from %s to float32 to train (%s%s)",
                len(names),
                was_name,
                ", ".join(names[:3]),
                more,
            )
        else:
            log.info("frozen_dtype: %d frozen tensor(s) stored in %s", len(names), now_name)


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """What the optimizer gets: exactly the parameters that require grad, in model order."""
    return [p for p in model.parameters() if p.requires_grad]
