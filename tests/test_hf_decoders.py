"""Hugging Face decoders (tiny random Llama, Qwen2 and Mistral; GQA ratios 1, 2 and 4):
grouped-query attention heads pruned by whole KV groups or evenly per KV group, gated MLPs
pruned; the masked model computes what the pruned one computes (logits and greedy
``generate`` with the KV cache), ``model.config`` describes the weights, and checkpoints reload
through ``load_state_dict_pruned``, ``save_pretrained``/``from_pretrained`` and
``load_pretrained_pruned``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, List

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import torch_pruning as tp

transformers = pytest.importorskip("transformers")

from models.hf import ARCHS, attention_layers, greedy, logits, mlp_layers, tiny_decoder  # noqa: E402

IDS = torch.tensor([[1, 5, 9, 3, 17, 2]])


def _config(layers: List[str], **fields: Any) -> Dict[str, Any]:
    cfg = dict(start_epoch=0, end_epoch=0, global_prune_rate=0.5, mac_target=0.0,
               prune_at_target=False, layers=layers, regularize={"reg": 1e-3})
    cfg.update(fields)
    return {"channel_sparsity_args": cfg}


def _counts(model: nn.Module) -> Dict[str, List[int]]:
    """Per-layer counts read from the weights."""
    out: Dict[str, List[int]] = {"num_attention_heads": [], "num_key_value_heads": [],
                                 "intermediate_size": []}
    for layer in model.model.layers:
        attn, d = layer.self_attn, layer.self_attn.head_dim
        out["num_attention_heads"].append(attn.q_proj.out_features // d)
        out["num_key_value_heads"].append(attn.k_proj.out_features // d)
        out["intermediate_size"].append(layer.mlp.gate_proj.out_features)
    return out


def _assert_config_matches_weights(model: nn.Module) -> None:
    counts, config = _counts(model), model.config
    record = {k: v for k, v in config.pat_layers.items() if k != "head_dim"}
    assert record == counts
    assert config.head_dim == model.model.layers[0].self_attn.head_dim
    if all(len(set(v)) == 1 for v in counts.values()) and \
            config.hidden_size % counts["num_attention_heads"][0] == 0:
        assert {k: getattr(config, k) for k in counts} == {k: v[0] for k, v in counts.items()}
    for layer, q, kv in zip(model.model.layers, counts["num_attention_heads"],
                            counts["num_key_value_heads"]):
        assert layer.self_attn.num_key_value_groups == q // kv


def _prune(model: nn.Module, cfg: Dict[str, Any]) -> Any:
    pruner = tp.Pruning(model, cfg, example_inputs=IDS)
    pruner.prune(model, 0)
    return pruner


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("kv_heads", [8, 4, 2])
def test_kv_groups_and_mlp_are_removed_exactly(arch: str, kv_heads: int) -> None:
    model = tiny_decoder(arch, kv_heads)
    pruner = _prune(model, _config(attention_layers(model) + mlp_layers(model)))
    groups = pruner.channel_pruner.groups
    assert [g.units for g in groups] == [kv_heads, kv_heads, 48, 48]
    assert groups[0].source == "model.layers.0.self_attn.q_proj"
    want, want_tokens = logits(model, IDS), greedy(model, IDS)
    macs = pruner.channel_pruner.macs()
    pruner.channel_pruner.remove_masked_channels(model)
    attn = model.model.layers[0].self_attn
    assert attn.k_proj.out_features == kv_heads // 2 * 4
    assert attn.q_proj.out_features == 16  # half the KV groups, each with all its query heads
    assert torch.allclose(logits(model, IDS), want, rtol=1e-4, atol=1e-5)
    assert torch.equal(greedy(model, IDS), want_tokens)
    assert macs == tp.utils.count_ops_and_params(model, IDS)[0]
    _assert_config_matches_weights(model)
    assert (model.config.num_attention_heads, model.config.num_key_value_heads,
            model.config.intermediate_size) == (4, kv_heads // 2, 24)


@settings(max_examples=8, deadline=None)
@given(arch=st.sampled_from(ARCHS), kv_heads=st.sampled_from([8, 4, 2]),
       seed=st.integers(0, 10 ** 6), ratio=st.floats(0.1, 0.9), query=st.booleans(),
       global_pruning=st.booleans())
def test_random_masks_compute_generate_and_count_like_the_pruned_model(
        arch: str, kv_heads: int, seed: int, ratio: float, query: bool,
        global_pruning: bool) -> None:
    model = tiny_decoder(arch, kv_heads, seed)
    query = query and kv_heads < 8  # one query head per KV group: only whole groups
    layers = attention_layers(model, ".q_proj" if query else "") + mlp_layers(model)
    pruner = _prune(model, _config(layers, global_prune_rate=ratio,
                                   global_pruning=global_pruning))
    q_rows = [layer.self_attn.q_proj.weight.view(8, -1) for layer in model.model.layers]
    for rows in q_rows:  # masks zero whole query heads
        zero = (rows == 0).all(1)
        assert bool((zero | (rows != 0).any(1)).all())
    want, want_tokens = logits(model, IDS), greedy(model, IDS)
    macs = pruner.channel_pruner.macs()
    pruner.channel_pruner.remove_masked_channels(model)
    assert torch.allclose(logits(model, IDS), want, rtol=1e-4, atol=1e-5)
    assert torch.equal(greedy(model, IDS), want_tokens)
    assert macs == tp.utils.count_ops_and_params(model, IDS)[0]
    _assert_config_matches_weights(model)
    counts = _counts(model)
    if query:  # every KV group keeps its key/value head and loses the same query heads
        assert counts["num_key_value_heads"] == [kv_heads] * 2
    else:  # whole KV groups: the query heads per KV head are unchanged
        assert [q // kv for q, kv in zip(counts["num_attention_heads"],
                                         counts["num_key_value_heads"])] == [8 // kv_heads] * 2


def test_query_heads_need_more_than_one_per_kv_group(caplog: Any) -> None:
    model = tiny_decoder("llama", 8)
    with caplog.at_level(logging.WARNING, logger="torch_pruning.pat"):
        pruner = tp.Pruning(model, _config(attention_layers(model, ".q_proj")),
                            example_inputs=IDS)
    assert pruner.channel_pruner.groups == []
    assert "one query head per key/value head" in caplog.text


@pytest.mark.parametrize("arch", ARCHS)
def test_load_state_dict_pruned_rebuilds_a_fresh_model(arch: str) -> None:
    model = tiny_decoder(arch, 4)
    pruner = _prune(model, _config(attention_layers(model, ".q_proj") + mlp_layers(model),
                                   global_pruning=True, global_prune_rate=0.6))
    pruner.channel_pruner.remove_masked_channels(model)
    fresh, missing, unexpected = tp.load_state_dict_pruned(tiny_decoder(arch, 4, seed=1),
                                                           model.state_dict())
    assert (missing, unexpected) == ([], [])
    assert _counts(fresh) == _counts(model)
    _assert_config_matches_weights(fresh)
    assert torch.allclose(logits(fresh, IDS), logits(model, IDS), rtol=1e-5, atol=1e-6)
    assert torch.equal(greedy(fresh, IDS), greedy(model, IDS))


def test_uniform_pruning_round_trips_through_plain_from_pretrained(tmp_path: Path) -> None:
    """Per-layer ranking (the default) keeps every layer's counts equal: the saved config is
    an ordinary Llama config that plain ``from_pretrained`` rebuilds."""
    model = tiny_decoder("llama", 2)
    pruner = _prune(model, _config(attention_layers(model) + mlp_layers(model)))
    pruner.channel_pruner.remove_masked_channels(model)
    model.save_pretrained(tmp_path)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert (loaded.config.num_attention_heads, loaded.config.num_key_value_heads) == (4, 1)
    assert _counts(loaded) == _counts(model)
    assert torch.allclose(logits(loaded, IDS), logits(model, IDS), rtol=1e-5, atol=1e-6)
    assert torch.equal(greedy(loaded, IDS), greedy(model, IDS))


@pytest.mark.parametrize("arch", ARCHS)
def test_per_layer_counts_round_trip_through_load_pretrained_pruned(arch: str,
                                                                    tmp_path: Path) -> None:
    """Global ranking leaves the layers different; the config keeps its original global
    counts, records the per-layer ones, and ``load_pretrained_pruned`` rebuilds them."""
    model = tiny_decoder(arch, 4, seed=3)
    with torch.no_grad():  # make layer 1's heads and MLP matter less: the layers must differ
        for p in model.model.layers[1].parameters():
            p.mul_(0.1)
    pruner = _prune(model, _config(attention_layers(model) + mlp_layers(model),
                                   global_pruning=True))
    pruner.channel_pruner.remove_masked_channels(model)
    counts = _counts(model)
    assert len(set(counts["intermediate_size"])) == 2
    model.save_pretrained(tmp_path)
    loaded = tp.pat.load_pretrained_pruned(tmp_path)
    assert type(loaded) is type(model)
    assert _counts(loaded) == counts
    _assert_config_matches_weights(loaded)
    assert torch.allclose(logits(loaded, IDS), logits(model, IDS), rtol=1e-5, atol=1e-6)
    assert torch.equal(greedy(loaded, IDS), greedy(model, IDS))


def test_inspect_lists_attention_and_mlps_with_counts_and_how_to_list_them() -> None:
    from torch_pruning.pat.tools.summary import format_summary, summarize_model

    text = format_summary(summarize_model(tiny_decoder("qwen2", 2), IDS))
    assert ("model.layers.1.self_attn: 8 heads, 2 key/value heads of 4 (Qwen2Attention, "
            "grouped-query attention): list 'model.layers.1.self_attn' to prune whole KV "
            "groups, or 'model.layers.1.self_attn.q_proj'") in text
    assert ("model.layers.0.mlp: 48 hidden features, Qwen2MLP: list "
            "'model.layers.0.mlp.gate_proj'") in text
    assert "model.layers.0.self_attn.q_proj (Linear): 2 KV groups of model.layers.0.self_attn" \
        in text
