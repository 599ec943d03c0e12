"""Consumers' input columns at zero: what removing their producers' channels computes, without
removing anything (the benchmark's masks with feedback and its measured widths use it).

A :data:`Columns` maps a consumer layer (conv or linear) to the input channels to zero;
:func:`our_columns` and :func:`plan_columns` give them for our channel pruner's plans (read
through its private planning state: the benchmark's prototypes only).
"""

from __future__ import annotations

import contextlib
from typing import Any, Dict, Iterator, List

import torch
from torch import nn

__all__ = ["Columns", "zero_columns", "put_back", "zeroed", "fresh_plan", "our_columns",
           "plan_columns"]

Columns = Dict[nn.Module, torch.Tensor]  # consumer layer -> input channels to zero


def zero_columns(columns: Columns) -> Dict[nn.Module, torch.Tensor]:
    """Set the consumers' input ``columns`` to zero; what was there, for :func:`put_back`."""
    saved = {}
    with torch.no_grad():
        for layer, idx in columns.items():
            saved[layer] = layer.weight[:, idx].clone()
            layer.weight[:, idx] = 0
    return saved


def put_back(columns: Columns, saved: Dict[nn.Module, torch.Tensor]) -> None:
    """Put the ``saved`` values of ``columns`` back into the consumers' weights."""
    with torch.no_grad():
        for layer, values in saved.items():
            layer.weight[:, columns[layer]] = values


@contextlib.contextmanager
def zeroed(columns: Columns) -> Iterator[None]:
    """The consumers' input ``columns`` at zero inside the block, the weights put back after."""
    saved = zero_columns(columns)
    try:
        yield
    finally:
        put_back(columns, saved)


def fresh_plan(cp: Any, level: float) -> Any:
    """Our channel pruner's plan at ``level`` (fraction of the original MACs), ranked and
    allocated from the weights as they are, as if nothing were masked yet."""
    kept = cp._pruned, cp._ratio
    cp._pruned = {g.number: torch.zeros(g.units, dtype=torch.bool) for g in cp.groups}
    cp._ratio = 0.0
    try:
        plan, ratio, _ = cp._select(cp.schedule.final_ratio, level=level * cp.base_cost)
    finally:
        cp._pruned, cp._ratio = kept
    return plan, ratio


def our_columns(cp: Any, level: float) -> Columns:
    """For every consumer, the input channels our pruner's plan at ``level`` removes."""
    return plan_columns(cp, fresh_plan(cp, level)[0]) if level < 1 else {}


def plan_columns(cp: Any, plan: Any) -> Columns:
    """For every consumer, the input channels our pruner's ``plan`` (units per group) removes."""
    columns: Dict[nn.Module, List[torch.Tensor]] = {}
    channels = cp._channels(plan)
    for g in cp.groups:
        gone = channels[g.number]
        for sl in g.slices:
            if (sl.name == "weight" and sl.dim == 1 and getattr(sl.module, "groups", 1) == 1
                    and isinstance(sl.module, (nn.Conv2d, nn.Linear))):
                hit = gone[sl.roots]
                if bool(hit.any()):
                    columns.setdefault(sl.module, []).append(sl.index[hit])
    return {m: torch.unique(torch.cat(parts)) for m, parts in columns.items()}
