"""``python scripts/benchmark.py ...``: the same as ``freezetune benchmark ...`` (freezetune/cli/benchmark.py)."""

import sys

from freezetune.cli.benchmark import main

if __name__ == "__main__":
    sys.exit(main())
