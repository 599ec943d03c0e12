"""No silent no-ops: a step that masks nothing, or a MAC target out of reach, is warned about
once, with the reason and the best MACs the selected layers allow."""

from __future__ import annotations

import logging
import re
from typing import Any, Dict, List

import pytest
import torch

import torch_pruning as tp
from models import SmallCNN

IDLE = "masked no new channel"
UNREACHABLE = "cannot be met"


class ListLog:
    """A user log object with ``info`` and ``warning``."""

    def __init__(self) -> None:
        self.warnings: List[str] = []
        self.infos: List[str] = []

    def info(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self.infos.append(msg)

    def warning(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self.warnings.append(msg)


def run(caplog: pytest.LogCaptureFixture, epochs: int, **channel: Any) -> Dict[str, Any]:
    """Build a pruner for SmallCNN and call ``prune()`` for ``epochs`` epochs."""
    cfg = dict(start_epoch=0, end_epoch=epochs - 1, input_shape=[1, 3, 16, 16])
    cfg.update(channel)
    torch.manual_seed(0)
    model, log = SmallCNN(), ListLog()
    with caplog.at_level(logging.INFO, logger="torch_pruning.pat"):
        pruner = tp.Pruning(model, {"channel_sparsity_args": cfg}, log=log)
        for epoch in range(epochs):
            pruner.prune(model, epoch)
    warnings = [r.getMessage() for r in caplog.records
                if r.name.startswith("torch_pruning.pat") and r.levelno == logging.WARNING]
    return {"warnings": warnings, "user": log.warnings, "pruner": pruner.channel_pruner}


def only(messages: List[str], fragment: str) -> str:
    found = [m for m in messages if fragment in m]
    assert len(found) == 1, f"expected one warning with {fragment!r}, got {messages}"
    return found[0]


@pytest.mark.timeout(60)
def test_a_step_too_small_to_mask_a_channel_is_warned_once(caplog) -> None:
    # 10 steps to a ratio of 0.2: step 0 asks for 2% of 16-32 channels, less than one
    out = run(caplog, 10, global_prune_rate=0.2)
    msg = only(out["warnings"], IDLE)
    assert msg.startswith("Channel pruning step at epoch 0 masked no new channel")
    assert "too small to mask one more block of block_size 1" in msg
    assert re.search(r"MACs stay at 100\.00% of the original; the best reachable .* is \d+\.\d\d%",
                     msg)
    assert out["user"] == [msg]  # the user's log gets it too, once
    assert out["pruner"].macs() < out["pruner"].base_macs  # later steps did mask


@pytest.mark.timeout(60)
def test_a_target_beyond_max_pruning_rate_is_warned_once_with_the_best_reachable(caplog) -> None:
    out = run(caplog, 6, global_prune_rate=0.9, mac_target=0.3, max_pruning_rate=0.25)
    pruner = out["pruner"]
    best = pruner.macs() / pruner.base_macs  # every group at its cap by the end
    msg = only(out["warnings"], UNREACHABLE)
    assert f"the best reachable with the selected layers and max_pruning_rate 0.25 is {best:.2%}" \
        in msg
    assert "raise channel_sparsity_args.max_pruning_rate" in msg
    idle = only(out["warnings"], IDLE)  # once every group is at its cap, steps mask nothing
    assert "no selected group can lose another channel" in idle and f"{best:.2%}" in idle
    assert not pruner.reached_target and len(out["user"]) == len(out["warnings"])


@pytest.mark.timeout(60)
def test_a_schedule_ending_above_the_target_is_warned_at_its_first_step(caplog) -> None:
    out = run(caplog, 4, global_prune_rate=0.1, mac_target=0.5)
    msg = only(out["warnings"], UNREACHABLE)
    assert "at global_prune_rate 0.1 the masked model keeps" in msg
    assert "raise channel_sparsity_args.global_prune_rate (0.1)" in msg
    first_step = [m for m in caplog.messages if m.startswith("Epoch 0:")]
    assert caplog.messages.index(msg) < caplog.messages.index(first_step[0])


@pytest.mark.timeout(60)
def test_a_block_size_larger_than_every_group_is_warned(caplog) -> None:
    out = run(caplog, 3, global_prune_rate=0.5, block_size=64)
    msg = only(out["warnings"], IDLE)
    assert "each keeps at least one block of block_size 64" in msg
    assert "features.0.0: 16" in msg  # the group sizes, named
    assert out["pruner"].macs() == out["pruner"].base_macs


@pytest.mark.timeout(60)
@pytest.mark.parametrize("channel", [dict(global_prune_rate=0.8, mac_target=0.5),
                                     dict(global_prune_rate=0.5)], ids=["target", "no-target"])
def test_a_run_that_progresses_gets_no_warning(caplog, channel: Dict[str, Any]) -> None:
    out = run(caplog, 4, **channel)
    assert out["warnings"] == [] and out["user"] == []
    assert out["pruner"].reached_target
