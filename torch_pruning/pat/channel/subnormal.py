"""A hint for CPU runs: weights a long penalty has shrunk to ~1e-15 make slow subnormal floats.

An L2 penalty shrinks the channels it pushes geometrically; after a few epochs at full strength
their weights fall below 1e-15, and products of such values in the backward pass are subnormal
floats, which x86 CPUs compute many times slower (docs/benchmarks.md, ``bench_subnormal.py``:
a VGG-style step 4-15 times slower). ``torch.set_flush_denormal(True)`` makes them exact zeros,
but it is a setting of the whole process, so the library only says so, once.
"""

from __future__ import annotations

from typing import Iterable, Optional, Tuple

import torch
from torch import nn

from ..util.fsdp import local_tensor

__all__ = ["TINY", "flush_to_zero_on", "first_tiny_cpu_weight", "hint"]

#: Weights below this (and not zero) announce subnormal products on CPU.
TINY = 1e-15


def flush_to_zero_on() -> bool:
    """True when the CPU flushes subnormal results to zero (``torch.set_flush_denormal(True)``).

    Example:
        >>> isinstance(flush_to_zero_on(), bool)
        True
    """
    smallest = torch.full((1,), torch.finfo(torch.float32).tiny)
    return bool((smallest / 4).item() == 0.0)


@torch.no_grad()
def first_tiny_cpu_weight(params: Iterable[Tuple[nn.Module, str]]
                          ) -> Optional[Tuple[nn.Module, str]]:
    """The first ``(module, name)`` whose parameter is float32 on CPU with a nonzero entry
    below :data:`TINY`, or None.

    Example:
        >>> lin = nn.Linear(2, 1)
        >>> with torch.no_grad():
        ...     _ = lin.weight.fill_(1e-20)
        >>> first_tiny_cpu_weight([(lin, "bias"), (lin, "weight")]) == (lin, "weight")
        True
    """
    for module, name in params:
        w = local_tensor(getattr(module, name).detach())
        if w.device.type != "cpu" or w.dtype != torch.float32 or w.numel() == 0:
            continue
        size = w.abs()
        if bool(((size < TINY) & (size > 0)).any()):
            return module, name
    return None


def hint(name: str) -> str:
    """The message for a run whose pushed weights reached :data:`TINY` (``name``: one of them)."""
    return (f"The channel penalty has shrunk weights of {name} below {TINY:g}: on CPU their "
            "products are subnormal floats, and steps can become several times slower until "
            "the channels are removed. Call torch.set_flush_denormal(True) at the start of the "
            "script to make them exact zeros (docs/faq.md).")
