"""Make sure Fashion-MNIST is under ROOT/FashionMNIST/raw: freezetune fetch-data --root data

Uses Debian's dataset-fashion-mnist files when installed (the Makefile installs
them when it can), else torchvision's download."""

from __future__ import annotations

import argparse

from freezetune.data import ensure_fashion_mnist


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Run the command with ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__)
    parser.add_argument("--root", default="data")
    args = parser.parse_args(argv)
    raw = ensure_fashion_mnist(args.root)
    print(f"Fashion-MNIST ready in {raw}")
    return 0
