"""Tiny test models and helpers for the slice pruner tests.

``MixedConvNet`` has every conv kind the slice pruner must handle; with ``block_size=4`` and
``depthwise_block_size=2`` all convs but ``odd`` fill whole blocks.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from torch_pruning.pat.core.masks import MaskSet

__all__ = ["MixedConvNet", "ChainNet", "mask_channels", "SLICE_LAYERS"]

#: The convs of MixedConvNet that fill whole blocks of 4 (depthwise: 2).
SLICE_LAYERS = ["stem", "pw", "k5", "grouped", "dw", "rect", "k7"]


class MixedConvNet(nn.Module):
    """3x3, 1x1, 5x5, grouped, depthwise, 1x3, 7x7 convs and one whose 6 filters fill no blocks.

    Input ``[N, 3, 8, 8]``, output ``[N, 10]``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.pw = nn.Conv2d(16, 16, 1)
        self.k5 = nn.Conv2d(16, 16, 5, padding=2)
        self.grouped = nn.Conv2d(16, 16, 3, padding=1, groups=4)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.rect = nn.Conv2d(16, 8, (1, 3), padding=(0, 1))
        self.k7 = nn.Conv2d(8, 8, 7, padding=3)
        self.odd = nn.Conv2d(8, 6, 3, padding=1)
        self.head = nn.Linear(6, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in (self.stem, self.pw, self.k5, self.grouped, self.dw, self.rect, self.k7,
                     self.odd):
            x = torch.relu(conv(x))
        return self.head(x.mean((2, 3)))


class ChainNet(nn.Module):
    """``c1`` (3->16, 3x3) -> ``c2`` (16->16, 3x3) -> ``c3`` (16->8, 1x1) -> linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3, padding=1)
        self.c2 = nn.Conv2d(16, 16, 3, padding=1)
        self.c3 = nn.Conv2d(16, 8, 1)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.c1(x))
        x = torch.relu(self.c2(x))
        x = torch.relu(self.c3(x))
        return self.head(x.mean((2, 3)))


def mask_channels(masks: MaskSet, producer: nn.Conv2d, consumer: nn.Conv2d,
                  idxs: Sequence[int]) -> None:
    """Channel-mask output channels ``idxs`` of ``producer`` as the channel pruner would."""
    idxs = list(idxs)
    keep_w = torch.ones_like(producer.weight, dtype=torch.bool)
    keep_w[idxs] = False
    masks.update("channel", producer, "weight", keep_w)
    if producer.bias is not None:
        keep_b = torch.ones_like(producer.bias, dtype=torch.bool)
        keep_b[idxs] = False
        masks.update("channel", producer, "bias", keep_b)
    keep_in = torch.ones_like(consumer.weight, dtype=torch.bool)
    keep_in[:, idxs] = False
    masks.update("channel", consumer, "weight", keep_in)
