"""Attention for the channel pruner: whole-head groups of attention written with Linear
projections (``heads``) and converting ``nn.MultiheadAttention`` into that form (``split``).

Layer 3: imports ``core``, ``config`` and ``util``. See docs/architecture.md.
"""
