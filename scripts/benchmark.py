"""``python scripts/benchmark.py ...``: the same as ``freezetune benchmark ...`` (freezetune/cli/benchmark.py)."""

from freezetune.cli.benchmark import main
from freezetune.utils.program import exit_program

if __name__ == "__main__":
    exit_program(main())
