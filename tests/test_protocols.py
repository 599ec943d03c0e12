"""The two small protocols: ``Pruner`` (what the facade asks of a pruner) and ``CostModel``
(what ``mac_target`` measures, on a plain per-module removal plan)."""

from __future__ import annotations

import copy

import torch
from torch import nn

import torch_pruning as tp
from models import SmallCNN
from torch_pruning.pat import CostModel, Pruner
from torch_pruning.pat.core.latency import LatencyCost
from torch_pruning.pat.core.macs import MacCounter
from torch_pruning.pat.core.pruner import InertPruner


def test_both_pruners_and_the_stand_in_are_pruners(write_config) -> None:
    folder = write_config({
        "channel_sparsity_args": {"start_epoch": 0, "end_epoch": 2, "global_prune_rate": 0.5,
                                  "input_shape": [1, 3, 16, 16]},
        "slice_sparsity_args": {"start_epoch": 0, "end_epoch": 2, "prune_rate": 0.5,
                                "block_size": 4}})
    pruning = tp.Pruning(SmallCNN(), folder)
    channel, slice_ = pruning.pruners
    assert isinstance(channel, Pruner) and isinstance(slice_, Pruner)
    assert isinstance(InertPruner(), Pruner)
    assert channel.enabled and slice_.enabled and not InertPruner().enabled
    off = tp.Pruning(SmallCNN(), folder.parent / "nowhere")
    assert all(isinstance(p, InertPruner) for p in off.pruners) and not off.enabled
    assert off.slice_pruner.sparsity() is None and off.channel_pruner.replaced_params == {}


def test_a_hand_written_removal_plan_counts_like_the_pruned_model() -> None:
    """Cost models take plain per-module plans: no channel group needed to ask them."""
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3))
    x = torch.randn(1, 3, 16, 16)
    counter = MacCounter(net, x)
    assert isinstance(counter, CostModel)
    plan = {(net[0], tp.prune_conv_out_channels): (None, [0, 1, 5]),
            (net[2], tp.prune_conv_in_channels): (None, [0, 1, 5])}
    pruned = copy.deepcopy(net)
    tp.prune_conv_out_channels(pruned[0], [0, 1, 5])
    tp.prune_conv_in_channels(pruned[2], [0, 1, 5])
    macs, params = tp.utils.count_ops_and_params(pruned, x)
    assert counter.count(plan) == (macs, params)
    assert counter.count({}) == (counter.base_cost, counter.base_params)
    assert [p.shape[0] for p in (net[0].weight, net[2].weight)] == [8, 4]  # net untouched


def test_latency_cost_is_a_cost_model_priced_per_layer() -> None:
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3))
    x = torch.randn(1, 3, 16, 16)
    counter = MacCounter(net, x)
    cost = LatencyCost(counter, {net[0]: 2.0, net[2]: 1.0})  # ms per MAC, made up
    assert isinstance(cost, CostModel)
    assert cost.base_cost == 2.0 * counter.layer_macs[net[0]] + counter.layer_macs[net[2]]
    plan = {(net[0], tp.prune_conv_out_channels): (None, [0, 1, 2, 3]),
            (net[2], tp.prune_conv_in_channels): (None, [0, 1, 2, 3])}
    layers = counter.count_layers(plan)  # each layer's MACs with the plan applied
    assert layers[net[0]] == counter.layer_macs[net[0]] / 2
    assert cost.count(plan)[0] == 2.0 * layers[net[0]] + layers[net[2]] < cost.base_cost
