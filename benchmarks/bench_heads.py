"""Whole-head pruning of torchvision's vit_b_16: what the split costs, what removal buys.

vit_b_16 (random weights, 10 classes) at 64x64 (16 patches + the class token), batch 1, eval:

* ``split``: ``tp.pat.split_multihead_attention`` (q/k/v Linear layers instead of the packed
  ``nn.MultiheadAttention``) against the original: latency ratio, largest output difference;
* ``Pruning(...)`` construction with the 12 attention modules listed (each checked once for
  exact head removal) against upstream's ``DependencyGraph`` build alone;
* pruned one-shot (``prune_channels_at_init``, GroupNorm importance, local ranking) to half the
  heads of every block, to half the MLP hidden features, and to both: MACs and real latency kept
  against the split model, and the largest difference between the masked and the pruned outputs.

Latencies are medians of interleaved runs (background load hits every variant alike).

Run:  python benchmarks/bench_heads.py [--runs 20] [--threads 1]
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
from typing import Any, Dict, List

import torch
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

import torchvision  # noqa: E402

import torch_pruning as tp  # noqa: E402
from torch_pruning.pat.channel.tracing import build_graph  # noqa: E402

SIZE, DEPTH = 64, 12
ATTENTION = [f"encoder.layers.encoder_layer_{i}.self_attention" for i in range(DEPTH)]
MLP = [f"encoder.layers.encoder_layer_{i}.mlp.0" for i in range(DEPTH)]


def vit() -> nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.vit_b_16(weights=None, image_size=SIZE, num_classes=10)
    nn.init.normal_(model.heads.head.weight, std=0.02)  # torchvision zero-inits the head
    return model.eval()


def config(layers: List[str]) -> Dict[str, Any]:
    return {"channel_sparsity_args": {
        "start_epoch": 0, "end_epoch": 0, "global_prune_rate": 0.5, "mac_target": 0.0,
        "prune_at_target": False, "layers": layers, "verbose": 0}}


@torch.no_grad()
def latency_ms(models: Dict[str, nn.Module], x: torch.Tensor, runs: int) -> Dict[str, float]:
    """Median batch-1 latency per model, the models interleaved run by run."""
    times: Dict[str, List[float]] = {name: [] for name in models}
    for model in models.values():
        model(x)  # warm-up
    for _ in range(runs):
        for name, model in models.items():
            start = time.perf_counter()
            model(x)
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def main(argv: Any = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.getLogger("torch_pruning").setLevel(logging.ERROR)
    x = torch.randn(1, 3, SIZE, SIZE)
    original = vit()
    split = copy.deepcopy(original)
    tp.pat.split_multihead_attention(split)
    with torch.no_grad():
        split_diff = float((split(x) - original(x)).abs().max())

    start = time.perf_counter()
    build_graph(copy.deepcopy(split), x)
    graph_s = time.perf_counter() - start
    start = time.perf_counter()
    tp.Pruning(copy.deepcopy(split), config(ATTENTION), example_inputs=x)
    construct_s = time.perf_counter() - start

    pruned: Dict[str, nn.Module] = {}
    rows = []
    base_macs = tp.utils.count_ops_and_params(split, x)[0]
    for label, layers in (("half the heads", ATTENTION), ("half the MLP hidden", MLP),
                          ("both", ATTENTION + MLP)):
        model = copy.deepcopy(split)
        pruner = tp.Pruning(model, config(layers), example_inputs=x)
        pruner.prune(model, 0)
        with torch.no_grad():
            masked = model.eval()(x)
        pruner.channel_pruner.remove_masked_channels(model)
        with torch.no_grad():
            diff = float((model.eval()(x) - masked).abs().max())
        heads = sum(model.encoder.layers[i].self_attention.num_heads for i in range(DEPTH))
        pruned[label] = model
        rows.append((label, heads, tp.utils.count_ops_and_params(model, x)[0] / base_macs, diff))
    ms = latency_ms({"original": original, "split": split, **pruned}, x, args.runs)

    print(f"vit_b_16 at {SIZE}x{SIZE}, batch 1, {args.threads} thread(s), median of "
          f"{args.runs} interleaved runs.\n")
    print("| model | heads | MACs kept | latency kept | ms | masked vs pruned max diff |")
    print("|---|---|---|---|---|---|")
    print(f"| nn.MultiheadAttention (original) | {12 * DEPTH} | | "
          f"{ms['original'] / ms['split']:.2f}x | {ms['original']:.1f} | |")
    print(f"| split (q/k/v Linear) | {12 * DEPTH} | 100% | 1.00x | {ms['split']:.1f} | "
          f"{split_diff:.1e} (vs original) |")
    for label, heads, macs, diff in rows:
        print(f"| {label} | {heads} | {macs:.1%} | {ms[label] / ms['split']:.2f}x | "
              f"{ms[label]:.1f} | {diff:.1e} |")
    print(f"\n`Pruning(...)` with the {DEPTH} attention modules: {construct_s:.2f} s, "
          f"{construct_s / graph_s:.2f}x the `DependencyGraph` build alone ({graph_s:.2f} s; "
          "includes the exact-removal check, run once for the 12 identical attention modules).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
