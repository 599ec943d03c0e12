"""What ``inspect`` shows about a model: its Conv2d layers, dependency groups and MACs.

Everything comes from the code the channel pruner runs: the graph is traced with
:func:`~torch_pruning.pat.channel.tracing.build_graph`, MACs are counted with
:func:`~torch_pruning.pat.core.macs.count_macs` (upstream's ``count_ops_and_params``; the listed
numbers add up to its total exactly), and a conv is *prunable* exactly when
:func:`~torch_pruning.pat.channel.grouping.select_groups` selects its group for
``layers: "all"`` (a group whose channels feed the model output, e.g. the last conv of a
segmentation head, is not; the reason is shown).

Example:
    >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1))
    >>> summarize_model(net, torch.randn(1, 3, 8, 8)).prunable_convs
    ['0']
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..channel.grouping import resolve_layers, select_groups
from ..channel.tracing import build_graph
from ..core.macs import count_macs
from ..core.masks import strip_module_prefix
from .model_factory import Inputs, format_shape

__all__ = ["ConvInfo", "ConvGroup", "ModelSummary", "conv_dependency_groups", "summarize_model",
           "format_summary"]

logger = logging.getLogger(__name__)


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
    """Conv2d layers whose output channels the channel pruner prunes together (one of its
    groups, same number), or one conv it skips (``prunable`` False, ``reason`` says why).

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
    #: attention modules: (name, head count, how their heads are pruned)
    attention: List[Tuple[str, int, str]] = field(default_factory=list)
    #: gated MLPs: (name, hidden features, how to list them)
    mlps: List[Tuple[str, int, str]] = field(default_factory=list)
    #: prunable groups rooted at Linear layers and attention modules, as ``layers: "all"``
    #: selects them: (source layer, its type, channels, what is pruned)
    other_prunable: List[Tuple[str, str, int, str]] = field(default_factory=list)

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
                           convs: Optional[Sequence[nn.Module]] = None, *,
                           graph: Any = None) -> List[Tuple[ConvGroup, Any]]:
    """The channel pruner's groups of ``convs`` (default: every Conv2d, as ``layers: "all"``).

    Built by :func:`~torch_pruning.pat.channel.grouping.select_groups` on the pruner's trace
    (``graph``, from :func:`~torch_pruning.pat.channel.tracing.build_graph`; traced here when
    not given) and numbered as the pruner numbers them, each as ``(ConvGroup, upstream Group)``
    (the upstream group is what ``tp.importance`` scores). A conv the pruner skips follows as a
    group of its own, not prunable, with the pruner's reason and no upstream group (None).
    """
    order = {m: i for i, m in enumerate(model.modules())}
    names = {m: strip_module_prefix(n) for n, m in model.named_modules()}
    if convs is None:
        convs = [m for m in order if isinstance(m, nn.Conv2d)]
    if graph is None:
        graph = build_graph(model, example_inputs)
    skipped: List[str] = []
    selected = select_groups(model, graph, [names[c] for c in convs], quiet=True,
                             skipped=skipped)
    out: List[Tuple[ConvGroup, Any]] = []
    covered: set = set()
    for g in selected:
        members, consumers = {g.root}, set()
        for dep, _ in g.group:
            target = dep.target.module
            if not isinstance(target, nn.Module) or target not in names:
                continue
            if isinstance(target, nn.Conv2d) and graph.is_out_channel_pruning_fn(dep.handler):
                members.add(target)
            elif (isinstance(target, (nn.modules.conv._ConvNd, nn.Linear))
                  and graph.is_in_channel_pruning_fn(dep.handler)):
                consumers.add(target)
        covered |= members
        out.append((ConvGroup(index=g.number, channels=g.channels,
                              members=[names[m] for m in sorted(members, key=order.__getitem__)],
                              consumers=[names[m] for m in sorted(consumers - members,
                                                                  key=order.__getitem__)],
                              prunable=True), g.group))
    reasons = dict(line.split(": ", 1) for line in skipped if ": " in line)
    for conv in convs:
        if conv not in covered:
            channels = getattr(conv, "out_channels", None) or getattr(conv, "out_features", 0)
            out.append((ConvGroup(index=len(out) + 1, channels=channels,
                                  members=[names[conv]], consumers=[], prunable=False,
                                  reason=reasons.get(names[conv],
                                                     "the channel pruner does not select it")),
                        None))
    return out


def summarize_model(model: nn.Module, example_inputs: Inputs) -> ModelSummary:
    """Conv2d layers, dependency groups and per-layer MACs of ``model`` on ``example_inputs``.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1))
        >>> s = summarize_model(net, torch.randn(1, 3, 8, 8))
        >>> [(c.name, c.group, c.prunable) for c in s.convs]
        [('0', 1, True), ('2', 2, False)]
    """
    from torch_pruning.utils.op_counter import is_supported_instance

    was_training = model.training
    model.eval()
    try:
        total, params, layer_flops, _ = count_macs(model, example_inputs, layer_wise=True)
        names = {m: strip_module_prefix(n) for n, m in model.named_modules()}
        conv_modules = [m for m in names if isinstance(m, nn.Conv2d)]
        graph = build_graph(model, example_inputs)
        other_prunable = _other_prunable(model, graph)  # first: it needs the attention inputs
        graph.attention_inputs = {}
        groups = [g for g, _ in conv_dependency_groups(model, example_inputs, conv_modules,
                                                       graph=graph)]
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
                        module_types={n: type(m).__name__ for m, n in names.items() if n},
                        attention=_attention_modules(names), other_prunable=other_prunable,
                        mlps=_gated_mlps(names))


def _other_prunable(model: nn.Module, graph: Any) -> List[Tuple[str, str, int, str]]:
    """The groups ``layers: "all"`` adds beyond Conv2d: Linear layers (e.g. a transformer's MLP
    hidden layer) and attention modules, found by the channel pruner's own selection."""
    layers = [n for n, m in resolve_layers(model, "all") if not isinstance(m, nn.Conv2d)]
    if not layers:
        return []
    found = []
    for g in select_groups(model, graph, layers, quiet=True):
        unit = "KV groups" if getattr(g.heads, "mode", "") == "kv_group" else "heads"
        what = (f"{g.units} {unit} of {g.heads.name}" if g.heads is not None
                else f"{g.channels} output features")
        found.append((g.source, type(g.root).__name__, g.channels, what))
    return found


def _attention_modules(names: Dict[nn.Module, str]) -> List[Tuple[str, int, str]]:
    """Modules whose heads the channel pruner can remove whole, or could after a split."""
    from ..core.heads import head_count_attr
    from ..core.hf import gqa_counts, is_hf_attention

    found = []
    for m, name in names.items():
        attr = head_count_attr(m)
        if is_hf_attention(m):
            q, kv, head_dim = gqa_counts(m)
            query = (f", or '{name}.q_proj' to remove query heads evenly from every KV group"
                     if q > kv else "")
            found.append((name, q, f"{kv} key/value heads of {head_dim} ({type(m).__name__}, "
                          f"grouped-query attention): list '{name}' to prune whole KV groups"
                          f"{query}"))
        elif isinstance(m, nn.MultiheadAttention):
            found.append((name or "<model>", m.num_heads, "nn.MultiheadAttention: call "
                          "torch_pruning.pat.split_multihead_attention(model) first"))
        elif attr and any(isinstance(c, nn.Linear) for c in m.modules()):
            found.append((name or "<model>", getattr(m, attr),
                          f"{type(m).__name__} ({attr}): list it in layers"))
    return found


def _gated_mlps(names: Dict[nn.Module, str]) -> List[Tuple[str, int, str]]:
    """Gated MLPs (``gate_proj``/``up_proj``/``down_proj``, as in Hugging Face decoders)."""
    from ..core.hf import is_hf_gated_mlp

    return [(name, m.gate_proj.out_features,
             f"{type(m).__name__}: list '{name}.gate_proj' to prune its hidden features "
             "(intermediate_size)") for m, name in names.items() if is_hf_gated_mlp(m)]


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
        lines.append(f"{i:>3}  {c.name:<{width}}  {format_shape(c.weight_shape):<14} {group:>5}  "
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
    sections = [
        ("Prunable Linear and attention layers (selected by layers: \"all\" too, or list them):",
         [f"  {name} ({kind}): {what}" for name, kind, _, what in summary.other_prunable]),
        ("Attention modules (heads pruned whole; Pruning checks each layout and logs the ones "
         "it skips):",
         [f"  {name}: {heads} heads, {how}" for name, heads, how in summary.attention]),
        ("Gated MLPs (gate_proj and up_proj outputs, down_proj inputs pruned together):",
         [f"  {name}: {hidden} hidden features, {how}" for name, hidden, how in summary.mlps]),
    ]
    for title, rows in sections:
        if rows:
            lines += ["", title, *rows]
    return "\n".join(lines) + "\n"
