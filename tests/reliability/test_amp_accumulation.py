"""Mixed precision (bf16 autocast + GradScaler) and gradient accumulation with both pruners.

The documented positions (docs/reliability.md):

* ``pruner.slice_regularize(model)`` is part of the loss: add it to each micro-batch's loss
  (scaled by ``1/N`` like the loss) before ``scaler.scale(loss).backward()``;
* ``pruner.channel_regularize(model)`` edits the gradients: once per optimizer step, after the
  last micro-batch's ``backward()`` and after ``scaler.unscale_(optimizer)``, before
  ``scaler.step(optimizer)``.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Dict, List, Optional, Tuple

import pytest
import torch
from torch import nn

import reliability_harness as H
import torch_pruning as tp
from models import GroupedCNN, SmallCNN

INIT_SCALE = 2.0 ** 16


def masked_entries(pruner: Any) -> List[Tuple[str, torch.Tensor]]:
    """Every masked entry of every parameter: (name, values), which must be exactly zero."""
    out = []
    for module, name in pruner.masks.keys():
        keep = pruner.masks.effective(module, name)
        out.append((f"{type(module).__name__}.{name}", getattr(module, name).detach()[~keep]))
    return out


def assert_masks_exact(pruner: Any) -> int:
    entries = masked_entries(pruner)
    for name, values in entries:
        assert bool((values == 0).all()), f"{name}: a masked entry is not zero"
    return sum(v.numel() for _, v in entries)


def train_step(model: nn.Module, pruner: Any, optimizer: torch.optim.Optimizer,
               micro_batches: List[tuple], scaler: Optional[torch.amp.GradScaler]) -> float:
    """One optimizer step over ``micro_batches``, in the documented order."""
    optimizer.zero_grad()
    total = 0.0
    for x, y in micro_batches:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=scaler is not None):
            loss = nn.functional.cross_entropy(model(x), y)
        loss = (loss + pruner.slice_regularize(model)) / len(micro_batches)
        (scaler.scale(loss) if scaler is not None else loss).backward()
        total += float(loss.detach())
    if scaler is not None:
        scaler.unscale_(optimizer)
    pruner.channel_regularize(model)  # once per optimizer step, on unscaled gradients
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return total


@pytest.mark.timeout(60)
@pytest.mark.parametrize("amp, accumulate", [(True, 1), (False, 4), (True, 4)],
                         ids=["bf16+GradScaler", "accumulation", "bf16+accumulation"])
def test_masks_stay_exact_through_a_full_run(write_config: Any, amp: bool, accumulate: int) -> None:
    """Masking, the removal at the target and slice pruning, checked after every step."""
    folder = write_config(H.CONFIG)
    model = H.new_model()
    pruner = tp.Pruning(model, folder)
    optimizer = H.make_optimizer(model)
    scaler = torch.amp.GradScaler("cpu", init_scale=INIT_SCALE) if amp else None
    checked = 0
    for epoch in range(7):
        for step in range(H.STEPS):
            x, y = H.batch(epoch, step)
            micro = list(zip(x.chunk(accumulate), y.chunk(accumulate)))
            assert math.isfinite(train_step(model, pruner, optimizer, micro, scaler))
            checked += assert_masks_exact(pruner)
        pruner.prune(model, epoch)
        if pruner.channel_pruner.reset_optimizer:
            optimizer = H.make_optimizer(model)
            pruner.channel_pruner.reset_optimizer = False
        assert_masks_exact(pruner)
    assert pruner.channel_pruner.reached_target and checked > 0
    assert pruner.slice_pruner.sparsity()["overall"]["fraction"] == pytest.approx(0.5, abs=0.01)


def _grads(model: nn.Module) -> Dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.timeout(60)
def test_channel_penalty_goes_on_unscaled_gradients() -> None:
    """After ``unscale_`` the penalty is added at full strength; before it, it would be divided
    by the loss scale (65536 here) and do almost nothing."""
    cfg = {"channel_sparsity_args": dict(start_epoch=0, end_epoch=1, global_prune_rate=0.5,
                                         input_shape=[1, 3, 16, 16], regularize={"reg": 0.1})}
    model = SmallCNN()
    pruner = tp.Pruning(model, cfg)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    pruner.channel_regularize(model)
    penalty = _grads(model)  # the penalty gradient alone
    assert any(float(g.abs().sum()) > 0 for g in penalty.values())
    x, y = H.batch(0, 0)

    def scaled_backward() -> torch.amp.GradScaler:
        scaler = torch.amp.GradScaler("cpu", init_scale=INIT_SCALE)
        optimizer.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = nn.functional.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        return scaler

    scaler = scaled_backward()
    scaler.unscale_(optimizer)
    plain = _grads(model)
    pruner.channel_regularize(model)  # the documented position
    for name, g in _grads(model).items():
        assert torch.allclose(g - plain[name], penalty[name], rtol=1e-4, atol=1e-6), name

    scaler = scaled_backward()
    pruner.channel_regularize(model)  # the wrong position: before unscale_
    scaler.unscale_(optimizer)
    name = "features.1.0.weight"
    shrunk = (_grads(model)[name] - plain[name]).norm() / penalty[name].norm()
    assert float(shrunk) < 1e-3


@pytest.mark.timeout(60)
def test_a_skipped_step_keeps_weights_and_masks(write_config: Any) -> None:
    """Inf gradients: GradScaler skips ``optimizer.step()``; nothing moves, masks hold, and the
    next steps and ``prune()`` calls work."""
    folder = write_config(H.config(start_epoch=0, end_epoch=3))
    model = H.new_model()
    pruner = tp.Pruning(model, folder)
    optimizer = H.make_optimizer(model)
    scaler = torch.amp.GradScaler("cpu", init_scale=INIT_SCALE)
    train_step(model, pruner, optimizer, [H.batch(0, 0)], scaler)
    pruner.prune(model, 0)
    masked = assert_masks_exact(pruner)
    assert masked > 0
    before = copy.deepcopy(model.state_dict())

    optimizer.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = nn.functional.cross_entropy(model(H.batch(1, 0)[0]), H.batch(1, 0)[1])
    scaler.scale(loss).backward()
    model.fc.weight.grad[0, 0] = math.inf  # an overflow
    scaler.unscale_(optimizer)
    pruner.channel_regularize(model)
    scaler.step(optimizer)  # skipped
    scaler.update()
    assert scaler.get_scale() == INIT_SCALE / 2
    params = {n for n, _ in model.named_parameters()}
    for name, value in model.state_dict().items():
        if name in params:
            assert torch.equal(value, before[name]), name
    assert_masks_exact(pruner)

    for step in range(2):
        train_step(model, pruner, optimizer, [H.batch(1, step + 1)], scaler)
        assert all(bool(p.isfinite().all()) for p in model.parameters())
        assert_masks_exact(pruner)
    pruner.prune(model, 1)
    assert assert_masks_exact(pruner) > masked or pruner.channel_pruner.reached_target


@pytest.mark.timeout(60)
def test_accumulation_equals_one_big_batch_when_regularized_once_per_step() -> None:
    """4 micro-batches + one ``channel_regularize`` before the step train like one batch of 4x
    the size; regularizing after every micro-batch would apply the penalty 4 times."""
    cfg = {"channel_sparsity_args": dict(start_epoch=0, end_epoch=1, global_prune_rate=0.5,
                                         input_shape=[1, 3, 16, 16],
                                         regularize={"reg": 0.05, "gamma": 2.0})}
    torch.manual_seed(0)
    init = GroupedCNN()  # GroupNorm: per-sample statistics, so micro-batches are exact

    def setup() -> Tuple[nn.Module, Any, torch.optim.Optimizer]:
        model = copy.deepcopy(init)
        pruner = tp.Pruning(model, cfg)
        pruner.prune(model, 0)  # some channels masked
        return model, pruner, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    (big, big_p, big_o), (acc, acc_p, acc_o), (wrong, wrong_p, wrong_o) = setup(), setup(), setup()
    for step in range(5):
        x, y = H.batch(0, step)
        train_step(big, big_p, big_o, [(x, y)], None)
        micro = list(zip(x.chunk(4), y.chunk(4)))
        train_step(acc, acc_p, acc_o, micro, None)
        wrong_o.zero_grad()
        for xm, ym in micro:
            (nn.functional.cross_entropy(wrong(xm), ym) / 4).backward()
            wrong_p.channel_regularize(wrong)  # once per micro-batch: 4x the penalty
        wrong_o.step()
        assert assert_masks_exact(acc_p) > 0
    gaps = {n: float((a - b).abs().max()) for (n, a), b in
            zip(acc.state_dict().items(), big.state_dict().values())}
    assert max(gaps.values()) < 1e-5, gaps
    wrong_gap = max(float((a - b).abs().max()) for a, b in
                    zip(wrong.state_dict().values(), big.state_dict().values()))
    assert wrong_gap > 100 * max(max(gaps.values()), 1e-7)
