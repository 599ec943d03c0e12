"""Hugging Face decoders (Llama, Qwen2, Mistral and kin): their attention modules, head
counts read from the weights, and the rule that keeps ``model.config`` describing the weights.

HF decoder attention keeps its head counts in ``config`` (``num_attention_heads``,
``num_key_value_heads``, ``head_dim``), shared by every layer, and in one module attribute
(``num_key_value_groups``, query heads per key/value head, used to repeat k and v). Its
forward reshapes with ``-1`` heads, so after pruning the counts are those of the weights. These
rules are duck-typed: ``transformers`` is never imported here.

Per-layer rule (:func:`sync_hf_config`), applied after a physical removal and after
``load_state_dict_pruned``:

* every attention module gets ``num_key_value_groups = q heads // kv heads`` of its weights,
  every MLP its ``intermediate_size``;
* ``config.pat_layers`` records the per-layer counts (``num_attention_heads``,
  ``num_key_value_heads``, ``intermediate_size``: one list entry per layer) and ``head_dim``:
  always exact;
* the global fields (``num_attention_heads``, ``num_key_value_heads``, ``intermediate_size``,
  with ``head_dim`` written out) take the pruned counts when every layer has the same counts
  and ``transformers`` accepts them (it requires ``hidden_size % num_attention_heads == 0``);
  then ``save_pretrained``/``from_pretrained`` round-trips with plain ``transformers``.
  Otherwise the global fields keep the original architecture and ``config.pat_layers`` is the
  truth: reload with :func:`torch_pruning.pat.checkpoint.hf.load_pretrained_pruned`.

Example:
    >>> is_hf_attention(model.model.layers[0].self_attn)  # doctest: +SKIP
    True
    >>> gqa_counts(model.model.layers[0].self_attn)  # doctest: +SKIP
    (8, 2, 8)
"""

from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional, Tuple

from torch import nn

from ..util.log import emit

__all__ = ["PROJECTIONS", "is_hf_attention", "is_hf_gated_mlp", "gqa_counts", "hf_decoder_layers",
           "sync_hf_config", "PER_LAYER_FIELD"]

logger = logging.getLogger(__name__)

#: The Linear children of an HF decoder attention module.
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")
#: Config field holding the per-layer counts of a pruned model.
PER_LAYER_FIELD = "pat_layers"
_GLOBALS = ("num_attention_heads", "num_key_value_heads", "intermediate_size")


def _config(module: nn.Module) -> Any:
    return getattr(module, "config", None)


def is_hf_attention(module: nn.Module) -> bool:
    """True for an HF decoder attention module: ``q_proj``/``k_proj``/``v_proj``/``o_proj``
    Linear children, an int ``head_dim`` and a ``config`` with ``num_key_value_heads``.

    Example:
        >>> is_hf_attention(nn.Linear(2, 2))
        False
    """
    if not all(isinstance(getattr(module, p, None), nn.Linear) for p in PROJECTIONS):
        return False
    head_dim = getattr(module, "head_dim", None)
    return (isinstance(head_dim, int) and head_dim >= 1
            and isinstance(getattr(_config(module), "num_key_value_heads", None), int))


def is_hf_gated_mlp(module: nn.Module) -> bool:
    """True for a gated MLP (``gate_proj``, ``up_proj``, ``down_proj`` Linear children).

    Example:
        >>> is_hf_gated_mlp(nn.Linear(2, 2))
        False
    """
    return all(isinstance(getattr(module, p, None), nn.Linear)
               for p in ("gate_proj", "up_proj", "down_proj"))


def gqa_counts(module: nn.Module) -> Tuple[int, int, int]:
    """``(query heads, key/value heads, head_dim)`` of an HF attention module, from its weights.

    Example:
        >>> gqa_counts(model.model.layers[0].self_attn)  # doctest: +SKIP
        (8, 2, 8)
    """
    head_dim = module.head_dim
    return module.q_proj.out_features // head_dim, module.k_proj.out_features // head_dim, head_dim


def hf_decoder_layers(model: nn.Module) -> List[Tuple[Optional[nn.Module], Optional[nn.Module]]]:
    """``(attention, gated MLP)`` of every decoder layer in model order (either may be None).

    A decoder layer is a module with a ``self_attn`` or ``mlp`` child of the kinds above.
    """
    layers = []
    for m in model.modules():
        attn, mlp = getattr(m, "self_attn", None), getattr(m, "mlp", None)
        attn = attn if isinstance(attn, nn.Module) and is_hf_attention(attn) else None
        mlp = mlp if isinstance(mlp, nn.Module) and is_hf_gated_mlp(mlp) else None
        if attn is not None or mlp is not None:
            layers.append((attn, mlp))
    return layers


def _accepted(config: Any, heads: int) -> bool:
    """Whether ``transformers`` validation accepts ``heads`` attention heads."""
    hidden = getattr(config, "hidden_size", None)
    return not isinstance(hidden, int) or hidden % heads == 0


def sync_hf_config(model: nn.Module) -> Optional[Dict[str, Any]]:
    """Make an HF decoder's modules and ``config`` describe its weights (see the module doc).

    Returns the per-layer record written to ``config.pat_layers``, or None when ``model`` has
    no HF decoder layers (nothing is changed then) or the layers still have their original
    counts (no record is written).

    Example:
        >>> sync_hf_config(nn.Linear(2, 2)) is None
        True
    """
    layers = hf_decoder_layers(model)
    config = _config(model)
    if not layers or config is None:
        return None
    counts: Dict[str, List[int]] = {k: [] for k in _GLOBALS}
    head_dim = None
    for attn, mlp in layers:
        if attn is not None:
            q, kv, head_dim = gqa_counts(attn)
            attn.num_key_value_groups = q // kv
            for attr, value in (("num_heads", q), ("num_key_value_heads", kv)):
                if isinstance(getattr(attn, attr, None), int):  # older transformers keep them
                    setattr(attn, attr, value)
            counts["num_attention_heads"].append(q)
            counts["num_key_value_heads"].append(kv)
        if mlp is not None:
            width = mlp.gate_proj.out_features
            if isinstance(getattr(mlp, "intermediate_size", None), int):
                mlp.intermediate_size = width
            counts["intermediate_size"].append(width)
    counts = {k: v for k, v in counts.items() if v}
    original = {k: getattr(config, k, None) for k in counts}
    recorded = getattr(config, PER_LAYER_FIELD, None)
    if recorded is None and all(set(v) == {original[k]} for k, v in counts.items()):
        return None  # unpruned: leave the config as the user wrote it
    record: Dict[str, Any] = dict(counts)
    if head_dim is not None:
        record["head_dim"] = head_dim
        config.head_dim = head_dim
    uniform = all(len(set(v)) == 1 for v in counts.values())
    heads = counts.get("num_attention_heads", [None])[0]
    if uniform and (heads is None or _accepted(config, heads)):
        for k, v in counts.items():
            setattr(config, k, v[0])
    else:
        why = ("the layers have different counts" if not uniform else
               f"transformers requires hidden_size ({config.hidden_size}) to be a multiple of "
               f"num_attention_heads ({heads})")
        emit(f"model.config keeps its global head/MLP counts because {why}; the pruned "
             f"per-layer counts are in config.{PER_LAYER_FIELD}. Reload a saved model with "
             "torch_pruning.pat.load_pretrained_pruned (plain from_pretrained would build the "
             "original shapes)", level=logging.INFO, logger=logger)
    setattr(config, PER_LAYER_FIELD, record)
    return record
