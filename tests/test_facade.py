"""The Pruning facade: signatures of SPEC section 1, disabled mode, forward_fn forms."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

import torch_pruning as tp
from models import TwoInputNet
from torch_pruning.pat.config.models import ChannelSparsityArgs
from torch_pruning.pat.config.errors import PruningConfigError
from torch_pruning.pat.facade import make_example_inputs, normalize_forward_fn


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))


def _train(model, pruner, epochs=2, log=None):
    torch.manual_seed(1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 3, (16,))
    for epoch in range(epochs):
        for _ in range(3):
            loss = nn.functional.cross_entropy(model(x), y)
            if pruner is not None:
                loss = loss + pruner.slice_regularize(model)
            optimizer.zero_grad()
            loss.backward()
            if pruner is not None:
                pruner.channel_regularize(model)
            optimizer.step()
        if pruner is not None:
            pruner.prune(model, epoch, log=log)
            if pruner.channel_pruner.reset_optimizer:
                optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
                pruner.channel_pruner.reset_optimizer = False
    return model


class ListLog:
    """A user log object: anything with ``.info`` receives the library's lines."""

    def __init__(self) -> None:
        self.lines: list = []

    def info(self, msg: str) -> None:
        self.lines.append(msg)


def test_missing_config_leaves_training_untouched(tmp_path, caplog) -> None:
    reference = _train(_net(), None)
    model = _net()
    user_log = ListLog()
    with caplog.at_level(logging.INFO):
        pruner = tp.utils.Pruning(model, tmp_path, None, user_log, "cpu")
    lines = [r for r in caplog.records if "pruning is disabled" in r.getMessage()]
    assert [r.name for r in lines] == ["torch_pruning.pat"]
    assert len(user_log.lines) == 1 and "pruning is disabled" in user_log.lines[0]
    assert not pruner.enabled
    _train(model, pruner, log=user_log)
    for (name, a), b in zip(model.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(a, b), name


def test_user_logger_sharing_root_handlers_gets_each_line_once(tmp_path, caplog) -> None:
    user_logger = logging.getLogger("user.train")  # propagates to root, like basicConfig users
    with caplog.at_level(logging.INFO):
        tp.Pruning(_net(), tmp_path, log=user_logger)
    assert len([r for r in caplog.records if "pruning is disabled" in r.getMessage()]) == 1


def test_user_logger_with_its_own_handler_gets_the_lines(tmp_path) -> None:
    user_logger = logging.getLogger("user.private")
    user_logger.propagate = False
    user_logger.setLevel(logging.INFO)
    seen = ListLog()
    handler = logging.Handler()
    handler.emit = lambda record: seen.info(record.getMessage())
    user_logger.addHandler(handler)
    try:
        tp.Pruning(_net(), tmp_path, log=user_logger)
    finally:
        user_logger.removeHandler(handler)
    assert any("pruning is disabled" in line for line in seen.lines)


def test_disabled_regularizer_is_zero_on_model_device(tmp_path) -> None:
    model = _net()
    pruner = tp.Pruning(model, tmp_path)
    penalty = pruner.slice_regularize(model)
    assert penalty.device == next(model.parameters()).device and float(penalty) == 0.0
    assert pruner.channel_regularize(model) is None


def test_both_sections_off_disables_pruning(write_config) -> None:
    folder = write_config({"channel_sparsity_args": {"is_prune": False},
                           "slice_sparsity_args": {"is_prune": False}})
    pruner = tp.Pruning(_net(), folder)
    assert not pruner.enabled and pruner.state_dict() == {"channel": {}, "slice": {}}


def test_broken_config_is_never_silently_disabled(write_config) -> None:
    folder = write_config({"channel_sparsity_args": {"start_epoch": 0, "end_epoch": 1,
                                                     "global_prune_rate": 2.0}})
    with pytest.raises(PruningConfigError, match="global_prune_rate"):
        tp.Pruning(_net(), folder)


def test_seed_forward_fn_is_a_bound_method_of_any_arity() -> None:
    model = TwoInputNet().eval()
    x, y = torch.randn(1, 3, 8, 8), torch.randn(1, 1, 8, 8)
    fn = normalize_forward_fn(model.logits, model)
    assert torch.equal(fn(model, (x, y)), model.logits(x, y))
    fn = normalize_forward_fn(model.forward, model)
    assert torch.equal(fn(model, [x, y])["logits"], model(x, y)["logits"])


def test_upstream_forward_fn_form_is_passed_through() -> None:
    model = TwoInputNet()

    def pick_logits(m, inputs):
        return m(*inputs)["logits"]

    assert normalize_forward_fn(pick_logits, model) is pick_logits


def test_single_argument_function_takes_the_inputs() -> None:
    model = nn.Linear(2, 2)
    fn = normalize_forward_fn(lambda inputs: model(inputs) * 2, model)
    x = torch.ones(1, 2)
    assert torch.equal(fn(model, x), model(x) * 2)


@pytest.mark.parametrize("container, kind", [(None, list), ("tuple", tuple)])
def test_several_input_shapes_are_packed_per_container(container, kind) -> None:
    cfg = ChannelSparsityArgs(start_epoch=0, end_epoch=1, global_prune_rate=0.5,
                              input_shape=[[2, 3, 8, 8], [2, 1, 4, 4]], container=container)
    inputs = make_example_inputs(cfg, torch.device("cpu"))
    assert type(inputs) is kind and [tuple(t.shape) for t in inputs] == [(2, 3, 8, 8), (2, 1, 4, 4)]


def test_missing_input_shape_names_the_field() -> None:
    cfg = ChannelSparsityArgs(start_epoch=0, end_epoch=1, global_prune_rate=0.5)
    with pytest.raises(PruningConfigError, match=r"channel_sparsity_args\.input_shape: required"):
        make_example_inputs(cfg, torch.device("cpu"), "cfg.json")
