"""What ``plan.py`` prints: the per-module plan, where autograd's graph starts (read
off one real forward pass), each parameter's optimizer group and LR, the schedule
of events and LR multipliers, and the predicted cost."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from freezetune.config import Config
from freezetune.measure import Estimate
from freezetune.plan import FreezePlan, ModelTree, Schedule, Setting
from freezetune.plan.auto import model_stages
from freezetune.train.cache_policy import CacheAction, CacheDecision
from freezetune.train.lr_schedule import LRSchedule
from freezetune.train.optim import group_label
from freezetune.utils import first_tensor, format_bytes, format_table, train_mode

__all__ = [
    "ModuleRow",
    "ParamRow",
    "Probe",
    "ProbeRow",
    "module_rows",
    "param_rows",
    "probe_autograd",
    "render_estimate",
    "render_adapters",
    "render_auto",
    "render_cache",
    "render_groups",
    "render_params",
    "render_plan",
    "render_schedule",
]


@dataclass(frozen=True)
class ModuleRow:
    """One line of the plan table."""

    name: str
    type_name: str
    params: int
    trainable: int
    mode: str  # "eval (pinned)": the plan keeps it in eval whatever the trainer does; else "train"

    @property
    def status(self) -> str:
        """trainable, frozen, or partial (how many trainable)."""
        if self.trainable == self.params:
            return "trainable"
        return "frozen" if self.trainable == 0 else f"partial ({self.trainable:,} trainable)"


@dataclass(frozen=True)
class ProbeRow:
    """One top-level module's output in the autograd probe."""

    name: str
    type_name: str
    requires_grad: bool
    grad_fn: str | None


@dataclass(frozen=True)
class ParamRow:
    """One parameter's line in ``plan.py --params``."""

    name: str
    numel: int
    trainable_from: int | None  # the first epoch it trains in; None: never
    group: str  # the optimizer group it joins (freezetune.train.optim.group_label)
    lr: float | None  # its LR before the schedule's multiplier; None when never trainable
    weight_decay: float


def param_rows(tree: ModelTree, schedule: Schedule, settings: dict[str, Setting], cfg: Config) -> list[ParamRow]:
    """Each parameter's fate: when it starts training, in which group, at what LR."""
    first = schedule.trainable_from()
    scales = {epoch: schedule.lr_scales(epoch) for epoch in set(first.values())}  # once per joining epoch
    rows = []
    for name in tree.param_names:
        s, epoch = settings[name], first.get(name)
        wd = cfg.train.optimizer.weight_decay if s.weight_decay is None else s.weight_decay
        if epoch is None:
            rows.append(ParamRow(name, tree.numel[name], None, "-", None, wd))
            continue
        event = scales[epoch].get(name, 1.0)
        rows.append(
            ParamRow(
                name,
                tree.numel[name],
                epoch,
                group_label(epoch, s, event),
                cfg.train.optimizer.lr * s.lr_scale * event,
                wd,
            )
        )
    return rows


def render_params(rows: list[ParamRow]) -> str:
    """The ``--params`` table: one row per parameter."""
    return format_table(
        ["parameter", "params", "trains from", "effective lr", "weight decay", "optimizer group"],
        [
            [
                r.name,
                f"{r.numel:,}",
                f"epoch {r.trainable_from}" if r.trainable_from else "never (frozen)",
                f"{r.lr:.4g}" if r.lr is not None else "-",
                f"{r.weight_decay:g}",
                r.group,
            ]
            for r in rows
        ],
        right={1, 3, 4},
    )


def render_groups(rows: list[ParamRow]) -> str:
    """The optimizer groups the parameters will form, with their effective LR."""
    groups: dict[tuple[str, float], list[ParamRow]] = {}
    for r in rows:
        if r.lr is not None:
            groups.setdefault((r.group, r.weight_decay), []).append(r)
    return (
        format_table(
            ["optimizer group", "tensors", "params", "effective lr", "weight decay", "first tensor"],
            [
                [g, len(rs), f"{sum(r.numel for r in rs):,}", f"{rs[0].lr:.4g}", f"{wd:g}", rs[0].name]
                for (g, wd), rs in sorted(groups.items(), key=lambda kv: kv[1][0].trainable_from or 0)
            ],
            right={1, 2, 3, 4},
        )
        + "\n(--params lists every parameter's group and LR)"
    )


def render_schedule(schedule: Schedule, cfg: Config, steps_per_epoch: int) -> str:
    """The events, epoch by epoch, and the LR multiplier the schedule applies."""
    lines = []
    for before, phase in zip(schedule.phases, schedule.phases[1:]):
        # Each event's params are those whose state it changes, given the events before it in
        # the epoch (freezetune.plan.schedule): the count after each one follows by adding them up.
        trainable = before.plan.numel_trainable
        for ev in phase.events:
            s = ev.spec
            trainable += -ev.numel if s.rule.freezes else ev.numel
            scale = f", lr x{s.lr_scale:g}" if not s.rule.freezes and s.lr_scale != 1.0 else ""
            lines.append(
                f"epoch {s.epoch}: {s.kind} {s.target} ({len(ev.params)} tensors, {ev.numel:,} params{scale}) "
                f"[{s.origin}]; then {trainable:,} trainable"
            )
        assert trainable == phase.plan.numel_trainable, (trainable, phase.plan.numel_trainable)
    if cfg.train.scheduler.name == "none" and cfg.train.scheduler.warmup_epochs == 0:
        lines.append("LR schedule 'none': every group keeps its learning rate at every step")
        return "\n".join(lines)
    lr = LRSchedule(cfg.train.scheduler, steps_per_epoch, cfg.train.epochs)
    marks = [(e, (e - 1) * steps_per_epoch) for e in range(1, cfg.train.epochs + 1)]
    factors = ", ".join(f"epoch {e}: x{lr.factor(step):.3g}" for e, step in marks)
    lines.append(
        f"LR schedule '{cfg.train.scheduler.name}' ({steps_per_epoch} steps/epoch), multiplier at each "
        f"epoch's first step: {factors}; a group that joins late gets the multiplier of that moment"
    )
    return "\n".join(lines)


def render_auto(cfg: Config, tree: ModelTree, head: str) -> str:
    """What ``freeze.preset: auto`` will decide at run time, and from what (freezetune.plan.auto)."""
    a = cfg.freeze.auto
    stages = model_stages(tree, head, a.ceiling)
    first = max(a.warmup_epochs, 2)
    return (
        f"freeze.preset auto: the plan above is where training starts; the rest is decided at run time.\n"
        f"  After each epoch from epoch {first} on, the longest prefix of the stages "
        f"[{', '.join(stages)}] whose mean gradient norm changed by less than {a.threshold:g} (relative) since "
        f"the epoch before freezes from the next epoch.\n"
        f"  Never frozen: the head '{head}'"
        + (f" and everything from '{a.ceiling}' on" if a.ceiling else "")
        + f". Gradient norms sampled every {a.sample_every} step(s). "
        "Each decision, with every stage's rate, is an 'auto' row in events.jsonl."
    )


def render_cache(previews: list[tuple[int, CacheDecision]], mode: str, n_images: int) -> str:
    """What the feature cache will do, phase by phase: (first epoch, decision) pairs from
    freezetune.train.preview_cache, the decisions training makes."""
    lines = [f"feature cache (train.cache_features: {mode}), for {n_images:,} images (train + val):"]
    for epoch, d in previews:
        lines.append(f"  from epoch {epoch}: {_cache_line(d)}")
    return "\n".join(lines)


def _cache_line(d: CacheDecision) -> str:
    """One phase's cache decision in words."""
    if not d.used:
        return f"not used: {d.reason}"
    assert d.split is not None
    if d.action is CacheAction.KEEP and d.held is not None:
        kept = d.held.split.frontier
        if d.weighed is None and d.reason:  # decided by the batch counts, nothing traced
            return f"used: the cache of '{kept}' is kept, its prefix still frozen; a new one is {d.reason}"
        if kept == d.split.frontier:
            return f"used: the cache of '{kept}' is kept (the plan changes after it)"
        return f"used: the cache of '{kept}' is kept, its prefix still frozen; one at '{d.split.frontier}' {d.reason}"
    assert d.feature_shape is not None and d.bytes is not None
    shape = "x".join(str(n) for n in d.feature_shape)
    if d.feature_dtype != torch.float32:  # the compute dtype (train.precision), when not fp32
        shape += f" {str(d.feature_dtype).removeprefix('torch.')}"
    how = "built"
    if d.action is CacheAction.EXTEND and d.held is not None:
        how = f"extended from the features cached at '{d.held.split.frontier}'"
    setup = f" after about {d.setup_s:.1f} s of set-up" if d.setup_s is not None else ""
    if d.reading_s > 0:
        setup = f" ({d.reading_s:.1f} s of it reading the images)" + setup
    return (
        f"used: the prefix's output '{d.split.frontier}' ({shape} per image) is computed once, "
        f"before '{d.split.first_trainable}'; {format_bytes(d.bytes)} in {d.storage}, "
        f"{how} in about {d.build_s:.1f} s" + setup
    )


def module_rows(tree: ModelTree, plan: FreezePlan, depth: int | None = None) -> list[ModuleRow]:
    """One row per module that owns parameters, or per module at ``depth`` (1 = top level)
    with the parameters under it added up."""
    trainable = {p.name: p.trainable for p in plan.params}
    pinned = set(plan.pinned)
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
        mode = "eval (pinned)" if m.name in pinned else "train"
        if depth is not None and level == depth:  # a summary row: say when the modules under it differ
            owners = [o for o in tree.modules if o.params and (o.name + ".").startswith(m.name + ".")]
            pins = [o.name in pinned for o in owners]
            if any(pins) and not all(pins):
                mode = f"mixed ({sum(pins)} of {len(pins)} pinned)"
        rows.append(
            ModuleRow(
                m.name or "(root)",
                m.type_name,
                sum(tree.numel[n] for n in owned),
                sum(tree.numel[n] for n in owned if trainable[n]),
                mode,
            )
        )
    return rows


@dataclass(frozen=True)
class Probe:
    """What one forward pass in train mode shows of autograd's graph (:func:`probe_autograd`)."""

    rows: list[ProbeRow]  # each top-level module's output
    # The module the graph starts at, named as deep as says something: the outermost module whose
    # first operation is where the graph starts (mobilenet's 'features.6', not 'features'). None:
    # nothing trains.
    start: str | None
    # Modules owning a frozen parameter that run after the graph has started: backward still runs
    # through them to reach the trainable parameters before them, and they save tensors for it.
    # Empty when the frozen parameters form a prefix.
    frozen_in_graph: tuple[str, ...]


@dataclass
class _Call:
    """One module's call in the probe's forward pass, in the order the calls started."""

    name: str
    input_grad: bool = False
    output_grad: bool = False


def probe_autograd(model: nn.Module, x: torch.Tensor) -> Probe:
    """Run one forward pass in train mode and record, for every top-level module, whether its
    output requires grad and which backward node produced it, and where inside the graph starts.

    A module whose output has ``grad_fn is None`` lies in the frozen prefix:
    autograd records nothing there, so backward never reaches it."""
    rows: list[ProbeRow] = []
    calls: list[_Call] = []
    handles = []
    modules = dict(model.named_modules())

    def before(name: str):
        def record(module: nn.Module, args: tuple[object, ...]) -> None:
            t = first_tensor(args)
            calls.append(_Call(name, input_grad=t is not None and t.requires_grad))

        return record

    def after(name: str, top: bool):
        def record(module: nn.Module, args: object, output: object) -> None:
            t = first_tensor(output)
            if t is None:
                return
            call = next(c for c in reversed(calls) if c.name == name)
            call.output_grad = t.requires_grad
            if top:
                fn = type(t.grad_fn).__name__ if t.grad_fn is not None else None
                rows.append(ProbeRow(name, type(module).__name__, t.requires_grad, fn))

        return record

    for name, module in modules.items():
        if name:
            handles.append(module.register_forward_pre_hook(before(name)))
            handles.append(module.register_forward_hook(after(name, "." not in name)))
    try:
        with train_mode(model), torch.enable_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return Probe(rows, _graph_start(calls, modules), _frozen_in_graph(calls, modules))


def _own_params(module: nn.Module) -> list[nn.Parameter]:
    return list(module.parameters(recurse=False))


def _is_leaf(module: nn.Module) -> bool:
    return next(module.children(), None) is None


def _graph_start(calls: list[_Call], modules: dict[str, nn.Module]) -> str | None:
    """The module the graph starts at. Units of work are the calls of modules without children
    and of modules using parameters of their own (ViT's encoder adds its pos_embedding); the first
    unit whose own work made its output need grad starts the graph. It is widened to each
    enclosing module whose first unit it is: features.6.conv.0.0 -> features.6, since features
    ran frozen blocks before it."""
    units = [c for c in calls if _is_leaf(modules[c.name]) or _own_params(modules[c.name])]

    def starts(c: _Call) -> bool:
        module = modules[c.name]
        own = _is_leaf(module) or any(p.requires_grad for p in _own_params(module))
        return c.output_grad and not c.input_grad and own

    first = next((c.name for c in units if starts(c)), None)
    if first is None:
        return None
    name = first
    while "." in name:
        parent = name.rsplit(".", 1)[0]
        if next(c.name for c in units if c.name.startswith(parent + ".")) != first or _own_params(modules[parent]):
            break  # the parent does other work before it: the graph starts inside the parent
        name = parent
    return name


def _frozen_in_graph(calls: list[_Call], modules: dict[str, nn.Module]) -> tuple[str, ...]:
    """Modules with a frozen parameter of their own that are called on an input needing grad."""
    names = (c.name for c in calls if c.input_grad and any(not p.requires_grad for p in _own_params(modules[c.name])))
    return tuple(dict.fromkeys(names))


def render_plan(
    tree: ModelTree,
    plan: FreezePlan,
    probe: Probe | None,
    depth: int | None = None,
    schedule: Schedule | None = None,
) -> str:
    """The plan table, its totals and, given a probe, the autograd table under it."""
    rows = module_rows(tree, plan, depth)
    headers = ["module", "type", "params", "status", "mode"]
    cells = [[r.name, r.type_name, f"{r.params:,}", r.status, r.mode] for r in rows]
    if schedule is not None and schedule.changes:
        # When each module starts training; "status" above is epoch 1's.
        first = schedule.trainable_from()
        headers.append("trains from")
        for row, r in zip(cells, rows):
            row.append(_trains_from(tree, "" if r.name == "(root)" else r.name, first, depth))
    table = format_table(headers, cells, right={2})
    total, train = plan.numel_total, plan.numel_trainable
    parts = [
        table,
        "",
        f"parameters: {total:,} total, {train:,} trainable ({100.0 * train / total:.2f}%), {total - train:,} frozen",
        f"tensors:    {len(plan.trainable)} trainable, {len(plan.frozen)} frozen "
        "(requires_grad=False; never in the optimizer)",
        f"batchnorm:  policy '{plan.batchnorm}', {len(plan.pinned_bn)} module(s) pinned in eval (running stats frozen)",
        f"modes:      frozen_modules '{plan.frozen_modules}', {len(plan.pinned_other)} other module(s) pinned in eval "
        "(Dropout and stochastic depth off where nothing trains)",
    ]
    if plan.adapters:
        parts += ["", *render_adapters(plan)]
    if probe is not None:
        parts += [
            "",
            "autograd, from one forward pass in train mode (output of each top-level module):",
            format_table(
                ["module", "type", "requires_grad", "grad_fn"],
                [[r.name, r.type_name, r.requires_grad, r.grad_fn or "None (no graph recorded)"] for r in probe.rows],
            ),
        ]
        if probe.start is not None:
            parts.append(f"the autograd graph starts at '{probe.start}'; backward() does no work before it.")
    return "\n".join(parts)


def _share(trainable: int, total: int) -> str:
    return f"{100.0 * trainable / total:.2f}%" if total else "-"


def render_adapters(plan: FreezePlan) -> list[str]:
    """``freeze.adapters`` in the plan: per entry the modules, kind, rank, the layers it adapts and
    the parameters it adds, and the trainable share with and without it."""
    total, train = plan.numel_total, plan.numel_trainable
    cells = [
        [
            a.origin,
            ", ".join(a.selectors),
            a.kind,
            str(a.rank),
            f"{a.alpha:g}",
            f"{len(a.layers)} ({a.layers[0]}{', ...' if len(a.layers) > 1 else ''})",
            f"{a.numel:,}",
            _share(train, total),
            _share(train - a.numel, total - a.numel),
        ]
        for a in plan.adapters
    ]
    added = sum(a.numel for a in plan.adapters)
    table = format_table(
        ["adapter", "modules", "kind", "rank", "alpha", "layers", "params added", "trainable", "without it"],
        cells,
        right={3, 4, 6, 7, 8},
    )
    return [
        "adapters (freeze.adapters): each adapted layer's own weights are frozen (its base_layer above) and verified "
        "bitwise; the adapters train",
        table,
        f"trainable with the adapters: {train:,} of {total:,} ({_share(train, total)}); without them: "
        f"{train - added:,} of {total - added:,} ({_share(train - added, total - added)})",
    ]


def _trains_from(tree: ModelTree, module: str, first: dict[str, int], depth: int | None) -> str:
    if depth is not None and module:
        owned = [n for n in tree.param_names if n.startswith(module + ".")]
    else:
        owned = list(tree.module(module).params)  # type: ignore[union-attr]
    epochs = sorted({first[n] for n in owned if n in first})
    if not epochs:
        return "never"
    partly = len(epochs) > 1 or any(n not in first for n in owned)
    return f"epoch {epochs[0]}" + (" (partly)" if partly else "")


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
        ["module", "state", "fwd ms", "bwd ms", "saved KiB", "full: fwd+bwd ms", "full: saved KiB"],
        rows,
        right={2, 3, 4, 5, 6},
    )
    return "\n".join(
        [
            f"predicted cost per step, from a per-module profile of real steps on a batch of {est.profile.batch}"
            " (compute only, no data loading):",
            table,
            f"optimizer step: {1000 * est.optimizer_s:.2f} ms "
            f"(full fine-tuning: {1000 * est.profile.full_optimizer_s:.2f} ms)",
            f"predicted step time: {1000 * est.step_s:.1f} ms vs {1000 * est.full_step_s:.1f} ms for full fine-tuning"
            f" (×{est.step_ratio:.2f})",
            f"predicted activations saved for backward: {est.saved_bytes / 2**20:.2f} MiB vs "
            f"{est.full_saved_bytes / 2**20:.2f} MiB (×{est.saved_ratio:.3f})",
        ]
    )
