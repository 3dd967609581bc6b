"""Make sure Fashion-MNIST is under ROOT/FashionMNIST/raw: python scripts/fetch_data.py --root data

Uses Debian's dataset-fashion-mnist files when installed (the Makefile installs
them when it can), else torchvision's download."""

from __future__ import annotations

import argparse
import sys

from freezetune.data import ensure_fashion_mnist


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", default="data")
    args = parser.parse_args(argv)
    raw = ensure_fashion_mnist(args.root)
    print(f"Fashion-MNIST ready in {raw}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
