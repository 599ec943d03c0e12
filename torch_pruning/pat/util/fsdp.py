"""FSDP2 (``torch.distributed.fsdp.fully_shard``) support: sharded parameters seen whole.

``fully_shard`` keeps the user's modules (only their class becomes an ``FSDP<Name>``
subclass) and replaces each parameter with a DTensor sharded on dim 0: every rank holds a
contiguous block of output channels. The pruner's masks, regularizers and rankings are defined
on whole tensors, so this module gives them three views:

* :func:`local_part` / :func:`local_tensor` - per step, no communication: the rows of a whole
  tensor (a mask, a coefficient) that belong to this rank's shard, and the shard itself, so
  ``grad += c * w`` and ``w[~keep] = 0`` run on each rank's block and together equal the
  one-process update;
* :func:`full_tensor` / :func:`gathered_parameters` - at an epoch end (ranking) or every few
  steps (re-ranking): the whole tensors, all-gathered; every rank gets the same values, so every
  rank ranks the same way;
* :func:`unshard_model` - before a physical removal: every parameter gathered into a plain
  ``nn.Parameter`` and FSDP's hooks and state removed, so upstream's pruning functions see a
  plain model and the user can call ``fully_shard`` on the reduced model again.

Every function is a no-op on a model that is not sharded. Collective calls (:func:`full_tensor`,
:func:`gathered_parameters`, :func:`unshard_model`) must run on every rank in the same order,
which the pruner's hooks do (every rank calls them at the same point of the loop).

Example:
    >>> net = nn.Linear(4, 2)
    >>> is_sharded(net), local_part(torch.ones(2, 1), net.weight).shape
    (False, torch.Size([2, 1]))
"""

from __future__ import annotations

import contextlib
import importlib
import logging
from typing import Iterator, List, Tuple

import torch
from torch import nn

from .log import emit

__all__ = ["is_dtensor", "is_sharded", "local_tensor", "local_part", "full_tensor",
           "gathered_parameters", "reshard_model", "unshard_model"]

logger = logging.getLogger(__name__)

try:  # torch >= 2.4; FSDP2 (fully_shard) needs it
    from torch.distributed.tensor import DTensor
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset
except ImportError:  # pragma: no cover - torch built without distributed
    DTensor = None  # type: ignore[assignment,misc]
    compute_local_shape_and_global_offset = None  # type: ignore[assignment]

try:
    from torch.distributed.fsdp import FSDPModule
except ImportError:  # pragma: no cover
    FSDPModule = None  # type: ignore[assignment,misc]


def is_dtensor(tensor: object) -> bool:
    """True when ``tensor`` is a DTensor (e.g. a parameter or gradient sharded by FSDP2)."""
    return DTensor is not None and isinstance(tensor, DTensor)


def is_sharded(model: nn.Module) -> bool:
    """True when ``fully_shard`` was applied to ``model`` or one of its submodules.

    Example:
        >>> is_sharded(nn.Linear(2, 2))
        False
    """
    return FSDPModule is not None and any(isinstance(m, FSDPModule) for m in model.modules())


def local_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's block of a DTensor (a view: in-place edits change the DTensor), else itself.

    Example:
        >>> w = torch.zeros(3); local_tensor(w) is w
        True
    """
    return tensor._local_tensor if is_dtensor(tensor) else tensor


def local_part(whole: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The entries of ``whole`` that lie in this rank's shard of ``like``.

    ``whole`` has the global shape of ``like`` or broadcasts to it (size 1 along any dim);
    dims where it has size 1 are kept whole. When ``like`` is not a DTensor, ``whole`` is
    returned unchanged.

    Example:
        >>> keep = torch.ones(8, 3, dtype=torch.bool)
        >>> local_part(keep, torch.zeros(8, 3)) is keep
        True
    """
    if not is_dtensor(like):
        return whole
    shape, offset = compute_local_shape_and_global_offset(like.shape, like.device_mesh,
                                                          like.placements)
    out = whole
    for dim, (size, start) in enumerate(zip(shape, offset)):
        if dim < out.dim() and out.shape[dim] != 1 and size != out.shape[dim]:
            out = out.narrow(dim, start, size)
    return out


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The whole value of a DTensor, all-gathered (differentiable), else ``tensor`` itself.

    A collective call: every rank must call it for the same tensor.
    """
    return tensor.full_tensor() if is_dtensor(tensor) else tensor


def _fsdp_modules(model: nn.Module) -> List[nn.Module]:
    if FSDPModule is None:
        return []
    return [m for m in model.modules() if isinstance(m, FSDPModule)]


def reshard_model(model: nn.Module) -> None:
    """Make the sharded DTensors the registered parameters of every FSDP module.

    After a forward without backward (e.g. an evaluation pass), FSDP2 may leave the root's
    unsharded parameters registered; in-place edits (masks) must reach the sharded ones.
    """
    for module in _fsdp_modules(model):
        module.reshard()


def _dtensor_params(model: nn.Module) -> List[Tuple[nn.Module, str, torch.Tensor]]:
    return [(m, n, p) for m in model.modules() for n, p in m._parameters.items()
            if p is not None and is_dtensor(p)]


@contextlib.contextmanager
def gathered_parameters(model: nn.Module) -> Iterator[None]:
    """Inside the block every sharded parameter is registered whole (read-only use).

    For rankings at an epoch end: importance functions (upstream's among them) read
    ``module.weight`` as a plain tensor. The whole tensors are copies: edits inside the block
    are lost, so masks are applied after it. Extra memory: the whole model's parameters on
    every rank for the duration of the block. A no-op when nothing is sharded. Must not run
    the model (FSDP's hooks would re-register the shards). A collective call.

    Example:
        >>> with gathered_parameters(model):  # doctest: +SKIP
        ...     scores = importance(group)
    """
    reshard_model(model)
    swapped = _dtensor_params(model)
    if not swapped:
        yield
        return
    with torch.no_grad():
        for module, name, param in swapped:
            module._parameters[name] = nn.Parameter(param.full_tensor(),
                                                    requires_grad=param.requires_grad)
    try:
        yield
    finally:
        for module, name, param in swapped:
            module._parameters[name] = param


def _forget_fsdp(module: nn.Module) -> None:
    """Remove FSDP2's hooks, state and class from one module (parameters already plain)."""
    # private torch modules (FSDP2 offers no public way to undo fully_shard); the module
    # ``contract`` is shadowed by the function of that name in its package
    _contract = importlib.import_module("torch.distributed._composable.contract")
    _composable_state = importlib.import_module("torch.distributed._composable_state")

    state = module.__dict__.get(_contract.STATE_KEY, {})
    for key, value in list(state.items()):
        if type(value).__name__ == "FSDPState":
            for handle in {id(h): h for h in (getattr(value, "_pre_forward_hook_handle", None),
                                              getattr(value, "_post_forward_hook_handle", None))
                           if h is not None}.values():
                handle.remove()
            del state[key]
    registry = module.__dict__.get(_contract.REGISTRY_KEY, {})
    registry.pop("fully_shard", None)
    _composable_state._module_state_mapping.pop(module, None)
    for attr in ("_is_fsdp_managed_module", "_fsdp_use_orig_params"):
        module.__dict__.pop(attr, None)
    cls = type(module)
    if FSDPModule is not None and issubclass(cls, FSDPModule):
        module.__class__ = cls.__mro__[cls._orig_cls_mro_index]


@torch.no_grad()
def unshard_model(model: nn.Module) -> bool:
    """Gather every sharded parameter into a plain ``nn.Parameter`` and undo ``fully_shard``.

    Afterwards every rank holds the same whole, ordinary model (its original classes, no FSDP
    hooks), which upstream's pruning functions can reduce and which the user shards again with
    ``fully_shard`` before re-creating the optimizer. Gradients are dropped. Peak memory: the
    whole model (parameters only) on every rank, plus one gathered parameter in flight.
    Returns True when the model was sharded. A collective call.

    Example:
        >>> model = build(); fully_shard(model)  # doctest: +SKIP
        >>> unshard_model(model); type(model) is Net  # doctest: +SKIP
        True
    """
    if not _fsdp_modules(model) and not _dtensor_params(model):
        return False
    reshard_model(model)
    for module, name, param in _dtensor_params(model):
        module._parameters[name] = nn.Parameter(param.full_tensor().detach().clone(),
                                                requires_grad=param.requires_grad)
    for module in model.modules():
        _forget_fsdp(module)
    emit("gathered the sharded parameters and removed fully_shard from the model",
         level=logging.DEBUG, logger=logger)
    return True
