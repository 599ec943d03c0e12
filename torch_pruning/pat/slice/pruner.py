"""The slice pruner: block L2 regularization and exact slice masks in the hardware's order.

Each selected ``Conv2d`` is cut into slices of ``A`` weights (:mod:`.layout`). Per step,
:meth:`SlicePruner.regularize` returns the reweighted L2 penalty
``reg * sum_s ||s|| / (||s||.detach() + eps)`` over the slices that may still be pruned. At the
end of a scheduled epoch, :meth:`SlicePruner.prune` masks the lowest-norm slices of each layer
until the scheduled fraction of its *eligible* slices is zero. Masks live in the shared
:class:`~torch_pruning.pat.core.masks.MaskSet` (layer ``"slice"``), which keeps them exactly zero
through optimizer steps and re-indexes them when channels are physically removed.

Counting rules: slices at ``x == 0`` are protected (never pruned, never penalized, not counted)
when ``disable_first_index`` is set; slices that are all-zero because of channel masks are not
counted either. A layer whose surviving filters do not fill whole blocks is skipped with a log
line naming it.
"""

from __future__ import annotations

import difflib
import itertools
import logging
import math
import os
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
from torch import nn

from ..config.errors import PruningConfigError
from ..config.models import SliceMode, SliceSparsityArgs
from ..core.masks import MaskSet, strip_module_prefix
from ..core.schedule import SliceSchedule
from ..util.fsdp import full_tensor, reshard_model
from ..util.log import UserLog, emit, is_rank_zero
from ..util.model import model_device, unwrap_model
from .layout import SliceLayout, conv_block_size, is_depthwise, slice_layout
from .sparsity import LayerSlices, export_slices, slice_sparsity, sparsity_lines

__all__ = ["SlicePruner", "MASK_LAYER", "resolve_slice_layers"]

logger = logging.getLogger(__name__)

#: The :class:`MaskSet` layer holding slice masks.
MASK_LAYER = "slice"
_CHANNEL_LAYER = "channel"
_STATE_VERSION = 1


class _PenaltyPlan:
    """Layouts and active-slice weights of layers sharing a device and dtype, concatenated.

    ``weight`` is 1 for a penalized slice (eligible, not masked) and 0 otherwise, in the
    weights' dtype: the penalty multiplies by it instead of selecting, so a step costs a few
    passes over the per-slice vector whatever the number of layers. Built again only when
    masks, shapes or devices change (:meth:`SlicePruner.regularize`).
    """

    def __init__(self, members: List[Tuple[int, SliceLayout, torch.Tensor]],
                 dtype: torch.dtype) -> None:
        self.positions = [i for i, _, _ in members]
        self.layouts = [lay for _, lay, _ in members]
        ends = list(itertools.accumulate(lay.num_slices for lay in self.layouts))
        self.spans = list(zip([0] + ends[:-1], ends))
        self.total = ends[-1]
        self.active = torch.cat([act for _, _, act in members])
        self.weight = self.active.to(dtype)


class _ReweightedSliceNorm(torch.autograd.Function):
    """``sum_s ||s|| / (||s||.detach() + eps)`` over active, non-zero slices of many weights.

    One autograd node with the closed-form gradient ``w / (||s|| * (||s|| + eps))`` per slice.
    Forward reads each weight once (its ``[A, S]`` rows summed into the concatenated
    ``[S_total]`` vector of squared norms, :meth:`SliceLayout.row_sq_norms`); the per-slice
    arithmetic is a few passes over that vector for all layers together; backward is one
    multiply per weight.
    """

    @staticmethod
    def forward(ctx: Any, plan: _PenaltyPlan, eps: float, *weights: torch.Tensor) -> torch.Tensor:
        norm = torch.empty(plan.total, dtype=weights[0].dtype, device=weights[0].device)
        for lay, weight, (lo, hi) in zip(plan.layouts, weights, plan.spans):
            lay.row_sq_norms(weight.detach(), out=norm[lo:hi])
        norm.sqrt_()
        inv = (norm + eps).reciprocal_().mul_(plan.weight)  # 0 for slices not penalized
        value = torch.dot(norm, inv)
        coef = inv.div_(norm).nan_to_num_(nan=0.0, posinf=0.0)  # 0 for all-zero slices
        ctx.plan = plan
        ctx.save_for_backward(coef, *weights)
        return value

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> Tuple[Optional[torch.Tensor], ...]:
        coef, *weights = ctx.saved_tensors
        coef = coef * grad
        needs = ctx.needs_input_grad[2:]
        grads = [lay.scale(w, coef[lo:hi]) if need else None
                 for lay, w, (lo, hi), need in zip(ctx.plan.layouts, weights, ctx.plan.spans,
                                                   needs)]
        return (None, None, *grads)


def resolve_slice_layers(model: nn.Module, cfg: SliceSparsityArgs) -> Tuple[List[str], bool]:
    """Names of the Conv2d layers to slice-prune, and whether the user listed them.

    The one resolver of ``slice_sparsity_args.layers`` (the pruner and ``validate`` use it).
    Raises :class:`PruningConfigError` for unknown names (with close matches) and non-Conv2d
    layers.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
        >>> resolve_slice_layers(net, SliceSparsityArgs(start_epoch=0, end_epoch=1, prune_rate=0.5))
        (['0'], False)
    """
    named = {strip_module_prefix(n): m for n, m in model.named_modules()}
    if cfg.layers is None:
        return [n for n, m in named.items() if isinstance(m, nn.Conv2d)], False
    convs = [n for n, m in named.items() if isinstance(m, nn.Conv2d)]
    out: List[str] = []
    for raw in cfg.layers:
        name = strip_module_prefix(raw)
        module = named.get(name)
        if module is None:
            close = difflib.get_close_matches(name, convs, n=3)
            hint = (f"did you mean {', '.join(repr(c) for c in close)}?" if close
                    else f"Conv2d layers are: {', '.join(convs[:10])}"
                         f"{', ...' if len(convs) > 10 else ''}")
            raise PruningConfigError(
                f"slice_sparsity_args.layers: no layer named '{raw}' in the model; {hint}",
                field="slice_sparsity_args.layers")
        if not isinstance(module, nn.Conv2d):
            raise PruningConfigError(
                f"slice_sparsity_args.layers: '{raw}' is a {type(module).__name__}; slice "
                "pruning applies to Conv2d layers only", field="slice_sparsity_args.layers")
        if name not in out:
            out.append(name)
    return out, True


class _Layer:
    """One selected conv and its cached slice state (rebuilt when masks or shapes change)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.key: Optional[tuple] = None
        self.slices: Optional[LayerSlices] = None
        self.active: Optional[torch.Tensor] = None  # penalized slices: eligible and not pruned


class SlicePruner:
    """Block L2 slice regularization and masking for the selected Conv2d layers.

    Implements :class:`~torch_pruning.pat.core.pruner.Pruner`.

    Args:
        model: the model (may be DDP-wrapped).
        cfg: the validated ``slice_sparsity_args`` section.
        masks: the :class:`MaskSet` shared with the channel pruner.
        log: an object with ``.info`` receiving the same lines as the logger.
        eps: the reweighting constant of the penalty.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3))
        >>> cfg = SliceSparsityArgs(block_size=4, start_epoch=0, end_epoch=0, prune_rate=0.5,
        ...                         reg=1e-4)
        >>> pruner = SlicePruner(net, cfg, masks=MaskSet())
        >>> loss = net(torch.randn(1, 3, 8, 8)).sum() + pruner.regularize(net)
        >>> pruner.prune(net, epoch=0)
        >>> pruner.sparsity()["overall"]["fraction"]
        0.5
    """

    def __init__(self, model: nn.Module, cfg: SliceSparsityArgs, *, masks: MaskSet,
                 log: Optional[UserLog] = None, eps: float = 1e-8) -> None:
        self.cfg = cfg
        self.masks = masks
        self.log = log
        self.eps = eps
        self.schedule = SliceSchedule.from_config(cfg)
        self.last_epoch: Optional[int] = None
        self._plan_key: Optional[tuple] = None
        self._plans: List[_PenaltyPlan] = []
        self._model = unwrap_model(model)
        names, listed = resolve_slice_layers(self._model, cfg)
        self._modules: Dict[str, nn.Module] = {}
        self._layers: List[_Layer] = []
        #: Convs left out of the default selection, with the reason (reported and exported).
        self.skipped: Dict[str, str] = {}
        for name in names:
            layer = _Layer(name)
            rec = self._refresh(layer, self._model.get_submodule(name))
            if rec.layout is None:
                if not listed:  # default selection: only convs whose filters fill whole blocks
                    self.skipped[name] = rec.reason
                    continue
                emit(f"Slice pruning skips '{name}' until its filters fill whole blocks: "
                     f"{rec.reason}", log, logging.WARNING, logger)
            self._layers.append(layer)
        emit(f"Slice pruning {len(self._layers)} Conv2d layers (A={cfg.block_size}, depthwise "
             f"A={cfg.depthwise_block_size}, mode {cfg.pruning_mode.value}): "
             f"{[layer.name for layer in self._layers]}", log, logger=logger)
        if self.skipped:
            emit(f"Slice pruning skips {len(self.skipped)} Conv2d layers whose filters do not "
                 f"fill whole blocks: "
                 f"{', '.join(f'{n} ({r})' for n, r in self.skipped.items())}", log, logger=logger)

    # ------------------------------------------------------------------ layer state
    def _bind(self, model: nn.Module, rebind: bool = False) -> List[Tuple[_Layer, nn.Module]]:
        """The selected convs of ``model`` (resolved by name, so replaced modules are found)."""
        model = unwrap_model(model)
        if rebind or model is not self._model or not self._modules:
            self._model = model
            self._modules = {layer.name: model.get_submodule(layer.name) for layer in self._layers}
        return [(layer, self._modules[layer.name]) for layer in self._layers]

    def _refresh(self, layer: _Layer, conv: nn.Module) -> LayerSlices:
        """The layer's slice state, recomputed only when masks, shape or device changed."""
        weight = conv.weight
        key = (id(conv), self.masks.version, tuple(weight.shape), weight.device)
        if layer.key == key and layer.slices is not None:
            return layer.slices
        shape = tuple(weight.shape)
        a = conv_block_size(conv, self.cfg.block_size, self.cfg.depthwise_block_size)
        rec = LayerSlices(name=layer.name, weight_shape=shape, groups=conv.groups,
                          depthwise=is_depthwise(conv), block_size=a)
        cmask = self.masks.get(_CHANNEL_LAYER, conv, "weight")
        surviving = None if cmask is None else cmask.reshape(shape[0], -1).any(1)
        lay = slice_layout(shape, a, surviving, device=weight.device)
        if lay is None:
            n = shape[0] if surviving is None else int(surviving.sum())
            rec.reason = f"{n} surviving filters do not fill whole blocks of A={a}"
        else:
            rec.layout = lay
            if self.cfg.disable_first_index:
                rec.protected = lay.x == 0
            else:
                rec.protected = torch.zeros(lay.num_slices, dtype=torch.bool, device=weight.device)
            rec.dead = (~lay.gather(cmask).any(1) if cmask is not None
                        else torch.zeros_like(rec.protected))
            smask = self.masks.get(MASK_LAYER, conv, "weight")
            rec.pruned = (~lay.gather(smask).any(1) if smask is not None
                          else torch.zeros_like(rec.protected))
            layer.active = ~(rec.protected | rec.dead | rec.pruned)
        layer.key = key
        layer.slices = rec
        return rec

    # ------------------------------------------------------------------ public API
    @property
    def enabled(self) -> bool:
        """True in ``Prune`` mode with slice pruning on."""
        return self.cfg.is_prune and self.cfg.pruning_mode is SliceMode.PRUNE

    def regularize(self, model: nn.Module) -> torch.Tensor:
        """The slice penalty to add to the loss: a differentiable scalar on the model's device.

        ``reg * sum_s ||s|| / (||s||.detach() + eps)`` over slices that are not protected, not
        masked and not already zero. A 0 tensor in ``Unprune`` mode or when ``reg`` is 0.

        Example:
            >>> loss = loss + pruner.regularize(model)  # doctest: +SKIP
        """
        if not self.enabled or self.cfg.reg == 0:
            return torch.zeros((), device=model_device(model))
        bound = self._bind(model)
        recs = [self._refresh(layer, conv) for layer, conv in bound]
        key = tuple(layer.key for layer, _ in bound)
        if key != self._plan_key:
            groups: Dict[tuple, list] = {}
            for i, ((layer, conv), rec) in enumerate(zip(bound, recs)):
                if rec.layout is not None:
                    groups.setdefault((conv.weight.device, conv.weight.dtype), []).append(
                        (i, rec.layout, layer.active))
            self._plans = [_PenaltyPlan(members, dtype)
                           for (_, dtype), members in groups.items()]
            self._plan_key = key
        # a weight sharded by FSDP2 enters whole (all-gathered, differentiable): the norms are
        # over whole slices and each rank's shard receives its rows of the gradient
        terms = [_ReweightedSliceNorm.apply(plan, self.eps,
                                            *(full_tensor(bound[i][1].weight)
                                              for i in plan.positions))
                 for plan in self._plans]
        if not terms:
            return torch.zeros((), device=model_device(model))
        total = terms[0] if len(terms) == 1 else torch.stack([t.to(terms[0].device)
                                                              for t in terms]).sum()
        return self.cfg.reg * total

    @torch.no_grad()
    def prune(self, model: nn.Module, epoch: int, log: Optional[UserLog] = None) -> None:
        """Epoch-end step: mask the lowest-L2 slices up to the scheduled fraction, then log.

        Runs at the schedule's epochs only (:class:`SliceSchedule`). Masks only grow; in
        ``Unprune`` mode nothing new is masked and only the sparsity is logged.
        """
        log = log if log is not None else self.log
        rate = self.schedule.rate_at(epoch)
        if not self.cfg.is_prune or rate is None:
            return
        reshard_model(model)  # masks must reach FSDP2's sharded parameters
        for layer, conv in self._bind(model, rebind=True):
            rec = self._refresh(layer, conv)
            if rec.layout is None:
                emit(f"Slice pruning skips '{layer.name}' at epoch {epoch}: {rec.reason}", log,
                     logger=logger)
                continue
            self._warn_partial(conv, rec, log)
            if self.enabled:
                self._prune_layer(conv, rec, rate)
        self.last_epoch = epoch
        for line in sparsity_lines(self.sparsity(), epoch):
            emit(line, log, logger=logger)

    def _warn_partial(self, conv: nn.Module, rec: LayerSlices, log: Optional[UserLog]) -> None:
        """Warn when channel masks re-shaped the blocks after slices were masked."""
        smask = self.masks.get(MASK_LAYER, conv, "weight")
        if smask is None or rec.layout is None:
            return
        kept = rec.layout.gather(smask)
        partial = int((kept.any(1) & ~kept.all(1) & ~rec.dead).sum())
        if partial:
            emit(f"Slice pruning: {partial} slices of '{rec.name}' are only partly masked "
                 "because channel masks changed its blocks after slice pruning began (those "
                 "zeros stay but save no hardware work); start slice pruning after channel "
                 "pruning reaches its target", log, logging.WARNING, logger)

    def _prune_layer(self, conv: nn.Module, rec: LayerSlices, rate: float) -> None:
        lay = rec.layout
        eligible = ~(rec.protected | rec.dead)
        target = math.floor(rate * int(eligible.sum()) + 1e-6)
        need = target - int((rec.pruned & eligible).sum())
        if need <= 0:
            return
        scores = lay.sq_norms(full_tensor(conv.weight.detach()).float())  # same on every rank
        scores = scores.masked_fill(~eligible | rec.pruned, math.inf)
        order = torch.sort(scores, stable=True).indices[:need]
        keep = torch.ones(lay.num_slices, dtype=torch.bool, device=scores.device)
        keep[order] = False
        self.masks.update(MASK_LAYER, conv, "weight", lay.scatter(keep, True))

    def _records(self) -> List[LayerSlices]:
        records = [self._refresh(layer, conv) for layer, conv in self._bind(self._model)]
        return records + [LayerSlices(name, (), 0, False, 0, reason=reason)
                          for name, reason in self.skipped.items()]

    def sparsity(self) -> Dict[str, Any]:
        """Per-layer and overall slice sparsity.

        Returns ``{"layers": {name: {"zero", "total", "eligible", "fraction", "block_size"}},
        "overall": {"zero", "total", "eligible", "fraction"}, "skipped": {name: reason}}``;
        ``fraction = zero / eligible`` (see :mod:`.sparsity` for the counting rules).
        """
        return slice_sparsity(self._records())

    def export(self, path: Union[str, "os.PathLike[str]"]) -> None:
        """Write every layer's slice layout and masks as JSON (format: :mod:`.sparsity`).

        Only rank 0 writes under ``torch.distributed``.
        """
        if is_rank_zero():
            export_slices(path, self._records(), disable_first_index=self.cfg.disable_first_index)

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> Dict[str, Any]:
        """The slice masks (``"<layer>.weight"`` -> bool tensor on CPU) and the last epoch."""
        names = {m: strip_module_prefix(n) for n, m in self._model.named_modules()}
        saved = {}
        for module, pname in self.masks.layer_keys(MASK_LAYER):
            if module in names:
                saved[f"{names[module]}.{pname}"] = self.masks.get(MASK_LAYER, module, pname).cpu()
        return {"version": _STATE_VERSION, "masks": saved, "last_epoch": self.last_epoch}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved (load the model's weights first).

        The slice masks are replaced by the saved ones and the weights are zeroed under them.
        """
        if not state:
            return
        modules = {strip_module_prefix(n): m for n, m in self._model.named_modules()}
        resolved = []
        for path, keep in state.get("masks", {}).items():
            mod_name, _, pname = path.rpartition(".")
            module = modules.get(mod_name)
            param = getattr(module, pname, None) if module is not None else None
            if not isinstance(param, torch.Tensor) or tuple(param.shape) != tuple(keep.shape):
                raise ValueError(
                    f"saved slice mask for '{path}' (shape {tuple(keep.shape)}) matches no "
                    "parameter of the model; load the pruned weights (load_state_dict_pruned) "
                    "before the pruner state")
            resolved.append((module, pname, keep))
        self.masks.clear(MASK_LAYER)
        for module, pname, keep in resolved:
            self.masks.update(MASK_LAYER, module, pname, keep)
        self.last_epoch = state.get("last_epoch")
