"""A process killed while writing the config (or a report) leaves the old or the new file,
never a mix."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from torch_pruning.pat.config.io import load_config, write_state

ROOT = Path(__file__).resolve().parents[2]

_WRITER = """
import sys
sys.path.insert(0, {root!r})
from torch_pruning.pat.config.io import write_state
path = {path!r}
i = 0
print("ready", flush=True)
while True:  # rewrite the state as fast as possible until killed
    i += 1
    write_state(path, "channel_sparsity_args", {{"log_str": "x" * (i % 5000), "reach_mac_target": bool(i % 2)}})
"""

CONFIG = {"channel_sparsity_args": {"start_epoch": 0, "end_epoch": 3, "global_prune_rate": 0.5,
                                    "layers": ["conv1"], "user_note_kept": None}}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("delay", [0.05, 0.2, 0.5])
def test_kill_during_write_leaves_a_valid_config(tmp_path: Path, delay: float) -> None:
    data = json.loads(json.dumps(CONFIG))
    del data["channel_sparsity_args"]["user_note_kept"]
    path = tmp_path / "pruning_config.json"
    path.write_text(json.dumps(data, indent=4))
    proc = subprocess.Popen([sys.executable, "-c", _WRITER.format(root=str(ROOT), path=str(path))],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    after = json.loads(path.read_text())  # parses: never a torn file
    section = after["channel_sparsity_args"]
    assert {k: section[k] for k in data["channel_sparsity_args"]} == data["channel_sparsity_args"]
    assert load_config(tmp_path).channel.layers == ["conv1"]
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "pruning_config.json"]
    assert all(name.startswith(".pruning_config.json.") for name in leftovers)


@pytest.mark.timeout(30)
def test_write_state_only_on_rank_zero(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "pruning_config.json"
    path.write_text(json.dumps(CONFIG))
    monkeypatch.setattr("torch_pruning.pat.config.io.is_rank_zero", lambda: False)
    assert write_state(path, "channel_sparsity_args", {"reach_mac_target": True}) is False
    assert json.loads(path.read_text()) == CONFIG


_REPORT_WRITER = """
import sys
sys.path.insert(0, {root!r})
from torch_pruning.pat.util.io import atomic_write_bytes
payloads = [b"a" * 200_000, b"b" * 700_000]  # like pruning_report.png / .txt rewrites
print("ready", flush=True)
i = 0
while True:
    i += 1
    atomic_write_bytes({path!r}, payloads[i % 2])
"""


@pytest.mark.timeout(120)
@pytest.mark.parametrize("delay", [0.05, 0.3])
def test_kill_during_a_report_write_leaves_a_whole_file(tmp_path: Path, delay: float) -> None:
    """Every file the library writes (reports, slice exports, latency tables) goes through
    ``_io.atomic_write_bytes``: a SIGKILL leaves one whole version."""
    path = tmp_path / "pruning_report.png"
    path.write_bytes(b"a" * 200_000)
    proc = subprocess.Popen([sys.executable, "-c", _REPORT_WRITER.format(root=str(ROOT),
                                                                         path=str(path))],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert path.read_bytes() in (b"a" * 200_000, b"b" * 700_000)
