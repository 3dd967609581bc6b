"""``python scripts/plan.py ...``: the same as ``freezetune plan ...`` (freezetune/cli/plan.py)."""

import sys

from freezetune.cli.plan import main

if __name__ == "__main__":
    sys.exit(main())
