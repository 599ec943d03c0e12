"""MACs of a masked model, counted as if its masked channels were removed.

The count *is* upstream's: :class:`MacCounter` keeps a weightless skeleton of the model (a copy
whose parameters live on the ``meta`` device, so it costs no memory and no arithmetic), applies
upstream's own pruning handlers to it for a given set of pruned channels, runs
``torch_pruning.utils.count_ops_and_params`` on it and restores the touched modules. The result
therefore equals the count of the physically pruned model by construction (tests check it on
random masks).

Cost: the handlers and one shape-only forward per count (norm and activation modules pass
their input through in the skeleton; upstream's hooks count them from the shapes); see
``benchmarks/bench_channel.py``. If a model cannot run on ``meta`` tensors (data-dependent
control flow), the skeleton is materialized with zeros on the inputs' device instead.

Example:
    >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3))
    >>> counter = MacCounter(net, torch.randn(1, 3, 16, 16))
    >>> counter.base_macs == tp.utils.count_ops_and_params(net, torch.randn(1, 3, 16, 16))[0]  # doctest: +SKIP
    True
"""

from __future__ import annotations

import contextlib
import copy
import io
import itertools
import logging
from typing import Any, Callable, Dict, Iterable, Iterator, Optional, Tuple

import torch
from torch import nn

from torch_pruning.utils import count_ops_and_params

from ..util.model import to_device
from .cost import RemovalPlan

__all__ = ["MacCounter", "count_macs", "SHAPE_PRESERVING"]

logger = logging.getLogger(__name__)

#: Leaf modules whose output has the input's shape: in the skeleton they return their input
#: (upstream's hooks still count them from the shapes), which skips slow meta kernels.
SHAPE_PRESERVING = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm,
                    nn.modules.instancenorm._InstanceNorm, nn.ReLU, nn.ReLU6, nn.Hardtanh,
                    nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
                    nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.Softplus,
                    nn.modules.dropout._DropoutNd, nn.Identity)


def _passthrough(x: Any, *args: Any, **kwargs: Any) -> Any:
    return x


def _skeleton(model: nn.Module, device: torch.device) -> nn.Module:
    """A structural copy of ``model`` whose tensors are new (meta: free; else zeros)."""
    memo: Dict[int, Any] = {}
    for t in itertools.chain(model.parameters(), model.buffers()):
        new = (torch.empty_like(t, device=device) if device.type == "meta"
               else torch.zeros_like(t, device=device))
        memo[id(t)] = nn.Parameter(new, requires_grad=t.requires_grad) \
            if isinstance(t, nn.Parameter) else new
    skeleton = copy.deepcopy(model, memo)
    for m in skeleton.modules():
        if isinstance(m, SHAPE_PRESERVING):
            m.forward = _passthrough
    return skeleton


class _Counted(nn.Module):
    """What ``count_ops_and_params`` is given: calls the model (through the user's
    ``forward_fn`` if any) and, for a private throwaway model, skips upstream's defensive
    deep copy (``copy.deepcopy`` returns the wrapper itself)."""

    def __init__(self, inner: nn.Module, forward_fn: Optional[Callable[[nn.Module, Any], Any]],
                 kind: type) -> None:
        super().__init__()
        self.inner = inner
        self._fn = forward_fn
        self._kind = kind

    def __deepcopy__(self, memo: Dict[int, Any]) -> _Counted:
        return self

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self._fn is None:
            return self.inner(*args, **kwargs)
        if kwargs:
            return self._fn(self.inner, kwargs)
        if self._kind in (list, tuple):
            return self._fn(self.inner, self._kind(args))
        return self._fn(self.inner, args[0])


def count_macs(model: nn.Module, inputs: Any,
               forward_fn: Optional[Callable[[nn.Module, Any], Any]] = None,
               layer_wise: bool = False, private: bool = False) -> Tuple[Any, ...]:
    """``count_ops_and_params`` of ``model`` (through ``forward_fn`` if given), quietly.

    ``private=True`` (a throwaway model) skips upstream's deep copy. Upstream prints some
    warnings (e.g. for keyword-only inputs) to stdout; they go to the debug log.

    Example:
        >>> count_macs(nn.Conv2d(3, 4, 1), torch.randn(1, 3, 2, 2))
        (64.0, 16)
    """
    target = model
    if forward_fn is not None or private:
        target = _Counted(model if private else copy.deepcopy(model), forward_fn, type(inputs))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        result = count_ops_and_params(target, inputs, layer_wise=layer_wise)
    if out.getvalue().strip():
        logger.debug("count_ops_and_params: %s", out.getvalue().strip())
    return result


class MacCounter:
    """MACs and parameter counts of a model with some channels removed, without touching it.

    The MAC :class:`~.cost.CostModel`: :meth:`count` takes a :data:`~.cost.RemovalPlan`.

    Args:
        model: the (unwrapped) model, in its current shapes.
        example_inputs: the inputs MACs are counted for (as given to the pruner).
        forward_fn: upstream-form ``fn(model, inputs)`` used to run the model, or None.

    Attributes:
        base_macs, base_params: the counts of the model as it is.
        layer_macs: MACs of each module of the model (as counted by upstream).

    Example:
        >>> counter = MacCounter(net, torch.randn(1, 3, 16, 16))  # doctest: +SKIP
        >>> counter.count({(net[0], prune_conv_out_channels): (0, [0])})  # doctest: +SKIP
        (52352.0, 188)
    """

    def __init__(self, model: nn.Module, example_inputs: Any,
                 forward_fn: Optional[Callable[[nn.Module, Any], Any]] = None) -> None:
        self._forward_fn = forward_fn
        self._position = {m: i for i, m in enumerate(model.modules())}
        self._cache: Tuple[Optional[bytes], Tuple[float, int]] = (None, (0.0, 0))
        try:
            self._setup(model, example_inputs, torch.device("meta"))
        except Exception as e:
            device = _first_device(example_inputs)
            logger.debug("counting MACs on meta tensors failed (%s); using %s", e, device)
            self._setup(model, example_inputs, device)

    def _setup(self, model: nn.Module, inputs: Any, device: torch.device) -> None:
        self.device = device
        self._skeleton = _skeleton(model, device)
        self._modules = list(self._skeleton.modules())
        self._inputs = to_device(inputs, device)
        if self._forward_fn is not None and not self._runs_given_model(self._forward_fn, model):
            # e.g. the seed's ``model.forward``: bound to the live model, it cannot run a copy
            logger.debug("forward_fn ignores its model argument; MACs are counted by calling "
                         "the model with the example inputs")
            self._forward_fn = None
        macs, params, layer, _ = count_macs(self._skeleton, self._inputs, self._forward_fn,
                                            layer_wise=True, private=True)
        self.base_macs, self.base_params = float(macs), int(params)
        self.layer_macs: Dict[nn.Module, float] = {
            m: float(layer.get(self._modules[i]) or 0.0) for m, i in self._position.items()}

    def _runs_given_model(self, forward_fn: Callable[[nn.Module, Any], Any],
                          live: nn.Module) -> bool:
        """Whether ``forward_fn(skeleton, inputs)`` runs the skeleton (not the live model).

        Aborts at the first module call either way, so the live model never runs on meta
        inputs (its BatchNorm statistics are left alone).
        """
        class _Reached(Exception):
            def __init__(self, skeleton: bool) -> None:
                self.skeleton = skeleton

        def probe(skeleton: bool) -> Callable[..., None]:
            def hook(module: nn.Module, args: Any) -> None:
                raise _Reached(skeleton)
            return hook

        handles = [m.register_forward_pre_hook(probe(True)) for m in self._skeleton.modules()]
        handles += [m.register_forward_pre_hook(probe(False)) for m in live.modules()]
        try:
            with torch.no_grad():
                forward_fn(self._skeleton, self._inputs)
        except _Reached as reached:
            return reached.skeleton
        finally:
            for h in handles:
                h.remove()
        return False

    @property
    def base_cost(self) -> float:
        """The :class:`~.cost.CostModel` name of :attr:`base_macs`."""
        return self.base_macs

    def cost(self, modules: Iterable[nn.Module]) -> float:
        """Sum of the base MACs of ``modules`` (a group's coupled layers)."""
        return float(sum(self.layer_macs.get(m, 0.0) for m in set(modules)))

    def count(self, removal: RemovalPlan) -> Tuple[float, int]:
        """(MACs, params) of the model with ``removal`` applied; the last result is cached.

        The handlers run on the skeleton itself and every touched module is restored after
        counting, so no copy is made per count.
        """
        if not removal:
            return self.base_macs, self.base_params
        key = repr(sorted((self._position[m], h.__qualname__, tuple(i))
                          for (m, h), (_, i) in removal.items())).encode()
        if self._cache[0] == key:
            return self._cache[1]
        with self._applied(removal):
            macs, params = count_macs(self._skeleton, self._inputs, self._forward_fn,
                                      private=True)
        result = (float(macs), int(params))
        self._cache = (key, result)
        return result

    def count_layers(self, removal: RemovalPlan) -> Dict[nn.Module, float]:
        """MACs of every module of the model with ``removal`` applied (keyed by live module).

        Example:
            >>> counter.count_layers({})[net[0]] == counter.layer_macs[net[0]]  # doctest: +SKIP
            True
        """
        if not removal:
            return dict(self.layer_macs)
        with self._applied(removal):
            layer = count_macs(self._skeleton, self._inputs, self._forward_fn, layer_wise=True,
                               private=True)[2]
        return {m: float(layer.get(self._modules[i]) or 0.0) for m, i in self._position.items()}

    @contextlib.contextmanager
    def _applied(self, removal: RemovalPlan) -> Iterator[None]:
        """Run upstream's handlers on the skeleton; restore every touched module after."""
        touched = {self._modules[self._position[m]] for m, _ in removal}
        saved = [(m, dict(m.__dict__), dict(m._parameters), dict(m._buffers)) for m in touched]
        try:
            for (module, handler), (dim, idxs) in removal.items():
                if dim is not None:  # as upstream's Dependency.__call__
                    handler.__self__.pruning_dim = dim
                handler(self._modules[self._position[module]], idxs)
            yield
        finally:
            for m, attrs, params_, buffers in saved:
                m.__dict__.clear()
                m.__dict__.update(attrs)
                m._parameters.clear()
                m._parameters.update(params_)
                m._buffers.clear()
                m._buffers.update(buffers)


def _first_device(inputs: Any) -> torch.device:
    if isinstance(inputs, torch.Tensor):
        return inputs.device
    values = inputs.values() if isinstance(inputs, dict) else inputs
    for v in values if isinstance(values, Iterable) else ():
        if isinstance(v, torch.Tensor):
            return v.device
    return torch.device("cpu")
