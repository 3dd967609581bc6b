"""``python scripts/train.py ...``: the same as ``freezetune train ...`` (freezetune/cli/train.py)."""

import sys

from freezetune.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
