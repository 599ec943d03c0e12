"""Masks are exact: masked entries stay exactly zero through any number of optimizer steps."""

from __future__ import annotations

import copy
from typing import Callable, Dict, Iterable, Tuple

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from models import ResidualCNN, SmallCNN
from torch import nn

from torch_pruning.pat.channel.pruner import ChannelPruner
from torch_pruning.pat.config.models import ChannelSparsityArgs
from torch_pruning.pat.core.masks import MaskSet

OPTIMIZERS: Dict[str, Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]] = {
    "sgd-momentum": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-2),
    "sgd-nesterov": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True,
                                              weight_decay=1e-2),
    "adam": lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=1e-2),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=1e-1),
}


def _train(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int,
           after_backward: Callable[[], None] = lambda: None) -> None:
    model.train()
    for step in range(steps):
        torch.manual_seed(step)
        loss = model(torch.randn(4, 3, 12, 12)).pow(2).mean() + 0.1 * model(
            torch.randn(4, 3, 12, 12)).mean()
        optimizer.zero_grad()
        loss.backward()
        after_backward()
        optimizer.step()


def _masked_values(masks: MaskSet) -> Tuple[int, float]:
    """(number of masked entries, largest |value| among them)."""
    count, worst = 0, 0.0
    for module, name in masks.keys():
        keep = masks.effective(module, name)
        values = getattr(module, name).detach()[~keep]
        count += values.numel()
        worst = max(worst, float(values.abs().max()) if values.numel() else 0.0)
    return count, worst


def _pruner(model: nn.Module, masks: MaskSet) -> ChannelPruner:
    cfg = ChannelSparsityArgs(start_epoch=0, end_epoch=3, global_prune_rate=0.8,
                              prune_at_target=False, regularize={"reg": 1e-2, "gamma": 2.0})
    return ChannelPruner(model, cfg, example_inputs=torch.randn(1, 3, 12, 12), masks=masks)


@pytest.mark.parametrize("opt", list(OPTIMIZERS))
def test_channel_masks_survive_optimizer_steps(opt: str) -> None:
    torch.manual_seed(0)
    model = ResidualCNN()
    masks = MaskSet()
    pruner = _pruner(model, masks)
    optimizer = OPTIMIZERS[opt](model.parameters())
    _train(model, optimizer, 5, lambda: pruner.regularize(model))
    pruner.prune(model, 0)
    count, _ = _masked_values(masks)
    assert count > 0
    # the optimizer already holds momentum / Adam moments for the now-masked entries
    _train(model, optimizer, 60, lambda: pruner.regularize(model))
    assert _masked_values(masks) == (count, 0.0)


def test_without_masks_the_same_entries_drift() -> None:
    """Control: zeroing once is not enough; momentum built before pruning revives the zeros."""
    torch.manual_seed(0)
    model = ResidualCNN()
    twin = copy.deepcopy(model)
    optimizers = [OPTIMIZERS["sgd-momentum"](m.parameters()) for m in (model, twin)]
    masks = MaskSet()
    pruner = _pruner(model, masks)
    for m, optimizer in zip((model, twin), optimizers):
        _train(m, optimizer, 5)
    pruner.prune(model, 0)
    names = {m: n for n, m in model.named_modules()}
    zeroed = [(twin.get_submodule(names[m]), p, masks.effective(m, p)) for m, p in masks.keys()]
    with torch.no_grad():  # the same zeros in the twin, but nothing keeps them there
        for module, p, keep in zeroed:
            getattr(module, p).mul_(keep)
    for m, optimizer in zip((model, twin), optimizers):
        _train(m, optimizer, 3)
    assert _masked_values(masks)[1] == 0.0
    assert max(float(getattr(m, p).detach()[~keep].abs().max()) for m, p, keep in zeroed) > 0


def test_masks_only_grow() -> None:
    torch.manual_seed(0)
    model = SmallCNN()
    masks = MaskSet()
    pruner = _pruner(model, masks)
    optimizer = OPTIMIZERS["sgd-momentum"](model.parameters())
    before: Dict[Tuple[nn.Module, str], torch.Tensor] = {}
    for epoch in range(4):
        _train(model, optimizer, 3, lambda: pruner.regularize(model))
        pruner.prune(model, epoch)
        for key in masks.keys():
            keep = masks.effective(*key)
            if key in before:
                assert not bool((keep & ~before[key]).any()), "a masked entry was un-masked"
            before[key] = keep.clone()
    assert sum(int((~k).sum()) for k in before.values()) > 0


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2 ** 16), density=st.floats(0.05, 0.9),
       opt=st.sampled_from(sorted(OPTIMIZERS)))
def test_random_masks_stay_exactly_zero(seed: int, density: float, opt: str) -> None:
    """Any entry-wise masks on every parameter (channel and slice layers together)."""
    gen = torch.Generator().manual_seed(seed)
    model = SmallCNN(width=4)
    masks = MaskSet()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            layer = "slice" if param.dim() == 4 else "channel"
            masks.update(layer, module, name, torch.rand(param.shape, generator=gen) > density)
    count, worst = _masked_values(masks)
    assert worst == 0.0
    _train(model, OPTIMIZERS[opt](model.parameters()), 8)
    assert _masked_values(masks) == (count, 0.0)


def test_a_stale_mask_never_breaks_an_optimizer_step(caplog) -> None:
    """A model reshaped behind the pruner's back (e.g. a checkpoint loaded with
    load_state_dict_pruned after Pruning was built) must not fail any optimizer's step."""
    import logging

    conv = nn.Conv2d(3, 4, 3)
    masks = MaskSet()
    keep = torch.ones_like(conv.weight, dtype=torch.bool)
    keep[0] = False
    masks.update("channel", conv, "weight", keep)
    conv.weight = nn.Parameter(torch.randn(2, 3, 3, 3))  # reshaped elsewhere
    other = nn.Linear(2, 2)
    optimizer = torch.optim.SGD(list(other.parameters()) + [conv.weight], lr=0.1)
    other(torch.ones(1, 2)).sum().backward()
    with caplog.at_level(logging.WARNING, logger="torch_pruning.pat"):
        optimizer.step()  # the global post-step hook runs here
    assert any("the stale mask is dropped" in r.getMessage() for r in caplog.records)
    assert masks.effective(conv, "weight") is None
    assert conv.weight.abs().sum() > 0  # the new weights were not zeroed by the old mask
