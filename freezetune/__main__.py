"""``python -m freezetune COMMAND ...``: the same as the ``freezetune`` console command."""

import sys

from freezetune.cli.main import main

sys.exit(main())
