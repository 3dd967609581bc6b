"""Predict what a freezing plan saves, before training, from a per-module profile.

Each top-level module is run on its real input (captured from one forward pass)
in the state the plan puts it in, and in the state full fine-tuning would:

* in a frozen prefix (no trainable parameter before or in it) it pays only its
  forward: autograd records nothing, there is no backward;
* frozen, but after a trainable module, it still pays the backward for its
  *input* gradient (the chain rule must pass through it), not for its weights;
* partly trainable (BitFit: biases and BatchNorm) it keeps most of the backward.

Timing each module in exactly that state, rather than applying rule-of-thumb
factors, is what makes the prediction hold across architectures. The optimizer
step is timed on the trainable parameters. Data loading is not predicted: the
ratios compare compute (forward + backward + optimizer)."""

from __future__ import annotations

import copy
import statistics
import time
from dataclasses import dataclass

import torch
import torch.nn as nn

from freezetune.apply import is_pinned_eval, unpin_eval
from freezetune.config import OptimizerConfig
from freezetune.memory import count_saved_tensors
from freezetune.training import make_optimizer

__all__ = ["Estimate", "FullProfile", "ModuleCost", "estimate", "profile_full", "profile_modules"]


@dataclass(frozen=True)
class ModuleCost:
    name: str
    state: str  # "no graph", "input grad only", "trainable", "partial", "no params"
    forward_s: float
    backward_s: float
    saved_bytes: int  # activations saved for backward (parameters not counted)


@dataclass(frozen=True)
class FullProfile:
    modules: tuple[ModuleCost, ...]
    optimizer_s: float
    signatures: tuple[tuple, ...]

    def known(self) -> dict[str, tuple[tuple, ModuleCost]]:
        return {m.name: (sig, m) for sig, m in zip(self.signatures, self.modules)}


@dataclass(frozen=True)
class Estimate:
    modules: tuple[ModuleCost, ...]
    full: tuple[ModuleCost, ...]
    optimizer_s: float
    full_optimizer_s: float

    @property
    def step_s(self) -> float:
        return sum(m.forward_s + m.backward_s for m in self.modules) + self.optimizer_s

    @property
    def full_step_s(self) -> float:
        return sum(m.forward_s + m.backward_s for m in self.full) + self.full_optimizer_s

    @property
    def step_ratio(self) -> float:
        return self.step_s / self.full_step_s

    @property
    def saved_bytes(self) -> int:
        return sum(m.saved_bytes for m in self.modules)

    @property
    def full_saved_bytes(self) -> int:
        return sum(m.saved_bytes for m in self.full)

    @property
    def saved_ratio(self) -> float:
        return self.saved_bytes / self.full_saved_bytes if self.full_saved_bytes else 1.0

    def to_json(self) -> dict:
        return {
            "predicted_step_s": self.step_s,
            "predicted_full_step_s": self.full_step_s,
            "predicted_step_ratio": self.step_ratio,
            "predicted_saved_activation_bytes": self.saved_bytes,
            "predicted_full_saved_activation_bytes": self.full_saved_bytes,
            "predicted_saved_ratio": self.saved_ratio,
            "modules": [m.__dict__ | {"full": f.__dict__} for m, f in zip(self.modules, self.full)],
        }


def _sync(x: torch.Tensor) -> None:
    if x.is_cuda:
        torch.cuda.synchronize(x.device)


def _first_tensor(obj: object) -> torch.Tensor | None:
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, (tuple, list)):
        return next((t for t in map(_first_tensor, obj) if t is not None), None)
    return _first_tensor(getattr(obj, "logits", None)) if hasattr(obj, "logits") else None


def _capture_inputs(model: nn.Module, x: torch.Tensor) -> list[tuple[str, nn.Module, tuple]]:
    """Each top-level module with the arguments it received, in call order."""
    calls: list[tuple[str, nn.Module, tuple]] = []
    handles = [
        child.register_forward_pre_hook(
            lambda m, args, name=name: calls.append((name, m, tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)))
        )
        for name, child in model.named_children()
    ]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return calls


def _as_input(a: object, requires_grad: bool) -> object:
    """A fresh copy of a captured argument; when it must carry gradient, a non-leaf
    (as inside a real graph), so that in-place modules such as ReLU(inplace=True) work."""
    if not isinstance(a, torch.Tensor) or not a.is_floating_point():
        return a
    if requires_grad:
        return a.detach().requires_grad_(True).clone()
    return a.clone()


def _state(module: nn.Module, input_grad: bool) -> str:
    flags = [p.requires_grad for p in module.parameters()]
    if not flags:
        return "no params"
    if all(flags):
        return "trainable"
    if any(flags):
        return "partial"
    return "input grad only" if input_grad else "no graph"


def _signature(module: nn.Module, input_grad: bool) -> tuple:
    """Everything that decides a module's cost besides its input's shape."""
    return (
        input_grad,
        tuple(p.requires_grad for p in module.parameters()),
        tuple(m.training for m in module.modules()),
    )


def profile_modules(
    model: nn.Module, x: torch.Tensor, reps: int = 3, known: dict[str, tuple[tuple, ModuleCost]] | None = None
) -> list[tuple[tuple, ModuleCost]]:
    """Forward/backward time and saved bytes of every top-level module, each in the
    state ``model``'s ``requires_grad`` flags put it in, with its state signature.

    A module whose signature matches one in ``known`` (the full profile) reuses
    that measurement: same state, same cost, and one timing less to be noisy.
    ``model`` is used as is: pass a copy (BatchNorm statistics move)."""
    model.train()
    known = known or {}
    costs = []
    graph_started = False
    for name, module, args in _capture_inputs(model, x):
        input_grad = graph_started
        graph_started = graph_started or any(p.requires_grad for p in module.parameters())
        sig = _signature(module, input_grad)
        if name in known and known[name][0] == sig:
            costs.append((sig, known[name][1]))
            continue
        fwd, bwd, saved = [], [], 0
        for rep in range(reps + 1):  # the first is a warm-up
            inputs = tuple(_as_input(a, input_grad) for a in args)
            _sync(x)
            t0 = time.perf_counter()
            with count_saved_tensors(model) as counted:
                out = _first_tensor(module(*inputs))
            _sync(x)
            t1 = time.perf_counter()
            t2 = t1  # a module outside the graph has no backward at all
            if out is not None and out.requires_grad:
                out.backward(torch.ones_like(out))
                _sync(x)
                t2 = time.perf_counter()
            if rep:
                fwd.append(t1 - t0)
                bwd.append(t2 - t1)
            saved = counted.activations
        for p in module.parameters():
            p.grad = None
        cost = ModuleCost(name, _state(module, input_grad), statistics.median(fwd), statistics.median(bwd), saved)
        costs.append((sig, cost))
    return costs


def _optimizer_time(model: nn.Module, cfg: OptimizerConfig, reps: int = 3) -> float:
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.zeros_like(p)
    optimizer = make_optimizer(model, cfg)
    times = []
    for rep in range(reps + 1):
        _sync(params[0])
        t0 = time.perf_counter()
        optimizer.step()
        _sync(params[0])
        if rep:
            times.append(time.perf_counter() - t0)
    for p in params:
        p.grad = None
    return statistics.median(times)


def _fully_trainable(model: nn.Module) -> nn.Module:
    full = copy.deepcopy(model).requires_grad_(True)
    for m in full.modules():
        if is_pinned_eval(m):
            unpin_eval(m)
    return full


def profile_full(model: nn.Module, x: torch.Tensor, optimizer: OptimizerConfig, reps: int = 3) -> FullProfile:
    """The reference: ``model`` with every parameter trainable and no BatchNorm pinned.
    It depends only on the architecture, the batch shape and the optimizer, so one
    profile serves every config that shares them."""
    with torch.random.fork_rng(devices=[x.device] if x.is_cuda else []):
        full = _fully_trainable(model)
        profiled = profile_modules(full, x, reps)
        return FullProfile(
            tuple(c for _, c in profiled), _optimizer_time(full, optimizer, reps), tuple(s for s, _ in profiled)
        )


def estimate(
    model: nn.Module, x: torch.Tensor, optimizer: OptimizerConfig, reps: int = 3, full: FullProfile | None = None
) -> Estimate:
    """Profile ``model`` (with its plan applied) against full fine-tuning of it."""
    full = full or profile_full(model, x, optimizer, reps)
    with torch.random.fork_rng(devices=[x.device] if x.is_cuda else []):
        planned = copy.deepcopy(model)
        costs = [c for _, c in profile_modules(planned, x, reps, full.known())]
        everything = all(p.requires_grad for p in planned.parameters())
        opt_s = full.optimizer_s if everything else _optimizer_time(planned, optimizer, reps)
        return Estimate(tuple(costs), full.modules, opt_s, full.optimizer_s)
