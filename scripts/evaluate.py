"""``python scripts/evaluate.py ...``: the same as ``freezetune evaluate ...`` (freezetune/cli/evaluate.py)."""

from freezetune.cli.evaluate import main
from freezetune.utils.program import exit_program

if __name__ == "__main__":
    exit_program(main())
