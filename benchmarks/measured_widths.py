"""Per-layer widths chosen by the measured loss, for ``bench_accuracy.py`` (a lever study).

The recipe prunes the same fraction of every layer (the ninth and tenth rounds found every
ranking across layers by weight norms or loss estimates worse). This chooses how many channels
each layer gives up by *measuring* it, in the manner of NetAdapt and AutoSlim but on the
network being trained, without a slimmable network: from the network as it is, take away one
chunk (1/16 of the layer's units, the lowest-ranked ones) from each layer in turn, measure the
loss on a fixed set of training images with the chunk gone, and keep the chunk that costs the
least loss per MAC saved; repeat until the MAC budget is met (lazily: a layer's offer is
measured again only when it comes out on top after another layer's chunk was taken).
BatchNorm normalizes with the dense network's running statistics or, as after recalibrating
it to the pruned network, with each batch's own (:func:`batch_statistics`).

The fractions it ends with are a *profile*: while it is in force, our channel pruner's
per-layer ratio ``r`` becomes ``r * f_layer / max(f)`` for every layer, so its MAC landing, its
focused penalty's targets and its masking follow the measured widths; which channels go inside
a layer is still the pruner's ranking. :func:`shared_groups` names the residual streams, for a
fixed profile that prunes them less than the other layers (what the measurement chose on the
ResNet-14).

A prototype: it replaces the selection function the channel pruner calls (local pruning only,
where each layer is ranked alone) and reads the pruner's groups and cost; the library has no
such option.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Callable, Dict, Iterator, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

import torch_pruning.pat.channel.pruner as pruner_module
from torch_pruning.pat.channel import ranking

from benchmarks.columns import Columns, zeroed

__all__ = ["batch_statistics", "measured_fractions", "shared_groups", "profiled_selection"]

logger = logging.getLogger("bench_accuracy")


@torch.no_grad()
def _loss(model: nn.Module, batches: Sequence[tuple]) -> float:
    return sum(float(F.cross_entropy(model(x), y)) for x, y in batches) / len(batches)


@contextlib.contextmanager
def batch_statistics(model: nn.Module) -> Iterator[None]:
    """BatchNorm normalizes with each batch's own statistics inside the block (as after a
    recalibration to the pruned network), its running statistics left as they were."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    kept = [(m.training, m.momentum, m.num_batches_tracked.clone()
             if m.num_batches_tracked is not None else None) for m in norms]
    for m in norms:
        m.train()
        m.momentum = 0.0  # running = (1 - 0) * running + 0 * batch: unchanged
    try:
        yield
    finally:
        for m, (training, momentum, tracked) in zip(norms, kept):
            m.train(training)
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)


def measured_fractions(cp: object, model: nn.Module, batches: Sequence[tuple], budget: float,
                       columns_of: Callable[[Dict[int, torch.Tensor]], Columns],
                       chunk: float = 1 / 16, stats: str = "running") -> Dict[int, float]:
    """Per group number, the fraction of units to prune, chosen greedily by the measured loss
    (without gradients, on ``batches``) per MAC saved until the MACs reach ``budget`` (a
    fraction of the original); each step takes ``chunk`` of one group's units, its
    lowest-ranked ones.

    Args:
        cp: the channel pruner (its groups, scores, cap and cost are read).
        model: the network ``cp`` prunes, as it is now (nothing pruned yet).
        batches: (inputs, labels) pairs the loss is measured on.
        budget: the MACs to reach, a fraction of the original.
        columns_of: the consumers' input columns a plan removes.
        chunk: the fraction of a group's units taken per step.
        stats: "running": BatchNorm as in evaluation (the dense network's statistics);
            "batch": each batch's own statistics (as after recalibrating BatchNorm).
    """
    scores = cp._scores()
    order = {g.number: torch.argsort(scores[g.number].float(), stable=True) for g in cp.groups}
    cap = cp.rules.max_pruning_rate
    taken = {g.number: 0 for g in cp.groups}

    def plan(counts: Dict[int, int]) -> Dict[int, torch.Tensor]:
        out = {}
        for g in cp.groups:
            mask = torch.zeros(g.units, dtype=torch.bool)
            mask[order[g.number][:counts[g.number]]] = True
            out[g.number] = mask
        return out

    def recalibrated() -> contextlib.AbstractContextManager:
        return batch_statistics(model) if stats == "batch" else contextlib.nullcontext()

    def measure(counts: Dict[int, int]) -> tuple:
        p = plan(counts)
        with zeroed(columns_of(p)), recalibrated():
            return _loss(model, batches), cp._cost(p)

    def offer(number: int) -> Optional[tuple]:
        """(loss per MAC saved, counts, loss, cost) of taking the next chunk of a group."""
        g = groups[number]
        n = taken[number] + max(1, round(chunk * g.units))
        if n > int(cap * g.units) or g.units - n < g.min_units:
            return None
        trial = {**taken, number: n}
        t_loss, t_cost = measure(trial)
        if t_cost >= cost:
            return None
        return (t_loss - loss) / (cost - t_cost), trial, t_loss, t_cost

    groups = {g.number: g for g in cp.groups}
    was_training = model.training
    model.eval()
    steps: List[int] = []
    try:
        loss, cost = measure(taken)
        target = budget * cp.base_cost
        # lazy greedy: offers are priced once and re-priced only when they come out on top
        stale = {number: offer(number) for number in groups}
        fresh = set(groups)
        while cost > target:
            live = {n: o for n, o in stale.items() if o is not None}
            if not live:  # every group at its cap
                break
            number = min(live, key=lambda n: live[n][0])
            if number not in fresh:
                stale[number] = offer(number)
                fresh.add(number)
                continue
            _, taken, loss, cost = live[number]
            steps.append(number)
            stale[number] = offer(number)
            fresh = {number}
    finally:
        model.train(was_training)
    fractions = {g.number: taken[g.number] / g.units for g in cp.groups}
    logger.info("  measured widths: %d steps, MACs %.3fx, loss %.3f, pruned per group %s",
                len(steps), cost / cp.base_cost, loss,
                " ".join(f"{f:.2f}" for f in fractions.values()))
    return fractions


def shared_groups(cp: object) -> List[int]:
    """Numbers of the groups whose channels more than one layer produces (a residual stream:
    the stem or a shortcut and the blocks' last convolutions that add into it)."""
    shared = []
    for g in cp.groups:
        producers = {id(sl.module) for sl in g.slices if sl.name == "weight" and sl.dim == 0
                     and isinstance(sl.module, (nn.Conv2d, nn.Linear))}
        if len(producers) > 1:
            shared.append(g.number)
    return shared


@contextlib.contextmanager
def profiled_selection(profile: Dict[int, float]) -> Iterator[None]:
    """Inside the block, our channel pruner prunes group ``g`` at ``ratio * profile[g]``
    instead of ``ratio`` (local pruning; groups not in ``profile`` keep ``ratio``). The
    profile may be filled in while the block runs."""
    uniform = ranking.select_units

    def select(groups: Sequence, scores: Dict[int, torch.Tensor],
               pruned: Dict[int, torch.Tensor], ratio: float,
               rules: ranking.SelectionRules) -> Dict[int, torch.Tensor]:
        if not profile:
            return uniform(groups, scores, pruned, ratio, rules)
        if rules.global_pruning or rules.isomorphic:
            raise ValueError("profiled_selection needs local pruning (global_pruning and "
                             "isomorphic off)")
        out: Dict[int, torch.Tensor] = {}
        for g in groups:
            out.update(uniform([g], scores, pruned, min(1.0, ratio * profile.get(g.number, 1.0)),
                               rules))
        return out

    pruner_module.select_units = select
    try:
        yield
    finally:
        pruner_module.select_units = uniform
