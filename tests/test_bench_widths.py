"""bench_accuracy.py's measured per-layer widths: the greedy measurement reaches the budget by
taking channels where the loss grows least, and the profile steers our pruner's selection."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import torch_pruning as tp
from benchmarks import bench_accuracy as bench
from benchmarks.columns import zeroed
from benchmarks.measured_widths import (batch_statistics, measured_fractions,
                                        profiled_selection, shared_groups)
from tests.models.bench import vgg_pruner


def _fractions(plan: dict, cp: Any) -> list:
    return [round(float(plan[g.number].float().mean()), 3) for g in cp.groups]


def test_zeroed_columns_compute_what_the_removal_leaves_and_come_back(tmp_path: Path) -> None:
    model, cp = vgg_pruner(tmp_path)
    model.eval()
    plan = cp._final_plan()
    x = torch.randn(8, 3, 32, 32)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with zeroed(bench.plan_columns(cp, plan)), torch.no_grad():
        masked = model(x)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    cp._commit(plan, cp.schedule.final_ratio, 0, None)
    cp._finish(model, 0, None, physical=True)
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model(x), masked, atol=1e-5)


def test_measured_widths_reach_the_budget_where_the_loss_grows_least(tmp_path: Path) -> None:
    model, cp = vgg_pruner(tmp_path)
    torch.manual_seed(1)
    x = torch.randn(64, 3, 32, 32)
    y = torch.randint(0, 10, (64,))
    batches = [(x[:32], y[:32]), (x[32:], y[32:])]
    fractions = measured_fractions(cp, model, batches, 0.25,
                                   lambda plan: bench.plan_columns(cp, plan))
    assert model.training  # measured in eval mode, put back
    counts = {g.number: round(fractions[g.number] * g.units) for g in cp.groups}
    order = {g.number: torch.argsort(cp._scores()[g.number], stable=True) for g in cp.groups}
    plan = {}
    for g in cp.groups:
        plan[g.number] = torch.zeros(g.units, dtype=torch.bool)
        plan[g.number][order[g.number][:counts[g.number]]] = True
    assert cp._cost(plan) <= 0.25 * cp.base_cost
    assert len({round(f, 2) for f in fractions.values()}) > 1  # not one ratio everywhere
    assert max(fractions.values()) <= cp.rules.max_pruning_rate

    def loss(p: dict) -> float:
        model.eval()
        with zeroed(bench.plan_columns(cp, p)), torch.no_grad():
            out = sum(float(F.cross_entropy(model(a), b)) for a, b in batches) / 2
        model.train()
        return out
    # against the uniform plan at the same budget, the measured one loses no more loss
    uniform = cp._select(cp.schedule.final_ratio)[0]
    assert loss(plan) <= loss(uniform) + 1e-6


def test_a_profile_steers_the_pruners_selection(tmp_path: Path) -> None:
    model, cp = vgg_pruner(tmp_path)
    uniform = cp._select(cp.schedule.final_ratio)[0]
    with profiled_selection({g.number: 1.0 for g in cp.groups}):
        same = cp._select(cp.schedule.final_ratio)[0]
    assert all(torch.equal(uniform[k], same[k]) for k in uniform)
    first = cp.groups[0].number
    profile = {g.number: (0.2 if g.number == first else 1.0) for g in cp.groups}
    with profiled_selection(profile):
        steered, _, reached = cp._select(cp.schedule.final_ratio)
    assert reached  # still lands on the budget
    assert cp._cost(steered) <= 0.25 * cp.base_cost
    assert _fractions(steered, cp)[0] < _fractions(uniform, cp)[0]  # the stem keeps more
    assert sum(_fractions(steered, cp)[1:]) > sum(_fractions(uniform, cp)[1:])
    # outside the block the selection is uniform again
    assert all(torch.equal(uniform[k], v) for k, v in cp._select(cp.schedule.final_ratio)[0]
               .items())


def test_the_profile_blends_from_the_same_ratio_to_the_measured_widths(tmp_path: Path) -> None:
    model, cp = vgg_pruner(tmp_path)
    torch.manual_seed(2)
    data = (torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,)),
            torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,)))
    run = bench.Run(model, data, epochs=2, seed=0)
    measured = bench.measured_profile(cp, run, 0.25, {"images": 64}, seed=0)
    assert max(measured.values()) == 1.0 and min(measured.values()) < 1.0
    uniform = bench.measured_profile(cp, run, 0.25, {"images": 64, "blend": 0.0}, seed=0)
    assert set(uniform.values()) == {1.0}
    half = bench.measured_profile(cp, run, 0.25, {"images": 64, "blend": 0.5}, seed=0)
    assert all(abs(half[k] - (1 + measured[k]) / 2) < 1e-9 for k in measured)


def test_batch_statistics_normalize_per_batch_and_leave_the_running_ones(tmp_path: Path) -> None:
    model, _ = vgg_pruner(tmp_path)
    model.eval()
    x = torch.randn(32, 3, 32, 32) * 3 + 1
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    with torch.no_grad():
        running = model(x)
        with batch_statistics(model):
            batch = model(x)
        assert not model.training
        assert all(torch.equal(b, buffers[n]) for n, b in model.named_buffers())
        model.train()
        trained = model(x)  # train mode normalizes the same way (and moves the buffers)
    assert torch.allclose(batch, trained, atol=1e-5)
    assert not torch.allclose(batch, running, atol=1e-3)


def test_shared_groups_are_the_residual_streams(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = bench.build("resnet")
    example = torch.randn(1, 3, 32, 32)
    (tmp_path / "pruning_config.json").write_text(
        json.dumps(tp.pat.recommend_config(model, example, 0.1, 30)))
    cp = tp.Pruning(model, str(tmp_path), example_inputs=example, log=None).channel_pruner
    names = {m: n for n, m in model.named_modules()}
    shared = shared_groups(cp)
    assert len(shared) == 3  # one residual stream per stage
    for g in cp.groups:
        produced = {names[sl.module] for sl in g.slices if sl.name == "weight" and sl.dim == 0
                    and isinstance(sl.module, torch.nn.Conv2d)}
        assert (g.number in shared) == any(".conv2" in n for n in produced)
    uniform = cp._select(cp.schedule.final_ratio)[0]
    with profiled_selection({g.number: 0.5 if g.number in shared else 1.0 for g in cp.groups}):
        steered = cp._select(cp.schedule.final_ratio)[0]
    for g in cp.groups:  # the streams keep more, the blocks' inner convolutions give more
        if g.number in shared:
            assert steered[g.number].sum() < uniform[g.number].sum()
        else:
            assert steered[g.number].sum() >= uniform[g.number].sum()
    assert shared_groups(vgg_pruner(tmp_path / "vgg")[1]) == []  # a plain chain has none
