"""Channel PAT on transformers: MLP hidden dims (Linear out features) pruned with exact masks
and exact MAC accounting; nn.MultiheadAttention (torchvision's ViT, nn.TransformerEncoder) is
reported, not pruned. Whole heads of attention written with Linear projections:
tests/test_attention_heads.py.
"""

from __future__ import annotations

import copy
import json
import logging
import re
from typing import Any, Callable, Dict, List, Tuple

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
import torchvision
from models.transformer import (ATTENTION_LAYERS, MLP_LAYERS, HandwrittenAttention,
                                TinyTransformer, eval_outputs, one_epoch_config,
                                vit_mlp_layers)
from torch import nn

import torch_pruning as tp


def _vit() -> nn.Module:
    model = torchvision.models.vit_b_16(weights=None, image_size=32, num_classes=10)
    nn.init.normal_(model.heads.head.weight, std=0.02)  # torchvision zero-inits the head
    return model


#: name -> (constructor, layers to prune, input shape)
CASES: Dict[str, Tuple[Callable[[], nn.Module], List[str], Tuple[int, ...]]] = {
    "tiny": (TinyTransformer, MLP_LAYERS, (2, 3, 16, 16)),
    "vit_b_16": (_vit, vit_mlp_layers(2), (1, 3, 32, 32)),
}


def _train(model: nn.Module, pruner: Any, optimizer: torch.optim.Optimizer, x: torch.Tensor,
           steps: int) -> None:
    model.train()
    for step in range(steps):
        y = torch.randint(0, 10, (x.shape[0],), generator=torch.Generator().manual_seed(step))
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        pruner.channel_regularize(model)
        optimizer.step()


@pytest.mark.parametrize("name,global_pruning,block_size",
                         [("tiny", False, 1), ("tiny", True, 8), ("vit_b_16", False, 64)])
def test_mlp_hidden_dims_are_pruned_exactly(name: str, global_pruning: bool,
                                            block_size: int) -> None:
    """Masks stay zero through AdamW steps; the masked model computes what the physically
    pruned one computes, and its MACs are upstream's count of the pruned model."""
    make, layers, shape = CASES[name]
    torch.manual_seed(0)
    model, x = make(), torch.randn(*shape)
    pruner = tp.Pruning(model, one_epoch_config(layers, global_pruning=global_pruning,
                                                block_size=block_size), example_inputs=x)
    assert [g.source for g in pruner.channel_pruner.groups] == layers
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    pruner.prune(model, 0)
    _train(model, pruner, optimizer, x, steps=1 if name == "vit_b_16" else 3)
    linears = [model.get_submodule(n) for n in layers]
    hidden = [lin.out_features for lin in linears]
    dead = [lin.weight.abs().sum(1) == 0 for lin in linears]
    assert all(0 < int(d.sum()) < h for d, h in zip(dead, hidden))
    masked_macs, before = pruner.channel_pruner.macs(), eval_outputs(model, x)
    pruner.channel_pruner.remove_masked_channels(model)
    kept = [lin.out_features for lin in linears]
    assert kept == [h - int(d.sum()) for h, d in zip(hidden, dead)]
    assert all(k % block_size == 0 for k in kept)
    assert masked_macs == tp.utils.count_ops_and_params(model, x)[0]
    assert masked_macs < pruner.channel_pruner.base_macs
    assert torch.allclose(eval_outputs(model, x), before, rtol=1e-4, atol=1e-5)


def test_transformer_reaches_the_mac_target_and_keeps_its_heads(write_config) -> None:
    torch.manual_seed(0)
    model, x = TinyTransformer(), torch.randn(4, 3, 16, 16)
    folder = write_config(one_epoch_config(MLP_LAYERS, end_epoch=3, global_prune_rate=0.9,
                                           mac_target=0.8, prune_at_target=True))
    pruner = tp.Pruning(model, folder, example_inputs=x[:1])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    for epoch in range(4):
        _train(model, pruner, optimizer, x, steps=2)
        pruner.prune(model, epoch)
        if pruner.channel_pruner.reset_optimizer:
            optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
            pruner.channel_pruner.reset_optimizer = False
    saved = json.loads((folder / "pruning_config.json").read_text())["channel_sparsity_args"]
    assert saved["reach_mac_target"] is True
    assert tp.utils.count_ops_and_params(model, x[:1])[0] <= 0.8 * pruner.channel_pruner.base_macs
    layers = model.encoder.layers
    assert all(layer.linear1.out_features < 64 for layer in layers)
    assert all((layer.self_attn.num_heads, layer.self_attn.embed_dim) == (4, 32)
               for layer in layers)
    assert model(x).shape == (4, 10)


@pytest.mark.parametrize("layer,says", [
    (ATTENTION_LAYERS[0], r"encoder\.layers\.0\.self_attn \(MultiheadAttention, 4 heads\): "
                          r"its heads cannot be pruned: nn\.MultiheadAttention ties"),
    (ATTENTION_LAYERS[0] + ".out_proj", r"the output projection of attention "
                                        r"encoder\.layers\.0\.self_attn"),
    ("embed", r"embedding dimension of attention encoder\.layers\.0\.self_attn"),
])
def test_attention_layers_are_reported_not_pruned(layer: str, says: str,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    model = TinyTransformer()
    with caplog.at_level(logging.INFO, logger="torch_pruning.pat"):
        pruner = tp.Pruning(model, one_epoch_config([layer, MLP_LAYERS[1]]),
                            example_inputs=torch.randn(1, 3, 16, 16))
    assert [g.source for g in pruner.channel_pruner.groups] == [MLP_LAYERS[1]]
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(re.search(says, m) for m in warned), warned


def test_skipped_layers_are_warned_about_once_not_again_after_removal(
        caplog: pytest.LogCaptureFixture) -> None:
    model = TinyTransformer()
    with caplog.at_level(logging.DEBUG, logger="torch_pruning.pat"):
        pruner = tp.Pruning(model, one_epoch_config([ATTENTION_LAYERS[0], MLP_LAYERS[1]],
                                                    prune_at_target=True),
                            example_inputs=torch.randn(1, 3, 16, 16))
        pruner.prune(model, 0)
    assert model.encoder.layers[1].linear1.out_features == 32  # removed, so re-traced
    skips = [r for r in caplog.records if "skips these layers" in r.getMessage()]
    assert [r.levelno for r in skips] == [logging.WARNING, logging.DEBUG]


def test_pruned_transformer_round_trips_through_load_state_dict_pruned() -> None:
    torch.manual_seed(0)
    model, x = TinyTransformer(), torch.randn(2, 3, 16, 16)
    pruner = tp.Pruning(model, one_epoch_config(MLP_LAYERS, prune_at_target=True),
                        example_inputs=x)
    pruner.prune(model, 0)
    assert model.encoder.layers[0].linear1.out_features == 32
    fresh, missing, unexpected = tp.load_state_dict_pruned(TinyTransformer(), model.state_dict())
    assert (missing, unexpected) == ([], [])
    assert [layer.linear1.out_features for layer in fresh.encoder.layers] == [32, 32]
    assert torch.allclose(eval_outputs(fresh, x), eval_outputs(model, x), rtol=1e-5, atol=1e-6)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10 ** 6), ratio=st.floats(0.05, 0.95), global_pruning=st.booleans(),
       block_size=st.sampled_from([1, 4, 8]))
def test_random_masks_count_and_compute_like_the_pruned_transformer(seed: int, ratio: float,
                                                                    global_pruning: bool,
                                                                    block_size: int) -> None:
    torch.manual_seed(seed)
    model, x = TinyTransformer(), torch.randn(2, 3, 16, 16)
    cfg = one_epoch_config(MLP_LAYERS, global_prune_rate=ratio, global_pruning=global_pruning,
                           block_size=block_size)
    pruner = tp.Pruning(model, cfg, example_inputs=x)
    pruner.prune(model, 0)
    masked_macs, before = pruner.channel_pruner.macs(), eval_outputs(model, x)
    pruner.channel_pruner.remove_masked_channels(model)
    assert masked_macs == tp.utils.count_ops_and_params(model, x)[0]
    assert torch.allclose(eval_outputs(model, x), before, rtol=1e-4, atol=1e-5)


def test_upstream_pruning_through_bmm_is_not_what_masks_compute() -> None:
    """Why such groups are pruned by whole heads only: upstream prunes single q/k/v channels
    through ``q @ k`` like an elementwise op, so the heads are regrouped and the pruned model
    differs from the masked."""
    torch.manual_seed(0)
    model, x = HandwrittenAttention(), torch.randn(2, 5, 16)
    gone = [0, 1, 2, 5]  # 12 channels left: 4 heads of 3, mixing heads 0 and 1
    masked = copy.deepcopy(model)
    with torch.no_grad():
        for lin in (masked.q, masked.k, masked.v):
            lin.weight[gone] = 0
            lin.bias[gone] = 0
        masked.o.weight[:, gone] = 0
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=x)
    graph.get_pruning_group(model.q, tp.prune_linear_out_channels, gone).prune()
    assert model.q.out_features == model.o.in_features == 12
    assert not torch.allclose(eval_outputs(model, x), eval_outputs(masked, x), rtol=1e-3, atol=1e-3)
