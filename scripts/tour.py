"""``python scripts/tour.py ...``: the same as ``freezetune tour ...`` (freezetune/cli/tour.py)."""

from freezetune.cli.tour import main
from freezetune.utils.program import exit_program

if __name__ == "__main__":
    exit_program(main())
