"""Carry an optimizer's per-parameter state through a physical channel removal.

Resetting the optimizer after removal (the seed's advice) throws away momentum and Adam
moments. :func:`carry_optimizer_state` instead points the optimizer at the reduced parameters
and slices every state tensor shaped like its parameter (momentum buffers, ``exp_avg``,
``exp_avg_sq``, ...) to the surviving channels. Elementwise optimizers (SGD, Adam, AdamW,
RMSprop, ...) then continue exactly as they would have on the masked model.
"""

from __future__ import annotations

from typing import Dict, List, Tuple

import torch

__all__ = ["carry_optimizer_state"]

Replaced = Dict[torch.nn.Parameter, Tuple[torch.nn.Parameter, List[torch.Tensor]]]


@torch.no_grad()
def carry_optimizer_state(optimizer: torch.optim.Optimizer, replaced: Replaced) -> int:
    """Swap removed parameters for their reduced versions in ``optimizer``, state included.

    Args:
        optimizer: the optimizer built on the model before removal.
        replaced: old parameter -> (new parameter, kept indices per dimension), as recorded
            by the channel pruner at removal (``channel_pruner.replaced_params``).

    Returns:
        How many of the optimizer's parameters were replaced.

    Example:
        >>> old = torch.nn.Parameter(torch.ones(4, 2)); new = torch.nn.Parameter(torch.ones(2, 2))
        >>> opt = torch.optim.SGD([old], lr=0.1, momentum=0.9)
        >>> opt.state[old]["momentum_buffer"] = torch.arange(8.).view(4, 2)
        >>> carry_optimizer_state(opt, {old: (new, [torch.tensor([1, 3]), torch.arange(2)])})
        1
        >>> opt.state[new]["momentum_buffer"].tolist()
        [[2.0, 3.0], [6.0, 7.0]]
    """
    count = 0
    for group in optimizer.param_groups:
        params = group["params"]
        for i, param in enumerate(params):
            if param not in replaced:
                continue
            new, index = replaced[param]
            params[i] = new
            count += 1
            state = optimizer.state.pop(param, None)
            if not state:
                continue
            carried = {}
            for key, value in state.items():
                if torch.is_tensor(value) and value.shape == param.shape:
                    for dim, idx in enumerate(index):
                        value = value.index_select(dim, idx.to(value.device))
                    value = value.contiguous()
                carried[key] = value
            optimizer.state[new] = carried
    return count
