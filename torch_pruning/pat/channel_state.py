"""Saving and restoring the channel pruner's progress (``pruner.state_dict()`` in checkpoints).

A mixin of :class:`~torch_pruning.pat.channel_pruner.ChannelPruner`: the pruned channels per
group, the schedule's progress and the reached/removed flags. Restoring validates the whole
state against the selected groups before changing anything.
"""

from __future__ import annotations

import logging
from typing import Any, Dict

import torch

from ._log import emit

__all__ = ["ChannelPrunerState"]

logger = logging.getLogger("torch_pruning.pat.channel_pruner")

SECTION = "channel_sparsity_args"
LAYER = "channel"
_Plan = Dict[int, torch.Tensor]


class ChannelPrunerState:
    """``state_dict`` / ``load_state_dict`` of the channel pruner (uses its attributes)."""

    def state_dict(self) -> Dict[str, Any]:
        """Pruned channels per group, schedule progress and the reached flag."""
        return {"version": 1, "reached": self.reached_target, "removed": self._removed,
                "summary": self._summary, "ratio": self._ratio, "last_epoch": self._last_epoch,
                "next_epoch": self._next_epoch, "base": self._base,
                "pruned_units": {g.source: self._pruned[g.number].nonzero().flatten().clone()
                                 for g in self.groups}}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output (after loading the model weights).

        The saved state is the truth: a config file that says ``reach_mac_target`` while the
        state is from before the target (the job died between the write-back and its next
        checkpoint) resumes pruning. A state that does not fit the selected groups raises
        ValueError before anything changes.
        """
        if not state:
            return
        reached, removed = bool(state.get("reached")), bool(state.get("removed"))
        if not removed:  # validate before changing anything
            if not hasattr(self, "graph") and (not reached or state.get("pruned_units")):
                self._build(self._model, announce=False)  # from the model and config only
            pruned = self._pruned_from(state.get("pruned_units", {}))
        if self.reached_target and not reached:
            emit(f"{self._source} says reach_mac_target is true, but the checkpoint's pruner "
                 "state is from before the target was met: channel pruning continues from the "
                 "checkpoint.", self.log, logger=logger)
        self._summary = state.get("summary", self._summary)
        self._base = state.get("base") or self._base
        self._ratio, self._last_epoch = state.get("ratio", 0.0), state.get("last_epoch")
        self._next_epoch, self._focus_epoch = state.get("next_epoch", 0), None
        self.reached_target, self._removed = reached, removed
        if removed:  # the model is loaded in its final shapes: nothing left to mask
            self.groups, self._pruned, self.regularizer = [], {}, None
            self._counter = self._cost_model = None
            return
        self._pruned = pruned
        self.masks.clear(LAYER)
        self._apply_masks()

    def _pruned_from(self, saved: Dict[str, Any]) -> _Plan:
        by_source = {g.source: g for g in self.groups}
        pruned = {g.number: torch.zeros(g.units, dtype=torch.bool) for g in self.groups}
        for source, units in saved.items():
            g, units = by_source.get(source), torch.as_tensor(units, dtype=torch.long)
            if g is None or (units.numel() and not 0 <= int(units.min()) <= int(units.max())
                             < g.units):
                raise ValueError(f"the saved channel-pruner state has group '{source}' with "
                                 f"units {units.tolist()[:8]}, which do not fit the selected "
                                 f"groups {[(g.source, g.units) for g in self.groups]}; was it "
                                 f"saved with another {SECTION}.layers or model?")
            pruned[g.number][units] = True
        return pruned
