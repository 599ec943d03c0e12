"""Helpers every layer may use: logging to the library logger and the user's log (rank 0
only), atomic file writes, unwrapping DDP, calling a model on example inputs, and FSDP2's
sharded parameters (``fsdp``).

Layer 0: imports nothing else from the package. See docs/architecture.md.
"""
