"""``python scripts/compare.py ...``: the same as ``freezetune compare ...`` (freezetune/cli/compare.py)."""

import sys

from freezetune.cli.compare import main

if __name__ == "__main__":
    sys.exit(main())
