"""Small model helpers shared by the pruners: unwrapping DDP and finding the device."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["unwrap_model", "model_device"]


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
