"""Tracing a model into upstream's DependencyGraph, without side effects on the model.

:func:`build_graph` is what the channel pruner (and the tools) trace with: it always passes a
``forward_fn`` (:func:`~torch_pruning.pat.util.model.call_model`), restores every module's ``training`` flag, records which
modules produce the model's outputs and the inputs every attention module received.

Example:
    >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 1))
    >>> build_graph(net, torch.randn(1, 3, 8, 8)).output_modules == {net[2]}
    True
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

from torch_pruning.dependency import DependencyGraph

from ..attention.heads import tensors_in
from ..core.heads import head_count_attr
from ..util.model import call_model

__all__ = ["build_graph"]


def _detached(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, (list, tuple)):
        items = [_detached(v) for v in value]
        return type(value)(*items) if hasattr(value, "_fields") else type(value)(items)
    if isinstance(value, dict):
        return {k: _detached(v) for k, v in value.items()}
    return value


def build_graph(model: nn.Module, example_inputs: Any,
                forward_fn: Optional[Callable[[nn.Module, Any], Any]] = None) -> DependencyGraph:
    """Trace ``model`` into upstream's DependencyGraph without side effects on the model.

    Upstream's tracing switches the model to eval mode and leaves it there; every module's
    ``training`` flag is restored here. Upstream only marks model outputs that come from a
    non-module op; the graph gets an ``output_modules`` set with the modules whose output *is*
    a model output, so their channels are never pruned, and an ``attention_inputs`` dict with
    the inputs each module with a head count received (to check head removal is exact;
    :func:`select_groups` clears it).

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 1))
        >>> build_graph(net, torch.randn(1, 3, 8, 8)).output_modules == {net[2]}
        True
    """
    modes = {m: m.training for m in model.modules()}
    outputs: List[Any] = []
    seen: Dict[nn.Module, Tuple[Any, Any]] = {}

    def record(m: nn.Module, args: Any, kwargs: Any) -> None:
        seen.setdefault(m, _detached((args, kwargs)))

    hooks = [m.register_forward_pre_hook(record, with_kwargs=True) for m in model.modules()
             if head_count_attr(m)]

    def traced(m: nn.Module, inputs: Any) -> Any:
        out = (forward_fn or call_model)(m, inputs)
        outputs.extend(t.grad_fn for t in tensors_in(out))
        return out

    try:
        with torch.enable_grad():
            graph = DependencyGraph().build_dependency(
                model, example_inputs=example_inputs, forward_fn=traced, verbose=False)
    finally:
        for h in hooks:
            h.remove()
        for m, mode in modes.items():
            m.training = mode
    graph.attention_inputs = seen
    graph.output_modules = {m for m, node in graph.module2node.items()
                            if node.grad_fn is not None and node.grad_fn in outputs}
    return graph
