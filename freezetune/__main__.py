"""``python -m freezetune COMMAND ...``: the same as the ``freezetune`` console command."""

from freezetune.cli.main import program

program()
