"""Tiny transformer test models (inputs: ``(N, 3, 16, 16)``).

:class:`TinyTransformer` is a patch-embedding conv, an ``nn.TransformerEncoder`` (two layers
with ``nn.MultiheadAttention`` and a ``Linear`` MLP) and a linear head: its MLP hidden layers
(``encoder.layers.<i>.linear1``) are the prunable groups. torchvision's ``vit_b_16`` at
``image_size=32`` covers a real architecture in the tests.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["TinyTransformer", "HandwrittenAttention", "MLP_LAYERS", "ATTENTION_LAYERS",
           "vit_mlp_layers"]


class TinyTransformer(nn.Module):
    """Conv patch embedding (4x4 patches), learned positions, a 2-layer post-norm
    ``nn.TransformerEncoder`` (d_model 32, 4 heads, feed-forward 64), mean pooling, a head."""

    def __init__(self, num_classes: int = 10, dim: int = 32, heads: int = 4,
                 hidden: int = 64, depth: int = 2, patches: int = 16) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, dim, 4, stride=4)
        self.pos = nn.Parameter(torch.zeros(1, patches, dim))
        layer = nn.TransformerEncoderLayer(dim, heads, hidden, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x).flatten(2).transpose(1, 2) + self.pos
        return self.head(self.encoder(tokens).mean(1))


#: The MLP hidden layers of :class:`TinyTransformer` (prunable Linear groups).
MLP_LAYERS = ["encoder.layers.0.linear1", "encoder.layers.1.linear1"]
#: Its attention modules (heads are not pruned; listing them is logged and skipped).
ATTENTION_LAYERS = ["encoder.layers.0.self_attn", "encoder.layers.1.self_attn"]


def vit_mlp_layers(depth: int) -> list:
    """The MLP hidden Linear layers of torchvision's VisionTransformer encoder blocks."""
    return [f"encoder.layers.encoder_layer_{i}.mlp.0" for i in range(depth)]


class HandwrittenAttention(nn.Module):
    """Attention written with ``Linear`` layers (``q``, ``k``, ``v``, ``o``; 4 heads of 4) on
    ``(N, 5, 16)`` tokens, then an MLP (``fc1`` -> ``fc2``) and a head: the q/k/v channels meet
    in ``q @ k`` and ``attn @ v``, so only ``fc1`` is prunable exactly."""

    def __init__(self, dim: int = 16, heads: int = 4, num_classes: int = 3) -> None:
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.fc1, self.fc2 = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = (f(x).view(b, n, self.heads, -1).transpose(1, 2)
                   for f in (self.q, self.k, self.v))
        attn = (q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5).softmax(-1)
        x = x + self.o((attn @ v).transpose(1, 2).reshape(b, n, -1))
        x = x + self.fc2(torch.relu(self.fc1(x)))
        return self.head(x.mean(1))
