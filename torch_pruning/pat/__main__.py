"""``python -m torch_pruning.pat``: see :mod:`torch_pruning.pat.tools.cli`."""

import sys

from .tools.cli import main

if __name__ == "__main__":
    sys.exit(main())
