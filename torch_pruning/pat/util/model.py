"""Small model helpers shared by the pruners: unwrapping DDP, devices of models and inputs."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["unwrap_model", "model_device", "to_device"]


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
