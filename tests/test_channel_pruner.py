"""The channel pruner end to end: groups, masks, exact MACs, the MAC target, removal, resume."""

from __future__ import annotations

import copy
import io
import json
import logging
from pathlib import Path
from typing import Any, Callable, List, Tuple

import pytest
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st
from models import MODELS, ConcatCNN, GroupedCNN, ResidualCNN, SmallCNN, TwoInputNet
from torch import nn

import torch_pruning as tp
from torch_pruning.pat.channel.pruner import ChannelPruner
from torch_pruning.pat.config.models import ChannelSparsityArgs
from torch_pruning.pat.config.errors import PruningConfigError
from torch_pruning.pat.channel.tracing import build_graph
from torch_pruning.pat.core.masks import MaskSet
from torch_pruning.pat.util.log import human_count

X = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))


class ListLog:
    """A user log object: collects what ``.info`` / ``.warning`` receive."""

    def __init__(self) -> None:
        self.lines: List[str] = []

    def info(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self.lines.append(msg)

    warning = info


def make(model: nn.Module, inputs: torch.Tensor = X, masks: MaskSet = None, log: Any = None,
         **fields: Any) -> ChannelPruner:
    """A ChannelPruner with a small default schedule; ``fields`` override the config."""
    cfg = dict(start_epoch=0, end_epoch=3, global_prune_rate=0.8, mac_target=0.5)
    cfg.update(fields)
    return ChannelPruner(model, ChannelSparsityArgs(**cfg), example_inputs=inputs,
                         masks=masks if masks is not None else MaskSet(), log=log)


def train(model: nn.Module, pruner: ChannelPruner, optimizer: torch.optim.Optimizer,
          steps: int = 2, shape: tuple = (4, 3, 16, 16), seed: int = 0) -> None:
    model.train()
    for step in range(steps):
        g = torch.Generator().manual_seed(seed * 1000 + step)
        x, y = torch.randn(*shape, generator=g), torch.randint(0, 10, (shape[0],), generator=g)
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        pruner.regularize(model)
        optimizer.step()


def outputs(model: nn.Module, x: torch.Tensor = X) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        out = model(x)
    model.train()
    return out


def macs_of(model: nn.Module, x: torch.Tensor = X) -> float:
    return float(tp.utils.count_ops_and_params(model, x)[0])


# --------------------------------------------------------------------------- groups and layers
def test_groups_are_logged_in_the_seed_format(caplog: pytest.LogCaptureFixture) -> None:
    log = ListLog()
    with caplog.at_level(logging.INFO, logger="torch_pruning.pat"):
        make(SmallCNN(), log=log)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert ("*************\nGroup number 1:\nSource conv: features.0.0\nDependencies:\n"
            "features.1.0") in text
    assert "Group number 3:\nSource conv: features.2.0\nDependencies:\nfc" in text
    assert ("There are 3 groups of layers, with the following source convs:\n"
            "['features.0.0', 'features.1.0', 'features.2.0']") in text
    assert "\n".join(log.lines) == text  # the user's log gets the same lines


def test_unknown_layer_names_the_field_and_close_matches() -> None:
    with pytest.raises(PruningConfigError, match=r"channel_sparsity_args\.layers.*'features\.1\.O'"
                                                 r".*close matches: features\.1\.0"):
        make(SmallCNN(), layers=["features.1.O"])


def test_a_layer_that_is_not_a_conv_is_rejected() -> None:
    with pytest.raises(PruningConfigError, match="'features.0.1' is a BatchNorm2d"):
        make(SmallCNN(), layers=["features.0.1"])


def test_ddp_style_prefix_and_wrapper_are_ignored() -> None:
    model = SmallCNN()
    pruner = make(nn.DataParallel(model), layers=["module.features.1.0"])
    assert [g.source for g in pruner.groups] == ["features.1.0"]
    pruner.prune(nn.DataParallel(model), 0)
    assert pruner.macs() < pruner.base_macs


def test_transposed_convs_and_linear_layers_can_be_listed() -> None:
    model = MODELS["decoder"]()
    pruner = make(model, layers=["up.0", "mlp.0"], start_epoch=0, end_epoch=0,
                  global_prune_rate=0.5, mac_target=0.0)
    assert [(g.source, g.dependencies) for g in pruner.groups] == [("up.0", ["mlp.0"]),
                                                                  ("mlp.0", ["mlp.2"])]
    pruner.prune(model, 0)
    assert (model.up[0].out_channels, model.mlp[0].out_features) == (4, 16)
    assert model(X).shape == (2, 10)


def test_a_coupled_layer_joins_its_group(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="torch_pruning.pat"):
        pruner = make(ResidualCNN(), layers=["stem.0", "block1.1"])
    assert [g.source for g in pruner.groups] == ["stem.0"]
    assert "block1.1 is coupled with stem.0: pruned as group 1" in caplog.text


def test_layers_whose_channels_are_model_outputs_are_skipped(
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="torch_pruning.pat"):
        pruner = make(GroupedCNN())
    assert [g.source for g in pruner.groups] == ["stem.0", "grouped.0"]
    assert "head: its channels are outputs of the model" in caplog.text


# --------------------------------------------------------------------------- exactness
@settings(max_examples=20, deadline=None)
@given(name=st.sampled_from(sorted(MODELS)), seed=st.integers(0, 10 ** 6),
       ratio=st.floats(0.05, 0.95), global_pruning=st.booleans(),
       block_size=st.sampled_from([1, 2, 4]))
def test_masked_macs_equal_the_physically_pruned_model(name: str, seed: int, ratio: float,
                                                       global_pruning: bool,
                                                       block_size: int) -> None:
    """Random weights give random masks; the masked count equals upstream's count after
    removal, and removal does not change the outputs."""
    torch.manual_seed(seed)
    model = MODELS[name]()
    for m in model.modules():  # random BN statistics and affine parameters
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2)
            nn.init.normal_(m.weight)
            nn.init.normal_(m.bias)
    pruner = make(model, start_epoch=0, end_epoch=0, global_prune_rate=ratio, mac_target=0.0,
                  prune_at_target=False, global_pruning=global_pruning, block_size=block_size)
    pruner.prune(model, 0)
    masked_macs, before = pruner.macs(), outputs(model)
    pruner.remove_masked_channels(model)
    assert masked_macs == macs_of(model)
    if name != "grouped":  # GroupNorm statistics see the zeroed channels: not exact (documented)
        assert torch.allclose(outputs(model), before, rtol=1e-4, atol=1e-5)


def _tv(name: str) -> nn.Module:
    return getattr(torchvision.models, name)(weights=None, num_classes=10)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_removal_keeps_torchvision_outputs(name: str) -> None:
    torch.manual_seed(0)
    model, x = _tv(name), torch.randn(2, 3, 32, 32)
    pruner = make(model, x, start_epoch=0, end_epoch=0, global_prune_rate=0.4, mac_target=0.0,
                  prune_at_target=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    train(model, pruner, optimizer, steps=2, shape=(4, 3, 32, 32))
    pruner.prune(model, 0)
    masked_macs, before = pruner.macs(), outputs(model, x)
    pruner.remove_masked_channels(model)
    assert masked_macs == macs_of(model, x) < 0.8 * pruner.base_macs
    assert torch.allclose(outputs(model, x), before, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- SPEC section 1
SEED_CONFIG = {
    "$schema": "./pruning_config.schema.json",
    "channel_sparsity_args": {
        "is_prune": True, "global_pruning": False, "block_size": 1, "start_epoch": 1,
        "end_epoch": 4, "epoch_rate": 1, "global_prune_rate": 0.9, "max_pruning_rate": 0.9,
        "mac_target": 0.6, "reach_mac_target": False, "log_str": "",
        "pruning_method": "GroupNormPruner", "prune_channels_at_init": False, "infer": False,
        "isomorphic": False, "regularize": {"reg": 5e-4, "mac_reg": 1e-3, "gamma": 2.0},
        "MAC_params": {"use_macs": False, "type": "Sum", "alpha": 0.5, "beta": 1.0},
        "layers": "all", "input_shape": [1, 3, 32, 32], "verbose": 1,
    },
    "slice_sparsity_args": {"is_prune": False},
}


@pytest.mark.parametrize("name", ["small", "resnet18", "mobilenet_v2"])
def test_the_spec_loop_reaches_the_mac_target(name: str, tmp_path: Path) -> None:
    from torch_pruning.utils import Pruning

    torch.manual_seed(0)
    output_dir = tmp_path / "run"
    output_dir.mkdir()
    (output_dir / "pruning_config.json").write_text(json.dumps(SEED_CONFIG, indent=2))
    model = SmallCNN() if name == "small" else _tv(name)
    device, logger = torch.device("cpu"), logging.getLogger("user")
    original_params = sum(p.numel() for p in model.parameters())
    make_optimizer: Callable[[nn.Module], torch.optim.Optimizer] = \
        lambda m: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    optimizer = make_optimizer(model)
    criterion = nn.CrossEntropyLoss()
    resets = []

    pruner = Pruning(model, output_dir, forward_fn=None, log=logger, device=device)
    for epoch in range(6):
        loader = [(torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))) for _ in range(2)]
        for x, y in loader:
            loss = criterion(model(x), y)
            loss = loss + pruner.slice_regularize(model)
            optimizer.zero_grad(); loss.backward()
            pruner.channel_regularize(model)
            optimizer.step()
        pruner.prune(model, epoch, log=logger)
        if pruner.channel_pruner.reset_optimizer:
            resets.append(epoch)
            optimizer = make_optimizer(model); pruner.channel_pruner.reset_optimizer = False

    channel = pruner.channel_pruner
    assert channel.reached_target and len(resets) == 1
    x = torch.randn(1, 3, 32, 32)
    assert macs_of(model, x) <= 0.6 * channel.base_macs
    assert sum(p.numel() for p in model.parameters()) < original_params
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    written = json.loads((output_dir / "pruning_config.json").read_text())
    state = written["channel_sparsity_args"]
    assert state.pop("reach_mac_target") is True
    assert state.pop("log_str") == channel.summary() and "MACs:" in channel.summary()
    expected = copy.deepcopy(SEED_CONFIG)
    for key in ("reach_mac_target", "log_str"):
        expected["channel_sparsity_args"].pop(key)
    assert written == expected
    assert list(state) == list(expected["channel_sparsity_args"])  # key order kept


@pytest.mark.parametrize("form", ["seed", "upstream"])
def test_several_inputs_and_a_dict_output(form: str) -> None:
    """``Pruning(model, cfg, forward_fn, example_inputs=(t1, t2))`` in both forward_fn forms."""
    from torch_pruning.utils import Pruning

    torch.manual_seed(0)
    model = TwoInputNet()
    inputs = (torch.randn(1, 3, 16, 16), torch.randn(1, 1, 16, 16))
    forward_fn = model.forward if form == "seed" else (lambda m, x: m(*x)["logits"])
    cfg = {"channel_sparsity_args": dict(start_epoch=0, end_epoch=1, global_prune_rate=0.8,
                                         mac_target=0.6)}
    pruner = Pruning(model, cfg, forward_fn, example_inputs=inputs)
    channel = pruner.channel_pruner
    assert [g.source for g in channel.groups] == ["stem_a.0", "body.0"]
    for epoch in range(2):
        pruner.prune(model, epoch)
    assert channel.reached_target and channel.reset_optimizer
    assert macs_of(model, inputs) <= 0.6 * channel.base_macs
    assert model(*inputs)["logits"].shape == (1, 10)


def test_after_the_target_prune_only_logs_one_short_line(caplog: pytest.LogCaptureFixture) -> None:
    """Issue 17: the summary block is logged once, at the target; then one line per epoch
    with the MACs measured on the model as it is."""
    model = SmallCNN()
    pruner = make(model, start_epoch=0, end_epoch=0, global_prune_rate=0.9, mac_target=0.5)
    pruner.prune(model, 0)
    shapes = [p.shape for p in model.parameters()]
    with caplog.at_level(logging.INFO, logger="torch_pruning.pat"):
        pruner.prune(model, 1)
        pruner.prune(model, 2)
    assert [p.shape for p in model.parameters()] == shapes
    messages = [r.getMessage() for r in caplog.records]
    assert not any("Channel pruning summary" in m for m in messages) and len(messages) == 2
    measured = human_count(macs_of(model, X))
    assert messages[-1].startswith(f"Channel pruning done (epoch 2): MACs {measured} (")


@pytest.mark.parametrize("model_name", ["small", "residual", "concat"])
def test_masking_stops_at_the_step_that_meets_the_target(model_name: str) -> None:
    torch.manual_seed(0)
    model = MODELS[model_name](width=16)
    x = torch.randn(1, 3, 16, 16)
    pruner = make(model, x, start_epoch=0, end_epoch=9, global_prune_rate=1.0, mac_target=0.6,
                  max_pruning_rate=0.95, prune_at_target=False)
    ratios = []
    for epoch in range(10):
        pruner.prune(model, epoch)
        ratios.append(pruner.macs() / pruner.base_macs)
        if pruner.reached_target:
            break
    assert ratios[-1] <= 0.6 and all(r > 0.6 for r in ratios[:-1])
    assert ratios[-1] >= 0.5  # landed near the target, not at the step's full ratio
    masked_macs = pruner.macs()
    assert [p.shape for p in model.parameters()] == [p.shape for p in MODELS[model_name](
        width=16).parameters()]  # prune_at_target=False: masks only, shapes unchanged
    # the MACs counted on the masked model are those of the physically pruned one
    pruner.remove_masked_channels(model)
    assert tp.utils.count_ops_and_params(model, x)[0] == pytest.approx(masked_macs)
    assert pruner.macs() == pytest.approx(masked_macs)


# --------------------------------------------------------------------------- options
def test_block_size_rounds_the_channels_left() -> None:
    model = ConcatCNN(width=16)
    pruner = make(model, start_epoch=0, end_epoch=0, global_prune_rate=0.55, mac_target=0.0,
                  block_size=4)
    original = {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    pruner.prune(model, 0)
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d) and m.out_channels != original[name]:
            assert m.out_channels % 4 == 0
    assert any(m.out_channels != original[n] for n, m in model.named_modules()
               if isinstance(m, nn.Conv2d))


def test_max_pruning_rate_caps_every_group() -> None:
    model = SmallCNN()
    pruner = make(model, start_epoch=0, end_epoch=0, global_prune_rate=0.9, mac_target=0.0,
                  max_pruning_rate=0.25, global_pruning=True)
    pruner.prune(model, 0)
    assert [model.features[i][0].out_channels for i in range(3)] == [12, 24, 24]


@pytest.mark.parametrize("flag", ["prune_channels_at_init", "infer"])
def test_one_shot_flags_prune_physically_at_the_first_call(flag: str) -> None:
    model = ResidualCNN()
    pruner = make(model, start_epoch=5, end_epoch=9, global_prune_rate=0.7, mac_target=0.5,
                  regularize={"reg": 1e-2}, **{flag: True})
    pruner.prune(model, 0)
    assert pruner.reached_target and pruner.reset_optimizer
    assert 0.45 * pruner.base_macs <= macs_of(model) <= 0.5 * pruner.base_macs
    assert (pruner.regularizer is None) == (flag == "infer")


def test_infer_removes_every_zeroed_channel_and_keeps_live_ones() -> None:
    """A masked checkpoint rebuilt with ``infer`` gets exactly its zeroed channels removed,
    even when the target alone would remove fewer; a channel with a zero conv but a live
    BatchNorm shift still produces a constant, so it stays."""
    torch.manual_seed(0)
    model = SmallCNN()
    conv, bn, nxt = model.features[0][0], model.features[0][1], model.features[1][0]
    with torch.no_grad():
        for c in (0, 3, 5, 6, 9):  # what a masked training run leaves behind
            conv.weight[c], bn.weight[c], bn.bias[c] = 0, 0, 0
            nxt.weight[:, c] = 0
        conv.weight[7] = 0  # bn.bias[7] is live: a constant channel
        bn.bias[7] = 0.5
    before = outputs(model)
    pruner = make(model, infer=True, global_prune_rate=0.01, mac_target=0.0)
    pruner.prune(model, 0)
    assert model.features[0][0].out_channels == 16 - 5
    assert model.features[1][0].out_channels == 32  # nothing zeroed there, a rate of 1%
    assert torch.allclose(outputs(model), before, rtol=1e-4, atol=1e-5)


def test_infer_adds_no_regularization() -> None:
    model = SmallCNN()
    pruner = make(model, infer=True, regularize={"reg": 1.0})
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    pruner.regularize(model)
    assert all(float(p.grad.abs().sum()) == 0 for p in model.parameters())


def test_a_finished_job_is_not_pruned_again(caplog: pytest.LogCaptureFixture) -> None:
    model = SmallCNN()
    shapes = [p.shape for p in model.parameters()]
    masks = MaskSet()
    with caplog.at_level(logging.INFO, logger="torch_pruning.pat"):
        pruner = make(model, masks=masks, reach_mac_target=True, log_str="stored summary",
                      prune_channels_at_init=True)
        pruner.prune(model, 0)
    assert "reach_mac_target is true" in caplog.text
    # the stored summary once, then the short per-epoch line with the MACs measured now
    # (issue 17: the summary is not repeated every epoch)
    messages = [r.getMessage() for r in caplog.records]
    assert messages.count("stored summary") == 1 and pruner.summary() == "stored summary"
    assert messages[-1].startswith("Channel pruning done (epoch 0): MACs ")
    assert [p.shape for p in model.parameters()] == shapes and len(masks) == 0


def test_prune_at_target_false_keeps_shapes_until_removal_is_asked() -> None:
    model = ResidualCNN()
    pruner = make(model, start_epoch=0, end_epoch=0, global_prune_rate=0.9, mac_target=0.5,
                  prune_at_target=False)
    shapes = [p.shape for p in model.parameters()]
    pruner.prune(model, 0)
    assert pruner.reached_target and not pruner.reset_optimizer
    assert [p.shape for p in model.parameters()] == shapes
    masked_macs, before = pruner.macs(), outputs(model)
    pruner.remove_masked_channels(model)
    assert pruner.reset_optimizer and macs_of(model) == masked_macs <= 0.5 * pruner.base_macs
    assert torch.allclose(outputs(model), before, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("fields", [dict(global_pruning=True), dict(isomorphic=True),
                                    dict(pruning_method="BNScalePruner"),
                                    dict(pruning_method="MACAwareImportance",
                                         MAC_params={"use_macs": True, "type": "Mul"})])
def test_ranking_options_reach_the_target(fields: dict) -> None:
    model = ResidualCNN()
    pruner = make(model, start_epoch=0, end_epoch=2, global_prune_rate=0.9, mac_target=0.6,
                  **fields)
    for epoch in range(3):
        pruner.prune(model, epoch)
    assert pruner.reached_target and macs_of(model) <= 0.6 * pruner.base_macs


def test_verbose_2_logs_the_pruned_indices(caplog: pytest.LogCaptureFixture) -> None:
    model = SmallCNN()
    with caplog.at_level(logging.INFO, logger="torch_pruning.pat"):
        make(model, verbose=2, prune_at_target=False).prune(model, 0)
    assert "Group 1 (features.0.0): pruned channels [" in caplog.text


# --------------------------------------------------------------------------- regularization
def _zero_grads(model: nn.Module) -> None:
    for p in model.parameters():
        p.grad = torch.zeros_like(p)


def test_uniform_regularization_is_reg_times_the_coupled_weights() -> None:
    model = SmallCNN()
    pruner = make(model, regularize={"reg": 0.1})
    _zero_grads(model)
    pruner.regularize(model)
    # how many groups couple each parameter: a middle conv's weight has its output channels in
    # its own group and its input slices in the previous one
    groups = {"features.0.0.weight": 1, "features.1.0.weight": 2, "features.2.0.weight": 2,
              "fc.weight": 1, "fc.bias": 0}
    for name, p in model.named_parameters():
        expected = 0.1 * groups.get(name, 1) * p.detach()  # BatchNorm affine: one group
        assert torch.allclose(p.grad, expected), name


def test_gamma_shrinks_the_weakest_channel_hardest() -> None:
    model = SmallCNN()
    with torch.no_grad():
        model.features[0][0].weight[3].mul_(0.01)  # the weakest channel of group 1
        model.features[0][0].weight[5].mul_(100)   # the strongest
    pruner = make(model, layers=["features.0.0"], regularize={"reg": 0.1, "gamma": 4.0})
    _zero_grads(model)
    pruner.regularize(model)
    w, g = model.features[0][0].weight.detach(), model.features[0][0].weight.grad
    ratio = (g / w).flatten(1).mean(1)
    assert ratio[3] == pytest.approx(0.4, rel=1e-4) and ratio[5] == pytest.approx(0.1, rel=1e-4)


def test_mac_reg_pushes_expensive_groups_harder() -> None:
    model = SmallCNN()
    pruner = make(model, regularize={"reg": 0.0, "mac_reg": 1.0})
    _zero_grads(model)
    pruner.regularize(model)
    per_group = [float((model.features[i][1].weight.grad / model.features[i][1].weight.detach()).mean())
                 for i in range(3)]
    costs = [pruner.counter.cost(d.target.module for _, d, _, _ in g.items)
             for g in pruner.groups]
    assert per_group == pytest.approx([c / sum(costs) for c in costs], rel=1e-4)


def test_bn_scale_regularizes_the_bn_scales_only() -> None:
    model = SmallCNN()
    pruner = make(model, pruning_method="BNScalePruner", regularize={"reg": 0.1})
    _zero_grads(model)
    pruner.regularize(model)
    for name, p in model.named_parameters():
        is_scale = isinstance(model.get_submodule(name.rpartition(".")[0]),
                              nn.BatchNorm2d) and name.endswith("weight")
        expected = 0.1 * p.detach().sign() if is_scale else torch.zeros_like(p)
        assert torch.equal(p.grad, expected), name


def _coupled_entries(model: SmallCNN, channel: int) -> List[Tuple[torch.Tensor, Any]]:
    """``(parameter, index)`` of every entry coupled to ``features.0.0``'s output ``channel``:
    its filter, BatchNorm scale and shift, and the next conv's input slice."""
    conv, bn, nxt = model.features[0][0], model.features[0][1], model.features[1][0]
    return [(conv.weight, channel), (bn.weight, channel), (bn.bias, channel),
            (nxt.weight, (slice(None), channel))]


def _shrink_channel(model: SmallCNN, channel: int, factor: float) -> None:
    """Scale the channel's coupled entries by ``factor``, as a long penalty would."""
    with torch.no_grad():
        for p, index in _coupled_entries(model, channel):
            p[index] *= factor


def _coupled(model: SmallCNN, channel: int) -> List[torch.Tensor]:
    return [p[index] for p, index in _coupled_entries(model, channel)]


@pytest.mark.parametrize("make_optimizer", [
    lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9),
    lambda params: torch.optim.AdamW(params, lr=1e-3)], ids=["sgd_momentum", "adamw"])
def test_spent_channels_become_exact_zeros_with_their_optimizer_state(
        make_optimizer: Callable[[Any], torch.optim.Optimizer]) -> None:
    torch.manual_seed(0)
    model = SmallCNN()
    pruner = make(model, layers=["features.0.0"], regularize={"reg": 0.1}, start_epoch=5,
                  end_epoch=8)
    optimizer = make_optimizer(model.parameters())
    _shrink_channel(model, 3, 1e-12)  # spent: far below float32's resolution of the others
    _shrink_channel(model, 5, 1e-4)  # small, but not spent
    before = copy.deepcopy(model)
    train(model, pruner, optimizer, steps=3)
    assert all(bool((t == 0).all()) for t in _coupled(model, 3))
    for p, index in _coupled_entries(model, 3):
        moments = [v for v in optimizer.state[p].values() if v.shape == p.shape]
        assert moments and all(bool((v[index] == 0).all()) for v in moments)
    # the small channel and the healthy ones keep training
    assert all(bool((t != 0).any()) for t in _coupled(model, 5))
    assert not torch.equal(model.features[0][0].weight[5], before.features[0][0].weight[5])
    assert bool((model.features[0][0].weight[0] != 0).all())


def test_only_channels_the_penalty_pushes_count_as_spent() -> None:
    torch.manual_seed(0)
    model = SmallCNN()
    pruner = make(model, layers=["features.0.0"], regularize={"reg": 0.1})
    _shrink_channel(model, 3, 1e-12)
    reg = pruner.regularizer
    conv = model.features[0][0]
    assert reg.spent()[(conv, "weight")].flatten().nonzero().flatten().tolist() == [3]
    not_three = torch.ones(16, dtype=torch.bool)
    not_three[3] = False
    reg.focus_on({pruner.groups[0].number: not_three})  # pushes every channel but 3
    assert reg.spent() == {}


def test_spent_zeroing_stops_at_the_removal_and_training_goes_on() -> None:
    torch.manual_seed(0)
    model = SmallCNN()
    pruner = make(model, regularize={"reg": 0.1}, start_epoch=1, end_epoch=1,
                  global_prune_rate=0.5, mac_target=0.6)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    _shrink_channel(model, 3, 1e-12)
    for epoch in range(3):
        train(model, pruner, optimizer, steps=2, seed=epoch)
        pruner.prune(model, epoch)
        if pruner.reset_optimizer:
            pruner.reset_optimizer = False
            optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    assert pruner.reached_target
    assert model.features[0][0].out_channels < 16
    assert bool(torch.isfinite(outputs(model)).all())


# --------------------------------------------------------------------------- resume
def _run(model: nn.Module, pruner: ChannelPruner, optimizer: torch.optim.Optimizer,
         epochs: range) -> None:
    for epoch in epochs:
        train(model, pruner, optimizer, steps=2, seed=epoch)
        pruner.prune(model, epoch)


def test_resume_gives_the_same_masks_as_an_uninterrupted_run() -> None:
    fields = dict(start_epoch=0, end_epoch=5, global_prune_rate=0.6, mac_target=0.2,
                  regularize={"reg": 1e-3, "gamma": 2.0})
    new_opt = lambda m: torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)

    torch.manual_seed(0)
    model_a = ResidualCNN()
    init = copy.deepcopy(model_a.state_dict())
    masks_a = MaskSet()
    pruner_a = make(model_a, masks=masks_a, **fields)
    optimizer_a = new_opt(model_a)
    _run(model_a, pruner_a, optimizer_a, range(4))

    model_b = ResidualCNN()
    model_b.load_state_dict(init)
    pruner_b = make(model_b, masks=MaskSet(), **fields)
    optimizer_b = new_opt(model_b)
    _run(model_b, pruner_b, optimizer_b, range(2))
    buffer = io.BytesIO()
    torch.save({"model": model_b.state_dict(), "optimizer": optimizer_b.state_dict(),
                "pruner": pruner_b.state_dict()}, buffer)
    del model_b, pruner_b, optimizer_b

    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)
    model_c = ResidualCNN()
    masks_c = MaskSet()
    pruner_c = make(model_c, masks=masks_c, **fields)
    model_c.load_state_dict(checkpoint["model"])
    pruner_c.load_state_dict(checkpoint["pruner"])
    optimizer_c = new_opt(model_c)
    optimizer_c.load_state_dict(checkpoint["optimizer"])
    _run(model_c, pruner_c, optimizer_c, range(2, 4))

    saved_a, saved_c = masks_a.state_dict(model_a), masks_c.state_dict(model_c)
    assert saved_a.keys() == saved_c.keys() and saved_a["channel"].keys() == \
        saved_c["channel"].keys()
    assert all(torch.equal(saved_a["channel"][k], saved_c["channel"][k])
               for k in saved_a["channel"])
    assert pruner_c.macs() == pruner_a.macs() < pruner_a.base_macs


def test_masks_kept_at_the_target_survive_a_restart() -> None:
    """prune_at_target false: the restarted job (reach_mac_target true) gets its masks back."""
    model = ResidualCNN()
    pruner = make(model, start_epoch=0, end_epoch=0, global_prune_rate=0.9, mac_target=0.5,
                  prune_at_target=False)
    pruner.prune(model, 0)
    state, weights = pruner.state_dict(), copy.deepcopy(model.state_dict())
    restarted, masks = ResidualCNN(), MaskSet()
    again = make(restarted, masks=masks, prune_at_target=False, reach_mac_target=True,
                 log_str=pruner.summary())
    restarted.load_state_dict(weights)
    again.load_state_dict(state)
    assert again.reached_target and len(masks) > 0
    assert again.macs() == pruner.macs() <= 0.5 * again.base_macs


def test_state_from_other_layers_is_a_clear_error() -> None:
    state = make(SmallCNN()).state_dict()
    with pytest.raises(ValueError, match="group 'features.0.0'.*layers"):
        make(SmallCNN(), layers=["features.1.0"]).load_state_dict(state)


# --------------------------------------------------------------------------- upstream limits
def test_upstream_unpacks_a_batch_one_tensor_so_we_trace_with_the_batch() -> None:
    """Upstream's default tracing calls ``model(*x)`` first: a (1, C, H, W) tensor becomes an
    unbatched (C, H, W) sample. ``build_graph`` always passes the inputs as given."""
    seen: List[tuple] = []
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 3))
    net.register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape)))
    x = torch.randn(1, 3, 8, 8)
    tp.DependencyGraph().build_dependency(net, x)
    assert seen[0] == (3, 8, 8)  # the upstream behaviour this works around
    seen.clear()
    build_graph(net, x)
    assert seen == [(1, 3, 8, 8)]


def test_upstream_tracing_leaves_eval_mode_so_we_restore_it() -> None:
    net = SmallCNN().train()
    tp.DependencyGraph().build_dependency(net, torch.randn(2, 3, 8, 8))
    assert not net.training  # the upstream behaviour this works around
    net.train()
    make(net)
    assert all(m.training for m in net.modules())


def test_upstream_importance_fails_on_one_input_channel_per_group() -> None:
    """Upstream's GroupMagnitudeImportance indexes out of range for a grouped conv with one
    input channel per group (groups == in_channels != out_channels); such groups cannot be
    pruned anyway (one unit), so the pruner skips them before ranking."""
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(4, 4), nn.ReLU(),
                        nn.Conv2d(4, 12, 3, groups=4), nn.ReLU(), nn.Conv2d(12, 2, 1))
    DG = tp.DependencyGraph().build_dependency(net, torch.randn(1, 3, 12, 12))
    group = DG.get_pruning_group(net[0], tp.prune_conv_out_channels, [0, 1, 2, 3])
    with pytest.raises(IndexError):
        tp.importance.GroupMagnitudeImportance()(group)
    pruner = make(net, torch.randn(1, 3, 12, 12), mac_target=0.0, start_epoch=0, end_epoch=0)
    assert [g.source for g in pruner.groups] == ["3"]
    pruner.prune(net, 0)
    assert net[3].out_channels < 12 and net(torch.randn(1, 3, 12, 12)).shape == (1, 2, 8, 8)


# --------------------------------------------------------------------------- DDP
def _ddp_worker(rank: int, world: int, store: str, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)  # identical initial weights on every rank
        model = nn.parallel.DistributedDataParallel(ResidualCNN())
        masks = MaskSet()
        pruner = make(model, masks=masks, start_epoch=0, end_epoch=3, global_prune_rate=0.6,
                      mac_target=0.1, regularize={"reg": 1e-3, "gamma": 2.0})
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        for epoch in range(2):
            train(model, pruner, optimizer, steps=2, seed=100 * rank + epoch)  # rank's own data
            pruner.prune(model, epoch)
        mine = masks.state_dict(model.module)["channel"]
        gathered: List[Any] = [None] * world
        dist.all_gather_object(gathered, mine)
        if rank == 0:
            same = all(g.keys() == mine.keys() and all(torch.equal(g[k], mine[k]) for k in mine)
                       for g in gathered)
            Path(out).write_text(json.dumps({"same": same, "masked": sum(
                int((~v).sum()) for v in mine.values())}))
    finally:
        dist.destroy_process_group()


def test_ddp_ranks_keep_identical_masks(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    out = tmp_path / "result.json"
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "store"), str(out)), nprocs=2, join=True)
    result = json.loads(out.read_text())
    assert result["same"] and result["masked"] > 0


def test_upstream_does_not_mark_a_module_output_as_model_output() -> None:
    """Upstream adds an output node only after a non-module op; a conv whose output is the
    model's output would be prunable. ``build_graph`` records such modules."""
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 1))
    DG = tp.DependencyGraph().build_dependency(net, torch.randn(1, 3, 8, 8))
    group = DG.get_pruning_group(net[2], tp.prune_conv_out_channels, [0, 1])
    assert all(dep.target.type != tp.ops.OPTYPE.OUTPUT for dep, _ in group)
    assert build_graph(net, torch.randn(1, 3, 8, 8)).output_modules == {net[2]}
    assert [g.source for g in make(net, torch.randn(1, 3, 8, 8)).groups] == ["0"]


def test_grouped_convs_keep_two_channels_per_group() -> None:
    """Upstream takes any conv with ``groups == out_channels`` for a depthwise one."""
    assert tp.ops.module2type(nn.Conv2d(12, 4, 3, groups=4)) == tp.ops.OPTYPE.DEPTHWISE_CONV
    model = GroupedCNN()
    pruner = make(model, start_epoch=0, end_epoch=0, global_prune_rate=1.0, mac_target=0.0,
                  global_pruning=True)
    pruner.prune(model, 0)
    assert model.grouped[0].out_channels == 2 * model.grouped[0].groups
    assert model(X).shape == (2, 10)


def test_upstream_counter_prints_but_ours_logs(capsys: pytest.CaptureFixture) -> None:
    from torch_pruning.pat.core.macs import MacCounter

    model = TwoInputNet()
    inputs = {"image": torch.randn(1, 3, 16, 16), "depth": torch.randn(1, 1, 16, 16)}
    upstream = tp.utils.count_ops_and_params(model, inputs)[0]
    assert "Warning" in capsys.readouterr().out
    assert MacCounter(model, inputs).base_macs == upstream
    assert capsys.readouterr().out == ""


# --------------------------------------------------------------------------- construction cost
@pytest.mark.parametrize("model_cls", [ConcatCNN, ResidualCNN, GroupedCNN])
def test_groups_select_with_one_index_mapping(model_cls, monkeypatch) -> None:
    """Upstream's get_pruning_group re-runs the graph's index mapping for every group; inside
    ``index_mapping_once`` it runs once, and the groups (positions and roots) are the same."""
    from torch_pruning.dependency import index_mapping
    from torch_pruning.pat.channel.grouping import select_groups
    from torch_pruning.pat.channel.tracing import index_mapping_once

    model = model_cls()
    DG = build_graph(model, X)
    calls: List[int] = []
    original = index_mapping.update_index_mapping
    monkeypatch.setattr(index_mapping, "update_index_mapping",
                        lambda graph: (calls.append(1), original(graph))[1])

    def pruning_group(module: nn.Module):
        pruner = DG.get_pruner_of_module(module)
        return DG.get_pruning_group(module, pruner.prune_out_channels,
                                    list(range(pruner.get_out_channels(module))))

    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    repeated = [pruning_group(m) for m in convs]
    assert len(calls) == len(convs)  # upstream: once per group
    calls.clear()
    with index_mapping_once(DG):
        once = [pruning_group(m) for m in convs]
    assert len(calls) == 1
    for a, b in zip(repeated, once):
        assert [(it.dep.target, it.dep.handler, it.idxs, it.root_idxs) for it in a.items] == \
            [(it.dep.target, it.dep.handler, it.idxs, it.root_idxs) for it in b.items]
    assert index_mapping.update_index_mapping is not original  # ours restored the patch...
    monkeypatch.undo()
    assert index_mapping.update_index_mapping is original  # ...and nothing else is left
    plain = [(g.source, [(s.name, s.dim, s.index.tolist(), s.roots.tolist()) for s in g.slices])
             for g in select_groups(model, build_graph(model, X), "all")]
    assert plain == [(g.source, [(s.name, s.dim, s.index.tolist(), s.roots.tolist())
                                 for s in g.slices])
                     for g in select_groups(model, DG, "all")]


def _describe(groups) -> list:
    return [(g.source, g.channels, g.ch_groups, g.dependencies, g.module_names,
             [(s.module, s.name, s.dim, s.index.tolist(), s.roots.tolist()) for s in g.slices],
             [(it.dep.target, it.dep.handler, list(it.idxs), list(it.root_idxs))
              for it in g.group.items])
            for g in groups]


@pytest.mark.parametrize("name", sorted(MODELS) + ["resnet18", "mobilenet_v2", "densenet121"])
def test_probed_groups_equal_full_groups(name, monkeypatch) -> None:
    """Groups found with a one-channel probe (no index mapping on the way) are the groups
    upstream gives for every channel: same members, positions, roots and upstream items."""
    from torch_pruning.pat.channel import grouping
    from torch_pruning.pat.channel.grouping import select_groups

    if name in MODELS:
        model = MODELS[name]()
        inputs = X
    else:
        model = getattr(torchvision.models, name)(weights=None, num_classes=10)
        inputs = torch.randn(1, 3, 32, 32)
    DG = build_graph(model, inputs)
    probed = select_groups(model, DG, "all")
    # the probe is used where no concat/split is on the way (densenet: every group has one)
    assert any(g.full_group is not None for g in probed) == (name != "densenet121")
    monkeypatch.setattr(grouping, "_identity_mapped", lambda group: False)
    full = select_groups(model, DG, "all")
    assert all(g.full_group is None for g in full)
    assert _describe(probed) == _describe(full)
