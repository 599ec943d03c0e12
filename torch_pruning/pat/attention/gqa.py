"""Grouped-query attention heads of Hugging Face decoders (Llama, Qwen2, Mistral and kin).

HF decoder attention has separate ``q_proj``/``k_proj``/``v_proj``/``o_proj`` Linear layers,
``n_kv`` key/value heads and ``n_q = n_kv * r`` query heads: query head ``h`` reads key/value
head ``h // r`` (``repeat_kv``). Upstream's DependencyGraph cannot group these channels (the
search through RoPE and ``repeat_kv`` does not finish), so the group is written here from that
layout, with upstream's own Linear handlers doing the removal. Two units keep the layout valid
GQA:

* ``"kv_group"`` (list the attention module, ``k_proj`` or ``v_proj`` in ``layers``): one unit
  is a whole KV group, i.e. one key/value head with its ``r`` query heads (q rows, k and v rows,
  o_proj columns). ``r`` is unchanged, ``n_kv`` and ``n_q`` drop.
* ``"query"`` (list ``q_proj``): unit ``j`` is the ``j``-th query head of *every* KV group (q rows
  and o_proj columns only), so every group loses the same query heads; ``n_kv`` is unchanged
  and ``r`` (``num_key_value_groups``) drops.

Masks are exact: a masked unit's q (and k, v) rows and o_proj columns are zero, so its heads add
nothing to o_proj's output, exactly as if they were removed. The config follows through
:func:`torch_pruning.pat.core.hf.sync_hf_config`.

Example:
    >>> heads = GQAHeads(attn, "model.layers.0.self_attn", "kv_group", kv_heads=2, q_per_kv=4,
    ...                  head_dim=8)  # doctest: +SKIP
    >>> heads.unit_index(torch.tensor([0, 31, 32, 63])).tolist()  # doctest: +SKIP
    [0, 0, 1, 1]
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, List, Literal, Mapping, Sequence, Tuple

import torch
from torch import nn

from torch_pruning.dependency import Dependency, Group
from torch_pruning.pruner import function as F

from ..core.hf import gqa_counts

__all__ = ["GQAHeads", "GQAMode", "gqa_heads", "gqa_items", "FixedGroup"]

logger = logging.getLogger(__name__)

GQAMode = Literal["kv_group", "query"]


@dataclass
class GQAHeads:
    """The heads of one HF attention module, pruned in units that keep GQA valid.

    Same interface as :class:`~torch_pruning.pat.attention.heads.AttentionHeads`: ``count``
    units, ``head_dim`` channels per unit in the narrowest projection, ``unit_index`` of a root
    (q_proj output) channel, ``remove`` to lower the module's counts.
    """

    module: nn.Module = field(repr=False)
    name: str
    mode: GQAMode
    kv_heads: int
    q_per_kv: int
    head_dim: int

    @property
    def attr(self) -> str:
        """The count the units are: ``num_key_value_heads`` or ``num_key_value_groups``."""
        return "num_key_value_heads" if self.mode == "kv_group" else "num_key_value_groups"

    @property
    def count(self) -> int:
        """Units of the group: KV heads, or query heads per KV head."""
        return self.kv_heads if self.mode == "kv_group" else self.q_per_kv

    @property
    def width(self) -> int:
        """Root channels (q_proj output features)."""
        return self.kv_heads * self.q_per_kv * self.head_dim

    def unit_index(self, positions: torch.Tensor) -> torch.Tensor:
        """The unit of each q_proj output channel."""
        if self.mode == "kv_group":
            return positions // (self.q_per_kv * self.head_dim)
        return (positions // self.head_dim) % self.q_per_kv

    def remove(self, module: nn.Module, units: Sequence[int]) -> None:
        """Lower the counts of ``module`` (the live attention or the MAC counter's copy) by
        ``len(units)`` units: ``num_key_value_groups`` (what HF's forward reads), and
        ``num_heads``/``num_key_value_heads`` where a transformers version keeps them."""
        kv, per = self.kv_heads, self.q_per_kv
        if self.mode == "query":
            per -= len(units)
        else:
            kv -= len(units)
        for attr, value in (("num_key_value_groups", per), ("num_heads", kv * per),
                            ("num_key_value_heads", kv)):
            if attr == "num_key_value_groups" or isinstance(getattr(module, attr, None), int):
                setattr(module, attr, value)


def gqa_heads(name: str, module: nn.Module, mode: GQAMode) -> GQAHeads:
    """The :class:`GQAHeads` of an HF attention module in its current shapes.

    Example:
        >>> gqa_heads("model.layers.0.self_attn", attn, "kv_group").count  # doctest: +SKIP
        2
    """
    q, kv, head_dim = gqa_counts(module)
    return GQAHeads(module, name, mode, kv, q // kv, head_dim)


def gqa_items(DG: Any, heads: GQAHeads, names: Mapping[nn.Module, str]
              ) -> List[Tuple[str, Dependency, torch.Tensor, torch.Tensor]]:
    """The group's ``(module name, dependency, positions, root channels)``: q_proj rows (the
    root), o_proj columns, and with ``"kv_group"`` the k_proj and v_proj rows, each k/v row
    mapped to a root channel of the first query head of its KV group."""
    m = heads.module
    q_node = DG.module2node[m.q_proj]
    roots = torch.arange(heads.width)

    def dep(target: nn.Module, handler: Any) -> Dependency:
        return Dependency(F.prune_linear_out_channels, handler, q_node, DG.module2node[target])

    items = [(names[m.q_proj], dep(m.q_proj, F.prune_linear_out_channels), roots, roots)]
    if heads.mode == "kv_group":
        kv = torch.arange(heads.kv_heads * heads.head_dim)
        kv_roots = (kv // heads.head_dim) * heads.q_per_kv * heads.head_dim + kv % heads.head_dim
        items += [(names[p], dep(p, F.prune_linear_out_channels), kv, kv_roots)
                  for p in (m.k_proj, m.v_proj)]
    items.append((names[m.o_proj], dep(m.o_proj, F.prune_linear_in_channels), roots, roots))
    return items


class FixedGroup(Group):
    """An upstream :class:`~torch_pruning.dependency.Group` written from a known layout.

    Importance reads it like any group; :meth:`prune` runs each item's handler on the
    positions of the given root channels instead of searching the graph again.
    """

    def __init__(self, DG: Any, items: Sequence[Tuple[str, Dependency, torch.Tensor,
                                                     torch.Tensor]]) -> None:
        super().__init__()
        self._DG = DG
        self._items = list(items)
        for _, dep, idxs, roots in self._items:
            self.add_dep(dep, idxs.tolist())
            self._group[-1].root_idxs = roots.tolist()

    def prune(self, idxs: Any = None, record_history: bool = True) -> None:
        """Remove root channels ``idxs`` (all of the group's positions when None)."""
        gone = None
        if idxs is not None:
            gone = torch.zeros(int(self._items[0][3].max()) + 1, dtype=torch.bool)
            gone[torch.as_tensor(list(idxs), dtype=torch.long)] = True
        for _, dep, positions, roots in self._items:
            chosen = positions if gone is None else positions[gone[roots]]
            if chosen.numel():
                dep(chosen.tolist())

