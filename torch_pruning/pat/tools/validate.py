"""What a config would prune on a model: the dry run behind ``validate``.

:func:`check_config` resolves the config's layer names against a :class:`ModelSummary`
(unknown or non-Conv2d names raise :class:`PruningConfigError` with close matches) and
lists, per pruner, the groups or layers it would prune. An enabled pruner that would prune
nothing is reported with the reason, so ``validate`` can exit with 1.

Example:
    >>> summary = summarize_model(load_model("torchvision.models:resnet18"),
    ...                           make_inputs([[1, 3, 224, 224]]))      # doctest: +SKIP
    >>> report = check_config(load_config("runs/demo"), summary)       # doctest: +SKIP
    >>> report.would_prune, report.nothing                             # doctest: +SKIP
    (True, [])
"""

from __future__ import annotations

import difflib
import logging
import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

from ..config.models import ChannelSparsityArgs, SliceSparsityArgs
from ..config.io import LoadedConfig, PruningConfigError
from ..core.masks import strip_module_prefix
from .model_factory import format_shape
from .summary import ConvInfo, ModelSummary

__all__ = ["ValidationReport", "check_config"]

logger = logging.getLogger(__name__)


@dataclass
class ValidationReport:
    """What a config would prune on a model. ``nothing`` holds one reason per idle pruner."""

    lines: List[str]
    nothing: List[str]

    @property
    def would_prune(self) -> bool:
        """True when every enabled pruner would prune something."""
        return not self.nothing

    def text(self) -> str:
        """The dry-run report as text."""
        return "\n".join(self.lines) + "\n"


def _resolve(names: Sequence[str], summary: ModelSummary, fieldpath: str,
             source: str) -> List[ConvInfo]:
    problems, found = [], []
    conv_names = [c.name for c in summary.convs]
    for raw in names:
        name = strip_module_prefix(raw)
        conv = summary.conv(name)
        if conv is not None:
            found.append(conv)
        elif name in summary.module_types:
            close = difflib.get_close_matches(name, conv_names, 3, 0.5)
            problems.append(f"'{raw}' is a {summary.module_types[name]}, not a Conv2d"
                            + (f" (similar Conv2d names: {', '.join(close)})" if close else
                               "; only Conv2d layers can be listed"))
        else:
            close = difflib.get_close_matches(name, conv_names, n=3, cutoff=0.5)
            hint = (f"close matches: {', '.join(close)}" if close else
                    f"run 'python -m torch_pruning.pat inspect' to list the {len(conv_names)} "
                    "Conv2d layers")
            problems.append(f"'{raw}' is not a layer of the model; {hint}")
    if problems:
        raise PruningConfigError(f"{fieldpath}: " + "; ".join(problems), source=source,
                                 field=fieldpath)
    return found


def _channel_plan(cfg: ChannelSparsityArgs, summary: ModelSummary,
                  source: str) -> Tuple[List[str], Optional[str]]:
    convs = (summary.convs if cfg.layers == "all"
             else _resolve(cfg.layers, summary, "channel_sparsity_args.layers", source))
    by_index = {g.index: g for g in summary.groups}
    selected, skipped = [], []
    for c in convs:
        g = by_index.get(c.group) if c.group is not None else None
        if g is None:
            skipped.append(f"{c.name} (not used in the forward pass)")
        elif not g.prunable:
            skipped.append(f"{c.name} (group {g.index}: {g.reason})")
        elif g not in selected:
            selected.append(g)
    rate = min(cfg.global_prune_rate, cfg.max_pruning_rate)
    lines = [f"Channel pruning: {len(selected)} group(s) selected, epochs {cfg.start_epoch}-"
             f"{cfg.end_epoch}, global_prune_rate {cfg.global_prune_rate:g}, max_pruning_rate "
             f"{cfg.max_pruning_rate:g}, block_size {cfg.block_size}"
             + (f", stops early at mac_target {cfg.mac_target:g}" if cfg.mac_target else "")]
    total_pruned = 0
    for g in selected:
        n = math.floor(g.channels * rate + 1e-9)
        if cfg.block_size > 1 and n:
            kept = g.channels - n
            kept -= kept % cfg.block_size
            n = g.channels - kept if kept > 0 else 0
        total_pruned += n
        how = ("ranked globally" if cfg.global_pruning else
               f"about {n} pruned, {g.channels - n} kept at end_epoch")
        lines.append(f"  Group {g.index} ({g.channels} channels, {how}): {', '.join(g.members)}")
    for s in skipped:
        lines.append(f"  skipped: {s}")
    if cfg.regularize.reg == 0 and cfg.regularize.mac_reg == 0 and not (
            cfg.infer or cfg.prune_channels_at_init):
        lines.append("  note: regularize.reg is 0, so channels are not pushed towards zero "
                     "before they are masked (try 5e-2, 5e-3 and 5e-4; see docs/workflow.md)")
    if not selected:
        return lines, ("channel pruning would prune nothing: no selected layer belongs to a "
                       "prunable group" + (f" ({'; '.join(skipped)})" if skipped else ""))
    if rate <= 0:
        which = "global_prune_rate" if cfg.global_prune_rate <= 0 else "max_pruning_rate"
        return lines, f"channel pruning would prune nothing: channel_sparsity_args.{which} is 0"
    if total_pruned == 0 and not cfg.global_pruning:
        return lines, ("channel pruning would prune nothing: global_prune_rate x channels, "
                       f"rounded to block_size={cfg.block_size}, removes no channel from any "
                       "selected group")
    return lines, None


def _slice_plan(cfg: SliceSparsityArgs, summary: ModelSummary,
                source: str) -> Tuple[List[str], Optional[str]]:
    convs = (summary.convs if cfg.layers is None
             else _resolve(cfg.layers, summary, "slice_sparsity_args.layers", source))
    lines = [f"Slice pruning: epochs {cfg.start_epoch}-{cfg.end_epoch}, prune_rate "
             f"{cfg.prune_rate:g}, block_size {cfg.block_size} (depthwise "
             f"{cfg.depthwise_block_size}), mode {cfg.pruning_mode.value}"]
    eligible_total = 0
    for c in convs:
        c_out, c_in, kh, kw = c.weight_shape
        depthwise = c.conv_groups > 1 and c_in == 1
        a = cfg.depthwise_block_size if depthwise else cfg.block_size
        if c_out % a:
            lines.append(f"  skipped: {c.name} ({c_out} filters is not a multiple of A={a})")
            continue
        slices = (c_out // a) * c_in * kh * kw
        eligible = (c_out // a) * c_in * kh * (kw - 1) if cfg.disable_first_index else slices
        eligible_total += eligible
        lines.append(f"  {c.name} ({format_shape(c.weight_shape)}, A={a}): {slices} slices, "
                     f"{eligible} eligible, about {int(eligible * cfg.prune_rate)} zeroed")
    if cfg.pruning_mode.value == "Unprune":
        return lines, None
    if eligible_total == 0:
        return lines, "slice pruning would prune nothing: no selected layer has eligible slices"
    if cfg.prune_rate <= 0:
        return lines, "slice pruning would prune nothing: slice_sparsity_args.prune_rate is 0"
    return lines, None


def check_config(loaded: LoadedConfig, summary: ModelSummary) -> ValidationReport:
    """Dry-run ``loaded`` on the model described by ``summary``.

    Raises :class:`PruningConfigError` for layer names the model does not have (with close
    matches) or that are not Conv2d. Returns the plan and, per enabled pruner that would
    prune nothing, the reason.
    """
    source = str(loaded.path) if loaded.path else "<config>"
    lines, nothing = [f"Config: {source}"], []
    if loaded.channel is None and loaded.slice is None:
        nothing.append("nothing would be pruned: channel_sparsity_args and slice_sparsity_args "
                       "are both missing or have \"is_prune\": false")
    for cfg, plan, what in ((loaded.channel, _channel_plan, "Channel"),
                            (loaded.slice, _slice_plan, "Slice")):
        if cfg is None:
            lines.append(f"{what} pruning: off")
            continue
        section_lines, reason = plan(cfg, summary, source)  # type: ignore[operator]
        lines.extend(section_lines)
        if reason:
            nothing.append(reason)
    return ValidationReport(lines=lines, nothing=nothing)
