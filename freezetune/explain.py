"""Make a freezing plan visible: a per-module table, and where autograd's graph
starts, read off one real forward pass."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn as nn

from freezetune.freezing import FreezePlan, ModelTree

if TYPE_CHECKING:
    from freezetune.estimate import Estimate

__all__ = ["ModuleRow", "ProbeRow", "format_table", "module_rows", "probe_autograd", "render_estimate", "render_plan"]


@dataclass(frozen=True)
class ModuleRow:
    name: str
    type_name: str
    params: int
    trainable: int
    bn_mode: str  # "eval (pinned)", "train" or "" for non-BatchNorm

    @property
    def status(self) -> str:
        if self.trainable == self.params:
            return "trainable"
        return "frozen" if self.trainable == 0 else f"partial ({self.trainable:,} trainable)"


@dataclass(frozen=True)
class ProbeRow:
    name: str
    type_name: str
    requires_grad: bool
    grad_fn: str | None


def module_rows(tree: ModelTree, plan: FreezePlan, depth: int | None = None) -> list[ModuleRow]:
    """One row per module that owns parameters, or per module at ``depth`` (1 = top level)
    with the parameters under it added up."""
    trainable = {p.name: p.trainable for p in plan.params}
    pinned = set(plan.bn_eval)
    rows = []
    for m in tree.modules:
        level = m.name.count(".") + 1 if m.name else 0
        if depth is not None and level == depth:
            owned = [n for n in tree.param_names if n.startswith(m.name + ".")]
        elif depth is None or level < depth:
            owned = list(m.params)  # only what it owns itself (ViT's class_token on the root)
        else:
            continue
        if not owned:
            continue
        bn = ("eval (pinned)" if m.name in pinned else "train") if m.is_batchnorm else ""
        rows.append(
            ModuleRow(
                m.name or "(root)", m.type_name, sum(tree.numel[n] for n in owned), sum(tree.numel[n] for n in owned if trainable[n]), bn
            )
        )
    return rows


def probe_autograd(model: nn.Module, x: torch.Tensor) -> list[ProbeRow]:
    """Run one forward pass in train mode and record, for every top-level module,
    whether its output requires grad and which backward node produced it.

    A module whose output has ``grad_fn is None`` lies in the frozen prefix:
    autograd records nothing there, so backward never reaches it."""
    rows: list[ProbeRow] = []
    handles = []

    def hook(name: str):
        def record(module: nn.Module, args: object, output: object) -> None:
            t = first_tensor(output)
            if t is not None:
                fn = type(t.grad_fn).__name__ if t.grad_fn is not None else None
                rows.append(ProbeRow(name, type(module).__name__, t.requires_grad, fn))

        return record

    for name, child in model.named_children():
        handles.append(child.register_forward_hook(hook(name)))
    was_training = model.training
    try:
        model.train()
        with torch.enable_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return rows


def first_tensor(obj: object) -> torch.Tensor | None:
    """The tensor a module returned, or the first one in a tuple or torchvision output."""
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, (tuple, list)):
        return next((t for t in map(first_tensor, obj) if t is not None), None)
    if hasattr(obj, "logits"):  # torchvision's InceptionOutputs / GoogLeNetOutputs
        return first_tensor(obj.logits)
    return None


def format_table(headers: list[str], rows: list[list[object]], right: set[int] | None = None) -> str:
    right = right or set()
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()

    return "\n".join([line(cells[0]), line(["-" * w for w in widths]), *map(line, cells[1:])])


def render_plan(tree: ModelTree, plan: FreezePlan, probe: list[ProbeRow] | None, depth: int | None = None) -> str:
    rows = module_rows(tree, plan, depth)
    table = format_table(
        ["module", "type", "params", "status", "batchnorm"],
        [[r.name, r.type_name, f"{r.params:,}", r.status, r.bn_mode] for r in rows],
        right={2},
    )
    total, train = plan.numel_total, plan.numel_trainable
    parts = [
        table,
        "",
        f"parameters: {total:,} total, {train:,} trainable ({100.0 * train / total:.2f}%), {total - train:,} frozen",
        f"tensors:    {len(plan.trainable)} trainable, {len(plan.frozen)} frozen (requires_grad=False; never in the optimizer)",
        f"batchnorm:  policy '{plan.batchnorm}', {len(plan.bn_eval)} module(s) pinned in eval (running stats frozen)",
    ]
    if probe is not None:
        parts += [
            "",
            "autograd, from one forward pass in train mode (output of each top-level module):",
            format_table(
                ["module", "type", "requires_grad", "grad_fn"],
                [[r.name, r.type_name, r.requires_grad, r.grad_fn or "None (no graph recorded)"] for r in probe],
            ),
        ]
        first = next((r.name for r in probe if r.requires_grad), None)
        if first is not None:
            parts.append(f"the autograd graph starts at '{first}'; backward() does no work before it.")
    return "\n".join(parts)


def render_estimate(est: Estimate) -> str:
    """The per-module profile behind a prediction, and the prediction itself."""
    ref = {m.name: m for m in est.profile.modules}
    rows = [
        [
            m.name,
            m.state,
            f"{1000 * m.forward_s:.2f}",
            f"{1000 * m.backward_s:.2f}",
            f"{m.saved_bytes / 1024:.0f}",
            f"{1000 * (ref[m.name].forward_s + ref[m.name].backward_full_s):.2f}",
            f"{ref[m.name].saved_full / 1024:.0f}",
        ]
        for m in est.modules
    ]
    table = format_table(
        ["module", "state", "fwd ms", "bwd ms", "saved KiB", "full: fwd+bwd ms", "full: saved KiB"], rows, right={2, 3, 4, 5, 6}
    )
    return "\n".join(
        [
            f"predicted cost per step, from a per-module profile of real steps on a batch of {est.profile.batch}"
            " (compute only, no data loading):",
            table,
            f"optimizer step: {1000 * est.optimizer_s:.2f} ms (full fine-tuning: {1000 * est.profile.full_optimizer_s:.2f} ms)",
            f"predicted step time: {1000 * est.step_s:.1f} ms vs {1000 * est.full_step_s:.1f} ms for full fine-tuning"
            f" (×{est.step_ratio:.2f})",
            f"predicted activations saved for backward: {est.saved_bytes / 2**20:.2f} MiB vs "
            f"{est.full_saved_bytes / 2**20:.2f} MiB (×{est.saved_ratio:.3f})",
        ]
    )
