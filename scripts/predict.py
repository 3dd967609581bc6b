"""``python scripts/predict.py ...``: the same as ``freezetune predict ...`` (freezetune/cli/predict.py)."""

import sys

from freezetune.cli.predict import main

if __name__ == "__main__":
    sys.exit(main())
