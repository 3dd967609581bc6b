"""Low-rank adapters (``freeze.adapters``) in a live model, by peft: injected beside the layers
freezetune.plan.adapters selects, folded into their weights (merged), and written in peft's own
format for peft users.

peft's ``inject_adapter_in_model`` adds LoRA to any ``nn.Module`` in place, without wrapping
it: the module names the plan, the rules and the feature cache use stay as they are; an adapted
layer's own weights move to ``<layer>.base_layer`` beside its ``lora_A`` and ``lora_B``. peft
(with transformers) takes seconds to import, so it is imported here, on first use, and only
for configs with adapters."""

from __future__ import annotations

import copy
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from freezetune.config import AdapterConfig, ConfigError
from freezetune.plan.adapters import ADAPTER_PARTS, AdapterPlan, resolve_adapters
from freezetune.plan.rules import describe
from freezetune.utils.files import write_files

__all__ = [
    "PEFT_CONFIG",
    "PEFT_WEIGHTS",
    "adapter_configs",
    "has_adapters",
    "inject_adapters",
    "merged_copy",
    "write_peft",
]

PEFT_CONFIG = "adapter_config.json"  # peft's file names: PeftModel.from_pretrained(model, folder) reads both
PEFT_WEIGHTS = "adapter_model.safetensors"
_ADAPTER = "default"  # peft's adapter name; one set of adapters per model


def _peft() -> Any:
    try:
        import peft
    except ImportError:
        raise ConfigError(
            ["freeze.adapters: needs peft, which is not installed. HINT: pip install 'freezetune[lora]'"]
        ) from None
    return peft


def adapter_configs(raw: Sequence[Any]) -> list[AdapterConfig]:
    """``freeze.adapters`` as a resolved config (or a checkpoint's record of one) holds it:
    AdapterConfigs, or the mappings ``to_dict`` wrote."""
    return [a if isinstance(a, AdapterConfig) else AdapterConfig(**a) for a in raw]


def _lora_config(plans: Sequence[AdapterPlan], modules_to_save: Sequence[str] = ()) -> Any:
    """One peft LoraConfig for every entry: the first entry's rank and alpha, the others' per layer."""
    dropouts = {p.dropout for p in plans}
    if len(dropouts) > 1:
        raise ConfigError(
            [
                f"freeze.adapters: dropout differs between entries ({', '.join(map(str, sorted(dropouts)))}); "
                "peft's LoraConfig has one lora_dropout. HINT: give every entry the same dropout"
            ]
        )
    first = plans[0]
    layers = [n for p in plans for n in p.layers]
    # Exact names, anchored: peft matches a string target as a full regex, a list by name suffix.
    exact = lambda name: re.escape(name)  # noqa: E731
    rank = {exact(n): p.rank for p in plans[1:] for n in p.layers if p.rank != first.rank}
    alpha = {exact(n): p.alpha for p in plans[1:] for n in p.layers if p.alpha != first.alpha}
    return _peft().LoraConfig(
        r=first.rank,
        lora_alpha=first.alpha,
        lora_dropout=first.dropout,
        target_modules="^(?:" + "|".join(map(exact, layers)) + ")$",
        rank_pattern=rank,
        alpha_pattern=alpha,
        modules_to_save=list(modules_to_save) or None,
    )


def inject_adapters(model: nn.Module, adapters: Sequence[AdapterConfig]) -> tuple[AdapterPlan, ...]:
    """Add ``adapters`` to ``model`` in place (nothing when there are none); returns them resolved.

    peft initialises each ``lora_B`` to zero, so the adapted model computes what the model did
    before, and ``lora_A`` from torch's generator (seeded by the caller).

    Raises:
        FreezeError: a selector matches no module or no adaptable layer (freezetune.plan.adapters).
        ConfigError: peft is not installed, or the entries cannot share one LoraConfig.
    """
    if not adapters:
        return ()
    plans = resolve_adapters(describe(model), adapters)
    config = _lora_config(plans)
    # inject_adapter_in_model also switches requires_grad off outside the adapters; the plan,
    # applied next (freezetune.plan.apply), decides every parameter anyway.
    _peft().inject_adapter_in_model(config, model, adapter_name=_ADAPTER)
    return resolve_adapters(describe(model), adapters)  # now with the parameters they added


def has_adapters(model: nn.Module) -> bool:
    """Whether ``model`` holds peft adapters (names only: no peft import for a model without)."""
    return any(name.split(".")[-1] in ADAPTER_PARTS for name, _ in model.named_modules())


def _adapted_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if any(p in m._modules for p in ADAPTER_PARTS)]


@torch.no_grad()
def merged_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with each adapter folded into its layer's weight (W + scale * B.A,
    in fp32) and the layer put back as it was: the plain architecture, its names as before
    the adapters came (``layer4.0.conv1.weight``). ``model`` itself is left as it is."""
    merged = copy.deepcopy(model).float()
    for name, layer in _adapted_layers(merged):
        layer.merge(safe_merge=True)  # safe_merge: a non-finite sum is an error, not a silent NaN weight
        parent, _, child = name.rpartition(".")
        setattr(merged.get_submodule(parent) if parent else merged, child, layer.get_base_layer())
    _forget_peft(merged)
    return merged


def _base_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` without its adapters (the adapted layers' own weights as they are)."""
    base = copy.deepcopy(model)
    for name, layer in _adapted_layers(base):
        parent, _, child = name.rpartition(".")
        setattr(base.get_submodule(parent) if parent else base, child, layer.get_base_layer())
    _forget_peft(base)
    return base


def _forget_peft(model: nn.Module) -> None:
    # inject_adapter_in_model leaves its LoraConfig on the model (peft_config); a model without
    # adapters must not carry it (peft would take a new PeftModel over it for a second adapter).
    if "peft_config" in vars(model):
        delattr(model, "peft_config")


def write_peft(
    model: nn.Module, adapters: Sequence[AdapterConfig], modules_to_save: Sequence[str], folder: Path
) -> list[Path]:
    """``adapter_config.json`` and ``adapter_model.safetensors`` in ``folder``: the adapters in
    peft's own format, with ``modules_to_save`` (the head, and any other module whose tensors
    trained) whole, so that ``PeftModel.from_pretrained(base_model, folder)`` is the trained model.
    Written by peft itself, from a PeftModel over a copy of ``model`` holding its trained tensors."""
    peft = _peft()
    plans = resolve_adapters(describe(model), adapters)
    base = _base_copy(model).float()
    wrapped = peft.get_peft_model(base, _lora_config(plans, modules_to_save), adapter_name=_ADAPTER)
    ours = {n: t for n, t in model.state_dict().items() if any(f".{part}." in n for part in ADAPTER_PARTS)}
    for module in modules_to_save:
        ours.update({f"{module}.{k}": t for k, t in model.get_submodule(module).state_dict().items()})
    peft.set_peft_model_state_dict(wrapped, _peft_keys(ours), adapter_name=_ADAPTER)
    # peft writes the files itself, in place and with safetensors' private mode (0600): it saves to
    # a scratch folder, and freezetune's one writer puts both files in ``folder`` whole or not at
    # all, readable as every other file of the run. The model card template peft adds there ("More
    # information needed") is not ours to fill in; docs/adapters.md says how to load the two files.
    with tempfile.TemporaryDirectory(prefix="freezetune-peft-") as scratch:
        wrapped.save_pretrained(scratch, safe_serialization=True)
        files = {folder / name: (Path(scratch) / name).read_bytes() for name in (PEFT_CONFIG, PEFT_WEIGHTS)}
    write_files(files, make_folders=True)
    return list(files)


def _peft_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # set_peft_model_state_dict takes the names save_pretrained writes: the adapter's name left
    # out of its tensors' names, "base_model.model." before every name.
    out = {}
    for name, tensor in state.items():
        plain = name.replace(f".{_ADAPTER}.", ".")
        out[f"base_model.model.{plain}"] = tensor.float()
    return out
