"""Pruning-aware training under FSDP2 (``fully_shard``): two CPU processes on the gloo backend.

The model's parameters are sharded on dim 0 across the ranks (DTensors); each rank trains on
its own shard of scikit-learn's digits (``DistributedSampler``) with the README's five lines
unchanged. ``Pruning`` is built on the whole model *before* ``fully_shard``. Two lines are
specific to FSDP2, as the re-wrap is to DDP: when ``pruner.channel_pruner.reset_optimizer`` is
true, the pruner has gathered the model, removed the channels and handed back the reduced model
*unsharded* (plain parameters, no FSDP hooks), so the loop calls its own ``shard(model)`` again
before re-creating the optimizer. See docs/distributed.md.

Checkpoints: every epoch rank 0 writes a whole (unsharded) state dict gathered with
``get_model_state_dict(..., full_state_dict=True)`` beside ``pruner.state_dict()``; at the end
the sharded model is also saved with ``torch.distributed.checkpoint`` (one file per rank) and
both are reloaded into a fresh, unpruned model with ``load_state_dict_pruned``.

    torchrun --nproc_per_node 2 examples/fsdp_pat.py --out runs/fsdp
    python -m torch.distributed.run --nproc_per_node 2 --master_port 29512 \\
        examples/fsdp_pat.py --out /tmp/fsdp --quick                  # reduced run (the tests)
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
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     set_model_state_dict)
from torch.distributed.fsdp import fully_shard
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
import torch_pruning as tp  # noqa: E402
from torch_pruning.pat.util.fsdp import is_sharded, local_tensor  # noqa: E402
from torch_pruning.utils import Pruning  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from digits_pat import DigitsNet, accuracy, load_digits_tensors  # noqa: E402

logger = logging.getLogger("fsdp_pat")
FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)  # whole tensors, on CPU


def shard(model: nn.Module) -> nn.Module:
    """The user's own FSDP2 wrapping: each conv block and the head, then the root."""
    for block in model.features:
        if any(True for _ in block.parameters()):
            fully_shard(block)
    fully_shard(model.head)
    fully_shard(model)
    return model


def make_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)


def set_lr(optimizer: torch.optim.Optimizer, epoch: int, epochs: int, base: float = 0.05) -> None:
    for group in optimizer.param_groups:
        group["lr"] = base * 0.5 * (1 + math.cos(math.pi * epoch / epochs))


def local_param_bytes(model: nn.Module) -> int:
    """Bytes of parameters this rank holds (its shards under FSDP2, everything otherwise)."""
    return sum(local_tensor(p).numel() * p.element_size()
               for p in model.parameters())


@torch.no_grad()
def average_buffers(model: nn.Module) -> None:
    """Average BatchNorm's running statistics over the ranks.

    FSDP2 shards parameters only: buffers stay plain tensors that each rank updates from its
    own batches (DDP instead broadcasts rank 0's at every forward). Averaging them at the epoch
    end makes every rank's model, and the checkpoint, the same.
    """
    for buffer in model.buffers():
        if buffer.is_floating_point():
            dist.all_reduce(buffer, op=dist.ReduceOp.AVG)


def fingerprint(weights: Dict[str, torch.Tensor], pruner: Pruning) -> Dict[str, str]:
    """Digests of the whole parameters and of the channel and slice masks."""
    digest, masks = hashlib.sha256(), hashlib.sha256()
    for name, tensor in sorted(weights.items()):
        digest.update(name.encode() + tensor.numpy().tobytes())
    state = pruner.state_dict()
    for source, units in sorted(state["channel"].get("pruned_units", {}).items()):
        masks.update(source.encode() + units.numpy().tobytes())
    for name, keep in sorted(state["slice"].get("masks", {}).items()):
        masks.update(name.encode() + keep.numpy().tobytes())
    return {"weights": digest.hexdigest(), "masks": masks.hexdigest()}


def reload_sharded(checkpoint: Path, reference: nn.Module, x: torch.Tensor) -> bool:
    """A fresh, unpruned model gets the pruned shapes from the sharded checkpoint's metadata
    (``load_state_dict_pruned`` on placeholders), is sharded, then ``dcp.load`` fills it."""
    metadata = dcp.FileSystemReader(str(checkpoint)).read_metadata().state_dict_metadata
    shapes = {k[len("model."):]: torch.zeros(tuple(m.size), dtype=m.properties.dtype)
              for k, m in metadata.items() if k.startswith("model.") and hasattr(m, "size")}
    fresh, _, _ = tp.load_state_dict_pruned(DigitsNet(16), shapes)
    shard(fresh)
    state = {"model": get_model_state_dict(fresh)}
    dcp.load(state, checkpoint_id=str(checkpoint))
    set_model_state_dict(fresh, state["model"])
    fresh.eval(), reference.eval()
    with torch.no_grad():
        same = torch.allclose(fresh(x), reference(x), atol=1e-5)
    reference.train()
    return bool(same)


def run(out: Path, epochs: int, seed: int, config: Path) -> Dict[str, Any]:
    rank, world = dist.get_rank(), dist.get_world_size()
    x_train, y_train, x_test, y_test = load_digits_tensors(seed)
    if rank == 0:
        shutil.copyfile(config, out / "pruning_config.json")
        (out / "checkpoints").mkdir(exist_ok=True)
    dist.barrier()  # every rank reads the fresh config

    train_set = TensorDataset(x_train, y_train)
    sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True,
                                 seed=seed, drop_last=True)
    loader = DataLoader(train_set, batch_size=64 // world, sampler=sampler)  # 64 per step

    torch.manual_seed(seed)
    model = DigitsNet(16)
    macs_before, params_before = tp.utils.count_ops_and_params(model, torch.zeros(1, 1, 8, 8))
    criterion = nn.CrossEntropyLoss()
    pruner = Pruning(model, out, log=logger)  # traced on the whole model, before sharding
    shard(model)
    optimizer = make_optimizer(model)
    resharded_at, identical, memory = None, [], {}
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        set_lr(optimizer, epoch, epochs)
        for x, y in loader:
            loss = criterion(model(x), y) + pruner.slice_regularize(model)
            optimizer.zero_grad(); loss.backward()
            pruner.channel_regularize(model)
            optimizer.step()
        average_buffers(model)
        held = local_param_bytes(model)
        pruner.prune(model, epoch, log=logger)
        if pruner.channel_pruner.reset_optimizer:  # channels removed: the model is unsharded
            memory = {"shard_bytes_before": held, "whole_bytes_after_removal":
                      local_param_bytes(model)}
            shard(model)                          # FSDP2's line: shard the reduced model again
            optimizer = make_optimizer(model); pruner.channel_pruner.reset_optimizer = False
            memory["shard_bytes_after_reshard"] = local_param_bytes(model)
            resharded_at = epoch
        weights = get_model_state_dict(model, options=FULL)  # a collective: every rank calls;
        if rank == 0:  # with cpu_offload only rank 0 receives the tensors, and only it writes
            torch.save({"epoch": epoch, "model": weights, "pruner": pruner.state_dict()},
                       out / "checkpoints" / f"epoch_{epoch:03d}.pt")
        everywhere = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
        prints = [None] * world
        dist.all_gather_object(prints, fingerprint(everywhere, pruner))
        identical.append(all(p == prints[0] for p in prints))
        if rank == 0:
            logger.info("epoch %d: ranks identical: %s", epoch, identical[-1])

    sharded_ckpt = out / "sharded_checkpoint"
    if rank == 0 and sharded_ckpt.exists():
        shutil.rmtree(sharded_ckpt)
    dist.barrier()
    dcp.save({"model": get_model_state_dict(model)}, checkpoint_id=str(sharded_ckpt))
    sharded_reload = reload_sharded(sharded_ckpt, model, x_test)
    weights = get_model_state_dict(model, options=FULL)
    result: Dict[str, Any] = {}
    if rank == 0:
        # the whole rank-0 checkpoint into a fresh, unpruned model, as a restarted job would
        saved = torch.load(out / "checkpoints" / f"epoch_{epochs - 1:03d}.pt",
                           weights_only=True)["model"]
        fresh = DigitsNet(16)
        try:
            fresh.load_state_dict(saved)
        except Exception:
            fresh, missing_keys, unexpected_keys = tp.load_state_dict_pruned(fresh, saved)
        whole = DigitsNet(16)
        whole, _, _ = tp.load_state_dict_pruned(whole, weights)
        fresh.eval(), whole.eval()
        with torch.no_grad():
            full_reload = bool(torch.allclose(fresh(x_test), whole(x_test), atol=1e-5))
        macs_after, params_after = tp.utils.count_ops_and_params(whole, torch.zeros(1, 1, 8, 8))
        result = {
            "world_size": world,
            "mac_target": pruner.channel_pruner.cfg.mac_target,
            "reached_target": bool(pruner.channel_pruner.reached_target),
            "resharded_at_epoch": resharded_at,
            "sharded_after": is_sharded(model),
            "ranks_identical_every_epoch": all(identical),
            "macs_before": float(macs_before), "macs_after": float(macs_after),
            "macs_ratio": float(macs_after / macs_before),
            "params_before": float(params_before), "params_after": float(params_after),
            "test_accuracy": accuracy(whole, x_test, y_test),
            "conv_channels": [m.out_channels for m in whole.modules()
                              if isinstance(m, nn.Conv2d)],
            "full_checkpoint_reload_matches": full_reload,
            "sharded_checkpoint_reload_matches": sharded_reload,
            "memory_at_removal_rank0": memory,
        }
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/fsdp"))
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--config", type=Path, default=HERE / "fsdp_pat_config.json")
    parser.add_argument("--quick", action="store_true", help="reduced run for tests (7 epochs)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # one thread per process: two processes share two cores
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    if rank == 0:
        args.out.mkdir(parents=True, exist_ok=True)
        logging.basicConfig(level=logging.INFO, format="%(message)s",
                            filename=str(args.out / "pat.log"), filemode="w")
    dist.barrier()
    epochs = min(args.epochs, 7) if args.quick else args.epochs
    start = time.perf_counter()
    try:
        s = run(args.out, epochs, args.seed, args.config)
    finally:
        dist.destroy_process_group()
    if rank == 0:
        (args.out / "summary.json").write_text(json.dumps(s, indent=2))
        mem = s["memory_at_removal_rank0"]
        print(f"FSDP2 (fully_shard) on gloo, {s['world_size']} processes, {epochs} epochs")
        print(f"  MACs   {s['macs_before']:,.0f} -> {s['macs_after']:,.0f} "
              f"({s['macs_ratio']:.1%} of original, target {s['mac_target']:.0%}); "
              f"re-sharded after the removal at epoch {s['resharded_at_epoch']}")
        print(f"  params {s['params_before']:,.0f} -> {s['params_after']:,.0f}; "
              f"conv channels {s['conv_channels']}")
        if mem:
            print(f"  parameter bytes on rank 0: {mem['shard_bytes_before']:,} (shard) -> "
                  f"{mem['whole_bytes_after_removal']:,} (whole reduced model, unsharded) -> "
                  f"{mem['shard_bytes_after_reshard']:,} (shard again)")
        print(f"  weights and masks identical on every rank after every epoch: "
              f"{s['ranks_identical_every_epoch']}")
        print(f"  reloaded into a fresh unpruned model: whole checkpoint "
              f"{s['full_checkpoint_reload_matches']}, sharded (torch.distributed.checkpoint) "
              f"{s['sharded_checkpoint_reload_matches']}")
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
