"""The surface both pruners share, and the stand-in for a pruner the config turns off.

The :class:`~torch_pruning.pat.facade.Pruning` facade holds one channel pruner and one slice
pruner and calls them from the user's loop through this protocol only: a penalty per step
(``regularize``), a step per epoch (``prune``), and a state to checkpoint. A pruner the config
disables is an :class:`InertPruner`, so the facade never asks which kind it holds.

Example:
    >>> isinstance(InertPruner(), Pruner)
    True
    >>> InertPruner().regularize(nn.Linear(2, 2)) is None
    True
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Protocol, runtime_checkable

import torch
from torch import nn

from ..util.log import UserLog

__all__ = ["Pruner", "InertPruner"]


@runtime_checkable
class Pruner(Protocol):
    """What the facade asks of a pruner.

    Attributes:
        enabled: False only for the disabled stand-in.
    """

    enabled: bool

    def regularize(self, model: nn.Module) -> Optional[torch.Tensor]:
        """Per step: a penalty to add to the loss, or None when the pruner acts on gradients."""
        ...

    def prune(self, model: nn.Module, epoch: int, log: Optional[UserLog] = None) -> None:
        """Per epoch end: mask (or remove) what the schedule says."""
        ...

    def state_dict(self) -> Dict[str, Any]:
        """Progress to save in a training checkpoint."""
        ...

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output."""
        ...


class InertPruner:
    """Stands in for a disabled pruner: regularizers add nothing, ``prune`` does nothing.

    It also answers the channel pruner's flags (``reset_optimizer``, ``reached_target``,
    ``replaced_params``) and the slice pruner's ``sparsity()``, so user code reading them works
    whichever pruners the config enables.
    """

    enabled = False
    reset_optimizer = False
    reached_target = False

    def __init__(self) -> None:
        self.replaced_params: Dict[Any, Any] = {}

    def regularize(self, model: nn.Module) -> Optional[torch.Tensor]:
        """Return None — the facade turns it into a 0 tensor where one is needed."""
        return None

    def prune(self, model: nn.Module, epoch: int, log: Optional[UserLog] = None) -> None:
        """Do nothing."""

    def state_dict(self) -> Dict[str, Any]:
        """An empty state."""
        return {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Accept any (empty) state."""

    def sparsity(self) -> None:
        """No slice sparsity to report."""
        return None
