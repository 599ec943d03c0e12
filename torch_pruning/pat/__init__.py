"""Pruning-aware training (PAT) on top of Torch-Pruning.

Public API (also reachable as ``torch_pruning.<name>`` and ``torch_pruning.utils.<name>``)::

    from torch_pruning.utils import Pruning
    pruner = Pruning(model, output_dir, log=logger)
    model, missing, unexpected = torch_pruning.load_state_dict_pruned(model, state_dict)

This package imports nothing heavy at import time: names are resolved on first use, so the
overlay can locate upstream through :mod:`torch_pruning.pat._upstream` first.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any, Dict

__all__ = ["Pruning", "load_state_dict_pruned", "PruningConfigError", "PruningConfig",
           "CheckpointError", "MaskSet", "optimizer_state_matches", "SplitMultiheadAttention",
           "split_multihead_attention", "recommend_config", "Distillation", "attach"]

_LAZY: Dict[str, str] = {
    "Pruning": ".facade",
    "load_state_dict_pruned": ".checkpoint",
    "CheckpointError": ".checkpoint",
    "optimizer_state_matches": ".checkpoint",
    "PruningConfigError": ".config_io",
    "PruningConfig": ".config",
    "MaskSet": ".masks",
    "SplitMultiheadAttention": ".split_attention",
    "split_multihead_attention": ".split_attention",
    "recommend_config": ".recipe",
    "Distillation": ".distill",
}

# Names attached to ``torch_pruning`` and ``torch_pruning.utils`` when it is imported.
_ATTACHED = ("Pruning", "load_state_dict_pruned", "PruningConfigError", "CheckpointError",
             "optimizer_state_matches")


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def attach(tp: ModuleType) -> None:
    """Attach the PAT names to the ``torch_pruning`` package ``tp`` and to ``tp.utils``.

    Called by the checkout overlay and by the installed wheel's import hook.
    """
    utils = importlib.import_module(tp.__name__ + ".utils")
    for name in _ATTACHED:
        value = __getattr__(name)
        setattr(tp, name, value)
        setattr(utils, name, value)
    setattr(tp, "pat", importlib.import_module(__name__))
