"""The pruning report: per-layer channels, MACs and params of a masked model, text and PNG."""

from __future__ import annotations

import copy
import logging
import re
from typing import Dict, List, Sequence

import pytest
import torch
from torch import nn

import torch_pruning as tp
from torch_pruning.pat.core.masks import MaskSet
from torch_pruning.pat.tools.report import PruningReport, layer_stats


class Plain(nn.Module):
    """conv(+bias)-BN-ReLU, conv-BN-ReLU, global pool, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


class Depthwise(nn.Module):
    """conv, depthwise 3x3 (groups = channels), pointwise 1x1, linear (MobileNet style)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.pw = nn.Conv2d(8, 12, 1)
        self.fc = nn.Linear(12, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.dw(torch.relu(self.conv(x)))))
        return self.fc(torch.relu(self.pw(x)).mean((2, 3)))


class Residual(nn.Module):
    """stem conv, a two-conv residual block added to it, linear (ResNet style)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.a = nn.Conv2d(8, 6, 3, padding=1)
        self.b = nn.Conv2d(6, 8, 3, padding=1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.relu(self.stem(x))
        s = torch.relu(s + self.b(torch.relu(self.a(s))))
        return self.fc(s.mean((2, 3)))


INPUT = (1, 3, 8, 8)


def _mask_groups(model: nn.Module, plan: Dict[str, Sequence[int]]) -> MaskSet:
    """Mask channels the way the channel pruner does: every parameter coupled in the group."""
    graph = tp.DependencyGraph().build_dependency(model, torch.randn(*INPUT), verbose=False)
    masks = MaskSet()
    modules = dict(model.named_modules())
    for name, idxs in plan.items():
        group = graph.get_pruning_group(modules[name], tp.prune_conv_out_channels, list(idxs))
        for dep, dep_idxs in group:
            layer, fn = dep.target.module, dep.handler
            if not isinstance(layer, nn.Module):
                continue
            inputs = fn in (tp.prune_conv_in_channels, tp.prune_linear_in_channels)
            for pname in ("weight", "bias"):
                param = getattr(layer, pname, None)
                if not isinstance(param, nn.Parameter) or (inputs and pname == "bias"):
                    continue
                keep = torch.ones_like(param, dtype=torch.bool)
                if inputs:
                    keep[:, dep_idxs] = False
                else:
                    keep[dep_idxs] = False
                masks.update("channel", layer, pname, keep)
    return masks


def _prune_physically(model: nn.Module, plan: Dict[str, Sequence[int]]) -> nn.Module:
    pruned = copy.deepcopy(model)
    graph = tp.DependencyGraph().build_dependency(pruned, torch.randn(*INPUT), verbose=False)
    modules = dict(pruned.named_modules())
    for name, idxs in plan.items():
        graph.get_pruning_group(modules[name], tp.prune_conv_out_channels, list(idxs)).prune()
    return pruned


def _tuple(rows) -> List[tuple]:
    return [(r.name, r.in_channels, r.out_channels, r.macs, r.params) for r in rows]


@pytest.mark.parametrize("make, plan", [
    (Plain, {"conv1": [0, 1, 2], "conv2": [12, 13, 14, 15]}),
    (Depthwise, {"conv": [1, 4], "pw": [0, 5, 6]}),
    (Residual, {"stem": [0, 3], "a": [5]}),
], ids=["plain", "depthwise", "residual"])
def test_masked_stats_equal_the_physically_pruned_model(make, plan) -> None:
    torch.manual_seed(0)
    model = make().eval()
    x = torch.randn(*INPUT)
    masked = layer_stats(model, x, _mask_groups(model, plan))
    pruned_model = _prune_physically(model, plan)
    pruned = layer_stats(pruned_model, x)
    assert _tuple(masked) == _tuple(pruned)
    # ... and each row is what upstream's own counter says for the pruned layer
    _, _, flops, params = tp.utils.count_ops_and_params(pruned_model, x, layer_wise=True)
    modules = dict(pruned_model.named_modules())
    assert [(r.macs, r.params) for r in pruned] == [(flops[modules[r.name]], params[modules[r.name]])
                                                    for r in pruned]
    assert sum(r.macs for r in masked) < sum(r.macs for r in layer_stats(model, x))


@pytest.fixture
def hand_masked():
    """Plain with conv1 channels 0-2 and conv2 channels 12-15 masked by hand."""
    torch.manual_seed(0)
    model = Plain().eval()
    x = torch.randn(*INPUT)
    before = layer_stats(model, x)
    masks = MaskSet()

    def keep_rows(param: torch.Tensor, rows: slice, dim: int = 0) -> torch.Tensor:
        keep = torch.ones_like(param, dtype=torch.bool)
        keep.narrow(dim, rows.start, rows.stop - rows.start).fill_(False)
        return keep

    for module, name in ((model.conv1, "weight"), (model.conv1, "bias"), (model.bn1, "weight"),
                         (model.bn1, "bias")):
        masks.update("channel", module, name, keep_rows(getattr(module, name), slice(0, 3)))
    masks.update("channel", model.conv2, "weight",
                 keep_rows(model.conv2.weight, slice(0, 3), dim=1)
                 & keep_rows(model.conv2.weight, slice(12, 16)))
    for name in ("weight", "bias"):
        masks.update("channel", model.bn2, name, keep_rows(getattr(model.bn2, name), slice(12, 16)))
    masks.update("channel", model.fc, "weight", keep_rows(model.fc.weight, slice(12, 16), dim=1))
    return before, layer_stats(model, x, masks)


def test_layer_stats_numbers_by_hand(hand_masked) -> None:
    before, after = hand_masked
    hw = 8 * 8
    assert _tuple(before) == [
        ("conv1", 3, 8, 9 * 3 * 8 * hw + 8 * hw, 8 * 3 * 9 + 8),
        ("conv2", 8, 16, 9 * 8 * 16 * hw, 16 * 8 * 9),
        ("fc", 16, 10, 16 * 10 + 10, 170)]
    assert _tuple(after) == [
        ("conv1", 3, 5, 9 * 3 * 5 * hw + 5 * hw, 5 * 3 * 9 + 5),
        ("conv2", 5, 12, 9 * 5 * 12 * hw, 12 * 5 * 9),
        ("fc", 12, 10, 12 * 10 + 10, 130)]


def test_report_text_has_per_layer_and_total_numbers(hand_masked) -> None:
    before, after = hand_masked
    text = PruningReport(before, after).text()
    assert re.search(r"^conv1\s+Conv2d\s+3 -> 3\s+8 -> 5\s+14,336\s+8,960\s+62\.5%", text, re.M)
    assert re.search(r"^conv2\s+Conv2d\s+8 -> 5\s+16 -> 12\s+73,728\s+34,560\s+46\.9%", text, re.M)
    assert re.search(r"^fc\s+Linear\s+16 -> 12\s+10 -> 10\s+170\s+130\s+76\.5%", text, re.M)
    assert re.search(r"^total\s+88,234\s+43,650\s+49\.5%\s+1,546\s+810$", text, re.M)
    assert "conv+linear MACs 88,234 -> 43,650 (49.5% kept)" in text
    assert "slice" not in text.lower()


def test_report_shows_slice_sparsity_from_the_slice_pruner(hand_masked) -> None:
    before, after = hand_masked
    sparsity = {"layers": {"conv2": {"zero": 9, "total": 36, "eligible": 36, "fraction": 0.25,
                                     "block_size": 4}},
                "overall": {"zero": 9, "total": 36, "eligible": 36, "fraction": 0.25},
                "skipped": {}}
    report = PruningReport(before, after, sparsity)
    text = report.text()
    assert re.search(r"^conv2\s.*\s25\.0%$", text, re.M)
    assert re.search(r"^conv1\s.*\s-$", text, re.M)
    assert "slice sparsity 25.0% of eligible slices zero" in text
    assert len(report.figure().axes) == 3  # channels, MACs, slice sparsity panels


def test_save_writes_text_and_png_atomically(hand_masked, tmp_path, caplog) -> None:
    before, after = hand_masked
    report = PruningReport(before, after, {"conv1": 0.5})
    with caplog.at_level(logging.INFO, logger="torch_pruning.pat"):
        txt, png = report.save(tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "pruning_report.png", "pruning_report.txt"]  # nothing left behind
    assert txt.read_text() == report.text()
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    assert "Pruning report: conv+linear MACs 88,234 -> 43,650" in caplog.text
