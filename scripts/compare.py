"""``python scripts/compare.py ...``: the same as ``freezetune compare ...`` (freezetune/cli/compare.py)."""

from freezetune.cli.compare import main
from freezetune.utils.program import exit_program

if __name__ == "__main__":
    exit_program(main())
