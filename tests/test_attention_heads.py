"""Whole attention heads pruned in attention written with Linear projections (timm's fused
``qkv``, Hugging Face's ``q_proj``/``k_proj``/``v_proj``, with or without SDPA): masks zero whole
heads, the physically pruned model computes what the masked one did, MACs are exact, the head
count attribute follows (live model, MAC counter, checkpoint loading), and layouts that cannot be
pruned by whole heads are reported by name instead of pruned wrongly."""

from __future__ import annotations

import copy
import logging
import re
from typing import Any, Dict, List

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from models.transformer import (HandwrittenAttention, HeadsAttention, HeadsTransformer,
                                eval_outputs, one_epoch_config)
from models.loop import five_line_loop
from torch import nn

import torch_pruning as tp

#: attention layouts whose heads can be removed exactly
LAYOUTS: Dict[str, Dict[str, bool]] = {
    "fused_qkv": {"fused": True},
    "split_qkv": {"fused": False},
    "split_qkv_sdpa": {"fused": False, "sdpa": True},
    "fused_qkv_sdpa": {"fused": True, "sdpa": True},
}
ATTENTION = ["blocks.0.attn", "blocks.1.attn"]


def _q_rows(attn: nn.Module) -> torch.Tensor:
    """The q projection's weight rows (fused: the first third of ``qkv``)."""
    if hasattr(attn, "qkv"):
        return attn.qkv.weight[: attn.qkv.out_features // 3]
    return attn.q_proj.weight


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_attention_groups_rank_whole_heads(layout: str) -> None:
    model = HeadsTransformer(**LAYOUTS[layout])
    pruner = tp.Pruning(model, one_epoch_config(ATTENTION + ["blocks.0.fc1"]),
                        example_inputs=torch.randn(2, 6, 12))
    groups = pruner.channel_pruner.groups
    root = "qkv" if LAYOUTS[layout]["fused"] else "q_proj"
    assert [g.source for g in groups] == [f"blocks.0.attn.{root}", f"blocks.1.attn.{root}",
                                          "blocks.0.fc1"]
    assert [g.units for g in groups] == [4, 4, 48]
    assert groups[0].heads.name == "blocks.0.attn" and groups[0].heads.head_dim == 6
    assert "blocks.0.attn.proj" in groups[0].dependencies
    if root == "q_proj":
        assert {"blocks.0.attn.k_proj", "blocks.0.attn.v_proj"} <= set(groups[0].dependencies)


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 10 ** 6), ratio=st.floats(0.05, 0.95),
       layout=st.sampled_from(sorted(LAYOUTS)), global_pruning=st.booleans(),
       block_size=st.sampled_from([1, 4, 12]),
       method=st.sampled_from(["GroupNormPruner", "MACAwareImportance"]))
def test_random_head_masks_compute_and_count_like_the_pruned_model(
        seed: int, ratio: float, layout: str, global_pruning: bool, block_size: int,
        method: str) -> None:
    torch.manual_seed(seed)
    model, x = HeadsTransformer(**LAYOUTS[layout]), torch.randn(2, 6, 12)
    cfg = one_epoch_config(ATTENTION + ["blocks.1.fc1"], global_prune_rate=ratio,
                           global_pruning=global_pruning, block_size=block_size,
                           pruning_method=method)
    pruner = tp.Pruning(model, cfg, example_inputs=x)
    pruner.prune(model, 0)
    kept = []
    for block in model.blocks:  # masks zero whole heads: all six rows of a head, or none
        zero = (_q_rows(block.attn) == 0).all(1).view(4, 6)
        assert bool((zero.all(1) | ~zero.any(1)).all())
        kept.append(4 - int(zero.all(1).sum()))
    masked_macs, before = pruner.channel_pruner.macs(), eval_outputs(model, x)
    pruner.channel_pruner.remove_masked_channels(model)
    assert [b.attn.num_heads for b in model.blocks] == kept
    assert all(b.attn.head_dim == 6 for b in model.blocks)
    assert masked_macs == tp.utils.count_ops_and_params(model, x)[0]
    assert torch.allclose(eval_outputs(model, x), before, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("layers", [["blocks.0.attn"], ["blocks.0.attn.k_proj"],
                                    ["blocks.0.attn.q_proj", "blocks.0.attn.v_proj"]])
def test_layers_may_name_the_attention_module_or_any_projection(layers: List[str]) -> None:
    model = HeadsTransformer(fused=False)
    pruner = tp.Pruning(model, one_epoch_config(layers), example_inputs=torch.randn(2, 6, 12))
    (group,) = pruner.channel_pruner.groups
    assert group.heads.module is model.blocks[0].attn and group.units == 4


def test_pat_reaches_the_mac_target_by_removing_heads(write_config) -> None:
    torch.manual_seed(0)
    model = HeadsTransformer()
    folder = write_config(one_epoch_config(ATTENTION, end_epoch=3, global_prune_rate=0.75,
                                           mac_target=0.8, prune_at_target=True,
                                           global_pruning=True, regularize={"reg": 1e-2}))
    pruner = tp.Pruning(model, folder, example_inputs=torch.randn(2, 6, 12))
    data = [(torch.randn(8, 6, 12), torch.randint(0, 5, (8,))) for _ in range(3)]
    five_line_loop(model, pruner, data, epochs=4,
                   make_optimizer=lambda params: torch.optim.AdamW(params, lr=1e-2))
    assert pruner.channel_pruner.reached_target
    heads = [b.attn.num_heads for b in model.blocks]
    assert sum(heads) < 8 and min(heads) >= 1
    assert [b.attn.qkv.out_features for b in model.blocks] == [18 * h for h in heads]
    assert tp.utils.count_ops_and_params(model, data[0][0])[0] <= \
        0.8 * pruner.channel_pruner.base_macs
    summary = pruner.channel_pruner.summary()
    assert re.search(rf"blocks\.0\.attn\.qkv: {18 * heads[0]}/72 \({heads[0]}/4 heads of "
                     r"blocks\.0\.attn\)", summary), summary
    assert torch.isfinite(nn.functional.cross_entropy(model(data[0][0]), data[0][1]))


@pytest.mark.parametrize("layout", ["fused_qkv", "split_qkv"])
def test_head_pruned_checkpoint_loads_into_the_original_architecture(layout: str) -> None:
    torch.manual_seed(0)
    model, x = HeadsTransformer(**LAYOUTS[layout]), torch.randn(2, 6, 12)
    pruner = tp.Pruning(model, one_epoch_config(ATTENTION, prune_at_target=True), example_inputs=x)
    pruner.prune(model, 0)
    assert [b.attn.num_heads for b in model.blocks] == [2, 2]
    fresh, missing, unexpected = tp.load_state_dict_pruned(HeadsTransformer(**LAYOUTS[layout]),
                                                           model.state_dict())
    assert (missing, unexpected) == ([], [])
    assert [b.attn.num_heads for b in fresh.blocks] == [2, 2]
    assert torch.allclose(eval_outputs(fresh, x), eval_outputs(model, x), rtol=1e-5, atol=1e-6)


def test_head_count_on_the_model_itself_is_pruned_and_reloaded() -> None:
    """HandwrittenAttention keeps its head count as ``self.heads`` on the root module."""
    torch.manual_seed(0)
    model, x = HandwrittenAttention(), torch.randn(2, 5, 16)
    pruner = tp.Pruning(model, one_epoch_config(["q", "fc1"]), example_inputs=x)
    assert [g.units for g in pruner.channel_pruner.groups] == [4, 32]
    pruner.prune(model, 0)
    masked_macs, before = pruner.channel_pruner.macs(), eval_outputs(model, x)
    pruner.channel_pruner.remove_masked_channels(model)
    assert (model.heads, model.q.out_features, model.o.in_features) == (2, 8, 8)
    assert masked_macs == tp.utils.count_ops_and_params(model, x)[0]
    assert torch.allclose(eval_outputs(model, x), before, rtol=1e-4, atol=1e-5)
    fresh = tp.load_state_dict_pruned(HandwrittenAttention(), model.state_dict())[0]
    assert fresh.heads == 2
    assert torch.allclose(eval_outputs(fresh, x), before, rtol=1e-4, atol=1e-5)


class _FixedHeads(nn.Module):
    """Attention whose head count is a literal in its forward: heads cannot be told apart."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(8, 8) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = (f(x).view(b, n, 2, 4).transpose(1, 2) for f in (self.q, self.k, self.v))
        return x + self.o((q @ k.transpose(-2, -1)).softmax(-1).matmul(v).transpose(1, 2)
                          .reshape(b, n, -1)).mean(1, keepdim=True)


@pytest.mark.parametrize("make,layers,says", [
    (lambda: HeadsTransformer(interleaved=True), ["blocks.0.attn"],
     r"blocks\.0\.attn \(HeadsAttention\): .*removing a head of blocks\.0\.attn does not "
     r"compute what masking it does: q, k and v are not laid out as 4 heads of 6"),
    (lambda: HeadsTransformer(input_width=True), ["blocks.0.attn.qkv"],
     r"blocks\.0\.attn\.qkv: .*once a head is removed, blocks\.0\.attn's forward fails "
     r"\(RuntimeError: .*it must take its shapes from num_heads"),
    (_FixedHeads, ["q"], r"q: its channels pass through a batched matrix product .*no module "
                         r"enclosing q has a head count attribute \(num_heads, "),
])
def test_attention_that_cannot_lose_whole_heads_is_reported(
        make: Any, layers: List[str], says: str, caplog: pytest.LogCaptureFixture) -> None:
    model = make()
    x = torch.randn(2, 6, 12) if isinstance(model, HeadsTransformer) else torch.randn(2, 3, 8)
    before = copy.deepcopy(model.state_dict())
    with caplog.at_level(logging.WARNING, logger="torch_pruning.pat"):
        pruner = tp.Pruning(model, one_epoch_config(layers), example_inputs=x)
    assert pruner.channel_pruner.groups == []
    assert re.search(says, caplog.text), caplog.text
    pruner.prune(model, 0)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_each_distinct_attention_is_checked_on_its_own(caplog: pytest.LogCaptureFixture) -> None:
    """Same parameter shapes, different layout: the exactness check is not shared."""
    model = HeadsTransformer()
    model.blocks[1].attn = HeadsAttention(interleaved=True)
    with caplog.at_level(logging.WARNING, logger="torch_pruning.pat"):
        pruner = tp.Pruning(model, one_epoch_config(ATTENTION),
                            example_inputs=torch.randn(2, 6, 12))
    assert [g.source for g in pruner.channel_pruner.groups] == ["blocks.0.attn.qkv"]
    assert "blocks.1.attn (HeadsAttention)" in caplog.text


def test_carried_adam_state_continues_like_the_masked_model() -> None:
    """carry_optimizer_state slices Adam's moments of q/k/v rows and proj columns per head."""
    torch.manual_seed(0)
    x, y = torch.randn(8, 6, 12), torch.randint(0, 5, (8,))

    def run(remove: bool) -> nn.Module:
        torch.manual_seed(1)
        model = HeadsTransformer()
        pruner = tp.Pruning(model, one_epoch_config(ATTENTION), example_inputs=x[:2])
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        for step in range(6):
            if step == 3:
                pruner.prune(model, 0)
                if remove:
                    pruner.channel_pruner.remove_masked_channels(model)
                    optimizer = pruner.carry_optimizer_state(optimizer)
            loss = nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return model

    masked, carried = run(remove=False), run(remove=True)
    assert [b.attn.num_heads for b in carried.blocks] == [2, 2]
    assert torch.allclose(eval_outputs(carried, x), eval_outputs(masked, x), rtol=1e-4, atol=1e-5)


def test_pruner_state_with_head_masks_resumes(tmp_path) -> None:
    torch.manual_seed(0)
    model, x = HeadsTransformer(), torch.randn(2, 6, 12)
    pruner = tp.Pruning(model, one_epoch_config(ATTENTION, global_prune_rate=0.25),
                        example_inputs=x)
    pruner.prune(model, 0)
    state = pruner.state_dict()
    resumed_model = copy.deepcopy(model)
    resumed = tp.Pruning(resumed_model, one_epoch_config(ATTENTION, global_prune_rate=0.25),
                         example_inputs=x)
    resumed.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(pruner.channel_pruner._pruned.values(),
                                                 resumed.channel_pruner._pruned.values()))
    assert resumed.channel_pruner.macs() == pruner.channel_pruner.macs()


class _WithProperty(nn.Module):
    @property
    def num_heads(self) -> int:
        return 4


class _Forwarding(nn.Module):
    """A wrapper that answers attributes of an inner module (as e.g. PEFT wrappers do)."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Module()
        self.inner.n_heads = 2

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.inner, name)


def _attr_module() -> nn.Module:
    m = nn.Module()
    m.heads = 8
    return m


@pytest.mark.parametrize("make,expected", [
    (_attr_module, "heads"), (_WithProperty, "num_heads"), (_Forwarding, "n_heads"),
    (lambda: nn.Linear(2, 2), None), (lambda: nn.Parameter(torch.zeros(2)), None),
    (lambda: nn.MultiheadAttention(8, 2), None)])
def test_head_count_attr_reads_attributes_like_getattr(make, expected) -> None:
    from torch_pruning.pat.core.heads import head_count_attr

    assert head_count_attr(make()) == expected
