"""`pruner.carry_optimizer_state(optimizer)`: after physical removal, training continues exactly
as it would have on the masked model (momentum and Adam moments kept, sliced)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import torch_pruning as tp
from models import SmallCNN

CONFIG = {"channel_sparsity_args": {
    "start_epoch": 1, "end_epoch": 2, "global_prune_rate": 0.9, "mac_target": 0.6,
    "regularize": {"reg": 1e-3}, "input_shape": [1, 3, 16, 16]}}

OPTIMIZERS = {
    "sgd_momentum": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-3),
    "adam": lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=1e-3),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=1e-2),
}


def _train(folder, make_opt, *, after: str, epochs: int = 5) -> nn.Module:
    """Train SmallCNN; when channels are removed, `after` in {"carry", "reset"} says what
    happens to the optimizer (with prune_at_target false nothing is removed)."""
    torch.manual_seed(0)
    model = SmallCNN()
    data = [(torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))) for _ in range(3)]
    pruner = tp.Pruning(model, folder)
    optimizer = make_opt(model.parameters())
    for epoch in range(epochs):
        for x, y in data:
            loss = nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            pruner.channel_regularize(model)
            optimizer.step()
        pruner.prune(model, epoch)
        if pruner.channel_pruner.reset_optimizer:
            if after == "carry":
                optimizer = pruner.carry_optimizer_state(optimizer)
            else:
                optimizer = make_opt(model.parameters())
            pruner.channel_pruner.reset_optimizer = False
    assert pruner.channel_pruner.reached_target
    return model.eval()


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_carried_state_continues_like_the_masked_model(write_config, name: str) -> None:
    make_opt = OPTIMIZERS[name]
    masked_cfg = copy.deepcopy(CONFIG)
    masked_cfg["channel_sparsity_args"]["prune_at_target"] = False
    masked = _train(write_config(masked_cfg), make_opt, after="carry")
    carried = _train(write_config(CONFIG), make_opt, after="carry")
    reset = _train(write_config(CONFIG), make_opt, after="reset")
    n_masked = sum(p.numel() for p in masked.parameters())
    assert sum(p.numel() for p in carried.parameters()) < n_masked  # really reduced
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        ref, out_carried, out_reset = masked(x), carried(x), reset(x)
    assert torch.allclose(out_carried, ref, atol=1e-4, rtol=1e-4)
    assert (out_reset - ref).abs().max() > 100 * (out_carried - ref).abs().max()


def test_carry_before_any_removal_explains_itself(write_config) -> None:
    model = SmallCNN()
    pruner = tp.Pruning(model, write_config(CONFIG))
    with pytest.raises(RuntimeError, match="no channels were physically removed yet"):
        pruner.carry_optimizer_state(torch.optim.SGD(model.parameters(), lr=0.1))
