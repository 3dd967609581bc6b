"""Compare freezing configs' speed, memory and accuracy, measured, with a predicted column.

  freezetune compare --configs A.yaml B.yaml ... [key=value ...]   # train each, then report
  freezetune compare runs/a runs/b ...                              # report finished runs
  (also python scripts/compare.py ...)

Writes report.md, report.json and report.png to --out (default runs/report)."""

from __future__ import annotations

import argparse
from pathlib import Path

from freezetune.apps.compare import estimate_config, run_action, train_in_subprocess
from freezetune.cli import common as cli
from freezetune.config import ConfigError, load_config
from freezetune.report import build_report, load_run, text_table, write_report


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Run the command with ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--configs", nargs="+", default=None, help="configs to train and compare")
    parser.add_argument("items", nargs="*", help="run folders, or key=value edits when --configs is given")
    parser.add_argument("--out", default="runs/report", help="where the report goes")
    parser.add_argument("--no-estimate", action="store_true", help="skip the predicted column")
    parser.add_argument(
        "--overwrite", action="store_true", help="with --configs: replace runs made from other configs (else refused)"
    )
    cli.add_debug_arg(parser)
    args = parser.parse_intermixed_args(argv)  # key=value edits may follow the flags too
    cli.setup_logging()

    def body() -> int:
        if args.configs:
            # `--configs a.yaml b.yaml key=value`: argparse hands the edits to --configs too.
            files = [c for c in args.configs if "=" not in c]
            overrides = [c for c in args.configs if "=" in c] + args.items
            configs = [load_config(c, overrides) for c in files]  # every error before any training
            _distinct(
                [str(c.output_dir.resolve()) for c in configs],
                [f"{f} ({c.output_dir})" for f, c in zip(files, configs)],
            )
            actions = [run_action(c, args.overwrite) for c in configs]  # and every refusal
            run_dirs = []
            for file, cfg, action in zip(files, configs, actions):
                if action == "reuse":
                    print(f"{cfg.name}: reusing {cfg.output_dir} (finished, same config)", flush=True)
                    run_dirs.append(cfg.output_dir)
                else:
                    verb = "replacing the run in" if action == "replace" else "training into"
                    print(f"{cfg.name}: {verb} {cfg.output_dir}", flush=True)
                    run_dirs.append(train_in_subprocess(file, overrides, overwrite=action == "replace"))
        else:
            if not args.items:
                parser.error("give run folders, or --configs")
            run_dirs = [Path(p) for p in args.items]
            _distinct([str(d.resolve()) for d in run_dirs], [str(d) for d in run_dirs])
            for d in run_dirs:
                load_run(d)  # a folder without a finished run is named before its config is read
            configs = [load_config(d / "config.yaml") for d in run_dirs]
        runs = [load_run(d) for d in run_dirs]
        out = Path(args.out)
        if out.exists() and (not out.is_dir() or (out / "summary.json").is_file()):
            raise ConfigError(
                [f"--out {out}: {'a file' if not out.is_dir() else 'a run folder'}; choose a folder for the report"]
            )
        cache: dict = {}
        # A scheduled config has one plan per phase: no single prediction fits it.
        estimates = (
            {}
            if args.no_estimate
            else {c.name: estimate_config(c, cache=cache).to_json() for c in configs if not c.freeze.scheduled}
        )
        report = build_report(runs, estimates)
        paths = write_report(report, args.out)
        print(text_table(report))
        print("\nreport: " + ", ".join(str(p) for p in paths))
        return 0

    return cli.guarded(body, args.debug)


def _distinct(keys: list[str], labels: list[str]) -> None:
    """Refuse two configs that would write one run folder (the second would replace the first),
    or one run folder given twice."""
    seen: dict[str, str] = {}
    for key, label in zip(keys, labels):
        if key in seen:
            raise ConfigError(
                [
                    f"{seen[key]} and {label} are the same run folder: "
                    "give each config its own name (or train.output_dir)"
                ]
            )
        seen[key] = label
