"""Placeholder until the checkpoint loader lands (helper overwrites this file)."""

__all__ = ["load_state_dict_pruned", "CheckpointError"]


class CheckpointError(RuntimeError):
    """A checkpoint cannot be loaded into the model."""


def load_state_dict_pruned(model, state_dict, strict=True, map_location="cpu"):
    """Not implemented yet."""
    raise CheckpointError("load_state_dict_pruned is not implemented yet")
