"""Reloading a pruned Hugging Face decoder saved with ``save_pretrained``.

A pruned model's ``save_pretrained`` writes its weights and its config. When every layer kept
the same counts and ``transformers`` accepts them (``hidden_size`` a multiple of the heads),
the config's global fields describe the weights and plain ``from_pretrained`` rebuilds it. When
the layers differ (global ranking prunes each layer differently), ``transformers`` has no way
to describe them: the global fields keep the original architecture and ``config.pat_layers``
holds the per-layer counts (rule: :mod:`torch_pruning.pat.core.hf`). :func:`load_pretrained_pruned`
reloads both kinds: it builds the model from the config, then resizes it to the saved weights
with :func:`~torch_pruning.pat.checkpoint.loading.load_state_dict_pruned`.

``transformers`` and ``safetensors`` are imported only when it is called.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch
from torch import nn

from .loading import CheckpointError, load_state_dict_pruned

__all__ = ["load_pretrained_pruned"]

logger = logging.getLogger(__name__)


def _read_weights(folder: Path) -> Dict[str, torch.Tensor]:
    """Every tensor of the ``*.safetensors`` (or ``pytorch_model*.bin``) files in ``folder``."""
    files = sorted(folder.glob("*.safetensors"))
    state: Dict[str, torch.Tensor] = {}
    if files:
        from safetensors.torch import load_file
        for f in files:
            state.update(load_file(str(f)))
        return state
    for f in sorted(folder.glob("pytorch_model*.bin")):
        state.update(torch.load(f, map_location="cpu", weights_only=True))
    if not state:
        raise CheckpointError(f"no *.safetensors or pytorch_model*.bin weights in {folder}")
    return state


def load_pretrained_pruned(path: Union[str, "os.PathLike[str]"], model_class: Optional[Any] = None,
                           **config_kwargs: Any) -> nn.Module:
    """Load a pruned HF model saved with ``save_pretrained`` (any per-layer counts).

    Args:
        path: the folder ``save_pretrained`` wrote (local; no hub download is attempted).
        model_class: the ``transformers`` class to build (default
            ``AutoModelForCausalLM``); anything with ``from_config``, or a class taking the
            config.
        config_kwargs: passed to ``AutoConfig.from_pretrained`` (e.g. ``attn_implementation``).

    Returns:
        The model in eval mode, with the saved shapes, weights and per-layer config.

    Example:
        >>> pruned.save_pretrained("out/pruned")  # doctest: +SKIP
        >>> model = load_pretrained_pruned("out/pruned")  # doctest: +SKIP
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = Path(path)
    config = AutoConfig.from_pretrained(str(folder), local_files_only=True, **config_kwargs)
    cls = model_class or AutoModelForCausalLM
    model = cls.from_config(config) if hasattr(cls, "from_config") else cls(config)
    state = _read_weights(folder)
    tied = getattr(model, "_tied_weights_keys", None) or {}
    strict = not tied  # tied weights (lm_head = embed_tokens) are saved once
    model, missing, unexpected = load_state_dict_pruned(model, state, strict=strict)
    if unexpected or (missing and strict):
        raise CheckpointError(f"{folder}: the weights do not fit {type(model).__name__}: "
                              f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    return model.eval()
