"""Small model helpers shared by every layer: unwrapping DDP, devices, calling a model on
example inputs."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["unwrap_model", "model_device", "to_device", "call_model"]


def unwrap_model(model: nn.Module) -> nn.Module:
    """Return the user's module inside DistributedDataParallel / DataParallel wrappers.

    Example:
        >>> net = nn.Linear(2, 2)
        >>> unwrap_model(nn.DataParallel(net)) is net
        True
    """
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return model


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for an empty model)."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def to_device(inputs: Any, device: torch.device) -> Any:
    """Move a tensor, or the tensors of a (nested) list/tuple/dict, to ``device``.

    Example:
        >>> to_device({"x": [torch.zeros(1)]}, torch.device("cpu"))["x"][0].device.type
        'cpu'
    """
    if isinstance(inputs, torch.Tensor):
        return inputs.to(device)
    if isinstance(inputs, dict):
        return {k: to_device(v, device) for k, v in inputs.items()}
    if isinstance(inputs, (list, tuple)):
        return type(inputs)(to_device(v, device) for v in inputs)
    return inputs


def call_model(model: nn.Module, inputs: Any) -> Any:
    """Run ``model`` on example inputs: a tensor, a list/tuple of tensors, or a dict.

    Used as the tracing ``forward_fn`` when the user gives none. Upstream's default calls
    ``model(*inputs)`` first and falls back on any error, which unpacks a single batch-1 tensor
    into an *unbatched* sample (see ``tests/test_channel_pruner.py::test_upstream_unpacks``).
    """
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, (list, tuple)):
        return model(*inputs)
    return model(inputs)
