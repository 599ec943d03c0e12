"""Pruning-aware training of a small vision transformer on digits: whole heads, MLP widths.

The model is a ViT in miniature: 4x4 patches of scikit-learn's 8x8 digits (4 tokens and a
class token), a pre-norm ``nn.TransformerEncoder`` (3 layers, width 64, 4 heads of 16, MLP 128)
and a linear head. ``nn.MultiheadAttention`` cannot lose whole heads, so the PAT run first
rewrites it with ``tp.pat.split_multihead_attention`` (same outputs, q/k/v ``Linear`` layers
and a ``num_heads`` attribute), then lists each attention module and each MLP hidden layer in
``transformer_heads_config.json``. Regularization pushes whole heads and hidden features toward
zero, masks grow to ``mac_target``, the masked heads and features are removed (``num_heads``
drops) and the reduced model is fine-tuned.

The same loop trains a baseline for the same epochs. Then the pruned checkpoint is saved and
loaded into a fresh model of the original architecture (split first, then
``load_state_dict_pruned``), which must give the same outputs.

    python examples/transformer_heads.py --out runs/vit_heads          # about a minute
    python examples/transformer_heads.py --out /tmp/vh --quick         # reduced run (the tests)
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Dict, List

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
import torch_pruning as tp  # noqa: E402
from torch_pruning.utils import Pruning  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from digits_pat import accuracy, load_digits_tensors  # noqa: E402

logger = logging.getLogger("transformer_heads")


class DigitsViT(nn.Module):
    """4x4 patch embedding, a class token, learned positions, a pre-norm encoder, a head."""

    def __init__(self, dim: int = 64, heads: int = 4, hidden: int = 128, depth: int = 3) -> None:
        super().__init__()
        self.embed = nn.Conv2d(1, dim, 4, stride=4)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, 5, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, hidden, dropout=0.0, batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls.expand(len(x), -1, -1), tokens], 1) + self.pos
        return self.head(self.norm(self.encoder(tokens))[:, 0])


def make_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)


def set_lr(optimizer: torch.optim.Optimizer, epoch: int, epochs: int, base: float = 3e-3) -> None:
    """Two warm-up epochs, then cosine decay."""
    scale = min(1.0, (epoch + 1) / 2) * 0.5 * (1 + math.cos(math.pi * epoch / epochs))
    for group in optimizer.param_groups:
        group["lr"] = base * scale


def train(model: nn.Module, output_dir: Path, epochs: int, data, seed: int) -> None:
    """The user's loop with the README's five lines (pruning is off without a config)."""
    x_train, y_train, x_test, y_test = data
    loader = DataLoader(TensorDataset(x_train, y_train), batch_size=32, shuffle=True,
                        generator=torch.Generator().manual_seed(seed))
    criterion = nn.CrossEntropyLoss()
    optimizer = make_optimizer(model)
    pruner = Pruning(model, output_dir, log=logger, example_inputs=torch.zeros(1, 1, 8, 8))
    for epoch in range(epochs):
        set_lr(optimizer, epoch, epochs)
        for x, y in loader:
            loss = criterion(model(x), y)
            loss = loss + pruner.slice_regularize(model)
            optimizer.zero_grad(); loss.backward()
            pruner.channel_regularize(model)
            optimizer.step()
        pruner.prune(model, epoch, log=logger)
        if pruner.channel_pruner.reset_optimizer:
            optimizer = make_optimizer(model); pruner.channel_pruner.reset_optimizer = False
            logger.info("epoch %d: heads and features removed, optimizer re-created", epoch)
        logger.info("epoch %d: test accuracy %.2f%%", epoch, accuracy(model, x_test, y_test))


def attention_layers(model: DigitsViT) -> List[str]:
    return [f"encoder.layers.{i}.self_attn" for i in range(len(model.encoder.layers))]


def heads(model: DigitsViT) -> List[int]:
    return [layer.self_attn.num_heads for layer in model.encoder.layers]


def measure(model: nn.Module, data) -> Dict[str, float]:
    """Accuracy, MACs and params. MACs are counted on the split form (upstream's counter sees
    the q/k/v Linear layers but not the attention products), so both runs count alike."""
    if any(isinstance(m, nn.MultiheadAttention) for m in model.modules()):
        model = copy.deepcopy(model)
        tp.pat.split_multihead_attention(model)
    macs, params = tp.utils.count_ops_and_params(model, torch.zeros(1, 1, 8, 8))
    return {"accuracy": accuracy(model, data[2], data[3]), "macs": float(macs),
            "params": float(params)}


def run(out: Path, epochs: int, seed: int, config: Path) -> Dict[str, object]:
    data = load_digits_tensors(seed)
    torch.manual_seed(seed)
    baseline = DigitsViT()
    torch.manual_seed(seed)
    model = DigitsViT()
    base_dir = out / "baseline"  # no pruning_config.json: pruning is disabled
    if base_dir.exists():
        shutil.rmtree(base_dir)
    base_dir.mkdir(parents=True)
    train(baseline, base_dir, epochs, data, seed)

    pat_dir = out / "pat"
    pat_dir.mkdir(parents=True, exist_ok=True)
    cfg = json.loads(config.read_text())
    section = cfg["channel_sparsity_args"]
    section["end_epoch"] = min(section["end_epoch"], max(epochs // 2, section["start_epoch"]))
    (pat_dir / "pruning_config.json").write_text(json.dumps(cfg, indent=4))
    split = tp.pat.split_multihead_attention(model)  # before Pruning(...), after loading weights
    logger.info("split %d attention modules: %s", len(split), split)
    train(model, pat_dir, epochs, data, seed)

    torch.save(model.state_dict(), out / "pruned.pt")
    fresh = DigitsViT()
    tp.pat.split_multihead_attention(fresh)
    fresh, missing, unexpected = tp.load_state_dict_pruned(
        fresh, torch.load(out / "pruned.pt", weights_only=True))
    with torch.no_grad():
        reload_diff = float((fresh.eval()(data[2]) - model.eval()(data[2])).abs().max())

    written = json.loads((pat_dir / "pruning_config.json").read_text())["channel_sparsity_args"]
    summary = {
        "epochs": epochs, "mac_target": section["mac_target"],
        "reach_mac_target": written["reach_mac_target"],
        "baseline": measure(baseline, data), "pat": measure(model, data),
        "heads_before": heads(baseline), "heads_after": heads(model),
        "mlp_hidden_after": [layer.linear1.out_features for layer in model.encoder.layers],
        "q_proj_out_after": [layer.self_attn.q_proj.out_features
                             for layer in model.encoder.layers],
        "reload": {"missing": missing, "unexpected": unexpected, "heads": heads(fresh),
                   "output_max_diff": reload_diff},
    }
    summary["macs_ratio"] = summary["pat"]["macs"] / summary["baseline"]["macs"]
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/transformer_heads"))
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--config", type=Path, default=HERE / "transformer_heads_config.json")
    parser.add_argument("--quick", action="store_true", help="reduced run for tests (12 epochs)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(message)s",
                        filename=str(args.out / "pat.log"), filemode="w")
    torch.set_num_threads(1)  # a small model: one thread is fastest
    epochs = min(args.epochs, 12) if args.quick else args.epochs
    start = time.perf_counter()
    s = run(args.out, epochs, args.seed, args.config)
    base, pat = s["baseline"], s["pat"]
    print(f"{epochs} epochs each. baseline: test accuracy {base['accuracy']:.2f}%, heads "
          f"{s['heads_before']}. PAT: test accuracy {pat['accuracy']:.2f}%, heads "
          f"{s['heads_after']}, MLP hidden {s['mlp_hidden_after']}, MACs "
          f"{s['macs_ratio']:.1%} of the baseline (target {s['mac_target']:.0%}), params "
          f"{pat['params'] / base['params']:.1%}")
    print(f"reloaded into a fresh split model: heads {s['reload']['heads']}, outputs max diff "
          f"{s['reload']['output_max_diff']:.1e}")
    print(f"done in {time.perf_counter() - start:.0f} s; summary {args.out / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
