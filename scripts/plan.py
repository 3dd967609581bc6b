"""Show what a config freezes, before training: python scripts/plan.py --config X [key=value ...]"""

from __future__ import annotations

import argparse
import sys

import torch

from freezetune import cli
from freezetune.compare import estimate_config
from freezetune.explain import probe_autograd, render_estimate, render_plan
from freezetune.freezing import describe
from freezetune.run import prepare_model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    cli.add_config_args(parser)
    parser.add_argument("--depth", type=int, default=None, help="aggregate the table at this module depth (1 = top level)")
    parser.add_argument("--no-probe", action="store_true", help="skip the forward pass that shows grad_fn per module")
    parser.add_argument("--no-estimate", action="store_true", help="skip the predicted step time and memory")
    args = parser.parse_args(argv)

    def body() -> int:
        cfg = cli.config_from_args(args)
        p = prepare_model(cfg)
        probe = None
        if not args.no_probe:
            # A random batch of the configured shape: the probe reads autograd's
            # bookkeeping, which does not depend on pixel values.
            x = torch.randn(2, 3, cfg.data.image_size, cfg.data.image_size, device=p.device)
            probe = probe_autograd(p.model, x)
        print(f"config {args.config}: {cfg.model.arch}, weights {p.load.source}, head '{p.load.head}'")
        print(render_plan(describe(p.model), p.plan, probe, args.depth))
        if not args.no_estimate:
            print()
            print(render_estimate(estimate_config(cfg, reps=5, prepared=p)))
        return 0

    return cli.guarded(body)


if __name__ == "__main__":
    sys.exit(main())
