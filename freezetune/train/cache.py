"""Frozen-prefix feature cache: pay for a frozen prefix once, not every epoch.

When the frozen part of a network is a prefix, its output for a given image
never changes, so it can be computed once and reused. The model is split with
torch.fx at the *frontier*: the one value the frozen prefix hands to the first
operation that trains, is random in train mode (a head's Dropout) or depends on
the batch (BatchNorm in train mode); those run in the suffix. ``prefix`` and ``suffix`` are
GraphModules over the model's own submodules (no copies), so training the
suffix trains the model.

The prefix is deterministic by construction (frozen modules are pinned in eval by
``freeze.frozen_modules: eval``; Dropout with p = 0 is the same in both modes);
random augmentation of the input still rules the cache out.

The prefix runs as a training step runs the network (:class:`Compute`: the same autocast
precision and input memory format), and its output is stored in the dtype it comes out in
(bf16 under ``train.precision: bf16``: half the bytes), so the suffix sees bitwise the
features an uncached step computes."""

from __future__ import annotations

import contextlib
import inspect
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, TensorDataset
from torchvision.ops import StochasticDepth, stochastic_depth

from freezetune.measure.timing import device_clock
from freezetune.plan.adapters import ADAPTER_PARTS
from freezetune.plan.apply import is_pinned_eval
from freezetune.utils.errors import RunFault
from freezetune.utils.modules import eval_mode, first_tensor
from freezetune.utils.precision import autocast

__all__ = [
    "CacheRefused",
    "CheckedSplit",
    "Compute",
    "FeatureCache",
    "Split",
    "build_cache",
    "cached_loaders",
    "check_and_time_split",
    "check_split",
    "in_order",
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


class CacheRefused(RunFault):
    """The feature cache cannot be used; the message says why in plain words, and the fix."""


@dataclass
class Split:
    """A model cut in two at its frozen prefix's output."""

    frontier: str  # the fx node whose output is cached
    first_trainable: str  # the first node that trains, is random, or depends on the batch
    prefix: fx.GraphModule
    suffix: fx.GraphModule


class _Tracer(fx.Tracer):
    """torch.fx's tracer, keeping torchvision's StochasticDepth a module: traced through, it
    would become a call of ``stochastic_depth`` with ``self.training`` fixed at trace time.
    A layer with a low-rank adapter (freeze.adapters) stays one module too: peft's forward
    branches on its own state, which fx cannot trace, and the layer trains or not as a whole."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        adapted = any(part in m._modules for part in ADAPTER_PARTS)
        return adapted or isinstance(m, StochasticDepth) or super().is_leaf_module(m, module_qualified_name)


def _trains_or_varies(node: fx.Node, modules: dict[str, nn.Module], params: dict[str, nn.Parameter]) -> str | None:
    """Why this node's output can change from one epoch to the next for one image, or None:
    it touches a trainable parameter, is random in train mode (Dropout, stochastic depth with
    p > 0 and not pinned in eval), or depends on the batch (BatchNorm in train mode)."""
    if node.op == "get_attr":
        p = params.get(node.target)
        return "trainable" if p is not None and p.requires_grad else None
    if node.op != "call_module":
        return None
    m = modules[node.target]
    if any(p.requires_grad for p in m.parameters()):
        return "trainable"
    if is_pinned_eval(m):
        return None
    if type(m).__name__ in _RANDOM_MODULES and getattr(m, "p", 1.0) > 0:
        return "random in train mode"
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        return "BatchNorm in train mode (freeze.batchnorm: train)"
    return None


def _baked_mode(node: fx.Node) -> bool:
    """A function call whose train/eval switch torch.fx fixed at trace time, and that matters."""
    if node.op != "call_function":
        return False
    name = getattr(node.target, "__name__", "")
    if node.target in _MODE_FUNCTIONS:
        if node.target is F.batch_norm:
            return True
        p = node.kwargs.get("p", node.args[1] if len(node.args) > 1 else 0.5)
        return not (isinstance(p, (int, float)) and p == 0)  # p = 0: the same in both modes
    if name == "shifted_window_attention":  # swin: dropout inside a function torchvision wraps for fx
        return any(node.kwargs.get(k, 0.0) != 0 for k in ("dropout", "attention_dropout"))
    return False


def _defaulted_inputs(model: nn.Module) -> dict[str, Any]:
    """The forward's arguments after the images that have defaults, at those defaults: freezetune
    calls a model with the images alone, so they are constants. Traced as inputs, they would be
    values the frozen part hands on beside its output (timm's ViT: ``attn_mask=None``,
    ``is_causal=False``), and no cut would end in one tensor."""
    try:
        params = list(inspect.signature(model.forward).parameters.values())[1:]
    except (TypeError, ValueError):  # a forward without a readable signature: traced as it is
        return {}
    return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}


def split_model(model: nn.Module) -> Split:
    """Cut ``model`` after its frozen prefix: the last value before the first operation that
    trains, is random in train mode or depends on the batch. Raise :class:`CacheRefused`
    when there is no such prefix or it does not end in one tensor."""
    try:
        traced = fx.GraphModule(model, _Tracer().trace(model, concrete_args=_defaulted_inputs(model)))
    except Exception as exc:  # fx raises many kinds on data-dependent control flow
        raise CacheRefused(
            f"torch.fx cannot trace {type(model).__name__} ({type(exc).__name__}: {exc}), so it cannot be cut "
            "into a cached prefix and the rest"
        ) from None
    nodes = list(traced.graph.nodes)
    baked = next((n for n in nodes if _baked_mode(n)), None)
    if baked is not None:
        # A graph that keeps the mode it was traced in would train differently from the model.
        raise CacheRefused(
            f"'{baked.name}' calls {baked.target.__name__} with its train/eval switch fixed when torch.fx traced the "
            "model, so a cut graph would not switch modes. HINT: train.cache_features: off"
        )
    index = {n: i for i, n in enumerate(nodes)}
    modules, params = dict(model.named_modules()), dict(model.named_parameters())
    why = [_trains_or_varies(n, modules, params) for n in nodes]
    k = next((i for i, w in enumerate(why) if w), None)
    if k is None:
        raise CacheRefused("no layer trains")
    if all(n.op == "placeholder" for n in nodes[:k]):
        first = nodes[k].target
        if why[k] == "trainable":
            raise CacheRefused(f"the first layer ({first}) trains: there is no frozen prefix to cache")
        raise CacheRefused(
            f"the first layer ({first}) is {why[k]}, so nothing before it can be stored once. "
            "HINT: freeze.frozen_modules: eval keeps frozen layers deterministic"
        )
    # The latest cut at or before k that hands one value on: DenseNet's first trainable layer
    # reads a concatenation of the frozen output, which is then moved to the suffix.
    for cut in range(k, 0, -1):
        live = [n for n in nodes[:cut] if any(index[u] >= cut for u in n.users)]
        if len(live) == 1 and live[0].op != "placeholder":
            k, frontier = cut, live[0]
            break
    else:
        live = [n for n in nodes[:k] if any(index[u] >= k for u in n.users)]
        names = ", ".join(n.name for n in live)
        raise CacheRefused(
            f"the frozen part hands {len(live)} values ({names}) to the part that trains, not one tensor. "
            "HINT: an until: rule that ends at a stage boundary"
        )

    prefix_graph, env = fx.Graph(), {}
    for n in nodes[:k]:
        env[n] = prefix_graph.node_copy(n, lambda a: env[a])
    prefix_graph.output(env[frontier])
    suffix_graph = fx.Graph()
    env = {frontier: suffix_graph.placeholder("features")}
    for n in nodes[k:]:
        env[n] = suffix_graph.node_copy(n, lambda a: env[a])
    # GraphModule(root, graph) refers to root's submodules, it does not copy them: modules in
    # the suffix switch between train and eval with the model.
    return Split(frontier.name, nodes[k].name, fx.GraphModule(model, prefix_graph), fx.GraphModule(model, suffix_graph))


def prefix_problem(augment: str | None) -> str | None:
    """Why the prefix's output would differ from one epoch to the next for reasons outside the
    model (the graph cut already stops before anything random or batch-dependent), or None."""
    if augment not in (None, "none"):
        return (
            f"data.augment: {augment} gives every epoch other versions of each image, so a frozen prefix's output "
            "cannot be stored once. HINT: data.augment: none to use the cache"
        )
    return None


@dataclass(frozen=True)
class Compute:
    """How a training step runs the network: on ``device``, under autocast to ``precision``
    (``train.precision``), with 4-D inputs in channels-last memory format when
    ``channels_last`` (``train.channels_last``). The prefix runs the same way when the
    cache is built: autocast and memory format change the bits of a convolution's output."""

    device: torch.device
    precision: str = "fp32"
    channels_last: bool = False

    def input(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` on the device in the step's memory format (channels-last needs 4-D)."""
        memory = torch.channels_last if self.channels_last and x.dim() == 4 else torch.contiguous_format
        return x.to(self.device, memory_format=memory)

    def autocast(self) -> contextlib.AbstractContextManager:
        """The step's autocast context (a no-op in fp32)."""
        return autocast(self.device, self.precision)


# How close suffix(prefix(x)) must be to model(x): the same operations on the same input give the
# same bits, so these only absorb a backend that picks another kernel for the cut graph. Low-precision
# outputs get torch.testing's tolerances for their dtype.
_TOLERANCE = {torch.bfloat16: (1.6e-2, 1e-5), torch.float16: (1e-3, 1e-5)}


def check_split(model: nn.Module, split: Split, x: torch.Tensor, compute: Compute | None = None) -> float:
    """Max |suffix(prefix(x)) - model(x)| on a real batch, in eval mode, run as ``compute``
    says (the run's precision and memory format; default: fp32 on ``x``'s device); refuse if
    not tight."""
    return check_and_time_split(model, split, x, compute).max_abs_diff


@dataclass(frozen=True)
class CheckedSplit:
    """What :func:`check_and_time_split` found: the cut's largest difference from the model,
    the prefix's output for the batch, and the seconds of each timed prefix forward."""

    max_abs_diff: float
    features: torch.Tensor
    prefix_s: list[float]


@torch.no_grad()
def check_and_time_split(
    model: nn.Module, split: Split, x: torch.Tensor, compute: Compute | None = None, repeats: int = 1
) -> CheckedSplit:
    """:func:`check_split`, timing the prefix forward the check runs anyway: ``model(x)`` runs
    the same layers first (kernels chosen, memory allocated), so that forward is already warm
    and the cache's prediction costs no pass of its own; ``repeats`` > 1 times that many
    (the first is the check's) for a median that one slow moment of the machine does not decide."""
    compute = compute or Compute(x.device)
    x = compute.input(x)
    times = []
    with eval_mode(model), compute.autocast():
        whole = first_tensor(model(x))
        for _ in range(max(1, repeats)):
            start = device_clock(compute.device)
            features = split.prefix(x)
            times.append(device_clock(compute.device) - start)
        parts = first_tensor(split.suffix(features))
    if whole is None or parts is None or whole.shape != parts.shape:
        raise CacheRefused("the split model's output does not have the model's shape")
    rtol, atol = _TOLERANCE.get(whole.dtype, (1e-5, 1e-6))
    whole, parts = whole.float(), parts.float()
    diff = (whole - parts).abs().max().item()
    if not torch.allclose(whole, parts, rtol=rtol, atol=atol):
        raise CacheRefused(f"suffix(prefix(x)) differs from model(x) by up to {diff:.3g}")
    return CheckedSplit(diff, features, times)


@dataclass
class FeatureCache:
    """The prefix's output for every training and validation image, with the labels."""

    train: TensorDataset
    val: TensorDataset
    bytes: int
    storage: str  # "memory" or "memmap"
    build_s: float
    load_s: float = 0.0  # of build_s, the seconds spent waiting for the loader (reading, decoding, transforms)

    @property
    def dtype(self) -> torch.dtype:
        """The features' dtype: what the prefix produces (bf16 under bf16 autocast)."""
        return self.train.tensors[0].dtype

    def to_json(self) -> dict:
        """As summary.json's ``cache`` keeps it."""
        return {
            "bytes": self.bytes,
            "dtype": str(self.dtype).removeprefix("torch."),
            "storage": self.storage,
            "build_s": self.build_s,
            "load_s": self.load_s,
            "train_shape": list(self.train.tensors[0].shape),
            "val_shape": list(self.val.tensors[0].shape),
        }


def _numpy_dtype(dtype: torch.dtype) -> np.dtype:
    """The numpy dtype a memory-mapped file of ``dtype`` is written in: numpy has no bfloat16,
    so bf16 features are kept as their bits (int16) and viewed back as bfloat16."""
    if dtype == torch.bfloat16:
        return np.dtype(np.int16)
    return torch.empty(0, dtype=dtype).numpy().dtype


def _memmap_tensor(path: Path, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A ``dtype`` tensor over a new ``.npy`` file at ``path`` (pages in and out as the OS likes)."""
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=_numpy_dtype(dtype), shape=shape)
    return torch.from_numpy(mm).view(dtype)  # same item size: a reinterpretation, not a copy


def _batches(loader: DataLoader, waited: list[float]) -> Any:
    """``loader``'s batches, adding the seconds each took to arrive to ``waited``: the build's
    time splits into reading the images and running the prefix, each shown beside its prediction."""
    it = iter(loader)
    while True:
        start = time.perf_counter()  # the loader's work is the host's, whatever the device
        batch = next(it, None)
        waited.append(time.perf_counter() - start)
        if batch is None:
            return
        yield batch


def _features(
    prefix: nn.Module, loader: DataLoader, compute: Compute, budget: int, path: Path, waited: list[float]
) -> tuple:
    n = len(loader.dataset)  # type: ignore[arg-type]
    out = labels = None
    mapped = False
    start = 0
    for x, y in _batches(loader, waited):
        with compute.autocast():
            # Kept in the dtype it comes out in: casting it would change what the suffix sees.
            f = prefix(compute.input(x)).to("cpu")
        if out is None:
            shape = (n, *f.shape[1:])
            nbytes = int(np.prod(shape)) * f.element_size()
            if nbytes <= budget:
                out = torch.empty(shape, dtype=f.dtype)
            else:  # beyond the memory budget: a file in the run folder, paged in by the OS
                out, mapped = _memmap_tensor(path, shape, f.dtype), True
            labels = torch.empty(n, dtype=torch.long)
        # A copy by value: channels-last features are stored in the default layout, and the
        # training step puts them into its memory format as it does images.
        out[start : start + f.shape[0]] = f
        labels[start : start + f.shape[0]] = y
        start += f.shape[0]
    return out, labels, mapped


def in_order(datasets: tuple[Dataset, Dataset], batch: int, workers: int = 0) -> tuple[DataLoader, DataLoader]:
    """Loaders over ``datasets`` (training, validation) in order, as a build reads them;
    ``workers``: their worker processes (``data.num_workers``, reading ahead as the epochs'
    loaders do)."""
    return tuple(DataLoader(ds, batch_size=batch, shuffle=False, num_workers=workers) for ds in datasets)  # type: ignore[return-value]


@torch.inference_mode()
def build_cache(
    model: nn.Module,
    split: Split,
    loaders: tuple[DataLoader, DataLoader],
    compute: Compute,
    max_bytes: int,
    folder: Path,
) -> FeatureCache:
    """Run the prefix once over both ``loaders``' batches (training, validation; :func:`in_order`),
    in eval mode, with no autograd state, under the step's autocast and memory format
    (``compute``); features beyond ``max_bytes`` go to ``.npy`` files in ``folder``. The build's
    seconds and, of them, those spent waiting for the loaders are kept apart."""
    train, val = loaders
    waited: list[float] = []
    start = device_clock(compute.device)
    with eval_mode(model):
        tx, ty, t_mapped = _features(split.prefix, train, compute, max_bytes, folder / "cache_train.npy", waited)
        left = max_bytes - (0 if t_mapped else tx.numel() * tx.element_size())
        vx, vy, v_mapped = _features(split.prefix, val, compute, left, folder / "cache_val.npy", waited)
    build_s = device_clock(compute.device) - start
    total = sum(t.numel() * t.element_size() for t in (tx, ty, vx, vy))
    storage = "memmap" if t_mapped or v_mapped else "memory"
    load_s = min(sum(waited), build_s)
    return FeatureCache(TensorDataset(tx, ty), TensorDataset(vx, vy), total, storage, build_s, load_s)


def cached_loaders(cache: FeatureCache, batch: int, generator: torch.Generator) -> tuple[DataLoader, DataLoader]:
    """Loaders over the cached features, shuffled exactly as build_loaders shuffles the images:
    same dataset length, same batch size, and the image loader's own generator."""
    return (
        DataLoader(cache.train, batch_size=batch, shuffle=True, generator=generator),
        DataLoader(cache.val, batch_size=batch, shuffle=False),
    )
