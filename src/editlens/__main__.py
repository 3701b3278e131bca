"""``python -m editlens COMMAND``: the command line of :mod:`editlens.cli`. Run ``python -m editlens --help``."""

import sys

from editlens.cli import main

if __name__ == "__main__":
    sys.exit(main())
