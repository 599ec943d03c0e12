"""Each pruning method ranks channels as SPEC section 3 defines, on hand-built weights."""

from __future__ import annotations

from typing import Dict

import pytest
import torch
from models import TwinBranchCNN
from torch import nn

import torch_pruning as tp
from torch_pruning.pat.channel.pruner import ChannelPruner
from torch_pruning.pat.config.models import ChannelSparsityArgs, MACParams, PruningMethod
from torch_pruning.pat.channel.importance import (BNScaleImportance, GroupNormImportance,
                                                  Importance, MACAwareImportance, make_importance)
from torch_pruning.pat.core.masks import MaskSet


def _chain() -> nn.Sequential:
    """conv1 (1->3, 1x1) -> BN -> ReLU -> conv2 (3->1, 1x1), with hand-set weights."""
    net = nn.Sequential(nn.Conv2d(1, 3, 1, bias=False), nn.BatchNorm2d(3), nn.ReLU(),
                        nn.Conv2d(3, 1, 1, bias=False))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([1.0, 3.0, 2.0]).view(3, 1, 1, 1))
        net[1].weight.copy_(torch.tensor([0.5, -2.0, 1.0]))
        net[3].weight.fill_(1.0)
    return net


def _group(net: nn.Sequential) -> tp.dependency.Group:
    DG = tp.DependencyGraph().build_dependency(net, torch.randn(2, 1, 4, 4))
    return DG.get_pruning_group(net[0], tp.prune_conv_out_channels, [0, 1, 2])


def test_group_norm_is_the_mean_normalized_group_l2() -> None:
    scores = GroupNormImportance()(_group(_chain()))
    # per channel: conv1 w^2 + BN gamma^2 + conv2 w^2, averaged over the 3 layers, square-rooted
    norms = ((torch.tensor([1.0, 9.0, 4.0]) + torch.tensor([0.25, 4.0, 1.0]) + 1.0) / 3).sqrt()
    assert torch.allclose(scores, norms / norms.mean())
    assert scores.argsort().tolist() == [0, 2, 1]


def test_bn_scale_ranks_by_the_batchnorm_scale() -> None:
    scores = BNScaleImportance()(_group(_chain()))
    gamma = torch.tensor([0.5, 2.0, 1.0])
    assert torch.allclose(scores, gamma / gamma.mean())
    assert scores.argsort().tolist() == [0, 2, 1]


def test_bn_scale_cannot_rank_a_group_without_batchnorm() -> None:
    net = nn.Sequential(nn.Conv2d(1, 3, 1), nn.ReLU(), nn.Conv2d(3, 1, 1))
    DG = tp.DependencyGraph().build_dependency(net, torch.randn(1, 1, 4, 4))
    group = DG.get_pruning_group(net[0], tp.prune_conv_out_channels, [0, 1, 2])
    assert BNScaleImportance()(group) is None


class _Fixed:
    """A base importance returning fixed scores per root module."""

    def __init__(self, scores: Dict[nn.Module, torch.Tensor]) -> None:
        self.scores = scores

    def __call__(self, group: tp.dependency.Group) -> torch.Tensor:
        return self.scores[group[0].dep.target.module]


def _two_groups():
    net = TwinBranchCNN()
    DG = tp.DependencyGraph().build_dependency(net, torch.randn(1, 3, 8, 8))
    cheap, costly = net.cheap[0], net.costly[0]
    groups = [DG.get_pruning_group(m, tp.prune_conv_out_channels, [0, 1, 2, 3])
              for m in (cheap, costly)]
    base = _Fixed({cheap: torch.tensor([1.0, 2.0, 4.0, 8.0]),
                   costly: torch.tensor([2.0, 2.0, 4.0, 4.0])})
    return groups, base, {cheap: 100.0, costly: 400.0}


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_mac_aware_sum(alpha: float) -> None:
    groups, base, costs = _two_groups()
    imp = MACAwareImportance(base, costs=costs,
                             params=MACParams(use_macs=True, type="Sum", alpha=alpha))
    cheap, costly = (imp(g) for g in groups)
    # alpha * I / I_max + (1 - alpha) * (1 - m_hat); m_hat = 0 (cheapest) and 1 (costliest)
    assert torch.allclose(cheap, alpha * torch.tensor([1, 2, 4, 8]) / 8 + (1 - alpha) * 1.0)
    assert torch.allclose(costly, alpha * torch.tensor([2.0, 2, 4, 4]) / 4)


@pytest.mark.parametrize("beta", [0.5, 1.0, 2.0])
def test_mac_aware_mul(beta: float) -> None:
    groups, base, costs = _two_groups()
    imp = MACAwareImportance(base, costs=costs,
                             params=MACParams(use_macs=True, type="Mul", beta=beta))
    cheap, costly = (imp(g) for g in groups)
    # I * (m_min / m) ** (1 / beta)
    assert torch.allclose(cheap, torch.tensor([1.0, 2, 4, 8]))
    assert torch.allclose(costly, torch.tensor([2.0, 2, 4, 4]) * 0.25 ** (1 / beta))


def test_mac_aware_without_use_macs_is_the_base_importance() -> None:
    groups, base, costs = _two_groups()
    imp = MACAwareImportance(base, costs=costs, params=MACParams(use_macs=False))
    assert torch.equal(imp(groups[1]), base(groups[1]))


@pytest.mark.parametrize("method,name", [
    (PruningMethod.GROUP_NORM, "GroupNormImportance"),
    (PruningMethod.BN_SCALE, "BNScaleImportance"),
    (PruningMethod.MAC_AWARE, "MACAwareImportance"),
])
def test_each_method_has_an_importance(method: PruningMethod, name: str) -> None:
    imp = make_importance(method, costs={}, params=MACParams())
    assert type(imp).__name__ == name
    assert isinstance(imp, Importance)


def _masked_rows(masks: MaskSet, conv: nn.Conv2d) -> int:
    keep = masks.effective(conv, "weight")
    return 0 if keep is None else int((~keep.flatten(1).any(1)).sum())


@pytest.mark.parametrize("method,mac_params,expected", [
    ("GroupNormPruner", {}, (1, 1)),  # equal norms: each branch loses its weakest channel
    ("MACAwareImportance", {"use_macs": True, "type": "Sum", "alpha": 0.5}, (0, 2)),
    ("MACAwareImportance", {"use_macs": True, "type": "Mul", "beta": 1.0}, (0, 2)),
])
def test_global_ranking_prunes_the_costly_branch_first(method: str, mac_params: dict,
                                                       expected: tuple) -> None:
    """Both branches have identical channel norms; only MAC awareness prefers the 3x3 one."""
    torch.manual_seed(0)
    net = TwinBranchCNN().equalize()
    cfg = ChannelSparsityArgs(start_epoch=0, end_epoch=0, global_prune_rate=0.25,
                              global_pruning=True, prune_at_target=False,
                              pruning_method=method, MAC_params=mac_params)
    masks = MaskSet()
    pruner = ChannelPruner(net, cfg, example_inputs=torch.randn(1, 3, 8, 8), masks=masks)
    pruner.prune(net, 0)
    pruned = (_masked_rows(masks, net.cheap[0]), _masked_rows(masks, net.costly[0]))
    assert sum(pruned) == 2
    assert pruned == expected
