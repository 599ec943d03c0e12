"""The channel pruner: tracing (``tracing``), groups of coupled channels (``group``,
``grouping``), importance, ranking, the regularizer, progress warnings and the pruner itself.

Layer 4: imports ``attention``, ``core``, ``config`` and ``util``; never ``slice`` or config file
I/O. See docs/architecture.md.
"""
