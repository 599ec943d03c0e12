"""Consumers' input columns at zero: what removing their producers' channels computes, without
removing anything (the benchmark's masks with feedback and its measured widths use it).

A :data:`Columns` maps a consumer layer (conv or linear) to the input channels to zero.
"""

from __future__ import annotations

import contextlib
from typing import Dict, Iterator

import torch
from torch import nn

__all__ = ["Columns", "zero_columns", "put_back", "zeroed"]

Columns = Dict[nn.Module, torch.Tensor]  # consumer layer -> input channels to zero


def zero_columns(columns: Columns) -> Dict[nn.Module, torch.Tensor]:
    """Set the consumers' input ``columns`` to zero; what was there, for :func:`put_back`."""
    saved = {}
    with torch.no_grad():
        for layer, idx in columns.items():
            saved[layer] = layer.weight[:, idx].clone()
            layer.weight[:, idx] = 0
    return saved


def put_back(columns: Columns, saved: Dict[nn.Module, torch.Tensor]) -> None:
    """Put the ``saved`` values of ``columns`` back into the consumers' weights."""
    with torch.no_grad():
        for layer, values in saved.items():
            layer.weight[:, columns[layer]] = values


@contextlib.contextmanager
def zeroed(columns: Columns) -> Iterator[None]:
    """The consumers' input ``columns`` at zero inside the block, the weights put back after."""
    saved = zero_columns(columns)
    try:
        yield
    finally:
        put_back(columns, saved)
