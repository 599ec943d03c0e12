"""The recommended recipe: recommend_config and the focused, growing channel penalty."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import torch_pruning as tp
from torch_pruning.pat.config.models import PruningConfig
from torch_pruning.pat.tools.recipe import RECIPE

from models import ResidualCNN, SmallCNN
from models.loop import five_line_loop

INPUT = (1, 3, 16, 16)


def _train(model: nn.Module, pruner, epochs: int, seed: int = 0, **loop_options) -> nn.Module:
    """The README's five lines on a fixed random batch (``loop_options`` go to the loop)."""
    torch.manual_seed(seed)
    x, y = torch.randn(32, *INPUT[1:]), torch.randint(0, 10, (32,))
    return five_line_loop(model, pruner, [(x, y)], epochs=epochs, steps=3, lr=0.05,
                          **loop_options)


@pytest.mark.parametrize("epochs", [4, 10, 20, 90])
@pytest.mark.parametrize("mac_target", [0.5, 0.1])
def test_config_is_valid_and_places_the_phases_inside_the_run(epochs: int,
                                                              mac_target: float) -> None:
    cfg = tp.pat.recommend_config(SmallCNN(), torch.randn(*INPUT), mac_target, epochs)
    PruningConfig.model_validate(json.loads(json.dumps(cfg)))  # as the file would hold it
    ch = cfg["channel_sparsity_args"]
    assert 1 <= ch["start_epoch"] <= ch["end_epoch"] <= epochs - 2  # regularize, mask, fine-tune
    assert ch["mac_target"] == mac_target
    assert 0 < ch["global_prune_rate"] <= ch["max_pruning_rate"]
    assert ch["input_shape"] == list(INPUT)
    reg = ch["regularize"]
    if mac_target >= RECIPE["moderate_from"]:  # weak penalty on every channel, from the start
        assert reg["target"] == "all" and reg["begin_epoch"] == 0 and reg["gamma"] > 1
    else:  # dense first, then the focused penalty before masking
        assert reg["target"] == "pruned" and 0 < reg["begin_epoch"] < ch["start_epoch"]


@pytest.mark.parametrize("model_cls", [SmallCNN, ResidualCNN])
@pytest.mark.parametrize("mac_target", [0.5, 0.25])
def test_run_with_recommended_config_reaches_the_target(tmp_path, model_cls,
                                                        mac_target: float) -> None:
    epochs = 10
    torch.manual_seed(0)
    model = model_cls()
    example = torch.randn(*INPUT)
    base = tp.utils.count_ops_and_params(model, example)[0]
    cfg = tp.pat.recommend_config(model, example, mac_target, epochs)
    (tmp_path / "pruning_config.json").write_text(json.dumps(cfg))
    pruner = tp.Pruning(model, tmp_path, example_inputs=example)
    model = _train(model, pruner, epochs)
    macs = tp.utils.count_ops_and_params(model, example)[0]
    assert pruner.channel_pruner.reached_target
    # at or just under the budget: per-layer ranking moves every group by the same ratio, and
    # one channel of ResidualCNN's 16-wide residual group is worth about 5% of its MACs
    assert mac_target - 0.05 <= macs / base <= mac_target
    # reached before fine-tuning starts: the last epochs train the reduced model
    assert json.loads((tmp_path / "pruning_config.json").read_text())[
        "channel_sparsity_args"]["reach_mac_target"] is True


@pytest.mark.parametrize("epochs", [6, 20, 30, 90])
@pytest.mark.parametrize("mac_target", [0.5, 0.1])
def test_lr_restart_places_the_phases_for_a_restarted_schedule(epochs: int,
                                                               mac_target: float) -> None:
    plain = tp.pat.recommend_config(SmallCNN(), torch.randn(*INPUT), mac_target, epochs)
    cfg = tp.pat.recommend_config(SmallCNN(), torch.randn(*INPUT), mac_target, epochs,
                                  lr_restart=True)
    PruningConfig.model_validate(json.loads(json.dumps(cfg)))
    ch, before = cfg["channel_sparsity_args"], plain["channel_sparsity_args"]
    assert 1 <= ch["start_epoch"] <= ch["end_epoch"] <= epochs - 2
    assert ch["regularize"]["begin_epoch"] < ch["start_epoch"]
    moved = RECIPE["restart_moderate" if mac_target >= RECIPE["moderate_from"] else "restart"]
    if moved and epochs >= 20:  # deep budgets: dense longer, the removal later
        assert ch["regularize"]["begin_epoch"] > before["regularize"]["begin_epoch"]
        assert ch["start_epoch"] > before["start_epoch"]
        assert ch["end_epoch"] == round(moved["end"] * epochs)
    if not moved:
        assert cfg == plain
    # the rest of the recipe is the same
    assert {k: v for k, v in ch.items() if k not in ("start_epoch", "end_epoch", "regularize")} \
        == {k: v for k, v in before.items() if k not in ("start_epoch", "end_epoch", "regularize")}


def test_run_with_lr_restart_reaches_a_deep_target_and_restarts_the_schedule(tmp_path) -> None:
    """The loop with the restart line: the optimizer made at the removal starts a new cosine
    over the epochs left, and the model ends at the budget with fine-tuning epochs to spare."""
    epochs, mac_target = 12, 0.1
    torch.manual_seed(0)
    model, example = SmallCNN(), torch.randn(*INPUT)
    base = tp.utils.count_ops_and_params(model, example)[0]
    cfg = tp.pat.recommend_config(model, example, mac_target, epochs, lr_restart=True)
    (tmp_path / "pruning_config.json").write_text(json.dumps(cfg))
    pruner = tp.Pruning(model, tmp_path, example_inputs=example)
    cycles = []  # the length of each cosine the loop starts

    def cosine(optimizer: torch.optim.Optimizer, epochs_left: int):
        cycles.append(epochs_left)
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs_left)

    model = _train(model, pruner, epochs, make_scheduler=cosine)
    assert pruner.channel_pruner.reached_target
    assert len(cycles) == 2 and cycles[0] == epochs
    removed_at = epochs - 1 - cycles[1]
    assert removed_at == cfg["channel_sparsity_args"]["end_epoch"] <= epochs - 3
    macs = tp.utils.count_ops_and_params(model, example)[0]
    assert mac_target - 0.05 <= macs / base <= mac_target


@pytest.mark.parametrize("bad, match", [((0.0, 10), "mac_target"), ((1.0, 10), "mac_target"),
                                        ((0.5, 3), "epochs")])
def test_bad_arguments_are_named(bad, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        tp.pat.recommend_config(SmallCNN(), torch.randn(*INPUT), *bad)


def _channel_norms(model: nn.Module) -> torch.Tensor:
    return model.features[0][0].weight.detach().flatten(1).norm(dim=1)


def test_focused_penalty_pushes_only_the_channels_planned_for_pruning() -> None:
    """With target "pruned", channels outside the plan get no penalty gradient at all."""
    torch.manual_seed(0)
    model = SmallCNN()
    cfg = {"channel_sparsity_args": {
        "start_epoch": 2, "end_epoch": 4, "global_prune_rate": 0.5, "mac_target": 0.5,
        "layers": ["features.0.0"], "verbose": 0,
        "regularize": {"reg": 0.5, "target": "pruned"}}}
    pruner = tp.Pruning(model, cfg, example_inputs=torch.randn(*INPUT))
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    pruner.channel_regularize(model)
    grad = model.features[0][0].weight.grad.flatten(1).norm(dim=1)
    focus = pruner.channel_pruner.regularizer.focus
    planned = next(iter(focus.values()))
    assert 0 < int(planned.sum()) < planned.numel()
    assert torch.all(grad[~planned] == 0) and torch.all(grad[planned] > 0)
    # the planned channels are the least important ones (lowest group norm)
    scores = next(iter(pruner.channel_pruner._scores().values()))
    assert scores[planned].max() <= scores[~planned].min()


def test_focused_penalty_separates_norms_before_masking() -> None:
    """The picture analyze.py draws: planned channels fall apart from the kept ones while
    nothing is masked yet; with the untargeted penalty of the same strength they do not."""
    def ratio_after(target: str) -> float:
        torch.manual_seed(0)
        model = SmallCNN()
        cfg = {"channel_sparsity_args": {
            "start_epoch": 8, "end_epoch": 9, "global_prune_rate": 0.5, "mac_target": 0.5,
            "layers": ["features.0.0"], "verbose": 0,
            "regularize": {"reg": 0.5, "target": target}}}
        pruner = tp.Pruning(model, cfg, example_inputs=torch.randn(*INPUT))
        planned = None
        torch.manual_seed(1)
        x, y = torch.randn(32, *INPUT[1:]), torch.randint(0, 10, (32,))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        for epoch in range(6):  # all before start_epoch: nothing is masked
            for _ in range(5):
                loss = nn.functional.cross_entropy(model(x), y)
                optimizer.zero_grad()
                loss.backward()
                pruner.channel_regularize(model)
                optimizer.step()
            if planned is None:
                planned = pruner.channel_pruner._select(0.5)[0]
                planned = next(iter(planned.values()))
            pruner.prune(model, epoch)
        assert not any(bool(p.any()) for p in pruner.channel_pruner._pruned.values())
        norms = _channel_norms(model)
        return float(norms[planned].mean() / norms[~planned].mean())

    focused, everywhere = ratio_after("pruned"), ratio_after("all")
    assert focused < 0.5 * everywhere


def test_linear_growth_ramps_the_strength_up_to_start_epoch() -> None:
    torch.manual_seed(0)
    model = SmallCNN()
    cfg = {"channel_sparsity_args": {
        "start_epoch": 3, "end_epoch": 5, "global_prune_rate": 0.5, "mac_target": 0.5,
        "verbose": 0, "regularize": {"reg": 0.1, "growth": "linear"}}}
    pruner = tp.Pruning(model, cfg, example_inputs=torch.randn(*INPUT))
    scales = []
    for epoch in range(5):
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        pruner.channel_regularize(model)
        scales.append(pruner.channel_pruner.regularizer.scale)
        pruner.prune(model, epoch)
    assert scales == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0])


def test_focus_and_growth_resume_from_a_checkpoint() -> None:
    """A job restarted at an epoch boundary regularizes like the uninterrupted one."""
    cfg = {"channel_sparsity_args": {
        "start_epoch": 3, "end_epoch": 5, "global_prune_rate": 0.5, "mac_target": 0.5,
        "verbose": 0, "regularize": {"reg": 0.1, "growth": "linear", "target": "pruned"}}}
    torch.manual_seed(0)
    model = SmallCNN()
    pruner = tp.Pruning(model, cfg, example_inputs=torch.randn(*INPUT))
    _train(model, pruner, 2)
    state = {"model": model.state_dict(), "pruner": pruner.state_dict()}
    resumed_model = SmallCNN()
    resumed_model.load_state_dict(state["model"])
    resumed = tp.Pruning(resumed_model, cfg, example_inputs=torch.randn(*INPUT))
    resumed.load_state_dict(state["pruner"])
    for m, p in ((model, pruner), (resumed_model, resumed)):
        for param in m.parameters():
            param.grad = torch.zeros_like(param)
        p.channel_regularize(m)
    assert resumed.channel_pruner.regularizer.scale == pruner.channel_pruner.regularizer.scale
    for a, b in zip(model.parameters(), resumed_model.parameters()):
        assert torch.equal(a.grad, b.grad)


def test_distillation_starts_with_masking_and_teaches_the_pruned_model() -> None:
    torch.manual_seed(0)
    model = SmallCNN()
    cfg = {"channel_sparsity_args": {
        "start_epoch": 2, "end_epoch": 3, "global_prune_rate": 0.5, "mac_target": 0.5,
        "verbose": 0}}
    pruner = tp.Pruning(model, cfg, example_inputs=torch.randn(*INPUT))
    kd = tp.pat.Distillation(pruner, alpha=1.0, temperature=2.0)
    x, y = torch.randn(8, *INPUT[1:]), torch.randint(0, 10, (8,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    for epoch in range(4):
        out = model(x)
        ce = nn.functional.cross_entropy(out, y)
        loss = kd(ce, out, x)
        if epoch < 2:  # regularization phase: the loss is the user's own
            assert kd.teacher is None and loss is ce
        else:  # masking phase: the loss is the distillation term (alpha 1)
            assert kd.teacher is not None and loss is not ce
            assert all(not p.requires_grad for p in kd.teacher.parameters())
        if epoch == 2:  # first step of masking: the teacher is the model as it is now
            with torch.no_grad():
                model.eval()
                assert torch.allclose(kd.teacher(x), model(x))
                model.train()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        pruner.prune(model, epoch)
        if pruner.channel_pruner.reset_optimizer:
            optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
            pruner.channel_pruner.reset_optimizer = False
    with torch.no_grad():  # the teacher stayed the dense model
        assert tp.utils.count_ops_and_params(kd.teacher, torch.randn(*INPUT))[0] > \
            tp.utils.count_ops_and_params(model, torch.randn(*INPUT))[0]


@pytest.mark.parametrize("kwargs, match", [({"alpha": 1.5}, "alpha"),
                                          ({"temperature": 0}, "temperature")])
def test_distillation_rejects_bad_settings(kwargs, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        tp.pat.Distillation(None, **kwargs)


def test_macs_schedule_lands_on_a_linear_mac_level_every_step() -> None:
    """schedule "macs": whatever global ranking does, step k of n leaves 1 - (1 - target) k/n
    of the MACs, and the last step meets the target."""
    torch.manual_seed(0)
    model = ResidualCNN(width=32)
    cfg = {"channel_sparsity_args": {
        "start_epoch": 1, "end_epoch": 4, "global_prune_rate": 0.9, "max_pruning_rate": 0.9,
        "mac_target": 0.3, "schedule": "macs", "global_pruning": True, "verbose": 0,
        "prune_at_target": False}}
    pruner = tp.Pruning(model, cfg, example_inputs=torch.randn(*INPUT))
    levels = []
    for epoch in range(5):
        pruner.prune(model, epoch)
        levels.append(pruner.channel_pruner.macs() / pruner.channel_pruner.base_macs)
    expected = [1.0, 0.825, 0.65, 0.475, 0.3]
    for got, want in zip(levels, expected):
        assert want - 0.03 <= got <= want + 1e-9
    assert pruner.channel_pruner.reached_target


def test_macs_schedule_without_a_target_is_a_config_error(tmp_path) -> None:
    (tmp_path / "pruning_config.json").write_text(json.dumps({"channel_sparsity_args": {
        "start_epoch": 1, "end_epoch": 4, "global_prune_rate": 0.5, "schedule": "macs"}}))
    with pytest.raises(tp.PruningConfigError, match="schedule"):
        tp.Pruning(SmallCNN(), tmp_path, example_inputs=torch.randn(*INPUT))


def test_penalty_waits_for_begin_epoch_then_ramps_to_start_epoch() -> None:
    torch.manual_seed(0)
    model = SmallCNN()
    cfg = {"channel_sparsity_args": {
        "start_epoch": 4, "end_epoch": 5, "global_prune_rate": 0.5, "mac_target": 0.5,
        "verbose": 0, "regularize": {"reg": 0.1, "growth": "linear", "begin_epoch": 2}}}
    pruner = tp.Pruning(model, cfg, example_inputs=torch.randn(*INPUT))
    pushed, scales = [], []
    for epoch in range(5):
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        pruner.channel_regularize(model)
        pushed.append(any(bool(p.grad.any()) for p in model.parameters()))
        scales.append(pruner.channel_pruner.regularizer.scale)
        pruner.prune(model, epoch)
    assert pushed == [False, False, True, True, True]  # dense training before begin_epoch
    assert scales[2:] == pytest.approx([1 / 3, 2 / 3, 1.0])


@pytest.mark.parametrize("mac_target", [0.5, 0.25, 0.1])
def test_per_layer_ranking_lands_within_one_percent_of_the_budget(mac_target: float) -> None:
    """One channel of the first, full-resolution layer is ~1.7% of this net's MACs, so a
    uniform ratio alone lands up to 18% under a 0.1x budget; the slack is spent on the layers
    where a unit costs least, and the budget is met within 1% (never exceeded)."""
    def cbr(cin: int, cout: int, stride: int = 1) -> list:
        return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

    torch.manual_seed(0)
    model = nn.Sequential(*cbr(3, 16), *cbr(16, 32, 2), *cbr(32, 64, 2), *cbr(64, 64),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))
    x = torch.randn(1, 3, 32, 32)
    base, _ = tp.utils.count_ops_and_params(model, x)
    pruner = tp.Pruning(model, {"channel_sparsity_args": {
        "start_epoch": 0, "end_epoch": 0, "global_prune_rate": 0.9, "max_pruning_rate": 0.95,
        "mac_target": mac_target, "layers": "all", "input_shape": [1, 3, 32, 32]}})
    pruner.prune(model, 0)
    macs, _ = tp.utils.count_ops_and_params(model, x)
    assert 0.99 * mac_target <= macs / base <= mac_target
