"""The accuracy benchmark's VGG with our channel pruner on the recommended config, for the
tests of the benchmark's prototypes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Tuple

import torch
from torch import nn

import torch_pruning as tp
from benchmarks import bench_accuracy as bench


def vgg_pruner(folder: Path, budget: float = 0.25) -> Tuple[nn.Module, Any]:
    """The benchmark's VGG (seed 0) and the channel pruner of ``recommend_config`` at
    ``budget`` for a 30-epoch run, its config written to ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = bench.build("vgg")
    example = torch.randn(1, 3, 32, 32)
    cfg = tp.pat.recommend_config(model, example, budget, 30)
    (folder / "pruning_config.json").write_text(json.dumps(cfg))
    cp = tp.Pruning(model, str(folder), example_inputs=example, log=None).channel_pruner
    return model, cp
