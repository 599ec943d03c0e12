"""A small, seeded PAT training run shared by the reliability tests (and runnable as a script).

:func:`train_run` is the loop of SPEC section 1 — slice penalty in the loss, channel penalty
after ``backward()``, ``prune()`` per epoch, a new optimizer after a physical removal — plus a
checkpoint (model + optimizer + ``pruner.state_dict()``) saved after every epoch. It can stop
("be killed") at a chosen point and resume from a checkpoint, so the tests can compare an
interrupted run with an uninterrupted one. Everything random is drawn from generators seeded by
``(epoch, step)``: two runs that do the same work give bit-identical weights.

As a script (used by the SIGKILL test)::

    PYTHONPATH=.:tests python tests/reliability/reliability_harness.py RUN_DIR [--resume] [--kill-at EPOCH]

runs in ``RUN_DIR`` (holding ``pruning_config.json``); ``--kill-at`` sends SIGKILL to itself
right after ``prune()`` of that epoch — after the config file was written, before the epoch's
checkpoint — and ``--resume`` restarts from the newest checkpoint.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from torch import nn

import torch_pruning as tp
from models import SmallCNN

INPUT = (1, 3, 16, 16)
EPOCHS = 8
STEPS = 3

#: Channel masking from epoch 1 (the MAC target is met, and the masked channels removed, at
#: epoch 2), slice pruning at epochs 5-6. ``gamma > 1``: the channel ranking is cached between
#: steps, the hardest case for bit-exact resumption.
CONFIG: Dict[str, Any] = {
    "channel_sparsity_args": {
        "start_epoch": 1, "end_epoch": 4, "global_prune_rate": 0.8, "mac_target": 0.5,
        "max_pruning_rate": 0.8, "block_size": 4, "layers": "all", "input_shape": list(INPUT),
        "regularize": {"reg": 1e-3, "mac_reg": 1e-3, "gamma": 2.0},
    },
    "slice_sparsity_args": {
        "start_epoch": 5, "end_epoch": 6, "prune_rate": 0.5, "block_size": 4,
        "pruning_gradually": True, "disable_first_index": True, "reg": 1e-4,
    },
}


def config(**channel: Any) -> Dict[str, Any]:
    """:data:`CONFIG` with ``channel_sparsity_args`` fields overridden."""
    cfg = copy.deepcopy(CONFIG)
    cfg["channel_sparsity_args"].update(channel)
    return cfg


def new_model() -> nn.Module:
    """The run's model, with the same initial weights every time."""
    torch.manual_seed(0)
    return SmallCNN(width=16)


def make_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    """SGD with momentum and weight decay: both would revive masked weights without masks."""
    return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)


def batch(epoch: int, step: int, rank: int = 0, size: int = 8) -> tuple:
    """The data of one step: a function of ``(epoch, step, rank)`` only."""
    gen = torch.Generator().manual_seed(100_000 * rank + 1000 * epoch + step)
    return (torch.randn(size, *INPUT[1:], generator=gen),
            torch.randint(0, 10, (size,), generator=gen))


def checkpoint_path(run_dir: Path, epoch: int) -> Path:
    return Path(run_dir) / f"checkpoint_{epoch:03d}.pth"


def latest_checkpoint(run_dir: Path) -> Optional[Path]:
    found = sorted(Path(run_dir).glob("checkpoint_*.pth"))
    return found[-1] if found else None


def save_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                    pruner: Any, epoch: int) -> None:
    """``torch.save`` to a temp file, then rename: a killed job never leaves half a file."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "pruner": pruner.state_dict(), "epoch": epoch}, tmp)
    os.replace(tmp, path)


def train_epoch(model: nn.Module, pruner: Any, optimizer: torch.optim.Optimizer,
                epoch: int, rank: int = 0) -> None:
    """One epoch of the SPEC section 1 loop (without the epoch-end ``prune()``)."""
    criterion = nn.CrossEntropyLoss()
    model.train()
    for step in range(STEPS):
        x, y = batch(epoch, step, rank)
        loss = criterion(model(x), y)
        loss = loss + pruner.slice_regularize(model)
        optimizer.zero_grad()
        loss.backward()
        pruner.channel_regularize(model)
        optimizer.step()


def resume(run_dir: Path, ckpt: Path, log: Any = None, pruner_first: bool = False) -> tuple:
    """Rebuild model, pruner and optimizer from ``ckpt`` the way a restarted job does.

    ``pruner_first``: construct ``Pruning`` before loading the weights (the order in
    docs/channel_pruning.md) instead of after.
    """
    weights = torch.load(ckpt, weights_only=True)
    model = new_model()
    pruner = tp.Pruning(model, run_dir, log=log) if pruner_first else None
    try:
        model.load_state_dict(weights["model"])
    except Exception:  # the seed's snippet: the checkpoint has pruned shapes
        model, _, _ = tp.load_state_dict_pruned(model, weights["model"])
    if pruner is None:
        pruner = tp.Pruning(model, run_dir, log=log)
    pruner.load_state_dict(weights["pruner"])
    optimizer = make_optimizer(model)
    optimizer.load_state_dict(weights["optimizer"])
    return model, pruner, optimizer, int(weights["epoch"]) + 1


def train_run(run_dir: Path, *, resume_from: Optional[Path] = None,
              stop_after: Optional[int] = None, kill_at: Optional[int] = None, log: Any = None,
              pruner_first: bool = False, epochs: int = EPOCHS) -> Dict[str, Any]:
    """Train in ``run_dir`` (which holds the config), saving a checkpoint after every epoch.

    ``stop_after``: return after that epoch's checkpoint (an in-process "kill": everything not
    in the checkpoint or the config file is lost). ``kill_at``: SIGKILL this process right after
    that epoch's ``prune()``. Returns the final state (see :func:`final_state`).
    """
    run_dir = Path(run_dir)
    if resume_from is not None:
        model, pruner, optimizer, start = resume(run_dir, resume_from, log, pruner_first)
    else:
        model = new_model()
        pruner = tp.Pruning(model, run_dir, log=log)
        optimizer, start = make_optimizer(model), 0
    for epoch in range(start, epochs):
        train_epoch(model, pruner, optimizer, epoch)
        pruner.prune(model, epoch, log=log)
        if pruner.channel_pruner.reset_optimizer:
            optimizer = make_optimizer(model)
            pruner.channel_pruner.reset_optimizer = False
        if kill_at == epoch:
            os.kill(os.getpid(), signal.SIGKILL)
        save_checkpoint(checkpoint_path(run_dir, epoch), model, optimizer, pruner, epoch)
        if stop_after == epoch:
            break
    return final_state(model, pruner)


def final_state(model: nn.Module, pruner: Any) -> Dict[str, Any]:
    """What must not depend on interruptions: shapes, weights, masks, the config file."""
    masks = pruner.masks.state_dict(model)
    return {"shapes": {k: tuple(v.shape) for k, v in model.state_dict().items()},
            "weights": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "masks": {layer: {k: v.clone() for k, v in m.items()} for layer, m in masks.items()},
            "reached": bool(pruner.channel_pruner.reached_target)}


def diff_states(a: Dict[str, Any], b: Dict[str, Any], weights: bool = True) -> List[str]:
    """Human-readable differences between two :func:`final_state` results (empty: same)."""
    out = []
    if a["shapes"] != b["shapes"]:
        out += [f"shape {k}: {a['shapes'].get(k)} vs {b['shapes'].get(k)}"
                for k in sorted(set(a["shapes"]) | set(b["shapes"]))
                if a["shapes"].get(k) != b["shapes"].get(k)]
    if a["reached"] != b["reached"]:
        out.append(f"reached: {a['reached']} vs {b['reached']}")
    if a["masks"].keys() != b["masks"].keys():
        out.append(f"mask layers: {sorted(a['masks'])} vs {sorted(b['masks'])}")
    for layer in a["masks"].keys() & b["masks"].keys():
        ma, mb = a["masks"][layer], b["masks"][layer]
        if ma.keys() != mb.keys():
            out.append(f"{layer} masks on {sorted(ma)} vs {sorted(mb)}")
        out += [f"{layer} mask {k} differs" for k in ma.keys() & mb.keys()
                if not torch.equal(ma[k], mb[k])]
    if weights and not out:
        out += [f"weight {k} differs (max {float((a['weights'][k] - b['weights'][k]).abs().max())})"
                for k in a["weights"] if not torch.equal(a["weights"][k], b["weights"][k])]
    return out


def write_config(run_dir: Path, cfg: Dict[str, Any]) -> Path:
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "pruning_config.json").write_text(json.dumps(cfg, indent=4))
    return run_dir


def _main(argv: List[str]) -> None:
    import argparse

    torch.set_num_threads(1)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--kill-at", type=int, default=None)
    args = parser.parse_args(argv)
    ckpt = latest_checkpoint(args.run_dir) if args.resume else None
    state = train_run(args.run_dir, resume_from=ckpt, kill_at=args.kill_at)
    torch.save(state, args.run_dir / "final_state.pth")


if __name__ == "__main__":
    _main(sys.argv[1:])
