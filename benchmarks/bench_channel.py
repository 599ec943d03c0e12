"""Channel pruning overhead and result on CPU, as ratios measured in one run.

For torchvision's resnet18 and mobilenet_v2 (random weights, 10 classes) at 64x64, batch 16:

* **step**: a training step with ``channel_regularize`` and mask upkeep (masks already cover
  part of the channels) against a plain step, interleaved so background load hits both alike.
  The MaskSet's post-step hook fires for *every* optimizer, the plain one included, so its
  measured cost (``MaskSet.apply``) is taken out of the plain step. Target <= 1.10x.
* **prune()**: one epoch-end ``prune()`` that masks more channels (a typical call), and the call
  that meets the MAC target (lands on it, removes channels physically, re-traces the model),
  against a plain step. Target <= 3x for the typical call.
* **construction**: ``Pruning(...)`` (config, tracing, groups) against upstream's
  ``DependencyGraph().build_dependency`` on the same inputs. Target <= 1.5x. The MAC skeleton
  is built on first use (the first ``prune()``), or up front when ``mac_reg > 0`` or
  MACAwareImportance needs per-group costs (reported on a separate line).
* **MACs**: MACs reached / MAC target (upstream's count of the pruned model). Target <= 1.00
  and within 1%.
* **latency**: batch-1 eval forward of the pruned model against the original.

Run:  python benchmarks/bench_channel.py [--steps 15] [--threads N] [--models resnet18 ...]
Prints a markdown table.
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import statistics
import sys
import time
from typing import Any, Callable, Dict, List

import torch
from torch import nn
from tqdm import tqdm

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

import torchvision  # noqa: E402

import torch_pruning as tp  # noqa: E402
from torch_pruning.utils import Pruning  # noqa: E402

BATCH, SIZE, TARGET = 16, 64, 0.5


def config(gamma: float, mac_reg: float = 0.0) -> Dict[str, Any]:
    return {"channel_sparsity_args": {
        "start_epoch": 0, "end_epoch": 9, "global_prune_rate": 0.9, "mac_target": TARGET,
        "max_pruning_rate": 0.9, "layers": "all", "verbose": 0,
        "regularize": {"reg": 5e-4, "mac_reg": mac_reg, "gamma": gamma}}}


def median_time(fn: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def step_fn(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
            after_backward: Callable[[], None] = lambda: None) -> Callable[[], None]:
    def step() -> None:
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        after_backward()
        opt.step()
    return step


def bench(name: str, steps: int, bar: tqdm) -> Dict[str, float]:
    torch.manual_seed(0)
    original = getattr(torchvision.models, name)(weights=None, num_classes=10)
    x, y = torch.randn(BATCH, 3, SIZE, SIZE), torch.randint(0, 10, (BATCH,))
    x1 = torch.randn(1, 3, SIZE, SIZE)
    out: Dict[str, float] = {}

    # construction against upstream's own graph build (same inputs, same forward)
    out["dg"] = median_time(lambda: tp.DependencyGraph().build_dependency(
        copy.deepcopy(original), example_inputs=x1, forward_fn=lambda m, i: m(i)), 3)
    out["construct"] = median_time(
        lambda: Pruning(copy.deepcopy(original), config(1.0), example_inputs=x1), 3)
    # with mac_reg > 0 the MAC skeleton (per-group costs) is built at construction too
    out["construct_costs"] = median_time(
        lambda: Pruning(copy.deepcopy(original), config(1.0, 1e-3), example_inputs=x1), 3)
    bar.update(1)

    for gamma in (1.0, 2.0):
        model, plain = copy.deepcopy(original), copy.deepcopy(original)
        pruner = Pruning(model, config(gamma), example_inputs=x1)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
        plain_opt = torch.optim.SGD(plain.parameters(), lr=0.01, momentum=0.9,
                                    weight_decay=1e-4)
        pat_step = step_fn(model, opt, x, y,
                           lambda p=pruner, m=model: p.channel_regularize(m))
        plain_step = step_fn(plain, plain_opt, x, y)
        pat_step()
        start = time.perf_counter()
        pruner.prune(model, 0)  # a typical epoch-end call: masks the first channels
        prune_typical = time.perf_counter() - start
        pat_step(), plain_step()
        times: Dict[str, List[float]] = {"pat": [], "plain": [], "apply": []}
        for _ in range(steps):
            times["plain"].append(median_time(plain_step, 1))
            times["pat"].append(median_time(pat_step, 1))
            times["apply"].append(median_time(pruner.masks.apply, 1))
            bar.update(1)
        med = {k: statistics.median(v) for k, v in times.items()}
        plain_time = med["plain"] - med["apply"]
        out[f"step_ratio_g{gamma:g}"] = med["pat"] / plain_time
        if gamma == 1.0:
            out["plain_step"] = plain_time
            out["prune_typical"] = prune_typical / plain_time
            epoch, final = 1, 0.0
            while not pruner.channel_pruner.reached_target and epoch < 10:
                pat_step()
                start = time.perf_counter()
                pruner.prune(model, epoch)
                final = time.perf_counter() - start
                epoch += 1
            out["prune_final"] = final / plain_time
            channel = pruner.channel_pruner
            reached = tp.utils.count_ops_and_params(model, x1)[0]
            out["macs_vs_target"] = reached / (TARGET * channel.base_macs)
            out["reset_optimizer"] = float(channel.reset_optimizer)
            model.eval(), original.eval()
            with torch.no_grad():
                lat = {k: median_time(lambda m=m: m(x1), 30) for k, m in
                       (("orig", original), ("pruned", model))}
            out["latency"] = lat["pruned"] / lat["orig"]
            out["latency_orig_ms"] = lat["orig"] * 1e3
        del pruner
        bar.update(1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=15, help="timed steps per variant")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--models", nargs="+", default=["resnet18", "mobilenet_v2"])
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    results = {}
    with tqdm(total=len(args.models) * (3 + 2 * args.steps), desc="bench_channel") as bar:
        for name in args.models:
            results[name] = bench(name, args.steps, bar)
    print(f"\nCPU, {torch.get_num_threads()} thread(s), input {SIZE}x{SIZE}, batch {BATCH}, "
          f"mac_target {TARGET}\n")
    print("| model | step + regularize + masks (gamma=1) | (gamma=2) | prune() typical | "
          "prune() at target | construction vs DG build | MACs / target | latency pruned/orig |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['step_ratio_g1']:.3f}x | {r['step_ratio_g2']:.3f}x | "
              f"{r['prune_typical']:.2f}x step | {r['prune_final']:.2f}x step | "
              f"{r['construct'] / r['dg']:.2f}x ({r['construct']*1e3:.0f} / {r['dg']*1e3:.0f} ms) | "
              f"{r['macs_vs_target']:.4f} | {r['latency']:.2f}x "
              f"(orig {r['latency_orig_ms']:.1f} ms) |")
    print("\nplain step: " + ", ".join(f"{n} {r['plain_step']*1e3:.0f} ms"
                                      for n, r in results.items()))
    print("construction with mac_reg > 0 (MAC skeleton built up front): " + ", ".join(
        f"{n} {r['construct_costs'] / r['dg']:.2f}x" for n, r in results.items()))


if __name__ == "__main__":
    main()
