"""``inspect`` and ``validate``: look at a model before pruning it, and dry-run a config on it.

``python -m torch_pruning.pat inspect --model torchvision.models:resnet18 --input-shape 1,3,224,224``
lists the model's Conv2d layers (name, weight shape, the dependency group their output
channels belong to, MACs and MAC share), the MACs of every other layer type, and the groups
as upstream's :class:`~torch_pruning.DependencyGraph` couples them. MACs come from
``tp.utils.count_ops_and_params`` and the listed numbers add up to its total exactly.
``--write-config DIR`` writes a starter ``pruning_config.json`` with every field.

``python -m torch_pruning.pat validate DIR --model module:factory`` loads ``DIR``'s config,
resolves its layer names against the model and prints what would be pruned. Exit codes:
0 = something would be pruned, 1 = an enabled pruner would prune nothing (or both are off),
2 = an error (bad config, unknown layer name, model that cannot be built).

A conv is *prunable* when its output channels can be removed without changing the shape of
the model's output: its dependency group has at least one consumer layer (a conv or linear
that loses the same input channels). A group with no consumer feeds the model output
(e.g. the last conv of a segmentation head) and is never selected.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import importlib.util
import json
import logging
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .config import ChannelSparsityArgs, PruningConfig, SliceSparsityArgs
from ._io import atomic_write_text
from .config_io import (CONFIG_FILENAME, LoadedConfig, PruningConfigError,
                        load_config, validate_config)
from .masks import strip_module_prefix

__all__ = ["ToolError", "load_model", "parse_input_shape", "make_inputs", "ConvInfo",
           "ConvGroup", "ModelSummary", "conv_dependency_groups", "summarize_model", "format_summary", "starter_config",
           "write_starter_config", "ValidationReport", "check_config", "register"]

logger = logging.getLogger(__name__)

Shape = List[int]
Inputs = Union[torch.Tensor, List[torch.Tensor], Tuple[torch.Tensor, ...]]


class ToolError(ValueError):
    """A command-line tool cannot do what it was asked; the message says what to change."""


# --------------------------------------------------------------------------- model and inputs
def _import_module(module_part: str) -> Any:
    if module_part.endswith(".py") or "/" in module_part or "\\" in module_part:
        path = Path(module_part).resolve()
        if not path.is_file():
            raise ToolError(f"--model: no such file {module_part}")
        name = f"_pat_user_model_{abs(hash(str(path)))}"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise ToolError(f"--model: cannot import {module_part} as a Python file")
        module = importlib.util.module_from_spec(spec)
        sys.path.insert(0, str(path.parent))  # let the file import its sibling modules
        try:
            spec.loader.exec_module(module)
        finally:
            sys.path.remove(str(path.parent))
        return module
    try:
        return importlib.import_module(module_part)
    except ImportError as e:
        raise ToolError(f"--model: cannot import module '{module_part}': {e}") from e


def load_model(spec: str) -> nn.Module:
    """Build a model from ``module:factory``; the factory is called without arguments.

    ``module`` is a dotted module (``torchvision.models``) or a path to a ``.py`` file;
    ``factory`` is a function or class in it (dotted attributes allowed). torchvision's
    factories called without arguments build the model with ``weights=None``.

    Example:
        >>> load_model("torchvision.models:resnet18").fc.out_features
        1000
    """
    module_part, sep, attr = spec.rpartition(":")
    if not sep or not module_part or not attr:
        raise ToolError(f"--model: expected module:factory (e.g. torchvision.models:resnet18 "
                        f"or path/to/net.py:make_net), got {spec!r}")
    obj: Any = _import_module(module_part)
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = [n for n in dir(obj) if not n.startswith("_")]
            close = difflib.get_close_matches(part, names, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ToolError(f"--model: '{module_part}' has no attribute '{part}'{hint}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ToolError(f"--model: {spec} is not callable")
    model = obj()
    if not isinstance(model, nn.Module):
        raise ToolError(f"--model: {spec}() returned {type(model).__name__}, not a torch.nn.Module")
    return model


def parse_input_shape(text: str) -> List[Shape]:
    """Parse ``"1,3,224,224"`` (or ``1x3x224x224``; several shapes separated by ``;``).

    Example:
        >>> parse_input_shape("1,3,64,64;1,1,64,64")
        [[1, 3, 64, 64], [1, 1, 64, 64]]
    """
    shapes = []
    for chunk in text.split(";"):
        parts = chunk.replace("x", ",").replace(" ", "").strip(",").split(",")
        try:
            shape = [int(p) for p in parts]
        except ValueError:
            shape = []
        if not shape or any(d < 1 for d in shape):
            raise ToolError(f"--input-shape: expected positive integers like 1,3,224,224, "
                            f"got {chunk!r}")
        shapes.append(shape)
    return shapes


def make_inputs(shapes: Sequence[Shape], container: Optional[str] = None) -> Inputs:
    """Random example inputs: one tensor for one shape, else a list (tuple if ``container``)."""
    tensors = [torch.randn(*s) for s in shapes]
    if len(tensors) == 1:
        return tensors[0]
    return tuple(tensors) if container == "tuple" else tensors


# --------------------------------------------------------------------------- model summary
@dataclass
class ConvInfo:
    """One Conv2d layer: name, weight shape, its dependency group and its MACs per sample."""

    name: str
    weight_shape: Tuple[int, ...]
    conv_groups: int
    macs: int
    share: float
    group: Optional[int] = None
    prunable: bool = False


@dataclass
class ConvGroup:
    """Conv2d layers whose output channels the dependency graph prunes together.

    ``members`` lose output channels, ``consumers`` (conv/linear) lose the same input channels.
    """

    index: int
    channels: int
    members: List[str]
    consumers: List[str]
    prunable: bool
    reason: str = ""


@dataclass
class ModelSummary:
    """What ``inspect`` shows; ``total_macs`` equals ``tp.utils.count_ops_and_params``."""

    convs: List[ConvInfo]
    groups: List[ConvGroup]
    other_macs: Dict[str, Tuple[int, int]]  # layer type -> (number of layers, MACs)
    total_macs: int
    total_params: int
    module_types: Dict[str, str] = field(default_factory=dict)

    def conv(self, name: str) -> Optional[ConvInfo]:
        """The :class:`ConvInfo` of ``name`` (``module.`` prefix ignored), or None."""
        name = strip_module_prefix(name)
        return next((c for c in self.convs if c.name == name), None)

    @property
    def prunable_convs(self) -> List[str]:
        """Names of the Conv2d layers whose groups could be pruned."""
        return [c.name for c in self.convs if c.prunable]


def _counted_macs(module: nn.Module, flops: Dict[nn.Module, Any], out: Dict[nn.Module, int],
                  supported: Callable[[nn.Module], bool]) -> None:
    """Collect the modules upstream's counter credits with MACs (it stops at supported ones)."""
    if supported(module):
        out[module] = flops.get(module) or 0
        return
    for child in module.children():
        _counted_macs(child, flops, out, supported)


def conv_dependency_groups(model: nn.Module, example_inputs: Inputs,
                           convs: Optional[Sequence[nn.Conv2d]] = None
                           ) -> List[Tuple[ConvGroup, Any]]:
    """The dependency groups of the output channels of ``convs`` (default: every Conv2d).

    Each group comes once, as ``(ConvGroup, upstream Group with every channel index)``; the
    upstream group is what ``tp.importance`` scores. Built with upstream's DependencyGraph.
    """
    import torch_pruning as tp

    order = {m: i for i, m in enumerate(model.modules())}
    names = {m: strip_module_prefix(n) for n, m in model.named_modules()}
    if convs is None:
        convs = [m for m in order if isinstance(m, nn.Conv2d)]
    with torch.enable_grad():
        graph = tp.DependencyGraph().build_dependency(model, example_inputs, verbose=False)
    covered: set = set()
    out: List[Tuple[ConvGroup, Any]] = []
    for conv in convs:
        if conv in covered or conv not in graph.module2node:
            continue
        pruner = graph.get_pruner_of_module(conv)
        group = graph.get_pruning_group(conv, pruner.prune_out_channels,
                                        list(range(conv.out_channels)))
        members, consumers = [], []
        for dep, _ in group:
            target = dep.target.module
            if not isinstance(target, nn.Module) or target not in names:
                continue
            if isinstance(target, nn.Conv2d) and graph.is_out_channel_pruning_fn(dep.handler):
                members.append(target)
            elif (isinstance(target, (nn.modules.conv._ConvNd, nn.Linear))
                  and graph.is_in_channel_pruning_fn(dep.handler)):
                consumers.append(target)
        members = sorted(set(members) | {conv}, key=order.__getitem__)
        consumers = sorted(set(consumers) - set(members), key=order.__getitem__)
        covered.update(members)
        out.append((ConvGroup(index=len(out) + 1, channels=conv.out_channels,
                              members=[names[m] for m in members],
                              consumers=[names[m] for m in consumers], prunable=bool(consumers),
                              reason="" if consumers else "its channels reach the model output"),
                    group))
    return out


def summarize_model(model: nn.Module, example_inputs: Inputs) -> ModelSummary:
    """Conv2d layers, dependency groups and per-layer MACs of ``model`` on ``example_inputs``.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1))
        >>> s = summarize_model(net, torch.randn(1, 3, 8, 8))
        >>> [(c.name, c.group, c.prunable) for c in s.convs]
        [('0', 1, True), ('2', 2, False)]
    """
    import torch_pruning as tp
    from torch_pruning.utils.op_counter import is_supported_instance

    was_training = model.training
    model.eval()
    try:
        total, params, layer_flops, _ = tp.utils.count_ops_and_params(
            model, example_inputs, layer_wise=True)
        names = {m: strip_module_prefix(n) for n, m in model.named_modules()}
        conv_modules = [m for m in names if isinstance(m, nn.Conv2d)]
        groups = [g for g, _ in conv_dependency_groups(model, example_inputs, conv_modules)]
    finally:
        model.train(was_training)
    total_macs = int(round(total))
    raw_total = layer_flops.get(model) or 0
    scale = total / raw_total if raw_total else 1.0  # upstream reports MACs per sample
    counted: Dict[nn.Module, int] = {}
    _counted_macs(model, layer_flops, counted, is_supported_instance)
    per_module = {m: int(round(f * scale)) for m, f in counted.items()}

    prunable_group = {g.index: g.prunable for g in groups}
    group_of = {member: g.index for g in groups for member in g.members}
    convs = []
    for m in conv_modules:
        macs = per_module.get(m, 0)
        gi = group_of.get(names[m])
        convs.append(ConvInfo(name=names[m], weight_shape=tuple(m.weight.shape),
                              conv_groups=m.groups, macs=macs,
                              share=macs / total_macs if total_macs else 0.0, group=gi,
                              prunable=bool(gi and prunable_group[gi])))
    other: Dict[str, Tuple[int, int]] = {}
    for m, macs in per_module.items():
        if isinstance(m, nn.Conv2d) or macs == 0:
            continue
        n, s = other.get(type(m).__name__, (0, 0))
        other[type(m).__name__] = (n + 1, s + macs)
    rest = total_macs - sum(c.macs for c in convs) - sum(s for _, s in other.values())
    if rest:  # rounding of per-sample values (batch > 1): keep the sum exact
        n, s = other.get("other", (0, 0))
        other["other"] = (n, s + rest)
    return ModelSummary(convs=convs, groups=groups,
                        other_macs=dict(sorted(other.items(), key=lambda kv: -kv[1][1])),
                        total_macs=total_macs, total_params=int(params),
                        module_types={n: type(m).__name__ for m, n in names.items() if n})


def _shape_str(shape: Sequence[int]) -> str:
    return "x".join(str(d) for d in shape)


def format_summary(summary: ModelSummary, title: str = "") -> str:
    """The ``inspect`` table: convs with MACs and share, other layers, total, groups."""
    conv_macs = sum(c.macs for c in summary.convs)
    total = summary.total_macs or 1
    width = max([len(c.name) for c in summary.convs] + [len("all Conv2d layers")])
    lines = [title] if title else []
    lines.append(f"{len(summary.convs)} Conv2d layers in {len(summary.groups)} dependency groups; "
                 f"MACs per sample, share of the whole model")
    lines.append("")
    lines.append(f"{'#':>3}  {'layer':<{width}}  {'weight shape':<14} {'group':>5}  "
                 f"{'MACs':>15}  {'share':>6}")
    for i, c in enumerate(summary.convs, 1):
        group = str(c.group) if c.group is not None else "-"
        mark = "" if c.prunable else "  (not prunable)"
        lines.append(f"{i:>3}  {c.name:<{width}}  {_shape_str(c.weight_shape):<14} {group:>5}  "
                     f"{c.macs:>15,}  {100 * c.macs / total:>5.1f}%{mark}")
    lines.append(f"{'':>3}  {'all Conv2d layers':<{width}}  {'':<14} {'':>5}  {conv_macs:>15,}  "
                 f"{100 * conv_macs / total:>5.1f}%")
    lines.append("")
    lines.append("Other layers (MACs as counted by tp.utils.count_ops_and_params):")
    for kind, (n, macs) in summary.other_macs.items():
        label = f"{kind} ({n})" if n else kind
        lines.append(f"{'':>3}  {label:<{width + 22}}  {macs:>15,}  {100 * macs / total:>5.1f}%")
    lines.append("")
    lines.append(f"Total MACs: {summary.total_macs:,} (= tp.utils.count_ops_and_params); "
                 f"parameters: {summary.total_params:,}")
    lines.append("")
    lines.append("Dependency groups (output channels pruned together; consumers lose the same "
                 "input channels):")
    for g in summary.groups:
        state = "" if g.prunable else f"  [not prunable: {g.reason}]"
        lines.append(f"  Group {g.index} ({g.channels} channels): {', '.join(g.members)}{state}")
        if g.consumers:
            lines.append(f"      consumers: {', '.join(g.consumers)}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- starter config
def starter_config(summary: ModelSummary, input_shapes: Sequence[Shape]) -> Dict[str, Any]:
    """A complete ``pruning_config.json`` dict: every field with its default.

    ``layers`` lists the model's prunable convs and ``input_shape`` the given shapes. The
    fields without a default (epochs and rates) get example values to edit; slice pruning is
    written but off. The result validates with the config model.
    """
    shape: Any = list(input_shapes[0]) if len(input_shapes) == 1 else [list(s) for s in input_shapes]
    layers: Any = summary.prunable_convs or "all"
    channel = ChannelSparsityArgs(start_epoch=10, end_epoch=30, global_prune_rate=0.5,
                                  mac_target=0.7, layers=layers, input_shape=shape)
    slice_ = SliceSparsityArgs(is_prune=False, start_epoch=30, end_epoch=40, prune_rate=0.3)
    data = PruningConfig(channel_sparsity_args=channel,
                         slice_sparsity_args=slice_).model_dump(mode="json", exclude={"schema_"})
    validate_config(data, "<starter config>")
    return data


def write_starter_config(folder: Union[str, Path], data: Dict[str, Any],
                         force: bool = False) -> Path:
    """Write ``data`` as ``<folder>/pruning_config.json`` atomically; never overwrite unless
    ``force``. Returns the path written."""
    path = Path(folder)
    if path.suffix != ".json":
        path = path / CONFIG_FILENAME
    if path.exists() and not force:
        raise ToolError(f"{path} already exists; pass --force to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(data, indent=4) + "\n")
    return path


# --------------------------------------------------------------------------- validate
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
        lines.append(f"  {c.name} ({_shape_str(c.weight_shape)}, A={a}): {slices} slices, "
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


# --------------------------------------------------------------------------- commands
def _error(msg: str) -> int:
    sys.stderr.write(f"error: {msg}\n")
    return 2


def _setup_inspect(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, metavar="MODULE:FACTORY",
                   help="e.g. torchvision.models:resnet18 or path/to/net.py:make_net "
                        "(called without arguments)")
    p.add_argument("--input-shape", default="1,3,224,224", metavar="B,C,H,W",
                   help="example input shape; several inputs separated by ';' "
                        "(default 1,3,224,224)")
    p.add_argument("--write-config", metavar="DIR",
                   help="also write a starter pruning_config.json into DIR")
    p.add_argument("--force", action="store_true",
                   help="overwrite an existing pruning_config.json")


def _run_inspect(args: argparse.Namespace) -> int:
    try:
        shapes = parse_input_shape(args.input_shape)
        if args.write_config and not args.force:  # fail before the slow part
            target = Path(args.write_config)
            target = target if target.suffix == ".json" else target / CONFIG_FILENAME
            if target.exists():
                raise ToolError(f"{target} already exists; pass --force to overwrite it")
        model = load_model(args.model)
        summary = summarize_model(model, make_inputs(shapes))
        title = f"{args.model}, input {' + '.join(_shape_str(s) for s in shapes)}"
        sys.stdout.write(format_summary(summary, title))
        if args.write_config:
            path = write_starter_config(args.write_config, starter_config(summary, shapes),
                                        force=args.force)
            sys.stdout.write(
                f"\nWrote {path}: every field at its default, the {len(summary.prunable_convs)} "
                "prunable Conv2d layers, and example values for the fields without a default "
                "(start_epoch, end_epoch, global_prune_rate; mac_target 0.7). Set them and "
                "regularize.reg for your run, then check it with\n"
                f"  python -m torch_pruning.pat validate {path.parent} --model {args.model}\n")
    except (ToolError, PruningConfigError) as e:
        return _error(str(e))
    return 0


def _setup_validate(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", metavar="DIR",
                   help="folder holding pruning_config.json (or the .json file)")
    p.add_argument("--model", required=True, metavar="MODULE:FACTORY",
                   help="the model the config is meant for (called without arguments)")
    p.add_argument("--input-shape", metavar="B,C,H,W",
                   help="example input shape (default: channel_sparsity_args.input_shape)")


def _run_validate(args: argparse.Namespace) -> int:
    try:
        loaded = load_config(args.config)
        if loaded is None:
            return _error(f"no {CONFIG_FILENAME} in {args.config}; write one with "
                          f"'python -m torch_pruning.pat inspect --model {args.model} "
                          f"--write-config {args.config}'")
        section = loaded.config.channel_sparsity_args
        if args.input_shape:
            shapes = parse_input_shape(args.input_shape)
        elif section is not None and section.input_shape:
            shape = section.input_shape
            shapes = shape if isinstance(shape[0], list) else [shape]  # type: ignore[assignment]
        else:
            return _error("no input shape: pass --input-shape or set "
                          "channel_sparsity_args.input_shape")
        container = section.container if section is not None else None
        model = load_model(args.model)
        summary = summarize_model(model, make_inputs(shapes, container))
        report = check_config(loaded, summary)
    except (ToolError, PruningConfigError) as e:
        return _error(str(e))
    sys.stdout.write(report.text())
    if not report.would_prune:
        for reason in report.nothing:
            sys.stderr.write(f"error: {reason}\n")
        return 1
    sys.stdout.write("OK: the config prunes the layers listed above.\n")
    return 0


def register(commands: Dict[str, tuple]) -> None:
    """Add ``inspect`` and ``validate`` to the CLI's command registry."""
    commands["inspect"] = ("list Conv2d layers, dependency groups and MACs; "
                           "--write-config writes a starter config", _setup_inspect, _run_inspect)
    commands["validate"] = ("dry-run a pruning_config.json on a model: what would be pruned",
                            _setup_validate, _run_validate)
