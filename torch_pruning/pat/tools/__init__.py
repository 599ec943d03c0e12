"""What a user runs around training: ``inspect`` and ``validate`` (on the pruners' own tracing,
grouping and MAC count), ``analyze`` (channel norms across checkpoints), the pruning report,
the CLI, the starter config and the recommended recipe (``recommend_config``), opt-in
distillation for the training loop, and loading a user's model factory. Only ``report`` and
``analyze_plots`` import matplotlib, inside the functions that draw.

Layer 5: may import every layer below, never the facade. See docs/architecture.md.
"""
