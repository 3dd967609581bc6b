"""``python scripts/predict.py ...``: the same as ``freezetune predict ...`` (freezetune/cli/predict.py)."""

from freezetune.cli.predict import main
from freezetune.utils.program import exit_program

if __name__ == "__main__":
    exit_program(main())
