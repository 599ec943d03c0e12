"""`tp.pat.split_multihead_attention`: nn.MultiheadAttention rewritten with q/k/v Linear layers
computes the same outputs, and then its heads are pruned whole (torchvision's vit_b_16,
nn.TransformerEncoder): exact masks, exact MACs, num_heads updated, checkpoints that load."""

from __future__ import annotations

import copy
from typing import Any, Dict

import pytest
import torch
import torchvision
from models.transformer import MLP_LAYERS, TinyTransformer, eval_outputs, one_epoch_config
from models.loop import five_line_loop
from torch import nn

import torch_pruning as tp
from torch_pruning.pat import SplitMultiheadAttention, split_multihead_attention

torch.manual_seed(0)
KPM = torch.rand(2, 9) > 0.7
KPM[:, 0] = False  # every query attends to something
CALLS: Dict[str, Dict[str, Any]] = {
    "plain": {},
    "no_weights": {"need_weights": False},
    "per_head_weights": {"average_attn_weights": False},
    "key_padding": {"key_padding_mask": KPM},
    "key_padding_no_weights": {"key_padding_mask": KPM, "need_weights": False},
    "float_mask": {"attn_mask": torch.randn(7, 9)},
    "bool_mask_and_padding": {"attn_mask": torch.rand(7, 9) > 0.8, "key_padding_mask": KPM},
    "per_head_mask": {"attn_mask": torch.randn(2 * 4, 7, 9)},
}


def _mha_inputs(batch_first: bool, kdim: int, vdim: int):
    def seq(length: int, dim: int) -> torch.Tensor:
        return torch.randn(2, length, dim) if batch_first else torch.randn(length, 2, dim)
    return seq(7, 16), seq(9, kdim), seq(9, vdim)


@pytest.mark.parametrize("call", sorted(CALLS))
@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("dims", [{}, {"kdim": 6, "vdim": 5}, {"bias": False}])
def test_split_attention_computes_what_multihead_attention_does(call: str, batch_first: bool,
                                                                dims: Dict[str, Any]) -> None:
    torch.manual_seed(1)
    mha = nn.MultiheadAttention(16, 4, batch_first=batch_first, **dims).eval()
    split = SplitMultiheadAttention.from_multihead(copy.deepcopy(mha))
    q, k, v = _mha_inputs(batch_first, dims.get("kdim", 16), dims.get("vdim", 16))
    want, got = mha(q, k, v, **CALLS[call]), split(q, k, v, **CALLS[call])
    assert torch.allclose(got[0], want[0], rtol=1e-4, atol=1e-6)
    assert (got[1] is None) == (want[1] is None)
    if want[1] is not None:
        assert torch.allclose(got[1], want[1], rtol=1e-4, atol=1e-6)


def test_unbatched_and_causal_calls_match() -> None:
    mha = nn.MultiheadAttention(16, 4).eval()
    split = SplitMultiheadAttention.from_multihead(copy.deepcopy(mha))
    x = torch.randn(5, 16)
    causal = nn.Transformer.generate_square_subsequent_mask(5)
    for kwargs in ({}, {"attn_mask": causal, "is_causal": True}):
        want, got = mha(x, x, x, **kwargs), split(x, x, x, **kwargs)
        assert got[0].shape == (5, 16)
        assert torch.allclose(got[0], want[0], rtol=1e-4, atol=1e-6)
        assert torch.allclose(got[1], want[1], rtol=1e-4, atol=1e-6)


def test_gradients_reach_the_split_projections() -> None:
    split = SplitMultiheadAttention(16, 4, batch_first=True)
    x = torch.randn(2, 5, 16)
    split(x, x, x)[0].sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0
               for p in (split.q_proj.weight, split.k_proj.weight, split.v_proj.weight))


def test_bias_kv_attention_cannot_be_split() -> None:
    with pytest.raises(ValueError, match="add_bias_kv or add_zero_attn"):
        SplitMultiheadAttention.from_multihead(nn.MultiheadAttention(16, 4, add_bias_kv=True))


def _vit() -> nn.Module:
    model = torchvision.models.vit_b_16(weights=None, image_size=32, num_classes=10)
    nn.init.normal_(model.heads.head.weight, std=0.02)  # torchvision zero-inits the head
    return model


def test_split_models_compute_the_same_outputs() -> None:
    torch.manual_seed(0)
    vit, x = _vit(), torch.randn(2, 3, 32, 32)
    before = eval_outputs(vit, x)
    names = split_multihead_attention(vit)
    assert names == [f"encoder.layers.encoder_layer_{i}.self_attention" for i in range(12)]
    assert not any(isinstance(m, nn.MultiheadAttention) for m in vit.modules())
    assert torch.allclose(eval_outputs(vit, x), before, rtol=1e-5, atol=1e-6)
    tiny, t = TinyTransformer(), torch.randn(2, 3, 16, 16)
    before = eval_outputs(tiny, t)
    assert split_multihead_attention(tiny) == ["encoder.layers.0.self_attn",
                                               "encoder.layers.1.self_attn"]
    assert torch.allclose(eval_outputs(tiny, t), before, rtol=1e-5, atol=1e-6)


def test_vit_b_16_heads_are_pruned_whole_and_the_checkpoint_loads() -> None:
    torch.manual_seed(0)
    vit, x = _vit(), torch.randn(2, 3, 32, 32)
    attention = split_multihead_attention(vit)[:3]
    pruner = tp.Pruning(vit, one_epoch_config(attention + ["encoder.layers.encoder_layer_0.mlp.0"]),
                        example_inputs=x[:1])
    assert [g.units for g in pruner.channel_pruner.groups] == [12, 12, 12, 3072]
    pruner.prune(vit, 0)
    masked_macs, before = pruner.channel_pruner.macs(), eval_outputs(vit, x)
    pruner.channel_pruner.remove_masked_channels(vit)
    layers = vit.encoder.layers
    assert [layers[i].self_attention.num_heads for i in range(4)] == [6, 6, 6, 12]
    assert layers[0].self_attention.q_proj.out_features == 6 * 64
    assert masked_macs == tp.utils.count_ops_and_params(vit, x[:1])[0]
    assert torch.allclose(eval_outputs(vit, x), before, rtol=1e-4, atol=1e-5)
    fresh = _vit()
    split_multihead_attention(fresh)
    fresh, missing, unexpected = tp.load_state_dict_pruned(fresh, vit.state_dict())
    assert (missing, unexpected) == ([], [])
    assert [fresh.encoder.layers[i].self_attention.num_heads for i in range(4)] == [6, 6, 6, 12]
    assert torch.allclose(eval_outputs(fresh, x), before, rtol=1e-4, atol=1e-5)


def test_transformer_encoder_trains_to_the_target_with_heads_and_mlp_pruned(
        write_config) -> None:
    torch.manual_seed(0)
    model, x = TinyTransformer(), torch.randn(4, 3, 16, 16)
    attention = split_multihead_attention(model)
    folder = write_config(one_epoch_config(attention + MLP_LAYERS, end_epoch=3,
                                           global_prune_rate=0.9, mac_target=0.7,
                                           prune_at_target=True))
    pruner = tp.Pruning(model, folder, example_inputs=x[:1])
    five_line_loop(model, pruner, [(x, torch.randint(0, 10, (4,)))], epochs=4, steps=2)
    assert pruner.channel_pruner.reached_target
    assert tp.utils.count_ops_and_params(model, x[:1])[0] <= 0.7 * pruner.channel_pruner.base_macs
    heads = [layer.self_attn.num_heads for layer in model.encoder.layers]
    assert sum(heads) < 8 and all(h >= 1 for h in heads)
    model.train()
    assert model(x).shape == (4, 10)
