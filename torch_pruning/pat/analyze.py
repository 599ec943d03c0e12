"""How channel L2 norms shrink over a regularization run, and when to start pruning.

``python analyze.py RUN_DIR`` (or ``python -m torch_pruning.pat analyze RUN_DIR``) reads the
run's checkpoints in epoch order, computes one L2 norm per prunable channel, counts the
channels below a threshold per checkpoint, suggests the first epoch where that fraction reaches
the target rate, and draws one picture of the norm histograms across epochs.

What a "channel norm" is:

* without ``--model``: the L2 norm of each output filter of every 4-D weight (Conv2d) in the
  checkpoint, or of the convs the config's ``layers`` names;
* with ``--model module:factory``: the L2 norm of each channel of each dependency group of the
  selected convs, over every parameter coupled to it (conv filter and bias, norm-layer affine
  parameters, the consumers' input slices), as upstream's ``GroupMagnitudeImportance(p=2,
  group_reduction="sum", bias=True)`` sums it, then square-rooted.

The default threshold is 10% of the median channel norm of the earliest checkpoint; the target
rate is ``--rate`` or the config's ``channel_sparsity_args.global_prune_rate``. The suggested
epoch is the first checkpoint whose fraction of channels below the threshold is >= the rate.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import re
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from .config_io import ConfigSource, LoadedConfig, PruningConfigError, load_config
from .inspect_model import (ToolError, conv_dependency_groups, load_model, make_inputs,
                            parse_input_shape)
from .masks import strip_module_prefix

__all__ = ["AnalyzeError", "Checkpoint", "CHECKPOINT_SUFFIXES", "epoch_of", "find_checkpoints",
           "load_weights", "conv_channel_norms", "GroupNorms", "RunAnalysis", "analyze_run",
           "format_table", "plot_analysis", "main", "register"]

logger = logging.getLogger(__name__)

CHECKPOINT_SUFFIXES = (".pt", ".pth")
DEFAULT_THRESHOLD_FRACTION = 0.1
_EPOCH_WORD = re.compile(r"epoch[_\-.]?(\d+)", re.IGNORECASE)
_TRAILING = re.compile(r"(?:^|[_\-.\s]|ckpt|checkpoint|model|ep|e)(\d+)$", re.IGNORECASE)


class AnalyzeError(ToolError):
    """The run folder or a checkpoint in it cannot be analyzed; the message names the file."""


# --------------------------------------------------------------------------- checkpoints
@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint file and the epoch number read from its name."""

    epoch: int
    path: Path


def epoch_of(name: str) -> Optional[int]:
    """The epoch number in a checkpoint's file name, or None.

    ``epoch_003.pt``, ``checkpoint_epoch3.pth``, ``ckpt-12.pt``, ``model_10.pth`` give 3, 3,
    12, 10; a number glued to a word (``resnet18.pth``) is not an epoch.

    Example:
        >>> [epoch_of(n) for n in ["epoch_003.pt", "ckpt-12.pt", "resnet18.pth", "best.pt"]]
        [3, 12, None, None]
    """
    stem = Path(name).stem
    match = _EPOCH_WORD.search(stem) or _TRAILING.search(stem)
    return int(match.group(1)) if match else None


def find_checkpoints(run_dir: Union[str, Path]) -> List[Checkpoint]:
    """The ``.pt``/``.pth`` files of ``run_dir`` with an epoch in their name, by epoch.

    Looks in the folder itself, or in its subfolders when the folder holds none.
    """
    run = Path(run_dir)
    if not run.exists():
        raise AnalyzeError(f"{run}: no such folder")
    if not run.is_dir():
        raise AnalyzeError(f"{run}: not a folder; pass the run folder that holds the checkpoints")
    entries = sorted(run.iterdir())
    if not entries:
        raise AnalyzeError(f"{run}: the folder is empty; pass the folder your training script "
                           "saves its checkpoints to")
    files = [p for p in entries if p.is_file() and p.suffix in CHECKPOINT_SUFFIXES]
    if not files:
        files = sorted(p for p in run.rglob("*") if p.is_file() and p.suffix in CHECKPOINT_SUFFIXES)
    if not files:
        shown = ", ".join(p.name for p in entries[:8]) + (", ..." if len(entries) > 8 else "")
        raise AnalyzeError(f"{run}: no checkpoints (*.pt, *.pth) in the folder; it holds: {shown}")
    found = []
    for p in files:
        epoch = epoch_of(p.name)
        if epoch is None:
            logger.warning("skipping %s: no epoch number in its name", p)
        else:
            found.append(Checkpoint(epoch, p))
    if not found:
        raise AnalyzeError(
            f"{run}: none of the {len(files)} checkpoint files has an epoch number in its name "
            f"({', '.join(p.name for p in files[:5])}); name them like epoch_003.pt, "
            "checkpoint_epoch3.pth, ckpt-3.pt or model_3.pth")
    found.sort(key=lambda c: (c.epoch, str(c.path)))
    epochs = [c.epoch for c in found]
    for e in sorted({e for e in epochs if epochs.count(e) > 1}):
        logger.warning("several checkpoints for epoch %d: %s", e,
                       ", ".join(str(c.path.name) for c in found if c.epoch == e))
    return found


def load_weights(path: Union[str, Path]) -> Dict[str, torch.Tensor]:
    """The state dict stored in ``path`` (``module.`` prefixes removed).

    Accepts a plain state dict or one wrapped as ``{"model": sd}`` / ``{"state_dict": sd}``
    (other keys such as optimizer state are ignored). Loads with ``weights_only=True``.
    """
    path = Path(path)
    try:
        obj: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure means the same thing to the user
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip()
        if "weights only" in text.lower() or "weights_only" in text.lower():
            raise AnalyzeError(f"{path}: cannot read the checkpoint with weights_only=True: it "
                               "pickles objects other than tensors (e.g. a whole model); save "
                               "model.state_dict() instead") from e
        detail = text.splitlines()[0] if text else "no detail"
        raise AnalyzeError(f"{path}: cannot read the checkpoint ({type(e).__name__}: {detail}); "
                           "is it truncated, or not written by torch.save?") from e
    for _ in range(3):
        if not isinstance(obj, Mapping):
            break
        inner = next((obj[k] for k in ("state_dict", "model", "model_state_dict")
                      if isinstance(obj.get(k), Mapping)), None)
        if inner is None or any(isinstance(v, torch.Tensor) and k.endswith(".weight")
                                for k, v in obj.items()):
            break
        obj = inner
    if not isinstance(obj, Mapping):
        raise AnalyzeError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    weights = {strip_module_prefix(str(k)): v for k, v in obj.items()
               if isinstance(v, torch.Tensor)}
    if not weights:
        raise AnalyzeError(f"{path}: holds no tensors (keys: {', '.join(map(str, list(obj)[:6]))})")
    return weights


def conv_channel_norms(weights: Mapping[str, torch.Tensor],
                       layers: Optional[Sequence[str]] = None,
                       source: str = "") -> Dict[str, torch.Tensor]:
    """Per output channel L2 norms of the 4-D (Conv2d) weights, by layer name.

    Example:
        >>> w = torch.zeros(2, 1, 1, 1); w[1] = 3.0
        >>> conv_channel_norms({"conv.weight": w})
        {'conv': tensor([0., 3.])}
    """
    convs = {k[:-len(".weight")]: v for k, v in weights.items()
             if k.endswith(".weight") and v.dim() == 4}
    if layers is not None:
        missing = [strip_module_prefix(n) for n in layers if strip_module_prefix(n) not in convs]
        if missing:
            hints = []
            for n in missing:
                close = difflib.get_close_matches(n, list(convs), n=3, cutoff=0.5)
                hints.append(f"'{n}'" + (f" (close matches: {', '.join(close)})" if close else ""))
            raise AnalyzeError(f"{source}: no 4-D conv weight for the configured layer(s) "
                               f"{', '.join(hints)}")
        convs = {strip_module_prefix(n): convs[strip_module_prefix(n)] for n in layers}
    if not convs:
        raise AnalyzeError(f"{source}: no 4-D conv weights in the checkpoint")
    return {name: w.detach().float().flatten(1).norm(dim=1) for name, w in convs.items()}


class GroupNorms:
    """Group L2 norms of the selected convs' output channels, using the model's dependency graph.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1))
        >>> norms = GroupNorms(net, torch.randn(1, 1, 8, 8))
        >>> norms(net.state_dict())["0"].shape
        torch.Size([4])
    """

    def __init__(self, model: nn.Module, example_inputs: Any,
                 layers: Union[str, Sequence[str]] = "all") -> None:
        import torch_pruning as tp

        self.model = model.eval()
        by_name = {strip_module_prefix(n): m for n, m in model.named_modules()}
        if layers == "all":
            convs = None
        else:
            convs, bad = [], []
            for n in layers:
                m = by_name.get(strip_module_prefix(n))
                if isinstance(m, nn.Conv2d):
                    convs.append(m)
                else:
                    close = difflib.get_close_matches(
                        strip_module_prefix(n),
                        [k for k, v in by_name.items() if isinstance(v, nn.Conv2d)], n=3)
                    what = f"a {type(m).__name__}" if m is not None else "not in the model"
                    bad.append(f"'{n}' is {what}" + (f" (Conv2d layers: {', '.join(close)})"
                                                     if close else ""))
            if bad:
                raise AnalyzeError("channel_sparsity_args.layers: " + "; ".join(bad))
        self.groups = [(g, group) for g, group in conv_dependency_groups(model, example_inputs, convs)
                       if g.prunable]
        if not self.groups:
            raise AnalyzeError("no prunable dependency group among the selected convs")
        self._importance = tp.importance.GroupMagnitudeImportance(
            p=2, group_reduction="sum", normalizer=None, bias=True)

    @torch.no_grad()
    def __call__(self, weights: Mapping[str, torch.Tensor], source: str = "") -> Dict[str, torch.Tensor]:
        """Load ``weights`` into the model and return the norms per group (keyed by source conv)."""
        try:
            missing, _ = self.model.load_state_dict(dict(weights), strict=False)
        except RuntimeError as e:
            raise AnalyzeError(f"{source}: the weights do not fit --model: "
                               f"{str(e).splitlines()[-1].strip()}") from e
        params = {n for n, _ in self.model.named_parameters()}
        missing = [k for k in missing if k in params]
        if missing:
            raise AnalyzeError(f"{source}: lacks {len(missing)} parameters of --model, e.g. "
                               f"{', '.join(missing[:3])}; was it saved from another model?")
        return {g.members[0]: self._importance(group).clamp_min(0).sqrt()
                for g, group in self.groups}


# --------------------------------------------------------------------------- analysis
@dataclass
class RunAnalysis:
    """Norms per checkpoint, counts below the threshold and the suggested start epoch."""

    run_dir: Path
    checkpoints: List[Checkpoint]
    norms: List[np.ndarray]
    layers: List[str]
    threshold: float
    threshold_note: str
    rate: Optional[float]
    rate_note: str
    mode: str
    suggested: Optional[int] = None  # index into checkpoints
    suggestion: str = ""
    small: List[int] = field(default_factory=list)

    @property
    def totals(self) -> List[int]:
        """Channels per checkpoint."""
        return [len(n) for n in self.norms]

    @property
    def fractions(self) -> List[float]:
        """Fraction of channels below the threshold, per checkpoint."""
        return [s / t if t else 0.0 for s, t in zip(self.small, self.totals)]

    @property
    def suggested_epoch(self) -> Optional[int]:
        """The suggested ``start_epoch``, or None."""
        return None if self.suggested is None else self.checkpoints[self.suggested].epoch


def _rate_from(rate: Optional[float], loaded: Optional[LoadedConfig]) -> tuple:
    if rate is not None:
        return rate, "--rate"
    section = loaded.config.channel_sparsity_args if loaded else None
    if section is not None and section.global_prune_rate > 0:
        where = loaded.path if loaded and loaded.path else "the config"
        return section.global_prune_rate, f"global_prune_rate in {where}"
    return None, ""


def _suggest(result: RunAnalysis) -> None:
    rate, thr = result.rate, result.threshold
    if rate is None:
        result.suggestion = ("No suggestion: no target rate; pass --rate or a config with "
                             "channel_sparsity_args.global_prune_rate.")
        return
    fr = result.fractions
    for i, f in enumerate(fr):
        if f >= rate - 1e-12:
            ck = result.checkpoints[i]
            before = (f" (epoch {result.checkpoints[i - 1].epoch}: {fr[i - 1]:.1%})" if i else
                      " (already at the first checkpoint)")
            result.suggested = i
            result.suggestion = (
                f"Suggested start_epoch: {ck.epoch}. It is the first checkpoint where at least "
                f"{rate:.0%} of the channels (target rate, {result.rate_note}) have an L2 norm "
                f"below {thr:.3g}: {result.small[i]}/{result.totals[i]} = {f:.1%}{before}.")
            return
    best = int(np.argmax(fr))
    result.suggestion = (
        f"No checkpoint reaches the target: {rate:.0%} of the channels ({result.rate_note}) "
        f"below {thr:.3g}; the most is {fr[best]:.1%} at epoch {result.checkpoints[best].epoch}. "
        "Regularize longer or harder (regularize.reg), or raise --threshold.")


def analyze_run(run_dir: Union[str, Path], *, config: ConfigSource = None,
                model: Optional[nn.Module] = None, example_inputs: Any = None,
                threshold: Optional[float] = None, rate: Optional[float] = None,
                progress: bool = True) -> RunAnalysis:
    """Analyze the checkpoints of ``run_dir`` (see the module docs for the rules).

    ``config`` defaults to ``run_dir``'s ``pruning_config.json`` when there is one. With
    ``model`` (and ``example_inputs``, default from the config's ``input_shape``) norms are
    per dependency group; without, per conv output filter.

    Example:
        >>> result = analyze_run("runs/digits", rate=0.5)          # doctest: +SKIP
        >>> result.suggested_epoch, result.suggestion              # doctest: +SKIP
    """
    from tqdm import tqdm

    checkpoints = find_checkpoints(run_dir)
    loaded = load_config(config if config is not None else run_dir)
    if loaded is None and config is not None:
        raise AnalyzeError(f"--config {config}: no such config file")
    section = loaded.config.channel_sparsity_args if loaded else None
    layers = section.layers if section is not None else "all"
    group_norms = None
    if model is not None:
        if example_inputs is None:
            if section is None or not section.input_shape:
                raise AnalyzeError("--model needs an input shape: pass --input-shape or set "
                                   "channel_sparsity_args.input_shape in the config")
            shape = section.input_shape
            example_inputs = make_inputs(shape if isinstance(shape[0], list) else [shape],
                                         section.container)
        group_norms = GroupNorms(model, example_inputs, layers)
    norms, names = [], []
    with tqdm(checkpoints, desc="checkpoints", unit="ckpt", disable=not progress,
              file=sys.stderr) as bar:  # closed (newline) before an error is reported
        for ck in bar:
            weights = load_weights(ck.path)
            per_layer = (group_norms(weights, str(ck.path)) if group_norms is not None else
                         conv_channel_norms(weights, None if layers == "all" else layers,
                                            str(ck.path)))
            names = names or list(per_layer)
            norms.append(torch.cat(list(per_layer.values())).double().numpy())
    rate, rate_note = _rate_from(rate, loaded)
    if threshold is None:
        first = norms[0][np.isfinite(norms[0])]
        threshold = DEFAULT_THRESHOLD_FRACTION * float(np.median(first)) if first.size else 0.0
        note = (f"{DEFAULT_THRESHOLD_FRACTION:.0%} of the median channel norm at epoch "
                f"{checkpoints[0].epoch}; set it with --threshold")
    else:
        note = "from --threshold"
    result = RunAnalysis(
        run_dir=Path(run_dir), checkpoints=checkpoints, norms=norms, layers=names,
        threshold=threshold, threshold_note=note, rate=rate, rate_note=rate_note,
        mode="dependency groups of --model" if group_norms is not None else "conv output filters")
    result.small = [int(np.sum(n < threshold)) for n in norms]
    _suggest(result)
    logger.info("%s: %s", run_dir, result.suggestion)
    return result


def format_table(result: RunAnalysis) -> str:
    """The per-checkpoint table the CLI prints, ending with the suggestion."""
    width = max(len(c.path.name) for c in result.checkpoints)
    n_layers = len(result.layers)
    lines = [f"Channel L2 norms in {result.run_dir} ({len(result.checkpoints)} checkpoints; "
             f"{result.mode}: {n_layers} layer(s))",
             f"threshold {result.threshold:.4g} ({result.threshold_note})"
             + (f"; target rate {result.rate:.0%} ({result.rate_note})" if result.rate else ""),
             "",
             f"{'epoch':>6}  {'checkpoint':<{width}}  {'below threshold':>16}  {'fraction':>8}"]
    for i, ck in enumerate(result.checkpoints):
        mark = "  <- suggested start" if i == result.suggested else ""
        if i and result.totals[i] != result.totals[i - 1]:
            mark += (f"  (channel count {result.totals[i - 1]} -> {result.totals[i]}: "
                     "channels were removed)")
        lines.append(f"{ck.epoch:>6}  {ck.path.name:<{width}}  "
                     f"{result.small[i]:>7} / {result.totals[i]:<6}  "
                     f"{100 * result.fractions[i]:>7.1f}%{mark}")
    lines += ["", result.suggestion]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- picture
def _log_range(result: RunAnalysis) -> tuple:
    positive = np.concatenate([n[(n > 0) & np.isfinite(n)] for n in result.norms] + [np.ones(0)])
    lo = min(positive.min(), result.threshold) if positive.size else result.threshold / 10
    hi = max(positive.max(), result.threshold) if positive.size else result.threshold * 10
    lo = lo if lo > 0 else hi / 1e6
    return np.log10(lo) - 0.15, np.log10(hi) + 0.15


def plot_analysis(result: RunAnalysis, out: Union[str, Path]) -> Path:
    """Draw the norm histograms across checkpoints and the fraction below threshold to ``out``.

    Left: one histogram of log-scaled channel norms per checkpoint, earliest at the top
    (stacked ridge lines; a heatmap when there are more than 30 checkpoints), with the
    threshold marked. Right: the share of channels below the threshold per checkpoint and the
    target rate; the suggested start epoch is highlighted. Written atomically (PNG).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.gridspec import GridSpec

    from .report import save_figure

    n = len(result.checkpoints)
    lo, hi = _log_range(result)
    edges = np.logspace(lo, hi, 61)
    has_zero = any(np.any(x <= 0) for x in result.norms)
    hists = []
    for x in result.norms:
        x = x[np.isfinite(x)]
        h, _ = np.histogram(np.clip(x[x > 0], edges[0], edges[-1] * 0.9999), bins=edges)
        # exact zeros (masked channels) get a bin of their own left of a gap, tick label "0"
        hists.append(np.concatenate([[np.sum(x <= 0), 0], h]).astype(float) if has_zero
                     else h.astype(float))
    if has_zero:
        edges = np.concatenate([[10 ** (lo - 0.55), 10 ** (lo - 0.15)], edges])
    height = min(16.0, max(4.5, 0.42 * n + 2.6))
    fig = plt.figure(figsize=(12, height), dpi=110)
    gs = GridSpec(1, 2, width_ratios=[3.6, 1.2], wspace=0.05, figure=fig)
    ax = fig.add_subplot(gs[0])
    bx = fig.add_subplot(gs[1], sharey=ax)
    rows = np.arange(n)[::-1]  # first checkpoint on top
    labels = [f"epoch {c.epoch}" for c in result.checkpoints]
    suggested = result.suggested
    ax.set_xscale("log")
    if n <= 30:
        cmap = plt.get_cmap("viridis")
        for i in range(n):
            h = hists[i].copy()
            first = 2 if has_zero else 0
            h[first:] = h[first:] / (h[first:].max() or 1.0) * 1.5
            if has_zero:  # the zero column's height is its share of the channels
                h[0] = 1.5 * hists[i][0] / max(1.0, hists[i].sum())
                if hists[i][0]:
                    ax.text(np.sqrt(edges[0] * edges[1]), rows[i] + h[0] + 0.04,
                            f"{int(hists[i][0])}", ha="center", va="bottom", fontsize=7,
                            zorder=60)
            color = "darkorange" if i == suggested else cmap(0.15 + 0.7 * i / max(1, n - 1))
            z = 10 + i  # later (lower) ridges drawn in front
            ax.stairs(rows[i] + h, edges, baseline=rows[i], fill=True, color=color, alpha=0.75,
                      zorder=z)
            ax.stairs(rows[i] + h, edges, baseline=rows[i], color="black",
                      lw=0.8 if i != suggested else 1.6, zorder=z + 0.5)
        ax.set_ylim(-0.3, n + 1.0)
    else:
        mat = np.ma.masked_equal(np.array([h / (h.sum() or 1.0) for h in hists])[::-1], 0)
        cmap = plt.get_cmap("magma_r").copy()
        cmap.set_bad("white")  # empty bins stay white
        mesh = ax.pcolormesh(edges, np.arange(n + 1) - 0.5, mat, cmap=cmap, shading="flat")
        fig.colorbar(mesh, ax=bx, fraction=0.08, pad=0.02, label="share of channels in bin")
        ax.set_ylim(-0.5, n - 0.5)
    ax.set_xlim(edges[0], edges[-1])
    if has_zero:
        from matplotlib.ticker import FixedLocator, LogFormatterSciNotation

        decades = [10.0 ** k for k in range(int(np.ceil(lo)), int(np.floor(hi)) + 1)]
        fmt = LogFormatterSciNotation()
        ax.xaxis.set_major_locator(FixedLocator([np.sqrt(edges[0] * edges[1])] + decades))
        ax.set_xticklabels(["0"] + [fmt(d) for d in decades])
        minor = [m * 10.0 ** k for k in range(int(np.floor(lo)), int(np.ceil(hi)) + 1)
                 for m in range(2, 10) if 10 ** lo <= m * 10.0 ** k <= 10 ** hi]
        ax.xaxis.set_minor_locator(FixedLocator(minor))
        ax.axvspan(edges[1], edges[2], color="0.92", zorder=1)  # the gap between 0 and the rest
    ax.axvspan(edges[0], result.threshold, color="crimson", alpha=0.07, zorder=0)
    ax.axvline(result.threshold, color="crimson", ls="--", lw=2, zorder=100)
    right_half = np.log10(result.threshold) > (lo + hi) / 2
    ax.text(result.threshold, 0.995, f"threshold {result.threshold:.3g}\nchannels left of "
            "it count as small", transform=ax.get_xaxis_transform(), color="crimson",
            va="top", ha="right" if right_half else "left", fontsize=9, zorder=101,
            bbox=dict(boxstyle="round,pad=0.3", fc="white", ec="crimson", alpha=0.9))
    ax.set_yticks(rows)
    ax.set_yticklabels(labels)
    for tick, i in zip(ax.get_yticklabels(), range(n)):
        if i == suggested:
            tick.set_color("darkorange")
            tick.set_fontweight("bold")
    xlabel = "channel L2 norm (log scale)"
    if has_zero:
        xlabel += "; the column at 0 holds channels that are exactly zero (masked)"
    ax.set_xlabel(xlabel)
    ax.set_ylabel("checkpoint (earliest at the top)")
    ax.set_title("Distribution of channel norms per checkpoint", fontsize=11)
    ax.grid(axis="x", color="0.85", lw=0.6, zorder=0)

    frac = 100 * np.array(result.fractions)
    target = 100 * result.rate if result.rate else None
    colors = ["darkorange" if i == suggested else
              ("seagreen" if target is not None and frac[i] >= target - 1e-9 else "0.6")
              for i in range(n)]
    bx.barh(rows, frac, height=0.6, color=colors, zorder=3)
    for i in range(n):
        near = target is not None and abs(frac[i] - target) < 1  # 49.7% must not read "50%"
        bx.text(min(frac[i], 100) + 1.5, rows[i], f"{frac[i]:.1f}%" if near else
                f"{frac[i]:.0f}%", va="center", fontsize=8, zorder=4)
    if target is not None:
        bx.axvline(target, color="black", ls=":", lw=1.5, zorder=5)
        bx.text(target, 1.0, f" target\n {target:.0f}%", transform=bx.get_xaxis_transform(),
                va="top", ha="left", fontsize=9)
    bx.set_xlim(0, 118)
    bx.set_xlabel("% of channels below threshold")
    bx.set_title("Small channels", fontsize=11)
    bx.tick_params(axis="y", left=False, labelleft=False)
    bx.grid(axis="x", color="0.85", lw=0.6, zorder=0)

    total = result.totals[0] if result.totals else 0
    if suggested is not None:
        verdict = (f"suggested start_epoch = {result.suggested_epoch} (first checkpoint with "
                   f"≥ {target:.0f}% small channels, shown in orange)")
    elif target is not None:
        verdict = f"no checkpoint reaches the target of {target:.0f}% small channels yet"
    else:
        verdict = "no target rate given (--rate or the config's global_prune_rate)"
    fig.suptitle(f"How channel L2 norms shrink during regularization — {result.run_dir.name}",
                 fontsize=13, fontweight="bold", y=0.995)
    subtitle = (f"Each row is one checkpoint: a histogram of its {total} channel norms "
                f"({result.mode}, {len(result.layers)} layer(s)). {verdict[0].upper()}"
                f"{verdict[1:]}.")
    changes = [i for i in range(1, n) if result.totals[i] != result.totals[i - 1]]
    if changes:
        i = changes[0]
        subtitle += (f" The channel count changes from {result.totals[i - 1]} to "
                     f"{result.totals[i]} at epoch {result.checkpoints[i].epoch} (channels "
                     "physically removed).")
    fig.text(0.5, 1 - 0.55 / height, "\n".join(textwrap.wrap(subtitle, 150)), ha="center",
             va="top", fontsize=10)
    fig.subplots_adjust(left=0.1, right=0.97, top=1 - 1.2 / height, bottom=0.6 / height + 0.05)
    path = save_figure(fig, out)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- command line
def _setup(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR", help="folder with the run's checkpoints "
                   "(epoch_003.pt, checkpoint_epoch3.pth, ckpt-3.pt, model_3.pth, ...)")
    p.add_argument("--config", help="pruning_config.json or its folder (default: the one in "
                                    "RUN_DIR, if any): selects layers and the target rate")
    p.add_argument("--model", metavar="MODULE:FACTORY",
                   help="measure dependency groups of this model (e.g. "
                        "torchvision.models:resnet18) instead of single conv filters")
    p.add_argument("--input-shape", metavar="B,C,H,W",
                   help="example input for --model (default: the config's input_shape)")
    p.add_argument("--threshold", type=float,
                   help="L2 norm below which a channel counts as small (default: 10%% of the "
                        "median norm of the first checkpoint)")
    p.add_argument("--rate", type=float, help="target fraction of small channels (default: the "
                                              "config's global_prune_rate)")
    p.add_argument("--out", help="picture to write (default: RUN_DIR/channel_norms.png)")


def _run(args: argparse.Namespace) -> int:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        if args.threshold is not None and not args.threshold > 0:
            raise AnalyzeError(f"--threshold must be > 0, got {args.threshold}")
        if args.rate is not None and not 0 < args.rate <= 1:
            raise AnalyzeError(f"--rate must be in (0, 1], got {args.rate}")
        model = load_model(args.model) if args.model else None
        inputs = make_inputs(parse_input_shape(args.input_shape)) if args.input_shape else None
        result = analyze_run(args.run_dir, config=args.config, model=model,
                             example_inputs=inputs, threshold=args.threshold, rate=args.rate)
        out = Path(args.out) if args.out else Path(args.run_dir) / "channel_norms.png"
        path = plot_analysis(result, out)
    except (ToolError, PruningConfigError) as e:
        sys.stderr.write(f"error: {e}\n")
        return 2
    sys.stdout.write(format_table(result))
    sys.stdout.write(f"Picture: {path}\n")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``analyze.py``; returns the exit code (2 with a message on errors)."""
    parser = argparse.ArgumentParser(
        prog="analyze.py", description="Plot per-channel L2 norms across a run's checkpoints, "
        "count small channels and suggest the epoch to start pruning.")
    _setup(parser)
    return _run(parser.parse_args(argv))


def register(commands: Dict[str, tuple]) -> None:
    """Add ``analyze`` to the CLI's command registry."""
    commands["analyze"] = ("plot channel L2 norms across a run's checkpoints and suggest when "
                           "to start pruning", _setup, _run)
