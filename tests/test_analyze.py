"""analyze.py on real checkpoints of a short group-lasso run on scikit-learn's digits.

The run trains a tiny CNN for a few epochs with a proximal group-lasso step on the conv
filters (so some channel norms collapse) and saves a checkpoint per epoch in the formats
training scripts use (wrapped, ``module.``-prefixed, plain). The tests recompute the norms
from the files independently and check what ``analyze.py`` prints, suggests and draws.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import pytest
import torch
from torch import nn

from torch_pruning.pat.tools.analyze import analyze_run, main
from torch_pruning.pat.tools.analyze_checkpoints import epoch_of

ROOT = Path(__file__).resolve().parents[1]

# The model file the tests pass to --model (path form of module:factory).
NET_SOURCE = '''
import torch
from torch import nn


class DigitsCNN(nn.Module):
    """conv-BN-ReLU, max-pool, conv-BN-ReLU, global average pool, linear (8x8 digits)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(16)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = nn.functional.max_pool2d(torch.relu(self.bn1(self.conv1(x))), 2)
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(self.pool(x).flatten(1))


def make_net():
    torch.manual_seed(0)
    return DigitsCNN()
'''

EPOCHS = 6
ROW = re.compile(r"^\s*(\d+)\s+(\S+)\s+(\d+) / (\d+)\s+([\d.]+)%", re.MULTILINE)


def _import(path: Path):
    spec = importlib.util.spec_from_file_location("digits_netdef", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _save(sd: Dict[str, torch.Tensor], epoch: int, folder: Path) -> None:
    """Rotate through the checkpoint formats real training scripts write."""
    if epoch % 3 == 0:
        torch.save({"model": sd, "epoch": epoch}, folder / f"epoch_{epoch:03d}.pt")
    elif epoch % 3 == 1:
        torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()},
                    "optimizer": {"lr": 0.01}}, folder / f"checkpoint_epoch{epoch}.pth")
    else:
        torch.save(sd, folder / f"ckpt-{epoch}.pt")


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory) -> Tuple[Path, Path]:
    """(run folder with one checkpoint per epoch, model file). A few seconds on one core."""
    from sklearn.datasets import load_digits

    base = tmp_path_factory.mktemp("digits")
    net_file = base / "netdef.py"
    net_file.write_text(NET_SOURCE)
    run = base / "run"
    run.mkdir()
    data = load_digits()
    x = torch.tensor(data.images[:600], dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target[:600])
    model = _import(net_file).make_net()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    gen = torch.Generator().manual_seed(0)
    tau = 0.01  # proximal group-lasso step on every conv filter after each update
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for epoch in range(EPOCHS):
            perm = torch.randperm(len(y), generator=gen)
            for i in range(0, len(y), 50):
                idx = perm[i:i + 50]
                loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                with torch.no_grad():
                    for conv in (model.conv1, model.conv2):
                        norm = conv.weight.flatten(1).norm(dim=1).clamp_min(1e-12)
                        conv.weight.mul_((1 - tau / norm).clamp_min(0).view(-1, 1, 1, 1))
            _save({k: v.clone() for k, v in model.state_dict().items()}, epoch, run)
    finally:
        torch.set_num_threads(threads)
    return run, net_file


def _load_plain(path: Path) -> Dict[str, torch.Tensor]:
    obj = torch.load(path, weights_only=True)
    obj = obj.get("model", obj.get("state_dict", obj))
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _files_by_epoch(run: Path) -> List[Path]:
    files = [p for p in run.iterdir() if p.suffix in (".pt", ".pth")]
    return sorted(files, key=lambda p: int(re.findall(r"\d+", p.stem)[-1]))


def _filter_norms(sd: Dict[str, torch.Tensor], layers=("conv1", "conv2")) -> np.ndarray:
    return np.concatenate([sd[f"{n}.weight"].flatten(1).norm(dim=1).numpy() for n in layers])


def _group_norms(sd: Dict[str, torch.Tensor]) -> np.ndarray:
    """Every parameter coupled to a channel: filter, bias, BN affine, the consumer's inputs."""
    sq = lambda t: t.double() ** 2  # noqa: E731
    g1 = (sq(sd["conv1.weight"]).flatten(1).sum(1) + sq(sd["conv1.bias"]) + sq(sd["bn1.weight"])
          + sq(sd["bn1.bias"]) + sq(sd["conv2.weight"]).transpose(0, 1).flatten(1).sum(1))
    g2 = (sq(sd["conv2.weight"]).flatten(1).sum(1) + sq(sd["conv2.bias"]) + sq(sd["bn2.weight"])
          + sq(sd["bn2.bias"]) + sq(sd["fc.weight"]).sum(0))
    return torch.cat([g1, g2]).sqrt().numpy()


def _first_reaching(fractions: List[float], rate: float) -> int:
    return next(i for i, f in enumerate(fractions) if f >= rate)


def _is_png(path: Path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_counts_threshold_and_suggestion_match_independent_norms(digits_run, tmp_path,
                                                                  capsys) -> None:
    run, _ = digits_run
    files = _files_by_epoch(run)
    norms = [_filter_norms(_load_plain(p)) for p in files]
    threshold = 0.1 * float(np.median(norms[0]))  # the documented default
    fractions = [float(np.mean(n < threshold)) for n in norms]
    assert fractions[-1] > fractions[0], "the regularization run should shrink some channels"
    rate = round(fractions[-1] * 0.9, 3)
    expected = _first_reaching(fractions, rate)

    out_png = tmp_path / "norms.png"
    assert main([str(run), "--rate", str(rate), "--out", str(out_png)]) == 0
    printed = capsys.readouterr().out

    rows = ROW.findall(printed)
    assert [r[1] for r in rows] == [p.name for p in files]  # every checkpoint, in epoch order
    assert [int(r[2]) for r in rows] == [int(np.sum(n < threshold)) for n in norms]
    assert all(int(r[3]) == 24 for r in rows)  # 8 + 16 conv filters
    assert re.search(rf"threshold {threshold:.4g} \(10% of the median", printed)
    assert f"Suggested start_epoch: {expected}." in printed
    assert f"{int(np.sum(norms[expected] < threshold))}/24" in printed
    assert _is_png(out_png) and out_png.stat().st_size > 20_000


def test_model_mode_counts_dependency_group_norms_and_uses_config_rate(digits_run, tmp_path,
                                                                       capsys) -> None:
    run, net_file = digits_run
    config = tmp_path / "pruning_config.json"
    config.write_text(json.dumps({"channel_sparsity_args": {
        "start_epoch": 2, "end_epoch": 5, "global_prune_rate": 0.25,
        "layers": ["conv1", "module.conv2"], "input_shape": [1, 1, 8, 8]}}))
    files = _files_by_epoch(run)
    norms = [_group_norms(_load_plain(p)) for p in files]
    threshold = float(np.quantile(norms[-1], 0.3))  # between channels, not on one
    fractions = [float(np.mean(n < threshold)) for n in norms]

    code = main([str(run), "--config", str(config), "--model", f"{net_file}:make_net",
                 "--threshold", repr(threshold), "--out", str(tmp_path / "groups.png")])
    printed = capsys.readouterr().out
    assert code == 0
    rows = ROW.findall(printed)
    assert [int(r[2]) for r in rows] == [int(np.sum(n < threshold)) for n in norms]
    assert "global_prune_rate in" in printed and "target rate 25%" in printed
    if max(fractions) >= 0.25:
        assert f"Suggested start_epoch: {_first_reaching(fractions, 0.25)}." in printed
    else:
        assert "No checkpoint reaches the target" in printed
    assert _is_png(tmp_path / "groups.png")


def test_config_layers_select_the_convs_counted(digits_run, tmp_path, capsys) -> None:
    run, _ = digits_run
    config = tmp_path / "cfg.json"
    config.write_text(json.dumps({"channel_sparsity_args": {
        "start_epoch": 0, "end_epoch": 1, "global_prune_rate": 0.5, "layers": ["conv2"]}}))
    assert main([str(run), "--config", str(config), "--out", str(tmp_path / "a.png")]) == 0
    assert {int(r[3]) for r in ROW.findall(capsys.readouterr().out)} == {16}

    config.write_text(json.dumps({"channel_sparsity_args": {
        "start_epoch": 0, "end_epoch": 1, "global_prune_rate": 0.5, "layers": ["conv3"]}}))
    assert main([str(run), "--config", str(config), "--out", str(tmp_path / "b.png")]) == 2
    err = capsys.readouterr().err
    assert "'conv3'" in err and "conv1" in err and "conv2" in err


def _tiny_run(folder: Path, names_and_scales: List[Tuple[str, float]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, scale in names_and_scales:
        w = torch.ones(4, 2, 3, 3)
        w[: int(scale)] *= 1e-4  # the first `scale` filters are small
        torch.save({"conv.weight": w, "fc.weight": torch.ones(3, 4)}, folder / name)
    return folder


@pytest.mark.parametrize("name, epoch", [
    ("epoch_003.pt", 3), ("checkpoint_epoch3.pth", 3), ("ckpt-12.pt", 12), ("model_10.pth", 10),
    ("run1_epoch7.pt", 7), ("ep5.pth", 5), ("resnet18.pth", None), ("best.pt", None),
])
def test_epoch_numbers_are_read_from_common_checkpoint_names(name, epoch) -> None:
    assert epoch_of(name) == epoch


def test_checkpoints_sorted_by_epoch_number_not_by_name(tmp_path, capsys) -> None:
    run = _tiny_run(tmp_path / "run", [("model_10.pth", 3), ("model_2.pth", 1),
                                       ("model_1.pth", 0), ("best.pth", 4)])
    assert main([str(run), "--rate", "0.5", "--threshold", "0.01"]) == 0
    out = capsys.readouterr().out
    rows = ROW.findall(out)
    assert [(int(r[0]), int(r[2])) for r in rows] == [(1, 0), (2, 1), (10, 3)]
    assert "Suggested start_epoch: 10." in out  # 1/4 at epoch 2 < 50% <= 3/4 at epoch 10
    assert _is_png(run / "channel_norms.png")  # default --out


def test_library_logs_instead_of_printing(tmp_path, capsys) -> None:
    run = _tiny_run(tmp_path / "run", [("epoch_1.pt", 0), ("epoch_2.pt", 2)])
    result = analyze_run(run, rate=0.5, progress=False)
    assert result.suggested_epoch == 2 and result.small == [0, 2]
    assert capsys.readouterr().out == ""


def _truncated(folder: Path) -> Path:
    run = _tiny_run(folder, [("epoch_1.pt", 0), ("epoch_2.pt", 1)])
    data = (run / "epoch_2.pt").read_bytes()
    (run / "epoch_2.pt").write_bytes(data[: len(data) // 2])
    return run


@pytest.mark.parametrize("make, message", [
    (lambda d: d, "the folder is empty"),
    (lambda d: (d / "notes.txt").write_text("hi") and d, r"no checkpoints \(\*\.pt, \*\.pth\)"),
    (lambda d: _tiny_run(d, [("best.pt", 0), ("last.pt", 0)]), "has an epoch number"),
    (_truncated, r"epoch_2\.pt: cannot read the checkpoint"),
    (lambda d: d / "missing", "no such folder"),
    (lambda d: torch.save({"model": nn.Conv2d(1, 2, 3)}, d / "epoch_1.pt") or d,
     r"epoch_1\.pt: .*pickles objects other than tensors .*save model\.state_dict\(\)"),
], ids=["empty", "no-checkpoints", "no-epoch-numbers", "truncated", "missing", "whole-model"])
def test_clear_errors_exit_with_code_2(tmp_path, capsys, make, message) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    target = make(folder)
    assert main([str(target)]) == 2
    err = capsys.readouterr().err
    error = re.search(r"^error: (.*)$", err, re.MULTILINE)  # on its own line, after any bar
    assert error and re.search(message, error.group(1)), err


def test_script_runs_headless_from_the_checkout(tmp_path) -> None:
    run = _tiny_run(tmp_path / "run", [("epoch_1.pt", 0), ("epoch_2.pt", 3)])
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "MPLBACKEND")}
    proc = subprocess.run([sys.executable, str(ROOT / "analyze.py"), str(run), "--rate", "0.5",
                           "--out", str(tmp_path / "out.png")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Suggested start_epoch: 2." in proc.stdout
    assert "checkpoints: 100%" in proc.stderr  # progress bar over checkpoints
    assert _is_png(tmp_path / "out.png")


def test_config_with_mac_target_sets_the_rate_to_the_channels_that_must_go(digits_run, tmp_path,
                                                                           capsys) -> None:
    """A MAC target of 0.49 needs about 30% of the channels gone (1 - sqrt(0.49)), whatever
    global_prune_rate (here a cap of 0.9) says."""
    run, _ = digits_run
    config = tmp_path / "pruning_config.json"
    config.write_text(json.dumps({"channel_sparsity_args": {
        "start_epoch": 2, "end_epoch": 5, "global_prune_rate": 0.9, "mac_target": 0.49,
        "schedule": "macs"}}))
    code = main([str(run), "--config", str(config), "--out", str(tmp_path / "a.png")])
    printed = capsys.readouterr().out
    assert code == 0
    assert "target rate 30%" in printed and "mac_target 0.49" in printed
    assert "90%" not in printed
