"""The checkpoints a training run saved: find them in epoch order and read their weights.

``analyze.py`` reads every ``.pt``/``.pth`` file of the run folder (or of its subfolders when
the folder holds none) whose name carries an epoch number, and loads each as a state dict
with ``weights_only=True``. Problems are :class:`AnalyzeError` naming the file.

Example:
    >>> [(c.epoch, c.path.name) for c in find_checkpoints("runs/digits")]  # doctest: +SKIP
    [(0, 'epoch_000.pt'), (1, 'epoch_001.pt'), (2, 'epoch_002.pt')]
    >>> sorted(load_weights("runs/digits/epoch_000.pt"))[:2]              # doctest: +SKIP
    ['features.0.bias', 'features.0.weight']
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Union

import torch

from ..core.masks import strip_module_prefix
from .model_factory import ToolError

__all__ = ["AnalyzeError", "Checkpoint", "CHECKPOINT_SUFFIXES", "epoch_of", "find_checkpoints",
           "load_weights"]

logger = logging.getLogger(__name__)

CHECKPOINT_SUFFIXES = (".pt", ".pth")
_EPOCH_WORD = re.compile(r"epoch[_\-.]?(\d+)", re.IGNORECASE)
_TRAILING = re.compile(r"(?:^|[_\-.\s]|ckpt|checkpoint|model|ep|e)(\d+)$", re.IGNORECASE)


class AnalyzeError(ToolError):
    """The run folder or a checkpoint in it cannot be analyzed; the message names the file."""


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint file and the epoch number read from its name."""

    epoch: int
    path: Path


def epoch_of(name: str) -> Optional[int]:
    """The epoch number in a checkpoint's file name, or None.

    ``epoch_003.pt``, ``checkpoint_epoch3.pth``, ``ckpt-12.pt``, ``model_10.pth`` give 3, 3,
    12, 10; a number glued to a word (``resnet18.pth``) is not an epoch.

    Example:
        >>> [epoch_of(n) for n in ["epoch_003.pt", "ckpt-12.pt", "resnet18.pth", "best.pt"]]
        [3, 12, None, None]
    """
    stem = Path(name).stem
    match = _EPOCH_WORD.search(stem) or _TRAILING.search(stem)
    return int(match.group(1)) if match else None


def find_checkpoints(run_dir: Union[str, Path]) -> List[Checkpoint]:
    """The ``.pt``/``.pth`` files of ``run_dir`` with an epoch in their name, by epoch.

    Looks in the folder itself, or in its subfolders when the folder holds none.
    """
    run = Path(run_dir)
    if not run.exists():
        raise AnalyzeError(f"{run}: no such folder")
    if not run.is_dir():
        raise AnalyzeError(f"{run}: not a folder; pass the run folder that holds the checkpoints")
    entries = sorted(run.iterdir())
    if not entries:
        raise AnalyzeError(f"{run}: the folder is empty; pass the folder your training script "
                           "saves its checkpoints to")
    files = [p for p in entries if p.is_file() and p.suffix in CHECKPOINT_SUFFIXES]
    if not files:
        files = sorted(p for p in run.rglob("*") if p.is_file() and p.suffix in CHECKPOINT_SUFFIXES)
    if not files:
        shown = ", ".join(p.name for p in entries[:8]) + (", ..." if len(entries) > 8 else "")
        raise AnalyzeError(f"{run}: no checkpoints (*.pt, *.pth) in the folder; it holds: {shown}")
    found = []
    for p in files:
        epoch = epoch_of(p.name)
        if epoch is None:
            logger.warning("skipping %s: no epoch number in its name", p)
        else:
            found.append(Checkpoint(epoch, p))
    if not found:
        raise AnalyzeError(
            f"{run}: none of the {len(files)} checkpoint files has an epoch number in its name "
            f"({', '.join(p.name for p in files[:5])}); name them like epoch_003.pt, "
            "checkpoint_epoch3.pth, ckpt-3.pt or model_3.pth")
    found.sort(key=lambda c: (c.epoch, str(c.path)))
    epochs = [c.epoch for c in found]
    for e in sorted({e for e in epochs if epochs.count(e) > 1}):
        logger.warning("several checkpoints for epoch %d: %s", e,
                       ", ".join(str(c.path.name) for c in found if c.epoch == e))
    return found


def load_weights(path: Union[str, Path]) -> Dict[str, torch.Tensor]:
    """The state dict stored in ``path`` (``module.`` prefixes removed).

    Accepts a plain state dict or one wrapped as ``{"model": sd}`` / ``{"state_dict": sd}``
    (other keys such as optimizer state are ignored). Loads with ``weights_only=True``.
    """
    path = Path(path)
    try:
        obj: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure means the same thing to the user
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip()
        if "weights only" in text.lower() or "weights_only" in text.lower():
            raise AnalyzeError(f"{path}: cannot read the checkpoint with weights_only=True: it "
                               "pickles objects other than tensors (e.g. a whole model); save "
                               "model.state_dict() instead") from e
        detail = text.splitlines()[0] if text else "no detail"
        raise AnalyzeError(f"{path}: cannot read the checkpoint ({type(e).__name__}: {detail}); "
                           "is it truncated, or not written by torch.save?") from e
    for _ in range(3):
        if not isinstance(obj, Mapping):
            break
        inner = next((obj[k] for k in ("state_dict", "model", "model_state_dict")
                      if isinstance(obj.get(k), Mapping)), None)
        if inner is None or any(isinstance(v, torch.Tensor) and k.endswith(".weight")
                                for k, v in obj.items()):
            break
        obj = inner
    if not isinstance(obj, Mapping):
        raise AnalyzeError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    weights = {strip_module_prefix(str(k)): v for k, v in obj.items()
               if isinstance(v, torch.Tensor)}
    if not weights:
        raise AnalyzeError(f"{path}: holds no tensors (keys: {', '.join(map(str, list(obj)[:6]))})")
    return weights
