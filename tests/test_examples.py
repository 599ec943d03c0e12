"""Every example runs in its reduced (``--quick``) mode in a fresh process, and its outputs are
checked: the summary JSON it writes (MACs at the target, outputs equal after a reload or
rebuild, resumed run equal to the uninterrupted one, ranks identical under DDP), the state the
pruner wrote back to the run's ``pruning_config.json``, and the files it says it wrote.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
TOLERANCE = 0.01  # MACs may land at most 1% of the original above mac_target
# Per-example budgets in seconds (a few times their duration on two busy cores); pytest-timeout
# gets 15 s more so the example's own timeout fires first and reports its output.
BUDGET = {"digits_pat": 165, "two_inputs": 105, "resume": 165, "one_shot": 105,
          "infer_rebuild": 105, "ddp_pat": 165, "transformer_heads": 105, "fsdp_pat": 165,
          "llm_pat": 105}


def run_example(args: List[str], out: Path, timeout: float) -> str:
    """Run ``python <args>`` from the checkout; return stdout, failing with both streams.

    The example runs in its own process group, killed as a whole on timeout (torchrun's
    workers included) before pytest-timeout would fire.
    """
    env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONDONTWRITEBYTECODE": "1",
           "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(f"{' '.join(args)} did not finish in {timeout:.0f} s\n"
                    f"--- stdout\n{stdout[-4000:]}\n--- stderr\n{stderr[-4000:]}")
    assert proc.returncode == 0, (f"{' '.join(args)} exited with {proc.returncode}\n"
                                  f"--- stdout\n{stdout[-4000:]}\n--- stderr\n{stderr[-4000:]}")
    # Every file the summary points at (a path inside --out, maybe a glob) exists.
    for shown in re.findall(re.escape(str(out)) + r"[^\s;,:)]*", stdout):
        path = shown.rstrip("./") or "/"
        found = list(Path("/").glob(path.lstrip("/"))) if "*" in path else [Path(path)]
        assert found and all(p.exists() for p in found), f"printed path {shown} does not exist"
    return stdout


def load_json(path: Path) -> Dict[str, Any]:
    assert path.is_file(), f"the example did not write {path}"
    return json.loads(path.read_text())


def channel_state(folder: Path) -> Dict[str, Any]:
    """The channel section of a run's pruning_config.json (state fields written back)."""
    return load_json(folder / "pruning_config.json")["channel_sparsity_args"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(BUDGET["digits_pat"] + 15)
def test_digits_pat_quick(tmp_path: Path) -> None:
    quick = EXAMPLES / "digits_pat_config_quick.json"
    if not quick.is_file():
        pytest.skip("examples/digits_pat_config_quick.json (the --quick config) does not exist")
    stdout = run_example(["examples/digits_pat.py", "--out", str(tmp_path), "--quick"],
                         tmp_path, BUDGET["digits_pat"])
    summary = load_json(tmp_path / "summary.json")
    base, pat = summary["baseline"], summary["pat"]
    target = load_json(tmp_path / "pruning_config.json")["channel_sparsity_args"]["mac_target"]
    assert target == 0.5  # the recommended channel section was written beside the run
    assert pat["macs"] <= (target + TOLERANCE) * base["macs"]
    assert pat["params"] < base["params"]
    assert pat["reload_matches"] == 1.0  # the pruned checkpoint reloads with equal outputs
    assert pat["accuracy"] >= 80.0 and pat["accuracy"] >= base["accuracy"] - 5.0
    state = channel_state(tmp_path)
    assert state["reach_mac_target"] is True and "MACs" in state["log_str"]
    assert "outputs match" in stdout
    # stdout is a pipe here, not a terminal: one progress line per epoch instead of the bar
    epochs = len(re.findall(r"^PAT epoch \d+/\d+: loss [\d.]+, test accuracy", stdout,
                            re.MULTILINE))
    assert epochs >= 2 and re.search(r"^baseline epoch 1/", stdout, re.MULTILINE)


@pytest.mark.timeout(BUDGET["two_inputs"] + 15)
def test_two_inputs(tmp_path: Path) -> None:
    stdout = run_example(["examples/two_inputs.py", "--out", str(tmp_path), "--quick"],
                         tmp_path, BUDGET["two_inputs"])
    s = load_json(tmp_path / "summary.json")
    assert s["reached_target"] is True
    assert s["macs_ratio"] <= s["mac_target"] + TOLERANCE
    assert s["params_after"] < s["params_before"]
    # The reduced model still takes both inputs and returns the detector-style dict.
    assert s["output_keys"] == ["embedding", "logits"] and s["logits_shape"][1] == 10
    assert s["test_accuracy"] >= 60.0
    # Both stems were traced through the concatenation and pruned.
    assert s["channels"]["image_stem.0"] < 16 and s["channels"]["edge_stem.0"] < 8
    assert channel_state(tmp_path)["reach_mac_target"] is True
    assert "of original" in stdout


@pytest.mark.timeout(BUDGET["resume"] + 15)
def test_resume_equals_uninterrupted(tmp_path: Path) -> None:
    stop_at = 3
    stdout = run_example(["examples/resume.py", "--out", str(tmp_path), "--quick",
                          "--stop-at", str(stop_at)], tmp_path, BUDGET["resume"])
    s = load_json(tmp_path / "summary.json")
    assert s["crash_exit_code"] != 0 and len(s["checkpoints_before_restart"]) == stop_at
    rows = s["epochs"]
    assert [r["epoch"] for r in rows] == list(range(8))
    # The restart happened in the masking phase: the last checkpoint before it held masks,
    # which pruner.load_state_dict restored; the removal happened after the restart.
    assert rows[stop_at - 1]["masked"] > 0
    assert rows[stop_at - 1]["conv_channels"] != rows[-1]["conv_channels"]
    for r in rows:
        assert r["same_architecture"] and r["same_masks"], r
        assert r["max_weight_diff"] <= 1e-6, r
    assert rows[-1]["slice_zero"] > 0
    assert s["same_channel_summary"] and s["final_output_max_diff"] <= 1e-5
    assert s["resumed_equals_uninterrupted"] is True
    assert "resumed run EQUALS the uninterrupted run" in stdout
    for run in ("uninterrupted", "interrupted"):
        assert channel_state(tmp_path / run)["reach_mac_target"] is True
    assert "resuming from epoch_002.pt at epoch 3" in \
        (tmp_path / "interrupted" / "pat.log").read_text()


@pytest.mark.timeout(BUDGET["one_shot"] + 15)
def test_one_shot(tmp_path: Path) -> None:
    run_example(["examples/one_shot.py", "--out", str(tmp_path), "--quick"], tmp_path,
                BUDGET["one_shot"])
    s = load_json(tmp_path / "summary.json")
    assert s["reach_mac_target"] is True
    assert s["macs_ratio"] <= s["mac_target"] + TOLERANCE
    # Physical removal at the first prune() call: every later epoch trains the reduced model.
    assert all(a < b for a, b in zip(s["conv_channels_after"], s["conv_channels_before"]))
    log = (tmp_path / "pat.log").read_text()
    assert "No pruning config" in log  # the dense phase ran with pruning disabled
    assert "epoch 0: one-shot pruning done" in log  # removal at the first prune() call
    assert s["finetuned_accuracy"] >= 80.0
    assert s["finetuned_accuracy"] >= s["accuracy_after_pruning_epoch"]


@pytest.mark.timeout(BUDGET["infer_rebuild"] + 15)
def test_infer_rebuild(tmp_path: Path) -> None:
    run_example(["examples/infer_rebuild.py", "--out", str(tmp_path), "--quick"], tmp_path,
                BUDGET["infer_rebuild"])
    s = load_json(tmp_path / "summary.json")
    train = s["train"]
    assert train["reached_target"] and train["removal_output_max_diff"] <= 1e-4
    assert train["masked_macs"] <= (s["mac_target"] + TOLERANCE) * train["base_macs"]
    for way in ("load_state_dict_pruned", "infer"):
        r = s[way]
        assert r["outputs_equal"] and r["output_max_diff"] <= 1e-4, (way, r)
        assert r["macs"] <= (s["mac_target"] + TOLERANCE) * train["base_macs"], (way, r)
        assert r["accuracy"] == pytest.approx(train["accuracy"])
    assert s["load_state_dict_pruned"]["conv_channels"] == train["conv_channels"]
    assert s["infer"]["conv_channels"] == train["conv_channels"]  # every zeroed channel removed
    assert s["infer"]["channels_differing_from_training"] == {}
    assert s["infer"]["reach_mac_target_written"] is True
    assert channel_state(tmp_path / "infer")["infer"] is True


@pytest.mark.timeout(BUDGET["ddp_pat"] + 15)
def test_ddp_two_processes_gloo(tmp_path: Path) -> None:
    stdout = run_example(["-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_port", str(free_port()), "examples/ddp_pat.py",
                          "--out", str(tmp_path), "--quick"], tmp_path,
                         BUDGET["ddp_pat"])
    s = load_json(tmp_path / "summary.json")
    assert s["world_size"] == 2 and s["shards_disjoint"]
    assert s["samples_per_rank"][0] == s["samples_per_rank"][1] > 0
    assert s["reached_target"] and s["rewrapped_at_epoch"] is not None
    assert s["macs_ratio"] <= s["mac_target"] + TOLERANCE
    assert s["ranks_identical_every_epoch"] is True
    assert s["test_accuracy"] >= 80.0
    assert stdout.count("DDP on gloo") == 1  # only rank 0 prints
    assert channel_state(tmp_path)["reach_mac_target"] is True


@pytest.mark.timeout(BUDGET["fsdp_pat"] + 15)
def test_fsdp2_two_processes_gloo(tmp_path: Path) -> None:
    stdout = run_example(["-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_port", str(free_port()), "examples/fsdp_pat.py",
                          "--out", str(tmp_path), "--quick"], tmp_path, BUDGET["fsdp_pat"])
    s = load_json(tmp_path / "summary.json")
    assert s["world_size"] == 2 and s["reached_target"]
    assert s["macs_ratio"] <= s["mac_target"] + TOLERANCE
    assert s["resharded_at_epoch"] is not None and s["sharded_after"] is True
    assert s["ranks_identical_every_epoch"] is True
    assert s["full_checkpoint_reload_matches"] and s["sharded_checkpoint_reload_matches"]
    mem = s["memory_at_removal_rank0"]  # the whole reduced model was held, then sharded again
    assert mem["shard_bytes_after_reshard"] < mem["whole_bytes_after_removal"]
    assert s["test_accuracy"] >= 80.0
    assert stdout.count("FSDP2 (fully_shard) on gloo") == 1  # only rank 0 prints
    assert channel_state(tmp_path)["reach_mac_target"] is True
    assert "Gathered the FSDP-sharded model whole" in (tmp_path / "pat.log").read_text()


@pytest.mark.timeout(BUDGET["transformer_heads"] + 15)
def test_transformer_heads(tmp_path: Path) -> None:
    stdout = run_example(["examples/transformer_heads.py", "--out", str(tmp_path), "--quick"],
                         tmp_path, BUDGET["transformer_heads"])
    s = load_json(tmp_path / "summary.json")
    assert s["reach_mac_target"] is True
    assert s["mac_target"] - 0.05 <= s["macs_ratio"] <= s["mac_target"] + TOLERANCE
    assert s["heads_before"] == [4, 4, 4]
    assert all(1 <= h < 4 for h in s["heads_after"])  # whole heads removed in every block
    assert s["q_proj_out_after"] == [16 * h for h in s["heads_after"]]  # head_dim kept
    assert all(n < 128 for n in s["mlp_hidden_after"])
    assert s["pat"]["accuracy"] >= s["baseline"]["accuracy"] - 3.0
    reload = s["reload"]
    assert (reload["missing"], reload["unexpected"]) == ([], [])
    assert reload["heads"] == s["heads_after"] and reload["output_max_diff"] <= 1e-5
    assert "heads and features removed, optimizer re-created" in \
        (tmp_path / "pat.log").read_text()
    assert "reloaded into a fresh split model" in stdout


@pytest.mark.timeout(BUDGET["llm_pat"] + 15)
def test_llm_pat(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    stdout = run_example(["examples/llm_pat.py", "--out", str(tmp_path), "--quick"],
                         tmp_path, BUDGET["llm_pat"])
    s = load_json(tmp_path / "summary.json")
    assert s["reach_mac_target"] is True
    assert s["mac_target"] - 0.05 <= s["macs_ratio"] <= s["mac_target"] + TOLERANCE
    before, after = s["before"], s["after"]
    assert before["query_heads"] == [8] * 4 and before["kv_heads"] == [2] * 4
    for q, kv in zip(after["query_heads"], after["kv_heads"]):
        assert 1 <= kv < 2 and q == 4 * kv  # whole KV groups: 4 query heads per KV head
    assert all(n < 192 for n in after["mlp_hidden"])
    assert s["pat_layers"]["num_key_value_heads"] == after["kv_heads"]
    assert s["pat_layers"]["intermediate_size"] == after["mlp_hidden"]
    assert s["reload"] == {"logits_max_diff": 0.0, "greedy_equal": True}
    assert s["pat"]["perplexity"] < 256 and s["baseline"]["perplexity"] < 256  # it learned
    assert "perplexity unpruned" in stdout and "sample (PAT)" in stdout
    assert "optimizer re-created" in (tmp_path / "pat.log").read_text()


TESTED = {"digits_pat.py", "two_inputs.py", "resume.py", "one_shot.py", "infer_rebuild.py",
          "ddp_pat.py", "transformer_heads.py", "fsdp_pat.py", "llm_pat.py"}


def test_every_example_is_tested_and_has_its_config() -> None:
    scripts = {p.name for p in EXAMPLES.glob("*.py") if not p.name.startswith("_")}
    assert scripts == TESTED, "add a test for each new example (or drop the removed one)"
    for name in scripts:
        assert (EXAMPLES / name.replace(".py", "_config.json")).is_file(), name
