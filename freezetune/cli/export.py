"""Write a finished run's model as a file that runs without freezetune, checked against it:
freezetune export --run runs/NAME --format torchscript|exported_program|onnx
(also python scripts/export.py)"""

from __future__ import annotations

from freezetune.cli import common as cli
from freezetune.infer import (
    CHECKPOINT_FILES,
    DEFAULT_ATOL,
    EXPORT_FORMATS,
    check_batch,
    default_export_path,
    export_model,
    load_run,
    load_snippet,
    require_onnx,
)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Run the command with ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    parser = cli.Parser(prog=prog, description=__doc__)
    parser.add_argument("--run", required=True, help="a finished run folder (runs/NAME)")
    parser.add_argument("--format", required=True, choices=list(EXPORT_FORMATS), help="the file format to write")
    parser.add_argument(
        "--checkpoint",
        choices=list(CHECKPOINT_FILES),
        default="best",
        help="best (best.pt, the default) or last (model.pt); a run with adapters also has merged (merged.pt) "
        "and adapters (adapters.pt)",
    )
    parser.add_argument("--out", default=None, help="the file to write (default RUN/export/model.<ext>)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing file and its sidecar")
    parser.add_argument(
        "--atol",
        type=float,
        default=DEFAULT_ATOL,
        help=f"largest max abs difference from the model that passes the check (default {DEFAULT_ATOL:g})",
    )
    cli.add_debug_arg(parser)
    args = parser.parse_args(argv)
    if not args.atol >= 0:  # also refuses nan
        parser.error(f"--atol {args.atol}: give a tolerance of 0 or more")

    def body() -> int:
        if args.format == "onnx":
            require_onnx()  # before the minutes a run may take to load
        run = load_run(args.run, args.checkpoint)
        out = default_export_path(run.run_dir, args.format) if args.out is None else args.out
        batch, source = check_batch(run)
        # ExportFailed and ExportMismatch are RunFaults: guarded ends them with exit 1, like a run that diverged.
        result = export_model(run, args.format, batch, out, args.atol, args.overwrite, source)
        print(f"exported {run.describe()}")
        print(f"  as {result.format}: {result.path} ({result.bytes / 2**20:.1f} MiB, {result.export_s:.1f} s)")
        print(f"  sidecar: {result.sidecar} (classes, preprocessing, input shape)")
        sizes = ", ".join(str(n) for n in result.diffs)
        print(f"checked at batch sizes {sizes} on {source}:")
        print(
            f"  max abs diff {result.max_abs_diff:.3g} from the model (--atol {result.atol:g}; "
            f"its outputs reach {result.max_abs_output:.3g}), {result.check_s:.1f} s"
        )
        for note in result.notes:
            print(f"note: {note}")
        size = run.preprocessing.image_size
        print(f"load it without freezetune (images: float32 [N, 3, {size}, {size}], preprocessed as the sidecar says):")
        print("\n".join(f"  {line}" for line in load_snippet(result).splitlines()))
        return 0

    return cli.guarded(body, args.debug, output="--out")
