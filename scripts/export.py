"""``python scripts/export.py ...``: the same as ``freezetune export ...`` (freezetune/cli/export.py)."""

from freezetune.cli.export import main
from freezetune.utils.program import exit_program

if __name__ == "__main__":
    exit_program(main())
