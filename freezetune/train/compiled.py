"""``train.compile``: the net that trains compiled anew for each phase, and what each
compilation cost (summary.json's ``compile``).

Dynamo guards each graph on the requires_grad of every parameter it reads, so a phase's
graphs can never run in the next phase; the net that evaluates stays eager."""

from __future__ import annotations

import logging
import statistics
from typing import Any

import torch.nn as nn

__all__ = ["PhaseCompiler"]

log = logging.getLogger(__name__)


def _dynamo_counts() -> tuple[int, int]:
    """(graphs compiled, graph breaks) so far in this process, from torch._dynamo's counters."""
    from torch._dynamo.utils import counters  # here: importing dynamo takes a second, only compile needs it

    return counters["stats"]["unique_graphs"], sum(counters["graph_break"].values())


class PhaseCompiler:
    """Compiles the trained net at each phase's start and keeps one record per compiled phase."""

    def __init__(self, name: str, enabled: bool) -> None:
        self.name, self.enabled = name, enabled
        self._compiles: list[dict[str, Any]] = []  # one entry per compiled phase; see to_json
        self._counts_at_compile = (0, 0)

    def compile(self, net: nn.Module, what: str, numel_trainable: int) -> nn.Module:
        """``net`` compiled for the phase that starts (``what``: the net, in words, for the log and
        the record). The previous phase's graphs are dropped (torch._dynamo.reset) rather than left
        to count towards dynamo's recompile limit (8 per function), past which it would run that
        function eagerly. The evaluating net is not compiled: evaluation under inference_mode in
        eval mode would be other graphs, compiled again in each phase for a few batches."""
        import torch._dynamo  # here: importing dynamo takes a second, only train.compile needs it

        self._close()
        torch._dynamo.reset()
        log.info(
            "%s: compiling the trained part for the new phase (%s, %s trainable parameters); "
            "the first step pays for the compilation",
            self.name,
            what,
            f"{numel_trainable:,}",
        )
        compiled = torch.compile(net)
        self._counts_at_compile = _dynamo_counts()
        self._compiles.append({"net": what, "trainable_params": numel_trainable, "graphs": None, "graph_breaks": None})
        return compiled  # type: ignore[return-value]

    def _close(self) -> None:
        """Count what dynamo compiled for the phase now in force (before the next one starts)."""
        if self._compiles and self._compiles[-1]["graphs"] is None:
            graphs, breaks = _dynamo_counts()
            self._compiles[-1].update(
                graphs=graphs - self._counts_at_compile[0], graph_breaks=breaks - self._counts_at_compile[1]
            )

    def steps_done(self, durations: list[tuple[float, ...]]) -> None:
        """Note the first step after a (re)compilation, from a training pass's step durations
        (data, forward, backward, optimizer; freezetune.train.loop): it includes the compile."""
        if not self._compiles or "first_step_s" in self._compiles[-1] or not durations:
            return
        steps = [sum(d) for d in durations]
        self._compiles[-1]["first_step_s"] = steps[0]
        self._compiles[-1]["later_step_s"] = statistics.median(steps[1:]) if len(steps) > 1 else None
        log.info("%s: compiled; the first step took %.1fs", self.name, steps[0])

    def to_json(self) -> dict[str, Any]:
        """summary.json's ``compile``: whether it was on and, per compiled phase, what was
        compiled, the graphs dynamo compiled while it lasted (one, or two when an epoch's last
        batch is smaller: a graph with a dynamic batch size), graph breaks, and the first step's
        seconds (the compilation) next to the median of the other steps of that epoch."""
        self._close()
        return {"enabled": self.enabled, "phases_compiled": len(self._compiles), "phases": self._compiles}
