"""``python scripts/report.py ...``: the same as ``freezetune report ...`` (freezetune/cli/report.py)."""

from freezetune.cli.report import main
from freezetune.utils.program import exit_program

if __name__ == "__main__":
    exit_program(main())
