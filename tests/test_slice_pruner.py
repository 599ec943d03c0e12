"""Slice pruning as a user sees it: rates reached, protected slices kept, masks exact."""

from __future__ import annotations

import json
import logging
from typing import Callable, Dict, List, Optional

import pytest
import torch
from torch import nn

import torch_pruning as tp
from torch_pruning.pat.config.models import SliceMode, SliceSparsityArgs
from torch_pruning.pat.config.errors import PruningConfigError
from torch_pruning.pat.core.masks import MaskSet
from torch_pruning.pat.slice.layout import conv_block_size, slice_layout
from torch_pruning.pat.slice.pruner import SlicePruner
from torch_pruning.pat.core.schedule import SliceSchedule

from models.slice import SLICE_LAYERS, ChainNet, MixedConvNet, mask_channels

A, A_DW = 4, 2


def make_cfg(**kw) -> SliceSparsityArgs:
    args = dict(block_size=A, depthwise_block_size=A_DW, start_epoch=0, end_epoch=2,
                epoch_rate=1, prune_rate=0.5, pruning_gradually=True, reg=1e-3,
                disable_first_index=False)
    args.update(kw)
    return SliceSparsityArgs(**args)


def make(model_cls=MixedConvNet, masks: Optional[MaskSet] = None, **kw):
    torch.manual_seed(0)
    model = model_cls()
    masks = masks if masks is not None else MaskSet()
    cfg = make_cfg(**kw)
    return model, masks, SlicePruner(model, cfg, masks=masks), cfg


def run_schedule(model: nn.Module, pruner: SlicePruner, cfg: SliceSparsityArgs) -> None:
    for epoch in range(cfg.end_epoch + 1):
        pruner.prune(model, epoch)


def slice_view(conv: nn.Conv2d, masks: MaskSet, dfi: bool):
    """(all-zero flags, eligible flags) of conv's slices, measured on the weights."""
    a_size = conv_block_size(conv, A, A_DW)
    cmask = masks.get("channel", conv, "weight")
    surviving = None if cmask is None else cmask.flatten(1).any(1)
    lay = slice_layout(conv.weight.shape, a_size, surviving)
    zero = (lay.gather(conv.weight.detach()) == 0).all(1)
    eligible = torch.ones_like(zero) if cmask is None else lay.gather(cmask).any(1)
    if dfi:
        eligible &= lay.x != 0
    return zero, eligible, lay


def zero_fraction(model: nn.Module, masks: MaskSet, name: str, dfi: bool = False):
    zero, eligible, _ = slice_view(model.get_submodule(name), masks, dfi)
    return int((zero & eligible).sum()), int(eligible.sum())


def same_mask(a: Optional[torch.Tensor], b: Optional[torch.Tensor]) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and torch.equal(a, b))


def batches(n: int, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(4, 3, 8, 8, generator=gen), torch.randint(0, 10, (4,), generator=gen))
            for _ in range(n)]


def train(model: nn.Module, pruner: SlicePruner, optimizer: torch.optim.Optimizer,
          data) -> None:
    for x, y in data:
        loss = nn.functional.cross_entropy(model(x), y) + pruner.regularize(model)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


# --------------------------------------------------------------------------- rates
@pytest.mark.parametrize("rate", [0.3, 0.5, 0.9])
@pytest.mark.parametrize("dfi", [False, True])
@pytest.mark.parametrize("gradual", [True, False])
def test_final_prune_reaches_the_rate_in_every_layer(rate, dfi, gradual):
    model, masks, pruner, cfg = make(prune_rate=rate, disable_first_index=dfi,
                                     pruning_gradually=gradual)
    run_schedule(model, pruner, cfg)
    report = pruner.sparsity()["layers"]
    for name in SLICE_LAYERS:
        zero, eligible = zero_fraction(model, masks, name, dfi)
        assert abs(zero - rate * eligible) <= 1, name
        assert report[name]["zero"] == zero and report[name]["eligible"] == eligible
    if dfi:  # a 1x1 conv has only x=0 slices: nothing to prune
        assert report["pw"]["eligible"] == 0 and report["pw"]["zero"] == 0


def test_first_index_slices_are_never_zeroed():
    model, masks, pruner, cfg = make(prune_rate=1.0, disable_first_index=True, reg=1.0)
    train(model, pruner, torch.optim.SGD(model.parameters(), lr=0.05), batches(2))
    run_schedule(model, pruner, cfg)
    for name in SLICE_LAYERS:
        zero, eligible, lay = slice_view(model.get_submodule(name), masks, True)
        assert not zero[lay.x == 0].any(), name
        assert zero[eligible].all(), name


@pytest.mark.parametrize("schedule", [
    dict(start_epoch=0, end_epoch=4, epoch_rate=1, pruning_gradually=True),
    dict(start_epoch=1, end_epoch=6, epoch_rate=2, pruning_gradually=True),
    dict(start_epoch=2, end_epoch=3, epoch_rate=1, pruning_gradually=False),
])
def test_masks_grow_along_the_schedule(schedule):
    model, masks, pruner, cfg = make(prune_rate=0.8, **schedule)
    sched = SliceSchedule.from_config(cfg)
    data = batches(1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    previous: Dict[str, torch.Tensor] = {}
    reached = 0.0
    for epoch in range(cfg.end_epoch + 2):
        train(model, pruner, opt, data)
        pruner.prune(model, epoch)
        rate = sched.rate_at(epoch)
        reached = rate if rate is not None else reached
        for name in SLICE_LAYERS:
            zero, eligible, _ = slice_view(model.get_submodule(name), masks, False)
            assert abs(int(zero.sum()) - reached * int(eligible.sum())) <= 1, (epoch, name)
            if name in previous:
                assert zero[previous[name]].all(), "a masked slice came back"
            previous[name] = zero
    assert reached == pytest.approx(0.8)


@pytest.mark.parametrize("start,end,every,gradual,expected", [
    (0, 3, 1, True, {0: 0.25, 1: 0.5, 2: 0.75, 3: 1.0}),
    (2, 6, 2, True, {2: 1 / 3, 4: 2 / 3, 6: 1.0}),
    (1, 6, 2, True, {1: 1 / 3, 3: 2 / 3, 5: 1.0}),   # same step epochs as channel pruning
    (1, 4, 2, False, {1: 1.0, 3: 1.0}),
    (3, 3, 5, True, {3: 1.0}),
])
def test_schedule_rates(start, end, every, gradual, expected):
    sched = SliceSchedule(start, end, every, 1.0, gradual)
    got = {e: sched.rate_at(e) for e in range(end + 3) if sched.rate_at(e) is not None}
    assert got == pytest.approx(expected)


# --------------------------------------------------------------------------- exact masks
@pytest.mark.parametrize("make_opt", [
    lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-2),
    lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=1e-2),
    lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=1e-1),
], ids=["sgd-momentum-wd", "adam-wd", "adamw"])
def test_zero_slices_stay_zero_through_optimizer_steps(make_opt: Callable):
    model, masks, pruner, _ = make(prune_rate=0.5, end_epoch=0, reg=1e-2)
    opt = make_opt(model.parameters())
    train(model, pruner, opt, batches(3))     # build up momentum / Adam moments first
    pruner.prune(model, 0)
    zero_before = {n: slice_view(model.get_submodule(n), masks, False)[0] for n in SLICE_LAYERS}
    weights_before = {n: model.get_submodule(n).weight.detach().clone() for n in SLICE_LAYERS}
    train(model, pruner, opt, batches(12, seed=2))
    for name in SLICE_LAYERS:
        conv = model.get_submodule(name)
        zero_after = slice_view(conv, masks, False)[0]
        assert torch.equal(zero_after, zero_before[name]), name
        assert not torch.equal(conv.weight.detach(), weights_before[name]), "no training?"


def test_penalty_gradient_only_reaches_unprotected_live_slices():
    model, masks, pruner, cfg = make(prune_rate=0.5, end_epoch=0, disable_first_index=True,
                                     reg=0.1)
    pruner.prune(model, 0)
    model.zero_grad()
    penalty = pruner.regularize(model)
    penalty.backward()
    n_active = 0
    for name in SLICE_LAYERS:
        conv = model.get_submodule(name)
        zero, eligible, lay = slice_view(conv, masks, True)
        grad = lay.gather(conv.weight.grad).abs().sum(1)
        active = eligible & ~zero
        assert (grad[~active] == 0).all(), name
        assert (grad[active] > 0).all(), name
        n_active += int(active.sum())
    # each live slice contributes ||s|| / (||s|| + eps) ~= 1
    assert float(penalty.detach()) == pytest.approx(cfg.reg * n_active, rel=1e-4)


@pytest.mark.parametrize("model_cls,channel_masked", [(MixedConvNet, False), (ChainNet, True)])
def test_penalty_matches_the_formula_computed_by_plain_autograd(model_cls, channel_masked):
    masks = MaskSet()
    torch.manual_seed(0)
    model = model_cls()
    if channel_masked:
        mask_channels(masks, model.c1, model.c2, [0, 3, 9, 10])
    cfg = make_cfg(prune_rate=0.3, end_epoch=0, disable_first_index=True, reg=0.01)
    pruner = SlicePruner(model, cfg, masks=masks)
    pruner.prune(model, 0)
    with torch.no_grad():  # a zero slice that is not masked must not be penalized
        next(c for c in model.modules() if isinstance(c, nn.Conv2d)).weight[:, :, 1, 1] = 0
    penalty = pruner.regularize(model)
    penalty.backward()
    expected = torch.zeros(())
    convs = [m for m in model.modules()
             if isinstance(m, nn.Conv2d) and m is not getattr(model, "odd", None)]
    weights = [c.weight.detach().clone().requires_grad_() for c in convs]
    for conv, w in zip(convs, weights):
        _, eligible, lay = slice_view(conv, masks, True)
        smask = masks.get("slice", conv, "weight")
        pruned = torch.zeros_like(eligible) if smask is None else ~lay.gather(smask).any(1)
        norms = w.flatten()[lay.index].norm(dim=1)
        act = eligible & ~pruned & (norms > 0)
        expected = expected + (norms[act] / (norms[act].detach() + pruner.eps)).sum()
    (cfg.reg * expected).backward()
    assert float(penalty.detach()) == pytest.approx(float(cfg.reg * expected.detach()), rel=1e-5)
    for conv, w in zip(convs, weights):
        assert torch.allclose(conv.weight.grad, w.grad, rtol=1e-4, atol=1e-9)


def test_penalty_is_differentiable_with_all_zero_slices():
    model, masks, pruner, _ = make(reg=1.0)
    with torch.no_grad():
        model.k5.weight[:, :, 0, 0] = 0   # zero slices not (yet) masked
    pruner.regularize(model).backward()
    assert torch.isfinite(model.k5.weight.grad).all()
    assert (model.k5.weight.grad[:, :, 0, 0] == 0).all()


@pytest.mark.parametrize("overrides", [
    dict(pruning_mode=SliceMode.UNPRUNE), dict(pruning_mode="Unprune"), dict(reg=0.0)])
def test_regularize_is_zero_when_off(overrides):
    model, _, pruner, _ = make(**overrides)
    penalty = pruner.regularize(model)
    assert penalty.shape == () and float(penalty) == 0.0
    assert penalty.device == next(model.parameters()).device


def test_unprune_mode_adds_no_masks():
    model, masks, pruner, cfg = make(pruning_mode="Unprune", prune_rate=0.9)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    run_schedule(model, pruner, cfg)
    assert masks.layer_keys("slice") == []
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert pruner.sparsity()["overall"]["zero"] == 0


def test_unprune_mode_keeps_existing_masks():
    model, masks, pruner, _ = make(prune_rate=0.5, end_epoch=0)
    pruner.prune(model, 0)
    zero = pruner.sparsity()["overall"]["zero"]
    unprune = SlicePruner(model, make_cfg(pruning_mode="Unprune", prune_rate=0.9, end_epoch=0),
                          masks=masks)
    unprune.prune(model, 0)
    train(model, unprune, torch.optim.SGD(model.parameters(), lr=0.1), batches(3))
    assert unprune.sparsity()["overall"]["zero"] == zero
    assert zero_fraction(model, masks, "k5")[0] == pruner.sparsity()["layers"]["k5"]["zero"]


# --------------------------------------------------------------------------- persistence
def test_state_dict_round_trip(tmp_path):
    model, masks, pruner, _ = make(prune_rate=0.6, end_epoch=0, disable_first_index=True)
    pruner.prune(model, 0)
    torch.save({"model": model.state_dict(), "pruner": pruner.state_dict()}, tmp_path / "ck.pt")
    ck = torch.load(tmp_path / "ck.pt", weights_only=True)
    model2, masks2, pruner2, _ = make(prune_rate=0.6, end_epoch=0, disable_first_index=True)
    model2.load_state_dict(ck["model"])
    pruner2.load_state_dict(ck["pruner"])
    assert pruner2.sparsity() == pruner.sparsity()
    for name in SLICE_LAYERS:
        assert same_mask(masks2.get("slice", model2.get_submodule(name), "weight"),
                         masks.get("slice", model.get_submodule(name), "weight")), name
    # the restored masks are enforced: training cannot revive a zero slice
    train(model2, pruner2, torch.optim.Adam(model2.parameters(), lr=1e-2), batches(3))
    assert pruner2.sparsity()["overall"]["zero"] == pruner.sparsity()["overall"]["zero"]
    assert zero_fraction(model2, masks2, "k7", True) == zero_fraction(model, masks, "k7", True)


def test_resumed_run_gives_the_same_masks_as_an_uninterrupted_one():
    kw = dict(prune_rate=0.7, end_epoch=3)
    data = [batches(1, seed=10 + e) for e in range(4)]

    def run(model, pruner, epochs):
        opt = torch.optim.SGD(model.parameters(), lr=0.05)   # stateless: resumable exactly
        for epoch in epochs:
            train(model, pruner, opt, data[epoch])
            pruner.prune(model, epoch)

    model, masks, pruner, _ = make(**kw)
    run(model, pruner, range(4))
    first, _, first_pruner, _ = make(**kw)
    run(first, first_pruner, range(2))
    saved = {"model": first.state_dict(), "pruner": first_pruner.state_dict()}
    resumed, masks2, resumed_pruner, _ = make(**kw)
    resumed.load_state_dict(saved["model"])
    resumed_pruner.load_state_dict(saved["pruner"])
    run(resumed, resumed_pruner, range(2, 4))
    for name in SLICE_LAYERS:
        assert same_mask(masks2.get("slice", resumed.get_submodule(name), "weight"),
                         masks.get("slice", model.get_submodule(name), "weight")), name


def test_loading_state_into_another_model_names_the_layer():
    model, _, pruner, _ = make(prune_rate=0.5, end_epoch=0)
    pruner.prune(model, 0)
    _, _, other, _ = make(ChainNet, layers=["c1"])
    with pytest.raises(ValueError, match="stem.weight"):
        other.load_state_dict(pruner.state_dict())


# --------------------------------------------------------------------------- layer selection
def test_unknown_layer_is_a_config_error_with_close_matches():
    with pytest.raises(PruningConfigError, match=r"slice_sparsity_args\.layers.*'k55'.*'k5'"):
        make(layers=["k5", "k55"])


def test_non_conv_layer_is_a_config_error():
    with pytest.raises(PruningConfigError, match=r"slice_sparsity_args\.layers.*'head'.*Linear"):
        make(layers=["head"])


def test_ddp_style_wrapper_and_module_prefix():
    torch.manual_seed(0)
    net = MixedConvNet()
    wrapped = nn.DataParallel(net)   # same naming as DDP: 'module.' prefix
    masks = MaskSet()
    cfg = make_cfg(layers=["module.k5", "dw"], end_epoch=0)
    pruner = SlicePruner(wrapped, cfg, masks=masks)
    pruner.prune(wrapped, 0)
    assert set(pruner.sparsity()["layers"]) == {"k5", "dw"}
    assert abs(zero_fraction(net, masks, "k5")[0] - 0.5 * zero_fraction(net, masks, "k5")[1]) <= 1
    assert float(pruner.regularize(wrapped).detach()) > 0


def test_layers_not_filling_blocks_are_skipped_with_a_log_line(caplog):
    caplog.set_level(logging.INFO, logger="torch_pruning.pat")
    model, masks, pruner, cfg = make()
    assert "odd" in caplog.text and "do not fill whole blocks" in caplog.text
    run_schedule(model, pruner, cfg)
    assert "odd" not in pruner.sparsity()["layers"]
    assert masks.get("slice", model.odd, "weight") is None
    caplog.clear()
    _, _, listed, _ = make(layers=["odd", "k5"])
    assert any(r.levelno == logging.WARNING and "'odd'" in r.getMessage()
               for r in caplog.records)
    assert listed.sparsity()["skipped"]["odd"].startswith("6 surviving filters")


def test_prune_logs_per_layer_and_overall_sparsity_to_the_user_log():
    lines: List[str] = []

    class UserLog:
        def info(self, msg, *args, **kwargs):
            lines.append(msg)

    model, _, pruner, _ = make(end_epoch=0)
    pruner.prune(model, 0, log=UserLog())
    assert any(line.startswith("Slice sparsity k5:") for line in lines)
    assert any(line.startswith("Slice sparsity overall at epoch 0:") for line in lines)


# --------------------------------------------------------------------------- channel masks
def test_slices_zero_because_of_channel_masks_are_not_counted():
    masks = MaskSet()
    torch.manual_seed(0)
    model = ChainNet()
    mask_channels(masks, model.c1, model.c2, [1, 6, 7, 12])
    pruner = SlicePruner(model, make_cfg(prune_rate=0.5, end_epoch=0), masks=masks)
    pruner.prune(model, 0)
    report = pruner.sparsity()["layers"]
    assert report["c1"]["total"] == (12 // A) * 3 * 9     # 12 surviving filters
    assert report["c2"]["total"] == (16 // A) * 12 * 9    # 4 of 16 input channels masked
    for name in ("c1", "c2", "c3"):
        zero, eligible = zero_fraction(model, masks, name)
        assert eligible == report[name]["eligible"]
        assert abs(zero - 0.5 * eligible) <= 1, name


def test_channel_masks_that_reshape_blocks_after_slice_pruning_are_reported(caplog):
    model, masks, pruner, _ = make(ChainNet, prune_rate=0.5, end_epoch=1)
    pruner.prune(model, 0)
    mask_channels(masks, model.c1, model.c2, [0, 1, 2, 3])  # c1: 12 survivors, 3 blocks not 4
    caplog.set_level(logging.WARNING, logger="torch_pruning.pat")
    pruner.prune(model, 1)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("'c1' are only partly masked" in m for m in warned)
    assert not any("'c3'" in m for m in warned)   # c3's blocks did not change
    zero, eligible = zero_fraction(model, masks, "c1")
    assert abs(zero - 0.5 * eligible) <= 1


@pytest.mark.parametrize("removed", [[1, 6, 7, 12], [12, 13, 14, 15]])
def test_slice_masks_survive_physical_channel_removal(removed):
    masks = MaskSet()
    torch.manual_seed(0)
    model = ChainNet()
    mask_channels(masks, model.c1, model.c2, removed)
    pruner = SlicePruner(model, make_cfg(prune_rate=0.5, end_epoch=1, disable_first_index=True),
                         masks=masks)
    pruner.prune(model, 0)
    x = torch.randn(2, 3, 8, 8)
    out_before = model(x)
    views = {n: slice_view(model.get_submodule(n), masks, True) for n in ("c1", "c2", "c3")}
    values = {n: lay.gather(model.get_submodule(n).weight.detach())[elig]
              for n, (_, elig, lay) in views.items()}
    report = pruner.sparsity()

    tp.prune_conv_out_channels(model.c1, idxs=removed)
    tp.prune_conv_in_channels(model.c2, idxs=removed)
    masks.reindex("channel")

    assert torch.allclose(model(x), out_before, atol=1e-6)
    assert pruner.sparsity() == report
    for name in ("c1", "c2", "c3"):
        conv = model.get_submodule(name)
        zero, eligible, lay = slice_view(conv, masks, True)
        assert torch.equal(lay.gather(conv.weight.detach())[eligible], values[name]), name
        assert torch.equal(zero[eligible], views[name][0][views[name][1]]), name
        # the slice mask covers exactly the zero slices of the reduced layer's layout
        smask = masks.get("slice", conv, "weight")
        pruned = (torch.zeros_like(zero) if smask is None  # c3: 1x1, all slices protected
                  else ~lay.gather(smask).any(1))
        assert torch.equal(pruned, zero & eligible), name
    # pruning and training continue on the reduced model
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    for _ in range(3):
        loss = model(x).square().mean() + pruner.regularize(model)
        opt.zero_grad()
        loss.backward()
        opt.step()
    pruner.prune(model, 1)
    zero, eligible = zero_fraction(model, masks, "c2", True)
    assert abs(zero - 0.5 * eligible) <= 1 and eligible == (16 // A) * 12 * 3 * 2


# --------------------------------------------------------------------------- export
def test_export_describes_layout_and_masks(tmp_path):
    model, masks, pruner, _ = make(prune_rate=0.5, end_epoch=0, disable_first_index=True)
    pruner.prune(model, 0)
    pruner.export(tmp_path / "slices.json")
    doc = json.loads((tmp_path / "slices.json").read_text())
    assert doc["format"] == "torch-pruning-pat.slice-masks" and doc["version"] == 1
    assert {e["name"] for e in doc["layers"]} == set(SLICE_LAYERS)
    assert doc["skipped"][0]["name"] == "odd"
    for entry in doc["layers"]:
        conv = model.get_submodule(entry["name"])
        zero, _, lay = slice_view(conv, masks, True)
        assert entry["blocks"] == lay.blocks.tolist()
        keep = torch.tensor(entry["keep"], dtype=torch.bool)
        assert list(keep.shape) == [entry["num_blocks"], *conv.weight.shape[1:]]
        assert torch.equal(~keep.flatten(), zero)
        # slice (b, c, y, x) holds weight[blocks[b][a], c, y, x]
        b, c, y, xx = (~keep).nonzero()[0].tolist() if (~keep).any() else (0, 0, 0, 0)
        vals = conv.weight.detach()[entry["blocks"][b], c, y, xx]
        assert bool((vals == 0).all()) == (not bool(keep[b, c, y, xx]))
    assert doc["overall"] == pruner.sparsity()["overall"]


# --------------------------------------------------------------------------- with channel pruning
@pytest.mark.parametrize("slice_epochs", [(3, 4), (0, 4)], ids=["after-target", "overlapping"])
def test_spec_loop_with_channel_and_slice_pruning(slice_epochs, tmp_path):
    from models import DepthwiseCNN
    from torch_pruning.utils import Pruning

    config = {
        "channel_sparsity_args": {
            "start_epoch": 0, "end_epoch": 3, "global_prune_rate": 0.8, "mac_target": 0.5,
            "block_size": A, "input_shape": [1, 3, 8, 8], "regularize": {"reg": 1e-3}},
        "slice_sparsity_args": {
            "start_epoch": slice_epochs[0], "end_epoch": slice_epochs[1], "prune_rate": 0.5,
            "block_size": A, "depthwise_block_size": A_DW, "disable_first_index": True,
            "reg": 1e-4},
    }
    (tmp_path / "pruning_config.json").write_text(json.dumps(config))
    torch.manual_seed(0)
    model = DepthwiseCNN()
    x = torch.randn(1, 3, 8, 8)
    base_macs = tp.utils.count_ops_and_params(model, x)[0]

    def make_optimizer(m: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)

    optimizer = make_optimizer(model)
    pruner = Pruning(model, tmp_path, forward_fn=None, log=None, device=torch.device("cpu"))
    for epoch in range(6):
        for xb, yb in batches(2, seed=epoch):
            loss = nn.functional.cross_entropy(model(xb), yb)
            loss = loss + pruner.slice_regularize(model)
            optimizer.zero_grad(); loss.backward()  # noqa: E702  (SPEC section 1, verbatim)
            pruner.channel_regularize(model)
            optimizer.step()
        pruner.prune(model, epoch)
        if pruner.channel_pruner.reset_optimizer:
            optimizer = make_optimizer(model); pruner.channel_pruner.reset_optimizer = False  # noqa: E702,E501

    assert pruner.channel_pruner.reached_target
    assert tp.utils.count_ops_and_params(model, x)[0] <= 0.5 * base_macs
    report = pruner.slice_pruner.sparsity()
    assert report["skipped"] == {}
    masks = pruner.masks
    for name, conv in model.named_modules():
        if not isinstance(conv, nn.Conv2d):
            continue
        smask = masks.get("slice", conv, "weight")
        zero, eligible, lay = slice_view(conv, masks, True)
        assert abs(int((zero & eligible).sum()) - 0.5 * int(eligible.sum())) <= 1, name
        assert report["layers"][name]["zero"] == int((zero & eligible).sum()), name
        if smask is not None:   # masks follow the reduced shapes and cover whole slices
            assert smask.shape == conv.weight.shape
            assert torch.equal(~lay.gather(smask).any(1), zero & eligible), name
