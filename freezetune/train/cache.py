"""Frozen-prefix feature cache: pay for a frozen prefix once, not every epoch.

When the frozen part of a network is a prefix, its output for a given image
never changes, so it can be computed once and reused. The model is split with
torch.fx at the *frontier*: the one value that the frozen prefix hands to the
first node that touches a trainable parameter. ``prefix`` and ``suffix`` are
GraphModules over the model's own submodules (no copies), so training the
suffix trains the model.

Caching is only valid when the prefix is deterministic: its BatchNorm pinned
in eval (``freeze.batchnorm: eval``), no dropout in it, and no random
augmentation in the training transform. Caching implies the prefix runs in eval
mode, exactly as freezing already puts it."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, TensorDataset
from torchvision.ops import stochastic_depth

from freezetune.measure.timing import device_clock
from freezetune.plan.apply import is_pinned_eval
from freezetune.utils.modules import eval_mode, first_tensor

__all__ = [
    "CacheRefused",
    "FeatureCache",
    "Split",
    "build_cache",
    "cached_loaders",
    "check_split",
    "prefix_problem",
    "split_model",
]

log = logging.getLogger(__name__)

_RANDOM_MODULES = (
    "Dropout",
    "Dropout1d",
    "Dropout2d",
    "Dropout3d",
    "AlphaDropout",
    "FeatureAlphaDropout",
    "StochasticDepth",
)


_MODE_FUNCTIONS = {
    F.dropout,
    F.dropout1d,
    F.dropout2d,
    F.dropout3d,
    F.alpha_dropout,
    F.feature_alpha_dropout,
    F.batch_norm,
    stochastic_depth,
}


class CacheRefused(Exception):
    """The feature cache cannot be used; the message says why."""


@dataclass
class Split:
    """A model cut in two at its frozen prefix's output."""

    frontier: str  # the fx node whose output is cached
    first_trainable: str  # the first node that touches a trainable parameter
    prefix: fx.GraphModule
    suffix: fx.GraphModule


def _touches_trainable(node: fx.Node, modules: dict[str, nn.Module], params: dict[str, nn.Parameter]) -> bool:
    if node.op == "call_module":
        return any(p.requires_grad for p in modules[node.target].parameters())
    if node.op == "get_attr":
        p = params.get(node.target)
        return p is not None and p.requires_grad
    return False


def split_model(model: nn.Module) -> Split:
    """Cut ``model`` after its frozen prefix; raise :class:`CacheRefused` when it cannot be cut."""
    try:
        traced = fx.symbolic_trace(model)
    except Exception as exc:  # fx raises many kinds on data-dependent control flow
        raise CacheRefused(f"torch.fx cannot trace {type(model).__name__} ({type(exc).__name__}: {exc})") from None
    nodes = list(traced.graph.nodes)
    baked = next((n for n in nodes if n.op == "call_function" and n.target in _MODE_FUNCTIONS), None)
    if baked is not None:
        # symbolic_trace records `self.training` as a constant: this graph would keep
        # the mode it was traced in, and train differently from the model.
        raise CacheRefused(
            f"torch.fx fixed the train/eval mode of '{baked.name}' ({baked.target.__name__}) at trace time"
        )
    index = {n: i for i, n in enumerate(nodes)}
    modules, params = dict(model.named_modules()), dict(model.named_parameters())
    k = next((i for i, n in enumerate(nodes) if _touches_trainable(n, modules, params)), None)
    if k is None:
        raise CacheRefused("no node touches a trainable parameter")
    if all(n.op == "placeholder" for n in nodes[:k]):
        raise CacheRefused(f"the first layer ({nodes[k].target}) is trainable: there is no frozen prefix")
    live = [n for n in nodes[:k] if any(index[u] >= k for u in n.users)]
    if len(live) != 1 or live[0].op == "placeholder":
        names = ", ".join(n.name for n in live)
        raise CacheRefused(f"the frozen prefix hands {len(live)} values ({names}) to the trainable part, not one")
    frontier = live[0]

    prefix_graph, env = fx.Graph(), {}
    for n in nodes[:k]:
        env[n] = prefix_graph.node_copy(n, lambda a: env[a])
    prefix_graph.output(env[frontier])
    suffix_graph = fx.Graph()
    env = {frontier: suffix_graph.placeholder("features")}
    for n in nodes[k:]:
        env[n] = suffix_graph.node_copy(n, lambda a: env[a])
    # GraphModule(root, graph) refers to root's submodules, it does not copy them.
    return Split(frontier.name, nodes[k].name, fx.GraphModule(model, prefix_graph), fx.GraphModule(model, suffix_graph))


def prefix_problem(model: nn.Module, split: Split, augment: bool) -> str | None:
    """Why the prefix's output could change between epochs, or None."""
    if augment:
        return "the training transform has random augmentation (data.augment: true): each epoch sees other images"
    modules = dict(model.named_modules())
    for n in split.prefix.graph.nodes:
        if n.op != "call_module":
            continue
        m = modules[n.target]
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not is_pinned_eval(m):
            return (
                f"BatchNorm '{n.target}' in the frozen prefix trains (freeze.batchnorm: train): "
                "its output depends on the batch"
            )
        if type(m).__name__ in _RANDOM_MODULES and m.training:
            return f"'{n.target}' ({type(m).__name__}) in the frozen prefix is random in train mode"
    return None


@torch.no_grad()
def check_split(model: nn.Module, split: Split, x: torch.Tensor) -> float:
    """Max |suffix(prefix(x)) - model(x)| on a real batch, in eval mode; refuse if not tight."""
    with eval_mode(model):
        whole = first_tensor(model(x))
        parts = first_tensor(split.suffix(split.prefix(x)))
    if whole is None or parts is None or whole.shape != parts.shape:
        raise CacheRefused("the split model's output does not have the model's shape")
    diff = (whole - parts).abs().max().item()
    if not torch.allclose(whole, parts, rtol=1e-5, atol=1e-6):
        raise CacheRefused(f"suffix(prefix(x)) differs from model(x) by up to {diff:.3g}")
    return diff


@dataclass
class FeatureCache:
    """The prefix's output for every training and validation image, with the labels."""

    train: TensorDataset
    val: TensorDataset
    bytes: int
    storage: str  # "memory" or "memmap"
    build_s: float

    def to_json(self) -> dict:
        """As summary.json's ``cache`` keeps it."""
        return {
            "bytes": self.bytes,
            "storage": self.storage,
            "build_s": self.build_s,
            "train_shape": list(self.train.tensors[0].shape),
            "val_shape": list(self.val.tensors[0].shape),
        }


def _features(prefix: nn.Module, ds: Dataset, batch: int, device: torch.device, budget: int, path: Path) -> tuple:
    loader = DataLoader(ds, batch_size=batch, shuffle=False)
    out = labels = None
    mapped = False
    start = 0
    for x, y in loader:
        f = prefix(x.to(device)).to("cpu")
        if out is None:
            shape = (len(ds), *f.shape[1:])  # type: ignore[arg-type]
            nbytes = int(np.prod(shape)) * f.element_size()
            if nbytes <= budget:
                out = torch.empty(shape, dtype=f.dtype)
            else:  # beyond the memory budget: a file in the run folder, paged in by the OS
                mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape)
                out, mapped = torch.from_numpy(mm), True
            labels = torch.empty(len(ds), dtype=torch.long)  # type: ignore[arg-type]
        out[start : start + f.shape[0]] = f
        labels[start : start + f.shape[0]] = y
        start += f.shape[0]
    return out, labels, mapped


@torch.inference_mode()
def build_cache(
    model: nn.Module,
    split: Split,
    train_ds: Dataset,
    val_ds: Dataset,
    batch: int,
    device: torch.device,
    max_bytes: int,
    folder: Path,
) -> FeatureCache:
    """Run the prefix once over both datasets, in eval mode, with no autograd state."""
    start = device_clock(device)
    with eval_mode(model):
        tx, ty, t_mapped = _features(split.prefix, train_ds, batch, device, max_bytes, folder / "cache_train.npy")
        left = max_bytes - (0 if t_mapped else tx.numel() * tx.element_size())
        vx, vy, v_mapped = _features(split.prefix, val_ds, batch, device, left, folder / "cache_val.npy")
    build_s = device_clock(device) - start
    total = sum(t.numel() * t.element_size() for t in (tx, ty, vx, vy))
    storage = "memmap" if t_mapped or v_mapped else "memory"
    return FeatureCache(TensorDataset(tx, ty), TensorDataset(vx, vy), total, storage, build_s)


def cached_loaders(cache: FeatureCache, batch: int, generator: torch.Generator) -> tuple[DataLoader, DataLoader]:
    """Loaders over the cached features, shuffled exactly as build_loaders shuffles the images:
    same dataset length, same batch size, and the image loader's own generator."""
    return (
        DataLoader(cache.train, batch_size=batch, shuffle=True, generator=generator),
        DataLoader(cache.val, batch_size=batch, shuffle=False),
    )
