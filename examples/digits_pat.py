"""Pruning-aware training end to end on real data (scikit-learn's 8x8 digits), on CPU.

Trains an unpruned baseline and a PAT run for the same number of epochs, with the five-line
integration of the README: regularization, gradual channel masking to half the MACs, physical
removal, optimizer reset, fine-tuning with slice sparsity; then saves the pruned checkpoint,
reloads it into a fresh *unpruned* model with ``load_state_dict_pruned`` and prints a summary.

The channel section of the config is the recommended recipe for this model, budget and run
length (``tp.pat.recommend_config``, see docs/recipes.md); the slice section comes from
``digits_pat_config.json``. A ``--config`` file with its own ``channel_sparsity_args`` is used
as it is.

    python examples/digits_pat.py --out runs/digits          # full run (about a minute)
    python examples/digits_pat.py --out /tmp/d --quick       # reduced run used by the tests
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Dict, Tuple

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
import torch_pruning as tp  # noqa: E402

HERE = Path(__file__).resolve().parent
logger = logging.getLogger("digits_pat")


def load_digits_tensors(seed: int = 0) -> Tuple[torch.Tensor, ...]:
    """Digits as (x_train, y_train, x_test, y_test): 1x8x8 images scaled to [0, 1], 80/20 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    idx_train, idx_test = train_test_split(range(len(y)), test_size=0.2, random_state=seed,
                                           stratify=y.numpy())
    return x[idx_train], y[idx_train], x[idx_test], y[idx_test]


class DigitsNet(nn.Module):
    """A small VGG-style CNN: 4 conv-BN-ReLU blocks, one pooling, a linear classifier."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        w = width

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                                 nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

        self.features = nn.Sequential(block(1, w), block(w, 2 * w), nn.MaxPool2d(2),
                                      block(2 * w, 2 * w), block(2 * w, 4 * w))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * w, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def make_optimizer(model: nn.Module, lr: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    acc = (model(x).argmax(1) == y).float().mean().item() * 100
    model.train()
    return acc


@torch.no_grad()
def cpu_latency_ms(model: nn.Module, batch: int = 64, repeats: int = 30) -> float:
    model.eval()
    x = torch.randn(batch, 1, 8, 8)
    for _ in range(5):
        model(x)
    start = time.perf_counter()
    for _ in range(repeats):
        model(x)
    model.train()
    return (time.perf_counter() - start) / repeats * 1000


def measure(model: nn.Module, x_test: torch.Tensor, y_test: torch.Tensor) -> Dict[str, float]:
    macs, params = tp.utils.count_ops_and_params(model, torch.randn(1, 1, 8, 8))
    return {"accuracy": accuracy(model, x_test, y_test), "macs": float(macs),
            "params": float(params), "latency_ms": cpu_latency_ms(model)}


def train(model: nn.Module, data: Tuple[torch.Tensor, ...], epochs: int, lr: float, seed: int,
          pruner=None, ckpt_dir: Path = None, carry_optimizer: bool = False) -> nn.Module:
    """The user's own loop; with a pruner it carries exactly the README's five lines."""
    from tqdm import tqdm

    x_train, y_train, x_test, y_test = data
    criterion = nn.CrossEntropyLoss()
    optimizer = make_optimizer(model, lr)
    generator = torch.Generator().manual_seed(seed)
    bar = tqdm(range(epochs), desc="PAT" if pruner else "baseline", unit="epoch",
               leave=False, disable=None)
    for epoch in bar:
        for group in optimizer.param_groups:  # cosine decay over the whole run
            group["lr"] = lr * 0.5 * (1 + torch.cos(torch.tensor(epoch / epochs * 3.1416)).item())
        order = torch.randperm(len(y_train), generator=generator)
        for i in range(0, len(order), 64):
            xb, yb = x_train[order[i:i + 64]], y_train[order[i:i + 64]]
            loss = criterion(model(xb), yb)
            if pruner is not None:
                loss = loss + pruner.slice_regularize(model)
            optimizer.zero_grad()
            loss.backward()
            if pruner is not None:
                pruner.channel_regularize(model)
            optimizer.step()
        if pruner is not None:
            pruner.prune(model, epoch, log=logger)
            if pruner.channel_pruner.reset_optimizer:
                if carry_optimizer:  # keep momentum, sliced to the surviving channels
                    optimizer = pruner.carry_optimizer_state(optimizer)
                else:  # the seed's advice: a clean optimizer for the reduced model
                    optimizer = make_optimizer(model, optimizer.param_groups[0]["lr"])
                pruner.channel_pruner.reset_optimizer = False
        if ckpt_dir is not None:
            torch.save({"epoch": epoch, "model": model.state_dict(),
                        "pruner": pruner.state_dict() if pruner else {}},
                       ckpt_dir / f"epoch_{epoch:03d}.pt")
        acc = accuracy(model, x_test, y_test)
        bar.set_postfix(loss=f"{loss.item():.3f}", test_acc=f"{acc:.1f}")
        if bar.disable:  # no terminal (a log file, CI): the bar is off, so one line per epoch
            print(f"{'PAT' if pruner else 'baseline'} epoch {epoch + 1}/{epochs}: "
                  f"loss {loss.item():.3f}, test accuracy {acc:.1f}%", flush=True)
    return model


MAC_TARGET = 0.5


def write_config(config: Path, out: Path, epochs: int) -> None:
    """``out/pruning_config.json``: ``config``, with the recommended channel section unless
    ``config`` has its own."""
    cfg = json.loads(config.read_text())
    if "channel_sparsity_args" not in cfg:
        recommended = tp.pat.recommend_config(DigitsNet(), torch.randn(1, 1, 8, 8), MAC_TARGET,
                                              epochs, block_size=4)
        cfg = {**recommended, **cfg}
    (out / "pruning_config.json").write_text(json.dumps(cfg, indent=2) + "\n")


def run(out: Path, epochs: int, seed: int, config: Path, lr: float = 0.05,
        carry_optimizer: bool = False) -> Dict[str, Dict[str, float]]:
    """Baseline and PAT runs; returns the before/after measurements."""
    data = load_digits_tensors(seed)
    x_test, y_test = data[2], data[3]

    torch.manual_seed(seed)
    baseline = train(DigitsNet(), data, epochs, lr, seed)
    before = measure(baseline, x_test, y_test)

    out.mkdir(parents=True, exist_ok=True)
    write_config(config, out, epochs)
    ckpt_dir = out / "checkpoints"
    if ckpt_dir.exists():
        shutil.rmtree(ckpt_dir)
    ckpt_dir.mkdir()
    torch.manual_seed(seed)
    model = DigitsNet()
    pruner = tp.Pruning(model, out, log=logger)
    model = train(model, data, epochs, lr, seed, pruner=pruner, ckpt_dir=ckpt_dir,
                  carry_optimizer=carry_optimizer)
    after = measure(model, x_test, y_test)

    # Reload the pruned checkpoint into a fresh, unpruned model, as a restarted job would.
    weights = torch.load(ckpt_dir / f"epoch_{epochs - 1:03d}.pt", weights_only=True)["model"]
    fresh = DigitsNet()
    try:
        fresh.load_state_dict(weights)
    except Exception:
        fresh, missing_keys, unexpected_keys = tp.load_state_dict_pruned(fresh, weights)
    model.eval(), fresh.eval()
    with torch.no_grad():
        same = torch.allclose(model(x_test), fresh(x_test), atol=1e-5)
    after["reload_matches"] = float(same)
    # pruning_report.txt/.png were written beside the config when the MAC target was met;
    # the L2-norm histograms of the run's checkpoints, as analyze.py draws them:
    from torch_pruning.pat import analyze_run, plot_analysis

    plot_analysis(analyze_run(ckpt_dir, config=out, progress=False), out / "analyze.png")
    result = {"baseline": before, "pat": after}
    (out / "summary.json").write_text(json.dumps(result, indent=2))
    return result


def format_summary(result: Dict[str, Dict[str, float]]) -> str:
    b, p = result["baseline"], result["pat"]
    rows = [("test accuracy (%)", f"{b['accuracy']:.2f}", f"{p['accuracy']:.2f}", f"{p['accuracy'] - b['accuracy']:+.2f}"),
            ("MACs", f"{b['macs']:,.0f}", f"{p['macs']:,.0f}", f"{p['macs'] / b['macs']:.3f}x"),
            ("params", f"{b['params']:,.0f}", f"{p['params']:,.0f}", f"{p['params'] / b['params']:.3f}x"),
            ("CPU latency, batch 64 (ms)", f"{b['latency_ms']:.2f}", f"{p['latency_ms']:.2f}",
             f"{p['latency_ms'] / b['latency_ms']:.2f}x")]
    lines = ["| metric | baseline | PAT | change |", "|---|---|---|---|"]
    lines += [f"| {a} | {b_} | {c} | {d} |" for a, b_, c, d in rows]
    lines.append(f"\npruned checkpoint reloaded into a fresh model with load_state_dict_pruned: "
                 f"{'outputs match' if p['reload_matches'] else 'OUTPUTS DIFFER'}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/digits"))
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--config", type=Path, default=HERE / "digits_pat_config.json")
    parser.add_argument("--carry-optimizer", action="store_true",
                        help="after channel removal keep the optimizer's state (sliced) "
                             "instead of resetting it")
    parser.add_argument("--quick", action="store_true",
                        help="reduced run for tests: quick config, fewer epochs")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(message)s",
                        filename=str(args.out / "pat.log"), filemode="w")
    torch.set_num_threads(1)  # a small model: one thread is fastest and avoids oversubscription
    config, epochs = args.config, args.epochs
    if args.quick:
        config, epochs = HERE / "digits_pat_config_quick.json", min(epochs, 12)
    start = time.perf_counter()
    result = run(args.out, epochs, args.seed, config, carry_optimizer=args.carry_optimizer)
    print(format_summary(result))
    print(f"\npruning log: {args.out / 'pat.log'}; report: {args.out / 'pruning_report.png'}; "
          f"norm histograms: {args.out / 'analyze.png'}")
    print(f"{epochs} epochs x 2 runs in {time.perf_counter() - start:.0f} s; outputs in {args.out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
