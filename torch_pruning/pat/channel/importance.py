"""Channel importance: one small protocol, ``importance(group) -> per-channel scores``.

The protocol is upstream's (``torch_pruning.importance.Importance``): a callable that takes a
dependency :class:`~torch_pruning.dependency.Group` built with *all* channel indices and returns
a 1-D tensor with one score per channel of the group's root layer. **Lower scores are pruned
first.** ``None`` means "this group cannot be ranked by this method" (e.g. no BatchNorm in it);
the channel pruner then leaves the group alone and says so. An optional ``accepts(group)``
answers that question cheaply, without computing scores.

Scores are comparable across groups, so the same objects serve local, global and isomorphic
ranking:

* :class:`GroupNormImportance` (``GroupNormPruner``): the group L2 norm of every channel over all
  coupled layers (upstream's ``GroupMagnitudeImportance(p=2)``, square-rooted), divided by its
  mean over the group.
* :class:`BNScaleImportance` (``BNScalePruner``): the mean |gamma| of the group's BatchNorms
  (upstream's ``BNScaleImportance``), divided by its mean over the group.
* :class:`MACAwareImportance` (``MACAwareImportance``): a base importance combined with the MAC
  cost ``m`` of the group (MACs of the layers it couples), with ``MAC_params.type``:

  - ``Sum``: ``alpha * I / I_max + (1 - alpha) * (1 - m_hat)``, ``I_max`` the group's largest
    score and ``m_hat = (m - m_min) / (m_max - m_min)`` over the selected groups;
  - ``Mul``: ``I * (m_min / m) ** (1 / beta)``.

  Expensive groups get lower scores, so their channels go first under global ranking.

Example:
    >>> import torch_pruning as tp
    >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1))
    >>> DG = tp.DependencyGraph().build_dependency(net, torch.randn(1, 3, 8, 8))
    >>> group = DG.get_pruning_group(net[0], tp.prune_conv_out_channels, [0, 1, 2, 3])
    >>> GroupNormImportance()(group).shape
    torch.Size([4])
"""

from __future__ import annotations

import logging
from typing import Callable, Dict, Mapping, Optional, Protocol, runtime_checkable

import torch
from torch import nn

from torch_pruning.dependency import Group
from torch_pruning.pruner import importance as upstream_importance

from ..config.models import MACParams, PruningMethod

__all__ = ["Importance", "GroupNormImportance", "BNScaleImportance", "MACAwareImportance",
           "make_importance", "group_root"]

logger = logging.getLogger(__name__)

_EPS = 1e-12


@runtime_checkable
class Importance(Protocol):
    """Per-channel scores of a dependency group; lower is pruned first, None = cannot rank."""

    def __call__(self, group: Group) -> Optional[torch.Tensor]: ...


def group_root(group: Group) -> nn.Module:
    """The root module of a dependency group (the layer whose channels are indexed).

    Example:
        >>> group_root(group) is net[0]  # doctest: +SKIP
        True
    """
    return group[0].dep.target.module


def _mean_normalized(scores: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    if scores is None:
        return None
    scores = scores.detach().float()
    return scores / (scores.mean() + _EPS)


class GroupNormImportance:
    """Group L2 norm per channel over every coupled conv/linear/BN/LN weight, mean-normalized.

    Wraps upstream's ``GroupMagnitudeImportance(p=2, group_reduction="mean")``, which sums the
    squared weights of each channel per layer and averages over layers; the square root makes it
    a norm, and dividing by the group's mean makes groups comparable.

    Example:
        >>> scores = GroupNormImportance()(group)  # doctest: +SKIP
        >>> int(scores.argmin())  # the channel with the smallest coupled weights  # doctest: +SKIP
        2
    """

    def __init__(self) -> None:
        self._upstream = upstream_importance.GroupMagnitudeImportance(
            p=2, group_reduction="mean", normalizer=None)

    def accepts(self, group: Group) -> bool:
        """Cheap check that :meth:`__call__` will not return None (a scored layer exists)."""
        return any(isinstance(dep.target.module, tuple(self._upstream.target_types))
                   for dep, _ in group)

    @torch.no_grad()
    def __call__(self, group: Group) -> Optional[torch.Tensor]:
        squares = self._upstream(group)
        if squares is None:
            return None
        return _mean_normalized(squares.clamp_min(0).sqrt())


class BNScaleImportance:
    """Mean |gamma| of the group's BatchNorm layers per channel (network slimming).

    Wraps upstream's ``BNScaleImportance``; returns None for a group without an affine
    BatchNorm.

    Example:
        >>> BNScaleImportance()(group).shape  # doctest: +SKIP
        torch.Size([4])
    """

    def __init__(self) -> None:
        self._upstream = upstream_importance.BNScaleImportance(group_reduction="mean",
                                                               normalizer=None)

    def accepts(self, group: Group) -> bool:
        """True when the group has an affine BatchNorm (otherwise there is nothing to rank)."""
        return any(isinstance(dep.target.module, nn.modules.batchnorm._BatchNorm)
                   and dep.target.module.affine for dep, _ in group)

    @torch.no_grad()
    def __call__(self, group: Group) -> Optional[torch.Tensor]:
        return _mean_normalized(self._upstream(group))


class MACAwareImportance:
    """A base importance combined with each group's MAC cost (SPEC section 3).

    Args:
        base: the importance to combine (default :class:`GroupNormImportance`).
        costs: MAC cost of each selected group, keyed by the group's root module.
        params: ``channel_sparsity_args.MAC_params`` (``use_macs``, ``type``, ``alpha``,
            ``beta``). With ``use_macs`` false the base scores are returned unchanged.

    Example:
        >>> imp = MACAwareImportance(costs={}, params=MACParams(use_macs=True, type="Mul"))
        >>> imp(group).shape  # doctest: +SKIP
        torch.Size([4])
    """

    def __init__(self, base: Optional[Importance] = None, *,
                 costs: Mapping[nn.Module, float], params: MACParams) -> None:
        self.base = base if base is not None else GroupNormImportance()
        self.params = params
        self.set_costs(costs)

    def accepts(self, group: Group) -> bool:
        """Whether the base importance can rank ``group``."""
        accepts = getattr(self.base, "accepts", None)
        return accepts(group) if accepts is not None else self.base(group) is not None

    def set_costs(self, costs: Mapping[nn.Module, float]) -> None:
        """Replace the per-group MAC costs (e.g. after the model was physically pruned)."""
        self.costs: Dict[nn.Module, float] = dict(costs)
        values = [float(v) for v in self.costs.values()] or [1.0]
        self.m_min, self.m_max = min(values), max(values)

    def cost_factor(self, cost: float) -> float:
        """The additive (Sum) or multiplicative (Mul) cost term for a group of ``cost`` MACs.

        Example:
            >>> imp = MACAwareImportance(costs={nn.Conv2d(1, 1, 1): 10.0, nn.Conv2d(1, 1, 1): 40.0},
            ...                          params=MACParams(use_macs=True, type="Mul", beta=1.0))
            >>> imp.cost_factor(40.0)
            0.25
        """
        if self.params.type == "Sum":
            span = self.m_max - self.m_min
            m_hat = (cost - self.m_min) / span if span > 0 else 0.0
            return (1.0 - self.params.alpha) * (1.0 - m_hat)
        if cost <= 0:
            return 1.0
        return (self.m_min / cost) ** (1.0 / self.params.beta)

    @torch.no_grad()
    def __call__(self, group: Group) -> Optional[torch.Tensor]:
        scores = self.base(group)
        if scores is None or not self.params.use_macs:
            return scores
        cost = float(self.costs.get(group_root(group), self.m_max))
        if self.params.type == "Sum":
            top = scores.max()
            relative = scores / top if float(top) > 0 else torch.zeros_like(scores)
            return self.params.alpha * relative + self.cost_factor(cost)
        return scores * self.cost_factor(cost)


ImportanceFactory = Callable[[Mapping[nn.Module, float], MACParams], Importance]

_FACTORIES: Dict[PruningMethod, ImportanceFactory] = {
    PruningMethod.GROUP_NORM: lambda costs, params: GroupNormImportance(),
    PruningMethod.BN_SCALE: lambda costs, params: BNScaleImportance(),
    PruningMethod.MAC_AWARE: lambda costs, params: MACAwareImportance(costs=costs, params=params),
}


def make_importance(method: PruningMethod, *, costs: Mapping[nn.Module, float],
                    params: MACParams) -> Importance:
    """The importance of a ``pruning_method``.

    Example:
        >>> type(make_importance(PruningMethod.BN_SCALE, costs={}, params=MACParams())).__name__
        'BNScaleImportance'
    """
    return _FACTORIES[PruningMethod(method)](costs, params)
