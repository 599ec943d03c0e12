"""Channel PAT on an encoder-decoder with ConvTranspose2d and skip concatenation: transposed
convs pruned in both directions, exact masks, exact MACs, and checkpoint round trips."""

from __future__ import annotations

import json
from typing import Any, Dict

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from models.unet import UNET_LAYERS, TinyUNet
from torch import nn

import torch_pruning as tp

X = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def _config(**fields: Any) -> Dict[str, Any]:
    cfg = dict(start_epoch=0, end_epoch=0, global_prune_rate=0.5, mac_target=0.0,
               prune_at_target=False, layers=UNET_LAYERS, regularize={"reg": 1e-3})
    cfg.update(fields)
    return {"channel_sparsity_args": cfg}


def _unet(seed: int = 0) -> TinyUNet:
    """A TinyUNet with random BatchNorm statistics and affine parameters."""
    torch.manual_seed(seed)
    model = TinyUNet()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2)
            nn.init.normal_(m.weight)
            nn.init.normal_(m.bias)
    return model


def _outputs(model: nn.Module, x: torch.Tensor = X) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(x)


def _train(model: nn.Module, pruner: Any, optimizer: torch.optim.Optimizer, steps: int) -> None:
    model.train()
    for step in range(steps):
        g = torch.Generator().manual_seed(step)
        x, y = torch.randn(4, 3, 16, 16, generator=g), torch.randint(0, 2, (4, 16, 16), generator=g)
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        pruner.channel_regularize(model)
        optimizer.step()


@pytest.mark.parametrize("ratio,global_pruning,block_size", [(0.5, False, 1), (0.3, True, 2),
                                                             (0.7, False, 4)])
def test_transposed_convs_are_pruned_in_both_directions_exactly(ratio: float,
                                                                global_pruning: bool,
                                                                block_size: int) -> None:
    model = _unet()
    pruner = tp.Pruning(model, _config(global_prune_rate=ratio, global_pruning=global_pruning,
                                       block_size=block_size), example_inputs=X)
    groups = {g.source: g.dependencies for g in pruner.channel_pruner.groups}
    assert "up2.0" in groups["mid.0"] and "dec2.0" in groups["up2.0"]  # in and out channels
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    pruner.prune(model, 0)
    _train(model, pruner, optimizer, steps=3)
    masked_macs, before = pruner.channel_pruner.macs(), _outputs(model)
    pruner.channel_pruner.remove_masked_channels(model)
    ups = ((model.up2[0], 32, 16), (model.up1[0], 16, 8))
    assert any(up.in_channels < cin for up, cin, _ in ups)  # pruned as a consumer
    assert any(up.out_channels < cout for up, _, cout in ups)  # pruned as a producer
    for up, _, _ in ups:
        assert up.weight.shape[:2] == (up.in_channels, up.out_channels)
        assert up.out_channels % block_size == 0
    assert masked_macs == tp.utils.count_ops_and_params(model, X)[0]
    assert masked_macs < pruner.channel_pruner.base_macs
    assert torch.allclose(_outputs(model), before, rtol=1e-4, atol=1e-5)


def test_unet_reaches_the_mac_target_and_round_trips(write_config) -> None:
    model = _unet()
    folder = write_config(_config(end_epoch=2, global_prune_rate=0.8, mac_target=0.5,
                                  prune_at_target=True))
    pruner = tp.Pruning(model, folder, example_inputs=X[:1])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for epoch in range(3):
        _train(model, pruner, optimizer, steps=2)
        pruner.prune(model, epoch)
        if pruner.channel_pruner.reset_optimizer:
            optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
            pruner.channel_pruner.reset_optimizer = False
    saved = json.loads((folder / "pruning_config.json").read_text())["channel_sparsity_args"]
    assert saved["reach_mac_target"] is True
    assert tp.utils.count_ops_and_params(model, X)[0] <= 0.5 * pruner.channel_pruner.base_macs
    fresh, missing, unexpected = tp.load_state_dict_pruned(TinyUNet(), model.state_dict())
    assert (missing, unexpected) == ([], [])
    assert [(m.in_channels, m.out_channels) for m in (fresh.up2[0], fresh.up1[0])] == \
        [(m.in_channels, m.out_channels) for m in (model.up2[0], model.up1[0])]
    assert torch.allclose(_outputs(fresh), _outputs(model), rtol=1e-5, atol=1e-6)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10 ** 6), ratio=st.floats(0.05, 0.95), global_pruning=st.booleans(),
       block_size=st.sampled_from([1, 2, 4]))
def test_random_masks_count_and_compute_like_the_pruned_unet(seed: int, ratio: float,
                                                             global_pruning: bool,
                                                             block_size: int) -> None:
    model = _unet(seed)
    pruner = tp.Pruning(model, _config(global_prune_rate=ratio, global_pruning=global_pruning,
                                       block_size=block_size, regularize={"reg": 0.0}),
                        example_inputs=X)
    pruner.prune(model, 0)
    masked_macs, before = pruner.channel_pruner.macs(), _outputs(model)
    pruner.channel_pruner.remove_masked_channels(model)
    assert masked_macs == tp.utils.count_ops_and_params(model, X)[0]
    assert torch.allclose(_outputs(model), before, rtol=1e-4, atol=1e-5)
