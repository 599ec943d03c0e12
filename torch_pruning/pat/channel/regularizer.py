"""Channel regularization: shrink whole channels through the gradients, after ``backward()``.

For channel ``c`` of group ``g`` the strength is::

    lambda_c = (reg + mac_reg * share_g) * gamma ** t_c

* ``share_g``: the group's share of the MACs of all selected groups (MACs of the layers it
  couples, normalized to sum to 1), so expensive groups are pushed harder;
* ``t_c = (I_max - I_c) / (I_max - I_min)`` ranks the channel inside its group by its group L2
  norm (``|gamma|`` for BNScalePruner) among the channels not pruned yet: the least important
  channel gets ``gamma`` times the strength of the most important (``gamma = 1``: uniform).

Two settings of ``regularize`` shape it further (:meth:`ChannelRegularizer.focus_on`, set by
the channel pruner at each epoch's first step): ``target: "pruned"`` multiplies ``lambda_c``
by 0 for every channel outside the plan the schedule would prune at the MAC target, and
``growth: "linear"`` multiplies every strength by a factor ramping from ``begin_epoch`` to 1 at
``start_epoch``.

The penalty is upstream's sparse-training rule (``GroupNormPruner.regularize``), so ``reg``
values tuned for it carry over:

* ``GroupNormPruner`` / ``MACAwareImportance``: ``grad += lambda_c * w`` on every coupled
  parameter of the channel (producer weight and bias, norm affine parameters, consumer input
  slices), i.e. the gradient of ``sum_c lambda_c / 2 * ||w_c||^2`` over the channel's group;
* ``BNScalePruner``: ``grad += lambda_c * sign(gamma_bn)`` on the BatchNorm scales (L1, network
  slimming).

Everything is vectorized per parameter: the per-position coefficients of a parameter are
summed into one broadcastable tensor and applied with one ``addcmul_``. With ``gamma = 1`` the
coefficients are computed once; with ``gamma > 1`` the channels are re-ranked every
``refresh_every`` (10) steps, at every epoch end (:meth:`ChannelRegularizer.restart`) and
whenever more channels get masked, since ranking reads every weight and the ranking moves
slowly.

Under FSDP2 (parameters and gradients are DTensors sharded on dim 0) the coefficients stay
whole and each rank adds ``lambda_c * w`` to the rows of its own shard; re-ranking reads the
whole weights (all-gathered), so every rank ranks alike and the update equals one process's.

Example:
    >>> reg = ChannelRegularizer(groups, PruningMethod.GROUP_NORM, reg=1e-4, mac_reg=0.0,
    ...                          gamma=1.0, costs={g.number: 1.0 for g in groups})  # doctest: +SKIP
    >>> loss.backward(); reg.apply(pruned_units); optimizer.step()  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from ..config.models import PruningMethod
from ..util.fsdp import full_tensor, local_part, local_tensor
from .group import ChannelGroup, ParamSlice
from .subnormal import SPENT

__all__ = ["ChannelRegularizer"]

logger = logging.getLogger(__name__)

_Key = Tuple[nn.Module, str, int]
_Param = Tuple[nn.Module, str]


def _bn_scale(s: ParamSlice) -> bool:
    return s.name == "weight" and isinstance(s.module, nn.modules.batchnorm._BatchNorm)


def _sum_of_squares(w: torch.Tensor, dims: List[int]) -> torch.Tensor:
    return torch.linalg.vector_norm(w, dim=dims).square() if dims else w.square()


def _sum_of_abs(w: torch.Tensor, dims: List[int]) -> torch.Tensor:
    return torch.linalg.vector_norm(w, ord=1, dim=dims) if dims else w.abs()


# penalty family: (which slices it regularizes, d(penalty)/dw, magnitude summed over dims)
_Family = Tuple[Callable[[ParamSlice], bool], Callable[[torch.Tensor], torch.Tensor],
                Callable[[torch.Tensor, List[int]], torch.Tensor]]
_FAMILIES: Dict[PruningMethod, _Family] = {
    PruningMethod.GROUP_NORM: (lambda s: True, lambda w: w, _sum_of_squares),
    PruningMethod.MAC_AWARE: (lambda s: True, lambda w: w, _sum_of_squares),
    PruningMethod.BN_SCALE: (_bn_scale, torch.sign, _sum_of_abs),
}


class _ScatterLayout:
    """Where each group's per-channel strengths land in the regularized parameters.

    Every ``(module, name, dim)`` the penalty touches gets a span of one flat vector; each
    :class:`ParamSlice` contributes ``lambda[roots]`` at ``span + index``. Built once from the
    groups, so a set of coefficients costs one gather, one ``index_add_`` and a view per
    parameter dimension, whatever the number of slices.
    """

    def __init__(self, groups: Sequence[ChannelGroup],
                 by_param: Mapping[_Key, List[Tuple[int, ParamSlice]]]) -> None:
        self.numbers = [g.number for g in groups]
        starts = [0]
        for g in groups:
            starts.append(starts[-1] + g.channels)
        first = dict(zip(self.numbers, starts))
        self.spans: List[Tuple[_Key, int, int]] = []  # (key, start, size) in the flat vector
        index, source, index_shift, source_shift, lengths = [], [], [], [], []
        total = 0
        for key, entries in by_param.items():
            module, name, dim = key
            size = getattr(module, name).shape[dim]
            self.spans.append((key, total, size))
            for number, s in entries:
                index.append(s.index)
                source.append(s.roots)
                index_shift.append(total)
                source_shift.append(first[number])
                lengths.append(s.index.numel())
            total += size
        self.total = total
        counts = torch.tensor(lengths, dtype=torch.long)
        cat = (lambda ts: torch.cat([t.cpu().long() for t in ts])) if index else (
            lambda ts: torch.zeros(0, dtype=torch.long))
        self.index = cat(index) + torch.tensor(index_shift, dtype=torch.long
                                               ).repeat_interleave(counts)
        self.source = cat(source) + torch.tensor(source_shift, dtype=torch.long
                                                 ).repeat_interleave(counts)

    def coefficients(self, lam: Mapping[int, torch.Tensor]) -> Dict[_Param, torch.Tensor]:
        """Per parameter, ``lam`` (per channel, by group number) summed per position."""
        if not self.spans:
            return {}
        strengths = torch.cat([lam[n].detach().to("cpu", torch.float64) for n in self.numbers])
        flat = torch.zeros(self.total, dtype=torch.float64).index_add_(
            0, self.index, strengths.index_select(0, self.source))
        cast: Dict[Tuple[torch.device, torch.dtype], torch.Tensor] = {}
        coef: Dict[_Param, torch.Tensor] = {}
        for (module, name, dim), start, size in self.spans:
            param = getattr(module, name)
            where = (param.device, param.dtype)
            if where not in cast:  # one conversion per device and dtype, not per parameter
                cast[where] = flat.to(param.device, param.dtype)
            shape = [1] * param.dim()
            shape[dim] = -1
            vec = cast[where].narrow(0, start, size).view(shape)
            key = (module, name)
            coef[key] = vec if key not in coef else coef[key] + vec
        return coef


class ChannelRegularizer:
    """Adds the channel penalty's gradient to ``.grad`` of every coupled parameter.

    Args:
        groups: the selected groups.
        method: the pruning method (chooses the penalty family).
        reg, mac_reg, gamma: ``channel_sparsity_args.regularize``.
        costs: MAC cost per group number (for ``mac_reg``).
        refresh_every: with ``gamma > 1``, re-rank the channels every this many steps.

    Example:
        >>> reg = ChannelRegularizer(groups, PruningMethod.GROUP_NORM, reg=0.1, mac_reg=0.0,
        ...                          gamma=1.0, costs={})  # doctest: +SKIP
        >>> reg.apply({g.number: torch.zeros(g.units, dtype=torch.bool) for g in groups})  # doctest: +SKIP
    """

    def __init__(self, groups: Sequence[ChannelGroup], method: PruningMethod, *, reg: float,
                 mac_reg: float, gamma: float, costs: Mapping[int, float],
                 refresh_every: int = 10) -> None:
        accepts, self._grad_fn, self._magnitude = _FAMILIES[PruningMethod(method)]
        self.gamma = float(gamma)
        self.refresh_every = max(1, int(refresh_every))
        self._steps = 0
        self._cached: Tuple[Any, Dict[_Param, torch.Tensor]] = (None, {})
        total = float(sum(costs.values())) or 1.0
        self.strength = {g.number: reg + mac_reg * float(costs.get(g.number, 0.0)) / total
                         for g in groups}
        self.groups = [g for g in groups if self.strength[g.number] > 0]
        self._slices: Dict[int, List[ParamSlice]] = {
            g.number: [s for s in g.slices if accepts(s)] for g in self.groups}
        # (module, name, dim) -> [(group number, slice)]
        self._by_param: Dict[_Key, List[Tuple[int, ParamSlice]]] = defaultdict(list)
        for g in self.groups:
            for s in self._slices[g.number]:
                self._by_param[(s.module, s.name, s.dim)].append((g.number, s))
        dims: Dict[_Param, set] = defaultdict(set)
        for module, name, dim in self._by_param:
            dims[(module, name)].add(dim)
        self._param_dims = {k: sorted(v) for k, v in dims.items()}
        #: per group number, the units to push (None: all of them); see :meth:`focus_on`
        self.focus: Optional[Dict[int, torch.Tensor]] = None
        #: a factor on every strength (the ``growth`` ramp)
        self.scale = 1.0
        #: with ``gamma == 1``: the coefficients, computed at the first step (not at construction)
        self._uniform: Optional[Dict[_Param, torch.Tensor]] = None
        self._layout: Optional[_ScatterLayout] = None  # built with the first coefficients

    def focus_on(self, focus: Optional[Mapping[int, torch.Tensor]], scale: float = 1.0) -> None:
        """Push only the units in ``focus`` (bool per unit, by group number; None: every unit),
        with every strength multiplied by ``scale``. Takes effect at the next step.

        Example:
            >>> reg.focus_on({1: torch.tensor([True, False])}, scale=0.5)  # doctest: +SKIP
        """
        self.focus = None if focus is None else {n: f.clone() for n, f in focus.items()}
        self.scale = float(scale)
        self._uniform = None  # recomputed at the next step
        self.restart()

    def _weights(self, g: ChannelGroup) -> torch.Tensor:
        """Per channel of ``g``: ``scale``, zero outside the focus (float64)."""
        w = torch.full((g.channels,), self.scale, dtype=torch.float64)
        if self.focus is not None and g.number in self.focus:
            w = w * g.expand_units(self.focus[g.number]).to(torch.float64)
        return w

    @property
    def active(self) -> bool:
        """False when every strength is zero (nothing to add)."""
        return bool(self._by_param)

    def _coefficients(self, lam: Mapping[int, torch.Tensor]) -> Dict[_Param, torch.Tensor]:
        """Per parameter, the coefficient of every entry as one broadcastable tensor.

        One ``index_add_`` for every slice of every group (:class:`_ScatterLayout`), then a
        view per regularized parameter dimension: no per-slice tensor ops.
        """
        if self._layout is None:
            self._layout = _ScatterLayout(self.groups, self._by_param)
        return self._layout.coefficients(lam)

    def _uniform_coefficients(self) -> Dict[_Param, torch.Tensor]:
        # float64: a huge reg becomes inf in the cast, not an error
        lam = {g.number: self.strength[g.number] * self._weights(g) for g in self.groups}
        return self._coefficients(lam)

    def _per_position(self) -> Dict[_Key, torch.Tensor]:
        """Magnitude summed per position along every regularized dim, one pass per parameter.

        The dims no slice uses (kernel dims) are reduced first, so a conv weight used along its
        output dim by one group and its input dim by another is read once.
        """
        out: Dict[_Key, torch.Tensor] = {}
        for (module, name), dims in self._param_dims.items():
            w = full_tensor(getattr(module, name).detach())
            m = self._magnitude(w, [d for d in range(w.dim()) if d not in dims])
            for i, d in enumerate(dims):
                others = [j for j in range(len(dims)) if j != i]
                out[(module, name, d)] = m.sum(others) if others else m
        return out

    def _importance(self, g: ChannelGroup, per_position: Mapping[_Key, torch.Tensor]
                    ) -> torch.Tensor:
        total = None
        for s in self._slices[g.number]:
            values = per_position[(s.module, s.name, s.dim)]
            if total is None:
                total = torch.zeros(g.channels, device=values.device, dtype=values.dtype)
            index, roots = s.index.to(values.device), s.roots.to(values.device)
            total.index_add_(0, roots, values.index_select(0, index))
        if total is None:
            return torch.zeros(g.channels)
        return g.expand_units(g.unit_mean(total))

    def _strengths(self, pruned: Mapping[int, torch.Tensor]) -> Dict[int, torch.Tensor]:
        lam = {}
        per_position = self._per_position()
        for g in self.groups:
            imp = self._importance(g, per_position)
            alive = ~g.expand_units(pruned[g.number]).to(imp.device)
            t = torch.zeros_like(imp)
            if bool(alive.any()):
                hi, lo = imp[alive].max(), imp[alive].min()
                if float(hi - lo) > 0:
                    t = ((hi - imp) / (hi - lo)).clamp(0, 1)
            lam[g.number] = (self.strength[g.number] * self.gamma ** t
                             * self._weights(g).to(t.device, t.dtype))
        return lam

    @torch.no_grad()
    def spent(self) -> Dict[_Param, torch.Tensor]:
        """Positions of *spent* channels: pushed now (inside the focus) and every coupled
        entry below :data:`~.subnormal.SPENT` times its parameter's largest magnitude.

        Per parameter, a bool tensor broadcastable to it (True where an output or input
        channel is spent); parameters without one are left out. Empty unless every regularized
        parameter is float32 on CPU, where subnormal products are slow (:mod:`.subnormal`).
        """
        relative: Dict[_Key, torch.Tensor] = {}
        for (module, name), dims in self._param_dims.items():
            param = getattr(module, name)
            if param.device.type != "cpu" or param.dtype != torch.float32:
                return {}
            w = full_tensor(param.detach())
            unused = [d for d in range(w.dim()) if d not in dims]  # kernel dims: reduced first
            size = w.abs().amax(dim=unused) if unused else w.abs()
            top = float(size.max()) if size.numel() else 0.0
            size = size / top if top > 0 else torch.zeros_like(size)
            for i, d in enumerate(dims):
                others = [j for j in range(len(dims)) if j != i]
                relative[(module, name, d)] = size.amax(dim=others) if others else size
        flags: Dict[int, torch.Tensor] = {}
        for g in self.groups:
            largest = torch.zeros(g.channels)
            for s in self._slices[g.number]:
                values = relative[(s.module, s.name, s.dim)].index_select(0, s.index.cpu())
                largest.scatter_reduce_(0, s.roots.cpu(), values, reduce="amax")
            flags[g.number] = ((largest < SPENT) & (self._weights(g) > 0)).to(torch.float64)
        if not any(bool(f.any()) for f in flags.values()):
            return {}
        where = {key: c > 0 for key, c in self._coefficients(flags).items()}
        return {key: w for key, w in where.items() if bool(w.any())}

    def restart(self) -> None:
        """Re-rank the channels at the next step and count ``refresh_every`` from there.

        The channel pruner calls it at every epoch end, so the ranking used in an epoch depends
        only on the weights at its start: a job resumed from an epoch-end checkpoint regularizes
        exactly like the uninterrupted one (tests/reliability/test_resume.py).
        """
        self._steps = 0
        self._cached = (None, {})

    @torch.no_grad()
    def apply(self, pruned: Mapping[int, torch.Tensor]) -> None:
        """Add the penalty gradient to every regularized parameter's ``.grad``.

        ``pruned`` maps group numbers to the units pruned so far (used to rank by ``gamma``).
        """
        if self.gamma == 1.0:
            if self._uniform is None:
                self._uniform = self._uniform_coefficients()
            coef = self._uniform
        else:
            state = tuple(int(p.sum()) for p in pruned.values())
            if self._cached[0] != state or self._steps % self.refresh_every == 0:
                self._cached = (state, self._coefficients(self._strengths(pruned)))
            coef = self._cached[1]
            self._steps += 1
        for key, c in coef.items():
            param = getattr(key[0], key[1])
            if param.grad is None:
                continue
            if c.device != param.device or c.dtype != param.dtype:
                c = coef[key] = c.to(param.device, param.dtype)
            local_tensor(param.grad).addcmul_(self._grad_fn(local_tensor(param.detach())),
                                              local_part(c, param))
