"""Train one config: freezetune train --config configs/X.yaml [key=value ...]
(also python scripts/train.py --config ...)

Ctrl-C finishes the current step, saves a checkpoint and exits (130); continue with
freezetune train --config configs/X.yaml --resume runs/NAME

Several processes: torchrun --nproc_per_node=N scripts/train.py --config configs/X.yaml
(DDP; gloo on CPU, NCCL on CUDA; data.batch_size is per process; rank 0 writes the record)"""

from __future__ import annotations

import argparse
import sys

from freezetune import checks
from freezetune.cli import common as cli
from freezetune.config import Config
from freezetune.record import EpochResult, Summary
from freezetune.train import Interrupted, distributed, run
from freezetune.train.distributed import Dist


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Run the command with ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    parser = cli.Parser(prog=prog, description=__doc__)
    cli.add_config_args(parser)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing run record")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue this run folder from its last checkpoint")
    # A seed run of `freezetune compare` (freezetune.apps.compare): compare says how to go on
    # after a stop, with its own command, so this run does not offer train's.
    parser.add_argument("--part-of-compare", action="store_true", help=argparse.SUPPRESS)
    cli.add_debug_arg(parser)
    args = parser.parse_intermixed_args(argv)  # key=value edits may follow the flags too
    if args.resume and args.overwrite:
        parser.error("--resume continues a run and --overwrite replaces one: give one of them")
    launch = distributed.from_env()  # set by torchrun
    main_rank = launch is None or launch.rank == 0
    cli.setup_logging(quiet=not main_rank)  # other ranks log warnings only
    return cli.guarded(lambda: _train(args, launch, prog), args.debug, output="train.output_dir")


def _train(args: argparse.Namespace, launch: Dist | None, prog: str | None) -> int:
    """Train as ``args`` say; every rank prints nothing but the first."""
    # Every problem of the config, its model and its data at once, before anything is written;
    # resolved here once, and passed down.
    checked = checks.load(args.config, args.overrides)
    cfg = checked.cfg
    main_rank = launch is None or launch.rank == 0
    dist = distributed.init(launch, cfg.train.device) if launch is not None else None

    def report(r: EpochResult) -> None:
        if not main_rank:
            return
        print(
            f"epoch {r.epoch}: train_loss {r.train_loss:.4f}  val_loss {r.val_loss:.4f}  "
            f"val_acc {r.val_acc:.4f}  {r.epoch_time_s:.1f}s  {r.samples_per_s:.0f} samples/s",
            flush=True,
        )

    progress = cli.tqdm_progress(cli.progress_enabled(main_rank and not args.no_progress))
    try:
        outcome = run(
            checked,
            overwrite=args.overwrite,
            progress=progress,
            on_epoch=report,
            resume=args.resume,
            dist=dist,
        )
    finally:
        distributed.shutdown()
    if isinstance(outcome, Interrupted):
        if main_rank:
            _print_interrupted(cfg, outcome, args, launch is not None, prog)
        return cli.EXIT_INTERRUPTED if main_rank else 0
    if main_rank:
        _print_finished(cfg, outcome.summary)
    return 0 if outcome.summary.frozen_unchanged else 1


def _print_interrupted(
    cfg: Config, stopped: Interrupted, args: argparse.Namespace, torchrun: bool, prog: str | None
) -> None:
    """How to go on from where the run stopped."""
    command = f"torchrun <the same launch options> {sys.argv[0]}" if torchrun else prog or f"python {sys.argv[0]}"
    # With key=value edits the original file alone is another config: the run's own config.yaml
    # (the resolved one it was trained with) resumes it as it was.
    config = f"{stopped.run_dir}/config.yaml" if args.overrides else args.config
    how = "" if args.part_of_compare else f" Continue with: {command} --config {config} --resume {stopped.run_dir}"
    print(f"{cfg.name}: stopped in epoch {stopped.epoch} after {stopped.steps} steps; checkpoint saved.{how}")


def _print_finished(cfg: Config, summary: Summary) -> None:
    """The run's result in a few lines: replicas, best epoch, accuracy and the frozen check."""
    if summary.tensors_frozen == 0 and not summary.schedule:
        frozen = "nothing was frozen"  # no claim to prove
    else:
        frozen = f"frozen tensors bitwise unchanged: {'yes' if summary.frozen_unchanged else 'NO'}"
    if summary.distributed is not None:
        d = summary.distributed
        print(
            f"{cfg.name}: {d['world_size']} processes ({d['backend']}), global batch {d['global_batch']}, "
            f"replicas bitwise identical: {'yes' if d['replicas_identical'] else 'NO'}"
        )
    best, early = summary.best, summary.early_stopping
    assert best is not None  # a finished run has a best epoch
    if best["epoch"] != summary.epochs or early:  # best.pt is not simply model.pt
        stopped = " (early stopping)" if (early or {}).get("stopped") else ""
        print(
            f"{cfg.name}: {summary.epochs} epochs{stopped}; best {best['monitor']} {best['value']:.4f} at "
            f"epoch {best['epoch']} -> {cfg.output_dir / best['file']}"
        )
    print(
        f"{cfg.name}: val_acc {summary.final_val_acc:.4f}, trainable {summary.params_trainable:,} / "
        f"{summary.params_total:,}, {frozen} -> {cfg.output_dir}"
    )
