"""The autograd tour: freezetune tour [--config C.yaml] [key=value ...] [--tutorial-only]
(also python scripts/tour.py)

Replays PyTorch's autograd tutorial example (x = ones(5), y = zeros(3), w 5x3 and b 3 with
requires_grad, z = x @ w + b, a BCE-with-logits loss) step by step: leaves and grad_fn, backward
and retain_graph, freezing with requires_grad_(False), no_grad / inference_mode / detach. Then
the same facts on a config's network and a real batch of its data: which modules record a
graph, frozen parameters ending a real step with .grad None and bitwise unchanged, and the
autograd memory and step time the freeze saves, measured there and then. Every value printed
is computed as the tour runs. The default config is the demo's freeze_until_layer3 (make demo
first: it fine-tunes the backbone the demo pretrains)."""

from __future__ import annotations

import argparse

from freezetune.apps.shipped import shipped_config
from freezetune.apps.tour import network_step, render_step, tutorial_steps
from freezetune.cli import common as cli
from freezetune.config import ConfigError, load_config


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Run the command with ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    parser = cli.Parser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None, help="config of step 5 (default: the demo's freeze_until_layer3)")
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="config edits, values parsed as YAML (data.batch_size=8)"
    )
    parser.add_argument("--tutorial-only", action="store_true", help="steps 1-4 only: no network, no data")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps each way in step 5 (default 5)")
    cli.add_debug_arg(parser)
    args = parser.parse_intermixed_args(argv)  # key=value edits may follow the flags too
    if args.repeats < 1:
        parser.error(f"--repeats {args.repeats}: time at least 1 step each way")
    if args.tutorial_only and (args.config or args.overrides):
        parser.error("--tutorial-only runs no network: leave out --config and key=value edits")

    def body() -> int:
        network = None
        if not args.tutorial_only:
            # The network's step comes first, so that a config mistake ends the tour before it prints.
            source = args.config or "configs/fmnist/freeze_until_layer3.yaml (shipped)"
            try:
                cfg = load_config(args.config or shipped_config("fmnist/freeze_until_layer3.yaml"), args.overrides)
                network = network_step(cfg, source, args.repeats)
            except ConfigError as exc:
                # Only the default config's missing backbone gets the hint; other mistakes are the user's edits.
                if args.config or not any(p.startswith("model.weights") for p in exc.problems):
                    raise
                hint = "the default config fine-tunes the demo's backbone: run `make demo` first, or give --config"
                raise ConfigError([f"{problem} ({hint})" for problem in exc.problems]) from None
        for step in tutorial_steps():
            print(render_step(step), end="\n\n")
        if network is not None:
            print(render_step(network))
        return 0

    return cli.guarded(body, args.debug)
