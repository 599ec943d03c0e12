"""bench_accuracy.py's dense network and subnetwork trained together: the gated pass computes
what the removal leaves and trains nothing the removal takes away, BatchNorm's statistics stay
the dense network's, and a short run lands on the budget."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks import bench_accuracy as bench
from benchmarks.columns import plan_columns
from benchmarks.measured_widths import batch_statistics
from benchmarks.sandwich import gated, recalibrate_bn, sandwich_loss
from tests.models.bench import vgg_pruner


def test_gated_pass_computes_the_removal_and_trains_nothing_it_removes(tmp_path: Path) -> None:
    model, cp = vgg_pruner(tmp_path)
    plan = cp._final_plan()
    columns = plan_columns(cp, plan)
    x = torch.randn(8, 3, 32, 32)
    model.eval()
    with gated(columns):
        out = model(x)
    out.square().sum().backward()
    # the removed inputs' consumer columns get no gradient from the gated pass
    for layer, idx in columns.items():
        assert float(layer.weight.grad[:, idx].abs().sum()) == 0.0
        assert float(layer.weight.grad.abs().sum()) > 0.0
    with torch.no_grad():
        assert not torch.allclose(model(x), out)  # the gates are gone after the block
    cp._commit(plan, cp.schedule.final_ratio, 0, None)
    cp._finish(model, 0, None, physical=True)
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model(x), out.detach(), atol=1e-5)


def test_subnetwork_pass_leaves_the_dense_running_statistics(tmp_path: Path) -> None:
    model, cp = vgg_pruner(tmp_path)
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    model.train()
    with torch.no_grad():
        dense = model(x)
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    sandwich_loss(model, x, y, dense, plan_columns(cp, cp._final_plan()))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in stats.items())
    assert model.training


def test_recalibrated_statistics_are_the_images_average() -> None:
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)
    model = nn.Sequential(conv, bn)
    images = torch.randn(64, 3, 8, 8)
    recalibrate_bn(model, images, batch=32)
    with torch.no_grad():
        feats = conv(images)
    halves = [feats[:32].mean(dim=(0, 2, 3)), feats[32:].mean(dim=(0, 2, 3))]
    assert torch.allclose(bn.running_mean, (halves[0] + halves[1]) / 2, atol=1e-5)
    assert bn.momentum == 0.1 and model.training


def test_subnetwork_loss_is_the_distance_from_the_dense_output(tmp_path: Path) -> None:
    model, cp = vgg_pruner(tmp_path)
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    columns = plan_columns(cp, cp._final_plan())
    with torch.no_grad():
        model.head[-1].weight.mul_(100)  # confident outputs, as after training
        with batch_statistics(model):  # the dense pass of a training step, stats untouched
            dense = model(x)
        same = sandwich_loss(model, x, y, dense, {})
        pruned = sandwich_loss(model, x, y, dense, columns)
        with gated(columns), batch_statistics(model):
            labels_only = F.cross_entropy(model(x), y)
        assert torch.allclose(sandwich_loss(model, x, y, dense, columns, alpha=0.0), labels_only)
    assert abs(float(same)) < 1e-5  # nothing removed: nothing to distill
    assert float(pruned) > 0.01


def test_short_run_lands_on_the_budget_and_removes_the_last_trained_plan(tmp_path: Path) -> None:
    torch.manual_seed(0)
    x = torch.randn(256, 3, 32, 32)
    y = torch.randint(0, 10, (256,))
    data = (x, y, x[:64], y[:64])
    run = bench.Run(bench.build("vgg"), data, epochs=4, seed=0, batch=64)
    base = bench.macs_of(run.model)
    sandwich = {"begin": 0.25, "end": 0.75, "kd_after": {}}  # distilled after the removal
    out = bench.sandwich_run(run, 0.25, {"sandwich": sandwich}, "t", bench._merge)
    assert out["reached"]
    assert set(out["at_removal"]) == {"dense", "removed"}
    assert abs(bench.macs_of(run.model) / base - 0.25) < 0.01
    assert len(out["swaps"]) == 1  # ranked afresh once inside the window
