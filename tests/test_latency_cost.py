"""Latency-aware cost (``cost: "latency"``): a per-layer latency table measured once and cached
beside the config, the target read as a latency fraction, MAC_params ranking by latency."""

from __future__ import annotations

import json
import logging
import re
from typing import Any, Dict

import pytest
import torch
from models import DepthwiseCNN, TwinBranchCNN
from torch import nn

import torch_pruning as tp
from torch_pruning.pat.core import latency
from torch_pruning.pat.core.latency import LATENCY_TABLE

X = torch.randn(1, 3, 8, 8)
MUL = {"use_macs": True, "type": "Mul", "beta": 1.0}


class FakeClock:
    """Stands in for ``latency.time_module``: 1 ms per layer, ``slow`` ms for 1x1 convs with
    3 input channels (TwinBranchCNN's ``cheap`` branch); counts the layers it times."""

    def __init__(self, slow: float = 1.0) -> None:
        self.slow, self.timed = slow, 0

    def __call__(self, module: nn.Module, inputs: Any, repeats: int = 10) -> float:
        self.timed += 1
        weight = getattr(module, "weight", None)
        return self.slow if weight is not None and tuple(weight.shape[1:]) == (3, 1, 1) else 1.0


def _config(**fields: Any) -> Dict[str, Any]:
    cfg = dict(start_epoch=0, end_epoch=0, global_prune_rate=0.25, mac_target=0.0,
               prune_at_target=False, cost="latency")
    cfg.update(fields)
    return {"channel_sparsity_args": cfg}


def _masked_rows(pruner: Any, conv: nn.Conv2d) -> int:
    keep = pruner.masks.effective(conv, "weight")
    return 0 if keep is None else int((~keep.flatten(1).any(1)).sum())


def test_the_table_is_measured_once_and_cached_beside_the_config(
        write_config, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    monkeypatch.setattr(latency, "time_module", clock)
    folder = write_config(_config(mac_target=0.6, end_epoch=2, global_prune_rate=0.9))
    model = DepthwiseCNN()
    pruner = tp.Pruning(model, folder, example_inputs=X)
    first = clock.timed
    table = json.loads((folder / LATENCY_TABLE).read_text())
    assert first == len(table["layers"]) > 0
    assert table["layers"]["depthwise.0"]["ms"] == 1.0
    for epoch in range(3):
        pruner.prune(model, epoch)
    assert "Estimated latency:" in pruner.channel_pruner.summary()
    assert pruner.channel_pruner.reached_target
    with caplog.at_level(logging.INFO, logger="torch_pruning.pat"):
        tp.Pruning(DepthwiseCNN(), write_config(_config()), example_inputs=X)
    assert clock.timed == first  # same layers and shapes: the cached table is used
    assert f"Using the latency table {folder / LATENCY_TABLE}" in caplog.text
    tp.Pruning(DepthwiseCNN(width=4), write_config(_config()), example_inputs=X)
    assert clock.timed > first  # other shapes: measured again


@pytest.mark.parametrize("cost,slow,expected", [
    ("macs", 1.0, (0, 2)),        # the 3x3 branch costs 9x the MACs: it goes first
    ("latency", 1.0, (1, 1)),     # both measured equally fast: no preference by cost
    ("latency", 500.0, (2, 0)),   # the 1x1 layer measured slow: now it goes first
])
def test_mac_params_rank_groups_by_measured_latency(write_config, monkeypatch, cost: str,
                                                    slow: float, expected: tuple) -> None:
    monkeypatch.setattr(latency, "time_module", FakeClock(slow))
    torch.manual_seed(0)
    net = TwinBranchCNN().equalize()
    pruner = tp.Pruning(net, write_config(_config(cost=cost, global_pruning=True,
                                                  pruning_method="MACAwareImportance",
                                                  MAC_params=MUL)), example_inputs=X)
    pruner.prune(net, 0)
    assert (_masked_rows(pruner, net.cheap[0]), _masked_rows(pruner, net.costly[0])) == expected


def test_latency_target_is_met_as_a_fraction_of_estimated_latency(write_config,
                                                                  monkeypatch) -> None:
    monkeypatch.setattr(latency, "time_module", FakeClock(500.0))
    net = TwinBranchCNN()
    pruner = tp.Pruning(net, write_config(_config(mac_target=0.5, global_prune_rate=0.9,
                                                  end_epoch=3, prune_at_target=True)),
                        example_inputs=X)
    cp = pruner.channel_pruner
    assert cp.base_cost == pytest.approx(506.0)  # 500 ms for cheap.0, 1 ms for 6 other layers
    for epoch in range(4):
        pruner.prune(net, epoch)
    assert cp.reached_target and net.cheap[0].out_channels < 4
    line = next(l for l in cp.summary().splitlines() if l.startswith("Estimated latency:"))
    kept = float(re.search(r"\(([\d.]+)% of original", line).group(1))
    assert kept <= 50.0


def test_identical_layers_share_the_median_of_their_timings(monkeypatch) -> None:
    """Timing noise must not make one of several identical blocks look slower."""
    noisy = iter([5.0, 1.0, 2.0, 9.0])
    monkeypatch.setattr(latency, "time_module", lambda module, inputs, repeats=10: next(noisy))
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1),
                        nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1))
    table = latency.LatencyTable.measure(net, X)
    assert [table.layers[n]["ms"] for n in "0123"] == [5.0, 2.0, 2.0, 2.0]
