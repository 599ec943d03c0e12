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

import contextlib
import traceback
from typing import Any, Callable, Dict, Iterator, List, NoReturn, Optional, Tuple

import torch
from torch import nn

from torch_pruning.dependency import DependencyGraph, index_mapping

from ..attention.heads import tensors_in
from ..config.errors import PruningConfigError
from ..core.heads import head_count_attr
from ..util.model import call_model

__all__ = ["build_graph", "UntraceableModelError", "describe_inputs", "index_mapping_once",
           "pruning_group", "GroupDidNotConverge"]

SECTION = "channel_sparsity_args"


class UntraceableModelError(PruningConfigError):
    """The model runs on its example inputs, but upstream's DependencyGraph cannot trace it,
    so channel pruning (which needs the whole model's graph) cannot run on it."""


def describe_inputs(inputs: Any) -> str:
    """Shapes of example inputs, e.g. ``[1, 3, 224, 224]`` or ``([1, 3, 8, 8], [1, 4])``.

    Example:
        >>> describe_inputs((torch.zeros(1, 3), torch.zeros(2)))
        '([1, 3], [2])'
    """
    if isinstance(inputs, torch.Tensor):
        return str(list(inputs.shape))
    if isinstance(inputs, dict):
        return "{" + ", ".join(f"{k!r}: {describe_inputs(v)}" for k, v in inputs.items()) + "}"
    if isinstance(inputs, (list, tuple)):
        inner = ", ".join(describe_inputs(v) for v in inputs)
        return f"({inner})" if isinstance(inputs, tuple) else f"[{inner}]"
    return type(inputs).__name__


def _upstream_frame(exc: BaseException) -> str:
    """Where in upstream's package ``exc`` was raised (innermost frame), e.g.
    ``update_reshape_index_mapping (dependency/index_mapping.py:219)``; "" if not there."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if "torch_pruning" in f.filename.replace("\\", "/") and "/pat/" not in
              f.filename.replace("\\", "/")]
    if not frames:
        return ""
    f = frames[-1]
    path = f.filename.replace("\\", "/").split("torch_pruning/")[-1]
    return f"{f.name} ({path}:{f.lineno})"


_CONSTRUCTS = {
    "reshape": "a view/reshape that splits or merges the channel dimension (e.g. a channel "
               "shuffle: x.view(B, groups, C // groups, H, W))",
    "concat": "a torch.cat whose inputs the graph cannot size",
    "split": "a split/chunk of the channel dimension",
}


def _explain_failure(model: nn.Module, inputs: Any, forward_fn: Optional[Callable[..., Any]],
                     exc: Exception, source: str, inputs_field: str) -> NoReturn:
    """Raise the error a user can act on for a failed trace: the inputs do not fit the model
    (it fails to run plainly), or upstream's tracing fails on a model that runs."""
    name = type(model).__name__
    model.eval()  # the caller restores every training flag
    try:
        with torch.no_grad():
            (forward_fn or call_model)(model, inputs)
    except Exception as run_exc:
        raise PruningConfigError(
            f"{inputs_field}: {name} cannot run on example inputs of shape "
            f"{describe_inputs(inputs)}: {type(run_exc).__name__}: {run_exc}. Give the shape "
            "the model takes (batch, channels, height, width; one shape per input)",
            source=source, field=inputs_field) from run_exc
    where = _upstream_frame(exc)
    construct = next((text for key, text in _CONSTRUCTS.items() if key in where), "")
    raise UntraceableModelError(
        f"{SECTION}: upstream torch-pruning's DependencyGraph failed to trace {name} "
        f"(the model itself runs on inputs {describe_inputs(inputs)}): "
        f"{type(exc).__name__}: {exc}" + (f", in upstream's {where}" if where else "")
        + (f"; the construct it fails on is likely {construct}" if construct else "")
        + ". Channel pruning needs the graph of the whole model, so listing fewer layers does "
        "not avoid this. What to do: rewrite that construct in the model (or wrap it in a "
        "module upstream treats as a leaf), or set channel_sparsity_args.is_prune to false "
        "(slice pruning does not trace the model), and report the model to upstream "
        "Torch-Pruning", source=source, field=SECTION) from exc


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
                forward_fn: Optional[Callable[[nn.Module, Any], Any]] = None, *,
                source: str = "", inputs_field: str = "example_inputs") -> DependencyGraph:
    """Trace ``model`` into upstream's DependencyGraph without side effects on the model.

    Upstream's tracing switches the model to eval mode and leaves it there; every module's
    ``training`` flag is restored here. Upstream only marks model outputs that come from a
    non-module op; the graph gets an ``output_modules`` set with the modules whose output *is*
    a model output, so their channels are never pruned, and an ``attention_inputs`` dict with
    the inputs each module with a head count received (to check head removal is exact;
    :func:`select_groups` clears it).

    A failed trace raises :class:`PruningConfigError` naming ``inputs_field`` (e.g.
    ``channel_sparsity_args.input_shape``) and torch's message when the model cannot run on
    the inputs, else :class:`UntraceableModelError` (upstream's tracing failed) naming the
    model's class, upstream's error and what to do. ``source`` is the config file.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 1))
        >>> build_graph(net, torch.randn(1, 3, 8, 8)).output_modules == {net[2]}
        True
    """
    modules = list(model.modules())
    modes = {m: m.training for m in modules}
    outputs: List[Any] = []
    seen: Dict[nn.Module, Tuple[Any, Any]] = {}

    def record(m: nn.Module, args: Any, kwargs: Any) -> None:
        seen.setdefault(m, _detached((args, kwargs)))

    hooks = [m.register_forward_pre_hook(record, with_kwargs=True) for m in modules
             if head_count_attr(m)]

    def traced(m: nn.Module, inputs: Any) -> Any:
        out = (forward_fn or call_model)(m, inputs)
        outputs.extend(t.grad_fn for t in tensors_in(out))
        if isinstance(out, dict) and "logits" in out:  # a Hugging Face ModelOutput: its KV
            return tuple(tensors_in(out))  # cache object is no tensor upstream can trace
        return out

    try:
        with torch.enable_grad():
            graph = DependencyGraph().build_dependency(
                model, example_inputs=example_inputs, forward_fn=traced, verbose=False)
    except Exception as exc:
        _explain_failure(model, example_inputs, forward_fn, exc, source, inputs_field)
    finally:
        for h in hooks:
            h.remove()
        for m, mode in modes.items():
            m.training = mode
    graph.attention_inputs = seen
    graph.output_modules = {m for m, node in graph.module2node.items()
                            if node.grad_fn is not None and node.grad_fn in outputs}
    return graph


@contextlib.contextmanager
def index_mapping_once(DG: DependencyGraph) -> Iterator[DependencyGraph]:
    """Inside the block, ``DG.get_pruning_group`` does not redo the graph's index mapping.

    Upstream's ``get_pruning_group`` first re-runs ``index_mapping.update_index_mapping`` over
    every node of the graph (needed after a physical removal changed channel counts), so
    selecting ``n`` groups from a fresh graph walks all its nodes ``n`` more times for nothing:
    about a fifth of ``get_pruning_group``'s time on mobilenet_v2. The mapping is updated
    once on entry, then left alone for ``DG`` until the block ends; nothing may prune the
    model inside the block. Other graphs (another thread's) are updated as usual, and the
    original function is put back on exit (if another block replaced it meanwhile, ours
    turns into a plain pass-through).

    This is the one place the channel pruner swaps an upstream function;
    ``tests/test_channel_pruner.py::test_groups_select_with_one_index_mapping`` shows the
    repeated update and checks the groups are the same without it.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 1))
        >>> DG = build_graph(net, torch.randn(1, 3, 8, 8))
        >>> prune_out = DG.get_pruner_of_module(net[0]).prune_out_channels
        >>> with index_mapping_once(DG):
        ...     len(DG.get_pruning_group(net[0], prune_out, [0]))
        3
    """
    original = index_mapping.update_index_mapping
    original(DG)
    active = True

    def update(graph: DependencyGraph) -> None:
        if not (active and graph is DG):
            original(graph)

    index_mapping.update_index_mapping = update
    try:
        yield DG
    finally:
        active = False
        if index_mapping.update_index_mapping is update:
            index_mapping.update_index_mapping = original


class GroupDidNotConverge(RuntimeError):
    """Upstream's propagation of one layer's channels through the graph kept growing without
    settling (seen on shifted-window attention, e.g. torchvision's ``swin_t``)."""


#: Bounds on a group under construction, beyond which its propagation counts as diverged: items
#: per node of the graph (a converged group holds each (layer, handler) pair once or a few
#: times) and channel indices in all (a flatten before a classifier legitimately multiplies
#: indices by the spatial size, e.g. 512 x 7 x 7; the diverging walks seen in practice pass
#: millions within seconds and then run for hours).
GROUP_ITEMS_PER_NODE = 4
GROUP_MAX_INDICES = 2_000_000


def pruning_group(DG: DependencyGraph, module: nn.Module, pruning_fn: Callable[..., Any],
                  idxs: List[int]) -> Any:
    """``DG.get_pruning_group(module, pruning_fn, idxs)``, stopped with
    :class:`GroupDidNotConverge` once the group under construction holds more than
    :data:`GROUP_ITEMS_PER_NODE` items per node of the graph or more than
    :data:`GROUP_MAX_INDICES` channel indices in all.

    Upstream re-visits a layer whenever it arrives with a different index list, and each
    flatten on the way multiplies the list; on some graphs (reshapes that fold channels into
    windows and back, as in shifted-window attention) that grows without end. The bound turns a
    build that would not finish into a layer skipped with a reason.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 1))
        >>> DG = build_graph(net, torch.randn(1, 3, 8, 8))
        >>> len(pruning_group(DG, net[0], DG.get_pruner_of_module(net[0]).prune_out_channels,
        ...                   [0, 1]))
        3
    """
    from torch_pruning.dependency import graph as upstream_graph

    limit = GROUP_ITEMS_PER_NODE * max(len(DG.module2node), 1)
    plain = upstream_graph.Group
    total = [0]

    class BoundedGroup(plain):  # type: ignore[misc, valid-type]
        def add_dep(self, dep: Any, idxs: Any) -> None:
            total[0] += len(idxs)
            if len(self._group) >= limit or total[0] > GROUP_MAX_INDICES:
                raise GroupDidNotConverge(f"{len(self._group)} layer entries and {total[0]:,} "
                                          "channel indices")
            super().add_dep(dep, idxs)

    upstream_graph.Group = BoundedGroup
    try:
        return DG.get_pruning_group(module, pruning_fn, idxs)
    finally:
        upstream_graph.Group = plain
