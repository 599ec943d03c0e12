"""Slice pruning overhead on CPU: ``slice_regularize`` per step and ``prune()`` per epoch.

For torchvision's resnet18 and mobilenet_v2 (random weights) at 64x64, batch 16, this measures,
in one run and interleaved so that background load hits both sides alike:

* a plain training step (forward, cross-entropy, backward, SGD step);
* the same step with ``loss + pruner.regularize(model)``, before any mask exists;
* the same step once half of the slices are masked, without the penalty (mask upkeep only:
  the MaskSet re-zeroes masked weights after every step) and with it;
* one ``prune()`` call that masks 50% of the slices, against the plain step.

Targets: regularized step <= 1.15x the plain step; ``prune()`` <= 2 plain steps.

Every figure is measured for each thread count (``--threads 1,all``: one thread, and every
core of the machine, as users run) and each form of ``layers`` (``--layers explicit,all``: the
seed's explicit list of the model's Conv2d names, and the default selection, every Conv2d
whose filters fill whole blocks).

Run:  python benchmarks/bench_slice.py [--steps 20] [--threads 1,all] [--layers explicit,all]
      [--models resnet18 mobilenet_v2]
Prints a markdown table.
"""

from __future__ import annotations

import argparse
import copy
import functools
import logging
import os
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional

import torch
from torch import nn
from tqdm import tqdm

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

import torchvision  # noqa: E402

from torch_pruning.pat import MaskSet, SlicePruner  # noqa: E402
from torch_pruning.pat.config.models import SliceSparsityArgs  # noqa: E402

BATCH, SIZE = 16, 64


def make_cfg(layers: Optional[List[str]] = None) -> SliceSparsityArgs:
    return SliceSparsityArgs(block_size=8, depthwise_block_size=2, start_epoch=0, end_epoch=0,
                             prune_rate=0.5, pruning_gradually=False, reg=1e-4,
                             disable_first_index=True, layers=layers)


def layer_list(model: nn.Module, form: str) -> Optional[List[str]]:
    """None (the default selection) for ``"all"``, else the names of every Conv2d."""
    if form == "all":
        return None
    return [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def thread_counts(spec: str) -> List[int]:
    """``"1,all"`` -> ``[1, <every core>]`` (duplicates dropped, order kept)."""
    out: List[int] = []
    for part in spec.split(","):
        n = (os.cpu_count() or 1) if part.strip() == "all" else int(part)
        if n not in out:
            out.append(n)
    return out


def make_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
              penalty: Optional[Callable[[nn.Module], torch.Tensor]] = None,
              ) -> Callable[[], None]:
    def step() -> None:
        loss = nn.functional.cross_entropy(model(x), y)
        if penalty is not None:
            loss = loss + penalty(model)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return step


def timed(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved(steps: Dict[str, Callable[[], None]], rounds: int, bar: tqdm) -> Dict[str, float]:
    """Median seconds per call of each step, measured round-robin after one warm-up call."""
    for fn in steps.values():
        fn()
    times: Dict[str, List[float]] = {k: [] for k in steps}
    for _ in range(rounds):
        for name, fn in steps.items():
            times[name].append(timed(fn))
        bar.update(1)
    return {k: statistics.median(v) for k, v in times.items()}


def bench(arch: str, form: str, rounds: int, bar: tqdm) -> Dict[str, float]:
    torch.manual_seed(0)
    base = getattr(torchvision.models, arch)(weights=None)
    x = torch.randn(BATCH, 3, SIZE, SIZE)
    y = torch.randint(0, 1000, (BATCH,))
    layers = layer_list(base, form)

    def setup(masked: bool):
        model = copy.deepcopy(base)
        masks = MaskSet()
        pruner = SlicePruner(model, make_cfg(layers), masks=masks)
        if masked:
            pruner.prune(model, 0)
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4)
        return model, masks, pruner, opt

    plain_model = copy.deepcopy(base)
    plain_opt = torch.optim.SGD(plain_model.parameters(), lr=1e-3, momentum=0.9,
                                weight_decay=1e-4)
    reg_model, _m1, reg_pruner, reg_opt = setup(masked=False)
    masked_model, _m2, masked_pruner, masked_opt = setup(masked=True)
    upkeep_model, _m3, _, upkeep_opt = setup(masked=True)
    result = interleaved({
        "plain": make_step(plain_model, plain_opt, x, y),
        "reg": make_step(reg_model, reg_opt, x, y, reg_pruner.regularize),
        "masked": make_step(masked_model, masked_opt, x, y, masked_pruner.regularize),
        "upkeep": make_step(upkeep_model, upkeep_opt, x, y),
    }, rounds, bar)
    del _m1, _m2, _m3

    prune_times = []
    for _ in range(3):
        model = copy.deepcopy(base)
        pruner = SlicePruner(model, make_cfg(layers), masks=MaskSet())
        prune_times.append(timed(functools.partial(pruner.prune, model, 0)))
    result["prune"] = statistics.median(prune_times)
    result["slices"] = masked_pruner.sparsity()["overall"]["total"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="timed rounds per model")
    parser.add_argument("--models", nargs="+", default=["resnet18", "mobilenet_v2"])
    parser.add_argument("--threads", default="1,all",
                        help="comma-separated torch thread counts; 'all' = every core")
    parser.add_argument("--layers", default="explicit,all",
                        help="comma-separated forms of slice_sparsity_args.layers: 'explicit' "
                             "(every Conv2d name) and/or 'all' (the default selection)")
    args = parser.parse_args()
    threads = thread_counts(args.threads)
    forms = [f.strip() for f in args.layers.split(",")]
    logging.getLogger("torch_pruning").setLevel(logging.WARNING)
    rows = []
    total = args.steps * len(args.models) * len(threads) * len(forms)
    with tqdm(total=total, desc="bench_slice", file=sys.stderr) as bar:
        for n in threads:
            torch.set_num_threads(n)
            for form in forms:
                for arch in args.models:
                    rows.append((arch, n, form, bench(arch, form, args.steps, bar)))
    print(f"\nSlice pruning overhead, CPU, batch {BATCH}, {SIZE}x{SIZE}, median of {args.steps} "
          "interleaved steps\n")
    print("| model | threads | layers | slices | plain step (ms) | + slice_regularize | ratio | "
          "50% masked, no penalty | ratio | 50% masked + slice_regularize | ratio | "
          "prune() (ms) | prune / plain step |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for arch, n, form, r in rows:
        cells = [arch, str(n), form, str(r["slices"]), f"{1e3 * r['plain']:.1f}"]
        for key in ("reg", "upkeep", "masked"):
            cells += [f"{1e3 * r[key]:.1f}", f"{r[key] / r['plain']:.3f}x"]
        cells += [f"{1e3 * r['prune']:.1f}", f"{r['prune'] / r['plain']:.2f}"]
        print("| " + " | ".join(cells) + " |")
    print("\nTargets: step ratio <= 1.15x; prune() <= 2 plain steps.")


if __name__ == "__main__":
    main()
