"""Evaluate a finished run's model on labelled images: accuracy, per-class precision, recall
and F1, and the confusion matrix.
freezetune evaluate --run runs/NAME [--checkpoint best|last] [--data DIR]
(also python scripts/evaluate.py). DIR holds DIR/CLASS/image.png with class names the model
knows; without it, the run's own validation split. Writes PREFIX.json and PREFIX.png
(default runs/NAME/evaluation)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch

from freezetune.cli import common as cli
from freezetune.cli.predict import add_run_args, check_counts, nothing_readable, output_paths, write_outputs
from freezetune.config import ConfigError
from freezetune.data import build_loaders
from freezetune.infer import (
    LabelledPredictions,
    RunModel,
    evaluation_report,
    labelled_images,
    load_run,
    predict_dataset,
    predict_files,
)
from freezetune.measure import resolve_device
from freezetune.report import confusion_png
from freezetune.utils.text import format_table

__all__ = ["main"]

_PRINTED_MATRIX_MAX = 20  # classes up to which the confusion matrix is printed, not only written


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Run the command with ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    parser = cli.Parser(prog=prog, description=__doc__)
    add_run_args(parser)
    parser.add_argument(
        "--data", default=None, metavar="DIR", help="a labelled folder, DIR/CLASS/*.png (default: the run's val split)"
    )
    cli.add_debug_arg(parser)
    args = parser.parse_args(argv)

    def body() -> int:
        check_counts(args.batch_size)
        run = load_run(args.run, args.checkpoint)
        # The data is checked before the outputs: a wrong --data is the mistake to report first.
        left_out: list[str] = []
        if args.data:
            source = str(args.data)
            samples, empty, left_out = labelled_images(args.data, run.classes)
        else:
            data = run.config.data
            source = f"the run's validation split ({data.dataset}{'' if data.dataset == 'fake' else ', ' + data.root})"
            val = _val_split(run)
        out = output_paths(args.out, run.run_dir / "evaluation", (".json", ".png"), args.overwrite)
        device = resolve_device(args.device, "--device")
        if args.data:
            for name in empty:
                print(f"warning: --data: class folder {Path(args.data) / name} holds no image files", file=sys.stderr)
            if left_out:
                print(
                    f"note: --data: left out {len(left_out)} class folder(s) the model was not trained on: "
                    f"{', '.join(left_out)}",
                    file=sys.stderr,
                )
            result = _predict_folder(run, samples, args.batch_size, device)
        else:
            result = predict_dataset(run.model, val, args.batch_size, device)
        if not len(result.targets):
            raise nothing_readable(result.skipped)
        report = {
            "run": str(run.run_dir),
            "checkpoint": str(run.path),
            "epoch": run.epoch,
            "data": source,
            "classes_left_out": left_out,
            **evaluation_report(result.targets, result.probs.argmax(dim=1), run.classes),
            "skipped": result.skipped,
        }
        png, note = _plot(report, run, out[".png"])
        # Written before anything is printed: `evaluate ... | head` closing stdout early still leaves the files.
        # Both or neither: a PNG drawn in memory, so a full disk leaves no table without its plot.
        write_outputs({out[".json"]: (json.dumps(report, indent=2) + "\n").encode(), **png})
        print(f"model: {run.describe()}")
        print(f"data: {source}")
        print(_render(report))
        for s in result.skipped:
            print(f"warning: {s['path']}: cannot be read as an image ({s['reason']}); skipped", file=sys.stderr)
        print(note or f"wrote {out['.json']} and {out['.png']}")
        return 0

    return cli.guarded(body, args.debug, output="--out")


def _predict_folder(
    run: RunModel, samples: list[tuple[Path, int]], batch_size: int, device: torch.device
) -> LabelledPredictions:
    """Predictions for a labelled folder's images; unreadable ones in ``skipped``."""
    predictions = predict_files(run, [path for path, _ in samples], batch_size, device)
    kept = [(p, label) for p, (_, label) in zip(predictions, samples) if p.probs is not None]
    k = len(run.classes)
    return LabelledPredictions(
        torch.stack([p.probs for p, _ in kept]) if kept else torch.empty(0, k),  # type: ignore[misc]
        torch.tensor([label for _, label in kept], dtype=torch.long),
        [{"path": p.path, "reason": str(p.error)} for p in predictions if p.error],
    )


def _val_split(run: RunModel) -> Any:
    """The run's validation dataset, labelled in the model's output order."""
    cfg = run.config
    try:
        loaders = build_loaders(cfg.data, cfg.seed, len(run.classes), check_images=False)
    except ConfigError as exc:  # the data the run was trained on has moved or gone
        hint = "(the run's validation data, read from its config). HINT: --data DIR evaluates on a folder of yours"
        raise ConfigError([*exc.problems[:-1], f"{exc.problems[-1]} {hint}"]) from None
    return loaders.val.dataset


def _render(report: dict[str, Any]) -> str:
    """Accuracy, the per-class table with macro averages, and the confusion matrix."""
    lines = [f"accuracy: {report['accuracy']:.4f} ({report['correct']} of {report['samples']} images)", ""]
    rows: list[list[object]] = [
        [r["class"], f"{r['precision']:.3f}", f"{r['recall']:.3f}", f"{r['f1']:.3f}", r["support"]]
        for r in report["per_class"]
    ]
    macro = report["macro"]
    rows.append(["macro avg", f"{macro['precision']:.3f}", f"{macro['recall']:.3f}", f"{macro['f1']:.3f}", ""])
    lines.append(format_table(["class", "precision", "recall", "f1", "support"], rows, right={1, 2, 3, 4}))
    lines.append("(a class never predicted has precision 0; macro averages are over the classes with support)")
    lines.append("")
    names, matrix = report["confusion"]["classes"], report["confusion"]["matrix"]
    if len(names) > _PRINTED_MATRIX_MAX:
        lines.append(f"confusion matrix: {len(names)}x{len(names)} classes, in the JSON and the PNG")
    else:
        lines.append("confusion matrix (rows: true class, columns: predicted):")
        body: list[list[object]] = [[name, *counts] for name, counts in zip(names, matrix)]
        lines.append(format_table(["true \\ predicted", *names], body, right=set(range(1, len(names) + 1))))
    return "\n".join(lines)


def _plot(report: dict[str, Any], run: RunModel, path: Path) -> tuple[dict[Path, bytes], str | None]:
    """``{path: the confusion matrix PNG}``; none, and a note saying why, when matplotlib is not installed."""
    title = f"{run.run_dir.name} ({run.path.name}): accuracy {report['accuracy']:.3f} on {report['samples']} images"
    try:
        return {path: confusion_png(report["confusion"]["matrix"], report["confusion"]["classes"], title)}, None
    except ModuleNotFoundError as exc:
        if not (exc.name or "").startswith("matplotlib"):
            raise
        json_path = path.with_suffix(".json")
        return (
            {},
            f"wrote {json_path}; note: matplotlib is not installed, so no {path} (pip install 'freezetune[report]')",
        )
