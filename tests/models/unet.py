"""A tiny U-Net (inputs: ``(N, 3, H, W)``, H and W multiples of 4; output ``(N, 2, H, W)``).

Two encoder levels, a bottleneck, and two decoder levels that upsample with ``ConvTranspose2d``
and concatenate the skip connection along channels. Transposed convs are pruned in both
directions: as consumers (``up*``'s *input* channels follow the group of the conv before them,
stored in weight dim 0) and as producers (``up*``'s *output* channels are groups of their own,
stored in weight dim 1, feeding the decoder conv through the concatenation).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["TinyUNet", "UNET_LAYERS"]


def _cbr(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU())


def _up(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.ConvTranspose2d(cin, cout, 2, stride=2), nn.BatchNorm2d(cout),
                         nn.ReLU())


class TinyUNet(nn.Module):
    """enc1 (8) -> pool -> enc2 (16) -> pool -> mid (32) -> up2 (16) ++ enc2 -> dec2 (16)
    -> up1 (8) ++ enc1 -> dec1 (8) -> 1x1 head (``classes`` channels, a model output)."""

    def __init__(self, classes: int = 2, width: int = 8) -> None:
        super().__init__()
        w = width
        self.enc1, self.enc2, self.mid = _cbr(3, w), _cbr(w, 2 * w), _cbr(2 * w, 4 * w)
        self.pool = nn.MaxPool2d(2)
        self.up2, self.dec2 = _up(4 * w, 2 * w), _cbr(4 * w, 2 * w)
        self.up1, self.dec1 = _up(2 * w, w), _cbr(2 * w, w)
        self.head = nn.Conv2d(w, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool(e1))
        m = self.mid(self.pool(e2))
        d2 = self.dec2(torch.cat([self.up2(m), e2], 1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], 1))
        return self.head(d1)


#: Every prunable layer of :class:`TinyUNet` (the head's channels are the model output).
UNET_LAYERS = ["enc1.0", "enc2.0", "mid.0", "up2.0", "dec2.0", "up1.0", "dec1.0"]
