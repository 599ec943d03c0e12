"""Latency-aware against MAC-based channel pruning at the same budget, on real CPU latency.

For torchvision's resnet18 and mobilenet_v2 (random weights, 10 classes) at 64x64, each model is
pruned one-shot (``prune_channels_at_init``) with ``MACAwareImportance`` (``MAC_params`` Mul,
global ranking) to ``mac_target`` = 0.5, once with ``cost: "macs"`` (the budget is 50% of the
MACs) and once with ``cost: "latency"`` (50% of the estimated latency, from a per-layer table
measured on this CPU and cached in a temporary config folder). Reported per model: MACs and
real batch-1 eval latency of each pruned model against the original (median of interleaved
runs, so background load hits all three alike), and the time spent measuring the table.

Run:  python benchmarks/bench_latency.py [--runs 30] [--threads 1] [--models resnet18 ...]
Prints a markdown table.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

import torch
from torch import nn
from tqdm import tqdm

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

import torchvision  # noqa: E402

import torch_pruning as tp  # noqa: E402

SIZE, TARGET = 64, 0.5


def config(cost: str) -> Dict[str, Any]:
    return {"channel_sparsity_args": {
        "start_epoch": 0, "end_epoch": 0, "global_prune_rate": 0.9, "max_pruning_rate": 0.8,
        "mac_target": TARGET, "prune_channels_at_init": True, "global_pruning": True,
        "pruning_method": "MACAwareImportance", "cost": cost, "verbose": 0,
        "MAC_params": {"use_macs": True, "type": "Mul", "beta": 1.0}}}


def prune(model: nn.Module, cost: str, folder: Path) -> float:
    """Prune ``model`` in place; return the seconds spent building the pruner (incl. table)."""
    (folder / "pruning_config.json").write_text(json.dumps(config(cost)))
    x = torch.randn(1, 3, SIZE, SIZE)
    start = time.perf_counter()
    pruner = tp.Pruning(model, folder, example_inputs=x)
    built = time.perf_counter() - start
    pruner.prune(model, 0)
    return built


def latencies(models: Dict[str, nn.Module], runs: int) -> Dict[str, float]:
    x = torch.randn(1, 3, SIZE, SIZE)
    times: Dict[str, List[float]] = {k: [] for k in models}
    for m in models.values():
        m.eval()
    with torch.no_grad():
        for m in models.values():  # warm-up
            for _ in range(3):
                m(x)
        for _ in tqdm(range(runs), desc="latency", leave=False):
            for name, m in models.items():
                start = time.perf_counter()
                m(x)
                times[name].append((time.perf_counter() - start) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--models", nargs="+", default=["resnet18", "mobilenet_v2"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.getLogger("torch_pruning").setLevel(logging.WARNING)
    rows = []
    for name in args.models:
        torch.manual_seed(0)
        original = getattr(torchvision.models, name)(weights=None, num_classes=10)
        x = torch.randn(1, 3, SIZE, SIZE)
        base_macs = tp.utils.count_ops_and_params(original, x)[0]
        pruned, built = {}, {}
        with tempfile.TemporaryDirectory() as tmp:
            for cost in ("macs", "latency"):
                model = copy.deepcopy(original)
                built[cost] = prune(model, cost, Path(tmp))
                pruned[cost] = model
        lat = latencies({"original": original, **pruned}, args.runs)
        for cost, model in pruned.items():
            macs = tp.utils.count_ops_and_params(model, x)[0]
            rows.append((name, cost, macs / base_macs, lat[cost] / lat["original"],
                         lat["original"], lat[cost], built[cost]))
    print(f"CPU, {args.threads} thread(s), batch 1, {SIZE}x{SIZE}, mac_target {TARGET}, "
          f"median of {args.runs} interleaved runs\n")
    print("| model | cost | MACs kept | latency kept | original ms | pruned ms | "
          "pruner build s |")
    print("|---|---|---|---|---|---|---|")
    for name, cost, macs, ratio, base, ms, build in rows:
        print(f"| {name} | {cost} | {macs:.1%} | {ratio:.1%} | {base:.2f} | {ms:.2f} | "
              f"{build:.1f} |")


if __name__ == "__main__":
    main()
