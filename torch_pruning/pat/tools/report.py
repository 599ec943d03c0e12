"""The pruning report: channels, MACs and parameters per layer before and after pruning.

:func:`layer_stats` measures every conv and linear layer of a model on example inputs. With a
:class:`~torch_pruning.pat.core.masks.MaskSet`, channels masked in its ``"channel"`` layer count as
removed: a masked output filter, a masked input slice, a depthwise/grouped conv's dead groups.
MACs follow upstream's counting rule (``tp.utils.count_ops_and_params``: kernel x in x
out/groups per output position, plus bias, per sample), so an unmasked row equals upstream's
per-layer number and a masked row equals it on the physically pruned layer.

:class:`PruningReport` pairs two such measurements (before and after) with an optional slice
sparsity dict and renders them as a text table (:meth:`PruningReport.text`) and a bar chart
(:meth:`PruningReport.figure`); :meth:`PruningReport.save` writes ``pruning_report.txt`` and
``pruning_report.png`` atomically.

Example::

    before = layer_stats(model, example_inputs)
    ...  # train with pruner, masks grow
    after = layer_stats(model, example_inputs, pruner.masks)
    PruningReport(before, after, slice_sparsity=None).save(output_dir)
"""

from __future__ import annotations

import io
import logging
import math
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ..core.masks import MaskSet, strip_module_prefix
from ..util.io import atomic_write_bytes, atomic_write_text
from ..util.log import emit, human_count, is_rank_zero
from ..util.model import unwrap_model

__all__ = ["LayerStats", "layer_stats", "PruningReport", "save_figure", "REPORT_TEXT", "REPORT_PNG"]

logger = logging.getLogger(__name__)

REPORT_TEXT = "pruning_report.txt"
REPORT_PNG = "pruning_report.png"
_LAYER_TYPES = (nn.modules.conv._ConvNd, nn.Linear)


@dataclass(frozen=True)
class LayerStats:
    """One conv/linear layer: effective channels, MACs per sample and parameters."""

    name: str
    kind: str
    in_channels: int
    out_channels: int
    macs: int
    params: int


# --------------------------------------------------------------------------- measuring
def _run(model: nn.Module, inputs: Any) -> None:
    if isinstance(inputs, dict):
        model(**inputs)
    elif isinstance(inputs, (list, tuple)):
        model(*inputs)
    else:
        model(inputs)


def _batch_of(inputs: Any) -> int:
    if isinstance(inputs, torch.Tensor):
        return int(inputs.shape[0]) if inputs.dim() else 1
    items = inputs.values() if isinstance(inputs, dict) else inputs
    for x in items:
        if isinstance(x, torch.Tensor) and x.dim():
            return int(x.shape[0])
    return 1


def _conv_counts(m: nn.modules.conv._ConvNd, keep: Optional[torch.Tensor]) -> Tuple[int, int, int, int]:
    """(in_eff, out_eff, in_per_group_eff, groups_eff) of a conv under a weight keep-mask."""
    g = m.groups
    if keep is None or (m.transposed and g > 1):
        return m.in_channels, m.out_channels, m.in_channels // g, g
    keep = keep.detach().to("cpu", torch.bool)
    if m.transposed:  # weight: in x out/groups x k...; groups == 1 here
        in_keep = keep.flatten(1).any(1)
        out_keep = keep.transpose(0, 1).flatten(1).any(1)
        return int(in_keep.sum()), int(out_keep.sum()), int(in_keep.sum()), 1
    out_keep = keep.flatten(1).any(1)
    local_in = int(keep.transpose(0, 1).flatten(1).any(1).sum())
    groups_eff = int(out_keep.view(g, -1).any(1).sum()) if g > 1 else 1
    return groups_eff * local_in, int(out_keep.sum()), local_in, groups_eff


def _row(name: str, m: nn.Module, calls: List[Tuple[tuple, tuple]], batch: int,
         masks: Optional[MaskSet]) -> LayerStats:
    keep = masks.get("channel", m, "weight") if masks is not None else None
    has_bias = getattr(m, "bias", None) is not None
    total = 0.0
    if isinstance(m, nn.Linear):
        if keep is not None:
            keep = keep.detach().to("cpu", torch.bool)
            c_in, c_out = int(keep.any(0).sum()), int(keep.any(1).sum())
        else:
            c_in, c_out = m.in_features, m.out_features
        for in_shape, _ in calls:
            total += math.prod(in_shape[:-1]) * c_in * c_out + (c_out if has_bias else 0)
        params = c_in * c_out + (c_out if has_bias else 0)
    else:
        c_in, c_out, local_in, groups_eff = _conv_counts(m, keep)
        kernel = math.prod(m.kernel_size)
        for _, out_shape in calls:
            active = out_shape[0] * math.prod(out_shape[2:])
            if groups_eff:
                total += kernel * c_in * (c_out / groups_eff) * active
            total += c_out * active if has_bias else 0
        params = c_out * local_in * kernel + (c_out if has_bias else 0)
    return LayerStats(name=name, kind=type(m).__name__, in_channels=c_in, out_channels=c_out,
                      macs=int(round(total / max(batch, 1))), params=params)


@torch.no_grad()
def layer_stats(model: nn.Module, example_inputs: Any,
                masks: Optional[MaskSet] = None) -> List[LayerStats]:
    """Per conv/linear layer: effective in/out channels, MACs per sample, parameters.

    Channels masked in ``masks``' ``"channel"`` layer are excluded, so the numbers are those
    of the model with the masked channels physically removed. Layers are listed in
    ``named_modules()`` order (``module.`` prefixes dropped); a layer the forward pass never
    calls has 0 MACs.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.Flatten(), nn.Linear(8, 2))
        >>> [(r.name, r.out_channels, r.macs) for r in layer_stats(net, torch.randn(1, 3, 3, 3))]
        [('0', 8, 216), ('2', 2, 18)]
    """
    model = unwrap_model(model)
    layers = [(strip_module_prefix(n), m) for n, m in model.named_modules()
              if isinstance(m, _LAYER_TYPES)]
    calls: Dict[nn.Module, List[Tuple[tuple, tuple]]] = defaultdict(list)

    def hook(mod: nn.Module, inp: tuple, out: Any) -> None:
        if inp and isinstance(inp[0], torch.Tensor) and isinstance(out, torch.Tensor):
            calls[mod].append((tuple(inp[0].shape), tuple(out.shape)))

    handles = [m.register_forward_hook(hook) for _, m in layers]
    was_training = model.training
    model.eval()
    try:
        _run(model, example_inputs)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    batch = _batch_of(example_inputs)
    return [_row(name, m, calls.get(m, []), batch, masks) for name, m in layers]


# --------------------------------------------------------------------------- writing
def save_figure(fig: Any, path: Union[str, "os.PathLike[str]"], dpi: int = 110) -> Path:
    """Render a matplotlib figure to PNG and write it atomically; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())
    return path


# --------------------------------------------------------------------------- the report
def _slice_fractions(sparsity: Optional[Mapping[str, Any]]) -> Tuple[Optional[Dict[str, float]],
                                                                        Optional[float]]:
    """Accept the slice pruner's ``slice_sparsity()`` dict or a plain ``{layer: fraction}``."""
    if sparsity is None:
        return None, None
    layers = sparsity.get("layers")
    if isinstance(layers, Mapping):
        per = {strip_module_prefix(k): float(v["fraction"] if isinstance(v, Mapping) else v)
               for k, v in layers.items()}
        overall = sparsity.get("overall")
        return per, (float(overall["fraction"]) if isinstance(overall, Mapping) else None)
    return {strip_module_prefix(k): float(v) for k, v in sparsity.items()}, None


def _pct(after: float, before: float) -> str:
    return f"{100 * after / before:.1f}%" if before else "-"


class PruningReport:
    """Per-layer channels, MACs and parameters before and after pruning, plus slice sparsity.

    Args:
        before_rows: :func:`layer_stats` of the original model.
        after_rows: :func:`layer_stats` of the pruned (or masked) model.
        slice_sparsity: the slice pruner's ``slice_sparsity()`` dict or ``{layer: fraction}``.
        title: first line of the text and of the picture.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Conv2d(4, 2, 1))
        >>> rows = layer_stats(net, torch.randn(1, 3, 2, 2))
        >>> "100.0%" in PruningReport(rows, rows).text()
        True
    """

    def __init__(self, before_rows: Sequence[LayerStats], after_rows: Sequence[LayerStats],
                 slice_sparsity: Optional[Mapping[str, Any]] = None, *,
                 title: str = "Pruning report") -> None:
        self.before = list(before_rows)
        self.after = list(after_rows)
        self.title = title
        self.slice, self.slice_overall = _slice_fractions(slice_sparsity)
        skipped = (slice_sparsity or {}).get("skipped")
        self.slice_skipped: Dict[str, str] = dict(skipped) if isinstance(skipped, Mapping) else {}
        after = {r.name: r for r in self.after}
        before = {r.name: r for r in self.before}
        names = [r.name for r in self.before] + [r.name for r in self.after if r.name not in before]
        self.rows: List[Tuple[str, Optional[LayerStats], Optional[LayerStats]]] = [
            (n, before.get(n), after.get(n)) for n in names]

    # -------------------------------------------------------------- totals
    @property
    def macs(self) -> Tuple[int, int]:
        """Total conv+linear MACs per sample (before, after)."""
        return sum(r.macs for r in self.before), sum(r.macs for r in self.after)

    @property
    def params(self) -> Tuple[int, int]:
        """Total conv+linear parameters (before, after)."""
        return sum(r.params for r in self.before), sum(r.params for r in self.after)

    def summary(self) -> str:
        """One line: MACs and parameters before -> after."""
        (mb, ma), (pb, pa) = self.macs, self.params
        line = (f"conv+linear MACs {mb:,} -> {ma:,} ({_pct(ma, mb)} kept); "
                f"parameters {pb:,} -> {pa:,} ({_pct(pa, pb)} kept)")
        if self.slice_overall is not None:
            line += f"; slice sparsity {100 * self.slice_overall:.1f}% of eligible slices zero"
        return line

    # -------------------------------------------------------------- text
    def text(self) -> str:
        """The report as a fixed-width table, one row per conv/linear layer."""
        width = max([len(n) for n, _, _ in self.rows] + [5])
        head = (f"{'layer':<{width}}  {'type':<8} {'in channels':>12} {'out channels':>13} "
                f"{'MACs before':>14} {'MACs after':>14} {'kept':>7} {'params before':>14} "
                f"{'params after':>13}")
        if self.slice is not None:
            head += f" {'slice zero':>10}"
        lines = [self.title, "(MACs per sample, as tp.utils.count_ops_and_params counts them; "
                 "masked channels count as removed)", "", head, "-" * len(head)]
        for name, b, a in self.rows:
            ref = b or a
            assert ref is not None
            b_in, b_out, b_m, b_p = (b.in_channels, b.out_channels, b.macs, b.params) if b else (0,) * 4
            a_in, a_out, a_m, a_p = (a.in_channels, a.out_channels, a.macs, a.params) if a else (0,) * 4
            line = (f"{name:<{width}}  {ref.kind:<8} {f'{b_in} -> {a_in}':>12} "
                    f"{f'{b_out} -> {a_out}':>13} {b_m:>14,} {a_m:>14,} {_pct(a_m, b_m):>7} "
                    f"{b_p:>14,} {a_p:>13,}")
            if self.slice is not None:
                frac = self.slice.get(name)
                line += f" {'-' if frac is None else f'{100 * frac:.1f}%':>10}"
            lines.append(line)
        (mb, ma), (pb, pa) = self.macs, self.params
        lines.append("-" * len(head))
        lines.append(f"{'total':<{width}}  {'':<8} {'':>12} {'':>13} {mb:>14,} {ma:>14,} "
                     f"{_pct(ma, mb):>7} {pb:>14,} {pa:>13,}")
        lines += ["", self.summary()]
        for name, reason in self.slice_skipped.items():
            lines.append(f"not slice-pruned: {name} ({reason})")
        return "\n".join(lines) + "\n"

    # -------------------------------------------------------------- picture
    def figure(self) -> Any:
        """A matplotlib figure: per layer, output channels and MACs before vs after (bars)."""
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        names = [n for n, _, _ in self.rows]
        n = len(names)
        ys = list(range(n))[::-1]
        panels = 3 if self.slice is not None else 2
        height = max(4.4, 0.34 * n + 3.0)
        fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels + 1.5, height), sharey=True,
                                 gridspec_kw={"wspace": 0.08})
        (mb, ma), (pb, pa) = self.macs, self.params
        scale = max([r.macs for r in self.before] + [1])
        unit, div = next(((u, d) for u, d in (("G", 1e9), ("M", 1e6), ("K", 1e3)) if scale >= d),
                         ("", 1.0))
        series = [("Output channels per layer", "output channels",
                   [b.out_channels if b else 0 for _, b, _ in self.rows],
                   [a.out_channels if a else 0 for _, _, a in self.rows], 1.0),
                  (f"MACs per layer ({unit or 'MACs'} per sample)",
                   f"{unit}MACs" if unit else "MACs",
                   [b.macs if b else 0 for _, b, _ in self.rows],
                   [a.macs if a else 0 for _, _, a in self.rows], div)]
        for ax, (title, xlabel, before, after, d) in zip(axes, series):
            bv = [v / d for v in before]
            av = [v / d for v in after]
            ax.barh(ys, bv, height=0.8, color="0.82", edgecolor="0.55", label="before pruning",
                    zorder=2)
            ax.barh(ys, av, height=0.5, color="tab:blue", label="after pruning", zorder=3)
            top = max(bv + [1e-12])
            for y, b, a in zip(ys, bv, av):
                ratio = f"{100 * a / b:.0f}%" if b else "-"
                label = (f"{int(a)}/{int(b)} ({ratio})" if d == 1.0 else ratio)
                ax.text(b + top * 0.015, y, label, va="center", fontsize=8, zorder=4)
            ax.set_xlim(0, top * 1.28)
            ax.set_title(title, fontsize=11)
            ax.set_xlabel(xlabel)
            ax.grid(axis="x", color="0.9", zorder=0)
        axes[0].set_yticks(ys)
        axes[0].set_yticklabels(names, fontsize=8 if n > 20 else 9)
        axes[0].set_ylim(-0.7, n - 0.3)
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="upper center", ncol=2, fontsize=9.5, frameon=False,
                   bbox_to_anchor=(0.5, 1 - 0.68 / height))
        if self.slice is not None:
            ax = axes[2]
            vals = [100 * self.slice.get(nm, float("nan")) for nm in names]
            ax.barh(ys, [0 if math.isnan(v) else v for v in vals], height=0.5, color="tab:purple",
                    zorder=3)
            for y, v in zip(ys, vals):
                ax.text((0 if math.isnan(v) else v) + 1.5, y,
                        "not slice-pruned" if math.isnan(v) else f"{v:.0f}%", va="center",
                        fontsize=8, zorder=4)
            ax.set_xlim(0, 118)
            ax.set_title("Slice sparsity (% of eligible slices zero)", fontsize=11)
            ax.set_xlabel("% zero slices")
            ax.grid(axis="x", color="0.9", zorder=0)
        mb_, ma_, pb_, pa_ = (human_count(n, ".3g", " ") for n in (mb, ma, pb, pa))
        fig.suptitle(f"{self.title}: MACs {mb_} \u2192 {ma_} ({_pct(ma, mb)} kept), "
                     f"parameters {pb_} \u2192 {pa_} ({_pct(pa, pb)} kept)",
                     fontsize=12, fontweight="bold", y=1 - 0.12 / height)
        fig.text(0.5, 1 - 0.45 / height, "Conv and linear layers. Masked channels count as "
                 "removed. Numbers beside the bars: what is kept after pruning.",
                 ha="center", va="top", fontsize=9.5, color="0.25")
        fig.subplots_adjust(top=1 - 1.4 / height, left=0.14, right=0.98)
        return fig

    # -------------------------------------------------------------- files
    def save(self, folder: Union[str, "os.PathLike[str]"], log: Any = None) -> Tuple[Path, Path]:
        """Write ``pruning_report.txt`` and ``pruning_report.png`` into ``folder`` (atomic,
        rank 0 only). Returns both paths."""
        import matplotlib.pyplot as plt

        folder = Path(folder)
        txt, png = folder / REPORT_TEXT, folder / REPORT_PNG
        if not is_rank_zero():
            return txt, png
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(txt, self.text())
        fig = self.figure()
        try:
            save_figure(fig, png)
        finally:
            plt.close(fig)
        emit(f"Pruning report: {self.summary()} (written to {txt} and {png})", log, logger=logger)
        return txt, png
