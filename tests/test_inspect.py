"""``python -m torch_pruning.pat inspect`` and ``validate``: what a user reads before pruning."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Dict

import pytest
import torch
import torchvision
from torch import nn

import torch_pruning as tp
from torch_pruning.pat.tools.cli import main
from torch_pruning.pat.config.models import ChannelSparsityArgs, SliceSparsityArgs
from torch_pruning.pat.config.io import load_config
from torch_pruning.pat.tools.model_factory import ToolError, load_model, parse_input_shape

RESNET = "torchvision.models:resnet18"
CONV_ROW = re.compile(r"^\s*\d+\s+(\S+)\s+(\d+x\d+x\d+x\d+)\s+(\d+|-)\s+([\d,]+)\s+[\d.]+%",
                      re.MULTILINE)
OTHER_ROW = re.compile(r"^\s+([A-Za-z0-9]+) \(\d+\)\s+([\d,]+)\s+[\d.]+%$", re.MULTILINE)

# Small models for validate, written to a file and passed as path/to/file.py:factory.
SMALL_MODELS = '''
import torch
from torch import nn


def classifier():
    """conv-BN-ReLU x2, global pool, linear: both convs prunable."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))


def mlp():
    """A flatten-linear-relu-linear classifier: its hidden Linear is prunable."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 32), nn.ReLU(), nn.Linear(32, 4))


class Segmenter(nn.Module):
    """A backbone conv and a 1x1 head whose channels are the model's output (not prunable)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 5, 1)

    def forward(self, x):
        return self.head(torch.relu(self.body(x)))
'''


def _number(text: str) -> int:
    return int(text.replace(",", ""))


@pytest.fixture(scope="module")
def resnet_inspect(tmp_path_factory):
    """Run ``inspect`` once on resnet18 at 64x64 with --write-config; (stdout, config dir)."""
    folder = tmp_path_factory.mktemp("resnet_cfg")
    capture = pytest.MonkeyPatch()
    import io
    import sys

    out = io.StringIO()
    capture.setattr(sys, "stdout", out)
    try:
        code = main(["inspect", "--model", RESNET, "--input-shape", "1,3,64,64",
                     "--write-config", str(folder)])
    finally:
        capture.undo()
    assert code == 0
    return out.getvalue(), folder


@pytest.fixture
def models_file(tmp_path) -> Path:
    path = tmp_path / "small_models.py"
    path.write_text(SMALL_MODELS)
    return path


def test_inspect_lists_every_conv_with_macs_that_sum_to_upstream_total(resnet_inspect) -> None:
    text, _ = resnet_inspect
    model = torchvision.models.resnet18().eval()
    total, _, layer_flops, _ = tp.utils.count_ops_and_params(
        model, torch.randn(1, 3, 64, 64), layer_wise=True)
    convs = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}

    rows = CONV_ROW.findall(text)
    assert [r[0] for r in rows] == list(convs)  # every Conv2d, in model order
    for name, shape, _, macs in rows:
        assert shape == "x".join(map(str, convs[name].weight.shape))
        assert _number(macs) == layer_flops[convs[name]]  # upstream's own per-layer count
    others = dict((kind, _number(m)) for kind, m in OTHER_ROW.findall(text))
    assert {"Linear", "BatchNorm2d", "ReLU", "MaxPool2d"} <= set(others)
    assert sum(_number(r[3]) for r in rows) + sum(others.values()) == int(total)
    assert f"Total MACs: {int(total):,}" in text


def test_inspect_shows_dependency_groups_of_residual_blocks(resnet_inspect) -> None:
    text, _ = resnet_inspect
    group = {name: g for name, _, g, _ in CONV_ROW.findall(text)}
    # the stem conv and the convs adding into its residual stream lose channels together
    assert group["conv1"] == group["layer1.0.conv2"] == group["layer1.1.conv2"]
    assert group["layer2.0.conv2"] == group["layer2.0.downsample.0"] == group["layer2.1.conv2"]
    assert group["layer1.0.conv1"] != group["conv1"]
    assert re.search(r"Group \d+ \(512 channels\): layer4\.0\.conv2, layer4\.0\.downsample\.0, "
                     r"layer4\.1\.conv2\n\s+consumers: layer4\.1\.conv1, fc", text)


def test_write_config_is_complete_and_loads_with_the_config_model(resnet_inspect) -> None:
    _, folder = resnet_inspect
    path = folder / "pruning_config.json"
    data = json.loads(path.read_text())
    assert set(data["channel_sparsity_args"]) == set(ChannelSparsityArgs.model_fields)
    assert set(data["slice_sparsity_args"]) == set(SliceSparsityArgs.model_fields)
    loaded = load_config(folder)
    assert loaded is not None and loaded.channel is not None and loaded.slice is None
    convs = [n for n, m in torchvision.models.resnet18().named_modules()
             if isinstance(m, nn.Conv2d)]
    assert loaded.channel.layers == convs
    assert loaded.channel.input_shape == [1, 3, 64, 64]
    assert loaded.channel.regularize.gamma == ChannelSparsityArgs().regularize.gamma  # defaults


def test_write_config_refuses_to_overwrite_without_force(tmp_path, models_file, capsys) -> None:
    spec = f"{models_file}:classifier"
    args = ["inspect", "--model", spec, "--input-shape", "1,3,8,8", "--write-config",
            str(tmp_path / "cfg")]
    assert main(args) == 0
    path = tmp_path / "cfg" / "pruning_config.json"
    path.write_text(path.read_text().replace('"end_epoch": 30', '"end_epoch": 31'))
    edited = path.read_text()
    capsys.readouterr()

    assert main(args) == 2
    assert "already exists; pass --force" in capsys.readouterr().err
    assert path.read_text() == edited

    assert main(args + ["--force"]) == 0
    assert '"end_epoch": 30' in path.read_text()
    assert [p.name for p in path.parent.iterdir()] == ["pruning_config.json"]  # no temp files


def test_validate_prints_the_groups_that_would_be_pruned(resnet_inspect, capsys) -> None:
    _, folder = resnet_inspect
    assert main(["validate", str(folder), "--model", RESNET]) == 0
    out = capsys.readouterr().out
    assert "Channel pruning: 12 group(s) selected" in out
    assert re.search(r"Group 1 \(64 channels, about 32 pruned, 32 kept at end_epoch\): conv1, "
                     r"layer1\.0\.conv2, layer1\.1\.conv2", out)
    assert "Slice pruning: off" in out


def test_validate_unknown_layer_lists_close_matches(resnet_inspect, tmp_path, capsys) -> None:
    _, folder = resnet_inspect
    data = json.loads((folder / "pruning_config.json").read_text())
    data["channel_sparsity_args"]["layers"] = ["layer1.0.conv3", "conv1"]
    (tmp_path / "pruning_config.json").write_text(json.dumps(data))
    assert main(["validate", str(tmp_path), "--model", RESNET]) == 2
    err = capsys.readouterr().err
    # the channel pruner's own message: validate resolves layers as Pruning does
    assert "channel_sparsity_args.layers: no module named 'layer1.0.conv3'" in err
    matches = re.search(r"close matches: (.*)$", err, re.MULTILINE).group(1).split(", ")
    assert {"layer1.0.conv1 (Conv2d)", "layer1.0.conv2 (Conv2d)"} <= set(matches)


def _write(folder: Path, channel: Dict, slice_: Dict = None) -> Path:
    data = {"channel_sparsity_args": channel}
    if slice_ is not None:
        data["slice_sparsity_args"] = slice_
    folder.mkdir(exist_ok=True)
    (folder / "pruning_config.json").write_text(json.dumps(data))
    return folder


BASE = {"start_epoch": 1, "end_epoch": 4, "global_prune_rate": 0.5, "input_shape": [1, 3, 8, 8],
        "regularize": {"reg": 0.005}}


@pytest.mark.parametrize("factory, channel, slice_, code, message", [
    ("Segmenter", dict(BASE, layers=["head"]), None, 1,
     r"channel pruning would prune nothing: no selected layer belongs to a prunable group "
     r"\(head: its channels are outputs of the model\)"),
    ("classifier", dict(BASE, layers=["8"]), None, 1,  # a Linear is accepted, as by Pruning
     r"no selected layer belongs to a prunable group \(8: its channels are outputs of the model"),
    ("classifier", dict(BASE, layers=["1"]), None, 2,
     r"'1' is a BatchNorm2d; list Conv2d layers"),
    ("classifier", dict(BASE, global_prune_rate=0.0), None, 1,
     r"channel_sparsity_args\.global_prune_rate is 0"),
    ("classifier", dict(BASE, block_size=16, global_prune_rate=0.1), None, 1,
     r"rounded to block_size=16, removes no channel from any selected group"),
    ("classifier", {"is_prune": False}, {"is_prune": False}, 1,
     r"both missing or have \"is_prune\": false"),
    ("classifier", {"is_prune": False}, {"start_epoch": 0, "end_epoch": 2, "prune_rate": 0.3,
                                         "block_size": 3}, 1,
     r"slice pruning would prune nothing: no selected layer has eligible slices"),
], ids=["output-conv-only", "output-linear", "batchnorm-named", "rate-zero", "block-too-big",
        "all-off", "no-slice-layer"])
def test_validate_fails_loudly_when_nothing_would_prune(tmp_path, models_file, capsys, factory,
                                                        channel, slice_, code,
                                                        message) -> None:
    folder = _write(tmp_path / "run", channel, slice_)
    args = ["validate", str(folder), "--model", f"{models_file}:{factory}"]
    if "input_shape" not in channel:
        args += ["--input-shape", "1,3,8,8"]
    assert main(args) == code
    err = capsys.readouterr().err
    assert re.search(message, err), err


def test_validate_accepts_a_config_that_prunes(tmp_path, models_file, capsys) -> None:
    folder = _write(tmp_path / "run", dict(BASE, layers=["module.0", "3"]),
                    {"start_epoch": 4, "end_epoch": 6, "prune_rate": 0.25, "block_size": 4})
    assert main(["validate", str(folder), "--model", f"{models_file}:classifier"]) == 0
    out = capsys.readouterr().out
    assert "Group 1 (8 channels, about 4 pruned, 4 kept at end_epoch): 0" in out
    assert "Group 2 (16 channels, about 8 pruned, 8 kept at end_epoch): 3" in out
    # 16 filters in blocks of A=4 -> 4 blocks x 8 inputs x 3x3 positions = 288 slices
    assert "3 (16x8x3x3, A=4): 288 slices, 288 eligible, about 72 zeroed" in out


def test_validate_accepts_what_pruning_accepts(tmp_path, models_file, capsys) -> None:
    """One code path: a Linear root that Pruning prunes is a group for validate too."""
    import importlib.util

    import torch_pruning as tp

    folder = _write(tmp_path / "run", dict(BASE, layers=["1"], mac_target=0.6))
    spec = importlib.util.spec_from_file_location("small_models", models_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    pruner = tp.Pruning(module.mlp(), folder)
    assert [g.source for g in pruner.channel_pruner.groups] == ["1"]
    assert main(["validate", str(folder), "--model", f"{models_file}:mlp"]) == 0
    out = capsys.readouterr().out
    assert "Group 1 (32 channels, about 16 pruned, 16 kept at end_epoch): 1" in out
    macs = pruner.channel_pruner.base_macs
    assert f"model MACs {tp.pat.util.log.human_count(macs)}" in out


def test_validate_without_config_says_how_to_write_one(tmp_path, capsys) -> None:
    assert main(["validate", str(tmp_path), "--model", RESNET]) == 2
    assert "--write-config" in capsys.readouterr().err


@pytest.mark.parametrize("spec, message", [
    ("torchvision.models.resnet18", "expected module:factory"),
    ("no_such_module_xyz:make", "cannot import module 'no_such_module_xyz'"),
    ("torchvision.models:resnet1800", "did you mean resnet18"),
    ("missing/net.py:make", "no such file"),
])
def test_bad_model_spec_is_a_clear_error(spec, message) -> None:
    with pytest.raises(ToolError, match=re.escape(message)):
        load_model(spec)


@pytest.mark.parametrize("text, shapes", [
    ("1,3,224,224", [[1, 3, 224, 224]]), ("1x3x64x64", [[1, 3, 64, 64]]),
    ("1,3,8,8;1,1,8,8", [[1, 3, 8, 8], [1, 1, 8, 8]]),
])
def test_input_shapes_parse(text, shapes) -> None:
    assert parse_input_shape(text) == shapes


@pytest.mark.parametrize("text", ["", "1,3,a,4", "1,0,8,8"])
def test_bad_input_shape_is_rejected(text) -> None:
    with pytest.raises(ToolError, match="--input-shape"):
        parse_input_shape(text)


def test_inspect_lists_attention_modules_and_how_their_heads_are_pruned(capsys) -> None:
    code = main(["inspect", "--model", "torchvision.models:vit_b_16", "--input-shape",
                 "1,3,224,224"])
    out = capsys.readouterr().out
    assert code == 0
    rows = re.findall(r"^  (encoder\.layers\.encoder_layer_\d+\.self_attention): 12 heads, "
                      r"nn\.MultiheadAttention: call torch_pruning\.pat\."
                      r"split_multihead_attention\(model\) first$", out, re.MULTILINE)
    assert len(rows) == 12
    from models.transformer import HeadsTransformer
    from torch_pruning.pat.tools.summary import format_summary, summarize_model
    text = format_summary(summarize_model(HeadsTransformer(), torch.randn(1, 6, 12)))
    assert "  blocks.0.attn: 4 heads, HeadsAttention (num_heads): list it in layers" in text


def test_write_config_with_mac_target_and_epochs_writes_the_recommended_recipe(
        tmp_path, models_file, capsys) -> None:
    spec = f"{models_file}:classifier"
    folder = tmp_path / "cfg"
    args = ["inspect", "--model", spec, "--input-shape", "1,3,8,8", "--write-config",
            str(folder), "--mac-target", "0.5", "--epochs", "20"]
    assert main(args) == 0
    assert "recommended recipe" in capsys.readouterr().out
    written = json.loads((folder / "pruning_config.json").read_text())
    model = load_model(spec)
    expected = tp.pat.recommend_config(model, torch.randn(1, 3, 8, 8), 0.5, 20)
    assert written == expected
    assert load_config(folder).channel.mac_target == 0.5


def test_lr_restart_writes_the_recipe_placed_for_a_restart(tmp_path, models_file,
                                                           capsys) -> None:
    spec = f"{models_file}:classifier"
    folder = tmp_path / "cfg"
    assert main(["inspect", "--model", spec, "--input-shape", "1,3,8,8", "--write-config",
                 str(folder), "--mac-target", "0.1", "--epochs", "30", "--lr-restart"]) == 0
    assert "Restart your learning-rate schedule" in capsys.readouterr().out
    written = json.loads((folder / "pruning_config.json").read_text())
    expected = tp.pat.recommend_config(load_model(spec), torch.randn(1, 3, 8, 8), 0.1, 30,
                                       lr_restart=True)
    assert written == expected
    assert written != tp.pat.recommend_config(load_model(spec), torch.randn(1, 3, 8, 8), 0.1, 30)


@pytest.mark.parametrize("extra, match", [
    (["--mac-target", "0.5"], "go together"),
    (["--epochs", "20"], "go together"),
    (["--mac-target", "1.5", "--epochs", "20"], "mac_target must be in"),
    (["--lr-restart"], "--lr-restart goes with --mac-target"),
])
def test_recipe_options_give_one_error_line(tmp_path, models_file, capsys, extra,
                                            match: str) -> None:
    args = ["inspect", "--model", f"{models_file}:classifier", "--input-shape", "1,3,8,8",
            "--write-config", str(tmp_path / "cfg"), *extra]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and match in err
    assert not (tmp_path / "cfg" / "pruning_config.json").exists()
