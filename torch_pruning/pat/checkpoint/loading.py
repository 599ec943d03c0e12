"""Load a pruned model's checkpoint into a fresh instance of the unpruned architecture.

A physically pruned model has smaller tensors than the network its training script builds, so
``model.load_state_dict(weights)`` fails with size mismatches. :func:`load_state_dict_pruned`
resizes every module whose tensors differ from the checkpoint (using the per-layer rules of
:mod:`torch_pruning.pat.checkpoint.rebuild`), updates the modules' size attributes and then
loads the weights, so the model computes exactly what the saved pruned model computed.

It validates everything before it changes anything: a checkpoint of another model, or a layer
that cannot be rebuilt, raises :class:`CheckpointError` and leaves the model as it was.

Example (the snippet training scripts use)::

    try:
        model.load_state_dict(weights)
    except Exception:
        model, missing_keys, unexpected_keys = torch_pruning.load_state_dict_pruned(model, weights)
"""

from __future__ import annotations

import logging
import os
import pickle
from collections import OrderedDict
from typing import Any, BinaryIO, Dict, List, Mapping, Tuple, Union

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase
from torch.nn.parameter import is_lazy

from ..core.heads import head_count_plans
from ..util.log import emit
from ..core.hf import sync_hf_config
from ..util.model import unwrap_model
from .rebuild import RebuildPlan, Shape, UnrebuildableError, apply_plans, find_rule, module_shapes

__all__ = ["CheckpointError", "load_state_dict_pruned"]

logger = logging.getLogger(__name__)

#: A state_dict, a wrapped checkpoint (``{"model": sd, "epoch": 3}``), a path or an open file.
CheckpointSource = Union[Mapping[str, Any], str, "os.PathLike[str]", BinaryIO]

_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module")
_PREFIXES = ("module.", "_orig_mod.")  # DDP / DataParallel, torch.compile
_SHOWN = 5  # keys listed in an error message


class CheckpointError(RuntimeError):
    """A checkpoint cannot be loaded into the model; the message says which keys or layer.

    Example:
        >>> try:
        ...     load_state_dict_pruned(nn.Linear(2, 2), {"other.weight": torch.ones(1)})
        ... except CheckpointError as err:
        ...     print("does not look like a version of this Linear" in str(err))
        True
    """


def load_state_dict_pruned(
    model: nn.Module,
    state_dict: CheckpointSource,
    strict: bool = True,
    map_location: Any = "cpu",
) -> Tuple[nn.Module, List[str], List[str]]:
    """Resize ``model``'s layers to the checkpoint's shapes, then load the checkpoint.

    Args:
        model: the network as the training script builds it (unpruned, or pruned differently);
            a DDP/DataParallel wrapper is unwrapped. It is changed in place and returned.
        state_dict: a state_dict; a checkpoint wrapping one under ``"model"``, ``"state_dict"``
            or ``"model_state_dict"`` (other entries such as ``"optimizer"`` or ``"epoch"`` are
            ignored); the output of upstream's ``tp.state_dict(model)``; or a file path / open
            file, read with ``torch.load(..., weights_only=True)``. Keys prefixed with
            ``module.`` (DDP) or ``_orig_mod.`` (torch.compile) are matched without the prefix.
        strict: as in :meth:`torch.nn.Module.load_state_dict`; with ``strict=True`` a key
            mismatch raises before the model is touched.
        map_location: where ``torch.load`` puts tensors read from a file. Loaded values always
            end up on the device and dtype of the model's own tensors.

    Returns:
        ``(model, missing_keys, unexpected_keys)``, like the seed's function.

    Raises:
        CheckpointError: the checkpoint cannot be read, is not a version of this model, its
            keys differ under ``strict=True``, or a layer cannot be rebuilt (the message names
            the layer, its type and both shapes). The model is unchanged in every case.

    Example:
        >>> import torch_pruning as tp
        >>> pruned = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Conv2d(8, 4, 1))
        >>> _ = tp.prune_conv_out_channels(pruned[0], [0, 1])
        >>> _ = tp.prune_batchnorm_out_channels(pruned[1], [0, 1])
        >>> _ = tp.prune_conv_in_channels(pruned[2], [0, 1])
        >>> fresh = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Conv2d(8, 4, 1))
        >>> fresh, missing, unexpected = load_state_dict_pruned(fresh, pruned.state_dict())
        >>> fresh[0].out_channels, fresh[1].num_features, missing, unexpected
        (6, 6, [], [])
    """
    target = unwrap_model(model)
    state, hints = _read_checkpoint(state_dict, map_location)
    model_state = target.state_dict()
    state = _strip_prefixes(state, model_state)
    _check_keys(target, state, model_state, strict)
    plans = _plan_all(target, state, model_state, hints)
    undo, changes = apply_plans(plans)
    try:
        result = target.load_state_dict(state, strict=strict)
    except Exception as exc:
        undo()
        raise CheckpointError(f"loading the checkpoint into the rebuilt model failed, so the "
                              f"model's layers were restored: {exc}") from exc
    if changes and sync_hf_config(target) is not None:  # an HF decoder: config follows too
        changes.append(f"config ({', '.join(f'{k}={v}' for k, v in target.config.pat_layers.items())})")
    if changes:  # emit: under torch.distributed only rank 0 logs
        emit(f"load_state_dict_pruned: rebuilt {len(changes)} module(s) to the checkpoint's "
             f"shapes: {'; '.join(changes[:10])}{' ...' if len(changes) > 10 else ''}",
             logger=logger)
    else:
        emit("load_state_dict_pruned: every shape already matched the checkpoint",
             level=logging.DEBUG, logger=logger)
    return model, list(result.missing_keys), list(result.unexpected_keys)


# --------------------------------------------------------------------------- reading
def _read_checkpoint(source: CheckpointSource, map_location: Any
                     ) -> Tuple[Mapping[str, Any], Dict[str, Dict[str, Any]]]:
    """Return the flat state_dict inside ``source`` and per-module attribute hints."""
    where = ""  # names the file in errors about its content
    if isinstance(source, (str, os.PathLike)) or hasattr(source, "read"):
        name = os.fspath(source) if isinstance(source, (str, os.PathLike)) else "<file object>"
        try:
            source = torch.load(source, map_location=map_location, weights_only=True)
        except FileNotFoundError:
            raise CheckpointError(f"checkpoint file not found: {name}") from None
        except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
            raise CheckpointError(
                f"cannot read checkpoint {name} with torch.load(weights_only=True) (this library "
                f"never unpickles arbitrary objects; if you trust the file, load it yourself and "
                f"pass the result): {exc}") from exc
        except Exception as exc:  # truncated or random bytes fail in many ways (OSError, ...)
            raise CheckpointError(f"cannot read checkpoint {name}: the file is damaged or not a "
                                  f"PyTorch checkpoint ({type(exc).__name__}: {exc})") from exc
        where = f" in checkpoint {name}"
    obj: Any = source
    for _ in range(4):  # wrappers may nest, e.g. {"model": {"state_dict": ...}}
        if isinstance(obj, nn.Module):
            obj = obj.state_dict()
        if not isinstance(obj, Mapping):
            raise CheckpointError(f"expected a state_dict (a mapping of names to tensors)"
                                  f"{where}, got {type(obj).__name__}")
        if "full_state_dict" in obj and "attributions" in obj:
            return _from_upstream_format(obj)
        inner = next((obj[k] for k in _WRAPPER_KEYS
                      if k in obj and isinstance(obj[k], (Mapping, nn.Module))), None)
        if inner is None:
            break
        obj = inner
    if not any(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"no state_dict found{where or ' in the checkpoint'}: its "
                              f"top-level keys are "
                              f"{_few(list(obj))}; expected tensors, or a state_dict under one of "
                              f"{', '.join(map(repr, _WRAPPER_KEYS))}")
    return obj, {}


def _from_upstream_format(obj: Mapping[str, Any]
                          ) -> Tuple[Mapping[str, Any], Dict[str, Dict[str, Any]]]:
    """Flatten upstream's ``tp.state_dict(model)``; its saved attributes become hints."""
    state: Dict[str, Any] = OrderedDict()
    for path, attrs in obj["full_state_dict"].items():
        skip = attrs.get("_non_persistent_buffers_set", set())
        tensors = list((attrs.get("_parameters") or {}).items())
        tensors += [(k, v) for k, v in (attrs.get("_buffers") or {}).items() if k not in skip]
        for name, tensor in tensors:
            if tensor is not None:
                state[_join(path, name)] = tensor.detach()
    return state, {path: dict(attrs) for path, attrs in obj["attributions"].items()}


def _strip_prefixes(state: Mapping[str, Any], model_state: Mapping[str, Any]) -> Mapping[str, Any]:
    """Drop ``module.``/``_orig_mod.`` from keys when the model's own keys lack the prefix."""
    out: Dict[str, Any] = OrderedDict(state.items())
    metadata = getattr(state, "_metadata", None)
    for prefix in _PREFIXES:
        if any(k.startswith(prefix) for k in model_state):
            continue
        while any(k.startswith(prefix) for k in out):
            out = OrderedDict((k[len(prefix):] if k.startswith(prefix) else k, v)
                              for k, v in out.items())
            if metadata is not None:
                metadata = OrderedDict(
                    ("" if k == prefix[:-1] else k[len(prefix):] if k.startswith(prefix) else k, v)
                    for k, v in metadata.items())
    if metadata is not None:
        out._metadata = metadata  # type: ignore[attr-defined]  # module versions, as torch keeps
    return out


# --------------------------------------------------------------------------- validation
def _check_keys(model: nn.Module, state: Mapping[str, Any], model_state: Mapping[str, Any],
                strict: bool) -> None:
    """Refuse a checkpoint of another model, and any key mismatch under ``strict``."""
    matched = [k for k in state if k in model_state]
    unexpected = [k for k in state if k not in model_state]
    missing = [k for k in model_state if k not in state and not _filled_by_torch(model, state, k)]
    if not matched or (len(matched) < len(state) / 2 and len(matched) < len(model_state) / 2):
        raise CheckpointError(
            f"the checkpoint does not look like a version of this {type(model).__name__}: only "
            f"{len(matched)} of its {len(state)} keys name a tensor of the model. Checkpoint "
            f"keys the model lacks: {_few(unexpected)}. Model keys the checkpoint lacks: "
            f"{_few(missing)}")
    if strict and (missing or unexpected):
        raise CheckpointError(
            f"the checkpoint's keys differ from the model's (strict=True). Missing from the "
            f"checkpoint: {_few(missing) or 'none'}. Unexpected in the checkpoint: "
            f"{_few(unexpected) or 'none'}. Pass strict=False to load the keys that match.")


def _filled_by_torch(model: nn.Module, state: Mapping[str, Any], key: str) -> bool:
    """BatchNorm fills in ``num_batches_tracked`` for checkpoints saved before it existed."""
    path, _, name = key.rpartition(".")
    if name != "num_batches_tracked":
        return False
    try:
        if not isinstance(model.get_submodule(path), _NormBase):
            return False
    except AttributeError:
        return False
    version = (getattr(state, "_metadata", None) or {}).get(path, {}).get("version")
    return version is None or version < 2


def _plan_all(model: nn.Module, state: Mapping[str, Any], model_state: Mapping[str, Any],
              hints: Mapping[str, Mapping[str, Any]]) -> List[Tuple[str, nn.Module, RebuildPlan]]:
    """A plan for every module whose tensors differ from the checkpoint; nothing is changed."""
    differing: Dict[str, List[str]] = {}
    for key, value in state.items():
        current = model_state.get(key)
        if not isinstance(value, torch.Tensor) or not isinstance(current, torch.Tensor):
            continue
        if not is_lazy(current) and tuple(value.shape) != tuple(current.shape):
            path, _, name = key.rpartition(".")
            differing.setdefault(path, []).append(name)
    modules = dict(model.named_modules(remove_duplicate=False))
    plans: List[Tuple[str, nn.Module, RebuildPlan]] = []
    planned = set()
    for path, names in differing.items():
        module = modules.get(path)
        if module is None:
            raise CheckpointError(f"cannot rebuild {_few([_join(path, n) for n in names])}: "
                                  f"the model has no module {path!r} owning these keys")
        if id(module) in planned:  # the same module reached through two paths
            continue
        planned.add(id(module))
        plans.append((path, module, _plan_one(path, module, names, state, hints.get(path, {}))))
    return plans + _head_count_plans(modules, plans)


def _head_count_plans(modules: Mapping[str, nn.Module],
                      plans: List[Tuple[str, nn.Module, RebuildPlan]]
                      ) -> List[Tuple[str, nn.Module, RebuildPlan]]:
    """Head counts of attention modules whose heads were pruned (merged into their plans)."""
    features = {path: (plan.attrs.get("in_features", module.in_features),
                       plan.attrs.get("out_features", module.out_features))
                for path, module, plan in plans if isinstance(module, nn.Linear)}
    if not features:
        return []
    planned = {path: plan for path, _, plan in plans}
    extra = []
    for path, attrs in head_count_plans(modules, features).items():
        if path in planned:
            planned[path].attrs.update(attrs)
        else:
            extra.append((path, modules[path], RebuildPlan({}, attrs)))
    return extra


def _plan_one(path: str, module: nn.Module, names: List[str], state: Mapping[str, Any],
              hints: Mapping[str, Any]) -> RebuildPlan:
    own = module_shapes(module)
    found = {name: tuple(state[_join(path, name)].shape) for name in own
             if isinstance(state.get(_join(path, name)), torch.Tensor)}

    def error(reason: str) -> CheckpointError:
        kind = f"{type(module).__module__}.{type(module).__qualname__}"
        return CheckpointError(f"cannot rebuild {path or '<root>'!r} ({kind}): {reason}. "
                               f"Model has {_shapes(own)}; checkpoint has {_shapes(found)}")

    strays = [name for name in names if name not in own]
    if strays:
        raise error(f"{', '.join(strays)} is not a parameter or buffer it owns")
    ranks = [name for name, shape in found.items() if len(shape) != len(own[name])]
    if ranks:
        raise error(f"the number of dimensions of {', '.join(ranks)} differs")
    rule = find_rule(module)
    if rule is None:
        raise error("there is no rebuild rule for this layer type (register one with "
                    "torch_pruning.pat.register_rebuild_rule)")
    try:
        plan = rule(module, found, hints)
    except UnrebuildableError as exc:
        raise error(str(exc)) from None
    foreign = [name for name in plan.shapes if name not in own]
    if foreign:
        raise error(f"its rebuild rule resizes {', '.join(foreign)}, which it does not own")
    conflicts = [name for name, shape in found.items()
                 if tuple(plan.shapes.get(name, own[name])) != shape]
    if conflicts:
        expected = ", ".join(f"{n} {tuple(plan.shapes.get(n, own[n]))}" for n in conflicts)
        raise error(f"its tensors do not fit together (expected {expected})")
    return plan


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _few(keys: List[str]) -> str:
    shown = ", ".join(repr(k) for k in keys[:_SHOWN])
    return shown + (f" and {len(keys) - _SHOWN} more" if len(keys) > _SHOWN else "")


def _shapes(shapes: Mapping[str, Shape]) -> str:
    return ", ".join(f"{n} {tuple(s)}" for n, s in shapes.items()) or "no tensors"
