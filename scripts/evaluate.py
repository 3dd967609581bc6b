"""``python scripts/evaluate.py ...``: the same as ``freezetune evaluate ...`` (freezetune/cli/evaluate.py)."""

import sys

from freezetune.cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
