"""A custom training loop for a two-input model whose forward returns a dict, as detectors do.

The model reads a digit image and a second image-like tensor (its edge map), fuses the two
streams by concatenation and returns ``{"logits": ..., "embedding": ...}``. Two things differ
from a single-input classifier, both in the ``Pruning(...)`` call:

* ``example_inputs=(t1, t2)``: the dependency graph is traced on both inputs (no
  ``input_shape`` in the config);
* ``forward_fn(model, inputs)`` runs the model on those inputs and picks ``out["logits"]``, the
  tensor the graph is traced from (upstream's ``forward_fn`` form).

Everything else is the five-line integration of the README. Data: scikit-learn's digits.

    python examples/two_inputs.py --out runs/two_inputs            # about 10 s on one core
    python examples/two_inputs.py --out /tmp/two --quick           # reduced run used by the tests
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
from typing import Dict, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
import torch_pruning as tp  # noqa: E402
from torch_pruning.utils import Pruning  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from digits_pat import load_digits_tensors  # noqa: E402  (same data as the main example)

logger = logging.getLogger("two_inputs")


def edge_map(images: torch.Tensor) -> torch.Tensor:
    """The second input: Sobel gradient magnitude of each image (same N x 1 x 8 x 8 shape)."""
    sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
    kernels = torch.stack([sobel, sobel.t()]).unsqueeze(1)  # 2 x 1 x 3 x 3
    grad = F.conv2d(images, kernels, padding=1)
    return grad.pow(2).sum(1, keepdim=True).sqrt() / 4.0


def conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class TwoStreamNet(nn.Module):
    """Image stream + edge stream, concatenated, a small trunk, and a dict output."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        w = width
        self.image_stem = conv_bn_relu(1, w)
        self.edge_stem = conv_bn_relu(1, w // 2)
        self.fuse = conv_bn_relu(w + w // 2, 2 * w)  # its input channels follow both stems
        self.trunk = nn.Sequential(nn.MaxPool2d(2), conv_bn_relu(2 * w, 2 * w),
                                   conv_bn_relu(2 * w, 4 * w))
        self.classifier = nn.Linear(4 * w, 10)

    def forward(self, image: torch.Tensor, edges: torch.Tensor) -> Dict[str, torch.Tensor]:
        features = torch.cat([self.image_stem(image), self.edge_stem(edges)], dim=1)
        embedding = self.trunk(self.fuse(features)).mean(dim=(2, 3))
        return {"logits": self.classifier(embedding), "embedding": embedding}


def forward_fn(model: nn.Module, inputs: Tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """How the pruner runs the model on ``example_inputs``: both inputs in, the logits out."""
    return model(*inputs)["logits"]


def make_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)


def set_lr(optimizer: torch.optim.Optimizer, epoch: int, epochs: int, base: float = 0.05) -> None:
    """Cosine decay over the run (set every epoch, so a re-created optimizer follows it too)."""
    for group in optimizer.param_groups:
        group["lr"] = base * 0.5 * (1 + math.cos(math.pi * epoch / epochs))


@torch.no_grad()
def evaluate(model: nn.Module, inputs: Tuple[torch.Tensor, torch.Tensor],
             y: torch.Tensor) -> float:
    model.eval()
    acc = (forward_fn(model, inputs).argmax(1) == y).float().mean().item() * 100
    model.train()
    return acc


def run(out: Path, epochs: int, seed: int, config: Path) -> Dict[str, object]:
    x_train, y_train, x_test, y_test = load_digits_tensors(seed)
    test_inputs = (x_test, edge_map(x_test))
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(TensorDataset(x_train, edge_map(x_train), y_train), batch_size=64,
                        shuffle=True, generator=generator)

    output_dir = out
    shutil.copyfile(config, output_dir / "pruning_config.json")  # fresh state fields every run
    device = torch.device("cpu")
    torch.manual_seed(seed)
    model = TwoStreamNet().to(device)
    criterion = nn.CrossEntropyLoss()
    optimizer = make_optimizer(model)
    start_epoch = 0

    # Example inputs for tracing: one sample of each input, shaped as in training.
    t1, t2 = torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8)
    macs_before, params_before = tp.utils.count_ops_and_params(model, (t1, t2))

    pruner = Pruning(model, output_dir, forward_fn, log=logger, device=device,
                     example_inputs=(t1, t2))
    for epoch in range(start_epoch, epochs):
        set_lr(optimizer, epoch, epochs)
        for x1, x2, y in loader:
            loss = criterion(model(x1, x2)["logits"], y)
            loss = loss + pruner.slice_regularize(model)
            optimizer.zero_grad(); loss.backward()
            pruner.channel_regularize(model)
            optimizer.step()
        pruner.prune(model, epoch, log=logger)
        if pruner.channel_pruner.reset_optimizer:
            optimizer = make_optimizer(model); pruner.channel_pruner.reset_optimizer = False
        logger.info("epoch %d: loss %.4f, test accuracy %.2f%%", epoch, loss.item(),
                    evaluate(model, test_inputs, y_test))

    macs_after, params_after = tp.utils.count_ops_and_params(model, (t1, t2))
    model.eval()
    with torch.no_grad():
        out_dict = model(*test_inputs)
    mac_target = json.loads(config.read_text())["channel_sparsity_args"]["mac_target"]
    summary = {
        "epochs": epochs,
        "mac_target": mac_target,
        "reached_target": bool(pruner.channel_pruner.reached_target),
        "macs_before": float(macs_before), "macs_after": float(macs_after),
        "macs_ratio": float(macs_after / macs_before),
        "params_before": float(params_before), "params_after": float(params_after),
        "test_accuracy": evaluate(model, test_inputs, y_test),
        "output_keys": sorted(out_dict),
        "logits_shape": list(out_dict["logits"].shape),
        "channels": {name: m.out_channels for name, m in model.named_modules()
                     if isinstance(m, nn.Conv2d)},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/two_inputs"))
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--config", type=Path, default=HERE / "two_inputs_config.json")
    parser.add_argument("--quick", action="store_true", help="reduced run for tests (7 epochs)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(message)s",
                        filename=str(args.out / "pat.log"), filemode="w")
    torch.set_num_threads(1)  # a small model: one thread is fastest
    epochs = min(args.epochs, 7) if args.quick else args.epochs
    start = time.perf_counter()
    s = run(args.out, epochs, args.seed, args.config)
    print(f"two-input model, dict output ({', '.join(s['output_keys'])}), {epochs} epochs:")
    print(f"  MACs   {s['macs_before']:,.0f} -> {s['macs_after']:,.0f} "
          f"({s['macs_ratio']:.1%} of original, target {s['mac_target']:.0%})")
    print(f"  params {s['params_before']:,.0f} -> {s['params_after']:,.0f}")
    print(f"  conv channels kept: {s['channels']}")
    print(f"  test accuracy {s['test_accuracy']:.2f}%")
    print(f"done in {time.perf_counter() - start:.0f} s; log {args.out / 'pat.log'}, "
          f"summary {args.out / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
