"""Whole-head pruning of attention written with ``Linear`` projections.

Upstream's DependencyGraph couples the channels of ``q``/``k``/``v`` (separate layers or one
fused ``qkv``) with the output projection's inputs through ``q @ k`` and ``attn @ v`` (or
``scaled_dot_product_attention``), as if those were elementwise ops. Removing single channels
there would regroup the heads, so the pruned model would not compute what the masked one did.
Removing *whole heads* is exact: a head whose q, k and v rows are zero contributes nothing, the
other heads keep their width (and so their ``1/sqrt(head_dim)`` scale), and once it is removed
the attention module only needs its head count lowered.

This module finds such groups (:func:`find_heads`): the nearest module enclosing the group's
root Linear that holds its head count in an int attribute (:data:`~torch_pruning.pat.core.heads.HEAD_COUNT_ATTRS`), with every
coupled position checked to belong to the same head as its root channel. It also keeps head
counts right wherever shapes change: after physical removal, in the MAC counter's skeleton
(:meth:`AttentionHeads.remove`) and when a pruned checkpoint is loaded (:func:`~torch_pruning.pat.core.heads.head_count_plans`).

``nn.MultiheadAttention`` is not handled: it ties every head's width to the embedding dimension
(see ``docs/channel_pruning.md``).

Example:
    >>> heads = AttentionHeads(nn.Module(), "attn", "num_heads", count=4, head_dim=8)
    >>> heads.unit_index(torch.tensor([0, 7, 8, 40, 95])).tolist()  # q..., k, v of a fused qkv
    [0, 0, 1, 1, 3]
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import Any, Iterable, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from torch_pruning.pruner import function as F

from ..core.heads import HEAD_COUNT_ATTRS, HEAD_DIM_ATTRS, head_count_attr, head_counts, int_attr

__all__ = ["AttentionHeads", "find_heads", "removal_is_exact", "checked_once", "tensors_in"]

logger = logging.getLogger(__name__)

@dataclass
class AttentionHeads:
    """The heads of one attention module: a group whose units are whole heads.

    Root channel ``r`` of the group belongs to head ``(r % (count * head_dim)) // head_dim``
    (q, k and v each laid out as ``count`` heads of ``head_dim``, fused or not).
    """

    module: nn.Module = field(repr=False)
    name: str
    attr: str
    count: int
    head_dim: int

    @property
    def width(self) -> int:
        """Channels of one projection (``count * head_dim``)."""
        return self.count * self.head_dim

    def unit_index(self, positions: torch.Tensor) -> torch.Tensor:
        """The head of each channel position (of a projection or of the group's root)."""
        return (positions % self.width) // self.head_dim

    def remove(self, module: nn.Module, heads: Sequence[int]) -> None:
        """Lower ``module``'s head count by ``len(heads)`` (the live module or a copy of it).

        Used like an upstream pruning handler: the MAC counter runs it on its skeleton.
        """
        for attr, value in head_counts(module, self.attr,
                                        getattr(module, self.attr) - len(heads)).items():
            setattr(module, attr, value)


def _enclosing(root_name: str, modules: Mapping[str, nn.Module]
               ) -> Optional[Tuple[str, nn.Module, str]]:
    """The nearest module above ``root_name`` with a head count: (name, module, attribute)."""
    path = root_name
    while path:
        path = path.rpartition(".")[0]
        module = modules.get(path)
        attr = head_count_attr(module) if module is not None else None
        if attr is not None:
            return path, module, attr
    return None


def find_heads(items: Iterable[Tuple[str, object, torch.Tensor, torch.Tensor]], root_name: str,
               channels: int, modules: Mapping[str, nn.Module]
               ) -> Tuple[Optional[AttentionHeads], str]:
    """The heads of the attention a q/k/v group belongs to, or None and the reason.

    ``items`` are the group's ``(module name, dependency, positions, root channels)``.

    Example:
        >>> heads, why = find_heads(items, "blocks.0.attn.qkv", 96, modules)  # doctest: +SKIP
        >>> heads.name, heads.count, heads.head_dim  # doctest: +SKIP
        ('blocks.0.attn', 4, 8)
    """
    found = _enclosing(root_name, modules)
    if found is None:
        return None, (f"no module enclosing {root_name} has a head count attribute "
                      f"({', '.join(HEAD_COUNT_ATTRS)}), so whole heads cannot be told apart")
    name, module, attr = found
    name = name or f"<root {type(module).__name__}>"
    count = getattr(module, attr)
    linears = [(n, dep, idxs, roots) for n, dep, idxs, roots in items
               if isinstance(dep.target.module, nn.Linear)]
    others = sorted({n for n, dep, _, _ in items if not isinstance(dep.target.module, nn.Linear)})
    if others:
        return None, (f"the heads of {name} are coupled with {', '.join(others)}, which whole-"
                      "head pruning does not handle (only Linear projections)")
    outputs = [dep.target.module.in_features for _, dep, _, _ in linears
               if dep.handler == F.prune_linear_in_channels]
    head_dim = int_attr(module, HEAD_DIM_ATTRS) or (outputs[0] // count if outputs else 0)
    if not outputs or head_dim < 1:
        return None, f"no output projection of {name} reads its heads"
    heads = AttentionHeads(module, name, attr, count, head_dim)
    for n, dep, idxs, roots in linears:
        size = (dep.target.module.in_features if dep.handler == F.prune_linear_in_channels
                else dep.target.module.out_features)
        if size % heads.width or channels % heads.width or not bool(
                (heads.unit_index(idxs) == heads.unit_index(roots)).all()):
            return None, (f"{n} does not hold {count} heads of {head_dim} channels laid out "
                          f"like the other projections of {name} ({attr}={count}); grouped-query "
                          "or interleaved layouts are not supported")
    return heads, ""


def tensors_in(out: Any) -> List[torch.Tensor]:
    """Every tensor in a module's output (nested tuples, lists, dicts; ``None`` skipped)."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        return [t for item in out for t in tensors_in(item)]
    return []


@torch.no_grad()
def removal_is_exact(heads: AttentionHeads, slices: Sequence[Any],
                     items: Sequence[Tuple[str, Any, torch.Tensor, torch.Tensor]],
                     inputs: Optional[Tuple[Any, Any]]) -> str:
    """``""`` when removing a head computes what masking it does, else the reason it does not.

    Checked on the inputs the attention got while tracing: one copy has the last head's slices
    (``slices``: the group's :class:`~torch_pruning.pat.channel.group.ParamSlice` list) zeroed, another has them removed by upstream's handlers and the head count lowered; both
    must run and agree. This catches layouts the index check cannot see (q, k and v of a head
    interleaved) and forwards that reshape with a fixed width.
    """
    if inputs is None:
        return f"{heads.name} was not reached by the traced forward"
    masked, pruned = copy.deepcopy(heads.module).eval(), copy.deepcopy(heads.module).eval()
    in_masked = dict(zip(heads.module.modules(), masked.modules()))
    in_pruned = dict(zip(heads.module.modules(), pruned.modules()))
    last = heads.count - 1
    for s in slices:
        if s.module not in in_masked:
            return f"its projection {type(s.module).__name__} lies outside {heads.name}"
        drop = s.index[heads.unit_index(s.roots) == last].to(s.param.device)
        getattr(in_masked[s.module], s.name).index_fill_(s.dim, drop, 0)
    for _, dep, idxs, roots in items:
        drop = idxs[heads.unit_index(roots) == last].tolist()
        if drop:
            dep.handler(in_pruned[dep.target.module], drop)
    heads.remove(pruned, [last])
    args, kwargs = inputs
    try:
        want, got = tensors_in(masked(*args, **kwargs)), tensors_in(pruned(*args, **kwargs))
    except Exception as exc:  # noqa: BLE001 - any failure means the heads cannot be removed
        return (f"once a head is removed, {heads.name}'s forward fails ({type(exc).__name__}: "
                f"{exc}); it must take its shapes from {heads.attr} (e.g. reshape(B, N, -1), "
                "not reshape(B, N, C) with the input's width)")
    same = len(want) == len(got) and all(
        a.shape == b.shape and torch.allclose(
            a.float(), b.float(), rtol=1e-4, atol=1e-5 * max(1.0, float(a.abs().max())))
        for a, b in zip(want, got))
    if not same:
        return (f"removing a head of {heads.name} does not compute what masking it does: q, k "
                f"and v are not laid out as {heads.count} heads of {heads.head_dim} each "
                "(grouped-query or interleaved layouts are not supported)")
    return ""


def checked_once(DG: Any, heads: AttentionHeads, slices: Sequence[Any],
                 items: Sequence[Tuple[str, Any, torch.Tensor, torch.Tensor]]) -> str:
    """:func:`removal_is_exact` once per distinct attention (class, settings, parameter and
    input shapes): the 12 identical blocks of a ViT are checked once.

    ``DG`` is the graph traced by :func:`torch_pruning.pat.channel.tracing.build_graph`: it holds the
    inputs each attention received while tracing, and the results are cached on it.
    """
    module = heads.module
    inputs = getattr(DG, "attention_inputs", {}).get(module)
    tensors = tensors_in(inputs) if inputs is not None else []
    key = (type(module), heads.attr, heads.count, heads.head_dim,
           tuple(sorted((k, v) for k, v in vars(module).items()
                        if isinstance(v, (bool, int, float, str)))),
           tuple((n, tuple(p.shape), p.dtype) for n, p in module.named_parameters()),
           tuple((tuple(t.shape), t.dtype) for t in tensors), inputs is None)
    cache = DG.__dict__.setdefault("attention_checks", {})
    if key not in cache:
        cache[key] = removal_is_exact(heads, slices, items, inputs)
    return cache[key]
