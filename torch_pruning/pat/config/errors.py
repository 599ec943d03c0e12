"""The one error type for a pruning config a user got wrong.

Everything may import it: the config loader raises it for the file, the pruners and tools for
what the config says about a model (an unknown layer name, a layer type that cannot be pruned).

Example:
    >>> raise PruningConfigError("regularize.reg: must be >= 0, got -1",
    ...                          source="runs/exp1/pruning_config.json",
    ...                          field="channel_sparsity_args.regularize.reg")
    Traceback (most recent call last):
    ...
    torch_pruning.pat.config.errors.PruningConfigError: runs/exp1/pruning_config.json: regularize.reg: must be >= 0, got -1
"""

from __future__ import annotations

__all__ = ["PruningConfigError"]


class PruningConfigError(ValueError):
    """A pruning config is unreadable or invalid. The message names file, field and fix."""

    def __init__(self, message: str, *, source: str = "", field: str = "") -> None:
        super().__init__(f"{source}: {message}" if source else message)
        self.source = source
        self.field = field
