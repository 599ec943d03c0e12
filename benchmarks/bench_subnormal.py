"""Subnormal floats from a long L2 penalty on CPU, and the switch that avoids them.

A focused L2 penalty shrinks the channels it pushes geometrically. In the 60-epoch VGG runs of
``bench_accuracy.py`` at 0.1x the weights of the pushed channels were between 1e-25 and 1e-10
at the end of the penalty, and the last penalty and masking epochs took 2-6 times as long as
a dense epoch: products of such values in the backward pass are subnormal floats, which x86
CPUs compute far slower. ``torch.set_flush_denormal(True)`` (the CPU's flush-to-zero mode, for
the whole process) makes them exact zeros.

This script builds the VGG-style CNN of ``bench_accuracy.py`` (random weights, 32x32 inputs,
batch 128), scales every parameter coupled to the last two thirds of each convolution's output
channels (filter, BatchNorm scale and shift, the next layer's input slice: the channels a 0.1x
budget prunes) by ``--shrink`` factors, and times training steps (forward, backward, SGD with
momentum at learning rate 0.01), interleaved so background load hits all alike:

* **dense**: the unscaled model;
* **shrunk**: the scaled model;
* **shrunk, flush-to-zero**: the scaled model with ``torch.set_flush_denormal(True)`` during
  its steps only.

Run:  python benchmarks/bench_subnormal.py [--steps 7] [--shrink 1e-8 1e-14 1e-17 1e-20]
      [--threads 1]
Prints a markdown table (median step times).
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from typing import Callable, Dict, List

import torch
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

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


def step_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
            flush: bool = False) -> Callable[[], None]:
    """A training step; with ``flush``, the CPU's flush-to-zero mode is on during it."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step() -> None:
        if flush:
            torch.set_flush_denormal(True)
        try:
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
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
    """Median step seconds of the dense, shrunk and flush-to-zero variants, interleaved."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, 3, SIZE, SIZE, generator=g)
    y = torch.randint(0, 10, (BATCH,), generator=g)
    torch.manual_seed(0)
    dense = VGG()
    shrunk = copy.deepcopy(dense)
    shrink_pushed(shrunk, factor)
    fns = {"dense": step_fn(dense, x, y), "shrunk": step_fn(shrunk, x, y),
           "flushed": step_fn(copy.deepcopy(shrunk), x, y, flush=True)}
    for fn in fns.values():  # warm-up
        fn()
    times: Dict[str, List[float]] = {k: [] for k in fns}
    for _ in range(steps):
        for k, fn in fns.items():
            times[k].append(timed(fn))
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
          "shrunk, flush-to-zero (ms) | flush-to-zero / dense |")
    print("|---|---|---|---|---|---|")
    for factor in args.shrink:
        r = bench(factor, args.steps)
        d = r["dense"]
        print(f"| {factor:g} | {d * 1e3:.0f} | {r['shrunk'] * 1e3:.0f} | {r['shrunk'] / d:.2f}x | "
              f"{r['flushed'] * 1e3:.0f} | {r['flushed'] / d:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
