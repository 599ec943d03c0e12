"""Head counts of attention modules: which attribute holds the count, which widths follow it.

Whole-head pruning changes shapes in three places that must agree on these rules: the channel
pruner after a physical removal (:meth:`~torch_pruning.pat.attention.heads.AttentionHeads.remove`),
the MAC counter's skeleton, and checkpoint loading (:func:`head_count_plans`). They live here,
below all three, so checkpoint loading does not depend on the channel pruner.

Example:
    >>> attn = nn.Module(); attn.num_heads = 4; attn.all_head_size = 32
    >>> head_count_attr(attn), head_counts(attn, "num_heads", 2)
    ('num_heads', {'num_heads': 2, 'all_head_size': 16})
"""

from __future__ import annotations

import functools
import logging
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from torch import nn

from ..util.log import emit

__all__ = ["HEAD_COUNT_ATTRS", "WIDTH_ATTRS", "HEAD_DIM_ATTRS", "head_count_attr", "int_attr",
           "head_counts", "head_count_plans"]

logger = logging.getLogger(__name__)

#: Attribute names read as an attention module's head count (timm, Hugging Face, GPT-style).
HEAD_COUNT_ATTRS = ("num_heads", "num_attention_heads", "n_heads", "n_head", "heads")
#: Attributes holding ``heads * head_dim`` that are updated together with the head count.
WIDTH_ATTRS = ("all_head_size", "inner_dim")
#: Attributes read as the width of one head, when present.
HEAD_DIM_ATTRS = ("head_dim", "attention_head_size", "d_head", "dim_head")


def head_count_attr(module: nn.Module) -> Optional[str]:
    """The attribute of ``module`` holding its head count, or None.

    ``nn.MultiheadAttention`` answers None: its heads cannot be removed on their own.

    Example:
        >>> head_count_attr(nn.MultiheadAttention(8, 2)) is None
        True
    """
    if isinstance(module, nn.MultiheadAttention):
        return None
    for attr in HEAD_COUNT_ATTRS:
        value = _plain_attr(module, attr)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
            return attr
    return None


def _plain_attr(module: nn.Module, attr: str) -> object:
    """``getattr(module, attr, None)`` for a value that is not a parameter, buffer or submodule.

    Asked of every module of a model while tracing, where almost every attribute is missing:
    ``nn.Module.__getattr__`` raises (and ``getattr`` catches) an AttributeError each time.
    Reading the instance dict first, with the class looked up only for names it defines,
    gives the same answer for the ints we look for without the exceptions. A class with its
    own ``__getattr__`` (e.g. a wrapper forwarding to an inner model) gets plain ``getattr``.
    """
    if _class_answers(type(module), attr):
        return getattr(module, attr, None)
    return module.__dict__.get(attr)


@functools.lru_cache(maxsize=None)
def _class_answers(cls: type, attr: str) -> bool:
    """True when ``cls`` defines ``attr`` (e.g. a property) or does not use
    ``nn.Module.__getattr__`` (its own, or not a module at all, e.g. an ``nn.Parameter``)."""
    return getattr(cls, "__getattr__", None) is not nn.Module.__getattr__ or hasattr(cls, attr)


def int_attr(module: nn.Module, names: Sequence[str]) -> Optional[int]:
    """The first of ``names`` that ``module`` holds as a positive int, or None."""
    for attr in names:
        value = getattr(module, attr, None)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
            return value
    return None


def head_counts(module: nn.Module, attr: str, new: int) -> Dict[str, int]:
    """The attributes of ``module`` with ``new`` heads of unchanged width: the head count
    ``attr`` and each of :data:`WIDTH_ATTRS` holding a multiple of the current count."""
    old = getattr(module, attr)
    counts = {attr: new}
    for width in WIDTH_ATTRS:
        value = getattr(module, width, None)
        if isinstance(value, int) and not isinstance(value, bool) and value % old == 0:
            counts[width] = value // old * new
    return counts


def head_count_plans(modules: Mapping[str, nn.Module],
                     new_features: Mapping[str, Tuple[int, int]]) -> Dict[str, Dict[str, int]]:
    """New head-count attributes of attention modules whose Linear projections shrank.

    ``new_features`` maps Linear module names to their ``(in_features, out_features)`` in a
    checkpoint. An attention module whose direct Linear children lost output features in one
    proportion gets its head count lowered in that proportion (``head_dim`` is unchanged by
    whole-head pruning).

    Example:
        >>> attn = nn.Module(); attn.num_heads = 4; attn.q = nn.Linear(8, 8)
        >>> head_count_plans({"attn": attn, "attn.q": attn.q}, {"attn.q": (8, 4)})
        {'attn': {'num_heads': 2}}
    """
    plans: Dict[str, Dict[str, int]] = {}
    for name, module in modules.items():
        attr = head_count_attr(module)
        if attr is None:
            continue
        count = getattr(module, attr)
        ratios: List[Tuple[int, int]] = []
        for child, sub in module.named_children():
            key = f"{name}.{child}" if name else child
            if isinstance(sub, nn.Linear) and key in new_features:
                out = new_features[key][1]
                if out != sub.out_features:
                    ratios.append((out, sub.out_features))
        if not ratios:
            continue
        heads = {count * out // old for out, old in ratios}
        if len(heads) == 1 and all((count * out) % old == 0 for out, old in ratios):
            plans[name] = head_counts(module, attr, heads.pop())
        else:
            emit(f"{name or '<root>'}: its projections shrank in different proportions "
                 f"{sorted(set(ratios))}; its head count {attr}={count} is left as it is",
                 level=logging.WARNING, logger=logger)
    return plans
