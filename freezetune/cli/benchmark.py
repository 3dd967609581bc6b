"""Time freezetune's training step against a minimal hand-written PyTorch loop.

  freezetune benchmark [--config C.yaml] [--presets full linear_probe until:layer3] [--sizes 32 64]
                       [--precision fp32,bf16] [--memory-format contiguous,channels_last | --channels-last]
                       [key=value ...]
  freezetune benchmark --cache [CONFIG ...] [--epochs 3] [key=value ...]
  freezetune benchmark --peer lightning [--repeats 3] [--pairs full linear_probe gradual] [key=value ...]
  freezetune benchmark --models [M,M,...] [--rounds 1] [--epochs 2] [--train-images 128] [--val-images 64]
                       [--image-size 224] [--batch-size 16] [--threads 1] [key=value ...]
  (also python scripts/benchmark.py ...)

Prints, per preset, image size, precision and memory format, the median ms/step of
both, the median of the interleaved per-round ratios (freezetune / hand-written), and
freezetune's step over its fp32 step of the same preset and size (contiguous when that
is timed too), all timed in the same interleaved rounds.

With --peer lightning: the demo's full, linear_probe and gradual configs trained by freezetune
and by Lightning (pip install 'freezetune[peers]'), each run a fresh process, alternated over
--repeats; per run and pair the process, training and step time, peak RSS, accuracy and the
first-step losses that show the work was the same (docs/lightning.md).

With --models: each model (default: resnet18, mobilenet_v3_small, efficientnet_b0, convnext_tiny,
vit_b_16) trained by `freezetune train` in a fresh process with its ImageNet weights' file (random
values) in a temporary hub cache, on generated PNGs, its last stage and head trainable, the cache
on, off and auto in an order that changes every round (six rounds balance it); per run the
start-up, training, the time after the last epoch, the run folder's size and the cache's decision
beside `freezetune plan`'s prediction, and issue 25's goals as measured ratios
(docs/speed-and-memory.md)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from freezetune.apps.shipped import shipped_config
from freezetune.bench import (
    MODELS,
    PAIRS,
    BenchResult,
    CacheBenchResult,
    ModelsReport,
    ModelsSettings,
    benchmark_auto_signal,
    benchmark_cache,
    benchmark_configs,
    benchmark_models,
    benchmark_peer,
    models_tables,
    peer_tables,
    require_peer,
)
from freezetune.cli import common as cli
from freezetune.config import ConfigError, load_config
from freezetune.utils import format_table
from freezetune.utils.files import write_file


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Run the command with ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    args = _parser(prog).parse_intermixed_args(argv)  # key=value edits may follow the flags too
    cli.setup_logging()
    # Five benchmarks behind one command: --peer, --cache, --auto-signal and --models each choose one instead of
    # the step's.
    if args.models is not None:
        command = _models
    elif args.peer is not None:
        command = _peer
    elif args.cache is not None:
        command = _cache
    elif args.auto_signal:
        command = _auto_signal
    else:
        command = _step
    return cli.guarded(lambda: command(args), args.debug, output="--out")


def _parser(prog: str | None) -> cli.Parser:
    parser = cli.Parser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None, help="default: the shipped bench/resnet18_fake.yaml")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    parser.add_argument("--presets", nargs="+", default=["full", "linear_probe", "until:layer3"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[32, 64])
    parser.add_argument(
        "--precision",
        default=None,
        metavar="P[,P...]",
        help="train.precision values to time (fp32, bf16, fp16; default: the config's)",
    )
    parser.add_argument(
        "--memory-format",
        default=None,
        metavar="F[,F...]",
        help="memory formats to time: contiguous, channels_last (train.channels_last; default: the config's)",
    )
    parser.add_argument(
        "--channels-last",
        action="store_const",
        const="channels_last",
        dest="memory_format",
        help="the same as --memory-format channels_last",
    )
    parser.add_argument("--steps", type=int, default=2, help="steps per timed round")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds (default 21; 1 with --models)")
    parser.add_argument(
        "--out",
        default=None,
        help="JSON results (default runs/benchmark.json, runs/benchmark_cache.json, runs/benchmark_peer.json, "
        "runs/benchmark_models.json)",
    )
    parser.add_argument(
        "--cache",
        nargs="*",
        metavar="CONFIG",
        default=None,
        help="instead: epoch time with the feature cache vs without vs a hand-written loop, for these configs "
        "(default: the demo's linear probe and freeze_until_layer3)",
    )
    parser.add_argument("--epochs", type=int, default=None, help="epochs per run with --cache (3), --models (2)")
    parser.add_argument(
        "--auto-signal",
        action="store_true",
        help="instead: what freeze.preset auto's gradient-norm sample costs next to a step of --config's model",
    )
    parser.add_argument(
        "--peer",
        default=None,
        metavar="FRAMEWORK",
        help="instead: the demo's configs trained by freezetune and by this framework (lightning)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs of each side with --peer, alternated")
    parser.add_argument(
        "--pairs",
        nargs="+",
        choices=[p.name for p in PAIRS],
        default=[p.name for p in PAIRS],
        help="which pairs --peer runs",
    )
    _models_args(parser)
    cli.add_debug_arg(parser)
    return parser


def _models_args(parser: cli.Parser) -> None:
    """The options of --models."""
    parser.add_argument(
        "--models",
        nargs="?",
        const=",".join(MODELS),
        default=None,
        metavar="M[,M...]",
        help=f"instead: freezetune's own cost on these torchvision models (default {','.join(MODELS)})",
    )
    defaults = ModelsSettings()
    for name, default, what in (
        ("train-images", defaults.train_images, "training images with --models"),
        ("val-images", defaults.val_images, "validation images with --models"),
        ("image-size", defaults.image_size, "px with --models"),
        ("batch-size", defaults.batch_size, "data.batch_size with --models"),
        ("classes", defaults.classes, "image classes with --models"),
    ):
        parser.add_argument(f"--{name}", type=int, default=default, help=f"{what} (default {default})")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="train.threads of every run with --models (default 1: the machine may be shared; 0: torch's own)",
    )


def _step(args: argparse.Namespace) -> int:
    """freezetune's step against the hand-written loop, per preset, size, precision and memory format."""
    # Comma-separated, so that key=value edits after them stay edits.
    precisions = [p for p in (args.precision or "").split(",") if p] or [None]
    formats = [_channels_last(f) for f in (args.memory_format or "").split(",") if f] or [None]
    results = []
    for size in args.sizes:
        for preset in args.presets:
            edits = [*args.overrides, f"freeze.preset={preset}", f"data.image_size={size}"]
            config = args.config or shipped_config("bench/resnet18_fake.yaml")
            cfgs = [load_config(config, [*edits, *_variant_edits(p, cl)]) for p in precisions for cl in formats]
            for r in benchmark_configs(cfgs, args.steps, args.rounds or 21):
                r.name = preset
                results.append(r)
                print(
                    f"{preset} @ {size}px, {r.precision}, {r.memory_format}: freezetune {r.framework_ms:.2f} ms, "
                    f"hand {r.hand_ms:.2f} ms, ratio {r.ratio:.3f}" + _vs_fp32(r, ", × fp32 "),
                    flush=True,
                )
    print()
    print(results_table(results))
    out = _write_json(args.out or "runs/benchmark.json", [r.to_json() for r in results])
    print()
    print(modes_note(results))
    print(f"{highest_ratio(results)}; written to {out}")
    return 0


def _auto_signal(args: argparse.Namespace) -> int:
    """What freeze.preset auto's gradient-norm sample costs next to a step."""
    cfg = load_config(args.config or shipped_config("bench/resnet18_fake.yaml"), args.overrides)
    r = benchmark_auto_signal(cfg, args.rounds or 21)
    print(
        f"{r.name}: step {r.step_ms:.1f} ms, one sample {r.sample_ms:.2f} ms "
        f"({100 * r.sample_ms / r.step_ms:.1f}% of a step); sampling every {r.sample_every} steps: "
        f"{100 * r.per_step:.2f}% of training time"
    )
    return 0


def _cache(args: argparse.Namespace) -> int:
    """Epoch time with the feature cache, without it, and of a hand-written loop."""
    # `--cache a.yaml key=value`: argparse hands the edits to --cache too.
    overrides = [c for c in args.cache if "=" in c] + args.overrides
    configs = [c for c in args.cache if "=" not in c] or [
        shipped_config("fmnist/linear_probe.yaml"),
        shipped_config("fmnist/freeze_until_layer3.yaml"),
    ]
    results = []
    for config in configs:
        r = benchmark_cache(config, overrides, args.epochs or 3, Path("runs/benchmark_cache") / Path(config).stem)
        results.append(r)
        print(
            f"{r.name}: cached {r.cached_epoch_s:.2f}s/epoch, uncached {r.uncached_epoch_s:.2f}s, "
            f"hand-written {r.hand_epoch_s:.2f}s -> {r.speedup:.1f}x",
            flush=True,
        )
    print()
    print(_cache_table(results))
    out = _write_json(args.out or "runs/benchmark_cache.json", [r.to_json() for r in results])
    print(f"\nepoch times after the first; written to {out}")
    return 0


def _models(args: argparse.Namespace) -> int:
    """The ImageNet models trained as a user trains them, cache on, off and auto: issue 25's goals."""
    if args.threads < 0:
        raise ConfigError([f"--threads: at least 0 (0: torch's own count), got {args.threads}"])
    settings = ModelsSettings(
        models=tuple(m for m in args.models.split(",") if m),
        train_images=args.train_images,
        val_images=args.val_images,
        image_size=args.image_size,
        batch_size=args.batch_size,
        epochs=args.epochs if args.epochs is not None else 2,
        classes=args.classes,
        threads=args.threads or None,
        rounds=args.rounds if args.rounds is not None else 1,
        overrides=tuple(args.overrides),
    )
    out = Path(args.out or "runs/benchmark_models.json")

    def echo(line: str) -> None:
        print(line, flush=True)

    def done(report: ModelsReport, _: object) -> None:
        _write_json(str(out), report.to_json())  # a benchmark of many minutes keeps what it measured so far

    report = benchmark_models(settings, echo, done)
    print()
    print(models_tables(report))
    _write_json(str(out), report.to_json())
    print(f"\nwritten to {out}")
    return 0


def _peer(args: argparse.Namespace) -> int:
    """The demo's configs trained by freezetune and by the peer framework, alternated over repeats."""
    require_peer(args.peer)  # a missing extra: one error line, exit 2, nothing written
    if args.repeats < 1:
        raise ConfigError([f"--repeats: at least 1, got {args.repeats}"])
    pairs = tuple(p for p in PAIRS if p.name in args.pairs)

    def done(r: dict) -> None:
        name = r["framework"] if r["variant"] == "config" else f"{r['framework']}:{r['variant']}"
        print(
            f"repeat {r['repeat'] + 1}/{args.repeats} {r['pair']} {name}: process {r['wall_s']:.1f}s, "
            f"train {r['train_s']:.1f}s, val acc {r['val_acc']:.4f}, first loss {r['first_loss']:.6f}",
            flush=True,
        )

    report = benchmark_peer(args.overrides, args.repeats, pairs, done)
    print()
    print(peer_tables(report))
    out = _write_json(args.out or "runs/benchmark_peer.json", report.to_json())
    print(f"\nwritten to {out}")
    if report.mismatches:
        print(f"error: not the same work (first losses differ): {', '.join(report.mismatches)}", file=sys.stderr)
        return 1
    return 0


def _write_json(path: str, data: object) -> Path:
    out = Path(path)
    write_file(out, (json.dumps(data, indent=2) + "\n").encode(), make_folders=True)
    return out


def _cache_table(results: list[CacheBenchResult]) -> str:
    """The --cache table: per config, the cache's build, the epochs cached, uncached and
    hand-written, the speed-ups and both validation accuracies."""
    rows = [
        [
            r.name,
            f"{r.build_s:.2f}",
            f"{r.cached_epoch_s:.2f}",
            f"{r.uncached_epoch_s:.2f}",
            f"{r.hand_epoch_s:.2f}",
            f"{r.speedup:.1f}x",
            f"{r.speedup_vs_hand:.1f}x",
            f"{r.cached_val_acc:.4f} / {r.uncached_val_acc:.4f}",
        ]
        for r in results
    ]
    headers = [
        "config",
        "cache build s",
        "cached epoch s",
        "uncached epoch s",
        "hand-written epoch s",
        "× vs uncached",
        "× vs hand",
        "val acc cached / uncached",
    ]
    return format_table(headers, rows, right={1, 2, 3, 4, 5, 6})


def _variant_edits(precision: str | None, channels_last: bool | None) -> list[str]:
    edits = [f"train.precision={precision}"] if precision is not None else []
    return edits + ([f"train.channels_last={str(channels_last).lower()}"] if channels_last is not None else [])


def _channels_last(memory_format: str) -> bool:
    if memory_format not in ("contiguous", "channels_last"):
        raise ConfigError([f"--memory-format: expected contiguous or channels_last, got {memory_format!r}"])
    return memory_format == "channels_last"


def _vs_fp32(r: BenchResult, prefix: str = "") -> str:
    return f"{prefix}{r.vs_fp32:.3f}" if r.vs_fp32 is not None else ("" if prefix else "-")


def highest_ratio(results: list[BenchResult]) -> str:
    """The row where freezetune's step costs most next to the hand-written one's: its overhead at worst.
    Below 1 freezetune was faster on every row, which is the machine's noise unless it is far below 1."""
    r = max(results, key=lambda r: r.ratio)
    return (
        f"highest freezetune / hand ratio {r.ratio:.3f} ({r.name} @ {r.image_size}px, {r.precision}, "
        f"{r.memory_format}): freezetune's overhead at worst; 1.000 is none"
    )


def modes_note(results: list[BenchResult]) -> str:
    """What the module modes of both loops were: the plan's pins, on both sides, so that the
    ratio is freezetune's overhead and not the plan's choice of modes."""
    held = sorted({r.held_in_eval for r in results})
    if held == [0]:
        return (
            "The plan pins no module in eval (freeze.batchnorm, freeze.frozen_modules): both loops train every module."
        )
    note = (
        f"Both loops train with the plan's pinned modules in eval ({', '.join(map(str, held))} of them: "
        "freeze.batchnorm, freeze.frozen_modules), the hand-written loop by setting them itself."
    )
    if any(r.fast_attention for r in results):
        note += (
            " Frozen nn.MultiheadAttention in eval runs PyTorch's fused inference path "
            "(torch._native_multi_head_attention) on both sides; in train mode it can be many times slower "
            "(pytorch/pytorch#126973), a saving of freeze.frozen_modules: eval, not of the loop "
            "(docs/speed-and-memory.md)."
        )
    return note


def results_table(results: list[BenchResult]) -> str:
    """The benchmark's table: per preset, size, precision and memory format, both loops'
    ms/step, their ratio, and freezetune's step over its fp32 step."""
    rows = [
        [
            r.name,
            r.image_size,
            r.precision,
            r.memory_format,
            r.device,
            f"{r.framework_ms:.2f}",
            f"{r.hand_ms:.2f}",
            f"{r.ratio:.3f}",
            _vs_fp32(r),
        ]
        for r in results
    ]
    headers = [
        "preset",
        "px",
        "precision",
        "memory format",
        "device",
        "freezetune ms/step",
        "hand-written ms/step",
        "freezetune / hand",
        "× freezetune fp32",
    ]
    return format_table(headers, rows, right={1, 5, 6, 7, 8})
