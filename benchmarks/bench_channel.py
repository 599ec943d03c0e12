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
  ``DependencyGraph().build_dependency`` on the same inputs, warm against warm: after one
  untimed build of each, the median of 3 ``Pruning(...)`` builds against the median of 3
  ``DependencyGraph`` builds, both on the same 3 model copies made beforehand (copying is not
  timed). Target <= 1.5x. The MAC skeleton is built on first use (the first ``prune()``), or
  up front when ``mac_reg > 0`` or MACAwareImportance needs per-group costs (reported on a
  separate line).
* **MACs**: MACs reached / MAC target (upstream's count of the pruned model). Target <= 1.00
  and within 1%.
* **latency**: batch-1 eval forward of the pruned model against the original.

Every figure is measured for each thread count (``--threads 1,all``: one thread, and every
core of the machine, as users run) and each form of ``layers`` (``--layers explicit,all``: the
seed's explicit list of the model's Conv2d names, and ``"all"``).

Run:  python benchmarks/bench_channel.py [--steps 15] [--threads 1,all] [--layers explicit,all]
      [--models resnet18 ...]
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
from typing import Any, Callable, Dict, List, Tuple, Union

import torch
from torch import nn
from tqdm import tqdm

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

import torchvision  # noqa: E402

import torch_pruning as tp  # noqa: E402
from torch_pruning.utils import Pruning  # noqa: E402

BATCH, SIZE, TARGET = 16, 64, 0.5


def config(gamma: float, layers: Union[str, List[str]], mac_reg: float = 0.0) -> Dict[str, Any]:
    return {"channel_sparsity_args": {
        "start_epoch": 0, "end_epoch": 9, "global_prune_rate": 0.9, "mac_target": TARGET,
        "max_pruning_rate": 0.9, "layers": layers, "verbose": 0,
        "regularize": {"reg": 5e-4, "mac_reg": mac_reg, "gamma": gamma}}}


def layer_list(model: nn.Module, form: str) -> Union[str, List[str]]:
    """``"all"``, or the seed's explicit list: the names of every Conv2d of the model."""
    if form == "all":
        return "all"
    return [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def thread_counts(spec: str) -> List[int]:
    """``"1,all"`` -> ``[1, <every core>]`` (duplicates dropped, order kept)."""
    out: List[int] = []
    for part in spec.split(","):
        n = (os.cpu_count() or 1) if part.strip() == "all" else int(part)
        if n not in out:
            out.append(n)
    return out


def construction(original: nn.Module, x1: torch.Tensor, layers: Union[str, List[str]],
                 repeat: int = 3) -> Dict[str, float]:
    """Warm against warm, on the same model copies (made before timing): medians of
    ``repeat`` ``DependencyGraph`` builds, ``Pruning(...)`` builds and, with ``mac_reg > 0``
    (MAC skeleton built up front), ``Pruning(...)`` builds again."""
    def dg(model: nn.Module) -> Any:
        return tp.DependencyGraph().build_dependency(model, example_inputs=x1,
                                                     forward_fn=lambda m, i: m(i))

    def pat(model: nn.Module, mac_reg: float = 0.0) -> Any:
        return Pruning(model, config(1.0, layers, mac_reg), example_inputs=x1)

    warm = copy.deepcopy(original)
    dg(warm), pat(warm), pat(warm, 1e-3)  # warm-up: first calls pay one-time costs
    copies = [copy.deepcopy(original) for _ in range(repeat)]
    times: Dict[str, List[float]] = {"dg": [], "construct": [], "construct_costs": []}
    for model in copies:  # interleaved, so background load hits all three alike
        times["dg"].append(median_time(lambda: dg(model), 1))
        times["construct"].append(median_time(lambda: pat(model), 1))
        times["construct_costs"].append(median_time(lambda: pat(model, 1e-3), 1))
    return {k: statistics.median(v) for k, v in times.items()}


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


def bench(name: str, form: str, steps: int, bar: tqdm) -> Dict[str, float]:
    torch.manual_seed(0)
    original = getattr(torchvision.models, name)(weights=None, num_classes=10)
    x, y = torch.randn(BATCH, 3, SIZE, SIZE), torch.randint(0, 10, (BATCH,))
    x1 = torch.randn(1, 3, SIZE, SIZE)
    layers = layer_list(original, form)
    # construction against upstream's own graph build (same inputs, same forward, same copies)
    out: Dict[str, float] = construction(original, x1, layers)
    bar.update(1)

    for gamma in (1.0, 2.0):
        model, plain = copy.deepcopy(original), copy.deepcopy(original)
        pruner = Pruning(model, config(gamma, layers), example_inputs=x1)
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
    parser.add_argument("--threads", default="1,all",
                        help="comma-separated torch thread counts; 'all' = every core")
    parser.add_argument("--layers", default="explicit,all",
                        help="comma-separated forms of channel_sparsity_args.layers: "
                             "'explicit' (the seed's list of Conv2d names) and/or 'all'")
    parser.add_argument("--models", nargs="+", default=["resnet18", "mobilenet_v2"])
    args = parser.parse_args()
    threads = thread_counts(args.threads)
    forms = [f.strip() for f in args.layers.split(",")]
    logging.basicConfig(level=logging.WARNING)
    results: List[Tuple[str, int, str, Dict[str, float]]] = []
    total = len(threads) * len(forms) * len(args.models) * (3 + 2 * args.steps)
    with tqdm(total=total, desc="bench_channel") as bar:
        for n in threads:
            torch.set_num_threads(n)
            for form in forms:
                for name in args.models:
                    results.append((name, n, form, bench(name, form, args.steps, bar)))
    print(f"\nCPU, input {SIZE}x{SIZE}, batch {BATCH}, mac_target {TARGET}; construction: "
          "median of 3 warm builds each, on the same model copies\n")
    print("| model | threads | layers | step + regularize + masks (gamma=1) | (gamma=2) | "
          "prune() typical | prune() at target | construction vs DG build | "
          "with mac_reg > 0 | MACs / target | latency pruned/orig | plain step |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, n, form, r in results:
        print(f"| {name} | {n} | {form} | {r['step_ratio_g1']:.3f}x | {r['step_ratio_g2']:.3f}x | "
              f"{r['prune_typical']:.2f}x step | {r['prune_final']:.2f}x step | "
              f"{r['construct'] / r['dg']:.2f}x ({r['construct']*1e3:.0f} / "
              f"{r['dg']*1e3:.0f} ms) | {r['construct_costs'] / r['dg']:.2f}x | "
              f"{r['macs_vs_target']:.4f} | {r['latency']:.2f}x "
              f"(orig {r['latency_orig_ms']:.1f} ms) | {r['plain_step']*1e3:.0f} ms |")


if __name__ == "__main__":
    main()
