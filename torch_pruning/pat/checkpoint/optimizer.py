"""Optimizer state across shape changes: carry it through a removal, check it after a reload.

Both answer the same question (does this optimizer state still fit the model's parameters?)
at the two moments shapes change: a physical channel removal during training, and loading a
pruned checkpoint into a fresh model (:func:`optimizer_state_matches`).


Resetting the optimizer after removal (the seed's advice) throws away momentum and Adam
moments. :func:`carry_optimizer_state` instead points the optimizer at the reduced parameters
and slices every state tensor shaped like its parameter (momentum buffers, ``exp_avg``,
``exp_avg_sq``, ...) to the surviving channels. Elementwise optimizers (SGD, Adam, AdamW,
RMSprop, ...) then continue exactly as they would have on the masked model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Mapping, Tuple, Union

import torch
from torch import nn

from ..util.model import unwrap_model
from .loading import CheckpointError

__all__ = ["carry_optimizer_state", "optimizer_state_matches", "OptimizerStateReport"]

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


@dataclass(frozen=True)
class OptimizerStateReport:
    """Whether a saved optimizer state fits a model's parameters; truthy when it does.

    Example:
        >>> report = OptimizerStateReport(False, "1 state tensor differs", ("fc.weight: ...",))
        >>> bool(report), report.reason
        (False, '1 state tensor differs')
    """

    matches: bool
    reason: str
    mismatches: Tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return self.matches


def optimizer_state_matches(
    optimizer_state_dict: Union[Mapping[str, Any], torch.optim.Optimizer],
    model: Union[nn.Module, Iterable[torch.Tensor]],
) -> OptimizerStateReport:
    """Tell whether a saved optimizer state can be loaded for ``model``'s current parameters.

    After a pruned checkpoint is loaded, an optimizer state saved before the pruning (or the
    state of an optimizer built over the unpruned model) holds momentum / Adam moments of the
    old shapes; loading it would fail or misbehave. Build a new optimizer when this is False.

    Args:
        optimizer_state_dict: ``optimizer.state_dict()`` (or a checkpoint holding it under
            ``"optimizer"``, or the optimizer itself).
        model: the model, whose ``parameters()`` order the optimizer is assumed to follow, or
            the exact parameter list the optimizer was built with. Parameter names saved by the
            optimizer (``param_names``, PyTorch >= 2.6) are used instead of the order if present.

    Returns:
        An :class:`OptimizerStateReport` (truthy when every per-parameter state tensor has its
        parameter's shape), whose ``mismatches`` name the first differing parameters.

    Example:
        >>> model = nn.Linear(4, 2)
        >>> optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        >>> model(torch.ones(1, 4)).sum().backward(); optimizer.step()
        >>> saved = optimizer.state_dict()
        >>> bool(optimizer_state_matches(saved, model))
        True
        >>> model, _, _ = load_state_dict_pruned(model, nn.Linear(3, 2).state_dict())
        >>> optimizer_state_matches(saved, model).mismatches
        ('weight: momentum_buffer (2, 4) vs parameter (2, 3)',)
    """
    state_dict = optimizer_state_dict
    if isinstance(state_dict, torch.optim.Optimizer):
        state_dict = state_dict.state_dict()
    if isinstance(state_dict, Mapping) and "param_groups" not in state_dict \
            and isinstance(state_dict.get("optimizer"), Mapping):
        state_dict = state_dict["optimizer"]
    if not isinstance(state_dict, Mapping) or not {"state", "param_groups"} <= set(state_dict):
        raise CheckpointError("expected an optimizer state_dict with 'state' and 'param_groups'")
    groups = state_dict["param_groups"]
    ids = [i for group in groups for i in group["params"]]
    if isinstance(model, nn.Module):
        named = list(unwrap_model(model).named_parameters())
    else:
        named = [(f"parameter {i}", p) for i, p in enumerate(model)]
    saved_names = [n for group in groups for n in group.get("param_names", [])]
    if isinstance(model, nn.Module) and len(saved_names) == len(ids):
        by_name = dict(named)
        names = [n[len("module."):] if n.startswith("module.") and n not in by_name else n
                 for n in saved_names]
        unknown = [n for n in names if n not in by_name]
        if unknown:
            return OptimizerStateReport(False, f"the optimizer state names parameters the model "
                                               f"lacks: {_few(unknown)}", tuple(unknown))
        pairs = [(n, by_name[n]) for n in names]
    elif len(ids) != len(named):
        return OptimizerStateReport(False, f"the optimizer state holds {len(ids)} parameters, "
                                           f"the model has {len(named)}")
    else:
        pairs = named
    mismatches = tuple(
        f"{name}: {key} {tuple(value.shape)} vs parameter {tuple(param.shape)}"
        for idx, (name, param) in zip(ids, pairs)
        for key, value in state_dict["state"].get(idx, {}).items()
        if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != param.shape)
    if mismatches:
        return OptimizerStateReport(False, f"{len(mismatches)} optimizer state tensor(s) do not "
                                           f"have their parameter's shape; build a new optimizer",
                                    mismatches)
    return OptimizerStateReport(True, f"the optimizer state fits all {len(ids)} parameters")


def _few(keys: List[str], shown: int = 5) -> str:
    listed = ", ".join(repr(k) for k in keys[:shown])
    return listed + (f" and {len(keys) - shown} more" if len(keys) > shown else "")
