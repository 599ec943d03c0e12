"""Slice sparsity: the per-layer report, its log lines and the export for hardware toolchains.

Counting rules (the same ones the pruner's schedule uses):

* ``total``: slices of the layer that are not all-zero because of channel masks;
* ``eligible``: ``total`` minus slices protected by ``disable_first_index`` (x == 0);
* ``zero``: slices masked by the slice pruner (exactly zero, for good);
* ``fraction``: ``zero / eligible`` (0.0 when nothing is eligible): the quantity that reaches
  ``prune_rate`` at ``end_epoch``.

Export format (:func:`export_slices`, JSON, ``"format": "torch-pruning-pat.slice-masks"``,
``"version": 1``) — see ``docs/slice_pruning.md`` for a worked example::

    {"format": ..., "version": 1, "disable_first_index": bool,
     "overall": {"zero", "total", "eligible", "fraction"},
     "layers": [{"name", "weight_shape": [C_out, C_in, H, W], "groups", "depthwise",
                 "block_size": A, "num_blocks": B,
                 "blocks": [[filter index] * A] * B,          # hardware order
                 "keep": nested [B][C_in][H][W] of 0/1,        # 0 = slice is all-zero by mask
                 "zero", "total", "eligible", "fraction"}],
     "skipped": [{"name", "reason"}]}
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Union

import torch

from ..util.io import atomic_write_text
from .layout import SliceLayout

__all__ = ["LayerSlices", "EXPORT_FORMAT", "EXPORT_VERSION", "slice_sparsity",
           "sparsity_lines", "export_slices"]

EXPORT_FORMAT = "torch-pruning-pat.slice-masks"
EXPORT_VERSION = 1


@dataclass
class LayerSlices:
    """The slice state of one layer: layout plus per-slice flags (all ``[S]`` bool tensors).

    ``layout`` is None when the layer is skipped; ``reason`` then says why.
    """

    name: str
    weight_shape: tuple
    groups: int
    depthwise: bool
    block_size: int
    layout: Optional[SliceLayout] = None
    protected: Optional[torch.Tensor] = None
    dead: Optional[torch.Tensor] = None
    pruned: Optional[torch.Tensor] = None
    reason: str = ""

    def counts(self) -> Dict[str, Union[int, float]]:
        """``zero``, ``total``, ``eligible``, ``fraction`` of this layer (see module docs)."""
        if self.layout is None:
            return {"zero": 0, "total": 0, "eligible": 0, "fraction": 0.0}
        alive = ~self.dead
        eligible = alive & ~self.protected
        zero = int((self.pruned & alive).sum())
        n_elig = int(eligible.sum())
        return {"zero": zero, "total": int(alive.sum()), "eligible": n_elig,
                "fraction": zero / n_elig if n_elig else 0.0}


def slice_sparsity(layers: Sequence[LayerSlices]) -> Dict[str, Any]:
    """Per-layer and overall slice sparsity.

    Returns ``{"layers": {name: {"zero", "total", "eligible", "fraction", "block_size"}},
    "overall": {"zero", "total", "eligible", "fraction"}, "skipped": {name: reason}}``.

    Example:
        >>> slice_sparsity([])["overall"]
        {'zero': 0, 'total': 0, 'eligible': 0, 'fraction': 0.0}
    """
    per_layer: Dict[str, Dict[str, Any]] = {}
    skipped: Dict[str, str] = {}
    zero = total = eligible = 0
    for rec in layers:
        if rec.layout is None:
            skipped[rec.name] = rec.reason
            continue
        c = rec.counts()
        per_layer[rec.name] = dict(c, block_size=rec.block_size)
        zero += int(c["zero"])
        total += int(c["total"])
        eligible += int(c["eligible"])
    overall = {"zero": zero, "total": total, "eligible": eligible,
               "fraction": zero / eligible if eligible else 0.0}
    return {"layers": per_layer, "overall": overall, "skipped": skipped}


def sparsity_lines(sparsity: Dict[str, Any], epoch: Optional[int] = None) -> List[str]:
    """The log lines for a :func:`slice_sparsity` dict: one per layer, then the overall line.

    Example:
        >>> sparsity_lines(slice_sparsity([]))
        ['Slice sparsity overall: 0/0 eligible slices zero (0.0%)']
    """
    lines = []
    for name, c in sparsity["layers"].items():
        lines.append(f"Slice sparsity {name}: {c['zero']}/{c['eligible']} eligible slices zero "
                     f"({100 * c['fraction']:.1f}%, {c['total']} slices, A={c['block_size']})")
    o = sparsity["overall"]
    at = f" at epoch {epoch}" if epoch is not None else ""
    lines.append(f"Slice sparsity overall{at}: {o['zero']}/{o['eligible']} eligible slices zero "
                 f"({100 * o['fraction']:.1f}%)")
    return lines


def _layer_entry(rec: LayerSlices) -> Dict[str, Any]:
    lay = rec.layout
    if lay is None:
        raise ValueError(f"layer '{rec.name}' has no slice layout: {rec.reason}")
    keep = ~(rec.pruned | rec.dead)
    entry: Dict[str, Any] = {
        "name": rec.name, "weight_shape": list(rec.weight_shape), "groups": rec.groups,
        "depthwise": rec.depthwise, "block_size": lay.block_size, "num_blocks": lay.num_blocks,
        "blocks": lay.blocks.cpu().tolist(),
        "keep": keep.to(torch.uint8).view(lay.grid_shape).cpu().tolist(),
    }
    entry.update(rec.counts())
    return entry


def export_slices(path: Union[str, "os.PathLike[str]"], layers: Sequence[LayerSlices], *,
                  disable_first_index: bool) -> None:
    """Write the layout and masks of every layer to ``path`` as JSON (format in module docs).

    The file is written atomically. Slice ``(b, c_in, y, x)`` of a layer holds the weights
    ``weight[blocks[b][a], c_in, y, x]`` for ``a`` in ``0..A-1``.
    """
    doc = {
        "format": EXPORT_FORMAT, "version": EXPORT_VERSION,
        "disable_first_index": disable_first_index,
        "overall": slice_sparsity(layers)["overall"],
        "layers": [_layer_entry(r) for r in layers if r.layout is not None],
        "skipped": [{"name": r.name, "reason": r.reason} for r in layers if r.layout is None],
    }
    atomic_write_text(path, json.dumps(doc, separators=(",", ":")) + "\n")
