"""The autograd tour: PyTorch's autograd tutorial example, then a real network under a
freezing config, each fact computed live and printed with the call that shows it.

PyTorch's autograd tutorial (https://pytorch.org/tutorials/beginner/basics/autogradqs_tutorial.html)
builds one small graph: ``x = ones(5)``, ``y = zeros(3)``, ``w`` (5x3) and ``b`` (3) with
``requires_grad=True``, ``z = x @ w + b`` and a binary cross-entropy loss on the logits. Steps 1-4
replay it (leaves and ``grad_fn``, ``backward`` and ``retain_graph``, freezing with
``requires_grad_(False)``, ``no_grad``/``inference_mode`` and ``detach``); step 5 shows the same
facts on a config's network: which modules record a graph, frozen parameters ending a real step
with ``.grad is None`` and bitwise unchanged, and what the freeze saved in autograd memory and
step time. Every :class:`TourStep` keeps the values it printed in ``facts``, so tests compare the
text with the tensors and the tour cannot drift from PyTorch's behaviour."""

from __future__ import annotations

import statistics
import textwrap
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from freezetune.config import Config
from freezetune.measure import count_saved_tensors, device_clock, reference_copy
from freezetune.report import probe_autograd
from freezetune.train import make_optimizer, prepare, to_device
from freezetune.utils import autocast, format_table

__all__ = [
    "TUTORIAL_URL",
    "TourStep",
    "TutorialExample",
    "backward_step",
    "freezing_step",
    "graph_lines",
    "network_step",
    "no_graph_step",
    "render_step",
    "tensors_step",
    "tutorial_example",
    "tutorial_steps",
]

TUTORIAL_URL = "https://pytorch.org/tutorials/beginner/basics/autogradqs_tutorial.html"
_NOTES = "https://pytorch.org/docs/stable/notes/autograd.html"


@dataclass
class TutorialExample:
    """PyTorch's autograd tutorial example, built afresh (a graph can be walked back once)."""

    x: torch.Tensor
    y: torch.Tensor
    w: torch.Tensor
    b: torch.Tensor
    z: torch.Tensor
    loss: torch.Tensor

    def names(self) -> dict[int, str]:
        """Tensor id -> its name in the tutorial, to label the graph's leaves."""
        return {id(self.w): "w", id(self.b): "b"}


def tutorial_example(seed: int = 0, w_requires_grad: bool = True) -> TutorialExample:
    """``x = ones(5)``, ``y = zeros(3)``, ``w = randn(5, 3)``, ``b = randn(3)`` (seeded), ``z = x @ w + b``,
    ``loss = binary_cross_entropy_with_logits(z, y)``; ``w_requires_grad=False`` freezes ``w`` first."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.ones(5)  # input tensor
    y = torch.zeros(3)  # expected output
    w = torch.randn(5, 3, generator=gen).requires_grad_(w_requires_grad)
    b = torch.randn(3, generator=gen).requires_grad_(True)
    z = torch.matmul(x, w) + b
    loss = F.binary_cross_entropy_with_logits(z, y)
    return TutorialExample(x, y, w, b, z, loss)


@dataclass
class TourStep:
    """One step of the tour: what it shows, the PyTorch calls, where the docs explain them,
    the lines it prints (from live values), why it matters, and the values themselves."""

    number: int
    title: str
    calls: list[str]
    docs: list[str]
    lines: list[str]
    why: str
    facts: dict[str, Any] = field(default_factory=dict)


def render_step(step: TourStep) -> str:
    """A step as the tour prints it."""
    rule = "─" * max(8, 78 - len(step.title) - 6)
    out = [f"── {step.number}. {step.title} {rule}", f"PyTorch: {', '.join(step.calls)}"]
    out += [f"docs:    {url}" for url in step.docs]
    out += [""] + [f"  {line}" if line else "" for line in step.lines] + [""]
    out += textwrap.wrap(f"why: {step.why}", width=100, subsequent_indent="     ")
    return "\n".join(out)


def _values(t: torch.Tensor) -> str:
    return "[" + ", ".join(f"{v:.4f}" for v in t.detach().flatten().tolist()) + "]"


def graph_lines(fn: Any, names: dict[int, str], prefix: str = "") -> list[str]:
    """``fn`` and everything behind it through ``next_functions``, as an indented tree; a leaf's
    ``AccumulateGrad`` node is labelled with the tensor it fills (``names``: id -> name)."""
    lines = []
    children = [n for n, _ in fn.next_functions if n is not None]
    for i, child in enumerate(children):
        last = i == len(children) - 1
        label = type(child).__name__
        variable = getattr(child, "variable", None)
        if variable is not None:
            label += f" -> {names.get(id(variable), 'a leaf')}.grad"
        lines.append(f"{prefix}{'└─ ' if last else '├─ '}{label}")
        lines += graph_lines(child, names, prefix + ("   " if last else "│  "))
    return lines


def tensors_step(seed: int = 0) -> TourStep:
    """Step 1: which tensors are leaves and require grad, ``grad_fn`` and its ``next_functions``."""
    ex = tutorial_example(seed)
    rows = []
    for name, code, t in (
        ("x", "torch.ones(5)", ex.x),
        ("y", "torch.zeros(3)", ex.y),
        ("w", "torch.randn(5, 3, requires_grad=True)", ex.w),
        ("b", "torch.randn(3, requires_grad=True)", ex.b),
        ("z", "torch.matmul(x, w) + b", ex.z),
        ("loss", "binary_cross_entropy_with_logits(z, y)", ex.loss),
    ):
        fn = type(t.grad_fn).__name__ if t.grad_fn is not None else "None"
        rows.append([name, code, str(t.is_leaf), str(t.requires_grad), fn])
    table = format_table(["tensor", "made by", "is_leaf", "requires_grad", "grad_fn"], rows)
    chain = [type(ex.loss.grad_fn).__name__] + graph_lines(ex.loss.grad_fn, ex.names())
    return TourStep(
        1,
        "PyTorch's autograd tutorial example: leaves, requires_grad, grad_fn",
        ["Tensor.requires_grad", "Tensor.is_leaf", "Tensor.grad_fn", "grad_fn.next_functions"],
        [TUTORIAL_URL + "#tensors-functions-and-computational-graph", _NOTES + "#how-autograd-encodes-the-history"],
        [*table.splitlines(), "", "loss.grad_fn and its next_functions, back to the leaves:", *chain],
        "Every operation on a tensor that requires grad records a backward node (grad_fn) pointing at the "
        "nodes of its inputs. The walk back ends at AccumulateGrad nodes, one per leaf that requires grad: "
        "those are the only tensors backward() fills. x and y require no grad, so no node leads to them.",
        {
            "leaf": {n: r[2] == "True" for n, r in zip("x y w b z loss".split(), rows)},
            "requires_grad": {n: r[3] == "True" for n, r in zip("x y w b z loss".split(), rows)},
            "z_grad_fn": rows[4][4],
            "loss_grad_fn": rows[5][4],
            "graph": chain,
        },
    )


def backward_step(seed: int = 0) -> TourStep:
    """Step 2: ``loss.backward()``, a second ``backward()`` without ``retain_graph`` (the error,
    caught) and with it (the gradients accumulate: doubled)."""
    ex = tutorial_example(seed)
    ex.loss.backward()
    w_grad, b_grad = ex.w.grad.clone(), ex.b.grad.clone()
    rows_are_b = all(torch.equal(row, b_grad) for row in w_grad)
    try:
        ex.loss.backward()
        error = None
    except RuntimeError as exc:
        error = exc
    again = tutorial_example(seed)
    again.loss.backward(retain_graph=True)
    first = again.b.grad.clone()
    again.loss.backward()
    doubled = torch.equal(again.b.grad, 2 * first) and torch.equal(again.w.grad, 2 * w_grad)
    lines = [
        "loss.backward()",
        f"  w.grad (5x3), row 0: {_values(w_grad[0])}"
        + ("; every row the same, since x is ones" if rows_are_b else ""),
        f"  b.grad:              {_values(b_grad)}",
        "  x.grad is None: x does not require grad",
        "loss.backward() again, on the same graph:",
        f"  {type(error).__name__}: {str(error).split('. ')[0]}." if error else "  no error (PyTorch changed!)",
        "fresh graph; loss.backward(retain_graph=True), then loss.backward():",
        f"  b.grad after the first:  {_values(first)}",
        f"  b.grad after the second: {_values(again.b.grad)}"
        + ("  (doubled: .grad accumulates)" if doubled else "  (NOT doubled)"),
    ]
    return TourStep(
        2,
        "backward(), retain_graph and accumulating gradients",
        ["Tensor.backward()", "backward(retain_graph=True)", "Tensor.grad"],
        [TUTORIAL_URL + "#computing-gradients", "https://pytorch.org/docs/stable/generated/torch.Tensor.backward.html"],
        lines,
        "backward() walks the graph once and frees the tensors it saved, so a second walk fails unless the "
        "first kept them (retain_graph=True). Gradients add up in .grad rather than replace it; that is why "
        "training loops zero them (freezetune sets them to None) before each step.",
        {
            "w_grad": w_grad,
            "b_grad": b_grad,
            "rows_are_b": rows_are_b,
            "error_type": type(error).__name__ if error else None,
            "error": str(error) if error else None,
            "first_b_grad": first,
            "second_b_grad": again.b.grad.clone(),
            "doubled": doubled,
        },
    )


def freezing_step(seed: int = 0) -> TourStep:
    """Step 3: ``w.requires_grad_(False)``: the graph no longer reaches ``w``, only ``b`` gets a gradient."""
    ex = tutorial_example(seed, w_requires_grad=False)
    chain = [type(ex.loss.grad_fn).__name__] + graph_lines(ex.loss.grad_fn, ex.names())
    ex.loss.backward()
    reference = tutorial_example(seed)
    reference.loss.backward()
    same_b = torch.equal(ex.b.grad, reference.b.grad)
    reaches_w = any("w.grad" in line for line in chain)
    lines = [
        "w.requires_grad_(False), then z = x @ w + b and the loss again:",
        type(ex.loss.grad_fn).__name__,
        *graph_lines(ex.loss.grad_fn, ex.names()),
        f"the graph reaches w: {reaches_w}"
        + ("; x @ w recorded no node (neither x nor w requires grad)" if not reaches_w else ""),
        "loss.backward()",
        f"  w.grad: {ex.w.grad}",
        f"  b.grad: {_values(ex.b.grad)}"
        + ("  (the same as before: b's gradient does not need w's)" if same_b else ""),
    ]
    return TourStep(
        3,
        "Freezing: requires_grad_(False)",
        ["Tensor.requires_grad_(False)"],
        [TUTORIAL_URL + "#disabling-gradient-tracking", _NOTES + "#setting-requires-grad"],
        lines,
        "A frozen tensor is a leaf that does not require grad: no node is recorded for it, backward never "
        "reaches it and its .grad stays None, so an optimizer holding only trainable tensors cannot move it. "
        "In a network the same rule means a frozen prefix records no graph at all (step 5).",
        {
            "w_grad": ex.w.grad,
            "b_grad": ex.b.grad.clone(),
            "same_b_grad": same_b,
            "reaches_w": reaches_w,
            "graph": chain,
        },
    )


def no_graph_step(seed: int = 0) -> TourStep:
    """Step 4: ``torch.no_grad()``, ``torch.inference_mode()`` and ``detach()``."""
    ex = tutorial_example(seed)
    with torch.no_grad():
        z_no_grad = torch.matmul(ex.x, ex.w) + ex.b
    with torch.inference_mode():
        z_inference = torch.matmul(ex.x, ex.w) + ex.b
    modes = _modes_under_no_grad(seed)
    z_det = ex.z.detach()
    shares = z_det.data_ptr() == ex.z.data_ptr()
    version = ex.z._version
    with torch.no_grad():
        z_det[0] = 0.0  # an in-place edit of the detached view...
    seen = ex.z[0].item() == 0.0  # ...is in z too: one storage
    lines = [
        "with torch.no_grad(): z = x @ w + b",
        f"  z.requires_grad: {z_no_grad.requires_grad}, z.grad_fn: {z_no_grad.grad_fn}",
        "with torch.inference_mode(): z = x @ w + b",
        f"  z.requires_grad: {z_inference.requires_grad}, z.is_inference(): {z_inference.is_inference()}",
        "z_det = z.detach()",
        f"  z_det.requires_grad: {z_det.requires_grad}, z_det.grad_fn: {z_det.grad_fn}, same storage as z: {shares}",
        f"  z_det[0] = 0 shows in z: {seen}; z._version {version} -> {ex.z._version} "
        "(autograd would refuse a backward that needs the old value)",
        "bn = BatchNorm1d(3) and dropout = Dropout(0.5), both in train mode; with torch.no_grad():",
        f"  bn(randn(4, 3)): bn.training {modes['bn_training']}, running_mean moved: {modes['bn_moved']}; "
        f"dropout(ones(8)) zeroed {modes['dropped']} of 8",
        f"bn.eval(), then with torch.no_grad(): bn(randn(4, 3)): running_mean moved: {modes['bn_moved_in_eval']}",
    ]
    return TourStep(
        4,
        "No graph at all: no_grad, inference_mode, detach",
        ["torch.no_grad()", "torch.inference_mode()", "Tensor.detach()", "Module.eval()"],
        [
            _NOTES + "#locally-disabling-gradient-computation",
            "https://pytorch.org/docs/stable/generated/torch.Tensor.detach.html",
        ],
        lines,
        "Inside no_grad and inference_mode nothing is recorded even for tensors that require grad: "
        "freezetune evaluates under inference_mode, which also skips autograd's version counting. "
        "detach() gives the same data without the graph and without a copy: the training loop adds up its "
        "losses from loss.detach(), so no step's graph stays alive, and the feature cache computes a frozen "
        "prefix's output under no_grad. Neither changes a module's mode: in train mode BatchNorm still updates "
        "its running statistics and Dropout still drops, under no_grad as without it. The mode is model.eval()'s "
        "job (freezetune evaluates in eval mode, and pins frozen BatchNorm in eval while training).",
        {
            "no_grad_requires_grad": z_no_grad.requires_grad,
            "no_grad_grad_fn": z_no_grad.grad_fn,
            "inference": z_inference.is_inference(),
            "inference_requires_grad": z_inference.requires_grad,
            "detach_shares_storage": shares,
            "detach_requires_grad": z_det.requires_grad,
            "edit_seen": seen,
            "version": (version, ex.z._version),
            **modes,
        },
    )


def _modes_under_no_grad(seed: int) -> dict[str, Any]:
    """A BatchNorm and a Dropout in train mode, called under no_grad: whether the statistics moved
    and how much was dropped; then the BatchNorm in eval mode. Seeded, the global RNG left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        bn, dropout = nn.BatchNorm1d(3).train(), nn.Dropout(0.5).train()
        x = torch.randn(4, 3)
        with torch.no_grad():
            bn(x)
            dropped = int((dropout(torch.ones(8)) == 0).sum())
        training = bn.training and dropout.training
        moved = not torch.equal(bn.running_mean, torch.zeros(3))
        after = bn.running_mean.clone()
        bn.eval()
        with torch.no_grad():
            bn(x)
        moved_in_eval = not torch.equal(bn.running_mean, after)
    return {"bn_training": training, "bn_moved": moved, "dropped": dropped, "bn_moved_in_eval": moved_in_eval}


def tutorial_steps(seed: int = 0) -> list[TourStep]:
    """Steps 1-4, on PyTorch's autograd tutorial example."""
    return [tensors_step(seed), backward_step(seed), freezing_step(seed), no_graph_step(seed)]


def _step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, cfg: Config):
    """One training step as freezetune's loop takes it; returns (seconds, bytes saved for backward)."""
    device = x.device
    optimizer.zero_grad(set_to_none=True)
    start = device_clock(device)
    with count_saved_tensors(model) as saved:
        with autocast(device, cfg.train.precision):
            out = model(x)
        loss = F.cross_entropy(out.float(), y)
    loss.backward()
    optimizer.step()
    return device_clock(device) - start, saved


def network_step(cfg: Config, source: str, repeats: int = 5) -> TourStep:
    """Step 5: the same facts on ``cfg``'s network and a real batch of its training data."""
    facts, seen = _network_facts(cfg, repeats)
    return TourStep(
        5,
        "The same on a network: a freezing config's real step",
        ["Module.requires_grad_(False)", "Tensor.grad_fn", "torch.autograd.graph.saved_tensors_hooks"],
        [
            _NOTES + "#saved-tensors",
            "https://pytorch.org/docs/stable/autograd.html#torch.autograd.graph.saved_tensors_hooks",
        ],
        _network_lines(cfg, source, repeats, facts, seen),
        _network_why(facts),
        facts,
    )


def _network_why(f: dict[str, Any]) -> str:
    """Step 5's explanation, for the plan it was given: a frozen prefix, frozen layers the graph
    runs through (BitFit, or a frozen layer after a trainable one), or nothing frozen."""
    kept = "The optimizer holds only the trainable parameters, so the frozen ones end the step bitwise as they were."
    if f["frozen"] == 0:
        return (
            "Nothing is frozen in this config: every operation records a node and saves what its backward needs, "
            "so the step with and without the freeze is the same step."
        )
    if not f["frozen_in_graph"]:
        return (
            "Freezing a prefix is step 3 at scale: its parameters are leaves that require no grad and its input "
            "is the image, so its operations record no nodes and save no tensors for backward, and backward "
            f"stops where the graph starts. {kept}"
        )
    later = f["frozen_in_graph"]
    return (
        f"Here the frozen parameters are no prefix: {len(later)} module(s) with frozen parameters run after the "
        f"graph starts at {f['graph_start']!r} (the first: {later[0]!r}). They still run backward, to pass the "
        "gradient on to the trainable parameters before them, and save the tensors that needs; what they skip is "
        "computing their own weight gradients (and the optimizer state for them). So autograd's saved memory "
        "shrinks far less than behind a frozen prefix: "
        f"x{f['saved'] / max(f['saved_unfrozen'], 1):.2f} of the unfrozen step's here. {kept}"
    )


def _network_facts(cfg: Config, repeats: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """One real step of ``cfg``'s network, frozen and without the freeze, then ``repeats`` timed
    steps of each: the facts step 5 checks, and what else its lines show (the batch, the device)."""
    p, loaders = prepare(cfg)
    model = p.model.train()  # modules the plan pins stay in eval
    x, y = next(iter(loaders.train))
    x, y = to_device(x, p.device, cfg.train.channels_last), y.to(p.device)
    frozen = {n: t for n, t in model.named_parameters() if not t.requires_grad}
    trainable = [n for n, t in model.named_parameters() if t.requires_grad]
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    before = {n: t.detach().clone() for n, t in frozen.items()}
    with autocast(p.device, cfg.train.precision):
        probe = probe_autograd(model, x)
    # Everything trainable, BatchNorm in train mode: the network without the freeze.
    unfrozen = reference_copy(model, trainable=True, pin_frozen_bn=False, channels_last=cfg.train.channels_last)
    optimizer = make_optimizer(model, cfg.train.optimizer, p.settings)
    optimizer_unfrozen = make_optimizer(unfrozen, cfg.train.optimizer, p.settings)
    _, saved = _step(model, optimizer, x, y, cfg)
    grads_none = all(t.grad is None for t in frozen.values())
    unchanged = all(torch.equal(t.detach(), before[n]) for n, t in frozen.items())
    frozen_modules = {n.rsplit(".", 1)[0] for n in frozen}
    frozen_buffers = [n for n in buffers if n.rsplit(".", 1)[0] in frozen_modules]
    buffers_unchanged = all(torch.equal(dict(model.named_buffers())[n], buffers[n]) for n in frozen_buffers)
    with_grad = sum(1 for n, t in model.named_parameters() if t.grad is not None)
    in_optimizer = sum(len(g["params"]) for g in optimizer.param_groups)
    _, saved_unfrozen = _step(unfrozen, optimizer_unfrozen, x, y, cfg)
    times: dict[str, list[float]] = {"frozen": [], "unfrozen": []}
    for _ in range(repeats):  # alternated, so that drift on a busy machine hits both alike
        times["frozen"].append(_step(model, optimizer, x, y, cfg)[0])
        times["unfrozen"].append(_step(unfrozen, optimizer_unfrozen, x, y, cfg)[0])
    t_frozen, t_unfrozen = (statistics.median(times[k]) for k in ("frozen", "unfrozen"))
    facts = {
        "frozen": len(frozen),
        "trainable": len(trainable),
        "grads_none": grads_none,
        "unchanged": unchanged,
        "buffers_unchanged": buffers_unchanged,
        "with_grad": with_grad,
        "in_optimizer": in_optimizer,
        "graph_start": probe.start,
        "probe": probe.rows,
        "frozen_in_graph": probe.frozen_in_graph,
        "saved": saved.activations,
        "saved_unfrozen": saved_unfrozen.activations,
        "step_s": t_frozen,
        "step_unfrozen_s": t_unfrozen,
    }
    seen = {
        "batch": len(y),
        "shape": "x".join(map(str, x.shape[1:])),
        "device": p.device.type,
        "frozen_grads_none": sum(t.grad is None for t in frozen.values()),  # after the timed steps too
    }
    return facts, seen


def _network_lines(cfg: Config, source: str, repeats: int, f: dict[str, Any], seen: dict[str, Any]) -> list[str]:
    """Step 5's lines: the forward pass module by module, the real step, the step without the freeze."""
    rows = [[r.name, r.type_name, str(r.requires_grad), r.grad_fn or "None"] for r in f["probe"]]
    start = f["graph_start"]
    mib = 2**20
    autocast_note = ", their autocast copies included" if cfg.train.precision != "fp32" else ""
    return [
        f"config {source}: {cfg.model.arch}, {f['frozen']} frozen and {f['trainable']} trainable parameter tensors,"
        f" a batch of {seen['batch']} images of its training data ({seen['shape']}), {cfg.train.precision}",
        "one forward pass; each top-level module's output:",
        *format_table(["module", "type", "requires_grad", "grad_fn"], rows).splitlines(),
        f"the graph starts at {start!r}: the modules before it recorded nothing, as w did in step 3"
        if start
        else "no module recorded a graph: nothing trains",
        *(
            [
                f"{len(later)} module(s) with frozen parameters run after it (the first: {later[0]!r}): backward "
                "runs through them to reach the trainable parameters before them"
            ]
            if (later := f["frozen_in_graph"])
            else []
        ),
        "",
        "one real step (forward, loss.backward(), optimizer.step()):",
        f"  frozen parameters with .grad None: {seen['frozen_grads_none']} of {f['frozen']}",
        f"  frozen parameters bitwise unchanged: {f['unchanged']}; their BatchNorm statistics: "
        f"{f['buffers_unchanged']}",
        f"  trainable parameters with a gradient: {f['with_grad']} of {f['trainable']}; the optimizer holds "
        f"{f['in_optimizer']} tensors, only those",
        "",
        "the same step without the freeze (everything trainable, BatchNorm in train mode):",
        f"  saved for backward (beyond the parameters{autocast_note}): {f['saved'] / mib:.2f} MiB frozen vs "
        f"{f['saved_unfrozen'] / mib:.2f} MiB unfrozen "
        f"(x{f['saved'] / max(f['saved_unfrozen'], 1):.2f})",
        f"  one step: {f['step_s'] * 1e3:.1f} ms frozen vs {f['step_unfrozen_s'] * 1e3:.1f} ms unfrozen "
        f"(x{f['step_s'] / f['step_unfrozen_s']:.2f}; medians of {repeats}, alternated, on {seen['device']})",
    ]
