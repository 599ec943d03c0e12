"""The slice pruner: the hardware's slice layout (``layout``), sparsity counting and export
(``sparsity``) and the pruner (``pruner``).

Layer 4: imports ``core``, ``config`` and ``util``; never ``channel``. See docs/architecture.md.
"""
