"""Dependency groups of the channel pruner: layer selection and coupled parameters.

Upstream's :class:`~torch_pruning.dependency.DependencyGraph` is built once from the example
inputs (:func:`~torch_pruning.pat.channel.tracing.build_graph`); the groups rooted at the configured
``layers`` are selected from it (:func:`select_groups`) as
:class:`~torch_pruning.pat.channel.group.ChannelGroup` objects: upstream's group (for
importance and physical removal) plus a flat list of ``ParamSlice`` — *which positions of which
parameter belong to which root channel* — that masks, regularization and MAC counting share.

Example:
    >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1))
    >>> DG = build_graph(net, torch.randn(1, 3, 8, 8))
    >>> [g.source for g in select_groups(net, DG, ["0"])]
    ['0']
"""

from __future__ import annotations

import difflib
import functools
import logging
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from torch_pruning import ops
from torch_pruning.dependency import Dependency, DependencyGraph, Group
from torch_pruning.pruner import function as F

from ..attention.gqa import FixedGroup, GQAHeads, GQAMode, gqa_heads, gqa_items
from ..attention.heads import checked_once, find_heads
from ..config.errors import PruningConfigError
from ..core.heads import head_count_attr
from ..core.hf import PROJECTIONS, is_hf_attention
from ..core.masks import strip_module_prefix
from ..util.log import UserLog, emit
from .group import ChannelGroup, ParamSlice
from .tracing import (GroupDidNotConverge, build_graph,  # noqa: F401  (build_graph: doctests)
                      index_mapping_once, pruning_group)

__all__ = ["resolve_layers", "select_groups", "log_groups"]

logger = logging.getLogger(__name__)

LAYERS_FIELD = "channel_sparsity_args.layers"
_ROOT_TYPES = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)
_ATTENTION = (nn.MultiheadAttention,)
#: Autograd ops of attention written by hand (q @ k, attn @ v): upstream couples the channels
#: through them like an elementwise op, which removal does not preserve per head.
_PRODUCT_OPS = ("BmmBackward", "BaddbmmBackward", "ScaledDotProduct")
#: Why an nn.MultiheadAttention listed in ``layers`` is skipped (logged with its name).
_HEADS_UNSUPPORTED = (
    "its heads cannot be pruned: nn.MultiheadAttention ties every head's width to the "
    "embedding dimension, and upstream can only shrink head_dim together with the embedding, "
    "which masks cannot mirror exactly; call torch_pruning.pat.split_multihead_attention(model) "
    "before Pruning(...) to prune its heads whole, or list the block's MLP Linear layers")


@functools.lru_cache(maxsize=None)
def _range_list(n: int) -> List[int]:
    """``list(range(n))``, made once per length (only compared against, never changed)."""
    return list(range(n))


def _long(values: Sequence[int]) -> torch.Tensor:
    """``values`` as a LongTensor; ``arange`` for ``0..n-1`` in order (most positions of a
    group), compared in C instead of converted element by element."""
    n = len(values)
    if n and values[0] == 0 and values[-1] == n - 1 and values == _range_list(n):
        return torch.arange(n)
    return torch.from_numpy(np.asarray(values, dtype=np.int64))


def _long_pair(idxs: Sequence[int], roots: Sequence[int]) -> Tuple[torch.Tensor, torch.Tensor]:
    """A group item's positions and root channels as LongTensors (converted once when equal,
    as they are for every layer that does not re-index the channels)."""
    index = _long(idxs)
    return index, (index.clone() if roots == idxs else _long(roots))


def _is_dummy(dep: Dependency) -> bool:
    return isinstance(getattr(dep.handler, "__self__", None), ops.DummyPruner)


def _slices_of(dep: Dependency, idxs: torch.Tensor,
               roots: torch.Tensor) -> Optional[List[Tuple[str, int, torch.Tensor, torch.Tensor]]]:
    """(param name, dim, positions, roots) touched by one dependency; None when unsupported."""
    m, h = dep.target.module, dep.handler
    both = [("weight", 0), ("bias", 0)]
    if h == F.prune_conv_out_channels:
        if m.transposed and m.groups > 1:
            return None
        spec = [("weight", 1 if m.transposed else 0), ("bias", 0)]
    elif h == F.prune_conv_in_channels:
        if m.transposed:
            if m.groups > 1:
                return None
            spec = [("weight", 0)]
        elif m.groups > 1:
            per_group = m.in_channels // m.groups
            if idxs.numel() != m.in_channels:
                return None
            pos, first = torch.unique(idxs % per_group, return_inverse=True)
            owner = torch.empty_like(pos).scatter_(0, first.flip(0), roots.flip(0))
            return [("weight", 1, pos, owner)]
        else:
            spec = [("weight", 1)]
    elif h in (F.prune_depthwise_conv_out_channels, F.prune_linear_out_channels,
               F.prune_batchnorm_out_channels, F.prune_groupnorm_out_channels,
               F.prune_instancenorm_out_channels):
        spec = both
    elif h == F.prune_linear_in_channels:
        spec = [("weight", 1)]
    elif h == F.prune_prelu_out_channels:
        spec = [("weight", 0)] if m.num_parameters > 1 else []
    elif h == F.prune_layernorm_out_channels:
        if m.weight is not None and len(m.normalized_shape) < -dep.target.pruning_dim:
            return None
        pd = dep.target.pruning_dim
        dim = pd if pd >= 0 or m.weight is None else m.weight.dim() + pd
        spec = [("weight", dim), ("bias", dim)]
    elif _is_dummy(dep):
        spec = []
    else:
        return None
    return [(name, dim, idxs, roots) for name, dim in spec
            if isinstance(getattr(m, name, None), torch.Tensor)]


def _every_prunable_layer(named: Dict[str, nn.Module]) -> List[Tuple[str, nn.Module]]:
    """What ``"all"`` selects: every Conv2d, ConvTranspose2d and Linear layer, and every
    attention module (pruned by whole heads, or reported as not prunable), but not the Linear
    projections inside an attention module (its heads are its unit). Layers whose channels are
    model outputs (the final classifier) are skipped later by :func:`select_groups`."""
    def attention(m: nn.Module) -> bool:  # the innermost module with a head count (a
        # transformer block may carry num_heads too, e.g. torchvision's EncoderBlock)
        if is_hf_attention(m):
            return True
        return isinstance(m, _ATTENTION) or (bool(head_count_attr(m)) and not any(
            isinstance(s, _ATTENTION) or head_count_attr(s) for s in m.modules() if s is not m))

    kinds = {id(m): attention(m) for m in named.values()}
    inside = {id(sub) for m in named.values() if kinds[id(m)]
              for sub in m.modules() if sub is not m}
    return [(n, m) for n, m in named.items() if id(m) not in inside
            and (isinstance(m, _ROOT_TYPES) or kinds[id(m)])]


def _named_modules(model: nn.Module, DG: Optional[DependencyGraph] = None
                   ) -> List[Tuple[str, nn.Module]]:
    """``model.named_modules()`` as a list; from the names ``DG`` recorded when it traced
    ``model`` (upstream's ``_module2name``, the same walk) instead of walking the model again."""
    recorded = getattr(DG, "_module2name", None) if getattr(DG, "model", None) is model else None
    if isinstance(recorded, dict):
        return [(n, m) for m, n in recorded.items()]
    return list(model.named_modules())


def resolve_layers(model: nn.Module, layers: Union[str, Sequence[str]],
                   source: str = "", *,
                   named_modules: Optional[Sequence[Tuple[str, nn.Module]]] = None
                   ) -> List[Tuple[str, nn.Module]]:
    """The configured ``layers`` as ``(name, module)``; ``"all"`` = every layer kind the channel
    pruner can take (Conv2d, ConvTranspose2d, Linear, attention modules; see
    :func:`_every_prunable_layer`).

    Raises :class:`PruningConfigError` naming ``channel_sparsity_args.layers`` for an unknown
    name (with close matches) or a layer that is not a Conv2d/ConvTranspose2d/Linear or an
    attention module (a MultiheadAttention, which :func:`select_groups` reports as not pruned,
    or a module with a head count attribute, whose heads are pruned).

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        >>> [name for name, _ in resolve_layers(net, "all")]
        ['0']

    ``named_modules``: ``list(model.named_modules())`` when the caller already has it.
    """
    pairs = model.named_modules() if named_modules is None else named_modules
    named = {strip_module_prefix(n): m for n, m in pairs if n}
    prunable = [n for n, m in named.items() if isinstance(m, _ROOT_TYPES)]
    if layers == "all":
        return _every_prunable_layer(named)
    out: List[Tuple[str, nn.Module]] = []
    for raw in layers:
        name = strip_module_prefix(raw)
        if name not in named:
            close = difflib.get_close_matches(name, prunable, n=5, cutoff=0.5) or \
                difflib.get_close_matches(name, list(named), n=5, cutoff=0.5)
            listed = close or prunable[:20]
            hint = ("; close matches: " if close else
                    "; the model's prunable layers (Conv2d, ConvTranspose2d, Linear) are: ")
            hint += ", ".join(f"{n} ({type(named[n]).__name__})" for n in listed)
            if not close and len(prunable) > 20:
                hint += f" ... ({len(prunable)} in all)"
            raise PruningConfigError(f"{LAYERS_FIELD}: no module named '{raw}' in "
                                     f"{type(model).__name__}{hint}", source=source,
                                     field=LAYERS_FIELD)
        if not (isinstance(named[name], _ROOT_TYPES + _ATTENTION)
                or head_count_attr(named[name]) or is_hf_attention(named[name])):
            raise PruningConfigError(
                f"{LAYERS_FIELD}: '{raw}' is a {type(named[name]).__name__}; list Conv2d layers "
                "(ConvTranspose2d, Linear and attention modules are accepted too)",
                source=source, field=LAYERS_FIELD)
        out.append((name, named[name]))
    return out


def _channel_groups(DG: DependencyGraph, group: Group) -> List[int]:
    found = []
    for dep, _ in group:
        m = dep.target.module
        pruner = DG.get_pruner_of_module(m) if isinstance(m, nn.Module) else None
        if pruner is None or (isinstance(m, ops.TORCH_CONV) and m.groups == m.out_channels):
            continue
        n = (pruner.get_out_channel_groups(m) if DG.is_out_channel_pruning_fn(dep.handler)
             else pruner.get_in_channel_groups(m))
        if n > 1:
            found.append(n)
    return found


def _build_group(DG: DependencyGraph, name: str, module: nn.Module,
                 names: Dict[nn.Module, str], order: Optional[Dict[str, int]] = None
                 ) -> Tuple[Optional[ChannelGroup], str]:
    """The group rooted at ``module``'s output channels, or None and why it is skipped.
    ``order``: each module name's position in the model (computed from ``names`` if not
    given; :func:`select_groups` computes it once for all groups)."""
    pruner = DG.get_pruner_of_module(module)
    channels = pruner.get_out_channels(module)

    def full_group() -> Group:
        return pruning_group(DG, module, pruner.prune_out_channels, list(range(channels)))

    try:  # who is coupled, from a one-channel probe; exact when no index mapping is on the way
        group = pruning_group(DG, module, pruner.prune_out_channels, [0])
        lazy = _identity_mapped(group)
        if not lazy:
            group = full_group()
    except GroupDidNotConverge as exc:
        return None, (f"upstream's DependencyGraph did not settle which layers share its channels "
                      f"({exc} collected; the channels are folded into windows or heads by "
                      "reshapes it cannot follow)")
    attention = [names.get(dep.target.module, "?") for dep, _ in group
                 if isinstance(dep.target.module, _ATTENTION)]
    if attention:
        return None, (f"its channels are the embedding dimension of attention {attention[0]} "
                      "(MultiheadAttention), which cannot be masked exactly (the attention "
                      "scale and LayerNorm statistics would change)")
    ops_in_group = [dep.target.grad_fn.name() for dep, _ in group
                    if dep.target.grad_fn is not None]
    products = [op for op in ops_in_group if any(p in op for p in _PRODUCT_OPS)]
    if products and lazy:  # heads are found from the positions of every channel
        group, lazy = full_group(), False
    every = torch.arange(channels)
    ch = [] if products else _channel_groups(DG, group)
    ch_groups = max(ch) if ch else 1
    if any(n != ch_groups for n in ch) or channels % ch_groups:
        return None, f"grouped layers with different group counts {sorted(set(ch))}"
    slices: List[ParamSlice] = []
    items, deps, mods = [], [], []
    for item in group:
        dep = item.dep
        if dep.target.type == ops.OPTYPE.OUTPUT or (
                DG.is_out_channel_pruning_fn(dep.handler)
                and dep.target.module in getattr(DG, "output_modules", ())):
            return None, "its channels are outputs of the model"
        idxs, roots = ((every.clone(), every.clone()) if lazy
                       else _long_pair(item.idxs, item.root_idxs))
        found = _slices_of(dep, idxs, roots)
        target = names.get(dep.target.module) if isinstance(dep.target.module, nn.Module) else None
        if found is None or (found and target is None):
            label = target or getattr(dep.target, "name", str(dep.target))
            return None, f"{label} ({type(dep.target.module).__name__}) cannot be masked"
        if target is None:
            continue
        items.append((target, dep, idxs, roots))
        slices += [ParamSlice(dep.target.module, p, d, i, r) for p, d, i, r in found]
        if target not in mods:
            mods.append(target)
        if target != name and isinstance(dep.target.module, _ROOT_TYPES) and target not in deps:
            deps.append(target)
    heads = None
    if products:
        heads, why = find_heads(items, name, channels, {n: m for m, n in names.items()})
        if heads is not None:
            why = checked_once(DG, heads, slices, items)
            heads = None if why else heads
        if heads is None:
            return None, (f"its channels pass through a batched matrix product ({products[0]}, "
                          "e.g. attention's q @ k or attn @ v), where only whole heads can be "
                          f"removed exactly, and {why}")
    if order is None:
        order = _module_order(names)
    deps.sort(key=lambda n: order.get(n, 0))
    return ChannelGroup(0, name, module, group, channels, ch_groups, slices, deps, mods,
                        items, heads, full_group if lazy else None), ""


def _hf_attention_of(name: str, names: Dict[str, nn.Module]
                     ) -> Optional[Tuple[str, nn.Module, GQAMode]]:
    """The HF attention module ``name`` is, or is a q/k/v/o projection of, with the unit its
    listing selects (``q_proj``: query heads evenly per KV group; else whole KV groups)."""
    module = names.get(name)
    if module is not None and is_hf_attention(module):
        return name, module, "kv_group"
    parent, _, child = name.rpartition(".")
    owner = names.get(parent)
    if owner is not None and child in PROJECTIONS and is_hf_attention(owner):
        return parent, owner, "query" if child == "q_proj" else "kv_group"
    return None


def _gqa_group(DG: DependencyGraph, name: str, attention: nn.Module, mode: GQAMode,
               names: Dict[nn.Module, str]) -> Tuple[Optional[ChannelGroup], str]:
    """The group of an HF attention module's heads, written from its GQA layout
    (:mod:`torch_pruning.pat.attention.gqa`), or None and why it is skipped."""
    heads = gqa_heads(name, attention, mode)
    if mode == "query" and heads.q_per_kv < 2:
        return None, (f"{name} has one query head per key/value head, so query heads cannot "
                      "be removed evenly from its KV groups; list the attention module itself "
                      "to prune whole KV groups")
    if any(getattr(attention, p) not in DG.module2node for p in PROJECTIONS):
        return None, "not reached by the traced forward"
    items = gqa_items(DG, heads, names)
    slices: List[ParamSlice] = []
    for target, dep, idxs, roots in items:
        found = _slices_of(dep, idxs, roots) or []
        slices += [ParamSlice(dep.target.module, p, d, i, r) for p, d, i, r in found]
    root = attention.q_proj
    deps = [n for n, _, _, _ in items[1:]]
    return ChannelGroup(0, names[root], root, FixedGroup(DG, items), heads.width, 1, slices,
                        deps, [n for n, _, _, _ in items], items, heads), ""


def _too_few_units(group: ChannelGroup) -> str:
    """What a group too small to prune holds, e.g. "only 1 head(s) in blocks.0.attn"."""
    heads = group.heads
    if isinstance(heads, GQAHeads):
        return f"only {group.units} unit(s) ({heads.attr}) in {heads.name}"
    if heads is not None:
        return f"only {group.units} head(s) in {heads.name}"
    return f"only {group.channels} channel(s) in {group.ch_groups} channel group(s)"


def _identity_mapped(group: Group) -> bool:
    """True when no dependency leaving a layer of ``group`` maps channel positions (concat,
    split, reshape, ... all leave upstream's index mappings at None otherwise).

    Then upstream's traversal reaches the same layers whatever root positions it starts
    from, every layer takes the root's positions unchanged, and a one-channel probe gives
    the group's members; ``tests/test_channel_pruner.py::test_probed_groups_equal_full_groups``
    compares them with full groups over the test models and torchvision's.
    """
    for dep, _ in group:
        for out in dep.target.dependencies:
            if any(m is not None for m in out.index_mapping):
                return False
    return True


def _module_order(names: Dict[nn.Module, str]) -> Dict[str, int]:
    return {n: i for i, n in enumerate(names.values())}


def _heads_root(DG: DependencyGraph, attention: nn.Module, names: Dict[nn.Module, str],
                order: Optional[Dict[str, int]] = None
                ) -> Tuple[Optional[Tuple[str, nn.Module, ChannelGroup]], str]:
    """The first Linear inside ``attention`` whose group is made of ``attention``'s heads (its
    name, module and group), else None and why its heads cannot be pruned."""
    why = "none of its Linear layers feeds its heads through q @ k / attn @ v"
    for sub in attention.modules():
        if isinstance(sub, nn.Linear) and sub in DG.module2node:
            group, reason = _build_group(DG, names[sub], sub, names, order)
            if group is not None and group.heads is not None and group.heads.module is attention:
                return (names[sub], sub, group), ""
            if "matrix product" in reason and why.startswith("none"):
                why = f"{names[sub]}: {reason}"
    return None, why


def select_groups(model: nn.Module, DG: DependencyGraph, layers: Union[str, Sequence[str]], *,
                  source: str = "", log: Optional[UserLog] = None, quiet: bool = False,
                  skipped: Optional[List[str]] = None) -> List[ChannelGroup]:
    """The dependency groups rooted at the configured layers, in model order, numbered from 1.

    A layer whose channels are already in an earlier group joins that group. Layers that cannot
    be pruned (channels that are model outputs, layers upstream cannot mask, layers the traced
    forward never reached) are reported by name and skipped; ``quiet`` (a re-selection after a
    physical removal, or ``validate``) reports them at debug level only. ``skipped``, if given,
    receives one ``"<layer>: <reason>"`` line per skipped layer (what ``validate`` prints).

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1), nn.Flatten())
        >>> [g.source for g in select_groups(net, build_graph(net, torch.randn(1, 3, 8, 8)), "all")]
        ['0']
    """
    pairs = _named_modules(model, DG)
    names = {m: strip_module_prefix(n) for n, m in pairs}
    order = _module_order(names)
    projections = {m.out_proj: names[m] for m in names if isinstance(m, _ATTENTION)}
    explicit = layers != "all"
    groups: List[ChannelGroup] = []
    owner: Dict[nn.Module, ChannelGroup] = {}
    skipped = skipped if skipped is not None else []
    by_name = {n: m for m, n in names.items()}
    with index_mapping_once(DG):  # upstream's get_pruning_group would redo it per group
        for name, module in resolve_layers(model, layers, source, named_modules=pairs):
            built: Optional[ChannelGroup] = None
            hf = _hf_attention_of(name, by_name)
            if hf is not None:  # an HF attention module or one of its projections
                built, why = _gqa_group(DG, hf[0], hf[1], hf[2], names)
                if built is None:
                    skipped.append(f"{name}: {why}")
                    continue
                module = built.root  # the listed name stays in the messages
            elif isinstance(module, _ATTENTION):
                skipped.append(f"{name} ({type(module).__name__}, {module.num_heads} heads): "
                               f"{_HEADS_UNSUPPORTED}")
                continue
            elif module in projections:
                skipped.append(f"{name}: the output projection of attention {projections[module]} "
                               f"(MultiheadAttention); {_HEADS_UNSUPPORTED}")
                continue
            elif not isinstance(module, _ROOT_TYPES):  # an attention module with a head count
                root, why = _heads_root(DG, module, names, order)
                if root is None:
                    skipped.append(f"{name} ({type(module).__name__}): {why}")
                    continue
                name, module, built = root
            if module in owner:
                if explicit and not quiet:
                    emit(f"{name} is coupled with {owner[module].source}: pruned as group "
                         f"{owner[module].number}", log, logger=logger)
                continue
            if module not in DG.module2node:
                skipped.append(f"{name}: not reached by the traced forward")
                continue
            group, why = ((built, "") if built is not None
                          else _build_group(DG, name, module, names, order))
            if group is not None and group.units <= group.min_units:
                # also keeps upstream's GroupMagnitudeImportance away from grouped convs with one
                # input channel per group, where it raises IndexError
                # (tests/test_channel_pruner.py)
                group, why = None, f"{_too_few_units(group)}: nothing left to prune"
            if group is None:
                skipped.append(f"{name}: {why}")
                continue
            group.number = len(groups) + 1
            groups.append(group)
            for dep, _ in group.members:
                if DG.is_out_channel_pruning_fn(dep.handler):
                    owner.setdefault(dep.target.module, group)
    if skipped:
        level = logging.DEBUG if quiet else logging.WARNING if explicit else logging.INFO
        emit("Channel pruning skips these layers:\n  " + "\n  ".join(skipped), log,
             level=level, logger=logger)
    DG.attention_inputs = {}  # only needed to check head removal; frees the activations
    return groups


#: Groups listed one by one at INFO at construction; the rest (and all of them) at DEBUG.
LISTED_GROUPS = 10


def _is_conv_group(g: ChannelGroup) -> bool:
    return isinstance(g.root, nn.modules.conv._ConvNd) and g.heads is None


def log_groups(groups: Sequence[ChannelGroup], log: Optional[UserLog] = None,
               listed: int = LISTED_GROUPS) -> None:
    """Log the groups in the seed's format, then the summary line.

    The first ``listed`` groups go to INFO (and the user's ``log``); the others to DEBUG only
    (``logging.getLogger("torch_pruning.pat").setLevel(logging.DEBUG)`` shows every group), with
    one INFO line saying how many were left out. A group rooted at a Linear layer or attention
    says "Source layer" (the seed's "Source conv" for convolutions).

    Example output::

        *************
        Group number 1:
        Source conv: layer1.conv1
        Dependencies:
        layer1.conv2
        *************
        There are 1 groups of layers, with the following source convs:
        ['layer1.conv1']
    """
    for i, g in enumerate(groups):
        kind = "conv" if _is_conv_group(g) else "layer"
        lines = ["*************", f"Group number {g.number}:", f"Source {kind}: {g.source}",
                 "Dependencies:"] + (g.dependencies or ["(none)"])
        emit("\n".join(lines), log, logging.INFO if i < listed else logging.DEBUG,
             logger=logger)
    emit("*************", log, logger=logger)
    kind = "convs" if all(_is_conv_group(g) for g in groups) else "layers"
    sources = [g.source for g in groups]
    if len(groups) > listed:
        emit(f"... {len(groups) - listed} more groups (numbers {listed + 1}-{len(groups)}) are "
             "listed at DEBUG level on the torch_pruning.pat logger", log, logger=logger)
        emit(f"There are {len(groups)} groups of layers, with the following source {kind} "
             f"(first {listed}):\n{sources[:listed]} ...", log, logger=logger)
        emit(f"All {len(groups)} source {kind}: {sources}", log, logging.DEBUG, logger=logger)
    else:
        emit(f"There are {len(groups)} groups of layers, with the following source {kind}:\n"
             f"{sources}", log, logger=logger)
