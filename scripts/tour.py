"""``python scripts/tour.py ...``: the same as ``freezetune tour ...`` (freezetune/cli/tour.py)."""

import sys

from freezetune.cli.tour import main

if __name__ == "__main__":
    sys.exit(main())
