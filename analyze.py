#!/usr/bin/env python
"""Plot per-channel L2 norms across a run's checkpoints and suggest when to start pruning.

    python analyze.py RUN_DIR [--config CONFIG] [--model module:factory] [--threshold T]
                      [--rate R] [--out report.png]

A thin entry over :mod:`torch_pruning.pat.tools.analyze` (also ``python -m torch_pruning.pat analyze``).
See docs/tools.md.
"""

import sys

from torch_pruning.pat.tools.analyze import main

if __name__ == "__main__":
    sys.exit(main())
