"""The README's five-line training loop, the one copy the tests run.

Example:
    >>> net = SmallCNN()
    >>> pruner = Pruning(net, {"channel_sparsity_args": {...}})
    >>> five_line_loop(net, pruner, [(torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,)))],
    ...                epochs=4)
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Optional, Sequence, Tuple

import torch
from torch import nn

__all__ = ["five_line_loop"]

Batch = Tuple[torch.Tensor, torch.Tensor]


def five_line_loop(model: nn.Module, pruner: Any, data: Sequence[Batch], *, epochs: int,
                   steps: int = 1, lr: float = 0.01,
                   make_optimizer: Optional[Callable[[Iterable[nn.Parameter]],
                                                     torch.optim.Optimizer]] = None,
                   make_scheduler: Optional[Callable[[torch.optim.Optimizer, int], Any]] = None
                   ) -> nn.Module:
    """Train ``model`` for ``epochs`` epochs, each ``steps`` passes over the batches ``data``,
    with the README's lines (slice penalty, channel penalty after backward, ``prune`` at each
    epoch end, a new optimizer after a physical removal) and return it. The optimizer is
    ``make_optimizer(params)``, by default SGD with momentum 0.9 at ``lr``. With
    ``make_scheduler(optimizer, epochs_left)`` the loop also has the learning-rate restart of
    docs/recipes.md: a scheduler over the whole run, stepped once per epoch, and a new one over
    the epochs left for the optimizer made at the removal."""
    make = make_optimizer or (lambda params: torch.optim.SGD(params, lr=lr, momentum=0.9))
    optimizer = make(model.parameters())
    scheduler = make_scheduler(optimizer, epochs) if make_scheduler is not None else None
    for epoch in range(epochs):
        for _ in range(steps):
            for x, y in data:
                loss = nn.functional.cross_entropy(model(x), y)
                loss = loss + pruner.slice_regularize(model)
                optimizer.zero_grad()
                loss.backward()
                pruner.channel_regularize(model)
                optimizer.step()
        if scheduler is not None:
            scheduler.step()
        pruner.prune(model, epoch)
        if pruner.channel_pruner.reset_optimizer:
            optimizer = make(model.parameters())
            if make_scheduler is not None:
                scheduler = make_scheduler(optimizer, epochs - epoch - 1)
            pruner.channel_pruner.reset_optimizer = False
    return model
