"""Checkpoints of pruned models: loading one into the unpruned architecture (``loading``), the
per-layer rebuild rules (``rebuild``), and optimizer state across shape changes (``optimizer``).

Needs only upstream, ``util``, ``config.errors`` and ``core.heads``, so it works without the
pruners. See docs/architecture.md.
"""
