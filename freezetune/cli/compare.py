"""Compare freezing configs over seeds: accuracy with 95% intervals against what it cost
(training time, memory, step time), measured, with a predicted column.

  freezetune compare --configs A.yaml B.yaml ... [--seeds N] [key=value ...]   # train, then report
  freezetune compare runs/a-seed0 runs/a-seed1 runs/b-seed0 ...                # report finished runs
  (also python scripts/compare.py ...)

With --seeds N (or a config's own `seeds:`) each config trains with seeds seed..seed+N-1, each
in its own folder <output_dir>-seed<S>, seed by seed across the configs (A B A B: drift in the
machine's speed hits all configs alike); finished runs of the same config are reused.
Differences to the reference (--reference NAME; default: the config that trains every
parameter) are paired by seed, and marked resolved when their 95% interval excludes 0.

Ctrl-C finishes the running seed run's step, saves its checkpoint and stops the comparison (130);
the same command again reuses the finished runs and continues the stopped (or failed) one.

Writes report.md, report.json, report.png, tradeoff.png and curves.png to --out (default runs/report)."""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from pathlib import Path

from freezetune.apps.compare import Comparison, ComparisonStopped, run_comparison, summary_lines
from freezetune.cli import common as cli
from freezetune.report import DEFAULT_TARGET, parse_target


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Run the command with ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    parser = _parser(prog)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_intermixed_args(argv)  # key=value edits may follow the flags too
    cli.setup_logging()
    request = Comparison(
        out=Path(args.out),
        seeds=args.seeds,
        overwrite=args.overwrite,
        reference=args.reference,
        target=args.target_acc,
        estimate=not args.no_estimate,
    )
    if args.configs:
        # `--configs a.yaml b.yaml key=value`: argparse hands the edits to --configs too.
        files = [c for c in args.configs if "=" not in c]
        overrides = [c for c in args.configs if "=" in c] + args.items
        request = dataclasses.replace(request, files=files, overrides=overrides)
    else:
        if args.items and any("=" in i for i in args.items):
            parser.error("key=value edits need --configs (run folders are compared as they were trained)")
        if not args.items:
            parser.error("give run folders, or --configs")
        if args.seeds is not None:
            parser.error("--seeds needs --configs (run folders already have their seeds)")
        request = dataclasses.replace(request, run_dirs=[Path(p) for p in args.items])

    def body() -> int:
        compared = run_comparison(request)
        if isinstance(compared, ComparisonStopped):
            # The same command continues: it reuses what finished and resumes what stopped.
            print(compared.lines(" ".join([prog or f"python {sys.argv[0]}", shlex.join(argv)])), flush=True)
            return cli.EXIT_INTERRUPTED
        print(summary_lines(*compared))
        return 0

    return cli.guarded(body, args.debug, output="--out or train.output_dir")


def _parser(prog: str | None) -> cli.Parser:
    parser = cli.Parser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=None, help="configs to train and compare")
    parser.add_argument("items", nargs="*", help="run folders, or key=value edits when --configs is given")
    parser.add_argument(
        "--seeds", type=_positive, default=None, help="with --configs: seeds per config (default: each config's seeds:)"
    )
    parser.add_argument(
        "--reference", default=None, metavar="NAME", help="the config ratios and differences are against"
    )
    parser.add_argument(
        "--target-acc",
        default=DEFAULT_TARGET,
        type=_target,
        # argparse %-formats help: a literal % is written %%.
        help=f"time-to-target column: an accuracy (0.85) or a share of the reference's "
        f"(default {DEFAULT_TARGET.replace('%', '%%')})",
    )
    parser.add_argument("--out", default="runs/report", help="where the report goes")
    parser.add_argument("--no-estimate", action="store_true", help="skip the predicted column")
    parser.add_argument(
        "--overwrite", action="store_true", help="with --configs: replace runs made from other configs (else refused)"
    )
    cli.add_debug_arg(parser)
    return parser


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number of seeds, 1 or more")
    return value


def _target(text: str) -> str:
    try:
        parse_target(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text
