"""Show what a config freezes, before training: freezetune plan --config X [key=value ...]
(also python scripts/plan.py)"""

from __future__ import annotations

import argparse

import torch

from freezetune import checks
from freezetune.cli import common as cli
from freezetune.config import Config, Preprocessing, Source
from freezetune.data import build_loaders
from freezetune.plan import describe
from freezetune.report import (
    param_rows,
    probe_autograd,
    render_auto,
    render_cache,
    render_estimate,
    render_groups,
    render_params,
    render_plan,
    render_schedule,
)
from freezetune.train import Prepared, prepare_model, preview_cache, steps_per_epoch
from freezetune.train.estimate import estimate_config
from freezetune.utils import autocast


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Run the command with ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    parser = cli.Parser(prog=prog, description=__doc__)
    cli.add_config_args(parser)
    parser.add_argument(
        "--depth", type=int, default=None, help="aggregate the table at this module depth (1 = top level)"
    )
    parser.add_argument("--no-probe", action="store_true", help="skip the forward pass that shows grad_fn per module")
    parser.add_argument(
        "--estimate",
        action="store_true",
        help="also predict step time and memory from a profile of real steps (seconds to minutes on a CPU)",
    )
    parser.add_argument("--no-estimate", action="store_true", help=argparse.SUPPRESS)  # the default since 0.2
    parser.add_argument(
        "--params",
        action="store_true",
        help="one row per parameter: when it trains, its optimizer group and effective LR",
    )
    cli.add_debug_arg(parser)
    args = parser.parse_intermixed_args(argv)  # key=value edits may follow the flags too
    if args.depth is not None and args.depth < 1:
        parser.error(f"--depth {args.depth}: 1 is the top level; give 1 or more")

    def body() -> int:
        checked = checks.load(args.config, args.overrides)
        cfg, sources = checked
        p = prepare_model(checked)
        probe = None
        if not args.no_probe:
            # A random batch of the configured shape: the probe reads autograd's
            # bookkeeping, which does not depend on pixel values.
            x = torch.randn(2, 3, cfg.data.image_size, cfg.data.image_size, device=p.device)
            with autocast(p.device, cfg.train.precision):  # as training runs it (bf16 frozen weights need it)
                probe = probe_autograd(p.model, x)
        # Everything that reads the data or may refuse the config comes before the first line
        # printed: a plan that looks valid and then ends in an error would mislead.
        schedule = render_schedule(p.schedule, cfg, steps_per_epoch(checked))
        auto = render_auto(cfg, describe(p.model), p.load.head) if cfg.freeze.preset == "auto" else None
        cache = _cache(cfg, p)
        weights = p.load.source or "none (random initialisation)"
        print(f"config {args.config}: {cfg.model.arch}, weights {weights}, head '{p.load.head}'")
        if p.threads is not None:  # the estimate and the cache's build prediction time steps on these threads
            print(p.threads.describe())
            if p.threads.warning():
                print(f"warning: {p.threads.warning()}")
        print(_preprocessing(cfg, sources))
        tree = describe(p.model)
        print(render_plan(tree, p.plan, probe, args.depth, p.schedule))
        print()
        if args.params:
            print(render_params(param_rows(tree, p.schedule, p.settings, cfg)))
        else:
            print(render_groups(param_rows(tree, p.schedule, p.settings, cfg)))
        print(schedule)
        if auto is not None:
            print(auto)
        print()
        print(cache)
        if args.estimate and not args.no_estimate:
            print()
            if p.schedule.changes:
                print(
                    f"(predicted for epoch 1's plan; the plan changes at epochs "
                    f"{', '.join(str(ph.start) for ph in p.schedule.phases[1:])})"
                )
            t = cfg.train
            layout = ", channels_last" if t.channels_last else ""
            print(f"(profiled in {t.precision}{layout}, frozen weights in {cfg.freeze.frozen_dtype})")
            print(render_estimate(estimate_config(cfg, reps=5, prepared=p)))
        return 0

    return cli.guarded(body, args.debug)


def _preprocessing(cfg: Config, sources: dict[str, Source]) -> str:
    """The resolved preprocessing, and where the values the config left open came from."""
    line = f"preprocessing: {Preprocessing.of(cfg.data).describe()}"
    followed: dict[str, list[str]] = {}
    for key, source in sources.items():
        if source.kind != "config":
            followed.setdefault(str(source), []).append(key)
    for source, keys in followed.items():
        line += f"\n  {', '.join(keys)} from {source}"
    return line


def _cache(cfg: Config, p: Prepared) -> str:
    """The cache preview of every phase: what training decides at each phase's start
    (freezetune.train.preview_cache); under ``on``, what training refuses, plan refuses too."""
    loaders = build_loaders(cfg.data, cfg.seed, p.num_classes, check_images=False)
    counts = len(loaders.train.dataset), len(loaders.val.dataset)  # type: ignore[arg-type]
    previews = preview_cache(cfg, p.model, p.schedule, p.device, counts, loaders.val.dataset)
    return render_cache(previews, cfg.train.cache_features, sum(counts))
