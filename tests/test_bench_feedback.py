"""bench_accuracy.py's masks with feedback: what the network computes while masked is exactly the
network upstream's pruning (or our pruner's removal) would leave, and the dense weights survive
and learn."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

import torch_pruning as tp
from benchmarks import bench_accuracy as bench


@pytest.mark.parametrize("arch", ["vgg", "resnet"])
@pytest.mark.parametrize("mode", ["weights", "inputs"])
def test_masked_network_computes_what_the_pruned_one_does(arch: str, mode: str) -> None:
    torch.manual_seed(0)
    model = bench.build(arch)
    importance = tp.importance.MagnitudeImportance(p=2)
    masks = bench.FeedbackMasks(
        model, lambda r: bench.upstream_columns(model, importance, r), mode)
    model.train()
    masks.plan(0.5)
    assert model.training  # upstream's tracing must not leave the model in eval mode
    dense = {layer: layer.weight.detach().clone() for layer in masks.columns}
    x = torch.randn(4, 3, 32, 32)
    model(x).logsumexp(1).sum().backward()
    masks.restore()
    assert all(torch.equal(layer.weight, dense[layer]) for layer in dense)
    grads = [float(layer.weight.grad[:, idx].abs().sum()) for layer, idx in masks.columns.items()]
    if mode == "weights":  # the feedback: removed columns learn what they would add
        assert all(g > 0 for g in grads)
    else:  # the inputs are gated: the columns see zeros
        assert all(g == 0 for g in grads)

    pruned = copy.deepcopy(model)
    for module in pruned.modules():  # the copy without the masks' hooks
        module._forward_pre_hooks.clear()
        module._forward_hooks.clear()
    bench._meta_pruner(pruned, importance, 0.5).step()
    model.eval()
    pruned.eval()
    with torch.no_grad():
        assert torch.allclose(model(x), pruned(x), atol=1e-5)
    # evaluation leaves the dense weights in place for the next training step
    assert all(torch.equal(layer.weight, dense[layer]) for layer in dense)
    assert bench.macs_of(pruned) < 0.5 * bench.macs_of(bench.build(arch))


@pytest.mark.parametrize("arch", ["vgg", "resnet"])
def test_our_plan_masked_with_feedback_is_what_our_removal_leaves(arch: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = bench.build(arch)
    example = torch.randn(1, 3, 32, 32)
    cfg = tp.pat.recommend_config(model, example, 0.25, 30, lr_restart=True)
    (tmp_path / "pruning_config.json").write_text(json.dumps(cfg))
    cp = tp.Pruning(model, str(tmp_path), example_inputs=example, log=None).channel_pruner
    masks = bench.FeedbackMasks(model, lambda level: bench.our_columns(cp, level))
    masks.plan(0.25)
    x = torch.randn(4, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        masked = model(x)
    masks.remove()
    plan, ratio = bench.fresh_plan(cp, 0.25)
    cp._commit(plan, ratio, 0, None)
    cp._finish(model, 0, None, physical=True)
    model.eval()
    with torch.no_grad():
        assert torch.allclose(masked, model(x), atol=1e-5)
    assert bench.macs_of(model) == pytest.approx(0.25 * bench.macs_of(bench.build(arch)), rel=0.01)
