"""The recommended PAT recipe: a complete ``pruning_config`` for a model, a budget and a run length.

:func:`recommend_config` places the phases of pruning-aware training inside a run of ``epochs``
epochs, with the settings measured on CIFAR-10 data (``docs/recipes.md``, ``RECIPE`` below):

1. **Dense training** (the first 30%): no penalty, the whole network learns.
2. **Focused penalty** (30% to 45%, ``regularize.begin_epoch`` to ``start_epoch``): only the
   channels the schedule would prune at the MAC target are pushed (``regularize.target:
   "pruned"``, ranked afresh every epoch), with a strength growing linearly to ``reg``
   (``regularize.growth: "linear"``), so their norms fall apart from the others before any is
   masked. For moderate budgets (``mac_target`` >= 0.2) steps 1-2 are instead a weak group
   penalty on every channel from the first epoch (``reg`` 1e-4, ``gamma`` 16: the least
   important channels are pushed hardest), which measured better there.
3. **Masking** (45% to 50%, ``start_epoch`` to ``end_epoch``): each epoch lands on a MAC level
   falling linearly to ``mac_target`` (``schedule: "macs"``), whatever the ranking; the masked
   channels are then removed physically.
4. **Fine-tuning**: the second half trains the reduced model.

With ``lr_restart=True`` the user promises one more line in their loop: at the removal (where
``reset_optimizer`` is handled) the learning-rate schedule starts again over the epochs left.
A restart gives the reduced model a fresh cycle, so the dense phase can run longer: for deep
budgets (``mac_target`` < 0.2) the penalty then runs from 45% to 60% and masking from 60% to
65% of the run (``RECIPE["restart"]``): with the restart that measured 1.3 points better on a
ResNet-14 at 0.1x and level on a VGG-style CNN (docs/recipes.md). Without the restart the later
phases cost 0.8 points (VGG), so the default keeps the earlier ones.

A copy of the model is traced once to check that the target can be reached under
``max_pruning_rate``.

Example:
    >>> import torch, torchvision
    >>> net = torchvision.models.resnet18(num_classes=10)
    >>> cfg = recommend_config(net, torch.randn(1, 3, 64, 64), mac_target=0.5, epochs=30)
    >>> ch = cfg["channel_sparsity_args"]
    >>> ch["regularize"]["target"], ch["start_epoch"], ch["end_epoch"]
    ('all', 14, 15)
    >>> recommend_config(net, torch.randn(1, 3, 64, 64), 0.1, 30)["channel_sparsity_args"][
    ...     "regularize"]["begin_epoch"]
    9
"""

from __future__ import annotations

import copy
import logging
from typing import Any, Dict, List, Sequence, Union

import torch
from torch import nn

from ..channel.pruner import ChannelPruner
from ..config.models import ChannelSparsityArgs
from ..core.masks import MaskSet

__all__ = ["recommend_config", "RECIPE"]

logger = logging.getLogger(__name__)

#: The recipe's settings (fractions of the run and penalty), documented in docs/recipes.md.
RECIPE: Dict[str, Any] = {
    "begin": 0.3,          # dense training, then the focused penalty from this fraction of the run
    "start": 0.45,         # masking starts here (the penalty has grown to full strength)
    "end": 0.5,            # and ends here; the second half fine-tunes the reduced model
    "reg": 0.2,            # strength of the focused penalty at full growth
    "method": "GroupNormPruner",
    "global_pruning": False,
    "max_pruning_rate": 0.9,
    # Budgets of at least this fraction of the MACs use a weak penalty on every channel from
    # the first epoch instead of the focused one (measured: 68.67 against 67.35 at 0.25x, but
    # 61.38 against 61.98 at 0.1x; 3 seeds each, docs/recipes.md).
    "moderate_from": 0.2,
    "moderate": {"reg": 1e-4, "gamma": 16.0, "target": "all", "growth": "constant",
                 "begin": 0.0},
    # With lr_restart=True (the user restarts the learning-rate schedule at the removal), the
    # phases of deep budgets move later (measured: 70.45 against 69.17 with the restart at the
    # usual times on ResNet-14 at 0.1x, 3 seeds, docs/recipes.md); moderate budgets keep theirs.
    "restart": {"begin": 0.45, "start": 0.6, "end": 0.65},
    "restart_moderate": {},
}


def _shapes(example_inputs: Any) -> Union[List[int], List[List[int]], None]:
    if isinstance(example_inputs, torch.Tensor):
        return list(example_inputs.shape)
    if isinstance(example_inputs, (list, tuple)) and all(
            isinstance(t, torch.Tensor) for t in example_inputs):
        return [list(t.shape) for t in example_inputs]
    return None


def _check_reachable(model: nn.Module, example_inputs: Any, channel: Dict[str, Any]) -> None:
    """Warn when the pruner's own selection cannot meet ``mac_target`` under the cap."""
    probe = ChannelSparsityArgs.model_validate(dict(channel, verbose=0, regularize={"reg": 0.0}))
    pruner = ChannelPruner(copy.deepcopy(model), probe, example_inputs=example_inputs,
                           masks=MaskSet())
    if not pruner._select(channel["global_prune_rate"])[2]:
        logger.warning("mac_target %.3f cannot be met with max_pruning_rate %.2f on this "
                       "model: the recommended schedule stops at the cap.",
                       channel["mac_target"], channel["max_pruning_rate"])


def recommend_config(model: nn.Module, example_inputs: Any, mac_target: float, epochs: int,
                     *, layers: Union[str, Sequence[str]] = "all",
                     block_size: int = 1, lr_restart: bool = False) -> Dict[str, Any]:
    """A complete, valid ``pruning_config`` dict for an ``epochs``-long PAT run to ``mac_target``.

    Args:
        model: the unpruned model (not changed: a copy is traced).
        example_inputs: inputs for tracing (tensor, or list/tuple of tensors).
        mac_target: the fraction of the model's MACs to keep, in (0, 1).
        epochs: the length of the whole run (regularization, masking and fine-tuning).
        layers: ``channel_sparsity_args.layers`` (``"all"``: every prunable Conv2d).
        block_size: channels kept per layer are a multiple of it.
        lr_restart: the training loop restarts its learning-rate schedule over the epochs left
            when the channels are removed (when ``reset_optimizer`` turns true); the phases
            are then placed for that (``RECIPE["restart"]``). Without the restart in the
            loop, leave it False: the later removal leaves too few epochs at a low rate.

    Returns:
        ``{"channel_sparsity_args": {...}}``: write it to ``pruning_config.json`` as it is, or
        change fields first (every one is documented in docs/configuration.md).

    Raises:
        ValueError: ``mac_target`` outside (0, 1) or fewer than 4 epochs.

    Example:
        >>> cfg = recommend_config(model, torch.randn(1, 3, 32, 32), 0.25, 20)  # doctest: +SKIP
        >>> json.dump(cfg, open("runs/exp/pruning_config.json", "w"), indent=2)  # doctest: +SKIP
    """
    if not 0.0 < float(mac_target) < 1.0:
        raise ValueError(f"mac_target must be in (0, 1) (the fraction of MACs kept), got "
                         f"{mac_target}")
    if int(epochs) < 4:
        raise ValueError(f"epochs must be at least 4 (regularization, masking, fine-tuning), "
                         f"got {epochs}")
    epochs = int(epochs)
    moderate = float(mac_target) >= RECIPE["moderate_from"]
    times = {key: RECIPE[key] for key in ("begin", "start", "end")}
    if lr_restart:
        times.update(RECIPE["restart_moderate" if moderate else "restart"])
    penalty = (dict(RECIPE["moderate"]) if moderate else
               {"reg": RECIPE["reg"], "gamma": 1.0, "target": "pruned", "growth": "linear",
                "begin": times["begin"]})
    start = max(1, round(times["start"] * epochs))
    begin = min(start - 1, round(penalty.pop("begin") * epochs))
    end = max(start, min(epochs - 2, round(times["end"] * epochs)))
    channel: Dict[str, Any] = {
        "is_prune": True,
        "pruning_method": RECIPE["method"],
        "global_pruning": RECIPE["global_pruning"],
        "block_size": int(block_size),
        "start_epoch": start,
        "end_epoch": end,
        "epoch_rate": 1,
        "schedule": "macs",
        "global_prune_rate": RECIPE["max_pruning_rate"],  # with "macs": a cap on the ratio
        "mac_target": float(mac_target),
        "max_pruning_rate": RECIPE["max_pruning_rate"],
        "prune_at_target": True,
        "regularize": dict(penalty, mac_reg=0.0, begin_epoch=begin),
        "layers": layers if isinstance(layers, str) else list(layers),
    }
    shapes = _shapes(example_inputs)
    if shapes is not None:
        channel["input_shape"] = shapes
        if isinstance(example_inputs, tuple):
            channel["container"] = "tuple"
    _check_reachable(model, example_inputs, channel)
    return {"channel_sparsity_args": channel}
