"""``python scripts/demo.py ...``: the same as ``freezetune demo ...`` (freezetune/cli/demo.py)."""

import sys

from freezetune.cli.demo import main

if __name__ == "__main__":
    sys.exit(main())
