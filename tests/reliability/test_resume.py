"""A job killed at any point and resumed from its last checkpoint ends like an uninterrupted one.

The run (``reliability_harness.CONFIG``): channel masking from epoch 1, the MAC target met and
the channels removed at epoch 2, slice pruning at epochs 5-6, a checkpoint (model + optimizer +
``pruner.state_dict()``) after every epoch. A job killed after saving checkpoint *k* restarts
from it with the same config folder; the file may already say ``reach_mac_target: true`` when
the job died after the write-back of a later epoch but before that epoch's checkpoint.
"""

from __future__ import annotations

import json
import shutil
import signal
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest
import torch

import reliability_harness as H

HARNESS = Path(H.__file__)
REPORT = "pruning_report.txt"

#: Where the job is killed: right after the checkpoint of this epoch was saved.
KILL_POINTS = {"before-start": 0, "mid-masking": 1, "after-removal": 2, "mid-slice": 5}


class Reference:
    """The uninterrupted run: its checkpoints, config file states and final state."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = H.write_config(run_dir, H.CONFIG)
        self.initial_config = (run_dir / "pruning_config.json").read_text()
        self.state = H.train_run(run_dir)
        self.final_config = (run_dir / "pruning_config.json").read_text()
        self.report = (run_dir / REPORT).read_text()
        self.pruner_states = [torch.load(H.checkpoint_path(run_dir, e), weights_only=True)["pruner"]
                              for e in range(H.EPOCHS)]
        self.target_epoch = next(e for e, s in enumerate(self.pruner_states)
                                 if s["channel"]["reached"])

    def config_at(self, epoch: int) -> str:
        """The config file as it was when checkpoint ``epoch`` was saved."""
        return self.final_config if epoch >= self.target_epoch else self.initial_config


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Reference:
    return Reference(tmp_path_factory.mktemp("uninterrupted"))


@pytest.mark.timeout(60)
def test_the_kill_points_cover_every_phase(reference: Reference) -> None:
    """The checkpoints the resume tests start from are in the phases their names say."""
    states = reference.pruner_states
    channel = [s["channel"] for s in states]
    assert reference.target_epoch == KILL_POINTS["after-removal"]
    assert channel[0]["last_epoch"] is None and not any(
        len(u) for u in channel[0]["pruned_units"].values())
    assert not channel[1]["reached"] and any(len(u) for u in channel[1]["pruned_units"].values())
    assert channel[2]["removed"] and channel[2]["reached"]
    assert states[4]["slice"]["masks"] == {}
    assert states[5]["slice"]["last_epoch"] == 5 and states[5]["slice"]["masks"]
    assert json.loads(reference.final_config)["channel_sparsity_args"]["reach_mac_target"]
    assert reference.state["reached"] and reference.state["masks"]["slice"]


def _cases() -> List[Tuple[str, str]]:
    cases = []
    for point, epoch in KILL_POINTS.items():
        cases.append((point, "as-saved"))
        if epoch < KILL_POINTS["after-removal"]:  # later, the file already says true
            cases.append((point, "written-later"))
    return cases


@pytest.mark.timeout(60)
@pytest.mark.parametrize("order", ["weights-then-pruner", "pruner-then-weights"])
@pytest.mark.parametrize("point, config_file", _cases())
def test_a_killed_run_resumes_to_the_same_result(reference: Reference, tmp_path: Path, point: str,
                                                 config_file: str, order: str) -> None:
    epoch = KILL_POINTS[point]
    run = tmp_path / "run"
    run.mkdir()
    ckpt = shutil.copy(H.checkpoint_path(reference.run_dir, epoch), run)
    text = reference.final_config if config_file == "written-later" else reference.config_at(epoch)
    (run / "pruning_config.json").write_text(text)

    resumed = H.train_run(run, resume_from=Path(ckpt), pruner_first=order == "pruner-then-weights")

    assert H.diff_states(reference.state, resumed) == []  # architecture, masks and weights
    assert (run / "pruning_config.json").read_text() == reference.final_config
    if epoch < reference.target_epoch:  # the resumed job met the target itself
        assert (run / REPORT).read_text() == reference.report


@pytest.mark.timeout(60)
def test_written_later_config_is_reported_and_pruning_continues(
        reference: Reference, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    run = tmp_path / "run"
    run.mkdir()
    ckpt = Path(shutil.copy(H.checkpoint_path(reference.run_dir, 1), run))
    (run / "pruning_config.json").write_text(reference.final_config)
    with caplog.at_level("INFO", logger="torch_pruning.pat"):
        model, pruner, _, start = H.resume(run, ckpt)
    assert start == 2 and not pruner.channel_pruner.reached_target
    assert "the checkpoint's pruner state is from before the target was met" in caplog.text
    assert pruner.channel_pruner.regularizer is not None  # the penalty is back on too


def _run_harness(run: Path, *args: str) -> subprocess.CompletedProcess:
    # the child imports what this process does (tests/conftest.py sets the paths)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    return subprocess.run([sys.executable, str(HARNESS), str(run), *args], capture_output=True,
                          text=True, timeout=240, env=env)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("kill_at", [2, 5], ids=["after-config-write", "during-slice-pruning"])
def test_sigkill_then_resume_matches_the_uninterrupted_run(reference: Reference, tmp_path: Path,
                                                           kill_at: int) -> None:
    """A real process killed with SIGKILL right after ``prune()`` of an epoch (the config file
    or the slice masks already changed, that epoch's checkpoint not saved), then restarted."""
    run = H.write_config(tmp_path / "run", H.CONFIG)
    killed = _run_harness(run, "--kill-at", str(kill_at))
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert H.latest_checkpoint(run) == H.checkpoint_path(run, kill_at - 1)
    assert (run / "pruning_config.json").read_text() == reference.final_config  # written first

    resumed = _run_harness(run, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    state: Dict[str, Any] = torch.load(run / "final_state.pth", weights_only=True)
    assert H.diff_states(reference.state, state) == []
    assert (run / "pruning_config.json").read_text() == reference.final_config
