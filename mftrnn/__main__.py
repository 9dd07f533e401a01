"""``python -m mftrnn``: the command line interface (see :mod:`mftrnn.cli`)."""

import sys

from mftrnn.cli import main

if __name__ == "__main__":
    sys.exit(main())
