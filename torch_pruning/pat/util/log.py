"""Logging and rank helpers shared by every PAT module.

Library code never prints: it logs through ``logging.getLogger("torch_pruning.pat")``
(or a child logger) and, when the user passed a ``log`` object with an ``.info`` method,
sends the same line there too. Under ``torch.distributed`` only rank 0 logs or writes.
"""

from __future__ import annotations

import logging
from typing import Any, Optional, Protocol

import torch.distributed as dist

__all__ = ["LOGGER_NAME", "UserLog", "emit", "is_rank_zero", "get_rank", "human_count"]

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


def _handlers(logger: logging.Logger) -> set:
    """Every handler a record logged on ``logger`` reaches (following ``propagate``)."""
    found: set = set()
    current: Optional[logging.Logger] = logger
    while current is not None:
        found.update(current.handlers)
        if not current.propagate:
            break
        current = current.parent  # type: ignore[assignment]
    return found


def _already_reached(log: Any, logger: logging.Logger, level: int) -> bool:
    """True when the user's ``log`` is a Logger whose handlers the library's line reaches anyway.

    Then sending the line to ``log`` too would only print it twice (e.g. both propagate to a
    root handler configured by ``logging.basicConfig``).
    """
    if log is logger:
        return True
    if not isinstance(log, logging.Logger):
        return False
    theirs = _handlers(log)
    return logger.isEnabledFor(level) and bool(theirs) and theirs <= _handlers(logger)


def emit(msg: str, log: Optional[UserLog] = None, level: int = logging.INFO,
         logger: logging.Logger = _logger) -> None:
    """Log ``msg`` on rank 0 through ``logger`` and, if given, the user's ``log``.

    A user ``log`` that is a :class:`logging.Logger` writing to the same handlers as the
    library logger is not called again, so each line appears once.

    Example:
        >>> emit("Group number 1:")  # goes to logging.getLogger("torch_pruning.pat")
    """
    if not is_rank_zero():
        return
    logger.log(level, msg)
    if log is not None and not _already_reached(log, logger, level) and level >= logging.INFO:
        if level >= logging.WARNING and hasattr(log, "warning"):
            log.warning(msg)
        else:
            log.info(msg)


def human_count(n: float, spec: str = ".3f", sep: str = "") -> str:
    """A MAC or parameter count with a K/M/G suffix, for log lines and plot titles.

    Example:
        >>> human_count(1234567), human_count(1234567, ".3g", " ")
        ('1.235M', '1.23 M')
    """
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:{spec}}{sep}{unit}"
    return f"{n:.0f}"
