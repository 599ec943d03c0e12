"""Pruning-aware training under DistributedDataParallel: two CPU processes on the gloo backend.

Each rank trains on its own shard of scikit-learn's digits (``DistributedSampler``), with the
README's five lines unchanged. The pruner unwraps the DDP model, every rank ranks channels on
the same (all-reduced) weights and the ranks agree on the masks; only rank 0 logs and writes
``pruning_config.json``. One line is specific to DDP: after the physical removal (when
``pruner.channel_pruner.reset_optimizer`` is true) the reduced module is wrapped in a *new*
``DistributedDataParallel`` — the old wrapper registered the old parameters — before the
optimizer is re-created. Every epoch the ranks compare their weights and masks.

    torchrun --nproc_per_node 2 examples/ddp_pat.py --out runs/ddp
    python -m torch.distributed.run --nproc_per_node 2 --master_port 29511 \\
        examples/ddp_pat.py --out /tmp/ddp --quick                    # reduced run (the tests)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Dict

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
import torch_pruning as tp  # noqa: E402
from torch_pruning.utils import Pruning  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from digits_pat import DigitsNet, accuracy, load_digits_tensors  # noqa: E402

logger = logging.getLogger("ddp_pat")


def make_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)


def set_lr(optimizer: torch.optim.Optimizer, epoch: int, epochs: int, base: float = 0.05) -> None:
    for group in optimizer.param_groups:
        group["lr"] = base * 0.5 * (1 + math.cos(math.pi * epoch / epochs))


def fingerprint(model: nn.Module, pruner: Pruning) -> Dict[str, str]:
    """Digests of this rank's parameters and of its channel and slice masks.

    Buffers are left out: BatchNorm running statistics are updated by each rank's own last
    forward (DDP broadcasts rank 0's buffers at the start of every forward).
    """
    weights = hashlib.sha256()
    for name, tensor in model.module.named_parameters():
        weights.update(name.encode() + str(tuple(tensor.shape)).encode())
        weights.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    masks = hashlib.sha256()
    state = pruner.state_dict()
    for source, units in sorted(state["channel"].get("pruned_units", {}).items()):
        masks.update(source.encode() + units.numpy().tobytes())
    for name, keep in sorted(state["slice"].get("masks", {}).items()):
        masks.update(name.encode() + keep.numpy().tobytes())
    return {"weights": weights.hexdigest(), "masks": masks.hexdigest()}


def run(out: Path, epochs: int, seed: int, config: Path) -> Dict[str, Any]:
    rank, world = dist.get_rank(), dist.get_world_size()
    x_train, y_train, x_test, y_test = load_digits_tensors(seed)
    output_dir = out
    if rank == 0:
        shutil.copyfile(config, output_dir / "pruning_config.json")
    dist.barrier()  # every rank reads the fresh config

    train_set = TensorDataset(x_train, y_train)
    sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True,
                                 seed=seed, drop_last=True)
    loader = DataLoader(train_set, batch_size=64 // world, sampler=sampler)  # 64 per step
    shards = [None] * world
    dist.all_gather_object(shards, list(sampler))

    device = torch.device("cpu")
    torch.manual_seed(seed)
    model = DigitsNet(16).to(device)
    macs_before, params_before = tp.utils.count_ops_and_params(model, torch.zeros(1, 1, 8, 8))
    model = DDP(model)
    criterion = nn.CrossEntropyLoss()
    optimizer = make_optimizer(model)
    start_epoch, rewrapped_at, identical = 0, None, []

    pruner = Pruning(model, output_dir, forward_fn=None, log=logger, device=device)
    for epoch in range(start_epoch, epochs):
        sampler.set_epoch(epoch)
        set_lr(optimizer, epoch, epochs)
        for x, y in loader:
            loss = criterion(model(x), y)
            loss = loss + pruner.slice_regularize(model)
            optimizer.zero_grad(); loss.backward()
            pruner.channel_regularize(model)
            optimizer.step()
        pruner.prune(model, epoch, log=logger)
        if pruner.channel_pruner.reset_optimizer:
            model = DDP(model.module)  # the reduced module needs a new DDP wrapper
            optimizer = make_optimizer(model); pruner.channel_pruner.reset_optimizer = False
            rewrapped_at = epoch
        prints = [None] * world
        dist.all_gather_object(prints, fingerprint(model, pruner))
        identical.append(all(p == prints[0] for p in prints))
        if rank == 0:
            logger.info("epoch %d: test accuracy %.2f%%, ranks identical: %s", epoch,
                        accuracy(model.module, x_test, y_test), identical[-1])

    module = model.module
    macs_after, params_after = tp.utils.count_ops_and_params(module, torch.zeros(1, 1, 8, 8))
    union = sorted(i for shard in shards for i in shard)
    return {
        "world_size": world,
        "samples_per_rank": [len(s) for s in shards],
        "shards_disjoint": len(set(union)) == len(union) > len(x_train) - world,
        "mac_target": pruner.channel_pruner.cfg.mac_target,
        "reached_target": bool(pruner.channel_pruner.reached_target),
        "rewrapped_at_epoch": rewrapped_at,
        "ranks_identical_every_epoch": all(identical),
        "macs_before": float(macs_before), "macs_after": float(macs_after),
        "macs_ratio": float(macs_after / macs_before),
        "params_before": float(params_before), "params_after": float(params_after),
        "test_accuracy": accuracy(module, x_test, y_test),
        "conv_channels": [m.out_channels for m in module.modules() if isinstance(m, nn.Conv2d)],
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/ddp"))
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--config", type=Path, default=HERE / "ddp_pat_config.json")
    parser.add_argument("--quick", action="store_true", help="reduced run for tests (7 epochs)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # one thread per process: two processes share two cores
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    if rank == 0:
        args.out.mkdir(parents=True, exist_ok=True)
        logging.basicConfig(level=logging.INFO, format="%(message)s",
                            filename=str(args.out / "pat.log"), filemode="w")
    epochs = min(args.epochs, 7) if args.quick else args.epochs
    start = time.perf_counter()
    try:
        s = run(args.out, epochs, args.seed, args.config)
    finally:
        dist.destroy_process_group()
    if rank == 0:
        (args.out / "summary.json").write_text(json.dumps(s, indent=2))
        print(f"DDP on gloo, {s['world_size']} processes, {epochs} epochs, "
              f"{s['samples_per_rank']} training samples per rank (disjoint shards: "
              f"{s['shards_disjoint']})")
        print(f"  MACs   {s['macs_before']:,.0f} -> {s['macs_after']:,.0f} "
              f"({s['macs_ratio']:.1%} of original, target {s['mac_target']:.0%}); "
              f"DDP re-wrapped after the removal at epoch {s['rewrapped_at_epoch']}")
        print(f"  params {s['params_before']:,.0f} -> {s['params_after']:,.0f}; "
              f"conv channels {s['conv_channels']}")
        print(f"  weights and masks identical on every rank after every epoch: "
              f"{s['ranks_identical_every_epoch']}")
        print(f"  test accuracy {s['test_accuracy']:.2f}%")
        print(f"done in {time.perf_counter() - start:.0f} s; log {args.out / 'pat.log'}, "
              f"summary {args.out / 'summary.json'}")
    return 0


if __name__ == "__main__":
    code = main()
    # PyTorch 2.14's gloo backend sometimes aborts while the interpreter shuts down, after
    # destroy_process_group() ("terminate called without an active exception", pytorch#179291).
    # Everything is written by now: leave without the interpreter's teardown.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
