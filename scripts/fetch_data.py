"""``python scripts/fetch_data.py ...``: the same as ``freezetune fetch-data ...`` (freezetune/cli/fetch_data.py)."""

from freezetune.cli.fetch_data import main
from freezetune.utils.program import exit_program

if __name__ == "__main__":
    exit_program(main())
