"""Time freezetune's training step against a minimal hand-written PyTorch loop.

  freezetune benchmark [--config C.yaml] [--presets full linear_probe until:layer3] [--sizes 32 64] [key=value ...]
  freezetune benchmark --cache [CONFIG ...] [--epochs 3] [key=value ...]
  (also python scripts/benchmark.py ...)

Prints, per preset and image size, the median ms/step of both and the median
of the interleaved per-round ratios (framework / hand-written)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from freezetune.apps.benchmark import benchmark_cache, benchmark_config
from freezetune.apps.shipped import shipped_config
from freezetune.cli import common as cli
from freezetune.config import load_config
from freezetune.utils import format_table


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Run the command with ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default=None, help="default: the shipped bench/resnet18_fake.yaml")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    parser.add_argument("--presets", nargs="+", default=["full", "linear_probe", "until:layer3"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[32, 64])
    parser.add_argument("--steps", type=int, default=2, help="steps per timed round")
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument(
        "--out", default=None, help="JSON results (default runs/benchmark.json, runs/benchmark_cache.json)"
    )
    parser.add_argument(
        "--cache",
        nargs="*",
        metavar="CONFIG",
        default=None,
        help="instead: epoch time with the feature cache vs without vs a hand-written loop, for these configs "
        "(default: the demo's linear probe and freeze_until_layer3)",
    )
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run with --cache")
    cli.add_debug_arg(parser)
    args = parser.parse_intermixed_args(argv)  # key=value edits may follow the flags too
    cli.setup_logging()

    def body() -> int:
        if args.cache is not None:
            return cache_body()
        results = []
        for size in args.sizes:
            for preset in args.presets:
                edits = [*args.overrides, f"freeze.preset={preset}", f"data.image_size={size}"]
                cfg = load_config(args.config or shipped_config("bench/resnet18_fake.yaml"), edits)
                r = benchmark_config(cfg, args.steps, args.rounds)
                r.name = preset
                results.append(r)
                print(
                    f"{preset} @ {size}px: framework {r.framework_ms:.2f} ms, hand {r.hand_ms:.2f} ms, "
                    f"ratio {r.ratio:.3f}",
                    flush=True,
                )
        rows = [
            [r.name, r.image_size, r.device, f"{r.framework_ms:.2f}", f"{r.hand_ms:.2f}", f"{r.ratio:.3f}"]
            for r in results
        ]
        print()
        print(
            format_table(
                ["preset", "px", "device", "framework ms/step", "hand ms/step", "ratio"], rows, right={1, 3, 4, 5}
            )
        )
        out = Path(args.out or "runs/benchmark.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps([r.to_json() for r in results], indent=2) + "\n")
        print(f"\nworst ratio {max(r.ratio for r in results):.3f}; written to {out}")
        return 0

    def cache_body() -> int:
        # `--cache a.yaml key=value`: argparse hands the edits to --cache too.
        overrides = [c for c in args.cache if "=" in c] + args.overrides
        configs = [c for c in args.cache if "=" not in c] or [
            shipped_config("fmnist/linear_probe.yaml"),
            shipped_config("fmnist/freeze_until_layer3.yaml"),
        ]
        results = []
        for config in configs:
            r = benchmark_cache(config, overrides, args.epochs, Path("runs/benchmark_cache") / Path(config).stem)
            results.append(r)
            print(
                f"{r.name}: cached {r.cached_epoch_s:.2f}s/epoch, uncached {r.uncached_epoch_s:.2f}s, "
                f"hand-written {r.hand_epoch_s:.2f}s -> {r.speedup:.1f}x",
                flush=True,
            )
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
        print()
        print(
            format_table(
                [
                    "config",
                    "cache build s",
                    "cached epoch s",
                    "uncached epoch s",
                    "hand-written epoch s",
                    "× vs uncached",
                    "× vs hand",
                    "val acc cached / uncached",
                ],
                rows,
                right={1, 2, 3, 4, 5, 6},
            )
        )
        out = Path(args.out or "runs/benchmark_cache.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps([r.to_json() for r in results], indent=2) + "\n")
        print(f"\nepoch times after the first; written to {out}")
        return 0

    return cli.guarded(body, args.debug)
