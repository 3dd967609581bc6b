"""Predict what a freezing plan saves, before training, from a per-module profile.

The profile times real training steps of the model (forward, loss, backward) and
attributes time and saved bytes to each top-level module with hooks, in three
states that bracket every freezing choice:

* ``full``:  every parameter trainable (what full fine-tuning pays);
* ``input``: every parameter frozen but the input requiring grad, so each module
  pays only the backward for its *input* gradient;
* ``none``:  no autograd at all (a frozen prefix: forward only).

A config's cost is then arithmetic over its modules, in forward order:

* in a frozen prefix (nothing trainable before or in it): forward only;
* frozen, or partly trainable (BitFit's biases and norms), after the graph has
  started: the input-gradient backward (a partly trainable module keeps most of it);
* trainable after the graph has started: the full backward;
* the first trainable module (its input needs no gradient): full minus input backward.

The optimizer step is timed on the config's own trainable parameters. Data
loading is not predicted: ratios compare compute (forward + backward + optimizer).
Steps run as the run's training steps do: the forward under autocast to
``train.precision`` (the loss in fp32), model and input in channels-last memory
format with ``train.channels_last``; a profile is only valid for the precision and
memory format it was taken in, which it records.
Timing inside real steps, not modules in isolation, keeps cache and allocator
effects in the numbers, so the parts add up to what training measures."""

from __future__ import annotations

import copy
import statistics
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from freezetune.measure.memory import count_saved_tensors
from freezetune.measure.timing import device_clock as _clock
from freezetune.plan.apply import pin_eval, unpin_eval
from freezetune.utils.modules import first_tensor as _first_tensor
from freezetune.utils.precision import autocast

__all__ = [
    "Estimate",
    "ModuleCost",
    "ModuleProfile",
    "OptimizerFactory",
    "Profile",
    "StepFormat",
    "estimate",
    "predict",
    "profile_model",
    "reference_copy",
]

# Builds the run's optimizer over a model's trainable parameters (freezetune.train.optim
# makes it from the config); the profile times its step, whatever kind it is.
OptimizerFactory = Callable[[nn.Module], torch.optim.Optimizer]


@dataclass(frozen=True)
class ModuleProfile:
    """One top-level module, measured in the three reference states."""

    name: str
    has_params: bool
    forward_s: float  # recording a graph (state full)
    forward_nograd_s: float  # state none
    backward_full_s: float
    backward_input_s: float
    saved_full: int  # activation bytes saved for backward (parameters not counted)
    saved_input: int


@dataclass(frozen=True)
class Profile:
    """Every top-level module's profile, and full fine-tuning's optimizer step, timed in
    ``precision`` (autocast's dtype) and, with ``channels_last``, channels-last memory format."""

    modules: tuple[ModuleProfile, ...]
    full_optimizer_s: float
    batch: int
    precision: str = "fp32"
    channels_last: bool = False

    @property
    def full_step_s(self) -> float:
        """Full fine-tuning's predicted step: every module's full backward, and its optimizer step."""
        return sum(m.forward_s + m.backward_full_s for m in self.modules) + self.full_optimizer_s

    @property
    def full_saved_bytes(self) -> int:
        """Activation bytes full fine-tuning saves for backward."""
        return sum(m.saved_full for m in self.modules)


@dataclass(frozen=True)
class ModuleCost:
    """One module's predicted cost in the state a plan puts it in."""

    name: str
    state: str  # "no graph", "no params", "input grad only", "partial", "weights only", "trainable"
    forward_s: float
    backward_s: float
    saved_bytes: int


@dataclass(frozen=True)
class Estimate:
    """A plan's predicted step time and saved activations, beside full fine-tuning's."""

    modules: tuple[ModuleCost, ...]
    optimizer_s: float
    profile: Profile

    @property
    def step_s(self) -> float:
        """The plan's predicted step time (forward, backward, optimizer) in seconds."""
        return sum(m.forward_s + m.backward_s for m in self.modules) + self.optimizer_s

    @property
    def full_step_s(self) -> float:
        """Full fine-tuning's predicted step: every module's full backward, and its optimizer step."""
        return self.profile.full_step_s

    @property
    def step_ratio(self) -> float:
        """Predicted step time relative to full fine-tuning."""
        return self.step_s / self.full_step_s

    @property
    def saved_bytes(self) -> int:
        """Activation bytes the plan saves for backward."""
        return sum(m.saved_bytes for m in self.modules)

    @property
    def full_saved_bytes(self) -> int:
        """Activation bytes full fine-tuning saves for backward."""
        return self.profile.full_saved_bytes

    @property
    def saved_ratio(self) -> float:
        """Saved activations relative to full fine-tuning."""
        return self.saved_bytes / self.full_saved_bytes if self.full_saved_bytes else 1.0

    def to_json(self) -> dict:
        """The prediction as report.json and compare's report keep it."""
        return {
            "predicted_step_s": self.step_s,
            "predicted_full_step_s": self.full_step_s,
            "predicted_step_ratio": self.step_ratio,
            "predicted_saved_activation_bytes": self.saved_bytes,
            "predicted_full_saved_activation_bytes": self.full_saved_bytes,
            "predicted_saved_ratio": self.saved_ratio,
            "precision": self.profile.precision,
            "channels_last": self.profile.channels_last,
            "modules": [m.__dict__ for m in self.modules],
        }


# --------------------------------------------------------------------------- profiling


class _Mark(torch.autograd.Function):
    """Identity whose backward notes when the gradient reached a module's input:
    the moment that module's backward is done."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, note: Callable[[], None]) -> torch.Tensor:  # type: ignore[override]
        ctx.note = note
        return x.clone()  # a new tensor, so in-place modules (ReLU(inplace=True)) stay legal

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        ctx.note()
        return grad, None


def _one_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, backward: bool, precision: str) -> dict[str, list]:
    """One instrumented step, the forward under autocast to ``precision``; per module:
    [forward_s, backward_s, saved_bytes]."""
    device = x.device
    order: list[str] = []
    times: dict[str, list] = {}
    start: dict[str, float] = {}
    marks: dict[str, float] = {}
    current: list[str] = []
    counter_box: list = []

    def pre(name: str):
        def hook(module: nn.Module, args: tuple):
            order.append(name)
            current.append(name)
            counter_box[0].activations = 0
            args = tuple(
                _Mark.apply(a, lambda n=name: marks.setdefault(n, _clock(device)))
                if isinstance(a, torch.Tensor) and a.requires_grad
                else a
                for a in args
            )
            start[name] = _clock(device)
            return args

        return hook

    def post(name: str):
        def hook(module: nn.Module, args: tuple, output: object):
            out = _first_tensor(output)
            in_graph = out is not None and out.requires_grad
            times[name] = [_clock(device) - start[name], 0.0, counter_box[0].activations, in_graph]
            current.pop()

        return hook

    handles = []
    for name, child in model.named_children():
        handles.append(child.register_forward_pre_hook(pre(name)))
        handles.append(child.register_forward_hook(post(name)))
    try:
        with count_saved_tensors(model) as counter:
            counter_box.append(counter)
            with autocast(device, precision):
                out = _first_tensor(model(x))
            loss = F.cross_entropy(out.float(), y)  # in fp32, as the training loop computes it
        if backward and loss.requires_grad:
            begin = _clock(device)
            loss.backward()
            _attribute_backward(order, times, marks, begin, _clock(device))
    finally:
        for h in handles:
            h.remove()
    return times


def _attribute_backward(
    order: list[str], times: dict[str, list], marks: dict[str, float], begin: float, end: float
) -> None:
    """Backward visits the modules in reverse; each one is done when the gradient
    reaches its input, or at the very end for the module where the graph starts
    (its input needs no gradient). Modules outside the graph get no backward."""
    previous = begin
    for name in reversed(order):
        if name in marks:
            finished = marks[name]
        elif times[name][3]:
            finished = end
        else:
            continue
        times[name][1] = max(finished - previous, 0.0)
        previous = finished


def _run_states(
    states: dict[str, tuple[nn.Module, torch.Tensor, bool]],
    y: torch.Tensor,
    reps: int,
    optimizer: torch.optim.Optimizer | None = None,
    precision: str = "fp32",
) -> tuple[dict, float]:
    """Medians per state and module over ``reps`` rounds after a warm-up round,
    and the median time of ``optimizer.step()`` after each ``full`` step.

    The states take turns within each round, so a slow spell of the machine
    (another process, frequency scaling) lands on all of them alike. The full
    state takes real optimizer steps, as training does: sweeping the weights and
    momentum buffers through the caches is part of what the next step costs."""
    runs: dict[str, list] = {name: [] for name in states}
    opt_times = []
    for rep in range(reps + 1):
        for state, (model, x, backward) in states.items():
            for p in model.parameters():
                p.grad = None
            with torch.enable_grad() if backward else torch.no_grad():
                step = _one_step(model, x, y, backward, precision)
            if state == "full" and optimizer is not None:
                t0 = _clock(x.device)
                optimizer.step()
                if rep:
                    opt_times.append(_clock(x.device) - t0)
            if rep:
                runs[state].append(step)
    medians = {
        state: {
            name: (
                statistics.median(r[name][0] for r in steps),
                statistics.median(r[name][1] for r in steps),
                steps[0][name][2],
            )
            for name in steps[0]
        }
        for state, steps in runs.items()
    }
    return medians, statistics.median(opt_times) if opt_times else 0.0


def _optimizer_time(model: nn.Module, make_optimizer: OptimizerFactory, reps: int = 5) -> float:
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.zeros_like(p)
    optimizer = make_optimizer(model)
    times = []
    for rep in range(reps + 1):
        t0 = _clock(params[0].device)
        optimizer.step()
        if rep:
            times.append(_clock(params[0].device) - t0)
    for p in params:
        p.grad = None
    return statistics.median(times)


def reference_copy(model: nn.Module, trainable: bool, pin_frozen_bn: bool, channels_last: bool) -> nn.Module:
    """A deep copy of ``model`` in train mode with every parameter's ``requires_grad`` set to
    ``trainable`` and no module pinned in eval, except BatchNorm when ``pin_frozen_bn``: the
    network as it would be without the plan (or with everything frozen)."""
    m = copy.deepcopy(model).requires_grad_(trainable)
    if channels_last:
        m.to(memory_format=torch.channels_last)
    for module in m.modules():
        unpin_eval(module)
        if pin_frozen_bn and isinstance(module, nn.modules.batchnorm._BatchNorm):
            pin_eval(module)  # as freezing puts a frozen prefix's BatchNorm (the default policy)
    return m.train()


def profile_model(
    model: nn.Module,
    x: torch.Tensor,
    num_classes: int,
    make_optimizer: OptimizerFactory,
    reps: int = 7,
    *,
    precision: str = "fp32",
    channels_last: bool = False,
) -> Profile:
    """Time ``reps`` instrumented steps of ``model`` in each reference state (on copies).

    Args:
        model: the model with any plan applied (the copies set their own flags).
        x: one input batch of the run's shape, on the run's device.
        num_classes: the head's size, for random targets.
        make_optimizer: builds the run's optimizer over a model's trainable parameters.
        reps: timed rounds after one warm-up round; medians are taken.
        precision: the run's ``train.precision``: the forward runs under autocast to it.
        channels_last: the run's ``train.channels_last``: the copies and ``x`` in that memory format.
    """
    y = torch.randint(0, num_classes, (x.shape[0],), device=x.device)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    with torch.random.fork_rng(devices=[x.device] if x.is_cuda else []):
        full_model = reference_copy(model, trainable=True, pin_frozen_bn=False, channels_last=channels_last)
        states = {
            "full": (full_model, x, True),
            "input": (
                reference_copy(model, trainable=False, pin_frozen_bn=False, channels_last=channels_last),
                x.detach().requires_grad_(True),
                True,
            ),
            "none": (
                reference_copy(model, trainable=False, pin_frozen_bn=True, channels_last=channels_last),
                x,
                False,
            ),
        }
        opt = make_optimizer(full_model)
        for group in opt.param_groups:
            group["lr"] = 1e-30  # the copy's weights stay put, while the step does all of its memory traffic
        measured, full_opt = _run_states(states, y, reps, opt, precision)
        full, inp, none = measured["full"], measured["input"], measured["none"]
    children = dict(model.named_children())
    modules = tuple(
        ModuleProfile(
            name,
            any(True for _ in children[name].parameters()),
            full[name][0],
            none[name][0],
            full[name][1],
            inp[name][1],
            full[name][2],
            inp[name][2],
        )
        for name in full
    )
    return Profile(modules, full_opt, x.shape[0], precision, channels_last)


# --------------------------------------------------------------------------- prediction


def predict(profile: Profile, model: nn.Module, optimizer_s: float) -> Estimate:
    """Arithmetic over the profile for ``model``'s ``requires_grad`` flags."""
    children = dict(model.named_children())
    costs = []
    started = False
    for m in profile.modules:
        flags = [p.requires_grad for p in children[m.name].parameters()]
        if not started and not any(flags):
            state = "no graph" if flags else "no params"
            costs.append(ModuleCost(m.name, state, m.forward_nograd_s, 0.0, 0))
            continue
        if flags and all(flags):
            if started:
                cost = ModuleCost(m.name, "trainable", m.forward_s, m.backward_full_s, m.saved_full)
            else:  # the graph starts here: weight gradients, no input gradient
                bwd = max(m.backward_full_s - m.backward_input_s, 0.0)
                cost = ModuleCost(m.name, "weights only", m.forward_s, bwd, m.saved_full)
        else:
            state = "partial" if any(flags) else ("input grad only" if flags else "no params")
            cost = ModuleCost(m.name, state, m.forward_s, m.backward_input_s, m.saved_input)
        costs.append(cost)
        started = True
    return Estimate(tuple(costs), optimizer_s, profile)


@dataclass(frozen=True)
class StepFormat:
    """How a training step runs the network: under autocast to ``precision``
    (``train.precision``), in channels-last memory format with ``channels_last``
    (``train.channels_last``). A profile is valid only for the format it was taken in."""

    precision: str = "fp32"
    channels_last: bool = False


def estimate(
    model: nn.Module,
    x: torch.Tensor,
    num_classes: int,
    make_optimizer: OptimizerFactory,
    reps: int = 5,
    profile: Profile | None = None,
    step: StepFormat = StepFormat(),
) -> Estimate:
    """Profile (unless given) and predict for ``model`` with its plan applied;
    arguments as :func:`profile_model`, ``step`` its precision and memory format. A given
    ``profile`` must have been taken in ``step``'s format (ValueError otherwise)."""
    precision, channels_last = step.precision, step.channels_last
    if profile is not None and (profile.precision, profile.channels_last) != (precision, channels_last):
        raise ValueError(
            f"the profile was taken in {profile.precision}, channels_last={profile.channels_last}; "
            f"the estimate is for {precision}, channels_last={channels_last}"
        )
    profile = profile or profile_model(
        model, x, num_classes, make_optimizer, reps, precision=precision, channels_last=channels_last
    )
    return predict(profile, model, _optimizer_time(copy.deepcopy(model), make_optimizer, reps))
