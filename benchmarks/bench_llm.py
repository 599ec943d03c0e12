"""PAT on Hugging Face decoders: step overhead, construction, exactness, pruned latency.

Two random ``LlamaForCausalLM`` (byte vocabulary of 256, 8 query / 2 key-value heads):
``tiny`` (width 64, 2 layers, MLP 192) and ``small`` (width 512, 8 layers, MLP 1376). Every
layer's attention (whole KV groups) and MLP ``gate_proj`` are listed. Measured:

* a PAT training step (``channel_regularize`` + mask upkeep, half the units masked) against a
  plain step (forward, backward, AdamW) on the same batch: median ratio, interleaved runs;
* ``Pruning(...)`` construction against upstream's ``DependencyGraph().build_dependency`` alone;
* the largest logit difference between the masked and the physically pruned model;
* batch-1 prefill latency (``--prompt`` tokens) and per-token greedy decode latency with the KV
  cache, of the original and the pruned model (half the KV groups and MLP features removed).

Run:  python benchmarks/bench_llm.py [--runs 7] [--threads 1] [--only tiny]
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

import torch_pruning as tp  # noqa: E402

SIZES = {"tiny": dict(hidden_size=64, num_hidden_layers=2, intermediate_size=192),
         "small": dict(hidden_size=512, num_hidden_layers=8, intermediate_size=1376)}
BATCH = {"tiny": (8, 64), "small": (4, 128)}


def decoder(size: str) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=256, num_attention_heads=8, num_key_value_heads=2,
                         max_position_embeddings=1024, tie_word_embeddings=False, **SIZES[size])
    return LlamaForCausalLM(config)


def pat_config(model: nn.Module) -> Dict[str, Any]:
    n = len(model.model.layers)
    layers = [f"model.layers.{i}.self_attn" for i in range(n)]
    layers += [f"model.layers.{i}.mlp.gate_proj" for i in range(n)]
    return {"channel_sparsity_args": {
        "start_epoch": 0, "end_epoch": 0, "global_prune_rate": 0.5, "mac_target": 0.0,
        "prune_at_target": False, "layers": layers, "regularize": {"reg": 1e-3},
        "verbose": 0}}


def step_fn(model: nn.Module, pruner: Any, x: torch.Tensor) -> Callable[[], None]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        logits = model(x[:, :-1], use_cache=False).logits
        loss = nn.functional.cross_entropy(logits.reshape(-1, 256), x[:, 1:].reshape(-1))
        if pruner is not None:
            loss = loss + pruner.slice_regularize(model)
        optimizer.zero_grad()
        loss.backward()
        if pruner is not None:
            pruner.channel_regularize(model)
        optimizer.step()
    return step


def interleaved(fns: Dict[str, Callable[[], Any]], runs: int, desc: str) -> Dict[str, float]:
    """Median seconds per call of each function, run in turn (load hits all alike)."""
    for fn in fns.values():
        fn()  # warm-up
    times: Dict[str, List[float]] = {k: [] for k in fns}
    for _ in tqdm(range(runs), desc=desc, leave=False):
        for k, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


@torch.no_grad()
def generate_fn(model: nn.Module, prompt: torch.Tensor, new: int) -> Callable[[], None]:
    def run() -> None:
        model.generate(prompt, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                       pad_token_id=0)
    return run


def bench(size: str, runs: int, prompt_len: int, new_tokens: int) -> Dict[str, Any]:
    batch, seq = BATCH[size]
    x = torch.randint(0, 256, (batch, seq + 1), generator=torch.Generator().manual_seed(0))
    example = x[:1, :seq]
    model = decoder(size)

    # construction against upstream's graph build
    start = time.perf_counter()
    tp.DependencyGraph().build_dependency(model, example_inputs=example,
                                          forward_fn=lambda m, i: m(i).logits)
    upstream_s = time.perf_counter() - start
    start = time.perf_counter()
    pruner = tp.Pruning(model, pat_config(model), example_inputs=example)
    construct_s = time.perf_counter() - start

    # a PAT step (masks applied) against a plain step on a copy
    pruner.prune(model, 0)
    plain = copy.deepcopy(model)
    steps = interleaved({"plain": step_fn(plain, None, x), "pat": step_fn(model, pruner, x)},
                        runs, f"{size} steps")

    # masked vs pruned, then latency of the original and the pruned model
    original = decoder(size).eval()
    model.eval()
    probe = x[:1, :seq]
    with torch.no_grad():
        masked = model(probe).logits
    pruner.channel_pruner.remove_masked_channels(model)
    model.eval()
    with torch.no_grad():
        diff = float((model(probe).logits - masked).abs().max())
    macs = [tp.utils.count_ops_and_params(m, probe)[0] for m in (original, model)]
    prompt = torch.randint(0, 256, (1, prompt_len), generator=torch.Generator().manual_seed(1))
    timed = interleaved({f"{k}_{n}": generate_fn(m, prompt, n)
                         for k, m in (("original", original), ("pruned", model))
                         for n in (1, new_tokens + 1)}, runs, f"{size} latency")
    latency = {k: {"prefill_ms": 1e3 * timed[f"{k}_1"],
                   "decode_ms": 1e3 * (timed[f"{k}_{new_tokens + 1}"] - timed[f"{k}_1"])
                   / new_tokens} for k in ("original", "pruned")}
    return {"upstream_s": upstream_s, "construct_s": construct_s, "steps": steps,
            "diff": diff, "macs_kept": macs[1] / macs[0], "latency": latency,
            "config": {k: getattr(model.config, k) for k in
                       ("num_attention_heads", "num_key_value_heads", "intermediate_size")}}


def main(argv: Any = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--only", choices=sorted(SIZES))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.getLogger("torch_pruning.pat").setLevel(logging.WARNING)
    sizes = [args.only] if args.only else ["tiny", "small"]
    results = {s: bench(s, args.runs, args.prompt, args.new_tokens) for s in sizes}
    print(f"LlamaForCausalLM, 8 query / 2 KV heads, byte vocabulary; {args.threads} thread(s), "
          f"median of {args.runs} interleaved runs; prompt {args.prompt} tokens, "
          f"{args.new_tokens} decoded")
    print()
    print("| model | PAT step / plain step | `Pruning(...)` s | upstream graph s | masked vs "
          "pruned max diff | MACs kept | prefill ms (orig -> pruned) | decode ms/token "
          "(orig -> pruned) |")
    print("|---|---|---|---|---|---|---|---|")
    for s, r in results.items():
        shape = SIZES[s]
        lat = r["latency"]
        print(f"| {s} (width {shape['hidden_size']}, {shape['num_hidden_layers']} layers; "
              f"step batch {BATCH[s][0]}x{BATCH[s][1]}) | "
              f"{r['steps']['pat'] / r['steps']['plain']:.2f}x "
              f"({1e3 * r['steps']['plain']:.0f} -> {1e3 * r['steps']['pat']:.0f} ms) | "
              f"{r['construct_s']:.2f} | {r['upstream_s']:.2f} | {r['diff']:.1e} | "
              f"{r['macs_kept']:.1%} | {lat['original']['prefill_ms']:.1f} -> "
              f"{lat['pruned']['prefill_ms']:.1f} | {lat['original']['decode_ms']:.2f} -> "
              f"{lat['pruned']['decode_ms']:.2f} |")
    print()
    for s, r in results.items():
        print(f"{s}: pruned config {r['config']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
