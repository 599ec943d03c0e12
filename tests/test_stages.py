"""Staged removal (``channel_sparsity_args.stages``): intermediate removals before the target."""

from __future__ import annotations

import copy
import io
import json
from typing import Any, List

import pytest
import torch
from models import ResidualCNN, SmallCNN
from torch import nn

import torch_pruning as tp
from torch_pruning.pat.channel.pruner import ChannelPruner
from torch_pruning.pat.config.errors import PruningConfigError
from torch_pruning.pat.config.io import validate_config
from torch_pruning.pat.config.models import ChannelSparsityArgs
from torch_pruning.pat.core.masks import MaskSet

X = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
STAGED = dict(start_epoch=5, end_epoch=6, global_prune_rate=0.9, schedule="macs",
              mac_target=0.3, regularize={"reg": 1e-3},
              stages=[{"mac_target": 0.6, "start_epoch": 1, "end_epoch": 2}])


def make(model: nn.Module, masks: MaskSet = None, **fields: Any) -> ChannelPruner:
    cfg = dict(STAGED, **fields)
    return ChannelPruner(model, ChannelSparsityArgs(**cfg), example_inputs=X,
                         masks=masks if masks is not None else MaskSet())


def macs_of(model: nn.Module) -> float:
    return float(tp.utils.count_ops_and_params(model, X)[0])


def train_epoch(model: nn.Module, pruner: ChannelPruner, epoch: int) -> None:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for step in range(2):
        g = torch.Generator().manual_seed(epoch * 100 + step)
        x, y = torch.randn(4, 3, 16, 16, generator=g), torch.randint(0, 10, (4,), generator=g)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        pruner.regularize(model)
        optimizer.step()


def run(model: nn.Module, pruner: ChannelPruner, epochs: range) -> List[dict]:
    """The user's loop; per epoch: MACs measured on the model, shapes changed, flags."""
    seen = []
    for epoch in epochs:
        train_epoch(model, pruner, epoch)
        shapes = [p.shape for p in model.parameters()]
        pruner.prune(model, epoch)
        seen.append({"epoch": epoch, "macs": macs_of(model), "removed": shapes != [
            p.shape for p in model.parameters()], "reset": pruner.reset_optimizer,
            "reached": pruner.reached_target, "masked": pruner.macs()})
        pruner.reset_optimizer = False
    return seen


def test_each_stage_removes_its_channels_and_the_last_reaches_the_target() -> None:
    torch.manual_seed(0)
    model = ResidualCNN()
    base = macs_of(model)
    pruner = make(model)
    seen = run(model, pruner, range(8))
    removals = [s["epoch"] for s in seen if s["removed"]]
    assert removals == [2, 6]  # the stage's end_epoch, then the section's
    assert all(s["reset"] for s in seen if s["removed"])
    assert not any(s["reset"] for s in seen if not s["removed"])
    stage_end, final = seen[2], seen[6]
    assert 0.3 * base < stage_end["macs"] <= 0.6 * base and not stage_end["reached"]
    assert final["macs"] <= 0.3 * base and final["reached"]
    # between the removals the masks keep counting from the reduced model, never above it
    assert seen[4]["masked"] <= stage_end["macs"] and seen[3]["macs"] == stage_end["macs"]
    assert pruner.base_macs == pytest.approx(base)  # the target stays a share of the original


def test_max_pruning_rate_counts_against_the_original_widths() -> None:
    torch.manual_seed(0)
    model = SmallCNN()
    widths = [model.features[i][0].out_channels for i in range(3)]
    pruner = make(model, max_pruning_rate=0.5, mac_target=0.05, global_pruning=True,
                  stages=[{"mac_target": 0.5, "start_epoch": 1, "end_epoch": 2}])
    run(model, pruner, range(8))  # 0.05 is out of reach with every layer kept at half
    pruner.remove_masked_channels(model)  # what the schedule's end message suggests
    kept = [model.features[i][0].out_channels for i in range(3)]
    assert kept != widths  # something was removed
    assert all(k >= w // 2 for k, w in zip(kept, widths))  # not half of half


def test_a_run_resumed_after_a_stage_ends_like_an_uninterrupted_one() -> None:
    torch.manual_seed(0)
    model_a = ResidualCNN()
    init = copy.deepcopy(model_a.state_dict())
    masks_a = MaskSet()
    pruner_a = make(model_a, masks=masks_a)
    run(model_a, pruner_a, range(6))

    model_b = ResidualCNN()
    model_b.load_state_dict(init)
    pruner_b = make(model_b)
    run(model_b, pruner_b, range(4))  # one removal done, masking toward the target not yet
    buffer = io.BytesIO()
    torch.save({"model": model_b.state_dict(), "pruner": pruner_b.state_dict()}, buffer)
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)

    model_c = ResidualCNN()  # the original architecture, rebuilt to the checkpoint's shapes
    tp.load_state_dict_pruned(model_c, checkpoint["model"])
    masks_c = MaskSet()
    pruner_c = make(model_c, masks=masks_c)
    pruner_c.load_state_dict(checkpoint["pruner"])
    run(model_c, pruner_c, range(4, 6))

    assert pruner_c.base_macs == pytest.approx(pruner_a.base_macs)
    saved_a, saved_c = masks_a.state_dict(model_a), masks_c.state_dict(model_c)
    assert saved_a["channel"].keys() == saved_c["channel"].keys()
    assert all(torch.equal(saved_a["channel"][k], saved_c["channel"][k])
               for k in saved_a["channel"])
    assert pruner_c.macs() == pytest.approx(pruner_a.macs())


def test_without_stages_the_schedule_is_unchanged() -> None:
    fields = dict(STAGED, stages=[])
    torch.manual_seed(0)
    model = ResidualCNN()
    seen = run(model, make(model, **fields), range(8))
    assert [s["epoch"] for s in seen if s["removed"]] == [6]


@pytest.mark.parametrize("stages, expected", [
    ([{"mac_target": 0.2, "start_epoch": 1, "end_epoch": 2}],
     r"stages\[0\].mac_target 0.2 must be below the level before it \(1.0\) and above "
     r"mac_target 0.3"),
    ([{"mac_target": 0.6, "start_epoch": 1, "end_epoch": 2},
      {"mac_target": 0.5, "start_epoch": 2, "end_epoch": 3}],
     r"stages\[1\] runs epochs 2..3: it must start after epoch 2"),
    ([{"mac_target": 0.6, "start_epoch": 1, "end_epoch": 5}],
     r"start_epoch 5 must come after the last stage's end_epoch 5"),
    ([{"mac_target": 0.6, "start_epoch": 1}], r"end_epoch"),
])
def test_stages_out_of_order_are_a_config_error(stages: list, expected: str) -> None:
    data = {"channel_sparsity_args": dict(copy.deepcopy(STAGED), stages=stages)}
    with pytest.raises(PruningConfigError, match=expected) as info:
        validate_config(data)
    assert "channel_sparsity_args" in str(info.value)


def test_stages_need_the_macs_schedule() -> None:
    data = {"channel_sparsity_args": dict(copy.deepcopy(STAGED), schedule="ratio")}
    with pytest.raises(PruningConfigError, match=r'stages need schedule "macs"'):
        validate_config(data)


def test_the_five_line_loop_with_stages_removes_twice_and_its_checkpoint_loads(tmp_path) -> None:
    torch.manual_seed(0)
    model = ResidualCNN()
    base = macs_of(model)
    config = {"channel_sparsity_args": dict(copy.deepcopy(STAGED), input_shape=[1, 3, 16, 16])}
    (tmp_path / "pruning_config.json").write_text(json.dumps(config))
    pruner = tp.Pruning(model, str(tmp_path), example_inputs=X)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sizes = []
    for epoch in range(8):
        g = torch.Generator().manual_seed(epoch)
        x, y = torch.randn(4, 3, 16, 16, generator=g), torch.randint(0, 10, (4,), generator=g)
        loss = nn.functional.cross_entropy(model(x), y) + pruner.slice_regularize(model)
        optimizer.zero_grad()
        loss.backward()
        pruner.channel_regularize(model)
        optimizer.step()
        pruner.prune(model, epoch)
        if pruner.channel_pruner.reset_optimizer:  # the optimizer follows both removals
            optimizer = pruner.carry_optimizer_state(optimizer)
            pruner.channel_pruner.reset_optimizer = False
        sizes.append(sum(p.numel() for p in model.parameters()))
    assert sizes[2] < sizes[1] and sizes[6] < sizes[5]  # two physical removals
    assert sizes[3:6] == [sizes[2]] * 3 and sizes[7] == sizes[6]
    assert macs_of(model) <= 0.3 * base
    assert (tmp_path / "pruning_report.txt").exists()  # written once, when the target is met
    report = (tmp_path / "pruning_report.txt").read_text()
    assert "stem.0      Conv2d         3 -> 3       16 -> " in report  # against the original
    fresh = ResidualCNN()
    tp.load_state_dict_pruned(fresh, model.state_dict())
    model.eval(), fresh.eval()
    assert torch.allclose(fresh(X), model(X), atol=1e-6)
