"""A dependency group of the channel pruner, its coupled parameter slices, their masks, and
the removal plan the cost models count (:func:`removal_plan`).

A :class:`ChannelGroup` is built by :func:`torch_pruning.pat.channel.grouping.select_groups`; masks,
regularization, selection and MAC counting all read its :class:`ParamSlice` list.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Set, Tuple

import torch
from torch import nn

from torch_pruning.dependency import Dependency, Group

from ..attention.heads import AttentionHeads
from ..core.cost import RemovalPlan

__all__ = ["ParamSlice", "ChannelGroup", "keep_masks", "removal_plan"]


@dataclass(frozen=True)
class ParamSlice:
    """Positions ``index`` along ``dim`` of ``module.<name>`` belong to root channels ``roots``.

    Example:
        >>> s = ParamSlice(nn.Conv2d(4, 2, 1), "weight", 1, torch.arange(4), torch.arange(4))
        >>> s.is_full()
        True
    """

    module: nn.Module
    name: str
    dim: int
    index: torch.Tensor
    roots: torch.Tensor

    @property
    def param(self) -> torch.Tensor:
        """The live parameter (looked up each time: physical pruning replaces parameters)."""
        return getattr(self.module, self.name)

    def is_full(self) -> bool:
        """True when the slice covers the whole dimension in order (a fast path)."""
        size = self.param.shape[self.dim]
        return self.index.numel() == size and bool(
            (self.index == torch.arange(size, device=self.index.device)).all())


@dataclass
class ChannelGroup:
    """One prunable group: its root conv, upstream group, and coupled parameter slices.

    Channels are pruned in *units*: single channels; in groups with grouped layers the same
    channel of each of ``ch_groups`` groups; in attention groups (``heads`` set) whole heads.

    Example:
        >>> g = select_groups(net, graph, "all")[0]  # doctest: +SKIP
        >>> g.source, g.dependencies, g.channels  # doctest: +SKIP
        ('layer1.0.conv1', ['layer1.0.conv2'], 64)
    """

    number: int
    source: str
    root: nn.Module
    members: Group
    channels: int
    ch_groups: int
    slices: List[ParamSlice]
    dependencies: List[str]
    module_names: List[str]
    items: List[Tuple[str, Dependency, torch.Tensor, torch.Tensor]] = field(repr=False)
    heads: Optional[AttentionHeads] = None
    #: Makes upstream's group with every channel, when ``members`` is a probe (see below).
    full_group: Optional[Callable[[], Group]] = field(default=None, repr=False)
    #: Units before any removal (set by the channel pruner; ``stages`` removes some before the
    #: end): ``max_pruning_rate`` counts against them. ``None``: ``units``.
    original_units: Optional[int] = None

    @property
    def group(self) -> Group:
        """Upstream's group of every root channel (for importance and physical removal).

        :func:`~torch_pruning.pat.channel.grouping.select_groups` may find a group's members
        with a one-channel probe, when no index mapping (concat, split, reshape, ...) is on
        its way, so every coupled layer takes the root's positions as they are; upstream's
        full group (one Python object per channel and layer) is then made here, on first use.
        ``members`` has the same dependencies in the same order, for reading who is coupled.
        """
        if self.full_group is not None:
            self.members, self.full_group = self.full_group(), None
        return self.members

    @property
    def units(self) -> int:
        """Units ranked independently: heads, else ``channels // ch_groups``."""
        return self.heads.count if self.heads else self.channels // self.ch_groups

    @property
    def unit_width(self) -> int:
        """Channels one unit spans in each layer (rounding to ``block_size`` counts these)."""
        return self.heads.head_dim if self.heads else self.ch_groups

    @property
    def min_units(self) -> int:
        """Units a group always keeps: two per channel group in grouped groups, else one."""
        return 2 if self.ch_groups > 1 and not self.heads else 1

    def unit_of_channel(self) -> torch.Tensor:
        """The unit of every root channel."""
        positions = torch.arange(self.channels)
        return self.heads.unit_index(positions) if self.heads else positions % self.units

    def expand_units(self, unit_mask: torch.Tensor) -> torch.Tensor:
        """A per-unit tensor as a per-root-channel one (each channel takes its unit's value)."""
        if self.units == self.channels:
            return unit_mask
        return unit_mask[self.unit_of_channel().to(unit_mask.device)]

    @torch.no_grad()
    def dead_units(self) -> torch.Tensor:
        """Units whose every coupled parameter position is exactly zero (bool per unit).

        Such a unit is what a channel mask leaves behind, and removing it is exact wherever
        removing a masked channel is: its convs/linears produce zeros, its BatchNorms scale and
        shift them by zero, its consumers read them with zero weights (GroupNorm/LayerNorm
        statistics are the documented exception, see docs/channel_pruning.md#exactness).
        """
        alive = torch.zeros(self.channels)
        for s in self.slices:
            p = s.param.detach()
            nonzero = p.index_select(s.dim, s.index.to(p.device)) != 0
            if p.dim() > 1:
                nonzero = nonzero.movedim(s.dim, 0).flatten(1).any(1)
            alive.index_add_(0, s.roots, nonzero.cpu().float())
        units = torch.zeros(self.units).index_add_(0, self.unit_of_channel(), alive)
        return units == 0

    def unit_mean(self, values: torch.Tensor) -> torch.Tensor:
        """Per-root-channel ``values`` averaged over each unit's channels."""
        if self.units == self.channels:
            return values
        index = self.unit_of_channel().to(values.device)
        total = torch.zeros(self.units, dtype=values.dtype, device=values.device)
        return total.index_add_(0, index, values) / (self.channels // self.units)


@torch.no_grad()
def keep_masks(groups: Sequence[ChannelGroup],
               pruned: Dict[int, torch.Tensor]) -> Dict[Tuple[nn.Module, str], torch.Tensor]:
    """Keep-masks (broadcastable bool tensors) of every parameter coupled to a pruned channel.

    ``pruned`` maps group numbers to bool tensors over root channels. A parameter coupled to
    several groups (output channels in one, input slices in another) gets the AND of both.

    Example:
        >>> masks = keep_masks(groups, {1: torch.tensor([True, False, False, False])})  # doctest: +SKIP
        >>> masks[(conv, "weight")].shape  # doctest: +SKIP
        torch.Size([4, 1, 1, 1])
    """
    keeps: Dict[Tuple[nn.Module, str], torch.Tensor] = {}
    for g in groups:
        gone = pruned.get(g.number)
        if gone is None or not bool(gone.any()):
            continue
        for s in g.slices:
            hit = gone[s.roots]
            if not bool(hit.any()):
                continue
            param = s.param
            along = torch.ones(param.shape[s.dim], dtype=torch.bool)
            along[s.index[hit]] = False
            shape = [1] * param.dim()
            shape[s.dim] = -1
            key = (s.module, s.name)
            keeps[key] = along.view(shape) if key not in keeps else keeps[key] & along.view(shape)
    return keeps


def removal_plan(groups: Iterable[ChannelGroup], pruned: Dict[int, torch.Tensor]) -> RemovalPlan:
    """The groups' pruned root channels as the plain plan a cost model counts.

    ``pruned`` maps a group number to a bool tensor over its root channels. The plan says which
    positions each upstream handler removes on each module (merged over groups, so each handler
    runs once on unpruned shapes); attention head counts appear as
    ``(attention, AttentionHeads.remove) -> (None, heads)``.

    Example:
        >>> removal_plan(groups, {1: torch.tensor([True, False, False, False])})  # doctest: +SKIP
        {(Conv2d(3, 4, ...), <bound method ConvPruner.prune_out_channels ...>): (0, [0]), ...}
    """
    plan: Dict[Tuple[nn.Module, Callable[..., Any]], Tuple[Optional[int], Set[int]]] = {}
    for g in groups:
        mask = pruned.get(g.number)
        if mask is None or not bool(mask.any()):
            continue
        if g.heads is not None:  # the attention module's head count follows
            heads = torch.unique(g.heads.unit_index(mask.nonzero().flatten())).tolist()
            plan[(g.heads.module, g.heads.remove)] = (None, set(heads))
        for _, dep, idxs, roots in g.items:
            chosen = idxs[mask[roots]].tolist()
            if chosen:
                key = (dep.target.module, dep.handler)
                plan.setdefault(key, (dep.target.pruning_dim, set()))[1].update(chosen)
    return {k: (dim, sorted(s)) for k, (dim, s) in plan.items()}

