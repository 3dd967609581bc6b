"""One run of ``freezetune benchmark --peer``, in a fresh process:

  python -m freezetune.bench.peer_worker '{"framework": ..., "variant": ..., "config": ..., ...}'

The spec (JSON, freezetune.bench.peer.RunSpec) says which framework trains which config; the
result goes to the spec's ``out`` as JSON: first-step loss, validation accuracy, training and
fit seconds, median step, and the process's peak resident set size, read when the work is done.
A process per run, so that each peak is its own and neither framework's imports, allocator or
threads are warm for the other."""

from __future__ import annotations

import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from freezetune.bench.features import bn_state, head_input_norms
from freezetune.config import load_config
from freezetune.record import read_jsonl
from freezetune.train import finished, prepare_model, run
from freezetune.utils.files import write_file

__all__ = ["main", "run_freezetune", "freezetune_features"]


def _peak_rss() -> int:
    """The process's peak resident set size in bytes (Linux reports KiB, macOS bytes)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024


def run_freezetune(config: str, overrides: list[str]) -> dict[str, Any]:
    """``freezetune.train.run`` on ``config`` as a user runs it (its run record written to a
    temporary folder, deleted after); the numbers read from its summary and steps.jsonl."""
    with tempfile.TemporaryDirectory(prefix="freezetune-peer-") as folder:
        cfg = load_config(config, [*overrides, f"train.output_dir={folder}/run", "train.log=[jsonl]"])
        start = time.perf_counter()
        summary = finished(run(cfg, overwrite=True))
        fit_s = time.perf_counter() - start
        steps = read_jsonl(Path(summary.run_dir) / "steps.jsonl")
    return {
        "first_loss": steps[0]["loss"],
        "val_acc": summary.final_val_acc,
        "train_s": summary.train_time_s,
        "fit_s": fit_s,
        "step_s": summary.speed.get("step_time_s"),
        "steps": len(steps),
        "error": None,
    }


def freezetune_features(config: str, overrides: list[str]) -> dict[str, Any]:
    """The head input norms of ``config``'s model as freezetune prepares it (plan applied, frozen
    BatchNorm pinned in eval), on the first validation batch; nothing trains."""
    from freezetune.data import build_loaders
    from freezetune.plan import describe, find_head

    prepared = prepare_model(load_config(config, overrides))
    model = prepared.model.train()  # what train_one_epoch does: pinned BatchNorm stays in eval
    x, _ = next(iter(build_loaders(prepared.cfg.data, prepared.cfg.seed, prepared.num_classes).val))
    head = model.get_submodule(find_head(describe(model)))
    return {"head_input_norm": head_input_norms(model, head, x), "bn": bn_state(model)}


def main(argv: list[str] | None = None) -> int:
    """Run the spec given as the one argument; write the result to its ``out``."""
    spec = json.loads((argv if argv is not None else sys.argv[1:])[0])
    config, overrides = spec["config"], spec["overrides"]
    if spec["framework"] == "freezetune":
        result = (freezetune_features if spec.get("features") else run_freezetune)(config, overrides)
    else:
        from freezetune.bench.lightning_peer import fit_lightning  # Lightning: only in its own runs

        result = fit_lightning(load_config(config, overrides), spec["variant"], bool(spec.get("features")))
    result["peak_rss_bytes"] = _peak_rss()
    result["pid"] = os.getpid()
    write_file(Path(spec["out"]), (json.dumps(result) + "\n").encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
