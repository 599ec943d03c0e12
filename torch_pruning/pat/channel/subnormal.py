"""Spent channels held at exact zero, so a long penalty does not make CPU steps slow.

An L2 penalty shrinks the channels it pushes geometrically; after a few epochs at full strength
their weights fall towards 1e-20, and products of such values in the backward pass are
subnormal floats, which x86 CPUs compute many times slower (docs/benchmarks.md,
``bench_subnormal.py``: a VGG-style step 4-15 times slower; in a 60-epoch VGG run the last
penalty epochs took 2-6 times a dense epoch).

:class:`SpentZeroing` keeps *spent* channels at exact zero: pushed channels whose every coupled
entry fell below :data:`SPENT` times its parameter's largest magnitude (below float32's
resolution against it, so they no longer change any sum they enter). Their weights and the
optimizer's state at their positions (momentum, Adam moments) are set to zero after every
optimizer step (an all-zero channel behind a ReLU gets exactly zero gradients anyway), so their
products are exact zeros, not subnormals. The regularizer finds them
(:meth:`~.regularizer.ChannelRegularizer.spent`), on CPU float32 parameters only (GPUs compute
subnormals at full speed). ``torch.set_flush_denormal(True)`` would also do it, but it is a
setting of the whole process, left to the user (docs/faq.md).
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
from torch import nn

from ..core.masks import after_every_step
from ..util.fsdp import local_part, local_tensor

__all__ = ["SPENT", "SPENT_EVERY", "SpentZeroing"]

#: A pushed channel is spent when every coupled entry is below this times its parameter's
#: largest magnitude (float32 resolves about 1.2e-7 of a value).
SPENT = 1e-8
#: Spent channels are looked for at an epoch's first step and every this many steps after it:
#: a pass over the regularized weights (ResNet-18 on CPU: about a tenth of a training step).
#: Under the recipe's strongest push (learning rate 0.1, reg 0.2, momentum 0.9: an estimated
#: factor of about 0.8 per step) a channel needs some 50 steps to fall from SPENT to where its
#: products turn subnormal.
SPENT_EVERY = 20

_Param = Tuple[nn.Module, str]


class SpentZeroing:
    """Sets the given positions of parameters, and of their optimizer state, to zero after
    every optimizer step (a global ``torch.optim`` step post-hook, like the masks').

    Unlike a mask this is not a pruning decision: the positions are recomputed from the
    weights (:meth:`set`) and forgotten at every epoch end (:meth:`clear`).

    Example:
        >>> lin = nn.Linear(2, 2)
        >>> opt = torch.optim.SGD(lin.parameters(), lr=0.1, momentum=0.9)
        >>> zeroing = SpentZeroing()
        >>> zeroing.set({(lin, "weight"): torch.tensor([[True], [False]])})
        >>> lin(torch.ones(1, 2)).sum().backward(); opt.step()
        >>> momentum = opt.state[lin.weight]["momentum_buffer"]
        >>> bool((lin.weight[0] == 0).all()), bool((momentum[0] == 0).all())
        (True, True)
    """

    def __init__(self) -> None:
        self.positions: Dict[_Param, torch.Tensor] = {}
        after_every_step(self, SpentZeroing.apply)

    def set(self, positions: Dict[_Param, torch.Tensor]) -> None:
        """Zero these positions (bool, broadcastable to each parameter) from the next step on."""
        self.positions = dict(positions)

    def clear(self) -> None:
        """Stop zeroing (shapes may change, or the weights are to be looked at afresh)."""
        self.positions = {}

    @torch.no_grad()
    def apply(self, optimizer: Optional[torch.optim.Optimizer] = None) -> None:
        """Zero the positions in the weights and in ``optimizer``'s state of the same shape."""
        state = optimizer.state if optimizer is not None else {}
        for (module, name), where in self.positions.items():
            param = getattr(module, name)
            local = local_part(where.to(param.device), param)
            local_tensor(param.detach()).masked_fill_(local, 0)
            for value in state.get(param, {}).values():
                if torch.is_tensor(value) and value.shape == param.shape:
                    local_tensor(value).masked_fill_(local, 0)
