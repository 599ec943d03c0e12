"""What a config would prune on a model: the dry run behind ``validate``.

:func:`check_config` runs the pruners' own code on the model, so a config ``Pruning`` accepts,
``validate`` accepts, and the reverse: the channel pruner's tracing
(:func:`~torch_pruning.pat.channel.tracing.build_graph`), layer resolution and grouping
(:func:`~torch_pruning.pat.channel.grouping.select_groups`), its MAC count
(:class:`~torch_pruning.pat.core.macs.MacCounter`), and the slice pruner's layer resolution
(:func:`~torch_pruning.pat.slice.pruner.resolve_slice_layers`). Unknown or unsupported layer
names raise :class:`PruningConfigError` with the pruner's message. An enabled pruner that would
prune nothing is reported with the reason, so ``validate`` can exit with 1.

Example:
    >>> model = load_model("torchvision.models:resnet18")              # doctest: +SKIP
    >>> report = check_config(load_config("runs/demo"), model,
    ...                       make_inputs([[1, 3, 224, 224]]))          # doctest: +SKIP
    >>> report.would_prune, report.nothing                             # doctest: +SKIP
    (True, [])
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, List, Optional, Tuple

from torch import nn

from ..channel.group import ChannelGroup
from ..channel.grouping import select_groups
from ..channel.progress import finished_config_mismatch, stored_macs
from ..channel.tracing import build_graph
from ..config.io import LoadedConfig
from ..config.models import ChannelSparsityArgs, SliceSparsityArgs
from ..core.macs import MacCounter
from ..core.masks import strip_module_prefix
from ..slice.layout import conv_block_size
from ..slice.pruner import resolve_slice_layers
from ..util.log import human_count
from .model_factory import format_shape

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


def _members(g: ChannelGroup, graph: Any, names: dict) -> List[str]:
    """The layers of ``g`` that lose output channels (its source first, then in model order)."""
    out = [g.source]
    for dep, _ in g.group:
        name = names.get(dep.target.module)
        if (name and name not in out and isinstance(dep.target.module, (nn.modules.conv._ConvNd,
                                                                         nn.Linear))
                and graph.is_out_channel_pruning_fn(dep.handler)):
            out.append(name)
    order = {n: i for i, n in enumerate(names.values())}
    return [out[0]] + sorted(out[1:], key=lambda n: order.get(n, 0))


def _channel_plan(cfg: ChannelSparsityArgs, model: nn.Module, inputs: Any,
                  source: str, inputs_field: str) -> Tuple[List[str], Optional[str]]:
    graph = build_graph(model, inputs, source=source, inputs_field=inputs_field)
    skipped: List[str] = []
    selected = select_groups(model, graph, cfg.layers, source=source, quiet=True,
                             skipped=skipped)
    names = {m: strip_module_prefix(n) for n, m in model.named_modules()}
    rate = min(cfg.global_prune_rate, cfg.max_pruning_rate)
    macs = MacCounter(model, inputs).base_macs
    lines = [f"Channel pruning: {len(selected)} group(s) selected, epochs {cfg.start_epoch}-"
             f"{cfg.end_epoch}, global_prune_rate {cfg.global_prune_rate:g}, max_pruning_rate "
             f"{cfg.max_pruning_rate:g}, block_size {cfg.block_size}"
             + (f", stops early at mac_target {cfg.mac_target:g}" if cfg.mac_target else ""),
             f"  model MACs {human_count(macs)} (counted as the pruner counts them)"
             + (f"; the target is {human_count(macs * cfg.mac_target)}" if cfg.mac_target
                else "")]
    if cfg.reach_mac_target:
        mismatch = finished_config_mismatch(cfg, macs, source)
        if mismatch:
            lines.append(f"  warning: {mismatch}")
            if stored_macs(cfg.log_str):  # the model has more MACs than the stored result
                return lines, f"channel pruning would prune nothing: {mismatch}"
        lines.append("  reach_mac_target is true: channel pruning is finished, prune() "
                     "prunes no more channels" + (" (the model's MACs match the stored result)"
                                                  if stored_macs(cfg.log_str) else ""))
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
        heads = f", {g.units} heads of {g.heads.name}" if g.heads else ""
        lines.append(f"  Group {g.number} ({g.channels} channels{heads}, {how}): "
                     f"{', '.join(_members(g, graph, names))}")
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


def _slice_plan(cfg: SliceSparsityArgs, model: nn.Module, inputs: Any,
                source: str, inputs_field: str) -> Tuple[List[str], Optional[str]]:
    named = {strip_module_prefix(n): m for n, m in model.named_modules()}
    convs, _ = resolve_slice_layers(model, cfg)
    lines = [f"Slice pruning: epochs {cfg.start_epoch}-{cfg.end_epoch}, prune_rate "
             f"{cfg.prune_rate:g}, block_size {cfg.block_size} (depthwise "
             f"{cfg.depthwise_block_size}), mode {cfg.pruning_mode.value}"]
    eligible_total = 0
    for name in convs:
        conv = named[name]
        c_out, c_in, kh, kw = conv.weight.shape
        a = conv_block_size(conv, cfg.block_size, cfg.depthwise_block_size)
        if c_out % a:
            lines.append(f"  skipped: {name} ({c_out} filters is not a multiple of A={a})")
            continue
        slices = (c_out // a) * c_in * kh * kw
        eligible = (c_out // a) * c_in * kh * (kw - 1) if cfg.disable_first_index else slices
        eligible_total += eligible
        lines.append(f"  {name} ({format_shape(tuple(conv.weight.shape))}, A={a}): {slices} "
                     f"slices, {eligible} eligible, about {int(eligible * cfg.prune_rate)} zeroed")
    if cfg.pruning_mode.value == "Unprune":
        return lines, None
    if eligible_total == 0:
        return lines, "slice pruning would prune nothing: no selected layer has eligible slices"
    if cfg.prune_rate <= 0:
        return lines, "slice pruning would prune nothing: slice_sparsity_args.prune_rate is 0"
    return lines, None


def check_config(loaded: LoadedConfig, model: nn.Module, example_inputs: Any, *,
                 inputs_field: str = "channel_sparsity_args.input_shape") -> ValidationReport:
    """Dry-run ``loaded`` on ``model`` with the pruners' own layer resolution and grouping.

    Raises :class:`PruningConfigError` where ``Pruning`` would (an unknown layer name, with
    close matches; a layer type the pruner cannot take). Returns the plan and, per enabled
    pruner that would prune nothing, the reason. The model is left unchanged. Inputs the
    model cannot run on raise :class:`PruningConfigError` naming ``inputs_field``.
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
        section_lines, reason = plan(cfg, model, example_inputs, source,  # type: ignore[operator]
                                     inputs_field)
        lines.extend(section_lines)
        if reason:
            nothing.append(reason)
    return ValidationReport(lines=lines, nothing=nothing)
