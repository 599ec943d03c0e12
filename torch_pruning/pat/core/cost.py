"""Cost models: what ``mac_target`` measures, for a model with some positions removed.

A cost model never sees a pruner's internals. It is asked about a :data:`RemovalPlan`, plain
per-module data: for each ``(module, pruning handler)`` the positions that handler removes (in
the unpruned model's indices) and the dimension it prunes along. The channel pruner converts its
groups into such a plan (:func:`torch_pruning.pat.channel.group.removal_plan`); any other caller
(a tool, a test) can write one by hand.

Two cost models implement :class:`CostModel`: :class:`~torch_pruning.pat.core.macs.MacCounter`
(MACs, counted by upstream's ``count_ops_and_params``) and
:class:`~torch_pruning.pat.core.latency.LatencyCost` (estimated milliseconds from per-layer
timings). A new one (energy, memory traffic) implements the same three members.

Example:
    >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3))
    >>> counter = MacCounter(net, torch.randn(1, 3, 16, 16))  # doctest: +SKIP
    >>> plan = {(net[0], prune_conv_out_channels): (0, [0, 1]),
    ...         (net[2], prune_conv_in_channels): (1, [0, 1])}  # doctest: +SKIP
    >>> counter.count(plan)[0] < counter.base_cost  # doctest: +SKIP
    True
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, List, Optional, Protocol, Tuple, runtime_checkable

from torch import nn

__all__ = ["RemovalPlan", "CostModel"]

#: ``(module, handler) -> (pruning dim or None, positions to remove)``: the handler is an
#: upstream pruning function (``prune_conv_out_channels`` ...) or any callable
#: ``handler(module, positions)`` (an attention module's head count uses one).
RemovalPlan = Dict[Tuple[nn.Module, Callable[..., Any]], Tuple[Optional[int], List[int]]]


@runtime_checkable
class CostModel(Protocol):
    """What the channel pruner's budget (``mac_target``) and MAC-aware importance ask of a cost.

    Attributes:
        base_cost: the cost of the model as it was when the cost model was built.
    """

    base_cost: float

    def cost(self, modules: Iterable[nn.Module]) -> float:
        """The cost of ``modules`` (a group's coupled layers) in the model as it is."""
        ...

    def count(self, removal: RemovalPlan) -> Tuple[float, int]:
        """``(cost, parameters)`` of the model with ``removal`` applied (the model is untouched)."""
        ...
