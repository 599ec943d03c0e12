"""One-shot pruning: physical removal at the first ``prune()`` call, then fine-tuning.

With ``"prune_channels_at_init": true`` there is no masking phase: the first
``pruner.prune(model, epoch)`` ranks the channels of a trained model once (GroupNorm importance,
no regularization here), removes them physically down to ``mac_target`` and sets
``channel_pruner.reset_optimizer``. The rest of the run fine-tunes the reduced model.

The same training function (the README's five lines) runs twice: first on a folder without
``pruning_config.json`` — pruning is disabled and it simply trains the dense model — then, from
those weights, on a folder holding ``one_shot_config.json``.

    python examples/one_shot.py --out runs/one_shot          # about 15 s on one core
    python examples/one_shot.py --out /tmp/os --quick        # reduced run used by the tests
"""

from __future__ import annotations

import argparse
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
from digits_pat import DigitsNet, accuracy, load_digits_tensors  # noqa: E402

logger = logging.getLogger("one_shot")


def make_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)


def set_lr(optimizer: torch.optim.Optimizer, epoch: int, epochs: int, base: float = 0.05) -> None:
    for group in optimizer.param_groups:
        group["lr"] = base * 0.5 * (1 + math.cos(math.pi * epoch / epochs))


def train(model: nn.Module, output_dir: Path, epochs: int, data, seed: int) -> List[float]:
    """The user's loop; returns the test accuracy after every epoch (after its prune() call)."""
    x_train, y_train, x_test, y_test = data
    loader = DataLoader(TensorDataset(x_train, y_train), batch_size=64, shuffle=True,
                        generator=torch.Generator().manual_seed(seed))
    device = torch.device("cpu")
    criterion = nn.CrossEntropyLoss()
    optimizer = make_optimizer(model)
    start_epoch, history = 0, []

    pruner = Pruning(model, output_dir, forward_fn=None, log=logger, device=device)
    for epoch in range(start_epoch, epochs):
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
            logger.info("epoch %d: one-shot pruning done, optimizer re-created", epoch)
        history.append(accuracy(model, x_test, y_test))
        logger.info("epoch %d: test accuracy %.2f%%", epoch, history[-1])
    return history


def macs_params(model: nn.Module) -> Dict[str, float]:
    macs, params = tp.utils.count_ops_and_params(model, torch.zeros(1, 1, 8, 8))
    return {"macs": float(macs), "params": float(params)}


def run(out: Path, dense_epochs: int, finetune_epochs: int, seed: int,
        config: Path) -> Dict[str, object]:
    data = load_digits_tensors(seed)
    torch.manual_seed(seed)
    model = DigitsNet(16)

    dense_dir = out / "dense"  # no pruning_config.json here: pruning is disabled
    if dense_dir.exists():
        shutil.rmtree(dense_dir)
    dense_dir.mkdir(parents=True)
    dense_history = train(model, dense_dir, dense_epochs, data, seed)
    before = macs_params(model)
    dense_channels = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]

    prune_dir = out / "one_shot"
    prune_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(config, prune_dir / "pruning_config.json")
    history = train(model, prune_dir, finetune_epochs, data, seed + 1)
    after = macs_params(model)

    cfg = json.loads((prune_dir / "pruning_config.json").read_text())["channel_sparsity_args"]
    summary = {
        "mac_target": cfg["mac_target"],
        "reach_mac_target": cfg["reach_mac_target"],  # written back by the pruner
        "dense_epochs": dense_epochs, "finetune_epochs": finetune_epochs,
        "dense_accuracy": dense_history[-1],
        "accuracy_after_pruning_epoch": history[0],  # one epoch, then the one-shot removal
        "finetuned_accuracy": history[-1],
        "accuracy_history": history,
        "macs_before": before["macs"], "macs_after": after["macs"],
        "macs_ratio": after["macs"] / before["macs"],
        "params_before": before["params"], "params_after": after["params"],
        "conv_channels_before": dense_channels,
        "conv_channels_after": [m.out_channels for m in model.modules()
                                if isinstance(m, nn.Conv2d)],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/one_shot"))
    parser.add_argument("--dense-epochs", type=int, default=8)
    parser.add_argument("--finetune-epochs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--config", type=Path, default=HERE / "one_shot_config.json")
    parser.add_argument("--quick", action="store_true", help="reduced run for tests")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(message)s",
                        filename=str(args.out / "pat.log"), filemode="w")
    torch.set_num_threads(1)  # a small model: one thread is fastest
    dense, finetune = args.dense_epochs, args.finetune_epochs
    if args.quick:
        dense, finetune = min(dense, 4), min(finetune, 3)
    start = time.perf_counter()
    s = run(args.out, dense, finetune, args.seed, args.config)
    print(f"one-shot pruning of a dense model trained for {dense} epochs, then {finetune} "
          "epochs of training (pruned at the end of the first):")
    print(f"  MACs   {s['macs_before']:,.0f} -> {s['macs_after']:,.0f} "
          f"({s['macs_ratio']:.1%} of original, target {s['mac_target']:.0%})")
    print(f"  params {s['params_before']:,.0f} -> {s['params_after']:,.0f}")
    print(f"  conv channels {s['conv_channels_before']} -> {s['conv_channels_after']}")
    print(f"  test accuracy: dense {s['dense_accuracy']:.2f}%, right after pruning "
          f"{s['accuracy_after_pruning_epoch']:.2f}%, fine-tuned {s['finetuned_accuracy']:.2f}%")
    print(f"done in {time.perf_counter() - start:.0f} s; log {args.out / 'pat.log'}, "
          f"summary {args.out / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
