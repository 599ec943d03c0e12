"""The picture ``analyze.py`` draws: channel-norm histograms across a run's checkpoints.

Left, one histogram of log-scaled channel norms per checkpoint with the threshold marked;
right, the share of channels below the threshold and the target rate. The suggested start
epoch is highlighted in orange.

Example:
    >>> plot_analysis(analyze_run("runs/digits", rate=0.5), "norms.png")  # doctest: +SKIP
    PosixPath('norms.png')
"""

from __future__ import annotations

import logging
import textwrap
from pathlib import Path
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, List, Optional, Union

import numpy as np

if TYPE_CHECKING:
    from .analyze import RunAnalysis

__all__ = ["plot_analysis"]

logger = logging.getLogger(__name__)


def _log_range(result: RunAnalysis) -> tuple:
    positive = np.concatenate([n[(n > 0) & np.isfinite(n)] for n in result.norms] + [np.ones(0)])
    lo = min(positive.min(), result.threshold) if positive.size else result.threshold / 10
    hi = max(positive.max(), result.threshold) if positive.size else result.threshold * 10
    lo = lo if lo > 0 else hi / 1e6
    return np.log10(lo) - 0.15, np.log10(hi) + 0.15


@dataclass
class _Histograms:
    """One histogram of channel norms per checkpoint, on shared log-spaced bins.

    With exact zeros (masked channels) present, each histogram starts with a zero bin and an
    empty gap bin, drawn left of the log axis.
    """

    edges: np.ndarray
    counts: List[np.ndarray]
    has_zero: bool
    lo: float
    hi: float

    @classmethod
    def of(cls, result: RunAnalysis) -> "_Histograms":
        lo, hi = _log_range(result)
        edges = np.logspace(lo, hi, 61)
        has_zero = any(np.any(x <= 0) for x in result.norms)
        counts = []
        for x in result.norms:
            x = x[np.isfinite(x)]
            h, _ = np.histogram(np.clip(x[x > 0], edges[0], edges[-1] * 0.9999), bins=edges)
            counts.append(np.concatenate([[np.sum(x <= 0), 0], h]).astype(float) if has_zero
                          else h.astype(float))
        if has_zero:
            edges = np.concatenate([[10 ** (lo - 0.55), 10 ** (lo - 0.15)], edges])
        return cls(edges, counts, has_zero, lo, hi)


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
    hist = _Histograms.of(result)
    height = min(16.0, max(4.5, 0.42 * n + 2.6))
    fig = plt.figure(figsize=(12, height), dpi=110)
    gs = GridSpec(1, 2, width_ratios=[3.6, 1.2], wspace=0.05, figure=fig)
    ax = fig.add_subplot(gs[0])
    bx = fig.add_subplot(gs[1], sharey=ax)
    rows = np.arange(n)[::-1]  # first checkpoint on top
    ax.set_xscale("log")
    if n <= 30:
        _draw_ridges(ax, hist, rows, result.suggested)
    else:
        _draw_heatmap(fig, ax, bx, hist)
    ax.set_xlim(hist.edges[0], hist.edges[-1])
    if hist.has_zero:
        _draw_zero_column_axis(ax, hist)
    _draw_threshold(ax, hist, result.threshold)
    _label_checkpoints(ax, result, rows)
    _draw_small_channels(bx, result, rows)
    _draw_titles(fig, result, height)
    path = save_figure(fig, out)
    plt.close(fig)
    return path


def _draw_ridges(ax: Any, hist: _Histograms, rows: np.ndarray, suggested: Optional[int]) -> None:
    """Stacked ridge lines, one histogram per checkpoint (the suggested one in orange)."""
    import matplotlib.pyplot as plt

    n, edges = len(hist.counts), hist.edges
    cmap = plt.get_cmap("viridis")
    for i, counts in enumerate(hist.counts):
        h = counts.copy()
        first = 2 if hist.has_zero else 0
        h[first:] = h[first:] / (h[first:].max() or 1.0) * 1.5
        if hist.has_zero:  # the zero column's height is its share of the channels
            h[0] = 1.5 * counts[0] / max(1.0, counts.sum())
            if counts[0]:
                ax.text(np.sqrt(edges[0] * edges[1]), rows[i] + h[0] + 0.04, f"{int(counts[0])}",
                        ha="center", va="bottom", fontsize=7, zorder=60)
        color = "darkorange" if i == suggested else cmap(0.15 + 0.7 * i / max(1, n - 1))
        z = 10 + i  # later (lower) ridges drawn in front
        ax.stairs(rows[i] + h, edges, baseline=rows[i], fill=True, color=color, alpha=0.75,
                  zorder=z)
        ax.stairs(rows[i] + h, edges, baseline=rows[i], color="black",
                  lw=0.8 if i != suggested else 1.6, zorder=z + 0.5)
    ax.set_ylim(-0.3, n + 1.0)


def _draw_heatmap(fig: Any, ax: Any, bx: Any, hist: _Histograms) -> None:
    """Many checkpoints: one heatmap row per checkpoint, each row's share of channels per bin."""
    import matplotlib.pyplot as plt

    n = len(hist.counts)
    mat = np.ma.masked_equal(np.array([h / (h.sum() or 1.0) for h in hist.counts])[::-1], 0)
    cmap = plt.get_cmap("magma_r").copy()
    cmap.set_bad("white")  # empty bins stay white
    mesh = ax.pcolormesh(hist.edges, np.arange(n + 1) - 0.5, mat, cmap=cmap, shading="flat")
    fig.colorbar(mesh, ax=bx, fraction=0.08, pad=0.02, label="share of channels in bin")
    ax.set_ylim(-0.5, n - 0.5)


def _draw_zero_column_axis(ax: Any, hist: _Histograms) -> None:
    """Ticks for the "0" column left of the log axis, and the gap between them."""
    from matplotlib.ticker import FixedLocator, LogFormatterSciNotation

    edges, lo, hi = hist.edges, hist.lo, hist.hi
    decades = [10.0 ** k for k in range(int(np.ceil(lo)), int(np.floor(hi)) + 1)]
    fmt = LogFormatterSciNotation()
    ax.xaxis.set_major_locator(FixedLocator([np.sqrt(edges[0] * edges[1])] + decades))
    ax.set_xticklabels(["0"] + [fmt(d) for d in decades])
    minor = [m * 10.0 ** k for k in range(int(np.floor(lo)), int(np.ceil(hi)) + 1)
             for m in range(2, 10) if 10 ** lo <= m * 10.0 ** k <= 10 ** hi]
    ax.xaxis.set_minor_locator(FixedLocator(minor))
    ax.axvspan(edges[1], edges[2], color="0.92", zorder=1)  # the gap between 0 and the rest


def _draw_threshold(ax: Any, hist: _Histograms, threshold: float) -> None:
    """The threshold line, the shaded "small" side and its label."""
    ax.axvspan(hist.edges[0], threshold, color="crimson", alpha=0.07, zorder=0)
    ax.axvline(threshold, color="crimson", ls="--", lw=2, zorder=100)
    right_half = np.log10(threshold) > (hist.lo + hist.hi) / 2
    ax.text(threshold, 0.995, f"threshold {threshold:.3g}\nchannels left of "
            "it count as small", transform=ax.get_xaxis_transform(), color="crimson",
            va="top", ha="right" if right_half else "left", fontsize=9, zorder=101,
            bbox=dict(boxstyle="round,pad=0.3", fc="white", ec="crimson", alpha=0.9))


def _label_checkpoints(ax: Any, result: RunAnalysis, rows: np.ndarray) -> None:
    """Row labels (the suggested epoch in bold orange), axis labels and the left title."""
    ax.set_yticks(rows)
    ax.set_yticklabels([f"epoch {c.epoch}" for c in result.checkpoints])
    for i, tick in enumerate(ax.get_yticklabels()):
        if i == result.suggested:
            tick.set_color("darkorange")
            tick.set_fontweight("bold")
    xlabel = "channel L2 norm (log scale)"
    if any(np.any(x <= 0) for x in result.norms):
        xlabel += "; the column at 0 holds channels that are exactly zero (masked)"
    ax.set_xlabel(xlabel)
    ax.set_ylabel("checkpoint (earliest at the top)")
    ax.set_title("Distribution of channel norms per checkpoint", fontsize=11)
    ax.grid(axis="x", color="0.85", lw=0.6, zorder=0)


def _draw_small_channels(bx: Any, result: RunAnalysis, rows: np.ndarray) -> None:
    """Right panel: the share of channels below the threshold per checkpoint, and the target."""
    n, suggested = len(result.checkpoints), result.suggested
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


def _verdict(result: RunAnalysis) -> str:
    target = 100 * result.rate if result.rate else None
    if result.suggested is not None:
        return (f"suggested start_epoch = {result.suggested_epoch} (first checkpoint with "
                f"≥ {target:.0f}% small channels, shown in orange)")
    if target is not None:
        return f"no checkpoint reaches the target of {target:.0f}% small channels yet"
    return "no target rate given (--rate or the config's global_prune_rate)"


def _draw_titles(fig: Any, result: RunAnalysis, height: float) -> None:
    """The title, and a subtitle with the verdict and any physical removal seen."""
    n = len(result.checkpoints)
    total = result.totals[0] if result.totals else 0
    verdict = _verdict(result)
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
