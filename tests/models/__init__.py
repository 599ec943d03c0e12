"""Tiny test models, one coupling pattern each (inputs: ``(N, 3, H, W)``, H and W >= 8).

The one home of the test models: this module holds the CNNs and the user-layer building block
``ChannelScale``; ``models.checkpoint`` (layer types for checkpoint rebuilds), ``models.slice``,
``models.transformer`` and ``models.unet`` hold the rest. Each model is small enough to trace,
train and count in milliseconds on a CPU; torchvision's ResNet and MobileNet cover real
architectures in the tests that need breadth.
"""

from __future__ import annotations

from typing import Callable, Dict

import torch
from torch import nn

__all__ = ["SmallCNN", "ResidualCNN", "ConcatCNN", "DepthwiseCNN", "GroupedCNN",
           "TwinBranchCNN", "TwoInputNet", "DecoderCNN", "ChannelScale", "NormFreeCNN",
           "MODELS"]


def _cbr(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SmallCNN(nn.Module):
    """A plain chain: three conv-BN-ReLU blocks, global pooling, a linear head.

    Groups: ``features.0.0`` (-> ``features.1.0``), ``features.1.0`` (-> ``features.2.0``),
    ``features.2.0`` (-> ``fc`` input).
    """

    def __init__(self, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        self.features = nn.Sequential(_cbr(3, width), _cbr(width, 2 * width, stride=2),
                                      _cbr(2 * width, 2 * width))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


class ResidualCNN(nn.Module):
    """A stem and two identity residual blocks: the stem and both block outputs are coupled
    (one group), each block's inner conv is its own group."""

    def __init__(self, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        self.stem = _cbr(3, width)
        self.block1 = nn.Sequential(_cbr(width, width), nn.Conv2d(width, width, 3, 1, 1),
                                    nn.BatchNorm2d(width))
        self.block2 = nn.Sequential(_cbr(width, width), nn.Conv2d(width, width, 3, 1, 1),
                                    nn.BatchNorm2d(width))
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(x + self.block1(x))
        x = torch.relu(x + self.block2(x))
        return self.fc(x.mean((2, 3)))


class ConcatCNN(nn.Module):
    """Two branches concatenated along channels, then a 1x1 fuse conv and a flattening head:
    the fuse conv's input slices come from two groups (concat index mapping), the head's input
    from a flatten (flatten index mapping)."""

    def __init__(self, num_classes: int = 10, width: int = 8) -> None:
        super().__init__()
        self.stem = _cbr(3, width)
        self.left = _cbr(width, width)
        self.right = _cbr(width, 2 * width, k=1)
        self.fuse = _cbr(3 * width, 2 * width, k=1)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(2 * width * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.fuse(torch.cat([self.left(x), self.right(x)], dim=1))
        return self.fc(torch.flatten(self.pool(x), 1))


class DepthwiseCNN(nn.Module):
    """A MobileNetV2-style inverted residual: 1x1 expand, 3x3 depthwise, 1x1 project, with the
    depthwise conv and its BN following the expand conv's group."""

    def __init__(self, num_classes: int = 10, width: int = 8, expand: int = 4) -> None:
        super().__init__()
        hidden = width * expand
        self.stem = _cbr(3, width)
        self.expand = _cbr(width, hidden, k=1)
        self.depthwise = _cbr(hidden, hidden, groups=hidden)
        self.project = nn.Sequential(nn.Conv2d(hidden, width, 1, bias=False), nn.BatchNorm2d(width))
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.project(self.depthwise(self.expand(x)))
        return self.fc(x.mean((2, 3)))


class GroupedCNN(nn.Module):
    """A grouped 3x3 conv (4 groups) between two convs, with GroupNorm: its group is pruned in
    units of the same channel index in every one of the 4 channel groups."""

    def __init__(self, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.GroupNorm(4, width),
                                  nn.ReLU())
        self.grouped = nn.Sequential(nn.Conv2d(width, width, 3, padding=1, groups=4),
                                     nn.GroupNorm(4, width), nn.ReLU())
        self.head = nn.Conv2d(width, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.grouped(self.stem(x))).mean((2, 3))


class TwinBranchCNN(nn.Module):
    """Two parallel branches of 4 channels each, a cheap 1x1 (``cheap``) and a 3x3 (``costly``,
    9x the MACs), concatenated into a 1x1 ``fuse`` conv. :meth:`equalize` gives both branches
    identical per-channel weight norms, so only their MAC cost tells them apart."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.cheap = nn.Sequential(nn.Conv2d(3, 4, 1, bias=False), nn.BatchNorm2d(4), nn.ReLU())
        self.costly = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4),
                                    nn.ReLU())
        self.fuse = nn.Conv2d(8, num_classes, 1)

    def equalize(self) -> TwinBranchCNN:
        """Copy ``cheap``'s weights into the centre tap of ``costly`` (equal channel norms)."""
        with torch.no_grad():
            self.costly[0].weight.zero_()
            self.costly[0].weight[:, :, 1, 1] = self.cheap[0].weight[:, :, 0, 0]
            self.fuse.weight[:, 4:] = self.fuse.weight[:, :4]
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(torch.cat([self.cheap(x), self.costly(x)], 1)).mean((2, 3))


class TwoInputNet(nn.Module):
    """A detector-like model: two images through separate stems, summed, and a dict output
    (``{"logits": ..., "features": ...}``) that a ``forward_fn`` has to pick from."""

    def __init__(self, num_classes: int = 10, width: int = 8) -> None:
        super().__init__()
        self.stem_a = _cbr(3, width)
        self.stem_b = _cbr(1, width)
        self.body = _cbr(width, 2 * width, stride=2)
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, image: torch.Tensor, depth: torch.Tensor) -> Dict[str, torch.Tensor]:
        features = self.body(self.stem_a(image) + self.stem_b(depth))
        return {"logits": self.head(features.mean((2, 3))), "features": features.detach()}

    def logits(self, image: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
        """The seed's ``forward_fn`` form: a bound method taking the inputs."""
        return self.forward(image, depth)["logits"]


class ChannelScale(nn.Module):
    """A user layer no upstream pruner knows: a learnable scale per channel (``alpha``, shaped
    ``(1, C, 1, 1)``) and its size in a plain int attribute, for inputs ``(N, C, ...)``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.alpha = nn.Parameter(torch.rand(1, channels, 1, 1) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.alpha.view(1, self.channels, *([1] * (x.dim() - 2)))


class DecoderCNN(nn.Module):
    """A strided conv, a ``ConvTranspose2d`` upsampling back (its output channels are a group,
    stored in weight dim 1), and an MLP head whose hidden ``Linear`` is a group of its own."""

    def __init__(self, num_classes: int = 10, width: int = 8) -> None:
        super().__init__()
        self.down = _cbr(3, 2 * width, stride=2)
        self.up = nn.Sequential(nn.ConvTranspose2d(2 * width, width, 2, stride=2),
                                nn.BatchNorm2d(width), nn.ReLU())
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.ReLU(),
                                 nn.Linear(4 * width, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.up(self.down(x)).mean((2, 3)))


#: name -> constructor, for parametrized tests.
class NormFreeCNN(nn.Module):
    """Conv-ReLU blocks without any normalization, an identity residual and a 5-class head.

    No BatchNorm, so splitting a batch across processes changes nothing: the model of the
    data-parallel equivalence tests (two FSDP2 ranks against one process). Groups: ``stem``
    with ``block.2`` (coupled by the residual), ``block.0``, ``down``. The head's 5 rows shard
    unevenly (3 + 2) over two ranks.
    """

    def __init__(self, width: int = 12) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.block = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
                                   nn.Conv2d(width, width, 3, padding=1))
        self.down = nn.Conv2d(width, 2 * width - 4, 3, stride=2, padding=1)
        self.fc = nn.Linear(2 * width - 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = torch.relu(x + self.block(x))
        x = torch.relu(self.down(x))
        return self.fc(x.mean((2, 3)))


MODELS: Dict[str, Callable[[], nn.Module]] = {
    "small": SmallCNN, "residual": ResidualCNN, "concat": ConcatCNN,
    "depthwise": DepthwiseCNN, "grouped": GroupedCNN, "decoder": DecoderCNN,
}
