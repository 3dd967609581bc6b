"""A finished run's own report: freezetune report runs/NAME [runs/OTHER ...]
(also python scripts/report.py ...)

Writes report.md and curve.png into each run folder: the learning curve against cumulative
training seconds, each epoch's numbers, what the run cost (training seconds, step time by
phase, memory by kind, the feature cache) and its schedule. To compare runs with each other,
use `freezetune compare RUN ...`."""

from __future__ import annotations

import argparse
from pathlib import Path

from freezetune.cli import common as cli
from freezetune.report import load_run
from freezetune.report.run_report import write_run_report


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Run the command with ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    parser = cli.Parser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", metavar="RUN", help="finished run folders (runs/NAME)")
    cli.add_debug_arg(parser)
    args = parser.parse_args(argv)
    cli.setup_logging()

    def body() -> int:
        runs = [load_run(Path(p)) for p in args.runs]  # every folder checked before anything is written
        for run in runs:
            paths = write_run_report(run)
            print(
                f"{run['name']} (seed {run['seed']}): {run['final_val_acc']:.4f} after {run['epochs']} epochs, "
                f"{run.get('train_time_s', run['wall_time_s']):.1f} training s -> {', '.join(map(str, paths))}"
            )
        return 0

    return cli.guarded(body, args.debug)
