"""``python scripts/demo.py ...``: the same as ``freezetune demo ...`` (freezetune/cli/demo.py)."""

from freezetune.cli.demo import main
from freezetune.utils.program import exit_program

if __name__ == "__main__":
    exit_program(main())
