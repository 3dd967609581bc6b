"""``python scripts/train.py ...``: the same as ``freezetune train ...`` (freezetune/cli/train.py)."""

from freezetune.cli.train import main
from freezetune.utils.program import exit_program

if __name__ == "__main__":
    exit_program(main())
