"""Subnormal floats from a long L2 penalty on CPU, and what avoids them.

A focused L2 penalty shrinks the channels it pushes geometrically. In the 60-epoch VGG runs of
``bench_accuracy.py`` at 0.1x the weights of the pushed channels were between 1e-25 and 1e-10
at the end of the penalty, and the last penalty and masking epochs took 2-6 times as long as
a dense epoch: products of such values in the backward pass are subnormal floats, which x86
CPUs compute far slower. ``torch.set_flush_denormal(True)`` (the CPU's flush-to-zero mode, for
the whole process) makes them exact zeros; the channel pruner now holds the channels it has
pushed at exact zero once they are spent, which removed those slow epochs.

This script builds the VGG-style CNN of ``bench_accuracy.py`` (random weights, 32x32 inputs,
batch 128), scales every parameter coupled to the last two thirds of each convolution's output
channels (filter, BatchNorm scale and shift, the next layer's input slice: the channels a 0.1x
budget prunes) by ``--shrink`` factors, and times training steps (forward, backward, SGD with
momentum at learning rate 0.01), interleaved so background load hits all alike:

* **dense**: the unscaled model;
* **shrunk**: the scaled model;
* **shrunk, flush-to-zero**: the scaled model with ``torch.set_flush_denormal(True)`` during
  its steps only;
* **shrunk, channel pruner**: the scaled model under ``tp.Pruning`` with the recipe's focused
  penalty on (``recommend_config`` at 0.1x, ``begin_epoch`` 0), ``channel_regularize`` after
  every backward: the channel pruner finds the spent channels (every coupled entry below 1e-8
  of its parameter's largest) and holds them, with their momentum, at exact zero.

It also times the pass that looks for spent channels (run every 20 steps) on torchvision's
ResNet-18 (64x64 inputs, batch 16), against a training step of it.

Run:  python benchmarks/bench_subnormal.py [--steps 7] [--shrink 1e-8 1e-14 1e-17 1e-20]
      [--threads 1]
Prints a markdown table (median step times) and the detection pass's cost.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch
import torchvision
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch_pruning as tp  # noqa: E402
from bench_accuracy import VGG  # noqa: E402

BATCH, SIZE = 128, 32


def shrink_pushed(model: VGG, factor: float) -> None:
    """Scale the last two thirds of every conv's output channels, and everything coupled."""
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    bns = [m for m in model.features if isinstance(m, nn.BatchNorm2d)]
    head = model.head[-1]
    with torch.no_grad():
        for i, (conv, bn) in enumerate(zip(convs, bns)):
            gone = slice(conv.out_channels // 3, None)
            conv.weight[gone] *= factor
            bn.weight[gone] *= factor
            bn.bias[gone] *= factor
            consumer = convs[i + 1] if i + 1 < len(convs) else head
            consumer.weight[:, gone] *= factor


def penalized(model: nn.Module, out: str) -> tp.Pruning:
    """``tp.Pruning`` on ``model`` with the recipe's focused penalty on from the first step."""
    example = torch.randn(1, 3, SIZE, SIZE)
    cfg = tp.pat.recommend_config(model, example, 0.1, 60)
    cfg["channel_sparsity_args"]["regularize"]["begin_epoch"] = 0
    (Path(out) / "pruning_config.json").write_text(json.dumps(cfg))
    return tp.Pruning(model, out, example_inputs=example, log=None)


def step_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor, flush: bool = False,
            pruner: Optional[tp.Pruning] = None) -> Callable[[], None]:
    """A training step; with ``flush``, the CPU's flush-to-zero mode is on during it; with
    ``pruner``, its channel penalty is added after the backward pass."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step() -> None:
        if flush:
            torch.set_flush_denormal(True)
        try:
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            if pruner is not None:
                pruner.channel_regularize(model)
            opt.step()
        finally:
            torch.set_flush_denormal(False)
    return step


def timed(fn: Callable[[], None]) -> float:
    """Seconds one call of ``fn`` takes."""
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def bench(factor: float, steps: int) -> Dict[str, float]:
    """Median step seconds of the dense, shrunk, flush-to-zero and channel-pruner variants,
    interleaved (the pruner looks for spent channels at its first, warm-up step)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, 3, SIZE, SIZE, generator=g)
    y = torch.randint(0, 10, (BATCH,), generator=g)
    torch.manual_seed(0)
    dense = VGG()
    shrunk = copy.deepcopy(dense)
    shrink_pushed(shrunk, factor)
    with tempfile.TemporaryDirectory() as out:
        with_pruner = copy.deepcopy(shrunk)
        fns = {"dense": step_fn(dense, x, y), "shrunk": step_fn(shrunk, x, y),
               "flushed": step_fn(copy.deepcopy(shrunk), x, y, flush=True),
               "pruner": step_fn(with_pruner, x, y, pruner=penalized(with_pruner, out))}
        for fn in fns.values():  # warm-up
            fn()
        times: Dict[str, List[float]] = {k: [] for k in fns}
        for _ in range(steps):
            for k, fn in fns.items():
                times[k].append(timed(fn))
    return {k: statistics.median(v) for k, v in times.items()}


def detection_cost(steps: int) -> Dict[str, float]:
    """Median seconds of a ResNet-18 training step (with the penalty) and of one search for
    spent channels on it, interleaved."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None)
    x, y = torch.randn(16, 3, 64, 64), torch.randint(0, 1000, (16,))
    with tempfile.TemporaryDirectory() as out:
        cfg = {"channel_sparsity_args": {"start_epoch": 10, "end_epoch": 12, "mac_target": 0.5,
                                         "global_prune_rate": 0.8, "regularize": {"reg": 1e-4},
                                         "input_shape": [1, 3, 64, 64]}}
        (Path(out) / "pruning_config.json").write_text(json.dumps(cfg))
        pruner = tp.Pruning(model, out, example_inputs=x[:1], log=None)
        step = step_fn(model, x, y, pruner=pruner)
        search = pruner.channel_pruner.regularizer.spent
        step()
        search()
        times: Dict[str, List[float]] = {"step": [], "search": []}
        for _ in range(steps):
            times["step"].append(timed(step))
            times["search"].append(timed(search))
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    """Print the table for every ``--shrink`` factor."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=7, help="timed steps per variant")
    parser.add_argument("--shrink", type=float, nargs="+", default=[1e-8, 1e-14, 1e-17, 1e-20])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"\nCPU, {args.threads} thread(s), VGG-style CNN (bench_accuracy.py), "
          f"input {SIZE}x{SIZE}, batch {BATCH}; median of {args.steps} interleaved steps\n")
    print("| pushed channels scaled by | dense step (ms) | shrunk step (ms) | shrunk / dense | "
          "shrunk, flush-to-zero (ms) | flush-to-zero / dense | shrunk, channel pruner (ms) | "
          "channel pruner / dense |")
    print("|---|---|---|---|---|---|---|---|")
    for factor in args.shrink:
        r = bench(factor, args.steps)
        d = r["dense"]
        print(f"| {factor:g} | {d * 1e3:.0f} | {r['shrunk'] * 1e3:.0f} | {r['shrunk'] / d:.2f}x | "
              f"{r['flushed'] * 1e3:.0f} | {r['flushed'] / d:.2f}x | {r['pruner'] * 1e3:.0f} | "
              f"{r['pruner'] / d:.2f}x |", flush=True)
    c = detection_cost(args.steps)
    print(f"\nResNet-18, 64x64, batch 16: a training step with the penalty {c['step'] * 1e3:.0f} ms, "
          f"one search for spent channels {c['search'] * 1e3:.1f} ms ({c['search'] / c['step']:.2f} "
          f"of a step; every 20 steps: {c['search'] / c['step'] / 20:.2%} of training)", flush=True)


if __name__ == "__main__":
    main()
