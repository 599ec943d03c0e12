"""Pruning-aware training (PAT) on top of Torch-Pruning.

Public API (also reachable as ``torch_pruning.<name>`` and ``torch_pruning.utils.<name>``)::

    from torch_pruning.utils import Pruning
    pruner = Pruning(model, output_dir, log=logger)
    model, missing, unexpected = torch_pruning.load_state_dict_pruned(model, state_dict)

This package imports nothing heavy at import time: names are resolved on first use, so the
overlay can locate upstream through :mod:`torch_pruning.pat._upstream` first.

The code lives in concept folders with one-way imports (docs/architecture.md): ``util`` <-
``config`` <- ``core`` <- ``attention`` <- ``channel`` / ``slice`` <- ``tools`` <- ``facade``;
``checkpoint`` needs only ``util``, ``config.errors``, ``core.heads`` and ``core.hf``.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any, Dict

__all__ = ["Pruning", "load_state_dict_pruned", "PruningConfigError", "PruningConfig",
           "CheckpointError", "MaskSet", "optimizer_state_matches", "SplitMultiheadAttention",
           "split_multihead_attention", "attach", "ChannelPruner", "SlicePruner", "Pruner",
           "CostModel", "PruningReport", "layer_stats", "analyze_run", "plot_analysis",
           "register_rebuild_rule", "RebuildPlan", "recommend_config", "Distillation",
           "load_pretrained_pruned"]

# Public name -> the module (in its concept folder, see docs/architecture.md) defining it.
_LAZY: Dict[str, str] = {
    "Pruning": ".facade",
    "load_state_dict_pruned": ".checkpoint.loading",
    "CheckpointError": ".checkpoint.loading",
    "optimizer_state_matches": ".checkpoint.optimizer",
    "register_rebuild_rule": ".checkpoint.rebuild",
    "load_pretrained_pruned": ".checkpoint.hf",
    "RebuildPlan": ".checkpoint.rebuild",
    "PruningConfigError": ".config.errors",
    "PruningConfig": ".config.models",
    "MaskSet": ".core.masks",
    "Pruner": ".core.pruner",
    "CostModel": ".core.cost",
    "ChannelPruner": ".channel.pruner",
    "SlicePruner": ".slice.pruner",
    "SplitMultiheadAttention": ".attention.split",
    "split_multihead_attention": ".attention.split",
    "PruningReport": ".tools.report",
    "layer_stats": ".tools.report",
    "analyze_run": ".tools.analyze",
    "plot_analysis": ".tools.analyze_plots",
    "recommend_config": ".tools.recipe",
    "Distillation": ".tools.distill",
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
