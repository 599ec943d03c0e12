"""Per-layer rules that resize a module to the tensor shapes found in a checkpoint.

A *rule* looks at one module and the shapes the checkpoint holds for that module's own
parameters and buffers (its children have their own rules) and answers with a
:class:`RebuildPlan`: the new shape of every tensor the module owns and the new values of its
size attributes (``in_channels``, ``num_features``, ...). Rules only compute; they never touch
the module, so :func:`torch_pruning.pat.checkpoint.loading.load_state_dict_pruned` can validate every
module of a model before it changes any of them.

A rule raises :class:`UnrebuildableError` with the reason when the shapes cannot belong to that
kind of module (a different kernel size, a channel count that cannot be split into the groups,
...). Where shapes leave a choice open (the number of groups of a grouped convolution, the
``num_groups`` of a GroupNorm, the ``num_heads`` of an attention layer) the rules follow
upstream Torch-Pruning, which keeps those counts while pruning, unless ``hints`` (the
attributes saved by upstream's ``tp.state_dict``) say otherwise.

Modules of torch.nn without a rule (e.g. ``nn.LSTM``) cannot be rebuilt. Modules defined
elsewhere (torchvision's ``Encoder`` with its ``pos_embedding``, a user's block with a
``layer_scale`` parameter) take the checkpoint's shapes for their plain parameters.
Register a rule for a custom layer with :func:`register_rebuild_rule`.

:func:`apply_plans` then carries the plans out (new tensors on the same device and dtype, size
attributes set) and returns an undo function.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Type, Union

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase
from torch.nn.modules.conv import _ConvNd

__all__ = [
    "Shape",
    "RebuildPlan",
    "RebuildRule",
    "UnrebuildableError",
    "register_rebuild_rule",
    "find_rule",
    "module_shapes",
    "apply_plans",
]

logger = logging.getLogger(__name__)

Shape = Tuple[int, ...]
#: ``rule(module, found_shapes, hints) -> RebuildPlan``
RebuildRule = Callable[[nn.Module, Mapping[str, Shape], Mapping[str, Any]], "RebuildPlan"]


class UnrebuildableError(ValueError):
    """Raised by a rule when the checkpoint's shapes cannot belong to the module."""


@dataclass
class RebuildPlan:
    """What a module must become: new tensor shapes and new size attributes.

    Example:
        >>> RebuildPlan({"weight": (8, 3), "bias": (8,)}, {"out_features": 8})
        RebuildPlan(shapes={'weight': (8, 3), 'bias': (8,)}, attrs={'out_features': 8})
    """

    shapes: Dict[str, Shape]
    attrs: Dict[str, Any] = field(default_factory=dict)


def module_shapes(module: nn.Module) -> Dict[str, Shape]:
    """Shapes of the tensors a module owns directly and saves in its state_dict.

    Example:
        >>> module_shapes(nn.Linear(3, 2))
        {'weight': (2, 3), 'bias': (2,)}
    """
    shapes = {name: tuple(p.shape) for name, p in module._parameters.items() if p is not None}
    skip = module._non_persistent_buffers_set
    shapes.update((name, tuple(b.shape)) for name, b in module._buffers.items()
                  if b is not None and name not in skip)
    return shapes


def _shape(module: nn.Module, found: Mapping[str, Shape], name: str) -> Shape:
    """The checkpoint's shape of ``name`` if it has one, else the module's current shape."""
    if name in found:
        return tuple(found[name])
    return tuple(getattr(module, name).shape)


def _first_found(module: nn.Module, found: Mapping[str, Shape], names: Tuple[str, ...]) -> Shape:
    for name in names:
        if name in found:
            return tuple(found[name])
    for name in names:
        if getattr(module, name, None) is not None:
            return tuple(getattr(module, name).shape)
    raise UnrebuildableError(f"it has none of {', '.join(names)}")


def _same_shape_for(module: nn.Module, names: Tuple[str, ...], shape: Shape) -> Dict[str, Shape]:
    """Give ``shape`` to every tensor of ``names`` the module has (skipping ``None`` ones)."""
    return {name: shape for name in names if getattr(module, name, None) is not None}


# --------------------------------------------------------------------------- rules
def _conv_rule(m: _ConvNd, found: Mapping[str, Shape], hints: Mapping[str, Any]) -> RebuildPlan:
    """Conv1d/2d/3d and ConvTranspose1d/2d/3d, grouped and depthwise.

    The weight is ``(out, in/groups, *k)`` (``(in, out/groups, *k)`` when transposed). A
    depthwise conv stays depthwise (groups follows the channels, as upstream's pruner does);
    any other grouped conv keeps its number of groups (upstream prunes inside each group).
    """
    weight = _shape(m, found, "weight")
    if weight[2:] != tuple(m.weight.shape[2:]):
        raise UnrebuildableError(f"the kernel size differs ({weight[2:]} instead of "
                                 f"{tuple(m.weight.shape[2:])}); pruning never changes it")
    first, per_group = weight[0], weight[1]
    groups = hints.get("groups")
    if groups is None:
        if m.groups == 1:
            groups = 1
        elif m.groups == m.in_channels:  # depthwise (possibly with a channel multiplier)
            if m.transposed:
                groups = first
            else:
                multiplier = m.out_channels // m.in_channels
                if per_group != 1 or first % multiplier:
                    raise UnrebuildableError(
                        f"a depthwise conv with channel multiplier {multiplier} needs a weight "
                        f"of shape (k*{multiplier}, 1, ...)")
                groups = first // multiplier
        else:
            groups = m.groups
    if groups < 1 or first % groups:
        raise UnrebuildableError(f"{first} channels cannot be split into groups={groups}")
    if m.transposed:
        in_channels, out_channels = first, per_group * groups
    else:
        in_channels, out_channels = per_group * groups, first
    shapes: Dict[str, Shape] = {"weight": weight}
    shapes.update(_same_shape_for(m, ("bias",), (out_channels,)))
    return RebuildPlan(shapes, {"in_channels": in_channels, "out_channels": out_channels,
                                "groups": groups})


def _linear_rule(m: nn.Linear, found: Mapping[str, Shape], hints: Mapping[str, Any]) -> RebuildPlan:
    """Linear (and NonDynamicallyQuantizableLinear): weight ``(out, in)``, bias ``(out,)``."""
    weight = _shape(m, found, "weight")
    if len(weight) != 2:
        raise UnrebuildableError("a Linear weight has two dimensions")
    shapes: Dict[str, Shape] = {"weight": weight}
    shapes.update(_same_shape_for(m, ("bias",), (weight[0],)))
    return RebuildPlan(shapes, {"out_features": weight[0], "in_features": weight[1]})


_NORM_TENSORS = ("weight", "bias", "running_mean", "running_var")


def _norm_rule(m: _NormBase, found: Mapping[str, Shape], hints: Mapping[str, Any]) -> RebuildPlan:
    """BatchNorm1d/2d/3d, SyncBatchNorm and InstanceNorm1d/2d/3d: every tensor is ``(C,)``."""
    shape = _first_found(m, found, _NORM_TENSORS)
    if len(shape) != 1:
        raise UnrebuildableError("its affine parameters and running statistics are 1-D")
    return RebuildPlan(_same_shape_for(m, _NORM_TENSORS, shape), {"num_features": shape[0]})


def _largest_divisor_at_most(n: int, limit: int) -> int:
    return max(d for d in range(1, max(1, min(n, limit)) + 1) if n % d == 0)


def _group_norm_rule(m: nn.GroupNorm, found: Mapping[str, Shape],
                     hints: Mapping[str, Any]) -> RebuildPlan:
    """GroupNorm: ``num_channels`` follows the checkpoint; ``num_groups`` is kept if it divides
    the new channel count (upstream prunes evenly inside the groups), else the largest
    divisor below it is used and a warning is logged."""
    shape = _first_found(m, found, ("weight", "bias"))
    channels = shape[0]
    num_groups = hints.get("num_groups", m.num_groups)
    if channels % num_groups:
        chosen = _largest_divisor_at_most(channels, num_groups)
        logger.warning("GroupNorm: num_groups=%d does not divide %d channels; using num_groups=%d",
                       num_groups, channels, chosen)
        num_groups = chosen
    return RebuildPlan(_same_shape_for(m, ("weight", "bias"), shape),
                       {"num_channels": channels, "num_groups": num_groups})


def _layer_norm_rule(m: nn.Module, found: Mapping[str, Shape],
                     hints: Mapping[str, Any]) -> RebuildPlan:
    """LayerNorm (incl. subclasses such as torchvision's LayerNorm2d) and RMSNorm."""
    shape = _first_found(m, found, ("weight", "bias"))
    return RebuildPlan(_same_shape_for(m, ("weight", "bias"), shape), {"normalized_shape": shape})


def _prelu_rule(m: nn.PReLU, found: Mapping[str, Shape], hints: Mapping[str, Any]) -> RebuildPlan:
    """PReLU: ``weight`` is ``(num_parameters,)``."""
    weight = _shape(m, found, "weight")
    return RebuildPlan({"weight": weight}, {"num_parameters": weight[0]})


def _embedding_rule(m: nn.Module, found: Mapping[str, Shape],
                    hints: Mapping[str, Any]) -> RebuildPlan:
    """Embedding and EmbeddingBag: weight ``(num_embeddings, embedding_dim)``."""
    weight = _shape(m, found, "weight")
    padding_idx = hints.get("padding_idx", getattr(m, "padding_idx", None))
    if padding_idx is not None and padding_idx >= weight[0]:
        raise UnrebuildableError(f"padding_idx={padding_idx} is out of range for "
                                 f"{weight[0]} embeddings")
    attrs: Dict[str, Any] = {"num_embeddings": weight[0], "embedding_dim": weight[1]}
    if hasattr(m, "padding_idx"):
        attrs["padding_idx"] = padding_idx
    return RebuildPlan({"weight": weight}, attrs)


def _attention_rule(m: nn.MultiheadAttention, found: Mapping[str, Shape],
                    hints: Mapping[str, Any]) -> RebuildPlan:
    """MultiheadAttention's own tensors (``out_proj`` is a Linear with its own rule).

    ``num_heads`` is kept when it divides the new ``embed_dim`` (upstream prunes head dims and
    keeps the heads); otherwise the old ``head_dim`` is kept and the heads follow.
    """
    if m._qkv_same_embed_dim:
        in_proj = _shape(m, found, "in_proj_weight")
        embed_dim, kdim, vdim = in_proj[1], in_proj[1], in_proj[1]
        if in_proj[0] != 3 * embed_dim:
            raise UnrebuildableError("in_proj_weight must have shape (3*embed_dim, embed_dim)")
        shapes: Dict[str, Shape] = {"in_proj_weight": in_proj}
    else:
        q, k, v = (_shape(m, found, f"{x}_proj_weight") for x in "qkv")
        embed_dim, kdim, vdim = q[0], k[1], v[1]
        shapes = {"q_proj_weight": (embed_dim, embed_dim), "k_proj_weight": (embed_dim, kdim),
                  "v_proj_weight": (embed_dim, vdim)}
    shapes.update(_same_shape_for(m, ("in_proj_bias",), (3 * embed_dim,)))
    shapes.update(_same_shape_for(m, ("bias_k", "bias_v"), (1, 1, embed_dim)))
    num_heads = hints.get("num_heads", m.num_heads)
    if embed_dim % num_heads:
        if embed_dim % m.head_dim:
            raise UnrebuildableError(f"embed_dim={embed_dim} is divisible by neither "
                                     f"num_heads={num_heads} nor head_dim={m.head_dim}")
        num_heads = embed_dim // m.head_dim
    return RebuildPlan(shapes, {"embed_dim": embed_dim, "kdim": kdim, "vdim": vdim,
                                "num_heads": num_heads, "head_dim": embed_dim // num_heads})


def _plain_rule(m: nn.Module, found: Mapping[str, Shape], hints: Mapping[str, Any]) -> RebuildPlan:
    """Modules outside torch.nn: their own parameters take the checkpoint's shapes."""
    return RebuildPlan({name: tuple(shape) for name, shape in found.items()})


def _torchvision_vit_rule(m: nn.Module, found: Mapping[str, Shape],
                          hints: Mapping[str, Any]) -> RebuildPlan:
    """torchvision's VisionTransformer reshapes with ``self.hidden_dim`` in its forward."""
    plan = _plain_rule(m, found, hints)
    plan.attrs["hidden_dim"] = hints.get("hidden_dim", _shape(m, found, "class_token")[-1])
    return plan


_RULES: Dict[type, RebuildRule] = {
    _ConvNd: _conv_rule,
    nn.Linear: _linear_rule,
    _NormBase: _norm_rule,
    nn.GroupNorm: _group_norm_rule,
    nn.LayerNorm: _layer_norm_rule,
    nn.PReLU: _prelu_rule,
    nn.Embedding: _embedding_rule,
    nn.EmbeddingBag: _embedding_rule,
    nn.MultiheadAttention: _attention_rule,
    nn.ParameterList: _plain_rule,
    nn.ParameterDict: _plain_rule,
}
if hasattr(nn, "RMSNorm"):
    _RULES[nn.RMSNorm] = _layer_norm_rule

# Rules for third-party classes, keyed by qualified name so their packages are never imported.
_NAMED_RULES: Dict[str, RebuildRule] = {
    "torchvision.models.vision_transformer.VisionTransformer": _torchvision_vit_rule,
}


def register_rebuild_rule(cls: Union[Type[nn.Module], str], rule: RebuildRule) -> None:
    """Teach the loader how to resize a custom layer (a class or its qualified name).

    Example:
        >>> import torch
        >>> class Scale(nn.Module):
        ...     def __init__(self, n):
        ...         super().__init__(); self.n = n; self.s = nn.Parameter(torch.ones(n))
        >>> register_rebuild_rule(Scale, lambda m, found, hints: RebuildPlan(
        ...     {"s": found["s"]}, {"n": found["s"][0]}))
    """
    if isinstance(cls, str):
        _NAMED_RULES[cls] = rule
    else:
        _RULES[cls] = rule


def find_rule(module: nn.Module) -> Optional[RebuildRule]:
    """The rule for ``module`` (nearest registered base class), or None if it cannot be rebuilt.

    Example:
        >>> find_rule(nn.Conv2d(3, 8, 3)) is find_rule(nn.ConvTranspose1d(3, 8, 3))
        True
        >>> find_rule(nn.LSTM(4, 4)) is None
        True
    """
    for cls in type(module).__mro__:
        if cls in _RULES:
            return _RULES[cls]
        qualified = f"{cls.__module__}.{cls.__qualname__}"
        if qualified in _NAMED_RULES:
            return _NAMED_RULES[qualified]
    if type(module).__module__.split(".")[0] == "torch":
        return None  # a torch layer with size attributes we do not know
    return _plain_rule


# --------------------------------------------------------------------------- applying plans
def apply_plans(plans: List[Tuple[str, nn.Module, RebuildPlan]]
                ) -> Tuple[Callable[[], None], List[str]]:
    """Resize the tensors and set the attributes of every ``(path, module, plan)``.

    Returns a function that undoes it all and one summary line per module. Tensors that were
    shared (tied weights) stay shared.

    Example:
        >>> conv = nn.Conv2d(3, 8, 3)
        >>> undo, changes = apply_plans([("conv", conv, RebuildPlan(
        ...     {"weight": (4, 3, 3, 3), "bias": (4,)}, {"out_channels": 4}))])
        >>> conv.out_channels, tuple(conv.weight.shape), changes
        (4, (4, 3, 3, 3), ['conv (Conv2d: out_channels 8->4)'])
        >>> undo(); conv.out_channels, tuple(conv.weight.shape)
        (8, (8, 3, 3, 3))
    """
    saved = []
    changes: List[str] = []
    replaced: Dict[Tuple[int, Shape], torch.Tensor] = {}  # keeps tied tensors tied
    for path, module, plan in plans:
        before = {a: getattr(module, a) for a in plan.attrs if hasattr(module, a)}
        saved.append((module, dict(module._parameters), dict(module._buffers), before))
        for name, shape in plan.shapes.items():
            _resize(module, name, tuple(shape), replaced)
        for attr, value in plan.attrs.items():
            setattr(module, attr, value)
        diff = [f"{a} {before.get(a)}->{v}" for a, v in plan.attrs.items() if before.get(a) != v]
        changes.append(f"{path or '<root>'} ({type(module).__name__}"
                       f"{': ' + ', '.join(diff) if diff else ''})")

    def undo() -> None:
        for module, params, buffers, attrs in reversed(saved):
            module._parameters.update(params)
            module._buffers.update(buffers)
            for attr, value in attrs.items():
                setattr(module, attr, value)

    return undo, changes


def _resize(module: nn.Module, name: str, shape: Shape,
            replaced: Dict[Tuple[int, Shape], torch.Tensor]) -> None:
    """Give ``module.<name>`` a new tensor of ``shape`` on the same device and dtype.

    The overlap with the old values is kept (only visible for keys a ``strict=False`` load
    leaves out); ``load_state_dict`` overwrites the rest.
    """
    store = module._parameters if name in module._parameters else module._buffers
    old = store[name]
    if old is None or tuple(old.shape) == shape:
        return
    new = replaced.get((id(old), shape))
    if new is None:
        with torch.no_grad():
            data = old.new_zeros(shape)
            overlap = tuple(slice(0, min(a, b)) for a, b in zip(shape, old.shape))
            data[overlap] = old.detach()[overlap]
        new = nn.Parameter(data, requires_grad=old.requires_grad) \
            if isinstance(old, nn.Parameter) else data
        replaced[(id(old), shape)] = new
    store[name] = new
