"""Tiny transformer test models (inputs: ``(N, 3, 16, 16)``; ``HeadsTransformer``: ``(N, 6, 12)``).

:class:`TinyTransformer` is a patch-embedding conv, an ``nn.TransformerEncoder`` (two layers
with ``nn.MultiheadAttention`` and a ``Linear`` MLP) and a linear head: its MLP hidden layers
(``encoder.layers.<i>.linear1``) are the prunable groups. torchvision's ``vit_b_16`` at
``image_size=32`` covers a real architecture in the tests.
"""

from __future__ import annotations

from typing import Any, Dict

import torch
from torch import nn

__all__ = ["TinyTransformer", "HandwrittenAttention", "HeadsAttention", "HeadsTransformer",
           "MLP_LAYERS", "ATTENTION_LAYERS", "vit_mlp_layers", "one_epoch_config", "eval_outputs"]


def one_epoch_config(layers: Any, **fields: Any) -> Dict[str, Any]:
    """A channel-only config that masks ``global_prune_rate`` 0.5 of ``layers`` at epoch 0."""
    cfg = dict(start_epoch=0, end_epoch=0, global_prune_rate=0.5, mac_target=0.0,
               prune_at_target=False, layers=layers, regularize={"reg": 1e-3})
    cfg.update(fields)
    return {"channel_sparsity_args": cfg}


def eval_outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``model(x)`` in eval mode without gradients."""
    model.eval()
    with torch.no_grad():
        return model(x)


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
    in ``q @ k`` and ``attn @ v``, so they are pruned by whole heads (``self.heads`` on the model
    itself is the head count)."""

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


class HeadsAttention(nn.Module):
    """Attention with Linear projections and a ``num_heads`` attribute, in the usual layouts.

    ``fused``: one ``qkv`` Linear laid out ``(3, heads, head_dim)`` (timm); else ``q_proj``,
    ``k_proj``, ``v_proj`` (Hugging Face). ``sdpa``: ``scaled_dot_product_attention`` instead of
    ``q @ k`` / ``attn @ v``. ``interleaved``: a fused ``qkv`` laid out ``(heads, 3, head_dim)``
    (GPT-NeoX). ``input_width``: the output reshaped with the input's width ``C`` (timm's
    own forward), which breaks once heads are removed.
    """

    def __init__(self, dim: int = 24, num_heads: int = 4, fused: bool = True, sdpa: bool = False,
                 interleaved: bool = False, input_width: bool = False) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.fused, self.sdpa, self.interleaved, self.input_width = (
            fused or interleaved, sdpa, interleaved, input_width)
        if self.fused:
            self.qkv = nn.Linear(dim, 3 * dim)
        else:
            self.q_proj, self.k_proj, self.v_proj = (nn.Linear(dim, dim) for _ in range(3))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        if self.interleaved:
            q, k, v = self.qkv(x).view(b, n, self.num_heads, 3, self.head_dim).permute(
                3, 0, 2, 1, 4).unbind(0)
        elif self.fused:
            q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(
                2, 0, 3, 1, 4).unbind(0)
        else:
            q, k, v = (f(x).view(b, n, self.num_heads, self.head_dim).transpose(1, 2)
                       for f in (self.q_proj, self.k_proj, self.v_proj))
        if self.sdpa:
            out = nn.functional.scaled_dot_product_attention(q, k, v)
        else:
            out = (q @ k.transpose(-2, -1) * self.head_dim ** -0.5).softmax(-1) @ v
        return self.proj(out.transpose(1, 2).reshape(b, n, c if self.input_width else -1))


class HeadsTransformer(nn.Module):
    """Linear token embedding, ``depth`` pre-norm blocks (:class:`HeadsAttention` + a GELU MLP
    ``fc1`` -> ``fc2``), mean pooling and a head; inputs ``(N, 6, 12)``."""

    def __init__(self, depth: int = 2, dim: int = 24, num_heads: int = 4, num_classes: int = 5,
                 **attention: bool) -> None:
        super().__init__()
        self.embed = nn.Linear(12, dim)
        self.blocks = nn.ModuleList()
        for _ in range(depth):
            block = nn.Module()
            block.norm1, block.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
            block.attn = HeadsAttention(dim, num_heads, **attention)
            block.fc1, block.fc2 = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)
            self.blocks.append(block)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        for block in self.blocks:
            x = x + block.attn(block.norm1(x))
            x = x + block.fc2(nn.functional.gelu(block.fc1(block.norm2(x))))
        return self.head(x.mean(1))
