"""The transfer demo behind `make demo`: freezetune demo [key=value ...] (also python scripts/demo.py)

Pretrains resnet18 on Fashion-MNIST classes 0-4 (skipped when its checkpoint is
current), fine-tunes on classes 5-9 under seven freezing configs over their seeds (finished
runs of the same config are reused), prints the tables and writes runs/report."""

from __future__ import annotations

import time

from freezetune.apps.demo import demo_report, results_table, run_demo
from freezetune.cli import common as cli
from freezetune.record import EpochResult
from freezetune.report import ranking_line, reference_line, text_table, timing_line, unresolved_line


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Run the command with ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    parser = cli.Parser(prog=prog, description=__doc__)
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="edits applied to every demo config")
    parser.add_argument("--no-progress", action="store_true")
    cli.add_debug_arg(parser)
    args = parser.parse_intermixed_args(argv)  # key=value edits may follow the flags too
    cli.setup_logging()

    def body() -> int:
        start = time.perf_counter()

        def report(name: str, r: EpochResult) -> None:
            print(f"  {name} epoch {r.epoch}: val_acc {r.val_acc:.4f}, {r.epoch_time_s:.1f}s", flush=True)

        progress = cli.tqdm_progress(cli.progress_enabled(not args.no_progress))
        summaries = run_demo(args.overrides, progress, report)
        print()
        print(results_table(summaries))
        print("\npredicting each config's cost from a per-module profile, then writing the report ...", flush=True)
        comparison, paths = demo_report(summaries, args.overrides)
        print()
        print(reference_line(comparison))
        print(text_table(comparison))
        print(unresolved_line(comparison))
        print(timing_line(comparison))
        print(ranking_line(comparison))
        print(f"\nreport: {', '.join(str(p) for p in paths)}")
        print(f"demo finished in {time.perf_counter() - start:.0f}s; run records under runs/")
        return 0 if all(s["frozen_unchanged"] for s in summaries) else 1

    return cli.guarded(body, args.debug)
