"""Which channels to prune at a given ratio: ranking scopes, block rounding and the per-group cap.

Channels are chosen in *units*: a unit is one channel, or, in a group with grouped layers
(grouped convs, GroupNorm) of ``ch_groups`` groups, the same channel index in every group, or,
in an attention group, one whole head (:mod:`torch_pruning.pat.attention.heads`).

* **Scopes.** Local pruning ranks each group alone (every group loses ``ratio`` of its units);
  ``global_pruning`` ranks all selected groups together; ``isomorphic`` ranks together the groups
  with the same structure (upstream's isomorphic pruning).
* **Rounding.** The channels left in a pruned group are a multiple of ``block_size`` (upstream's
  ``round_to``): the count kept is rounded *down*, so rounding prunes a little more. A unit
  spans ``width`` channels of each layer (``ch_groups``, or ``head_dim`` for heads).
* **Cap.** No group loses more than ``max_pruning_rate`` of its channels, and each keeps at
  least one block (two channels per channel group in grouped groups: upstream would take a conv
  left with one output channel per group for a depthwise one; one head in attention groups).
* **Masks only grow.** Already pruned units rank first and are always kept pruned.

Example:
    >>> rules = SelectionRules(block_size=4)
    >>> kept_units(units=30, width=1, n_prune=9, rules=rules, current_kept=30)
    20
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from .group import ChannelGroup

__all__ = ["SelectionRules", "kept_units", "ranking_scopes", "select_units", "fill_to_target",
           "with_dead_units"]

_EPS = 1e-9


@dataclass(frozen=True)
class SelectionRules:
    """The config fields that shape a selection (``channel_sparsity_args``)."""

    block_size: int = 1
    max_pruning_rate: float = 1.0
    global_pruning: bool = False
    isomorphic: bool = False


def kept_units(units: int, width: int, n_prune: int, rules: SelectionRules,
               current_kept: int, min_units: int = 1,
               original_units: Optional[int] = None) -> int:
    """How many units a group keeps when its ranking asks to prune ``n_prune`` of ``units``.

    ``width`` is the channels one unit spans in each layer; ``min_units`` the fewest kept (two
    in grouped groups: upstream takes a conv with one output channel per group for a depthwise
    conv and prunes it wrongly); ``original_units`` the group's units before any removal
    (``stages``), which ``max_pruning_rate`` counts against (default ``units``).

    Example:
        >>> kept_units(64, 1, 60, SelectionRules(max_pruning_rate=0.5), current_kept=64)
        32
    """
    step = math.lcm(rules.block_size, width) // width
    base = units if original_units is None else original_units
    least = max(min_units, math.ceil(base * (1.0 - rules.max_pruning_rate) - _EPS))
    least = -(-least // step) * step  # integer ceil: block_size may be any int
    wanted = units - max(0, n_prune)
    if wanted < units:
        wanted = (wanted // step) * step
    return min(max(wanted, least), units, current_kept)


def _signature(group: ChannelGroup) -> tuple:
    return tuple((type(dep.source.module).__name__, type(dep.target.module).__name__,
                  dep.handler.__name__) for dep, _ in group.group)


def ranking_scopes(groups: Sequence[ChannelGroup],
                   rules: SelectionRules) -> List[List[ChannelGroup]]:
    """Groups ranked together: one per group (local), all (global), or by structure.

    Example:
        >>> len(ranking_scopes(groups, SelectionRules(global_pruning=True)))  # doctest: +SKIP
        1
    """
    if rules.isomorphic:
        by_sig: Dict[tuple, List[ChannelGroup]] = defaultdict(list)
        for g in groups:
            by_sig[_signature(g)].append(g)
        return list(by_sig.values())
    if rules.global_pruning:
        return [list(groups)] if groups else []
    return [[g] for g in groups]


def _order(scores: torch.Tensor, pruned: torch.Tensor) -> torch.Tensor:
    """Units from first-to-prune to last: pruned ones first, then by ascending score."""
    keyed = torch.where(pruned, torch.full_like(scores, -math.inf), scores.float())
    return torch.argsort(keyed, stable=True)


def select_units(groups: Sequence[ChannelGroup], scores: Dict[int, torch.Tensor],
                 pruned: Dict[int, torch.Tensor], ratio: float,
                 rules: SelectionRules) -> Dict[int, torch.Tensor]:
    """Pruned units of every group (bool per unit, a superset of ``pruned``) at ``ratio``.

    Args:
        groups: the selected groups.
        scores: per group number, one score per unit (lower is pruned first).
        pruned: per group number, the units pruned so far.
        ratio: the fraction of units to prune in each ranking scope.
        rules: rounding, cap and scope settings.

    Example:
        >>> plan = select_units(groups, scores, pruned, 0.5, SelectionRules())  # doctest: +SKIP
        >>> int(plan[1].sum())  # half of group 1's units  # doctest: +SKIP
        32
    """
    result: Dict[int, torch.Tensor] = {}
    for scope in ranking_scopes(groups, rules):
        total = sum(g.units for g in scope)
        target = math.floor(ratio * total + _EPS)
        if len(scope) == 1:
            wanted = {scope[0].number: target}
        else:
            keyed = torch.cat([torch.where(pruned[g.number],
                                           torch.full_like(scores[g.number], -math.inf),
                                           scores[g.number].float().cpu()) for g in scope])
            owner = torch.cat([torch.full((g.units,), i) for i, g in enumerate(scope)])
            first = owner[torch.argsort(keyed, stable=True)[:target]]
            counts = torch.bincount(first, minlength=len(scope)).tolist()
            wanted = {g.number: counts[i] for i, g in enumerate(scope)}
        for g in scope:
            done = pruned[g.number]
            keep = kept_units(g.units, g.unit_width, wanted[g.number], rules,
                              current_kept=g.units - int(done.sum()), min_units=g.min_units,
                              original_units=g.original_units)
            mask = torch.zeros(g.units, dtype=torch.bool)
            mask[_order(scores[g.number].cpu(), done)[:g.units - keep]] = True
            result[g.number] = mask | done
    return result


def fill_to_target(groups: Sequence[ChannelGroup], scores: Dict[int, torch.Tensor],
                   pruned: Dict[int, torch.Tensor], plan: Dict[int, torch.Tensor],
                   rules: SelectionRules, cost: Callable[[Dict[int, torch.Tensor]], float],
                   target: float, passes: int = 3,
                   close: float = 0.002) -> Dict[int, torch.Tensor]:
    """``plan`` (at or under ``target``) with units it would newly prune given back, best first,
    while the cost stays at or under ``target``.

    A uniform ratio moves every group by whole units, and one unit of an early, wide-resolution
    layer can be several percent of a small model's MACs, so the plan that first meets the
    target often lands well under it. This spends that slack: each newly pruned unit (a whole
    rounding step, so ``block_size`` still holds; never a unit pruned before) is priced at its
    group's marginal cost, units are given back by score per cost while the estimate fits,
    and the real cost is checked (the longest prefix that fits, by bisection). A few passes,
    since marginal costs shift as the neighbouring layers widen; none once the plan is within
    ``close`` (a fraction of ``target``) of it. About ``len(groups)`` cost evaluations per pass.

    Example:
        >>> filled = fill_to_target(groups, scores, pruned, plan, rules, cost, target)  # doctest: +SKIP
        >>> cost(plan) <= cost(filled) <= target  # doctest: +SKIP
        True
    """
    plan = {k: v.clone() for k, v in plan.items()}
    for _ in range(passes):
        now = cost(plan)
        slack = target - now
        if slack <= close * target:  # close enough: each pass costs a count per group
            break
        offers: List[Tuple[float, float, int, torch.Tensor]] = []
        for g in groups:
            step = math.lcm(rules.block_size, g.unit_width) // g.unit_width
            fresh = torch.nonzero(plan[g.number] & ~pruned[g.number]).flatten()
            if len(fresh) < step:
                continue
            score = scores[g.number].cpu().float()
            fresh = fresh[torch.argsort(score[fresh], descending=True, stable=True)]
            trial = dict(plan)
            trial[g.number] = plan[g.number].clone()
            trial[g.number][fresh[:step]] = False
            delta = cost(trial) - now
            if delta <= 0:
                continue
            for k in range(len(fresh) // step):
                units = fresh[k * step:(k + 1) * step]
                offers.append((float(score[units].sum()) / delta, delta, g.number, units))
        offers.sort(key=lambda o: -o[0])
        chosen, estimate = [], 0.0
        for offer in offers:
            if estimate + offer[1] <= slack:
                chosen.append(offer)
                estimate += offer[1]

        def given_back(n: int) -> Dict[int, torch.Tensor]:
            out = {k: v.clone() for k, v in plan.items()}
            for _, _, number, units in chosen[:n]:
                out[number][units] = False
            return out

        lo, hi = 0, len(chosen)  # the longest prefix of ``chosen`` that stays under target
        if hi and cost(given_back(hi)) > target:
            hi -= 1
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if cost(given_back(mid)) <= target:
                    lo = mid
                else:
                    hi = mid - 1
        if hi == 0:
            break
        plan = given_back(hi)
    return plan


def with_dead_units(groups: Sequence[ChannelGroup],
                    plan: Dict[int, torch.Tensor]) -> Dict[int, torch.Tensor]:
    """``plan`` plus every unit whose parameters are all zero (each group keeps its minimum).

    Used by ``infer``: a masked checkpoint is rebuilt with exactly the channels training
    zeroed removed, and more only if the target asks for it.

    Example:
        >>> with_dead_units(groups, {1: torch.zeros(16, dtype=torch.bool)})  # doctest: +SKIP
        {1: tensor([True, False, False, True, ...])}
    """
    out = {}
    for g in groups:
        extra = (g.dead_units() & ~plan[g.number]).nonzero().flatten()
        room = g.units - g.min_units - int(plan[g.number].sum())
        mask = plan[g.number].clone()
        mask[extra[:max(room, 0)]] = True
        out[g.number] = mask
    return out
