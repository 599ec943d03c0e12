"""Inference-time rebuild: turn a trained, pruned checkpoint back into the reduced network.

Stage ``train`` runs pruning-aware training with ``"prune_at_target": false``: at the MAC target
the masked channels stay in place as exact zeros, so the checkpoint keeps the original shapes
(``masked.pt``). It then removes them (``channel_pruner.remove_masked_channels``) and saves the
reduced checkpoint too (``pruned.pt``), with the test-set outputs as the reference.

Stage ``rebuild`` runs in a fresh process that only knows the original architecture, and gets
the reduced network back in two ways:

* **load_state_dict_pruned**: build the original model and load ``pruned.pt`` with the seed's
  try/except snippet; the loader resizes every reduced layer;
* **infer config**: load ``masked.pt`` normally (same shapes), then ``Pruning`` with the training
  config plus ``"infer": true``: no regularization, and the first ``prune()`` call removes the
  channels physically: every channel training zeroed (all its coupled parameters are exact
  zeros), and more only if the target asked for it.

Both must give the reference outputs.

    python examples/infer_rebuild.py --out runs/infer                # about 10 s
    python examples/infer_rebuild.py --out /tmp/infer --quick        # reduced run (the tests)
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
import torch_pruning  # noqa: E402
from torch_pruning.utils import Pruning  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from digits_pat import DigitsNet, accuracy, load_digits_tensors  # noqa: E402

logger = logging.getLogger("infer_rebuild")
WIDTH = 16


def make_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)


def set_lr(optimizer: torch.optim.Optimizer, epoch: int, epochs: int, base: float = 0.05) -> None:
    for group in optimizer.param_groups:
        group["lr"] = base * 0.5 * (1 + math.cos(math.pi * epoch / epochs))


def macs_of(model: nn.Module) -> float:
    return float(torch_pruning.utils.count_ops_and_params(model, torch.zeros(1, 1, 8, 8))[0])


def conv_channels(model: nn.Module) -> Dict[str, int]:
    return {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def stage_train(out: Path, epochs: int, seed: int, config: Path) -> Dict[str, Any]:
    """Pruning-aware training; masks stay in place at the target (prune_at_target: false)."""
    x_train, y_train, x_test, y_test = load_digits_tensors(seed)
    loader = DataLoader(TensorDataset(x_train, y_train), batch_size=64, shuffle=True,
                        generator=torch.Generator().manual_seed(seed))
    output_dir = out / "train"
    output_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(config, output_dir / "pruning_config.json")
    device = torch.device("cpu")
    torch.manual_seed(seed)
    model = DigitsNet(WIDTH)
    base_macs = macs_of(model)
    criterion = nn.CrossEntropyLoss()
    optimizer = make_optimizer(model)
    start_epoch = 0

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

    model.eval()
    torch.save({"model": model.state_dict()}, out / "masked.pt")  # original shapes, zeros inside
    with torch.no_grad():
        reference = model(x_test)
    masked_macs = pruner.channel_pruner.macs()  # counted as if the masked channels were gone
    pruner.channel_pruner.remove_masked_channels(model, log=logger)
    torch.save({"model": model.state_dict()}, out / "pruned.pt")
    with torch.no_grad():
        removal_diff = float((model(x_test) - reference).abs().max())
    torch.save(reference, out / "reference.pt")
    return {"reached_target": bool(pruner.channel_pruner.reached_target),
            "base_macs": base_macs, "masked_macs": float(masked_macs),
            "pruned_macs": macs_of(model), "accuracy": accuracy(model, x_test, y_test),
            "removal_output_max_diff": removal_diff, "conv_channels": conv_channels(model)}


def stage_rebuild(out: Path, seed: int, config: Path) -> Dict[str, Any]:
    """A fresh process: rebuild the reduced network from the original architecture."""
    x_test, y_test = load_digits_tensors(seed)[2:]
    reference = torch.load(out / "reference.pt", weights_only=True)
    result: Dict[str, Any] = {}

    # 1. The reduced checkpoint, loaded into the original architecture.
    model = DigitsNet(WIDTH)
    weights = torch.load(out / "pruned.pt", weights_only=True)["model"]
    try:
        model.load_state_dict(weights)
    except Exception:
        model, missing_keys, unexpected_keys = torch_pruning.load_state_dict_pruned(model, weights)
    result["load_state_dict_pruned"] = _evaluate(model, x_test, y_test, reference)

    # 2. The masked checkpoint (original shapes) and the infer config: removal at the first call.
    infer_dir = out / "infer"
    infer_dir.mkdir(exist_ok=True)
    cfg = json.loads(config.read_text())
    cfg["channel_sparsity_args"]["infer"] = True
    (infer_dir / "pruning_config.json").write_text(json.dumps(cfg, indent=4))
    model = DigitsNet(WIDTH)
    model.load_state_dict(torch.load(out / "masked.pt", weights_only=True)["model"])
    pruner = Pruning(model, infer_dir, log=logger)
    pruner.prune(model, 0, log=logger)
    result["infer"] = _evaluate(model, x_test, y_test, reference)
    written = json.loads((infer_dir / "pruning_config.json").read_text())
    result["infer"]["reach_mac_target_written"] = \
        written["channel_sparsity_args"]["reach_mac_target"]
    return result


@torch.no_grad()
def _evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
              reference: torch.Tensor) -> Dict[str, Any]:
    model.eval()
    diff = float((model(x) - reference).abs().max())
    return {"output_max_diff": diff, "outputs_equal": diff <= 1e-4, "macs": macs_of(model),
            "accuracy": accuracy(model, x, y), "conv_channels": conv_channels(model)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/infer_rebuild"))
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--config", type=Path, default=HERE / "infer_rebuild_config.json")
    parser.add_argument("--quick", action="store_true", help="reduced run for tests (6 epochs)")
    parser.add_argument("--stage", choices=["all", "train", "rebuild"], default="all",
                        help="all: train here, then rebuild in a fresh process")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(message)s",
                        filename=str(args.out / f"pat_{args.stage}.log"), filemode="w")
    torch.set_num_threads(1)  # a small model: one thread is fastest
    epochs = min(args.epochs, 6) if args.quick else args.epochs
    if args.stage == "rebuild":
        (args.out / "rebuild.json").write_text(
            json.dumps(stage_rebuild(args.out, args.seed, args.config), indent=2))
        return 0

    start = time.perf_counter()
    trained = stage_train(args.out, epochs, args.seed, args.config)
    if args.stage == "train":
        return 0
    subprocess.run([sys.executable, str(Path(__file__).resolve()), "--out", str(args.out),
                    "--seed", str(args.seed), "--config", str(args.config), "--stage", "rebuild"],
                   check=True)
    rebuilt = json.loads((args.out / "rebuild.json").read_text())
    target = json.loads(args.config.read_text())["channel_sparsity_args"]["mac_target"]
    summary = {"mac_target": target, "train": trained, **rebuilt}
    # Layers whose channel count after the infer rebuild differs from the trained one (none:
    # the rebuild removes every zeroed channel and the masks already met the target).
    summary["infer"]["channels_differing_from_training"] = {
        name: n - trained["conv_channels"][name]
        for name, n in summary["infer"]["conv_channels"].items()
        if n != trained["conv_channels"][name]}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))

    base = trained["base_macs"]
    print(f"trained {epochs} epochs, masked to {trained['masked_macs'] / base:.1%} of the MACs "
          f"(target {target:.0%}); masks removed: {trained['conv_channels']}, "
          f"test accuracy {trained['accuracy']:.2f}%")
    for name, label in (("load_state_dict_pruned", "pruned.pt + load_state_dict_pruned"),
                        ("infer", 'masked.pt + "infer": true')):
        r = summary[name]
        print(f"fresh process, {label}: MACs {r['macs'] / base:.1%} of original, channels "
              f"{r['conv_channels']}, accuracy {r['accuracy']:.2f}%, outputs "
              f"{'equal' if r['outputs_equal'] else 'DIFFER'} (max diff "
              f"{r['output_max_diff']:.1e})")
    differing = summary["infer"]["channels_differing_from_training"]
    if differing:
        print(f"  note: the infer rebuild's channel counts differ from training: {differing}")
    print(f"done in {time.perf_counter() - start:.0f} s; summary {args.out / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
