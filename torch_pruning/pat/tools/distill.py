"""Opt-in knowledge distillation from the dense model while channels are masked and removed.

The seed's loop is unchanged; one more line blends the dense model's soft predictions into the
loss::

    kd = tp.pat.Distillation(pruner, alpha=0.5, temperature=4.0)
    for x, y in loader:
        out = model(x)
        loss = kd(criterion(out, y), out, x)           # the one extra line
        loss = loss + pruner.slice_regularize(model)
        ...

The teacher is a frozen copy of the user's model taken at the first step of the masking phase
(``channel_sparsity_args.start_epoch``), i.e. the dense network as the regularization phase
left it, so distillation costs no extra training epochs. Until then the loss is returned as it
is. It costs one forward pass of the dense copy per step (no backward) and its memory. A
``teacher`` may also be given (e.g. a separately trained dense model).

Example:
    >>> kd = Distillation(pruner)  # doctest: +SKIP
    >>> loss = kd(nn.functional.cross_entropy(out, y), out, x)  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import logging
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..util.log import emit
from ..util.model import unwrap_model

__all__ = ["Distillation"]

logger = logging.getLogger(__name__)


class Distillation:
    """``loss -> (1 - alpha) * loss + alpha * T^2 * KL(teacher_T || student_T)``.

    Args:
        pruner: the :class:`~torch_pruning.pat.facade.Pruning` of the run; the teacher is
            snapshot when its channel pruner enters the masking phase.
        alpha: weight of the distillation term in [0, 1].
        temperature: softmax temperature ``T`` (> 0).
        teacher: a fixed teacher instead of the snapshot.
        outputs: picks the logits from the model's output (default: the output itself).

    Example:
        >>> kd = Distillation(pruner, alpha=0.5)  # doctest: +SKIP
        >>> loss = kd(loss, out, x)  # doctest: +SKIP
    """

    def __init__(self, pruner: Any, *, alpha: float = 0.5, temperature: float = 4.0,
                 teacher: Optional[nn.Module] = None,
                 outputs: Optional[Callable[[Any], torch.Tensor]] = None) -> None:
        if not 0.0 <= float(alpha) <= 1.0:
            raise ValueError(f"Distillation alpha must be in [0, 1], got {alpha}")
        if not float(temperature) > 0:
            raise ValueError(f"Distillation temperature must be > 0, got {temperature}")
        self.pruner, self.alpha, self.temperature = pruner, float(alpha), float(temperature)
        self.outputs = outputs or (lambda out: out)
        self.teacher = self._frozen(teacher) if teacher is not None else None

    @staticmethod
    def _frozen(model: nn.Module) -> nn.Module:
        model = copy.deepcopy(unwrap_model(model)).eval()
        for p in model.parameters():
            p.requires_grad_(False)
        return model

    def _masking_started(self) -> bool:
        channel = getattr(self.pruner, "channel_pruner", None)
        cfg = getattr(channel, "cfg", None)
        if cfg is None or not getattr(channel, "groups", None):
            return False
        return channel.next_epoch >= cfg.start_epoch

    def snapshot(self, model: nn.Module) -> None:
        """Take the teacher now: a frozen copy of ``model``."""
        self.teacher = self._frozen(model)
        emit("Distillation: the dense model is now the teacher (a frozen copy).",
             getattr(self.pruner, "log", None), logger=logger)

    def __call__(self, loss: torch.Tensor, output: Any, inputs: Any,
                 model: Optional[nn.Module] = None) -> torch.Tensor:
        """The blended loss for a step whose model output is ``output`` on ``inputs``.

        ``model`` is only needed when the pruner was built on another object than the one
        trained (e.g. a DDP wrapper); by default it is the pruner's model.
        """
        if self.teacher is None:
            if not self._masking_started():
                return loss
            self.snapshot(model if model is not None else self.pruner.channel_pruner._model)
        with torch.no_grad():
            args = inputs if isinstance(inputs, (list, tuple)) else (inputs,)
            soft = F.softmax(self.outputs(self.teacher(*args)).float() / self.temperature, -1)
        log_p = F.log_softmax(self.outputs(output).float() / self.temperature, -1)
        kd = F.kl_div(log_p, soft, reduction="batchmean") * self.temperature ** 2
        return (1 - self.alpha) * loss + self.alpha * kd.to(loss.dtype)
