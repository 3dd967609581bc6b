"""``python scripts/export.py ...``: the same as ``freezetune export ...`` (freezetune/cli/export.py)."""

import sys

from freezetune.cli.export import main

if __name__ == "__main__":
    sys.exit(main())
