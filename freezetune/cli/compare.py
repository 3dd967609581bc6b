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

Writes report.md, report.json, report.png, tradeoff.png and curves.png to --out (default runs/report)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from freezetune.apps.compare import (
    SeedRun,
    check_runnable,
    estimate_config,
    interleave,
    run_action,
    seed_runs,
    train_in_subprocess,
)
from freezetune.cli import common as cli
from freezetune.config import ConfigError, load_config
from freezetune.report import (
    DEFAULT_TARGET,
    build_report,
    load_run,
    parse_target,
    ranking_line,
    reference_line,
    text_table,
    unresolved_line,
    write_report,
)

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Run the command with ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
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
    args = parser.parse_intermixed_args(argv)  # key=value edits may follow the flags too
    cli.setup_logging()

    def body() -> int:
        out = Path(args.out)
        if out.exists() and (not out.is_dir() or (out / "summary.json").is_file()):
            raise ConfigError(
                [f"--out {out}: {'a file' if not out.is_dir() else 'a run folder'}; choose a folder for the report"]
            )
        if args.configs:
            # `--configs a.yaml b.yaml key=value`: argparse hands the edits to --configs too.
            files = [c for c in args.configs if "=" not in c]
            overrides = [c for c in args.configs if "=" in c] + args.items
            _distinct([str(Path(f).resolve()) for f in files], files, "the same file given twice", "give it once")
            plans = [seed_runs(f, overrides, args.seeds) for f in files]  # every error before any training
            configs = [p[0].cfg for p in plans]
            _distinct(
                [c.name for c in configs],
                [f"{f} (name {c.name})" for f, c in zip(files, configs)],
                "one config name, and a comparison pools the runs of one name",
                "give each config its own name",
            )
            _check_reference(args.reference, [c.name for c in configs])
            order = interleave(plans)
            _distinct(
                [str(r.cfg.output_dir.resolve()) for r in order],
                [f"{r.file} ({r.cfg.output_dir})" for r in order],
                "the same run folder",
                "give each config its own name (or train.output_dir)",
            )
            _out_not_in(out, [r.cfg.output_dir for r in order])
            actions = [run_action(r.cfg, args.overwrite) for r in order]  # and every refusal
            for plan in plans:  # the model, weights, plan and data of each config that will train
                if any(actions[order.index(r)] != "reuse" for r in plan):
                    check_runnable(plan[0].cfg)
            run_dirs = [_train_or_reuse(r, action) for r, action in zip(order, actions)]
        else:
            if args.items and any("=" in i for i in args.items):
                parser.error("key=value edits need --configs (run folders are compared as they were trained)")
            if not args.items:
                parser.error("give run folders, or --configs")
            if args.seeds is not None:
                parser.error("--seeds needs --configs (run folders already have their seeds)")
            run_dirs = [Path(p) for p in args.items]
            _distinct([str(d.resolve()) for d in run_dirs], [str(d) for d in run_dirs], "the same run folder", "")
            _out_not_in(out, run_dirs)
            for d in run_dirs:
                load_run(d)  # a folder without a finished run is named before its config is read
            configs = []
            for d in run_dirs:
                cfg = load_config(d / "config.yaml")
                if cfg.name not in (c.name for c in configs):
                    configs.append(cfg)  # one prediction per config, whatever its seeds
            _check_reference(args.reference, [c.name for c in configs])
        runs = [load_run(d) for d in run_dirs]
        cache: dict = {}
        # A scheduled config has one plan per phase: no single prediction fits it.
        estimates = (
            {}
            if args.no_estimate
            else {c.name: estimate_config(c, cache=cache).to_json() for c in configs if not c.freeze.scheduled}
        )
        report = build_report(runs, estimates, reference=args.reference, target=args.target_acc)
        paths = write_report(report, args.out)
        print(("warning: " if "NO config" in report["reference_why"] else "") + reference_line(report))
        for warning in report["warnings"]:
            print(f"warning: {warning}")
        print(text_table(report))
        print(unresolved_line(report))
        print(ranking_line(report))
        print("\nreport: " + ", ".join(str(p) for p in paths))
        return 0

    return cli.guarded(body, args.debug)


def _train_or_reuse(r: SeedRun, action: str) -> Path:
    seed = f" seed {r.cfg.seed}" if r.cfg.output_dir.name.endswith(f"-seed{r.cfg.seed}") else ""
    if action == "reuse":
        print(f"{r.cfg.name}{seed}: reusing {r.cfg.output_dir} (finished, same config)", flush=True)
        return r.cfg.output_dir
    verb = "replacing the run in" if action == "replace" else "training into"
    print(f"{r.cfg.name}{seed}: {verb} {r.cfg.output_dir}", flush=True)
    return train_in_subprocess(r.file, r.overrides, overwrite=action == "replace")


def _out_not_in(out: Path, run_dirs: list[Path]) -> None:
    """The report's folder is neither a run folder of this comparison nor inside one (a run's
    own report, freezetune report, would overwrite report.md there)."""
    where = out.resolve()
    for d in run_dirs:
        if where == d.resolve() or d.resolve() in where.parents:
            raise ConfigError([f"--out {out}: inside the run folder {d}; choose a folder of its own for the report"])


def _check_reference(name: str | None, names: list[str]) -> None:
    """An unknown --reference is refused before anything trains."""
    if name is not None and name not in names:
        raise ConfigError([f"--reference {name}: no such config here; choose one of {', '.join(names)}"])


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


def _distinct(keys: list[str], labels: list[str], what: str, fix: str) -> None:
    """Refuse two configs that would write one run folder (the second would replace the first),
    one run folder given twice, or two configs of one name (their seeds would be pooled)."""
    seen: dict[str, str] = {}
    for key, label in zip(keys, labels):
        if key in seen:
            raise ConfigError([f"{seen[key]} and {label} are {what}" + (f": {fix}" if fix else "")])
        seen[key] = label
