"""``python scripts/plan.py ...``: the same as ``freezetune plan ...`` (freezetune/cli/plan.py)."""

from freezetune.cli.plan import main
from freezetune.utils.program import exit_program

if __name__ == "__main__":
    exit_program(main())
