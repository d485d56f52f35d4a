"""``python -m afinar``: see afinar.cli."""

import sys

from afinar.cli import main

if __name__ == "__main__":
    sys.exit(main())
