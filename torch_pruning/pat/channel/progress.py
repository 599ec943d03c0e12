"""No silent no-ops: warn once when channel pruning cannot make the progress the config asks for.

The :class:`~torch_pruning.pat.channel.pruner.ChannelPruner` asks a :class:`ProgressWatch` at
every scheduled step whether to warn. Two situations get one WARNING each (on the
``torch_pruning.pat`` logger and the user's log), with the reason and the best MACs reachable:

* **unreachable target** — checked at the first scheduled step: the MACs left at the end of the
  schedule (``global_prune_rate``), or even with every selected group pruned to its cap
  (``max_pruning_rate``, one block of ``block_size`` kept), stay above ``mac_target``;
* **idle step** — a scheduled step masks no new channel (the ratio step is smaller than one
  block of any group, or every group is at its cap).

A finished config (``reach_mac_target: true``) reused on a model that was never pruned (no
pruned checkpoint loaded) is found by :func:`finished_config_mismatch`, which the pruner
(at its first ``prune()``) and ``validate`` both call.

Example:
    >>> watch = ProgressWatch()
    >>> msg = watch.unreachable(mac_target=0.3, at_rate=0.6, best=0.45, rate=0.5, cap=0.5)
    >>> msg.startswith("channel_sparsity_args.mac_target 30.00% cannot be met")
    True
    >>> watch.wants("target")  # given once
    False
"""

from __future__ import annotations

import logging
import re
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from ..config.models import ChannelSparsityArgs
from ..util.log import human_count
from .group import ChannelGroup
from .ranking import SelectionRules, select_units

__all__ = ["ProgressWatch", "stored_macs", "finished_config_mismatch"]

logger = logging.getLogger(__name__)

SECTION = "channel_sparsity_args"

_STORED_MACS = re.compile(r"MACs: ([\d.]+)([KMG]?) -> ([\d.]+)([KMG]?)")
_SCALE = {"": 1.0, "K": 1e3, "M": 1e6, "G": 1e9}
#: The stored figures are rounded to 4 significant digits (human_count): allow for it.
_ROUNDING = 1.005


def stored_macs(log_str: str) -> Optional[Tuple[float, float]]:
    """The (original, pruned) MACs of a stored summary (``log_str``), or None.

    Example:
        >>> stored_macs("Channel pruning summary (...):\nMACs: 468.810K -> 264.660K (56.45% ...")
        (468810.0, 264660.0)
    """
    found = _STORED_MACS.search(log_str or "")
    if found is None:
        return None
    a, ua, b, ub = found.groups()
    return round(float(a) * _SCALE[ua], 3), round(float(b) * _SCALE[ub], 3)


def finished_config_mismatch(cfg: ChannelSparsityArgs, macs_now: float,
                             source: str) -> Optional[str]:
    """The warning for a config that says the target was reached while the model has more MACs
    than the stored result (a finished config copied to a fresh run, no pruned checkpoint
    loaded), or records no result to check against (a hand-edited ``reach_mac_target``); None
    when the config is not finished or the model matches.

    Example:
        >>> cfg = ChannelSparsityArgs(start_epoch=0, end_epoch=1, global_prune_rate=0.5,
        ...     reach_mac_target=True, log_str="MACs: 468.810K -> 264.660K (56.45%)")
        >>> finished_config_mismatch(cfg, 468810, "run/pruning_config.json")[:60]
        'run/pruning_config.json says channel_sparsity_args.reach_mac'
    """
    if not cfg.reach_mac_target:
        return None
    stored = stored_macs(cfg.log_str)
    if stored is None:
        return (f"{source} says {SECTION}.reach_mac_target is true, but its log_str records no "
                f"MAC figures (\"MACs: A -> B\"), so whether this model ({human_count(macs_now)} "
                "MACs) is the pruned one cannot be checked; channel pruning is skipped. If no "
                "pruned checkpoint was loaded, load it with "
                "torch_pruning.load_state_dict_pruned(model, weights), or set "
                f"{SECTION}.reach_mac_target to false in {source} to prune again.")
    if macs_now <= stored[1] * _ROUNDING:
        return None
    return (f"{source} says {SECTION}.reach_mac_target is true (the stored result: MACs "
            f"{human_count(stored[0])} -> {human_count(stored[1])}), but the model has "
            f"{human_count(macs_now)} MACs ({macs_now:,.0f}), more than the stored "
            f"{human_count(stored[1])}: no pruned checkpoint was loaded, so channel pruning is "
            "skipped and the model stays unpruned. Either load the pruned checkpoint with "
            "torch_pruning.load_state_dict_pruned(model, weights) before training, or set "
            f"{SECTION}.reach_mac_target to false (and log_str to \"\") in {source} to prune "
            "again.")


class ProgressWatch:
    """Remembers which warnings were given, and words them (each is given at most once)."""

    def __init__(self) -> None:
        self.given: set = set()

    def wants(self, kind: str) -> bool:
        """True while the warning ``kind`` (``"target"`` or ``"idle"``) was not given yet."""
        return kind not in self.given

    def check(self, epoch: int, ratio: float, plan: Dict[int, torch.Tensor],
              pruned: Dict[int, torch.Tensor], groups: Sequence[ChannelGroup],
              rules: SelectionRules, cfg: ChannelSparsityArgs, *,
              scores: Callable[[], Dict[int, torch.Tensor]],
              macs: Callable[[Dict[int, torch.Tensor]], float]) -> List[str]:
        """The warnings due at a scheduled step that did not meet the target.

        ``plan``: the units pruned after this step; ``pruned``: before it. ``scores()`` ranks
        the units; ``macs(plan)`` is the MACs fraction left by a plan. Each warning is given at
        most once; the target is checked at the first step only.
        """
        idle = all(torch.equal(plan[n], pruned[n]) for n in plan)
        check_target = cfg.mac_target > 0 and self.wants("target")
        if not (check_target or (idle and self.wants("idle"))):
            return []
        ranked = scores()
        capped = select_units(groups, ranked, pruned, 1.0, rules)  # every group at its cap
        best = macs(capped)
        out = []
        if check_target:
            at_rate = macs(select_units(groups, ranked, pruned, cfg.global_prune_rate, rules))
            msg = self.unreachable(mac_target=cfg.mac_target, at_rate=at_rate, best=best,
                                   rate=cfg.global_prune_rate, cap=cfg.max_pruning_rate)
            out += [msg] if msg else []
        if idle and self.wants("idle"):
            out.append(self.idle(epoch=epoch, ratio=ratio, groups=groups, pruned=pruned,
                                 capped=capped, rules=rules, now=macs(pruned), best=best))
        return out

    def unreachable(self, *, mac_target: float, at_rate: float, best: float, rate: float,
                    cap: float) -> Optional[str]:
        """The unreachable-target warning, or None when the schedule's end meets the target.

        ``at_rate``: MACs fraction left at ``global_prune_rate``; ``best``: left with every
        group at its cap (the best the selected layers allow).
        """
        self.given.add("target")
        if at_rate <= mac_target:
            return None
        if best > mac_target:
            fix = (f"select more layers in {SECTION}.layers, raise {SECTION}.max_pruning_rate "
                   f"({cap}) or set {SECTION}.mac_target to at least {best:.2%}")
        else:
            fix = f"raise {SECTION}.global_prune_rate ({rate})"
        return (f"{SECTION}.mac_target {mac_target:.2%} cannot be met: at global_prune_rate "
                f"{rate} the masked model keeps {at_rate:.2%} of the original MACs, and the best "
                f"reachable with the selected layers and max_pruning_rate {cap} is {best:.2%}. "
                f"Masking goes on, but the target will not be reached; {fix}.")

    def idle(self, *, epoch: int, ratio: float, groups: Sequence[ChannelGroup],
             pruned: Dict[int, torch.Tensor], capped: Dict[int, torch.Tensor],
             rules: SelectionRules, now: float, best: float) -> str:
        """The idle-step warning: why the step at ``epoch`` masked nothing.

        ``pruned``: units pruned so far; ``capped``: units pruned with every group at its cap;
        ``now`` / ``best``: MACs fraction now / at the cap.
        """
        self.given.add("idle")
        room = {g.source: int(capped[g.number].sum() - pruned[g.number].sum()) for g in groups}
        sizes = ", ".join(f"{g.source}: {g.channels}" for g in groups)
        if not any(room.values()):
            why = (f"no selected group can lose another channel: each keeps at least one block "
                   f"of block_size {rules.block_size} and loses at most max_pruning_rate "
                   f"{rules.max_pruning_rate} of its channels (channels per group: {sizes})")
        else:
            why = (f"the scheduled ratio is too small to mask one more block of block_size "
                   f"{rules.block_size} in any selected group (channels per group: {sizes}); "
                   "later steps may catch up")
        return (f"Channel pruning step at epoch {epoch} masked no new channel (channel ratio "
                f"{ratio:.4f}): {why}. MACs stay at {now:.2%} of the original; the best "
                f"reachable with the selected layers and max_pruning_rate is {best:.2%}.")
