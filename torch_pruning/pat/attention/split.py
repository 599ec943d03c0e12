"""``nn.MultiheadAttention`` rewritten with separate q/k/v ``Linear`` layers, so heads are prunable.

``nn.MultiheadAttention`` keeps q, k and v in one ``in_proj_weight`` parameter and ties every
head's width to the embedding dimension, so neither upstream nor the channel pruner can remove
whole heads from it. :func:`split_multihead_attention` replaces each one in a model by a
:class:`SplitMultiheadAttention` holding the same weights in ``q_proj``, ``k_proj``, ``v_proj``
and ``out_proj`` and a ``num_heads`` attribute: it computes the same outputs (same call
signature, masks, ``batch_first``, dropout), and the channel pruner then prunes its heads whole
(see :mod:`torch_pruning.pat.attention.heads`).

Example:
    >>> vit = torchvision.models.vit_b_16(weights=None, image_size=32)  # doctest: +SKIP
    >>> split_multihead_attention(vit)[:1]  # doctest: +SKIP
    ['encoder.layers.encoder_layer_0.self_attention']

Convert the model *before* building :class:`~torch_pruning.pat.facade.Pruning`, after loading
pretrained ``nn.MultiheadAttention`` weights; convert a fresh model the same way before
``load_state_dict_pruned`` of a head-pruned checkpoint.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["SplitMultiheadAttention", "split_multihead_attention"]


def _additive(mask: Optional[torch.Tensor], dtype: torch.dtype) -> Optional[torch.Tensor]:
    """A boolean mask (True = not attended) as an additive float mask; float masks as they are."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(
            mask, float("-inf"))
    return mask.to(dtype)


class SplitMultiheadAttention(nn.Module):
    """Multi-head attention with ``q_proj``/``k_proj``/``v_proj``/``out_proj`` Linear layers.

    Called like ``nn.MultiheadAttention``; returns ``(output, weights or None)``.
    """

    # nn.TransformerEncoderLayer's fused fast path reads these; they keep it off (the fast path
    # needs nn.MultiheadAttention's packed weights).
    in_proj_bias = None
    _qkv_same_embed_dim = False

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True,
                 kdim: Optional[int] = None, vdim: Optional[int] = None,
                 batch_first: bool = False, device: Optional[torch.device] = None,
                 dtype: Optional[torch.dtype] = None) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, embed_dim // num_heads
        self.dropout, self.batch_first = dropout, batch_first
        make = dict(bias=bias, device=device, dtype=dtype)
        self.q_proj = nn.Linear(embed_dim, embed_dim, **make)
        self.k_proj = nn.Linear(kdim or embed_dim, embed_dim, **make)
        self.v_proj = nn.Linear(vdim or embed_dim, embed_dim, **make)
        self.out_proj = nn.Linear(embed_dim, embed_dim, **make)

    @classmethod
    @torch.no_grad()
    def from_multihead(cls, mha: nn.MultiheadAttention) -> "SplitMultiheadAttention":
        """The same attention, weights copied from ``mha`` (its ``out_proj`` module is reused).

        Raises ValueError for ``add_bias_kv`` / ``add_zero_attn``, which have no split form here.
        """
        if mha.bias_k is not None or mha.add_zero_attn:
            raise ValueError("nn.MultiheadAttention with add_bias_kv or add_zero_attn cannot be "
                             "split into q/k/v Linear layers")
        ref = mha.out_proj.weight
        split = cls(mha.embed_dim, mha.num_heads, mha.dropout, mha.in_proj_bias is not None,
                    mha.kdim, mha.vdim, mha.batch_first, device=ref.device, dtype=ref.dtype)
        e = mha.embed_dim
        weights = ((mha.in_proj_weight[:e], mha.in_proj_weight[e:2 * e], mha.in_proj_weight[2 * e:])
                   if mha._qkv_same_embed_dim else
                   (mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight))
        for i, (proj, w) in enumerate(zip((split.q_proj, split.k_proj, split.v_proj), weights)):
            proj.weight.copy_(w)
            if mha.in_proj_bias is not None:
                proj.bias.copy_(mha.in_proj_bias[i * e:(i + 1) * e])
            proj.weight.requires_grad_(w.requires_grad)
        split.out_proj = mha.out_proj
        split.train(mha.training)
        return split

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: Optional[torch.Tensor] = None, need_weights: bool = True,
                attn_mask: Optional[torch.Tensor] = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """As ``nn.MultiheadAttention.forward``; the head count is ``self.num_heads``."""
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            key_padding_mask = None if key_padding_mask is None else key_padding_mask.unsqueeze(0)
        if self.batch_first and not unbatched:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        n, b, _ = query.shape
        s = key.shape[0]

        def heads(x: torch.Tensor, length: int) -> torch.Tensor:  # (L, B, H*D) -> (B, H, L, D)
            return x.view(length, b, self.num_heads, self.head_dim).permute(1, 2, 0, 3)

        q, k, v = heads(self.q_proj(query), n), heads(self.k_proj(key), s), \
            heads(self.v_proj(value), s)
        if is_causal and attn_mask is None:
            attn_mask = torch.ones(n, s, dtype=torch.bool, device=q.device).triu(1)
        mask = _additive(attn_mask, q.dtype)
        if mask is not None and mask.dim() == 3:  # (B * heads, n, s)
            mask = mask.view(b, -1, n, s)
        padding = _additive(key_padding_mask, q.dtype)
        if padding is not None:
            padding = padding.view(b, 1, 1, s)
            mask = padding if mask is None else mask + padding
        p = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            scores = (q * self.head_dim ** -0.5) @ k.transpose(-2, -1)
            probs = F.dropout((scores if mask is None else scores + mask).softmax(-1), p)
            out = probs @ v
            weights = probs.mean(1) if average_attn_weights else probs
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        out = self.out_proj(out.permute(2, 0, 1, 3).reshape(n, b, -1))
        if unbatched:
            return out.squeeze(1), None if weights is None else weights.squeeze(0)
        return (out.transpose(0, 1) if self.batch_first else out), weights


def split_multihead_attention(model: nn.Module) -> List[str]:
    """Replace every ``nn.MultiheadAttention`` in ``model`` by a :class:`SplitMultiheadAttention`.

    In place; returns the replaced modules' names. The model computes the same outputs.

    Example:
        >>> net = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 4), 2,
        ...                             enable_nested_tensor=False)
        >>> split_multihead_attention(net)
        ['layers.0.self_attn', 'layers.1.self_attn']
    """
    replaced = []
    for name, module in list(model.named_modules()):
        for child, sub in list(module.named_children()):
            if isinstance(sub, nn.MultiheadAttention):
                setattr(module, child, SplitMultiheadAttention.from_multihead(sub))
                replaced.append(f"{name}.{child}" if name else child)
    return replaced
