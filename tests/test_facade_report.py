"""`pruner.report()`: written beside the config when the MAC target is met, numbers that hold."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import torch_pruning as tp
from models import SmallCNN
from models.loop import five_line_loop

CONFIG = {
    "channel_sparsity_args": {
        "start_epoch": 0, "end_epoch": 3, "global_prune_rate": 0.9, "mac_target": 0.5,
        "block_size": 4,  # channel counts stay whole slice blocks
        "regularize": {"reg": 1e-4}, "layers": "all", "input_shape": [1, 3, 16, 16]},
    "slice_sparsity_args": {"start_epoch": 4, "end_epoch": 4, "prune_rate": 0.25,
                            "block_size": 4},
}


def _run(model: nn.Module, pruner, epochs: int) -> None:
    torch.manual_seed(0)
    five_line_loop(model, pruner, [(torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,)))],
                   epochs=epochs)


def test_report_is_saved_beside_the_config_at_the_target(write_config) -> None:
    folder = write_config(CONFIG)
    torch.manual_seed(0)
    model = SmallCNN()
    base_macs, _ = tp.utils.count_ops_and_params(model, torch.randn(1, 3, 16, 16))
    pruner = tp.Pruning(model, folder)
    _run(model, pruner, epochs=4)
    assert pruner.channel_pruner.reached_target
    assert (folder / "pruning_report.txt").is_file() and (folder / "pruning_report.png").is_file()
    text = (folder / "pruning_report.txt").read_text()
    assert "features.1.0" in text
    report = pruner.report()
    before, after = report.macs
    assert after <= 0.5 * before * 1.01
    macs, _ = tp.utils.count_ops_and_params(model, torch.randn(1, 3, 16, 16))
    assert macs <= 0.5 * base_macs * 1.01


def test_report_includes_slice_sparsity_after_slice_pruning(write_config) -> None:
    folder = write_config(CONFIG)
    torch.manual_seed(0)
    model = SmallCNN()
    pruner = tp.Pruning(model, folder)
    _run(model, pruner, epochs=5)
    report = pruner.report()
    assert report.slice_overall is not None and report.slice_overall > 0
    assert "slice" in report.text().lower()


def test_report_without_channel_pruning_says_what_it_needs(write_config) -> None:
    folder = write_config({"slice_sparsity_args": CONFIG["slice_sparsity_args"]})
    pruner = tp.Pruning(SmallCNN(), folder)
    with pytest.raises(RuntimeError, match="needs the channel pruner's example inputs"):
        pruner.report()


def test_mismatched_block_sizes_warn_at_construction(write_config, caplog) -> None:
    config = {"channel_sparsity_args": dict(CONFIG["channel_sparsity_args"], block_size=2),
              "slice_sparsity_args": CONFIG["slice_sparsity_args"]}
    with caplog.at_level("WARNING", logger="torch_pruning.pat"):
        tp.Pruning(SmallCNN(), write_config(config))
    assert any("block_size (2) is not a multiple of slice_sparsity_args.block_size (4)"
               in r.getMessage() for r in caplog.records)
