"""Build a classification model and load pretrained weights into it.

``model.arch`` is a torchvision model, ``timm/<name>`` (timm.create_model) or an import
path ``module.sub:callable`` called as ``fn(num_classes=K, **model.kwargs)``. Weights come
from torchvision's weights API (downloaded once into the torch hub cache), timm's
pretrained weights (``DEFAULT`` with a timm arch: the Hugging Face hub cache), or a file
holding a raw ``state_dict`` or a freezetune checkpoint. Loading is strict except at the
head: a head whose shape differs from the checkpoint's (or that ``reset_head`` asks for)
is freshly initialised, and the report says so. Any other mismatch is an error, never a
silent skip.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torchvision.models as tvm

from freezetune.config import ConfigError, ModelConfig
from freezetune.models.adapters import adapter_configs, inject_adapters, merged_copy
from freezetune.models.arch import arch_kind, load_callable, timm_name, timm_pretrained_cfg, weights_kind
from freezetune.plan.rules import describe, find_head
from freezetune.record.checkpoint import is_delta, load_payload, read_checkpoint
from freezetune.utils import exception_line

__all__ = ["LoadReport", "build_model", "load_state_dict_file"]


@dataclass
class LoadReport:
    """Where the weights came from, which tensors were loaded, and which start fresh (the head)."""

    # "torchvision:ResNet18_Weights.IMAGENET1K_V1", "timm:timm/resnet18.a1_in1k", a file path, or None
    source: str | None
    loaded: list[str] = field(default_factory=list)  # state_dict keys copied from the source
    new: list[str] = field(default_factory=list)  # keys left at their fresh initialisation
    head: str = ""


def load_state_dict_file(path: str | Path, merge: bool = True) -> dict[str, torch.Tensor]:
    """A raw state_dict, the ``model`` entry of a freezetune checkpoint, or a delta
    checkpoint applied to the base weights it names (their hash checked).

    Args:
        merge: a checkpoint of a model with adapters (freeze.adapters) comes back merged, as the
            plain architecture's state_dict (what ``model.weights`` starts a new run from);
            ``False``: with its adapters, as trained (what a run's own model is rebuilt from)."""
    # weights_only=True: a checkpoint is data, never code to run.
    obj = read_checkpoint(path, "model.weights")
    if is_delta(obj):
        model = _materialize(obj, str(path))
        return merged_copy(model).state_dict() if merge and obj["delta"]["base"].get("adapters") else model.state_dict()
    adapters = _recorded_adapters(obj)
    if merge and adapters:
        return _merged_state(obj, adapters, str(path))
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConfigError([f"model.weights: {path} holds neither a state_dict nor a checkpoint with key 'model'"])
    return obj


def _recorded_adapters(obj: object) -> list:
    """The adapters a freezetune model file records in its config (none for a raw state_dict)."""
    if not isinstance(obj, dict) or not isinstance(obj.get("model"), dict) or not isinstance(obj.get("config"), dict):
        return []
    return list((obj["config"].get("freeze") or {}).get("adapters") or [])


def _merged_state(obj: dict, adapters: list, where: str) -> dict[str, torch.Tensor]:
    """A full model file of a run with adapters, rebuilt as trained and merged."""
    model, _ = build_model(ModelConfig(**{**obj["config"]["model"], "weights": None}), int(obj["num_classes"]))
    inject_adapters(model, adapter_configs(adapters))
    try:
        model.load_state_dict(obj["model"])
    except RuntimeError as exc:
        raise ConfigError(
            [f"model.weights: {where} does not fit its own config's model: {exception_line(exc)}"]
        ) from None
    return merged_copy(model).state_dict()


def _materialize(obj: dict, where: str) -> nn.Module:
    base = obj["delta"]["base"]
    weights = base["model"].get("weights")
    if weights_kind(base["model"]["arch"], weights) == "file" and not Path(weights).expanduser().is_file():
        raise ConfigError(
            [
                f"model.weights: {where} is a delta against the base weights {weights}, which are not there. "
                "HINT: put that file back, or use a model.pt saved with train.save: full"
            ]
        )
    if base["model"].get("weights") is None:  # a random base: rebuilt from the seed it was made with
        if "seed" not in base:
            raise ConfigError(
                [f"model.weights: {where} is a delta against random weights whose seed it does not record"]
            )
        torch.manual_seed(base["seed"])
    model, _ = build_model(ModelConfig(**base["model"]), base["num_classes"])
    # The adapters' own tensors are in the delta; only their places are rebuilt here.
    inject_adapters(model, adapter_configs(base.get("adapters") or []))
    load_payload(model, obj, where)  # raises BaseMismatch when the base is not the one trained from
    return model


def _source_state_dict(cfg: ModelConfig) -> tuple[dict[str, torch.Tensor] | None, str | None]:
    kind = weights_kind(cfg.arch, cfg.weights)
    if kind == "none":
        return None, None
    if kind == "torchvision":
        name = cfg.weights.split(".")[-1]  # type: ignore[union-attr]
        enum = tvm.get_model_weights(cfg.arch)
        weights = enum.DEFAULT if name == "DEFAULT" else enum[name]
        # get_state_dict uses torch.hub's cache: a second run needs no network.
        try:
            return weights.get_state_dict(progress=False, check_hash=True), f"torchvision:{weights}"
        except (OSError, RuntimeError) as exc:  # URLError is an OSError; a bad download fails its hash
            cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
            raise ConfigError(
                [
                    f"model.weights: {weights} is not in the torch hub cache ({cached}) and could not be downloaded "
                    f"({type(exc).__name__}: {str(exc)[:120]}). HINT: download {weights.url} where there is internet "
                    f"and put it at {cached}"
                ]
            ) from None
    if kind == "timm":
        return _timm_pretrained(cfg)
    path = Path(cfg.weights).expanduser()  # type: ignore[arg-type]
    if not path.is_file():
        nor = f" (nor a weights name of {cfg.arch})" if arch_kind(cfg.arch) == "torchvision" else ""
        raise ConfigError([f"model.weights: file not found: {path}{nor}"])
    return load_state_dict_file(path), str(path)


def _timm_pretrained(cfg: ModelConfig) -> tuple[dict[str, torch.Tensor], str]:
    """timm's pretrained weights for ``cfg.arch``, as the state_dict of the model timm builds
    with them (its own head size): timm adapts the file to its model (filter_fn) on the way."""
    name = timm_name(cfg.arch)
    pcfg = timm_pretrained_cfg(cfg.arch)
    overlay = cfg.kwargs.get("pretrained_cfg_overlay")
    local = overlay.get("file") if isinstance(overlay, dict) else None  # timm's way to read a file of its own
    source = f"timm:{local or (pcfg.hf_hub_id if pcfg is not None else None) or name}"
    # The architecture with these kwargs was built already: what fails here is fetching or reading the file.
    try:
        return _timm_create(cfg, pretrained=True).state_dict(), source
    except ConfigError:
        raise
    except Exception as exc:  # LocalEntryNotFoundError, URLError, HTTP errors, a bad file: all mean the same here
        raise ConfigError([_timm_download_problem(name, pcfg, exc)]) from None


def _timm_download_problem(name: str, pcfg: object, exc: Exception) -> str:
    hub_id = getattr(pcfg, "hf_hub_id", None)
    if hub_id:
        from huggingface_hub.constants import HF_HUB_CACHE  # timm's own dependency, imported with it

        cached = Path(HF_HUB_CACHE) / f"models--{hub_id.split('@')[0].replace('/', '--')}"
        where = f"({hub_id}) are not in the Hugging Face hub cache ({cached})"
        url = f"https://huggingface.co/{hub_id}/resolve/main/model.safetensors"
    else:
        url = getattr(pcfg, "url", "") or ""
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
        where = f"({url}) are not in the torch hub cache ({cached})"
    return (
        f"model.weights: DEFAULT for timm/{name}: its pretrained weights {where} and could not be downloaded "
        f"({exception_line(exc)}). HINT: where there is internet, run "
        f"python -c \"import timm; timm.create_model('{name}', pretrained=True)\" and copy {cached} to the same "
        f"place here; or download {url} and give model.kwargs: {{pretrained_cfg_overlay: {{file: <that file>}}}}"
    )


def _timm_create(cfg: ModelConfig, **extra: object) -> nn.Module:
    try:
        import timm  # optional, and slow to import: only for timm archs
    except ImportError:
        raise ConfigError(
            [f"model.arch: {cfg.arch} needs timm, which is not installed. HINT: pip install 'freezetune[timm]'"]
        ) from None
    name = timm_name(cfg.arch)
    if extra.get("pretrained"):
        return timm.create_model(name, **cfg.kwargs, **extra)  # the caller says what a failure means
    try:
        return timm.create_model(name, pretrained=False, **cfg.kwargs, **extra)
    except TypeError as exc:  # an argument the model's class does not take
        raise ConfigError([f"model.kwargs: timm/{name} does not take {cfg.kwargs}: {exception_line(exc)}"]) from None
    except Exception as exc:  # e.g. a kwarg value the model rejects (img_size not divisible by the patch size)
        key = "model.kwargs" if cfg.kwargs else "model.arch"
        raise ConfigError(
            [f"{key}: timm.create_model({name!r}, **{cfg.kwargs}) failed: {exception_line(exc)}"]
        ) from None


def _architecture(cfg: ModelConfig, num_classes: int) -> nn.Module:
    """The model ``cfg.arch`` names, with ``num_classes`` outputs and fresh weights."""
    kind = arch_kind(cfg.arch)
    if kind == "torchvision":
        return tvm.get_model(cfg.arch, weights=None, num_classes=num_classes)
    if kind == "timm":
        model = _timm_create(cfg, num_classes=num_classes)
        if isinstance(getattr(model, "get_classifier", lambda: None)(), tuple):
            raise ConfigError(
                [
                    f"model.arch: {cfg.arch} has two classifier heads (a distilled model: head and head_dist); "
                    "freezetune trains one. HINT: use the model without distillation (e.g. deit_tiny_patch16_224)"
                ]
            )
        return model
    fn = load_callable(cfg.arch)
    call = ", ".join([f"num_classes={num_classes}", *(f"{k}={v!r}" for k, v in cfg.kwargs.items())])
    try:
        model = fn(num_classes=num_classes, **cfg.kwargs)
    except Exception as exc:  # the user's code: one line with where it failed, not a traceback
        raise ConfigError([f"model.arch: {cfg.arch}({call}) raised {exception_line(exc)}"]) from None
    if not isinstance(model, nn.Module):
        raise ConfigError(
            [
                f"model.arch: {cfg.arch}({call}) returned {type(model).__name__}, not a torch.nn.Module. HINT: "
                "return the model itself (e.g. return MyNet(num_classes))"
            ]
        )
    return model


def build_model(cfg: ModelConfig, num_classes: int) -> tuple[nn.Module, LoadReport]:
    """The architecture with ``num_classes`` outputs, pretrained weights loaded."""
    model = _architecture(cfg, num_classes)
    source, name = _source_state_dict(cfg)
    head = find_head(describe(model))
    report = LoadReport(source=name, head=head)
    target = model.state_dict()
    if source is None:
        report.new = list(target)
        return model, report

    def in_head(key: str) -> bool:
        return key.startswith(head + ".")

    problems = []
    merged = {}
    for key, tensor in target.items():
        if key not in source:
            if not in_head(key):
                problems.append(f"{key}: missing from the checkpoint")
            report.new.append(key)
        elif in_head(key) and (cfg.reset_head or source[key].shape != tensor.shape):
            report.new.append(key)
        elif source[key].shape != tensor.shape:
            problems.append(f"{key}: checkpoint shape {tuple(source[key].shape)} != model shape {tuple(tensor.shape)}")
        else:
            merged[key] = source[key]
            report.loaded.append(key)
    unexpected = [k for k in source if k not in target]
    problems.extend(f"{k}: in the checkpoint but not in {cfg.arch}" for k in unexpected[:10])
    if problems:
        raise ConfigError([f"model.weights: {name} does not fit {cfg.arch}: {p}" for p in problems[:10]])
    model.load_state_dict(merged, strict=False)
    return model, report
