"""The dense network and its pruned subnetwork trained together, for ``bench_accuracy.py`` (a
lever study): in-place distillation, as slimmable networks train their narrowest width (Yu and
Huang 2019, "Universally Slimmable Networks"), with our channel pruner choosing the
subnetwork.

In every step of the window the batch goes through the dense network (its loss on the labels,
as always) and then through the subnetwork that our pruner's plan at the budget leaves: the
removed channels' consumers see those inputs at zero, which computes exactly what the removal
leaves, and no gradient of this pass reaches a removed channel. The subnetwork's loss is the
distillation from the dense network's output in the same step (detached), mixed with the labels
by ``alpha``, and is added to the dense loss. BatchNorm keeps the dense passes' running
statistics (no update in the subnetwork's pass); its scale and shift are shared. The plan is
ranked afresh at every epoch's end. There is no penalty: the dense network keeps learning
with every channel, and is the teacher.

At the window's end the last plan the subnetwork trained with is removed; before the run's end
the optimizer is new and the one-cycle restarts over what is left, at the run's end the
BatchNorm statistics are recomputed on training images instead (the subnetwork never had its
own).

A prototype: it drives the channel pruner through its private planning and commit steps
instead of ``prune()``, and the subnetwork's pass costs as much as the dense one (the channels
are gated, not sliced); the library has no such option.
"""

from __future__ import annotations

import contextlib
import copy
import json
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

import torch_pruning as tp
from benchmarks.columns import Columns, fresh_plan, plan_columns
from benchmarks.measured_widths import batch_statistics

__all__ = ["gated", "recalibrate_bn", "sandwich_loss", "sandwich_run"]

@contextlib.contextmanager
def gated(columns: Columns) -> Iterator[None]:
    """Inside the block every consumer in ``columns`` sees its listed input channels at zero
    (the forward of the network with those channels removed; their gradient through it is 0)."""
    def gate(idx: torch.Tensor) -> Callable[..., Any]:
        def hook(module: nn.Module, args: Tuple[torch.Tensor, ...]) -> Any:
            x = args[0]
            keep = torch.ones(x.shape[1], dtype=x.dtype, device=x.device)
            keep[idx] = 0
            return (x * keep.view(1, -1, *([1] * (x.dim() - 2))),) + tuple(args[1:])
        return hook

    handles = [m.register_forward_pre_hook(gate(idx)) for m, idx in columns.items()]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def recalibrate_bn(model: nn.Module, images: torch.Tensor, batch: int = 128) -> None:
    """Recompute every BatchNorm's running statistics as the average over ``images`` (in
    batches of ``batch``), the model's weights untouched; leaves the model in train mode."""
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches
    model.train()
    for i in range(0, len(images), batch):
        model(images[i:i + batch])
    for m, mom in zip(layers, momenta):
        m.momentum = mom


def sandwich_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, dense_out: torch.Tensor,
                  columns: Columns, alpha: float = 1.0, temperature: float = 1.0) -> torch.Tensor:
    """The subnetwork's loss on batch ``x``: ``alpha`` times the distillation from
    ``dense_out`` (detached, at ``temperature``) plus ``1 - alpha`` times the labels' loss."""
    with gated(columns), batch_statistics(model):
        out = model(x)
    t = temperature
    kd = F.kl_div(F.log_softmax(out / t, dim=1), F.softmax(dense_out.detach() / t, dim=1),
                  reduction="batchmean") * t * t
    return alpha * kd + (1 - alpha) * F.cross_entropy(out, y) if alpha < 1 else kd


def sandwich_run(run: Any, budget: float, override: Dict[str, Any], label: str,
                 merge: Callable[[Dict[str, Any], Dict[str, Any]], None]) -> Dict[str, Any]:
    """Train ``run`` (``bench_accuracy.Run``) with the subnetwork at ``budget`` alongside from
    ``sandwich.begin`` (fraction of the run, 0.3) to ``sandwich.end`` (0.65; 1.0 is the run's
    end), then remove it (``sandwich.alpha`` 1.0, ``sandwich.temperature`` 1.0,
    ``sandwich.weight`` 1.0 of the subnetwork's loss against the dense one's). With
    ``sandwich.kd_after`` (``tp.pat.Distillation``'s arguments: ``alpha`` 0.5, ``temperature``
    4) the fine-tuning after an early removal is distilled from the dense network as it was at
    the removal (a forward pass of it in every step). The result has the dense network's and
    the subnetwork's accuracy at the removal (``at_removal``; the subnetwork's with its
    BatchNorm statistics recomputed)."""
    sw = override["sandwich"]
    epochs = run.epochs
    first = int(sw.get("begin", 0.3) * epochs)
    last = min(epochs, int(round(sw.get("end", 0.65) * epochs))) - 1  # removal after this epoch
    alpha, temp = float(sw.get("alpha", 1.0)), float(sw.get("temperature", 1.0))
    weight = float(sw.get("weight", 1.0))
    example = torch.randn(1, 3, 32, 32)
    cfg = tp.pat.recommend_config(run.model, example, budget, epochs, lr_restart=True)
    merge(cfg, override.get("pat", {}))
    kd_after = sw.get("kd_after")
    state: Dict[str, Any] = {"plan": None, "columns": None, "changed": [], "teacher": None}
    seen: Dict[str, float] = {}  # accuracies at the removal
    with tempfile.TemporaryDirectory() as out:
        (Path(out) / "pruning_config.json").write_text(json.dumps(cfg))
        cp = tp.Pruning(run.model, out, example_inputs=example, log=None).channel_pruner

        def loss_fn(x: torch.Tensor, dense_out: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
            if state["teacher"] is not None:  # fine-tuning, distilled from the dense network
                return state["teacher"](loss, dense_out, x)
            if state["columns"] is None:
                return loss
            return loss + weight * sandwich_loss(run.model, x, run.targets, dense_out,
                                                 state["columns"], alpha, temp)

        def replan() -> None:
            plan, ratio = fresh_plan(cp, budget)
            old = state["columns"]
            state["plan"], state["columns"] = (plan, ratio), plan_columns(cp, plan)
            if old is not None:  # how many consumer inputs the new ranking swapped
                state["changed"].append(sum(
                    len(set(state["columns"].get(m, torch.tensor([])).tolist())
                        ^ set(idx.tolist())) for m, idx in old.items()))

        def epoch_end(epoch: int) -> None:
            if first - 1 <= epoch < last:
                replan()
            if epoch == last:
                plan, ratio = state["plan"]
                state["columns"] = None
                seen["dense"] = run.accuracy()
                early = epoch < epochs - 1
                if kd_after is not None and early:  # a frozen copy of the dense network
                    state["teacher"] = tp.pat.Distillation(None, teacher=run.model, **kd_after)
                cp._commit(plan, ratio, epoch, None)
                cp._finish(run.model, epoch, None, physical=True)
                # the subnetwork as the removal leaves it, BatchNorm recomputed (on a copy
                # when it trains on; at the run's end on the model itself)
                alone = copy.deepcopy(run.model) if early else run.model
                recalibrate_bn(alone, run.data[0][:2048])
                seen["removed"] = run.accuracy(alone)
                if early:
                    run.optimizer = run.make_optimizer()
                    run.rewind(override.get("restart_peak", 1.0))

        if first == 0:
            replan()
        run.train(loss_fn=loss_fn, epoch_end=epoch_end, label=label)
    swaps: List[int] = state["changed"]
    return {"reached": bool(cp.reached_target), "config": cfg, "swaps": swaps,
            "at_removal": seen}
