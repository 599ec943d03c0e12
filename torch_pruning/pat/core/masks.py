"""Masks as state: the single source of truth for which weight entries are pruned.

A :class:`MaskSet` holds boolean *keep* masks per ``(module, parameter name)`` in named
layers (``"channel"`` for the channel pruner, ``"slice"`` for the slice pruner). The mask a
parameter obeys is the AND of its layers. Masks only grow (an entry once pruned stays pruned)
and weights follow them:

* :meth:`MaskSet.update` zeroes the newly masked entries at once;
* a global ``torch.optim`` step post-hook re-zeroes every masked entry after *every* optimizer
  step, so momentum, Adam moments and weight decay can never revive a masked weight;
* after a physical removal :meth:`MaskSet.reindex` shrinks every mask to the new shapes.

Masks always have the parameter's whole (global) shape. On a parameter sharded by FSDP2 (a
DTensor) each rank zeroes the rows of its own shard (:func:`~..util.fsdp.local_part`), so the
masks hold through optimizer steps on sharded parameters without communication.

Masks are keyed by module and attribute name (not by ``Parameter`` object), so they survive
``model.to(device)`` and upstream's pruning functions replacing parameters.
"""

from __future__ import annotations

import logging
import weakref
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from ..util.fsdp import local_part, local_tensor

__all__ = ["MaskSet", "after_every_step", "strip_module_prefix"]

logger = logging.getLogger(__name__)

_Key = Tuple[nn.Module, str]


def strip_module_prefix(name: str) -> str:
    """Drop the ``module.`` prefixes DDP/DataParallel add to names.

    Example:
        >>> strip_module_prefix("module.layer1.0.conv1")
        'layer1.0.conv1'
    """
    while name.startswith("module."):
        name = name[len("module."):]
    return name


def after_every_step(owner: Any, call: Callable[[Any, torch.optim.Optimizer], None]) -> Any:
    """Run ``call(owner, optimizer)`` after every ``torch.optim`` step of any optimizer, for as
    long as ``owner`` lives: the global step post-hook holds only a weak reference to it and is
    removed when ``owner`` is collected.

    Returns the hook's handle (to stop earlier).

    Example:
        >>> class Counter:
        ...     steps = 0
        >>> counter = Counter()
        >>> handle = after_every_step(counter, lambda c, opt: setattr(c, "steps", c.steps + 1))
        >>> lin = nn.Linear(1, 1); opt = torch.optim.SGD(lin.parameters(), lr=0.1)
        >>> lin(torch.ones(1, 1)).sum().backward(); opt.step(); handle.remove()
        >>> counter.steps
        1
    """
    ref = weakref.ref(owner)

    def _after_step(optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        target = ref()
        if target is not None:
            call(target, optimizer)

    handle = register_optimizer_step_post_hook(_after_step)
    weakref.finalize(owner, handle.remove)
    return handle


class MaskSet:
    """Keep-masks for parameters, kept exact through optimizer steps.

    Example:
        >>> conv = nn.Conv2d(3, 4, 3)
        >>> masks = MaskSet()
        >>> keep = torch.ones_like(conv.weight, dtype=torch.bool); keep[0] = False
        >>> masks.update("channel", conv, "weight", keep)
        >>> bool(conv.weight[0].abs().sum() == 0)
        True
    """

    def __init__(self) -> None:
        self._layers: Dict[str, Dict[_Key, torch.Tensor]] = {}
        self._effective: Dict[_Key, torch.Tensor] = {}
        #: Incremented whenever any mask or shape changes; lets users cache derived layouts.
        self.version = 0
        #: After :meth:`reindex`: for each re-shaped ``(module, name)``, the kept indices per dim.
        self.last_reindex: Dict[_Key, List[torch.Tensor]] = {}
        after_every_step(self, lambda masks, optimizer: masks.apply())

    # ------------------------------------------------------------------ queries
    def __len__(self) -> int:
        return len(self._effective)

    def keys(self) -> Iterator[_Key]:
        """Every ``(module, name)`` that has a mask in any layer."""
        return iter(list(self._effective))

    def get(self, layer: str, module: nn.Module, name: str) -> Optional[torch.Tensor]:
        """The keep-mask of one layer for ``module.<name>``, or None."""
        return self._layers.get(layer, {}).get((module, name))

    def effective(self, module: nn.Module, name: str) -> Optional[torch.Tensor]:
        """The AND of all layers' keep-masks for ``module.<name>``, or None."""
        return self._effective.get((module, name))

    def layer_keys(self, layer: str) -> List[_Key]:
        """The ``(module, name)`` pairs masked in ``layer``."""
        return list(self._layers.get(layer, {}))

    # ------------------------------------------------------------------ updates
    def update(self, layer: str, module: nn.Module, name: str, keep: torch.Tensor) -> None:
        """AND ``keep`` into the mask of ``module.<name>`` in ``layer`` and zero the weights.

        ``keep`` must be boolean and broadcastable to the parameter's shape. Entries already
        masked stay masked: masks only grow.
        """
        param = getattr(module, name)
        keep = keep.to(device=param.device, dtype=torch.bool).expand(param.shape).clone()
        masks = self._layers.setdefault(layer, {})
        old = masks.get((module, name))
        masks[(module, name)] = keep if old is None else (old.to(param.device) & keep)
        self._refresh((module, name))
        self._apply_one((module, name))

    def clear(self, layer: Optional[str] = None) -> None:
        """Forget the masks of ``layer`` (all layers when None). Weights are not changed."""
        if layer is None:
            self._layers.clear()
        else:
            self._layers.pop(layer, None)
        self._effective.clear()
        self.version += 1
        for masks in self._layers.values():
            for key in masks:
                self._refresh(key)

    def _refresh(self, key: _Key) -> None:
        self.version += 1
        found = [m[key] for m in self._layers.values() if key in m]
        if not found:
            self._effective.pop(key, None)
            return
        eff = found[0]
        for other in found[1:]:
            eff = eff & other.to(eff.device)
        self._effective[key] = eff

    # ------------------------------------------------------------------ enforcement
    def _apply_one(self, key: _Key, strict: bool = True) -> None:
        module, name = key
        param = getattr(module, name, None)
        if param is None:
            return
        keep = self._effective[key]
        if keep.device != param.device:
            keep = keep.to(param.device)
            self._effective[key] = keep
        if keep.shape != param.shape:
            msg = (f"mask of {type(module).__name__}.{name} has shape {tuple(keep.shape)} but the "
                   f"parameter has {tuple(param.shape)}: the model was reshaped outside the "
                   "pruner (e.g. by load_state_dict_pruned after Pruning(...) was built)")
            if strict:
                raise RuntimeError(msg + "; build Pruning after loading the checkpoint")
            # after an optimizer step (any optimizer in the process): never break the user's
            # step; the stale mask no longer describes this parameter, so it is dropped
            logger.warning("%s; the stale mask is dropped. Build Pruning after loading the "
                           "checkpoint.", msg)
            for masks in self._layers.values():
                masks.pop(key, None)
            self._effective.pop(key, None)
            self.version += 1
            return
        with torch.no_grad():
            local_tensor(param).masked_fill_(~local_part(keep, param), 0)

    @torch.no_grad()
    def apply(self) -> None:
        """Zero every masked entry (run automatically after each optimizer step).

        A mask whose parameter changed shape behind the pruner's back is dropped with a
        warning instead of failing the optimizer step.
        """
        for key in list(self._effective):
            self._apply_one(key, strict=False)

    @torch.no_grad()
    def zero_masked_grads(self) -> None:
        """Zero the gradients of masked entries (keeps optimizer statistics clean)."""
        for (module, name), keep in self._effective.items():
            param = getattr(module, name, None)
            if param is not None and param.grad is not None and param.grad.shape == keep.shape:
                local_tensor(param.grad).masked_fill_(
                    ~local_part(keep.to(param.grad.device), param.grad), 0)

    # ------------------------------------------------------------------ physical removal
    def reindex(self, channel_layer: str = "channel") -> None:
        """Shrink all masks after masked channels were physically removed.

        For every parameter whose shape changed, the indices kept along each shrunk dimension
        are those not fully masked in ``channel_layer``; every layer's mask is cut the same
        way, then ``channel_layer`` is dropped (its channels no longer exist).
        """
        chan = self._layers.get(channel_layer, {})
        self.last_reindex = {}
        for key in list(self._effective):
            module, name = key
            param = getattr(module, name, None)
            if param is None:
                continue
            old_shape = self._effective[key].shape
            if tuple(old_shape) == tuple(param.shape):
                continue
            cmask = chan.get(key)
            if cmask is None:
                raise RuntimeError(
                    f"{type(module).__name__}.{name} changed shape {tuple(old_shape)} -> "
                    f"{tuple(param.shape)} but has no '{channel_layer}' mask to re-index by")
            index = []
            for dim, (old, new) in enumerate(zip(old_shape, param.shape)):
                if old == new:
                    index.append(torch.arange(old, device=cmask.device))
                    continue
                others = [d for d in range(cmask.dim()) if d != dim]
                kept = cmask.any(dim=others).nonzero().flatten() if others else cmask.nonzero().flatten()
                if kept.numel() != new:
                    raise RuntimeError(
                        f"cannot re-index the mask of {type(module).__name__}.{name}: dim {dim} "
                        f"has {kept.numel()} unmasked entries but the parameter now has {new}")
                index.append(kept)
            self.last_reindex[key] = index
            for masks in self._layers.values():
                if key in masks:
                    m = masks[key]
                    for dim, idx in enumerate(index):
                        m = m.index_select(dim, idx.to(m.device))
                    masks[key] = m
        self._layers.pop(channel_layer, None)
        self._effective.clear()
        self.version += 1
        for masks in self._layers.values():
            for key in list(masks):
                if masks[key].all():
                    del masks[key]
                else:
                    self._refresh(key)

    # ------------------------------------------------------------------ persistence
    def state_dict(self, model: nn.Module) -> Dict[str, Dict[str, torch.Tensor]]:
        """Masks by layer and ``"<module path>.<param>"`` (``module.`` prefixes dropped)."""
        names = {m: strip_module_prefix(n) for n, m in model.named_modules()}
        out: Dict[str, Dict[str, torch.Tensor]] = {}
        for layer, masks in self._layers.items():
            out[layer] = {f"{names[mod]}.{name}".lstrip("."): keep.cpu().clone()
                          for (mod, name), keep in masks.items() if mod in names}
        return out

    def load_state_dict(self, model: nn.Module, state: Dict[str, Dict[str, torch.Tensor]]) -> None:
        """Restore masks saved by :meth:`state_dict` onto ``model`` and zero the weights."""
        modules = {strip_module_prefix(n): m for n, m in model.named_modules()}
        self.clear()
        for layer, masks in state.items():
            for path, keep in masks.items():
                mod_name, _, name = path.rpartition(".")
                module = modules.get(mod_name)
                if module is None or not isinstance(getattr(module, name, None), torch.Tensor):
                    raise ValueError(f"saved mask for '{path}' matches no parameter of the "
                                     "model; was the checkpoint saved from another model?")
                self.update(layer, module, name, keep)
