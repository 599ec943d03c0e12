"""Accuracy at a MAC budget on CIFAR-10 data: PAT against what a user can do in three lines.

Every method trains for the same number of epochs (SGD with Nesterov momentum, one-cycle
learning rate, random crop and flip) on an 8,000-image stratified split of the 10,000 CIFAR-10
training images in ``shared/data/cifar10_train_10k.npz`` and is scored on the other 2,000
(validation; the split is fixed, seed 0). Methods:

* ``unpruned``: the full network.
* ``oneshot``: upstream ``MetaPruner`` (L2 magnitude, same ratio per layer) at mid-training,
  then the rest of the schedule as fine-tuning.
* ``sparse``: upstream ``GroupNormPruner`` sparse training (``regularize()`` every step) for
  the first half, pruned at mid-training (group L2), then fine-tuning.
  For both, ``--override '{"rewind": true}'`` restarts the one-cycle at the pruning, as ours
  does with ``lr_restart`` (and ``upstream_reg`` sets the sparse training's ``reg``).
* ``thin``: a thinner network (every width scaled) trained from scratch.
* ``pat``: our five-line loop with ``tp.pat.recommend_config(model, inputs, budget, epochs)``
  (``--override`` JSON changes it for studying levers: ``recipe`` updates ``RECIPE``, ``pat``
  merges into the config, ``carry`` carries the optimizer state and ``rewind`` restarts the
  one-cycle at the removal; ``lr_restart`` asks for ``recommend_config(..., lr_restart=True)``
  and restarts the one-cycle at the removal, ``restart_peak`` scales the restarted cycle's
  peak learning rate; ``cycles: 2`` ends a first one-cycle at the removal and starts a second
  over the rest).
* Staged pruning, for every pruning method: ``--override '{"stages": [[0.5, 9]], "rewind":
  true}'`` first prunes to 0.5 of the MACs at the end of epoch 9 (ours masks over that epoch
  and the one before, then removes; one-shot and sparse training prune at once), restarts the
  one-cycle there (with ``rewind`` or ``lr_restart``), then prunes to the budget at the usual
  time. Ours starts a fresh ``Pruning`` on the reduced model for each stage.
* ``pat_kd``: the same plus opt-in distillation from the dense model (``tp.pat.Distillation``):
  by default the teacher is a snapshot taken when masking starts; with ``--override '{"kd":
  {"teacher": "trained"}}'`` it is the unpruned network of the same seed trained to the end by
  an earlier ``unpruned`` run with the same ``--teachers`` folder (a second training run: not
  the same epoch budget, reported apart).
* ``thin_kd``: the thin network distilled from that trained teacher (``--teachers``; ``kd``
  settings from ``--override``), to compare against ``pat_kd`` with the same teacher.
* ``feedback``: upstream's one-shot pruning with masks with feedback before it (Dynamic
  Pruning with Feedback, Lin et al. 2020, for channels): from ``feedback.begin`` to
  ``feedback.end`` (fractions of the run, default 0.3 and 0.5) every training forward pass
  sees MetaPruner's plan removed (its consumers' input columns at zero) while the gradient
  computed there updates the dense weights; the plan, at a ratio growing to the budget's, is
  recomputed every ``feedback.every`` steps (16), then removed at the window's end
  (``rewind`` restarts the one-cycle there; ``feedback.mode: "inputs"`` gates the consumers'
  inputs straight-through instead). ``--methods pat --override '{"feedback": {...}}'`` does
  the same with our pruner's plan at a falling MAC level in place of the penalty and the
  masking (``feedback.penalty: true`` keeps the penalty), and always restarts.
* Measured per-layer widths, for ours: ``--override '{"widths": {}}'`` measures, at the start
  of the focused penalty (before masking without one; ``widths.at`` an epoch), how much each
  layer should give up, greedily by the loss on ``widths.images`` (512) training images per MAC
  saved (BatchNorm with its running statistics, or with ``widths.stats: "batch"`` each batch's
  own), ``widths.chunk`` (1/16) of a layer at a time, and our pruner follows that profile
  instead of the same ratio per layer (``benchmarks/measured_widths.py``; ``widths.blend``
  below 1 moves it only that far from the same ratio per layer, ``widths.level`` measures
  down to that MAC level instead of the budget and scales the shape). ``widths.shared: s``
  measures nothing: the groups more than one layer produces (residual streams) are pruned at
  ``s`` times the ratio of the others, which is what the measurement chose on the ResNet-14.
* The dense network and its subnetwork trained together, for ours: ``--override '{"sandwich":
  {...}}'`` (``benchmarks/sandwich.py``): from ``sandwich.begin`` (0.3) to ``sandwich.end``
  (0.65, 1.0 the run's end) every step adds the loss of the subnetwork our pruner's plan at the
  budget leaves, distilled from the dense network's output of the same step; then the plan is
  removed (before the run's end with a restart, at its end with BatchNorm recalibrated).
* Weight decay, for every method: ``--override '{"wd": w}'`` for the whole run (5e-4 unless
  set), ``{"ft_wd": w}`` for every optimizer made at a removal (the reduced model's).

Budgets are fractions of the unpruned network's MACs; upstream's methods search the channel
ratio that lands on the budget (bisection on a copy), the thin net the width.

    python benchmarks/bench_accuracy.py --data ../shared/data/cifar10_train_10k.npz \\
        --results runs/accuracy.jsonl --write-docs docs/benchmarks.md

Each finished run is appended to ``--results`` (JSON lines) and skipped when the script is run
again with the same settings, so a sweep can be interrupted and resumed. Progress goes to the
terminal (one line per epoch). The table (mean, min, max validation accuracy over seeds and the
MACs reached) is printed and, with ``--write-docs``, written into the page between markers.

Is a lead larger than the spread of seeds? ``--margins TAG`` prints ours (the ``pat`` runs of
``TAG`` in ``--results``) minus every other method's runs there, paired by seed, with a 95%
interval of the mean difference; ``--lever-table`` lists every setting of ours:

    python benchmarks/bench_accuracy.py --data ../shared/data/cifar10_train_10k.npz \\
        --results runs/accuracy.jsonl --margins default
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import logging
import math
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
import torch_pruning as tp  # noqa: E402
from benchmarks.columns import (Columns, fresh_plan, our_columns, plan_columns,  # noqa: E402
                                put_back, zero_columns)
from benchmarks.measured_widths import (measured_fractions, profiled_selection,  # noqa: E402
                                        shared_groups)
from benchmarks.sandwich import sandwich_run  # noqa: E402

logger = logging.getLogger("bench_accuracy")
METHODS = ("unpruned", "oneshot", "sparse", "thin", "pat", "pat_kd", "thin_kd", "feedback")
MEAN = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
STD = torch.tensor([0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1)
DOC_BEGIN, DOC_END = "<!-- bench_accuracy begin -->", "<!-- bench_accuracy end -->"


# ---------------------------------------------------------------------------- data
def load_cifar(path: Path) -> Tuple[torch.Tensor, ...]:
    """(x_train, y_train, x_val, y_val): 8,000 / 2,000 stratified split, normalized float."""
    from PIL import Image

    if not path.exists():
        raise SystemExit(f"{path}: no such file. Pass --data PATH to cifar10_train_10k.npz "
                         "(shared/data/ beside the checkout; see its README).")
    cache = Path(tempfile.gettempdir()) / f"bench_accuracy_{path.stat().st_size}.pt"
    if cache.exists():
        return torch.load(cache, weights_only=True)
    d = np.load(path)
    x = np.stack([np.asarray(Image.open(io.BytesIO(d["jpeg"][a:b].tobytes())).convert("RGB"))
                  for a, b in zip(d["offsets"][:-1], d["offsets"][1:])])
    y = torch.as_tensor(d["labels"], dtype=torch.long)
    x = torch.as_tensor(x).permute(0, 3, 1, 2).float().div(255).sub(MEAN).div(STD)
    g = torch.Generator().manual_seed(0)
    val = torch.cat([idx[torch.randperm(len(idx), generator=g)[:len(idx) // 5]]
                     for idx in (torch.nonzero(y == c).flatten() for c in range(10))])
    train = torch.ones(len(y), dtype=torch.bool)
    train[val] = False
    split = (x[train], y[train], x[val], y[val])
    torch.save(split, cache)
    return split


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random 32x32 crop of the 4-pixel zero-padded image and a random horizontal flip."""
    n = x.shape[0]
    padded = F.pad(x, (4, 4, 4, 4))
    dx, dy = torch.randint(0, 9, (2, n), generator=g)
    out = torch.stack([padded[i, :, dy[i]:dy[i] + 32, dx[i]:dx[i] + 32] for i in range(n)])
    flip = torch.rand(n, generator=g) < 0.5
    out[flip] = out[flip].flip(3)
    return out


# ---------------------------------------------------------------------------- models
def _conv_bn(cin: int, cout: int, stride: int = 1) -> List[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True)]


class VGG(nn.Module):
    """VGG-style CNN for 32x32 images: 7 conv-BN-ReLU, 3 poolings, a linear classifier.

    ``widths`` are the conv widths; the default (width 16) has about 11.3M MACs.
    """

    def __init__(self, widths: Sequence[int] = (16, 16, 32, 32, 64, 64, 128)) -> None:
        super().__init__()
        layers: List[nn.Module] = []
        cin = 3
        for i, w in enumerate(widths):
            layers += _conv_bn(cin, w)
            if i in (1, 3, 5):
                layers.append(nn.MaxPool2d(2))
            cin = w
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class Block(nn.Module):
    """Basic residual block (two 3x3 convs; 1x1 projection when the shape changes)."""

    def __init__(self, cin: int, mid: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, mid, 3, stride, 1, bias=False), nn.BatchNorm2d(mid)
        self.conv2, self.bn2 = nn.Conv2d(mid, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.short = (nn.Sequential() if stride == 1 and cin == cout else
                      nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                    nn.BatchNorm2d(cout)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.short(x))


class ResNet(nn.Module):
    """A small CIFAR ResNet (ResNet-14: 3 stages of 2 basic blocks).

    ``widths`` = (stem, stage 1, stage 2, stage 3, inner width scale); default width 16.
    """

    def __init__(self, widths: Sequence[float] = (16, 16, 32, 64, 1.0)) -> None:
        super().__init__()
        stem, *stages, inner = widths
        stem, stages = int(stem), [int(s) for s in stages]
        self.stem = nn.Sequential(*_conv_bn(3, stem))
        blocks, cin = [], stem
        for i, w in enumerate(stages):
            for j in range(2):
                blocks.append(Block(cin, max(1, round(w * inner)), w,
                                    2 if (i > 0 and j == 0) else 1))
                cin = w
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


BASE_WIDTHS = {"vgg": (16, 16, 32, 32, 64, 64, 128), "resnet": (16, 16, 32, 64, 1.0)}


def build(arch: str, scale: float = 1.0) -> nn.Module:
    """The network of ``arch`` with every width multiplied by ``scale`` (at least 1)."""
    if arch == "vgg":
        return VGG([max(1, round(w * scale)) for w in BASE_WIDTHS["vgg"]])
    *w, inner = BASE_WIDTHS["resnet"]
    return ResNet([max(1, round(v * scale)) for v in w] + [inner])


def macs_of(model: nn.Module) -> float:
    was = model.training
    macs = tp.utils.count_ops_and_params(model, torch.randn(1, 3, 32, 32))[0]
    model.train(was)
    return float(macs)


# ---------------------------------------------------------------------------- training
class Run:
    """One training run: the user's loop with optional hooks at step and epoch ends."""

    def __init__(self, model: nn.Module, data: Tuple[torch.Tensor, ...], epochs: int,
                 seed: int, lr: float = 0.1, batch: int = 128, wd: float = 5e-4) -> None:
        self.model, self.data, self.epochs = model, data, epochs
        self.lr, self.batch, self.wd = lr, batch, wd
        self.gen = torch.Generator().manual_seed(seed)
        self.steps_per_epoch = math.ceil(len(data[1]) / batch)
        self.step = self.cycle_start = 0
        self.targets: Optional[torch.Tensor] = None  # the current batch's labels
        self.cycle_end: Optional[int] = None  # the first cycle ends early ("cycles": 2)
        self.peak = lr  # the current cycle's peak learning rate
        self.ft_wd: Optional[float] = None  # weight decay after a removal ("ft_wd")
        self.optimizer = self.make_optimizer()

    def make_optimizer(self) -> torch.optim.Optimizer:
        """SGD with Nesterov momentum; every optimizer after the first is made at a removal,
        and takes ``ft_wd`` as its weight decay when that is set."""
        first = not hasattr(self, "optimizer")
        wd = self.wd if first or self.ft_wd is None else self.ft_wd
        return torch.optim.SGD(self.model.parameters(), lr=self.lr, momentum=0.9,
                               nesterov=True, weight_decay=wd)

    def lr_at(self, step: int) -> float:
        """One-cycle: linear warm-up over 15% of the run (or of what is left after
        :meth:`rewind`), cosine down to 0 at the end of the run."""
        first = self.cycle_start
        total = (self.cycle_end or self.epochs * self.steps_per_epoch) - first
        warm = max(1, int(0.15 * total))
        step -= first
        if step < warm:
            return self.peak * (0.1 + 0.9 * step / warm)
        done = min(1.0, (step - warm) / max(1, total - warm))
        return self.peak * 0.5 * (1 + math.cos(math.pi * done))

    def rewind(self, peak: float = 1.0) -> None:
        """Start a new one-cycle over the rest of the run (learning-rate rewinding), peaking
        at ``peak`` times the first cycle's learning rate."""
        self.cycle_start, self.cycle_end, self.peak = self.step, None, self.lr * peak

    def train(self, loss_fn: Optional[Callable[[torch.Tensor, torch.Tensor, torch.Tensor],
                                               torch.Tensor]] = None,
              after_backward: Optional[Callable[[], None]] = None,
              epoch_end: Optional[Callable[[int], None]] = None, label: str = "") -> None:
        x_train, y_train = self.data[0], self.data[1]
        for epoch in range(self.epochs):
            start = time.perf_counter()
            self.model.train()
            order = torch.randperm(len(y_train), generator=self.gen)
            total = 0.0
            for i in range(0, len(order), self.batch):
                idx = order[i:i + self.batch]
                xb, yb = augment(x_train[idx], self.gen), y_train[idx]
                self.targets = yb  # the batch's labels, for loss functions that need them
                for group in self.optimizer.param_groups:
                    group["lr"] = self.lr_at(self.step)
                out = self.model(xb)
                loss = F.cross_entropy(out, yb)
                if loss_fn is not None:
                    loss = loss_fn(xb, out, loss)
                self.optimizer.zero_grad()
                loss.backward()
                if after_backward is not None:
                    after_backward()
                self.optimizer.step()
                total += float(loss.detach())
                self.step += 1
            if epoch_end is not None:
                epoch_end(epoch)
            logger.info("  %s epoch %2d/%d  loss %.3f  val %.2f%%  MACs %.2fM  %.0fs", label,
                        epoch + 1, self.epochs, total / self.steps_per_epoch, self.accuracy(),
                        macs_of(self.model) / 1e6, time.perf_counter() - start)

    @torch.no_grad()
    def accuracy(self, model: Optional[nn.Module] = None) -> float:
        """Validation accuracy (%) of the run's model, or of ``model``; left in train mode."""
        model = self.model if model is None else model
        x, y = self.data[2], self.data[3]
        model.eval()
        correct = sum(int((model(x[i:i + 500]).argmax(1) == y[i:i + 500]).sum())
                      for i in range(0, len(y), 500))
        model.train()
        return 100.0 * correct / len(y)


# ---------------------------------------------------------------------------- methods
def _meta_pruner(model: nn.Module, importance: Any, ratio: float) -> Any:
    """Upstream's MetaPruner over ``model`` at ``ratio`` (the classifier kept); the model's
    train/eval mode is put back (upstream's tracing leaves it in eval mode)."""
    ignored = [m for m in model.modules() if isinstance(m, nn.Linear)]
    was = model.training
    pruner = tp.pruner.MetaPruner(model, torch.randn(1, 3, 32, 32), importance=importance,
                                  pruning_ratio=ratio, ignored_layers=ignored)
    model.train(was)
    return pruner


def upstream_ratio(model: nn.Module, importance: Any, budget: float, base: float) -> float:
    """The channel ratio (the same in every layer) at which upstream's MetaPruner brings
    ``model`` to ``budget`` x ``base`` MACs, found by bisection on copies."""
    lo, hi = 0.0, 0.99
    for _ in range(14):
        mid = (lo + hi) / 2
        target = copy.deepcopy(model)
        _meta_pruner(target, importance, mid).step()
        if macs_of(target) > budget * base:
            lo = mid
        else:
            hi = mid
    return hi


def upstream_prune(model: nn.Module, importance: Any, budget: float, base: float) -> None:
    """Prune ``model`` in place with upstream's MetaPruner to ``budget`` x ``base`` MACs,
    the same ratio in every layer."""
    _meta_pruner(model, importance, upstream_ratio(model, importance, budget, base)).step()


def upstream_columns(model: nn.Module, importance: Any, ratio: float) -> Columns:
    """For every consumer, the input channels upstream's MetaPruner would remove at ``ratio``
    (nothing is removed)."""
    columns: Columns = {}
    if ratio <= 0:
        return columns
    pruner = _meta_pruner(model, importance, ratio)
    for group in pruner.step(interactive=True):
        for dep, idxs in group:
            if (pruner.DG.is_in_channel_pruning_fn(dep.handler)
                    and isinstance(dep.target.module, (nn.Conv2d, nn.Linear))):
                columns[dep.target.module] = torch.as_tensor(list(idxs), dtype=torch.long)
    return columns


class FeedbackMasks:
    """Masks with feedback (Dynamic Pruning with Feedback, Lin et al. 2020, for channels):
    every forward pass in training sees the network with the planned channels removed, their
    consumers' input columns at zero, and the gradient computed there updates the dense
    weights, the zeroed columns included; the plan is recomputed from the dense weights every
    few steps, so a channel the feedback makes important again comes back.

    ``planner(amount)`` gives the columns to zero (:func:`upstream_columns` at a channel ratio,
    :func:`our_columns` at a MAC level). ``mode`` "weights" is the above; "inputs" instead
    zeroes the consumers' inputs with a straight-through gradient, which trains the removed
    channels' producers as if they were kept and leaves the consumers' columns as they were.
    """

    def __init__(self, model: nn.Module, planner: Callable[[float], Columns],
                 mode: str = "weights") -> None:
        self.model, self.planner, self.mode = model, planner, mode
        self.columns: Columns = {}
        self.saved: Dict[nn.Module, torch.Tensor] = {}
        self.handles = [model.register_forward_pre_hook(self._mask_weights),
                        model.register_forward_hook(self._restore_after_eval)]

    def plan(self, amount: float) -> None:
        """Mask the columns ``planner(amount)`` names, ranked on the dense weights."""
        self.restore()
        self.columns = {}  # nothing masked while the planner traces and ranks
        for h in self.handles[2:]:
            h.remove()
        del self.handles[2:]
        self.columns = self.planner(amount)
        if self.mode == "inputs":
            for module, idx in self.columns.items():
                self.handles.append(module.register_forward_pre_hook(self._gate_inputs(idx)))

    @staticmethod
    def _gate_inputs(idx: torch.Tensor) -> Callable[..., Any]:
        def hook(module: nn.Module, args: Tuple[torch.Tensor, ...]) -> Any:
            x = args[0]
            keep = torch.ones(x.shape[1], dtype=x.dtype)
            keep[idx] = 0
            keep = keep.view(1, -1, *([1] * (x.dim() - 2)))
            return (x * keep + (x - x.detach()) * (1 - keep),) + tuple(args[1:])
        return hook

    def _mask_weights(self, module: nn.Module, args: Any) -> None:
        if self.mode != "weights" or self.saved or not self.columns:
            return
        self.saved = zero_columns(self.columns)

    def _restore_after_eval(self, module: nn.Module, args: Any, out: Any) -> None:
        if not (module.training and torch.is_grad_enabled()):
            self.restore()

    def restore(self) -> None:
        """Put the dense weights back (after ``backward()``, before the optimizer's step)."""
        put_back(self.columns, self.saved)
        self.saved = {}

    def remove(self) -> None:
        self.restore()
        for h in self.handles:
            h.remove()
        self.columns, self.handles = {}, []


def train_through_masks(run: "Run", masks: FeedbackMasks, fb: Dict[str, Any],
                        amount: Callable[[float], float], remove: Callable[[int], None],
                        label: str, after_backward: Optional[Callable[[], None]] = None,
                        epoch_end: Optional[Callable[[int], None]] = None) -> None:
    """Train ``run`` with ``masks`` on from ``fb["begin"]`` to ``fb["end"]`` (fractions of the
    run, default 0.3 and 0.5), planning ``amount(progress)`` every ``fb["every"]`` steps (16),
    then take the masks off and call ``remove(epoch)`` at the end of the window's last epoch.
    ``after_backward`` and ``epoch_end`` run as well (on the dense weights)."""
    first = int(fb.get("begin", 0.3) * run.epochs)
    last = int(fb.get("end", 0.5) * run.epochs) - 1  # removal at the end of this epoch
    every = int(fb.get("every", 16))
    window = (last + 1 - first) * run.steps_per_epoch
    state = {"on": False, "step": 0}

    def refresh() -> None:
        masks.plan(amount(min(1.0, (state["step"] + 1) / window)))

    def step_end() -> None:
        if state["on"]:
            masks.restore()  # the gradient was computed masked; the step updates dense weights
        if after_backward is not None:
            after_backward()
        if state["on"]:
            state["step"] += 1
            if state["step"] % every == 0:
                refresh()

    def end_of(epoch: int) -> None:
        if epoch_end is not None:
            epoch_end(epoch)
        if epoch == first - 1:
            state["on"] = True
            refresh()
        if epoch == last:
            state["on"] = False
            masks.remove()
            remove(epoch)

    run.train(after_backward=step_end, epoch_end=end_of, label=label)


def ours_feedback_run(run: "Run", budget: float, override: Dict[str, Any],
                      label: str) -> Dict[str, Any]:
    """Ours with masks with feedback instead of the penalty and hard masking: our pruner
    (``recommend_config(..., lr_restart=True)`` plus ``override["pat"]``) ranks and allocates
    the channels at a MAC level that falls from 1 to ``budget`` (as 1 - (1 - progress)^3) over
    the window; at its end the plan at the budget, ranked afresh, is removed, the optimizer is
    new and the one-cycle restarts. With ``feedback.penalty`` the config's channel penalty runs
    as well (on the dense weights, over its own epochs, focused on the plan at the budget).

    A prototype: it drives the channel pruner through its private planning, commit and
    bookkeeping steps instead of ``prune()``; the library has no feedback option."""
    fb = override.get("feedback", {})
    example = torch.randn(1, 3, 32, 32)
    cfg = tp.pat.recommend_config(run.model, example, budget, run.epochs, lr_restart=True)
    _merge(cfg, override.get("pat", {}))
    with tempfile.TemporaryDirectory() as out:
        (Path(out) / "pruning_config.json").write_text(json.dumps(cfg))
        cp = tp.Pruning(run.model, out, example_inputs=example, log=None).channel_pruner
        masks = FeedbackMasks(run.model, lambda level: our_columns(cp, level))

        def penalty() -> None:
            if fb.get("penalty") and not cp.reached_target:
                cp.regularize(run.model)

        def bookkeeping(epoch: int) -> None:  # prune()'s epoch end, without its masking
            if fb.get("penalty"):
                cp._end_epoch(epoch)

        def remove(epoch: int) -> None:
            plan, ratio = fresh_plan(cp, budget)
            cp._commit(plan, ratio, epoch, None)
            cp._finish(run.model, epoch, None, physical=True)
            run.optimizer = run.make_optimizer()
            run.rewind(override.get("restart_peak", 1.0))

        train_through_masks(run, masks, fb, lambda p: 1 - (1 - budget) * (1 - (1 - p) ** 3),
                            remove, label, after_backward=penalty, epoch_end=bookkeeping)
        return {"reached": bool(cp.reached_target), "config": cfg}


def feedback_run(run: "Run", budget: float, base: float, override: Dict[str, Any],
                 label: str) -> None:
    """Upstream's one-shot pruning after masks with feedback: MetaPruner's plan at a ratio
    growing to the budget's (as 1 - (1 - progress)^3) over the window, removed at its end
    (``rewind`` restarts the one-cycle there)."""
    fb = override.get("feedback", {})
    importance = tp.importance.MagnitudeImportance(p=2)
    final = upstream_ratio(run.model, importance, budget, base)
    masks = FeedbackMasks(run.model, lambda r: upstream_columns(run.model, importance, r),
                          fb.get("mode", "weights"))

    def remove(epoch: int) -> None:
        _meta_pruner(run.model, importance, final).step()
        run.optimizer = run.make_optimizer()
        if override.get("rewind"):
            run.rewind(override.get("restart_peak", 1.0))

    train_through_masks(run, masks, fb, lambda p: final * (1 - (1 - p) ** 3), remove, label)


def measured_profile(cp: Any, run: "Run", budget: float, widths: Dict[str, Any],
                     seed: int) -> Dict[int, float]:
    """Our pruner's per-layer ratio profile from :func:`measured_fractions` on
    ``widths["images"]`` (512) training images fixed by ``seed``, un-augmented; each group's
    fraction over the largest one, or with ``widths["blend"]`` (1) that far from the same
    ratio everywhere; measured down to the budget or to ``widths["level"]`` (a shallower
    level, where the loss still tells the layers apart, gives the profile's shape)."""
    x, y = run.data[0], run.data[1]
    pick = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    pick = pick[:int(widths.get("images", 512))]
    batches = [(x[i], y[i]) for i in pick.split(256)]
    level = float(widths.get("level", budget))  # measured down to this MAC level
    fractions = measured_fractions(cp, run.model, batches, level,
                                   lambda plan: plan_columns(cp, plan),
                                   chunk=float(widths.get("chunk", 1 / 16)),
                                   stats=widths.get("stats", "running"))
    top = max(fractions.values())
    blend = float(widths.get("blend", 1.0))  # 0: the same ratio everywhere, 1: as measured
    return ({number: 1 - blend + blend * f / top for number, f in fractions.items()}
            if top > 0 else {})


def thin_scale(arch: str, budget: float) -> float:
    """The width scale whose network has the MACs closest to ``budget`` of the full one."""
    base = macs_of(build(arch))
    best = min((abs(macs_of(build(arch, s / 200)) / base - budget), s / 200)
               for s in range(10, 201))
    return best[1]


def teacher_path(teachers: Optional[Path], arch: str, seed: int, epochs: int) -> Path:
    """Where the ``unpruned`` run of ``arch``/``seed``/``epochs`` keeps its trained weights."""
    if teachers is None:
        raise SystemExit("--override kd.teacher \"trained\" needs --teachers DIR (the folder the "
                         "unpruned runs saved their weights to)")
    return teachers / f"{arch}_seed{seed}_e{epochs}.pt"


def trained_teacher(arch: str, seed: int, epochs: int, teachers: Optional[Path]) -> nn.Module:
    """The unpruned network an earlier ``unpruned`` run trained and saved to ``teachers``."""
    path = teacher_path(teachers, arch, seed, epochs)
    if not path.exists():
        raise SystemExit(f"{path}: no trained teacher; run --methods unpruned --archs {arch} "
                         f"--seeds {seed} --epochs {epochs} --teachers {teachers} first")
    model = build(arch)
    model.load_state_dict(torch.load(path, map_location="cpu"))
    return model


def distillation(pruner: Any, override: Dict[str, Any], arch: str, seed: int, epochs: int,
                 teachers: Optional[Path], *, trained: bool = False) -> Any:
    """``tp.pat.Distillation`` with ``override["kd"]``'s settings; the teacher is the trained
    unpruned net when ``kd.teacher`` is ``"trained"`` or ``trained`` is set, else a snapshot."""
    kd_args = dict(override.get("kd", {}))
    if kd_args.pop("teacher", None) == "trained" or trained:
        kd_args["teacher"] = trained_teacher(arch, seed, epochs, teachers)
    return tp.pat.Distillation(pruner, **kd_args)


def run_method(method: str, arch: str, budget: float, seed: int, epochs: int,
               data: Tuple[torch.Tensor, ...], override: Dict[str, Any],
               teachers: Optional[Path] = None) -> Dict[str, Any]:
    torch.manual_seed(seed)
    base = macs_of(build(arch))
    label = f"{arch} {method} {budget}x seed {seed}"
    if method in ("thin", "thin_kd"):
        model = build(arch, thin_scale(arch, budget))
        run = Run(model, data, epochs, seed, wd=override.get("wd", 5e-4))
        kd = (distillation(None, override, arch, seed, epochs, teachers, trained=True)
              if method == "thin_kd" else None)

        def distilled(x: torch.Tensor, out_: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
            return kd(loss, out_, x)
        run.train(loss_fn=distilled if kd is not None else None, label=label)
        return {"acc": run.accuracy(), "macs": macs_of(run.model) / base}
    model = build(arch)
    run = Run(model, data, epochs, seed, wd=override.get("wd", 5e-4))
    run.ft_wd = override.get("ft_wd")
    if method == "unpruned":
        run.train(label=label)
        if teachers is not None:
            teachers.mkdir(parents=True, exist_ok=True)
            torch.save(run.model.state_dict(), teacher_path(teachers, arch, seed, epochs))
        return {"acc": run.accuracy(), "macs": 1.0}
    if method == "feedback":
        feedback_run(run, budget, base, override, label)
        return {"acc": run.accuracy(), "macs": macs_of(run.model) / base}
    if method in ("oneshot", "sparse"):
        mid = epochs // 2
        if method == "oneshot":
            importance = tp.importance.MagnitudeImportance(p=2)
            reg = None
        else:
            importance = tp.importance.GroupMagnitudeImportance(p=2)

            def sparse_trainer() -> Any:  # built again on the reduced model after a stage
                return tp.pruner.GroupNormPruner(run.model, torch.randn(1, 3, 32, 32),
                                                 importance,
                                                 reg=override.get("upstream_reg", 1e-4),
                                                 ignored_layers=[run.model.head[-1]])
            reg = sparse_trainer()
        state = {"sparse": reg is not None, "reg": reg}

        def after_backward() -> None:
            if state["sparse"]:
                state["reg"].regularize(run.model)

        stages = {int(at): float(level) for level, at in override.get("stages", [])}

        def epoch_end(epoch: int) -> None:
            if epoch in stages:  # an intermediate pruning, then on as after the last one
                upstream_prune(run.model, importance, stages[epoch], base)
                run.optimizer = run.make_optimizer()
                if state["sparse"]:
                    state["reg"] = sparse_trainer()
                if override.get("rewind"):
                    run.rewind(override.get("restart_peak", 1.0))
            if epoch == mid - 1:
                upstream_prune(run.model, importance, budget, base)
                run.optimizer = run.make_optimizer()
                if override.get("rewind"):  # the same restart ours gets with lr_restart
                    run.rewind(override.get("restart_peak", 1.0))
                state["sparse"] = False

        run.train(after_backward=after_backward, epoch_end=epoch_end, label=label)
        return {"acc": run.accuracy(), "macs": macs_of(run.model) / base}
    if method == "pat" and "sandwich" in override:
        extra = sandwich_run(run, budget, override, label, _merge)
        return dict(acc=run.accuracy(), macs=macs_of(run.model) / base, **extra)
    if method == "pat" and "feedback" in override:
        extra = ours_feedback_run(run, budget, override, label)
        return dict(acc=run.accuracy(), macs=macs_of(run.model) / base, **extra)
    # ours: the five-line loop (plus opt-in distillation for pat_kd)
    example = torch.randn(1, 3, 32, 32)
    from torch_pruning.pat.tools import recipe

    recipe.RECIPE.update(override.get("recipe", {}))  # lever studies: the recipe's settings
    cfg = tp.pat.recommend_config(model, example, budget, epochs,
                                  lr_restart=bool(override.get("lr_restart")))
    _merge(cfg, override.get("pat", {}))
    if override.get("cycles") == 2:  # a first one-cycle that ends at the removal, then rewind
        run.cycle_end = (cfg["channel_sparsity_args"]["end_epoch"] + 1) * run.steps_per_epoch
    stages = [dict(copy.deepcopy(cfg), level=float(level), at=int(at))
              for level, at in override.get("stages", [])]
    for stage in stages:  # intermediate removals: mask over ``at - 1`` and ``at``
        ch = stage["channel_sparsity_args"]
        ch.update(mac_target=stage["level"], start_epoch=stage["at"] - 1, end_epoch=stage["at"])
    with tempfile.TemporaryDirectory() as out:
        def start(stage_cfg: Dict[str, Any], name: str) -> Any:
            folder = Path(out) / name
            folder.mkdir()
            (folder / "pruning_config.json").write_text(json.dumps(
                {k: v for k, v in stage_cfg.items() if k not in ("level", "at")}))
            return tp.Pruning(run.model, str(folder), example_inputs=example, log=None)

        reached_so_far = [1.0]  # the MACs (fraction of the original) the model has now
        staged = [0]  # intermediate stages finished

        def next_pruner() -> Any:
            if stages:
                stage = stages.pop(0)
                stage["channel_sparsity_args"]["mac_target"] = stage["level"] / reached_so_far[0]
                return start(stage, f"stage{stage['at']}")
            final = copy.deepcopy(cfg)
            final["channel_sparsity_args"]["mac_target"] = budget / reached_so_far[0]
            return start(final, "final")

        pruner = next_pruner()
        widths = override.get("widths") or {}
        if "widths" in override and override.get("stages"):  # a profile names one pruner's groups
            raise ValueError("--override: widths and stages cannot be combined")
        profile: Dict[int, float] = {}  # per-layer widths (filled in when measured)
        if "shared" in widths:  # a fixed profile, nothing measured
            shared = shared_groups(pruner.channel_pruner)
            profile.update({g.number: float(widths["shared"]) if g.number in shared else 1.0
                            for g in pruner.channel_pruner.groups})
        measuring = "widths" in override and "shared" not in widths
        kd = (distillation(pruner, override, arch, seed, epochs, teachers)
              if method == "pat_kd" else None)

        def loss_fn(x: torch.Tensor, out_: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
            loss = loss + pruner.slice_regularize(run.model)
            return kd(loss, out_, x, run.model) if kd is not None else loss

        def epoch_end(epoch: int) -> None:
            nonlocal pruner
            pruner.prune(run.model, epoch)
            if measuring and epoch == measure_at:
                profile.update(measured_profile(pruner.channel_pruner, run, budget, widths, seed))
            if pruner.channel_pruner.reset_optimizer:
                if override.get("carry"):
                    run.optimizer = pruner.carry_optimizer_state(run.optimizer)
                else:
                    run.optimizer = run.make_optimizer()
                if (override.get("rewind") or override.get("lr_restart")
                        or override.get("cycles") == 2):
                    run.rewind(override.get("restart_peak", 1.0))
                pruner.channel_pruner.reset_optimizer = False
                if staged[0] < len(override.get("stages", [])):  # on to the next stage
                    staged[0] += 1
                    reached_so_far[0] = macs_of(run.model) / base
                    pruner = next_pruner()

        ch = cfg["channel_sparsity_args"]
        # measured before the focused penalty starts, or before masking without one
        measure_at = widths.get("at", ch["regularize"]["begin_epoch"] or ch["start_epoch"]) - 1
        with profiled_selection(profile):
            run.train(loss_fn=loss_fn,
                      after_backward=lambda: pruner.channel_regularize(run.model),
                      epoch_end=epoch_end, label=label)
        reached = bool(pruner.channel_pruner.reached_target)
    return {"acc": run.accuracy(), "macs": macs_of(run.model) / base, "reached": reached,
            "config": cfg}


def _merge(into: Dict[str, Any], extra: Dict[str, Any]) -> None:
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _merge(into[k], v)
        else:
            into[k] = v


# ---------------------------------------------------------------------------- results
def load_results(path: Optional[Path]) -> List[Dict[str, Any]]:
    if path is None or not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def table(rows: List[Dict[str, Any]], archs: Sequence[str], budgets: Sequence[float],
          methods: Sequence[str], tag: str) -> str:
    names = {"unpruned": "unpruned", "oneshot": "upstream one-shot MetaPruner + fine-tune",
             "sparse": "upstream GroupNormPruner sparse + prune + fine-tune",
             "thin": "thinner net from scratch", "pat": "**ours: five-line PAT, recommend_config**",
             "pat_kd": "**ours + opt-in distillation**",
             "thin_kd": "thinner net from scratch + the same distillation"}
    out = []
    for arch in archs:
        head = "| method |" + "".join(f" {b}x MACs: mean (min-max), MACs reached |"
                                      for b in budgets)
        out += [f"**{arch}** ({macs_of(build(arch)) / 1e6:.1f}M MACs)", "", head,
                "|---|" + "---|" * len(budgets)]
        for m in methods:
            cells = []
            for b in budgets:
                sel = [r for r in rows if r["arch"] == arch and r["method"] == m
                       and r["tag"] == tag and (m == "unpruned" or r["budget"] == b)]
                if not sel:
                    cells.append(" - ")
                    continue
                accs = [r["acc"] for r in sel]
                macs = statistics.mean(r["macs"] for r in sel)
                cells.append(f" {statistics.mean(accs):.2f} ({min(accs):.2f}-{max(accs):.2f}), "
                             f"{macs:.3f}x, n={len(sel)} ")
            out.append(f"| {names.get(m, m)} |" + "|".join(cells) + "|")
        out.append("")
    return "\n".join(out)


def lever_table(rows: List[Dict[str, Any]]) -> str:
    """One line per setting (``--tag``) of ``pat`` runs: mean, min, max accuracy and MACs."""
    out = ["| setting (--tag) | model | budget | override | seeds | accuracy: mean (min-max) "
           "| MACs reached |", "|---|---|---|---|---|---|---|"]
    keys = sorted({(r["tag"], r["arch"], r["budget"], r["method"], r["epochs"]) for r in rows
                   if r["method"].startswith("pat")}, key=lambda k: (k[1], -k[2], k[0]))
    for tag, arch, budget, method, epochs in keys:
        sel = [r for r in rows if (r["tag"], r["arch"], r["budget"], r["method"],
                                   r["epochs"]) == (tag, arch, budget, method, epochs)]
        accs = [r["acc"] for r in sel]
        override = json.dumps(sel[0].get("override", {})) or "{}"
        out.append(f"| {tag}{' (+KD)' if method == 'pat_kd' else ''} | {arch}, {epochs} epochs "
                   f"| {budget}x | `{override}` | {len(sel)} | {statistics.mean(accs):.2f} "
                   f"({min(accs):.2f}-{max(accs):.2f}) "
                   f"| {statistics.mean(r['macs'] for r in sel):.3f}x |")
    return "\n".join(out)


def margins(rows: List[Dict[str, Any]], tag: str) -> str:
    """Ours (the ``pat`` runs of ``tag``) against every other method's runs, paired by seed.

    One line per model, epochs, budget and alternative (method and tag): ours minus the
    alternative over the seeds both ran, mean and per-seed range, and a 95% interval of the mean
    difference (Student's t; two common seeds at least). The goal's lead is read on the best
    alternative's line (listed first); the ``unpruned`` line gives the gap to the full network.
    """
    from scipy.stats import t as student

    out = ["| model, epochs | budget | against (method, tag) | seeds | ours minus theirs: mean "
           "(per seed, min to max) | 95% interval |", "|---|---|---|---|---|---|"]
    ours = [r for r in rows if r["method"] == "pat" and r["tag"] == tag]
    for arch, epochs, budget in sorted({(r["arch"], r["epochs"], r["budget"]) for r in ours},
                                       key=lambda k: (k[0], k[1], -k[2])):
        mine = {r["seed"]: r["acc"] for r in ours
                if (r["arch"], r["epochs"], r["budget"]) == (arch, epochs, budget)}
        others: Dict[Tuple[str, str], Dict[int, float]] = {}
        for r in rows:
            if (r["arch"] == arch and r["epochs"] == epochs and not r["method"].startswith("pat")
                    and (r["budget"] == budget or r["method"] == "unpruned")):
                others.setdefault((r["method"], r["tag"]), {})[r["seed"]] = r["acc"]
        lines = []
        for (method, other_tag), theirs in others.items():
            diffs = [mine[s] - theirs[s] for s in sorted(mine.keys() & theirs.keys())]
            if not diffs:
                continue
            mean = statistics.mean(diffs)
            interval = "-"
            if len(diffs) > 1:
                half = student.ppf(0.975, len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(
                    len(diffs))
                interval = f"{mean - half:+.2f} to {mean + half:+.2f}"
            lines.append((method == "unpruned", mean,
                          f"| {arch}, {epochs} | {budget}x | {method}, {other_tag} | {len(diffs)} "
                          f"| {mean:+.2f} ({min(diffs):+.2f} to {max(diffs):+.2f}) "
                          f"| {interval} |"))
        out += [line for *_, line in sorted(lines, key=lambda x: x[:2])]
    return "\n".join(out)


def write_docs(page: Path, text: str, command: str) -> None:
    block = (f"{DOC_BEGIN}\nMeasured with `{command}` (validation accuracy on the 2,000 held-out "
             f"images, %).\n\n{text}\n{DOC_END}")
    current = page.read_text() if page.exists() else ""
    if DOC_BEGIN in current:
        current = re.sub(re.escape(DOC_BEGIN) + ".*?" + re.escape(DOC_END), lambda _: block,
                         current, flags=re.S)
    else:
        current = current.rstrip() + "\n\n## Accuracy at a MAC budget (CIFAR-10 data)\n\n" + block + "\n"
    tmp = page.with_suffix(".tmp")
    tmp.write_text(current)
    tmp.replace(page)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True,
                        help="path to cifar10_train_10k.npz")
    parser.add_argument("--archs", nargs="+", default=["vgg", "resnet"], choices=list(BASE_WIDTHS))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--budgets", nargs="+", type=float, default=[0.25, 0.1])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--override", type=json.loads, default={},
                        help='JSON for studying levers, e.g. \'{"pat": {"channel_sparsity_args":'
                             ' {"global_pruning": false}}, "carry": true, "kd": {"alpha": 0.5}}\'')
    parser.add_argument("--tag", default="default", help="name of this setting in --results")
    parser.add_argument("--results", type=Path, default=None, help="JSON-lines file of runs")
    parser.add_argument("--write-docs", type=Path, default=None)
    parser.add_argument("--teachers", type=Path, default=None,
                        help="folder where unpruned runs save their weights and pat_kd with "
                             "kd.teacher \"trained\" loads them")
    parser.add_argument("--lever-table", action="store_true",
                        help="print the table of every --tag's pat runs in --results and exit")
    parser.add_argument("--margins", metavar="TAG", default=None,
                        help="print ours (the pat runs of TAG in --results) minus every other "
                             "method, paired by seed, with a 95%% interval, and exit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("torch_pruning").setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    rows = load_results(args.results)
    if args.lever_table:
        print(lever_table(rows))
        return 0
    if args.margins is not None:
        print(margins(rows, args.margins))
        return 0
    data = None
    todo = [(a, m, b, s) for s in args.seeds for a in args.archs
            for b in args.budgets for m in args.methods if m != "unpruned" or b == args.budgets[0]]
    for n, (arch, method, budget, seed) in enumerate(todo, 1):
        budget = 1.0 if method == "unpruned" else budget
        key = dict(arch=arch, method=method, budget=budget, seed=seed, epochs=args.epochs,
                   tag=args.tag)
        if any(all(r.get(k) == v for k, v in key.items()) for r in rows):
            continue
        if data is None:
            data = load_cifar(args.data)
        logger.info("[%d/%d] %s %s at %sx MACs, seed %d", n, len(todo), arch, method, budget, seed)
        start = time.perf_counter()
        result = run_method(method, arch, budget, seed, args.epochs, data, args.override,
                            args.teachers)
        row = dict(key, **result, override=args.override, seconds=time.perf_counter() - start)
        logger.info("[%d/%d] -> %.2f%% at %.3fx MACs (%.0fs)", n, len(todo), row["acc"],
                    row["macs"], row["seconds"])
        rows.append(row)
        if args.results is not None:
            args.results.parent.mkdir(parents=True, exist_ok=True)
            with args.results.open("a") as f:
                f.write(json.dumps(row) + "\n")
    text = table([r for r in rows if r.get("epochs") == args.epochs], args.archs, args.budgets,
                 args.methods, args.tag)
    print(text)
    if args.write_docs is not None:
        command = (f"python benchmarks/bench_accuracy.py --data cifar10_train_10k.npz "
                   f"--archs {' '.join(args.archs)} --methods {' '.join(args.methods)} "
                   f"--budgets {' '.join(map(str, args.budgets))} "
                   f"--seeds {' '.join(map(str, args.seeds))} --epochs {args.epochs}")
        write_docs(args.write_docs, text, command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
