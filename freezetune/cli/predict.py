"""Predict the classes of image files with a finished run's model:
freezetune predict --run runs/NAME [--checkpoint best|last] IMAGE_OR_FOLDER ...
(also python scripts/predict.py). Writes PREFIX.csv and PREFIX.json (default
runs/NAME/predictions); an unreadable file is listed there with the reason and skipped."""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path
from typing import Any

from freezetune.cli import common as cli
from freezetune.config import ConfigError
from freezetune.infer import Prediction, RunModel, find_images, load_run, predict_files, top_k
from freezetune.measure import resolve_device
from freezetune.utils.files import check_writable, write_files
from freezetune.utils.text import format_table

__all__ = ["add_run_args", "check_counts", "main", "nothing_readable", "output_paths", "write_outputs"]


def add_run_args(parser: argparse.ArgumentParser) -> None:
    """``--run``, ``--checkpoint``, ``--batch-size``, ``--device``, ``--out``, ``--overwrite``."""
    parser.add_argument("--run", required=True, help="a finished run folder (runs/NAME)")
    parser.add_argument(
        "--checkpoint",
        default="best",
        metavar="best|last|merged|adapters",
        help="best: best.pt, the epoch best by train.monitor (default); last: model.pt, the last epoch; a run with "
        "adapters also has merged (merged.pt, the last epoch's adapters folded in) and adapters (adapters.pt)",
    )
    parser.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default 32)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="default: auto")
    parser.add_argument(
        "--out", default=None, metavar="PREFIX", help="where the outputs go, without the extension (or a folder)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace outputs that exist already")


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Run the command with ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    parser = cli.Parser(prog=prog, description=__doc__)
    parser.add_argument("images", nargs="*", metavar="IMAGE_OR_FOLDER", help="files, and folders searched recursively")
    add_run_args(parser)
    parser.add_argument("--top-k", type=int, default=5, help="classes shown per image (default 5)")
    cli.add_debug_arg(parser)
    args = parser.parse_intermixed_args(argv)  # paths may come before or after the options

    def body() -> int:
        check_counts(args.batch_size, args.top_k)
        files, run = _inputs(args.images, args.run, args.checkpoint)
        out = output_paths(args.out, run.run_dir / "predictions", (".csv", ".json"), args.overwrite)
        device = resolve_device(args.device, "--device")
        predictions = predict_files(run, files, args.batch_size, device)
        bad = [p for p in predictions if p.error]
        if len(bad) == len(predictions):
            raise nothing_readable([{"path": p.path, "reason": str(p.error)} for p in bad])
        k = min(args.top_k, len(run.classes))
        # Written before anything is printed: `predict ... | head` closing stdout early still leaves the files.
        write_outputs({out[".csv"]: _csv(predictions, k, run.classes), out[".json"]: _json(predictions, k, run)})
        print(f"model: {run.describe()}")
        print(_table(predictions, k, run.classes))
        for p in bad:
            print(f"warning: {p.path}: cannot be read as an image ({p.error}); skipped", file=sys.stderr)
        note = f", {len(bad)} unreadable (listed with the reason)" if bad else ""
        print(f"{len(predictions) - len(bad)} image(s) predicted{note}; wrote {out['.csv']} and {out['.json']}")
        return 0

    return cli.guarded(body, args.debug, output="--out")


def _inputs(images: list[str], run: str, checkpoint: str) -> tuple[list[Path], RunModel]:
    """The files to predict and the run's model; ConfigError with the problems of both at once."""
    problems: list[str] = []
    files: list[Path] = []
    model = None
    try:
        files = find_images(images)
    except ConfigError as exc:
        problems += exc.problems
    try:
        model = load_run(run, checkpoint)
    except ConfigError as exc:
        problems += exc.problems
    if problems or model is None:
        raise ConfigError(problems)
    return files, model


def nothing_readable(skipped: list[dict[str, str]]) -> ConfigError:
    """The error for inputs of which not one file could be read (exit 2, nothing written)."""
    if len(skipped) == 1:
        return ConfigError([f"{skipped[0]['path']} could not be read as an image ({skipped[0]['reason']})"])
    shown = "; ".join(f"{s['path']} ({s['reason']})" for s in skipped[:3])
    more = f" and {len(skipped) - 3} more" if len(skipped) > 3 else ""
    return ConfigError([f"none of the {len(skipped)} files could be read as an image: {shown}{more}"])


def check_counts(batch_size: int, top_k: int | None = None) -> None:
    """ConfigError for a ``--batch-size`` or ``--top-k`` below 1."""
    problems = []
    if batch_size < 1:
        problems.append(f"--batch-size {batch_size}: give 1 or more")
    if top_k is not None and top_k < 1:
        problems.append(f"--top-k {top_k}: give 1 or more (the number of classes shown per image)")
    if problems:
        raise ConfigError(problems)


def output_paths(out: str | None, default: Path, suffixes: tuple[str, ...], overwrite: bool) -> dict[str, Path]:
    """The output files ``PREFIX + suffix``, checked before any work is done.

    ``out`` is the ``--out`` prefix (None: ``default``); a prefix ending in one of
    ``suffixes`` loses it (``--out preds.csv`` writes ``preds.csv``, not ``preds.csv.csv``),
    and an existing folder gets ``default``'s file name inside it.

    Raises:
        ConfigError: a file exists and ``overwrite`` is off, or the folder is a file.
        CannotWrite: the folder cannot be written (read-only, no permission).
    """
    prefix = Path(out).expanduser() if out else default
    if prefix.is_dir():
        prefix = prefix / default.name
    if prefix.suffix.lower() in suffixes:
        prefix = prefix.with_suffix("")
    paths = {s: prefix.with_name(prefix.name + s) for s in suffixes}
    parent = prefix.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent  # the nearest folder that exists: it must be a folder, not a file
    if not parent.is_dir():
        raise ConfigError([f"--out: {parent} is a file, not a folder; give another PREFIX"])
    existing = [str(p) for p in paths.values() if p.exists()]
    if existing and not overwrite:
        verb = "exists" if len(existing) == 1 else "exist"
        why = "" if out else " (the default output: an earlier run of this command wrote it)"
        raise ConfigError(
            [
                f"--out: {' and '.join(existing)} {verb} already{why}. "
                "HINT: --overwrite replaces, --out PREFIX writes elsewhere"
            ]
        )
    check_writable(prefix.parent)  # before the work, as train checks its folder before training
    return paths


def write_outputs(contents: dict[Path, bytes]) -> None:
    """Write the files whole, all or none, making their folder if need be (freezetune.utils.files)."""
    write_files(contents, make_folders=True)


def _table(predictions: list[Prediction], k: int, classes: list[str]) -> str:
    rows = []
    for p in predictions:
        if p.probs is None:
            continue
        (name, prob), *rest = top_k(p.probs, k, classes)
        rows.append([p.path, name, f"{prob:.3f}", ", ".join(f"{c} {v:.3f}" for c, v in rest)])
    headers = ["path", "class", "prob", f"next {k - 1}" if k > 1 else ""]
    return format_table(headers, rows, right={2})


def _csv(predictions: list[Prediction], k: int, classes: list[str]) -> bytes:
    """One row per file: path, class_1, probability_1, ..., class_k, probability_k, error."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", *(f"{c}_{i}" for i in range(1, k + 1) for c in ("class", "probability")), "error"])
    for p in predictions:
        if p.probs is None:
            writer.writerow([p.path, *([""] * (2 * k)), p.error])
        else:
            top = [x for name, prob in top_k(p.probs, k, classes) for x in (name, f"{prob:.6f}")]
            writer.writerow([p.path, *top, ""])
    return buffer.getvalue().encode()


def _json(predictions: list[Prediction], k: int, run: RunModel) -> bytes:
    rows: list[dict[str, Any]] = []
    for p in predictions:
        top = top_k(p.probs, k, run.classes) if p.probs is not None else []
        rows.append(
            {"path": p.path, "classes": [c for c, _ in top], "probabilities": [v for _, v in top], "error": p.error}
        )
    doc = {
        "run": str(run.run_dir),
        "checkpoint": str(run.path),
        "epoch": run.epoch,
        "arch": run.config.model.arch,
        "classes": run.classes,
        "top_k": k,
        "images": len(rows),
        "unreadable": sum(p.error is not None for p in predictions),
        "predictions": rows,
    }
    return (json.dumps(doc, indent=2) + "\n").encode()
