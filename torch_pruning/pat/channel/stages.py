"""Staged removal (``channel_sparsity_args.stages``): which schedule and MAC levels apply now.

Stage ``k`` (counting from 0) masks from the level the stage before it ended at (1.0 for the
first) down to its own ``mac_target`` over its epochs, then the masked channels are removed
physically; after the last stage the section's own ``start_epoch``..``end_epoch`` masks on to
its ``mac_target``. Without stages there is one stage: the section itself.

Example:
    >>> cfg = ChannelSparsityArgs(start_epoch=14, end_epoch=15, global_prune_rate=0.9,
    ...                           schedule="macs", mac_target=0.25,
    ...                           stages=[{"mac_target": 0.5, "start_epoch": 8, "end_epoch": 9}])
    >>> levels(cfg, 0), levels(cfg, 1)
    ((1.0, 0.5), (0.5, 0.25))
    >>> stage_schedule(cfg, 0).last_step_epoch, is_intermediate(cfg, 0), is_intermediate(cfg, 1)
    (9, True, False)
"""

from __future__ import annotations

from typing import Dict, Sequence, Tuple

from ..config.models import ChannelSparsityArgs
from ..core.schedule import ChannelSchedule
from .group import ChannelGroup

__all__ = [
    "stage_schedule", "levels", "is_intermediate", "original_widths", "mark_original_units",
]


def is_intermediate(cfg: ChannelSparsityArgs, stage: int) -> bool:
    """True while ``stage`` is one of ``cfg.stages`` (its end is a removal, not the target)."""
    return stage < len(cfg.stages)


def stage_schedule(cfg: ChannelSparsityArgs, stage: int) -> ChannelSchedule:
    """The masking schedule of ``stage``: its own epochs, or the section's after the last."""
    if not is_intermediate(cfg, stage):
        return ChannelSchedule.from_config(cfg)
    st = cfg.stages[stage]
    return ChannelSchedule(st.start_epoch, st.end_epoch, cfg.epoch_rate, cfg.global_prune_rate)


def levels(cfg: ChannelSparsityArgs, stage: int) -> Tuple[float, float]:
    """The MAC levels (fractions of the original) ``stage`` masks from and down to."""
    start = cfg.stages[stage - 1].mac_target if stage > 0 else 1.0
    end = cfg.stages[stage].mac_target if is_intermediate(cfg, stage) else cfg.mac_target
    return start, end


def original_widths(groups: Sequence[ChannelGroup]) -> Dict[str, int]:
    """Units per group (by source layer) of the model before any removal."""
    return {g.source: g.units for g in groups}


def mark_original_units(groups: Sequence[ChannelGroup], widths: Dict[str, int]) -> None:
    """Give each group its units before any removal, which ``max_pruning_rate`` counts against.

    Example:
        >>> g = type("G", (), {"source": "conv1", "units": 20, "original_units": None})()
        >>> mark_original_units([g], {"conv1": 64}); g.original_units
        64
    """
    for g in groups:
        g.original_units = widths.get(g.source)
