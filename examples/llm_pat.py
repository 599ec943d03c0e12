"""Pruning-aware training of a tiny Llama-style decoder: grouped-query heads and gated MLPs.

The model is a random ``transformers.LlamaForCausalLM`` (4 layers, width 128, 8 query heads and
2 key/value heads of 16, gated MLP 384) over a byte-level vocabulary of 256, so no tokenizer
and no download is needed. It learns next-byte prediction on text that ships with every Python:
the standard library's own ``.py`` sources (every tenth file is held out for validation).

``llm_pat_config.json`` lists each layer's attention module (whole KV groups: one key/value head
with its four query heads) and its MLP's ``gate_proj`` (hidden features), with ``mac_target``
0.5. The user's loop has the README's five lines; an "epoch" here is ``steps / epochs`` steps.
Regularization pushes KV groups and MLP features toward zero, masks grow to the target, the
masked parts are removed (``model.config`` follows) and the smaller model is fine-tuned. The
same loop without a config trains the unpruned baseline for the same number of steps.

Printed: validation perplexity of both, tokens/s of both (a forward pass over validation
batches, and greedy decoding with the KV cache), a generated sample of each, and the reload
check: the pruned model saved with ``save_pretrained`` and loaded with
``tp.pat.load_pretrained_pruned`` gives the same logits and the same greedy tokens.

    python examples/llm_pat.py --out runs/llm                 # the figures in docs/llm.md
    python examples/llm_pat.py --out /tmp/llm --quick         # reduced run (the tests)
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
import torch_pruning as tp  # noqa: E402
from torch_pruning.utils import Pruning  # noqa: E402

HERE = Path(__file__).resolve().parent
logger = logging.getLogger("llm_pat")
LAYERS = 4


def stdlib_text(limit: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Bytes of the standard library's ``.py`` files (sorted by name): every tenth file for
    validation, the others for training, each capped at ``limit`` bytes."""
    files = sorted(Path(os.__file__).parent.glob("*.py"))
    train, val = bytearray(), bytearray()
    for i, f in enumerate(files):
        part = val if i % 10 == 9 else train
        if len(part) < limit:
            part += f.read_bytes()[: limit - len(part)]
    return (torch.tensor(list(train), dtype=torch.long),
            torch.tensor(list(val), dtype=torch.long))


def make_model(quick: bool) -> nn.Module:
    """The tiny decoder (random init). ``quick`` halves the width for the test run."""
    from transformers import LlamaConfig, LlamaForCausalLM

    width = 64 if quick else 128
    config = LlamaConfig(vocab_size=256, hidden_size=width, intermediate_size=3 * width,
                         num_hidden_layers=LAYERS, num_attention_heads=8, num_key_value_heads=2,
                         max_position_embeddings=512, tie_word_embeddings=False)
    return LlamaForCausalLM(config)


def batches(data: torch.Tensor, batch: int, seq: int, steps: int, seed: int):
    """``steps`` random windows of ``seq + 1`` bytes, as (inputs, targets)."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        start = torch.randint(0, len(data) - seq - 1, (batch,), generator=g)
        window = torch.stack([data[s: s + seq + 1] for s in start.tolist()])
        yield window[:, :-1], window[:, 1:]


def loss_of(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    logits = model(x, use_cache=False).logits
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


def make_optimizer(model: nn.Module, lr: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)


def train(model: nn.Module, output_dir: Path, data: torch.Tensor, args: argparse.Namespace
          ) -> Pruning:
    """The user's loop with the README's five lines (pruning is off without a config)."""
    example = data[: args.seq].unsqueeze(0)
    pruner = Pruning(model, output_dir, example_inputs=example, log=logger)
    optimizer = make_optimizer(model, args.lr)
    per_epoch = args.steps // args.epochs
    stream = batches(data, args.batch, args.seq, per_epoch * args.epochs, seed=1)
    for epoch in range(args.epochs):
        model.train()
        for step in range(per_epoch):
            done = (epoch * per_epoch + step) / (per_epoch * args.epochs)
            for group in optimizer.param_groups:  # warm-up, then cosine decay
                group["lr"] = args.lr * min(1.0, 10 * done) * 0.5 * (1 + math.cos(math.pi * done))
            x, y = next(stream)
            loss = loss_of(model, x, y)
            loss = loss + pruner.slice_regularize(model)
            optimizer.zero_grad()
            loss.backward()
            pruner.channel_regularize(model)
            optimizer.step()
        pruner.prune(model, epoch, log=logger)
        if pruner.channel_pruner.reset_optimizer:
            optimizer = make_optimizer(model, args.lr)
            pruner.channel_pruner.reset_optimizer = False
            logger.info("epoch %d: KV groups and MLP features removed, optimizer re-created",
                        epoch)
        logger.info("epoch %d: loss %.3f", epoch, loss.item())
    return pruner


@torch.no_grad()
def perplexity(model: nn.Module, data: torch.Tensor, args: argparse.Namespace) -> float:
    model.eval()
    losses = [float(loss_of(model, x, y)) for x, y in
              batches(data, args.batch, args.seq, args.eval_batches, seed=7)]
    return math.exp(sum(losses) / len(losses))


@torch.no_grad()
def throughput(model: nn.Module, data: torch.Tensor, args: argparse.Namespace
               ) -> Dict[str, float]:
    """Tokens/s of a forward pass over validation batches and of greedy decoding (cache on)."""
    model.eval()
    work = list(batches(data, args.batch, args.seq, args.eval_batches, seed=7))
    model(work[0][0], use_cache=False)  # warm-up
    start = time.perf_counter()
    for x, _ in work:
        model(x, use_cache=False)
    forward = args.batch * args.seq * len(work) / (time.perf_counter() - start)
    prompt = data[:16].unsqueeze(0)
    model.generate(prompt, max_new_tokens=4, do_sample=False, pad_token_id=0)
    start = time.perf_counter()
    model.generate(prompt, max_new_tokens=args.decode, do_sample=False, pad_token_id=0)
    decode = args.decode / (time.perf_counter() - start)
    return {"forward_tokens_per_s": forward, "decode_tokens_per_s": decode}


@torch.no_grad()
def sample(model: nn.Module, prompt: str, tokens: int) -> str:
    model.eval()
    ids = torch.tensor([list(prompt.encode())])
    out = model.generate(ids, max_new_tokens=tokens, do_sample=False, pad_token_id=0)
    return bytes(out[0].tolist()).decode("utf-8", errors="replace")


def counts(model: nn.Module) -> Dict[str, List[int]]:
    layers = model.model.layers
    head_dim = layers[0].self_attn.head_dim
    return {"query_heads": [l.self_attn.q_proj.out_features // head_dim for l in layers],
            "kv_heads": [l.self_attn.k_proj.out_features // head_dim for l in layers],
            "mlp_hidden": [l.mlp.gate_proj.out_features for l in layers]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/llm"))
    parser.add_argument("--quick", action="store_true", help="reduced run for the tests")
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.batch, args.seq, args.lr, args.eval_batches, args.decode = 16, 128, 3e-3, 16, 64
    limit = 2_000_000
    if args.quick:
        args.steps, args.batch, args.seq, args.eval_batches, args.decode = 48, 8, 32, 4, 16
        limit = 200_000
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    log_file = logging.FileHandler(args.out / "pat.log", mode="w")
    logger.addHandler(log_file)
    logger.setLevel(logging.INFO)
    train_data, val_data = stdlib_text(limit)

    pat_dir, base_dir = args.out / "pat", args.out / "baseline"
    for folder in (pat_dir, base_dir):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    shutil.copy(HERE / "llm_pat_config.json", pat_dir / "pruning_config.json")

    torch.manual_seed(args.seed)
    baseline = make_model(args.quick)
    torch.manual_seed(args.seed)
    model = make_model(args.quick)
    before = counts(model)
    base_macs = tp.utils.count_ops_and_params(model, val_data[: args.seq].unsqueeze(0))[0]
    start = time.perf_counter()
    pruner = train(model, pat_dir, train_data, args)
    pat_time = time.perf_counter() - start
    start = time.perf_counter()
    train(baseline, base_dir, train_data, args)
    base_time = time.perf_counter() - start
    macs = tp.utils.count_ops_and_params(model, val_data[: args.seq].unsqueeze(0))[0]

    saved = args.out / "pruned_hf"
    model.save_pretrained(saved)
    reloaded = tp.pat.load_pretrained_pruned(saved)
    probe = val_data[: args.seq].unsqueeze(0)
    model.eval()
    with torch.no_grad():
        diff = float((reloaded(probe).logits - model(probe).logits).abs().max())
    same_tokens = sample(reloaded, "def ", 24) == sample(model, "def ", 24)

    result: Dict[str, Any] = {
        "mac_target": pruner.channel_pruner.cfg.mac_target,
        "reach_mac_target": pruner.channel_pruner.reached_target,
        "macs_ratio": macs / base_macs, "steps": args.steps,
        "before": before, "after": counts(model),
        "config": {k: getattr(model.config, k) for k in
                   ("num_attention_heads", "num_key_value_heads", "intermediate_size")},
        "pat_layers": getattr(model.config, "pat_layers", None),
        "baseline": {"perplexity": perplexity(baseline, val_data, args),
                     "train_seconds": base_time, **throughput(baseline, val_data, args),
                     "sample": sample(baseline, "def ", 48)},
        "pat": {"perplexity": perplexity(model, val_data, args), "train_seconds": pat_time,
                **throughput(model, val_data, args), "sample": sample(model, "def ", 48)},
        "reload": {"logits_max_diff": diff, "greedy_equal": same_tokens},
    }
    (args.out / "summary.json").write_text(json.dumps(result, indent=2))
    b, p = result["baseline"], result["pat"]
    print(f"MACs: {result['macs_ratio']:.1%} of the unpruned model (target "
          f"{result['mac_target']:.0%}); per layer query heads {result['after']['query_heads']}, "
          f"KV heads {result['after']['kv_heads']}, MLP hidden {result['after']['mlp_hidden']}")
    print(f"after {args.steps} steps: perplexity unpruned {b['perplexity']:.2f}, "
          f"PAT {p['perplexity']:.2f}")
    print(f"tokens/s (forward, batch {args.batch}x{args.seq}): unpruned "
          f"{b['forward_tokens_per_s']:.0f}, PAT {p['forward_tokens_per_s']:.0f}; greedy decode "
          f"with cache: unpruned {b['decode_tokens_per_s']:.0f}, PAT "
          f"{p['decode_tokens_per_s']:.0f}")
    print(f"sample (unpruned): {b['sample']!r}")
    print(f"sample (PAT):      {p['sample']!r}")
    print(f"save_pretrained -> load_pretrained_pruned: logits max diff {diff:.1e}, greedy "
          f"tokens {'equal' if same_tokens else 'DIFFER'}; saved in {saved}")
    print(f"summary: {args.out / 'summary.json'}; log: {args.out / 'pat.log'}")


if __name__ == "__main__":
    main()
