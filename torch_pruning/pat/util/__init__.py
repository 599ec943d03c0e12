"""Helpers every layer may use: logging to the library logger and the user's log (rank 0
only), atomic file writes, unwrapping DDP and calling a model on example inputs.

Layer 0: imports nothing else from the package. See docs/architecture.md.
"""
