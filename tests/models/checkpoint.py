"""Tiny models for the checkpoint tests, one per layer family ``load_state_dict_pruned`` rebuilds.

Every model takes a ``width``: ``Model(width=3)`` has exactly the shapes a pruned
``Model(width=6)`` has, which lets a test build "the pruned model" without any pruner. Each
class also says which input it expects (``example_input``) and which layers a pruner must leave
alone (``ignored``: the output layer).
"""

from __future__ import annotations

from typing import List

import torch
from torch import nn


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give norm layers non-trivial affine parameters and running statistics.

    Freshly built norms have weight 1, bias 0, mean 0 and var 1, so a round trip that loaded
    them wrongly (or not at all) would still pass; random values make the outputs depend on
    them, and make magnitude importance rank channels non-trivially.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            for name in ("running_mean", "bias"):
                tensor = getattr(module, name, None)
                if isinstance(tensor, torch.Tensor) and tensor.dtype.is_floating_point:
                    tensor.copy_(torch.randn(tensor.shape, generator=gen) * 0.1)
            if isinstance(module, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)):
                for name in ("weight", "running_var"):
                    tensor = getattr(module, name, None)
                    if isinstance(tensor, torch.Tensor):
                        tensor.copy_(torch.rand(tensor.shape, generator=gen) + 0.5)
    return model


class Conv1dNet(nn.Module):
    """Conv1d -> BatchNorm1d -> PReLU(per channel) -> Conv1d, on (N, 3, L)."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.conv = nn.Conv1d(3, width, 3, padding=1)
        self.bn = nn.BatchNorm1d(width)
        self.act = nn.PReLU(width)
        self.head = nn.Conv1d(width, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.bn(self.conv(x))))

    @staticmethod
    def example_input() -> torch.Tensor:
        return torch.randn(2, 3, 10)

    def ignored(self) -> List[nn.Module]:
        return [self.head]


class Conv3dNet(nn.Module):
    """Conv3d -> InstanceNorm3d(affine, running stats) -> ReLU -> Conv3d, on (N, 2, D, H, W)."""

    def __init__(self, width: int = 8, running_stats: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv3d(2, width, 3)
        self.norm = nn.InstanceNorm3d(width, affine=True, track_running_stats=running_stats)
        self.head = nn.Conv3d(width, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.norm(self.conv(x))))

    @staticmethod
    def example_input() -> torch.Tensor:
        return torch.randn(1, 2, 5, 5, 5)

    def ignored(self) -> List[nn.Module]:
        return [self.head]


class GroupedConvNet(nn.Module):
    """Conv2d -> GroupNorm(4) -> grouped conv (4 groups) -> BN -> depthwise conv with channel
    ``multiplier`` -> 1x1 conv, on (N, 3, H, W). Channels are multiples of 4."""

    def __init__(self, width: int = 4, multiplier: int = 2) -> None:
        super().__init__()
        c = 4 * width
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.gn = nn.GroupNorm(4, c)
        self.grouped = nn.Conv2d(c, c, 3, padding=1, groups=4, bias=False)
        self.bn = nn.BatchNorm2d(c)
        self.depthwise = nn.Conv2d(c, multiplier * c, 3, padding=1, groups=c)
        self.head = nn.Conv2d(multiplier * c, 5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.gn(self.stem(x)))
        return self.head(self.depthwise(self.bn(self.grouped(x))))

    @staticmethod
    def example_input() -> torch.Tensor:
        return torch.randn(1, 3, 8, 8)

    def ignored(self) -> List[nn.Module]:
        return [self.head]


class ConvTransposeNet(nn.Module):
    """Conv2d -> ConvTranspose2d -> BN -> grouped ConvTranspose2d (``groups``) -> depthwise
    ConvTranspose2d -> ConvTranspose1d over the flattened map, on (N, 3, H, W)."""

    def __init__(self, width: int = 4, groups: int = 2) -> None:
        super().__init__()
        c = 2 * width
        self.down = nn.Conv2d(3, c, 3, stride=2)
        self.up = nn.ConvTranspose2d(c, c, 3, stride=2)
        self.bn = nn.BatchNorm2d(c)
        self.grouped = nn.ConvTranspose2d(c, c, 3, groups=groups)
        self.depthwise = nn.ConvTranspose2d(c, c, 3, groups=c)
        self.head = nn.ConvTranspose1d(c, 3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.depthwise(self.grouped(self.bn(self.up(self.down(x)))))
        return self.head(x.flatten(2))

    @staticmethod
    def example_input() -> torch.Tensor:
        return torch.randn(1, 3, 9, 9)

    def ignored(self) -> List[nn.Module]:
        return [self.head]


class LayerNormMLP(nn.Module):
    """Linear -> LayerNorm -> GELU -> Linear, on (N, 6)."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, width)
        self.norm = nn.LayerNorm(width)
        self.fc2 = nn.Linear(width, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(nn.functional.gelu(self.norm(self.fc1(x))))

    @staticmethod
    def example_input() -> torch.Tensor:
        return torch.randn(2, 6)

    def ignored(self) -> List[nn.Module]:
        return [self.fc2]


class EmbeddingNet(nn.Module):
    """Embedding(20 tokens, padding_idx=0) -> LayerNorm -> mean over tokens -> Linear."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.emb = nn.Embedding(20, width, padding_idx=0)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.emb(x)).mean(1))

    @staticmethod
    def example_input() -> torch.Tensor:
        return torch.randint(0, 20, (2, 5))

    def ignored(self) -> List[nn.Module]:
        return [self.head]


class AttentionNet(nn.Module):
    """Linear -> MultiheadAttention (2 heads, bias_k/v) -> LayerNorm -> Linear, on (N, S, 6);
    ``embed_dim = 2 * width``."""

    def __init__(self, width: int = 4) -> None:
        super().__init__()
        dim = 2 * width
        self.proj = nn.Linear(6, dim)
        self.attn = nn.MultiheadAttention(dim, 2, batch_first=True, add_bias_kv=True)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)
        return self.head(self.norm(x + self.attn(x, x, x, need_weights=False)[0]))

    @staticmethod
    def example_input() -> torch.Tensor:
        return torch.randn(2, 4, 6)

    def ignored(self) -> List[nn.Module]:
        return [self.head]


class CrossAttentionNet(nn.Module):
    """MultiheadAttention with its own key/value sizes (separate q/k/v projections)."""

    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.proj = nn.Linear(6, 2 * width)
        self.attn = nn.MultiheadAttention(2 * width, 2, kdim=5, vdim=7, batch_first=True)
        self.head = nn.Linear(2 * width, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self.proj(x)
        k, v = x[..., :5], torch.cat([x, x[..., :1]], -1)
        return self.head(self.attn(q, k, v, need_weights=False)[0])

    @staticmethod
    def example_input() -> torch.Tensor:
        return torch.randn(2, 4, 6)

    def ignored(self) -> List[nn.Module]:
        return [self.head]


class TransformerNet(nn.Module):
    """torch's TransformerEncoderLayer (attention, feed-forward Linears, LayerNorms)."""

    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.proj = nn.Linear(6, 2 * width)
        self.layer = nn.TransformerEncoderLayer(2 * width, 2, dim_feedforward=3 * width,
                                                dropout=0.0, batch_first=True)
        self.head = nn.Linear(2 * width, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layer(self.proj(x)))

    @staticmethod
    def example_input() -> torch.Tensor:
        return torch.randn(2, 4, 6)

    def ignored(self) -> List[nn.Module]:
        return [self.head]


class ScaleTokenNet(nn.Module):
    """A user-defined block with plain parameters (a per-channel scale like ConvNeXt's
    ``layer_scale`` and a token like ViT's ``class_token``) that follow the channel count."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3)
        self.scale = nn.Parameter(torch.rand(1, width, 1, 1) + 0.5)
        self.token = nn.Parameter(torch.randn(1, width))
        self.head = nn.Linear(width, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head((self.conv(x) * self.scale).mean((2, 3)) + self.token)

    @staticmethod
    def example_input() -> torch.Tensor:
        return torch.randn(1, 3, 6, 6)

    def ignored(self) -> List[nn.Module]:
        return [self.head]


class TiedEmbeddingLM(nn.Module):
    """A language-model head that shares its weight with the input embedding."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.emb = nn.Embedding(20, width)
        self.out = nn.Linear(width, 20, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.emb(x))

    @staticmethod
    def example_input() -> torch.Tensor:
        return torch.randint(0, 20, (2, 5))


class RecurrentNet(nn.Module):
    """Linear -> LSTM: an LSTM is a layer ``load_state_dict_pruned`` cannot rebuild."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.fc = nn.Linear(6, width)
        self.rnn = nn.LSTM(width, width, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rnn(self.fc(x))[0]


#: The models whose every layer the loader can rebuild.
REBUILDABLE = [Conv1dNet, Conv3dNet, GroupedConvNet, ConvTransposeNet, LayerNormMLP, EmbeddingNet,
               AttentionNet, CrossAttentionNet, TransformerNet, ScaleTokenNet]
