"""What both pruners stand on: the mask store (``masks``), the schedules (``schedule``), the cost
models and their protocol (``cost``, ``macs``, ``latency``), the pruner protocol (``pruner``) and
the head-count rules of attention modules (``heads``).

Layer 2: imports ``config`` and ``util``, never a pruner. See docs/architecture.md.
"""
