"""Latency-aware cost: per-layer latency measured once on the model's device.

With ``channel_sparsity_args.cost: "latency"`` the channel pruner's budget is latency instead
of MACs. Each leaf layer that upstream counts MACs for is timed once, alone, on the input it
receives in the example forward (median of a few runs, on the model's device). Its measured
*milliseconds per MAC* then prices the layer at any width: the estimated latency of a (masked)
model is ``sum(ms_per_mac[layer] * macs[layer])`` over the measured layers, with the MACs of
each layer counted as if its masked channels were removed (:class:`~.macs.MacCounter`). A layer
that is slow for its MACs (a depthwise conv, a memory-bound 1x1 on a wide map) therefore costs
more than its MACs say, ``mac_target`` reads as a fraction of the estimated latency, and
``MAC_params`` importance ranks groups by their latency.

The table is cached as ``latency_table.json`` beside ``pruning_config.json`` (atomic write, rank
0 only under DDP) and reused while the layers, their input shapes, the device and the thread
count are unchanged.

Example:
    >>> table = LatencyTable.measure(net, torch.randn(1, 3, 32, 32))  # doctest: +SKIP
    >>> cost = LatencyCost(MacCounter(net, x), table.per_mac(net))  # doctest: +SKIP
    >>> cost.base_cost  # estimated milliseconds of the whole model  # doctest: +SKIP
    0.41
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import torch
import torch.distributed as dist
from torch import nn

from ..util.io import atomic_write_text
from ..util.log import UserLog, emit
from ..util.model import call_model
from .cost import RemovalPlan
from .macs import MacCounter, count_macs
from .masks import strip_module_prefix

__all__ = ["LATENCY_TABLE", "LatencyTable", "LatencyCost", "time_module", "load_or_measure"]

logger = logging.getLogger(__name__)

#: File name of the cached table, beside ``pruning_config.json``.
LATENCY_TABLE = "latency_table.json"
_VERSION = 1


def time_module(module: nn.Module, inputs: Tuple[Any, ...], repeats: int = 10) -> float:
    """Median milliseconds of ``module(*inputs)`` over ``repeats`` runs (after 2 warm-ups).

    Example:
        >>> time_module(nn.Conv2d(3, 8, 3), (torch.randn(1, 3, 16, 16),)) > 0
        True
    """
    sync = (torch.cuda.synchronize if any(isinstance(t, torch.Tensor) and t.is_cuda
                                         for t in inputs) else (lambda: None))
    times: List[float] = []
    with torch.no_grad():
        for i in range(repeats + 2):
            sync()
            start = time.perf_counter()
            module(*inputs)
            sync()
            if i >= 2:
                times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def _layer_inputs(model: nn.Module, example_inputs: Any,
                  forward_fn: Optional[Callable[[nn.Module, Any], Any]],
                  layers: Dict[str, nn.Module]) -> Dict[str, Tuple[Any, ...]]:
    """The positional inputs each of ``layers`` receives in one eval-mode example forward."""
    seen: Dict[str, Tuple[Any, ...]] = {}

    def hook(name: str) -> Callable[..., None]:
        def record(module: nn.Module, args: Tuple[Any, ...]) -> None:
            if name not in seen:
                seen[name] = tuple(a.detach().clone() if isinstance(a, torch.Tensor) else a
                                   for a in args)
        return record

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in layers.items()]
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            (forward_fn or call_model)(model, example_inputs)
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes.items():
            m.training = mode
    return seen


def _shape(args: Tuple[Any, ...]) -> List[List[int]]:
    return [list(a.shape) for a in args if isinstance(a, torch.Tensor)]


@dataclass
class LatencyTable:
    """Measured latency (ms) and MACs of each leaf layer, with what they were measured on.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3))
        >>> table = LatencyTable.measure(net, torch.randn(1, 3, 8, 8))
        >>> table.layers["0"]["ms"] > 0
        True
    """

    device: str
    threads: int
    layers: Dict[str, Dict[str, Any]]

    @classmethod
    def signature(cls, model: nn.Module, example_inputs: Any,
                  forward_fn: Optional[Callable[[nn.Module, Any], Any]] = None,
                  ) -> Tuple[Dict[str, Dict[str, Any]], Dict[str, Tuple[Any, ...]]]:
        """What a table is valid for (layer types, weight and input shapes), and the inputs."""
        macs = count_macs(model, example_inputs, forward_fn, layer_wise=True)[2]
        leaves = {strip_module_prefix(n): m for n, m in model.named_modules()
                  if n and not any(True for _ in m.children()) and (macs.get(m) or 0) > 0}
        inputs = _layer_inputs(model, example_inputs, forward_fn, leaves)
        sig = {}
        for name, m in leaves.items():
            if name not in inputs:
                continue
            weight = getattr(m, "weight", None)
            sig[name] = {"type": type(m).__name__, "macs": float(macs[m]),
                         "input_shape": _shape(inputs[name]),
                         "weight_shape": list(weight.shape) if isinstance(weight, torch.Tensor)
                         else None}
        return sig, inputs

    @classmethod
    def measure(cls, model: nn.Module, example_inputs: Any,
                forward_fn: Optional[Callable[[nn.Module, Any], Any]] = None,
                repeats: int = 10) -> "LatencyTable":
        """Time every leaf layer with MACs once, alone, on its example input.

        Layers of the same type, shapes and MACs (the blocks of a ResNet stage, a
        transformer's MLPs) share the median of their measurements, so timing noise does not
        make one of several identical layers look slower than the others.
        """
        sig, inputs = cls.signature(model, example_inputs, forward_fn)
        named = {strip_module_prefix(n): m for n, m in model.named_modules()}
        modes = {m: m.training for m in model.modules()}
        model.eval()
        alike: Dict[str, List[str]] = {}
        try:
            for name, entry in sig.items():
                alike.setdefault(json.dumps(entry, sort_keys=True), []).append(name)
                entry["ms"] = time_module(named[name], inputs[name], repeats)
        finally:
            for m, mode in modes.items():
                m.training = mode
        for names in alike.values():
            shared = statistics.median(sig[n]["ms"] for n in names)
            for n in names:
                sig[n]["ms"] = shared
        return cls(_device_of(model), torch.get_num_threads(), sig)

    def matches(self, other: "LatencyTable") -> bool:
        """Same device, threads, layers and shapes (measured times are not compared)."""
        strip = lambda layers: {n: {k: v for k, v in e.items() if k != "ms"}  # noqa: E731
                                for n, e in layers.items()}
        return (self.device, self.threads) == (other.device, other.threads) and \
            strip(self.layers) == strip(other.layers)

    def per_mac(self, model: nn.Module) -> Dict[nn.Module, float]:
        """Milliseconds per MAC of each measured layer, keyed by the model's modules."""
        named = {strip_module_prefix(n): m for n, m in model.named_modules()}
        return {named[n]: e["ms"] / e["macs"] for n, e in self.layers.items()
                if n in named and e.get("macs", 0) > 0 and "ms" in e}

    def to_json(self) -> str:
        return json.dumps({"version": _VERSION, "device": self.device, "threads": self.threads,
                           "layers": self.layers}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> "LatencyTable":
        data = json.loads(text)
        if data.get("version") != _VERSION:
            raise ValueError(f"latency table version {data.get('version')} != {_VERSION}")
        return cls(data["device"], int(data["threads"]), data["layers"])


def _device_of(model: nn.Module) -> str:
    param = next(model.parameters(), None)
    return str(param.device) if param is not None else "cpu"


def load_or_measure(model: nn.Module, example_inputs: Any,
                    forward_fn: Optional[Callable[[nn.Module, Any], Any]] = None, *,
                    folder: Optional[Path] = None, repeats: int = 10,
                    log: Optional[UserLog] = None) -> LatencyTable:
    """The cached table in ``folder`` if it still fits the model, else a new measurement
    (written to ``folder/latency_table.json`` atomically).

    Under torch.distributed only rank 0 reads, measures and writes; the other ranks receive
    its table, so every rank prices layers alike and selects the same channels.

    Example:
        >>> table = load_or_measure(net, x, folder=Path("runs/exp1"))  # doctest: +SKIP
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return _load_or_measure(model, example_inputs, forward_fn, folder, repeats, log)
    shared = [_load_or_measure(model, example_inputs, forward_fn, folder, repeats, log).to_json()
              if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(shared, src=0)
    return LatencyTable.from_json(shared[0])


def _load_or_measure(model: nn.Module, example_inputs: Any,
                     forward_fn: Optional[Callable[[nn.Module, Any], Any]],
                     folder: Optional[Path], repeats: int,
                     log: Optional[UserLog]) -> LatencyTable:
    path = Path(folder) / LATENCY_TABLE if folder is not None else None
    if path is not None and path.is_file():
        try:
            cached = LatencyTable.from_json(path.read_text())
            sig, _ = LatencyTable.signature(model, example_inputs, forward_fn)
            current = LatencyTable(_device_of(model), torch.get_num_threads(), sig)
            if cached.matches(current):
                emit(f"Using the latency table {path} ({len(cached.layers)} layers).", log,
                     logger=logger)
                return cached
            emit(f"{path} was measured for other layers, shapes, device or threads: "
                 "measuring again.", log, logger=logger)
        except (ValueError, KeyError, TypeError) as e:
            emit(f"ignoring the unreadable latency table {path} ({e})", log, logging.WARNING,
                 logger)
    table = LatencyTable.measure(model, example_inputs, forward_fn, repeats)
    total = sum(e["ms"] for e in table.layers.values())
    emit(f"Measured the latency of {len(table.layers)} layers on {table.device}: {total:.3f} ms "
         "in total" + (f" (cached in {path})." if path is not None else "."), log, logger=logger)
    if path is not None:
        try:
            atomic_write_text(path, table.to_json())
        except OSError as e:
            emit(f"could not cache the latency table at {path}: {e}", log, logging.WARNING,
                 logger)
    return table


class LatencyCost:
    """The latency :class:`~.cost.CostModel` for ``cost: "latency"``: estimated milliseconds
    (each layer's MACs, counted by a :class:`~.macs.MacCounter`, priced at its measured ms/MAC).

    Example:
        >>> cost = LatencyCost(counter, table.per_mac(model))  # doctest: +SKIP
        >>> ms, params = cost.count({(conv, prune_conv_out_channels): (0, [0])})  # doctest: +SKIP
        >>> ms < cost.base_cost  # doctest: +SKIP
        True
    """

    def __init__(self, counter: MacCounter, per_mac: Dict[nn.Module, float]) -> None:
        self.counter = counter
        self.per_mac = per_mac
        self.base_cost = self._price(counter.layer_macs)

    def _price(self, layer_macs: Dict[nn.Module, float]) -> float:
        return float(sum(rate * layer_macs.get(m, 0.0) for m, rate in self.per_mac.items()))

    def cost(self, modules: Iterable[nn.Module]) -> float:
        """Estimated milliseconds of ``modules`` (a group's coupled layers) in the model now."""
        chosen = set(modules)
        return float(sum(rate * self.counter.layer_macs.get(m, 0.0)
                         for m, rate in self.per_mac.items() if m in chosen))

    def count(self, removal: RemovalPlan) -> Tuple[float, int]:
        """(estimated milliseconds, params) with ``removal`` applied."""
        params = self.counter.count(removal)[1]
        return self._price(self.counter.count_layers(removal)), params
