"""Models with layers the pruner cannot mask: named in the log, left untouched, the rest pruned.

``CustomNet`` has a user module with its own ``nn.Parameter`` used in ``forward`` (a per-channel
scale after ``conv1``) and an ``nn.LSTM`` reading ``conv3``'s channels as features. The groups of
``conv1`` and ``conv3`` reach those layers, so they are skipped with a log line naming them;
``conv2``'s group is pruned as usual.
"""

from __future__ import annotations

import copy
import logging
from typing import Any, Dict

import pytest
import torch
from torch import nn

import torch_pruning as tp
from models import ChannelScale

X = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))


class CustomNet(nn.Module):
    """conv1 -> ChannelScale -> conv2 -> conv3 -> LSTM over the width -> fc."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.scale = ChannelScale(16)
        self.conv2, self.bn2 = nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.conv3, self.bn3 = nn.Conv2d(16, 32, 3, padding=1, stride=2), nn.BatchNorm2d(32)
        self.lstm = nn.LSTM(32, 24, batch_first=True)
        self.fc = nn.Linear(24, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.scale(self.bn1(self.conv1(x))))
        x = torch.relu(self.bn2(self.conv2(x)))
        x = torch.relu(self.bn3(self.conv3(x)))
        out, _ = self.lstm(x.mean(2).transpose(1, 2))  # (N, W, C): channels are LSTM features
        return self.fc(out[:, -1])


UNTOUCHED = ("conv1", "bn1", "scale", "bn3", "lstm", "fc")  # conv3 loses input channels only
CONFIG = {
    "channel_sparsity_args": {"start_epoch": 0, "end_epoch": 0, "global_prune_rate": 0.5,
                              "input_shape": [1, 3, 16, 16], "regularize": {"reg": 0.1}},
    "slice_sparsity_args": {"start_epoch": 0, "end_epoch": 0, "prune_rate": 0.5,
                            "block_size": 4},
}


def _params(model: nn.Module, prefixes: Any) -> Dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()
            if n.split(".")[0] in prefixes}


@pytest.mark.timeout(60)
def test_unmaskable_layers_are_named_and_left_untouched(caplog: pytest.LogCaptureFixture) -> None:
    torch.manual_seed(0)
    model = CustomNet()
    before = _params(model, UNTOUCHED)
    with caplog.at_level(logging.INFO, logger="torch_pruning.pat"):
        pruner = tp.Pruning(model, copy.deepcopy(CONFIG) | {"slice_sparsity_args": {
            "is_prune": False}})
        pruner.prune(model, 0)
    skipped = next(m for m in caplog.messages if m.startswith("Channel pruning skips"))
    assert "conv1: UnwrappedParameter_0 (torch.Size([1, 16, 1, 1])) (Parameter) cannot be " \
           "masked" in skipped  # upstream's name for ChannelScale.alpha, with its shape
    assert "conv3: lstm (LSTM) cannot be masked" in skipped
    assert [g.source for g in pruner.channel_pruner.groups] == ["conv2"]

    assert model.conv2.out_channels == 8 and model.conv3.in_channels == 8  # pruned, physically
    after = _params(model, UNTOUCHED)
    for name, value in before.items():
        assert after[name].shape == value.shape and torch.equal(after[name], value), name
    assert model(X).shape == (2, 10)


@pytest.mark.timeout(60)
def test_training_with_both_pruners_leaves_the_custom_layers_to_the_optimizer() -> None:
    """The penalty and the masks never touch the skipped layers; slice pruning covers convs."""
    torch.manual_seed(0)
    model = CustomNet()
    pruner = tp.Pruning(model, copy.deepcopy(CONFIG))
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    pruner.channel_regularize(model)
    for name, grad in {n: p.grad for n, p in model.named_parameters()}.items():
        if name.split(".")[0] in ("scale", "lstm", "conv1", "bn1", "fc"):
            assert float(grad.abs().sum()) == 0, name  # no penalty on the skipped groups
    assert float(model.conv2.weight.grad.abs().sum()) > 0

    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    y = torch.randint(0, 10, (2,))
    loss = nn.functional.cross_entropy(model(X), y) + pruner.slice_regularize(model)
    optimizer.zero_grad()
    loss.backward()
    pruner.channel_regularize(model)
    optimizer.step()
    pruner.prune(model, 0)
    masked = {module for module, _ in pruner.masks.keys()}
    assert not masked & {model.scale, model.lstm}
    assert model.lstm.weight_ih_l0.shape == (96, 32) and model.scale.alpha.shape == (1, 16, 1, 1)
    assert pruner.slice_pruner.sparsity()["overall"]["fraction"] == pytest.approx(0.5, abs=0.01)
    assert model(X).shape == (2, 10)


@pytest.mark.timeout(60)
def test_listing_only_unmaskable_layers_warns_that_nothing_will_be_pruned(
        caplog: pytest.LogCaptureFixture) -> None:
    model = CustomNet()
    shapes = {n: p.shape for n, p in model.named_parameters()}
    cfg = copy.deepcopy(CONFIG)
    cfg["channel_sparsity_args"]["layers"] = ["conv1", "conv3"]
    del cfg["slice_sparsity_args"]
    with caplog.at_level(logging.INFO, logger="torch_pruning.pat"):
        pruner = tp.Pruning(model, cfg)
        pruner.prune(model, 0)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("conv1:" in w and "conv3: lstm (LSTM) cannot be masked" in w for w in warnings)
    assert any("selects no prunable group: channel pruning does nothing" in w for w in warnings)
    assert {n: p.shape for n, p in model.named_parameters()} == shapes
