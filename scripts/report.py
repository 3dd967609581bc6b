"""``python scripts/report.py ...``: the same as ``freezetune report ...`` (freezetune/cli/report.py)."""

import sys

from freezetune.cli.report import main

if __name__ == "__main__":
    sys.exit(main())
