"""One rank of the DDP reliability test (started by ``torch.multiprocessing.spawn``).

Each rank trains the harness run (``reliability_harness``) on its own data under
``DistributedDataParallel`` (gloo, CPU), twice: with ``Pruning`` built on the wrapped model, and
with ``Pruning`` built on the bare model before wrapping (each rank starting from different
weights, which the wrapper then synchronizes). After every ``prune()`` the ranks all-gather
their masks; after the physical removal the model is re-wrapped (``DDP(model.module)``) and
training continues. Then rank 0 saves a checkpoint and every rank resumes from it. Each rank
records the ``torch_pruning.pat`` log records it produced and every file it opened for writing
(through an audit hook), and writes what it saw to ``<out>/rank<r>.json``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Dict, List

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

import reliability_harness as H
import torch_pruning as tp

EPOCHS = 7  # masking, removal at epoch 2, slice pruning at 5-6


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: List[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(f"{record.name}: {record.getMessage()[:80]}")


class _UserLog:
    def __init__(self) -> None:
        self.lines: List[str] = []

    def info(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self.lines.append(msg)

    warning = info


def _watch_writes(root: Path, seen: List[str]) -> None:
    """Record every file under ``root`` opened for writing, renamed or removed."""
    root_str = str(root)
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            writing = (mode is not None and any(c in str(mode) for c in "wax+")) or \
                      (mode is None and isinstance(flags, int) and flags & write_flags)
            if writing and isinstance(path, (str, os.PathLike)) and \
                    os.fspath(path).startswith(root_str):
                seen.append(f"open {os.fspath(path)}")
        elif event in ("os.rename", "os.remove") and args and \
                str(os.fspath(args[0]) if isinstance(args[0], (str, os.PathLike)) else args[0]
                    ).startswith(root_str):
            seen.append(f"{event} {args[0]}")

    sys.addaudithook(hook)


def _gather_equal(obj: Any) -> bool:
    """True when every rank holds the same tensors (nested dicts) as rank 0."""
    gathered: List[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)

    def same(a: Any, b: Any) -> bool:
        if isinstance(a, torch.Tensor):
            return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
        if isinstance(a, dict):
            return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
        return a == b

    return all(same(gathered[0], g) for g in gathered)


def _masks(pruner: Any, model: nn.Module) -> Dict[str, Dict[str, torch.Tensor]]:
    return pruner.masks.state_dict(model)


def _params(model: nn.Module) -> Dict[str, torch.Tensor]:
    """The parameters (BatchNorm running statistics are per rank between DDP's broadcasts)."""
    return {n: p.detach() for n, p in model.named_parameters()}


def _train(run_dir: Path, rank: int, mode: str, log: _UserLog) -> Dict[str, Any]:
    torch.manual_seed(rank)  # different initial weights per rank: DDP broadcasts rank 0's
    model: nn.Module = H.SmallCNN(width=16)
    if mode == "wrapped-first":
        model = DDP(model)
        pruner = tp.Pruning(model, run_dir, log=log)
    else:
        pruner = tp.Pruning(model, run_dir, log=log)
        model = DDP(model)
    optimizer = H.make_optimizer(model)
    same_masks, masked, rewrapped = [], 0, []
    for epoch in range(EPOCHS):
        H.train_epoch(model, pruner, optimizer, epoch, rank=rank)  # this rank's own data
        pruner.prune(model, epoch, log=log)
        masks = _masks(pruner, model.module)
        same_masks.append(_gather_equal(masks))
        masked += sum(int((~m).sum()) for layer in masks.values() for m in layer.values())
        if pruner.channel_pruner.reset_optimizer:
            model = DDP(model.module)  # the documented re-wrap: parameters were replaced
            optimizer = H.make_optimizer(model)
            pruner.channel_pruner.reset_optimizer = False
            rewrapped.append(epoch)
    params = sum(p.numel() for p in model.parameters())
    return {"model": model, "pruner": pruner, "optimizer": optimizer,
            "result": {"same_masks": same_masks, "masked": masked, "rewrapped": rewrapped,
                       "params": params, "reached": pruner.channel_pruner.reached_target,
                       "same_weights": _gather_equal(_params(model.module)),
                       "slice_masks": len(_masks(pruner, model.module).get("slice", {}))}}


def _resume(run_dir: Path, ckpt: Path, rank: int, log: _UserLog) -> Dict[str, Any]:
    weights = torch.load(ckpt, weights_only=True)
    model = H.SmallCNN(width=16)
    model, _, _ = tp.load_state_dict_pruned(model, weights["model"])
    pruner = tp.Pruning(model, run_dir, log=log)
    pruner.load_state_dict(weights["pruner"])
    model = DDP(model)
    optimizer = H.make_optimizer(model)
    H.train_epoch(model, pruner, optimizer, EPOCHS, rank=rank)
    pruner.prune(model, EPOCHS, log=log)
    return {"same_weights": _gather_equal(_params(model.module)),
            "same_masks": _gather_equal(_masks(pruner, model.module)),
            "params": sum(p.numel() for p in model.parameters())}


def worker(rank: int, world: int, store: str, root: str, out: str) -> None:
    torch.set_num_threads(1)
    root_dir, out_dir = Path(root), Path(out)
    writes: List[str] = []
    _watch_writes(root_dir, writes)
    records = _Records()
    pat = logging.getLogger("torch_pruning.pat")
    pat.setLevel(logging.DEBUG)
    pat.addHandler(records)
    log = _UserLog()
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        runs = {}
        for mode in ("wrapped-first", "pruner-first"):
            runs[mode] = _train(root_dir / mode, rank, mode, log)
        ckpt = out_dir / "checkpoint.pth"
        run = runs["wrapped-first"]
        if rank == 0:  # the user's own checkpoint, saved on one rank
            torch.save({"model": run["model"].module.state_dict(),
                        "pruner": run["pruner"].state_dict()}, ckpt)
        dist.barrier()
        resumed = _resume(root_dir / "wrapped-first", ckpt, rank, log)
        result = {"runs": {m: r["result"] for m, r in runs.items()}, "resumed": resumed,
                  "records": records.records, "user_log": log.lines, "writes": writes}
        (out_dir / f"rank{rank}.json").write_text(json.dumps(result, indent=1))
    finally:
        dist.destroy_process_group()
    # PyTorch 2.14's gloo backend sometimes aborts while the interpreter shuts down, after
    # destroy_process_group() ("terminate called without an active exception", about 1 run in
    # 6 here; see pytorch/pytorch#179291). Everything is written by now: leave without the
    # interpreter's teardown so the spawn reports this rank's real outcome.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
