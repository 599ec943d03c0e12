"""Logging and rank helpers shared by every PAT module.

Library code never prints: it logs through ``logging.getLogger("torch_pruning.pat")``
(or a child logger) and, when the user passed a ``log`` object with an ``.info`` method,
sends the same line there too. Under ``torch.distributed`` only rank 0 logs or writes.
"""

from __future__ import annotations

import logging
from typing import Any, Optional, Protocol

import torch.distributed as dist

__all__ = ["LOGGER_NAME", "UserLog", "emit", "is_rank_zero", "get_rank"]

LOGGER_NAME = "torch_pruning.pat"
_logger = logging.getLogger(LOGGER_NAME)


class UserLog(Protocol):
    """Anything with an ``info(str)`` method, e.g. a ``logging.Logger``."""

    def info(self, msg: str, *args: Any, **kwargs: Any) -> Any: ...


def get_rank() -> int:
    """Return this process's rank under ``torch.distributed``, or 0 when not distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return 0


def is_rank_zero() -> bool:
    """True on the process that may log and write files (rank 0, or no distribution)."""
    return get_rank() == 0


def emit(msg: str, log: Optional[UserLog] = None, level: int = logging.INFO,
         logger: logging.Logger = _logger) -> None:
    """Log ``msg`` on rank 0 through ``logger`` and, if given, the user's ``log``.

    Example:
        >>> emit("Group number 1:")  # goes to logging.getLogger("torch_pruning.pat")
    """
    if not is_rank_zero():
        return
    logger.log(level, msg)
    if log is not None and log is not logger and level >= logging.INFO:
        if level >= logging.WARNING and hasattr(log, "warning"):
            log.warning(msg)
        else:
            log.info(msg)
