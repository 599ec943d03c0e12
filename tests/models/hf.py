"""Tiny random Hugging Face decoders (no downloads): Llama, Qwen2 and Mistral built from
configs with 8 query heads of width 4 (hidden 32), 2 layers, a 64-token vocabulary, and
``kv_heads`` key/value heads (GQA ratio ``8 // kv_heads``). Inputs: ``(N, T)`` token ids."""

from __future__ import annotations

from typing import Any, Dict, List

import torch
from torch import nn

__all__ = ["ARCHS", "tiny_decoder", "attention_layers", "mlp_layers", "logits", "greedy"]

ARCHS = ("llama", "qwen2", "mistral")


def tiny_decoder(arch: str, kv_heads: int, seed: int = 0, **overrides: Any) -> nn.Module:
    """A random ``<Arch>ForCausalLM`` in eval mode."""
    import transformers

    config_cls, model_cls = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
        "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
    }[arch]
    fields: Dict[str, Any] = dict(vocab_size=64, hidden_size=32, intermediate_size=48,
                                  num_hidden_layers=2, num_attention_heads=8,
                                  num_key_value_heads=kv_heads, max_position_embeddings=64,
                                  tie_word_embeddings=False)
    fields.update(overrides)
    torch.manual_seed(seed)
    return model_cls(config_cls(**fields)).eval()


def attention_layers(model: nn.Module, suffix: str = "") -> List[str]:
    """``model.layers.<i>.self_attn`` (plus ``suffix``, e.g. ``.q_proj``) of every layer."""
    return [f"model.layers.{i}.self_attn{suffix}" for i in range(len(model.model.layers))]


def mlp_layers(model: nn.Module) -> List[str]:
    """The gated MLPs' ``gate_proj`` of every layer."""
    return [f"model.layers.{i}.mlp.gate_proj" for i in range(len(model.model.layers))]


def logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Logits in eval mode without gradients."""
    model.eval()
    with torch.no_grad():
        return model(ids).logits


def greedy(model: nn.Module, ids: torch.Tensor, tokens: int = 6) -> torch.Tensor:
    """Greedy ``generate`` with the KV cache."""
    model.eval()
    return model.generate(ids, max_new_tokens=tokens, do_sample=False, use_cache=True,
                          pad_token_id=0)
