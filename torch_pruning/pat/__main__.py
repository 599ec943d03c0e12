"""``python -m torch_pruning.pat``: see :mod:`torch_pruning.pat.cli`."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
