"""Pruning under DistributedDataParallel: 2 gloo processes on CPU, different data per rank.

The ranks run ``ddp_worker.worker``: the harness run (masking, removal at epoch 2, slice
pruning) with ``Pruning`` built on the wrapped model and, separately, before wrapping; then a
resume from a checkpoint saved on rank 0. One spawn covers every check below.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Dict

import pytest
import torch.multiprocessing as mp

import ddp_worker
import reliability_harness as H

WORLD = 2
MODES = ("wrapped-first", "pruner-first")


@dataclass
class Spawned:
    """What each rank saw (``ddp_worker``), and the shared run folders."""

    rank: Dict[int, Dict[str, Any]]
    runs: Path


@pytest.fixture(scope="module")
def ddp(tmp_path_factory: pytest.TempPathFactory) -> Spawned:
    """One spawn of 2 processes; every test below reads what they reported."""
    root = tmp_path_factory.mktemp("ddp")
    runs, out = root / "runs", root / "out"
    out.mkdir()
    for mode in MODES:
        H.write_config(runs / mode, H.CONFIG)  # one folder shared by both ranks, as on one host
    context = mp.spawn(ddp_worker.worker, args=(WORLD, str(root / "store"), str(runs), str(out)),
                       nprocs=WORLD, join=False)
    deadline = time.monotonic() + 150
    while not context.join(timeout=5):  # raises with the worker's traceback if one fails
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the DDP workers did not finish within 150 s")
    return Spawned({r: json.loads((out / f"rank{r}.json").read_text()) for r in range(WORLD)},
                   runs)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("mode", MODES)
def test_every_rank_holds_the_same_masks_at_every_prune(ddp: Spawned, mode: str) -> None:
    for rank in range(WORLD):
        run = ddp.rank[rank]["runs"][mode]
        assert run["same_masks"] == [True] * ddp_worker.EPOCHS  # all-gathered after each prune()
        assert run["masked"] > 0 and run["slice_masks"] == 3  # masks were not trivially equal
    assert ddp.rank[0]["runs"][mode]["masked"] == ddp.rank[1]["runs"][mode]["masked"]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("mode", MODES)
def test_removal_then_rewrap_keeps_training_in_sync(ddp: Spawned, mode: str) -> None:
    """``model = DDP(model.module)`` after the removal: training goes on, ranks stay equal."""
    full = sum(p.numel() for p in H.SmallCNN(width=16).parameters())
    for rank in range(WORLD):
        run = ddp.rank[rank]["runs"][mode]
        assert run["reached"] and run["rewrapped"] == [H.CONFIG["channel_sparsity_args"][
            "start_epoch"] + 1]
        assert run["params"] < full
        assert run["same_weights"]  # 4 epochs of different data per rank after the re-wrap


@pytest.mark.timeout(180)
def test_resume_under_ddp_keeps_ranks_identical(ddp: Spawned) -> None:
    """Every rank loads rank 0's checkpoint (load_state_dict_pruned + pruner state) and
    trains on: the same pruned shapes, masks and weights everywhere."""
    for rank in range(WORLD):
        resumed = ddp.rank[rank]["resumed"]
        assert resumed["same_weights"] and resumed["same_masks"]
        assert resumed["params"] == ddp.rank[rank]["runs"]["wrapped-first"]["params"]


@pytest.mark.timeout(180)
def test_only_rank_zero_logs(ddp: Spawned) -> None:
    assert ddp.rank[1]["records"] == [] and ddp.rank[1]["user_log"] == []
    text = "\n".join(ddp.rank[0]["records"])
    assert "Group number 1:" in text and "Physically removed" in text
    assert "load_state_dict_pruned: rebuilt" in text  # the resume's checkpoint loading
    assert len(ddp.rank[0]["user_log"]) > 0


@pytest.mark.timeout(180)
def test_only_rank_zero_writes(ddp: Spawned) -> None:
    assert ddp.rank[1]["writes"] == []  # not the config, not the report, not a temp file
    written = "\n".join(ddp.rank[0]["writes"])
    for mode in MODES:
        assert f"{mode}/.pruning_config.json." in written
        assert f"{mode}/.pruning_report.txt." in written
        state = json.loads((ddp.runs / mode / "pruning_config.json").read_text())
        assert state["channel_sparsity_args"]["reach_mac_target"] is True
        assert "Channels kept per group" in state["channel_sparsity_args"]["log_str"]
