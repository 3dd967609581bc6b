"""Make sure Fashion-MNIST is under ROOT/FashionMNIST/raw: freezetune fetch-data --root data

Uses Debian's dataset-fashion-mnist files when installed (the Makefile installs
them when it can), else torchvision's download.

--imagefolder DIR also writes a sample of it as PNG files in ImageFolder layout
(DIR/train/CLASS/*.png, DIR/val/CLASS/*.png): real pictures for trying the
own-images path (README, "Fine-tune on your own images")."""

from __future__ import annotations

import argparse

from freezetune.cli import common as cli
from freezetune.data import ensure_fashion_mnist, export_png_folder


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Run the command with ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    parser = cli.Parser(prog=prog, description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--root", default="data")
    parser.add_argument("--imagefolder", metavar="DIR", help="also write a sample as PNGs in ImageFolder layout")
    parser.add_argument(
        "--per-class", type=int, default=100, help="training images per class (validation: a quarter of it)"
    )
    cli.add_debug_arg(parser)
    args = parser.parse_args(argv)
    if args.per_class < 1:
        parser.error(f"--per-class {args.per_class}: give 1 or more")

    def body() -> int:
        raw = ensure_fashion_mnist(args.root)
        print(f"Fashion-MNIST ready in {raw}")
        if args.imagefolder:
            n = export_png_folder(args.root, args.imagefolder, args.per_class)
            where = f"{args.imagefolder}/{{train,val}}/CLASS/"
            print(f"wrote {n['train']} training and {n['val']} validation PNGs to {where}")
        return 0

    return cli.guarded(body, args.debug, output="--root or --imagefolder")
