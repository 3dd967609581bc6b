"""``python scripts/fetch_data.py ...``: the same as ``freezetune fetch-data ...`` (freezetune/cli/fetch_data.py)."""

import sys

from freezetune.cli.fetch_data import main

if __name__ == "__main__":
    sys.exit(main())
