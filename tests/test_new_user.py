"""What a new user hit (issue 17), each reproduced the way the user did it.

Item 3: config mistakes get precise errors naming the file, the field and what is allowed, from
``Pruning(...)`` and from ``validate`` alike (one ``error:`` line, exit code 2).
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any, Dict

import pytest
import torch
from torch import nn

from torch_pruning.pat.config.errors import PruningConfigError
from torch_pruning.pat.config.io import load_config
from torch_pruning.pat.tools.cli import main
from torch_pruning.utils import Pruning

#: A one-channel model written to a file, as a user's ``--model net.py:make_net``.
NET_PY = '''
from torch import nn

def make_net():
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 32), nn.ReLU(),
                         nn.Linear(32, 10))
'''

CHANNEL = {"start_epoch": 1, "end_epoch": 3, "global_prune_rate": 0.5, "mac_target": 0.7,
           "layers": ["0", "3"], "input_shape": [1, 1, 16, 16],
           "regularize": {"reg": 1e-3}}


def _net() -> nn.Module:
    namespace: Dict[str, Any] = {}
    exec(NET_PY, namespace)  # the same model validate builds from the file
    return namespace["make_net"]()


def _folder(tmp_path: Path, data: Dict[str, Any]) -> Path:
    folder = tmp_path / "run"
    folder.mkdir(exist_ok=True)
    (folder / "pruning_config.json").write_text(json.dumps(data, indent=4))
    (tmp_path / "net.py").write_text(NET_PY)
    return folder


def _validate(tmp_path: Path, folder: Path, *extra: str) -> int:
    return main(["validate", str(folder), "--model", f"{tmp_path / 'net.py'}:make_net", *extra])


def test_wrong_input_shape_names_file_field_and_torch_message(tmp_path: Path, capsys) -> None:
    channel = dict(CHANNEL, input_shape=[1, 3, 16, 16])  # 3 channels for a 1-channel model
    folder = _folder(tmp_path, {"channel_sparsity_args": channel})
    path = str(folder / "pruning_config.json")
    with pytest.raises(PruningConfigError) as err:
        Pruning(_net(), folder)
    msg = str(err.value)
    assert msg.startswith(path) and err.value.field == "channel_sparsity_args.input_shape"
    assert "channel_sparsity_args.input_shape" in msg and "[1, 3, 16, 16]" in msg
    assert "expected input[1, 3, 16, 16] to have 1 channels" in msg  # torch's own words

    assert _validate(tmp_path, folder) == 2
    out = capsys.readouterr()
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in out.err
    assert path in lines[0] and "channel_sparsity_args.input_shape" in lines[0]
    assert "expected input[1, 3, 16, 16]" in lines[0]

    assert _validate(tmp_path, folder, "--input-shape", "1,3,16,16") == 2
    assert "--input-shape" in capsys.readouterr().err


def test_wrong_example_inputs_name_example_inputs(tmp_path: Path) -> None:
    folder = _folder(tmp_path, {"channel_sparsity_args": CHANNEL})
    with pytest.raises(PruningConfigError, match=r"example_inputs: Sequential cannot run on "
                                                 r"example inputs of shape \[2, 3, 8, 8\]") as err:
        Pruning(_net(), folder, example_inputs=torch.randn(2, 3, 8, 8))
    assert err.value.field == "example_inputs"
    assert str(folder / "pruning_config.json") in str(err.value)


def test_misspelled_required_key_names_the_typo(tmp_path: Path, capsys) -> None:
    channel = dict(CHANNEL)
    channel["global_prune_rat"] = channel.pop("global_prune_rate")
    folder = _folder(tmp_path, {"channel_sparsity_args": channel})
    with pytest.raises(PruningConfigError, match=r"channel_sparsity_args\.global_prune_rate: "
                                                 r"required field is missing; the config has "
                                                 r"the unknown key 'channel_sparsity_args\."
                                                 r"global_prune_rat'.*rename"):
        Pruning(_net(), folder)
    assert _validate(tmp_path, folder) == 2
    assert "global_prune_rat'" in capsys.readouterr().err


def test_unknown_layer_lists_candidates_with_their_types(tmp_path: Path) -> None:
    folder = _folder(tmp_path, {"channel_sparsity_args": dict(CHANNEL, layers=["conv9"])})
    with pytest.raises(PruningConfigError) as err:
        Pruning(_net(), folder)
    msg = str(err.value)
    assert "no module named 'conv9'" in msg and "Conv2d layers are" not in msg
    assert "0 (Conv2d), 3 (Conv2d), 7 (Linear), 9 (Linear)" in msg


@pytest.mark.parametrize("old, new", [("alpha_shrinkage_reg", "regularize.gamma"),
                                      ("gamma_reg", "regularize.mac_reg")])
def test_old_keys_inside_regularize_are_accepted_with_a_warning(tmp_path: Path, old: str,
                                                                new: str, caplog) -> None:
    channel = copy.deepcopy(CHANNEL)
    channel["regularize"][old] = 0.5
    folder = _folder(tmp_path, {"channel_sparsity_args": channel})
    with caplog.at_level(logging.WARNING, logger="torch_pruning.pat"), \
            pytest.warns(DeprecationWarning, match=rf"regularize\.{old} is deprecated.*{new}"):
        pruner = Pruning(_net(), folder)
    assert pruner.channel_pruner.enabled and pruner.config.channel.regularize.reg == 1e-3
    assert any(f"use channel_sparsity_args.{new} instead" in r.getMessage()
               for r in caplog.records)


@pytest.mark.parametrize("section, body", [
    ("channel_sparsity_args", {"is_prune": False, "layers": []}),
    ("channel_sparsity_args", {"is_prune": False}),
    ("slice_sparsity_args", {"is_prune": False, "layers": [], "block_size": 0}),
])
def test_disabled_section_needs_nothing_else(tmp_path: Path, section: str, body: Dict) -> None:
    folder = _folder(tmp_path, {section: body})
    loaded = load_config(folder)
    assert loaded.channel is None and loaded.slice is None
    pruner = Pruning(_net(), folder)
    assert not pruner.enabled


def test_disabled_section_keeps_its_valid_fields(tmp_path: Path) -> None:
    folder = _folder(tmp_path, {"channel_sparsity_args": {"is_prune": False, "layers": [],
                                                          "input_shape": [1, 1, 8, 8]}})
    section = load_config(folder).config.channel_sparsity_args
    assert section.is_prune is False and section.input_shape == [1, 1, 8, 8]


def test_disabled_section_still_needs_a_boolean_is_prune(tmp_path: Path) -> None:
    folder = _folder(tmp_path, {"channel_sparsity_args": {"is_prune": "no"}})
    with pytest.raises(PruningConfigError, match="channel_sparsity_args"):
        load_config(folder)


# ---------------------------------------------------------------- item 2: a finished config reused
def _finished_run(tmp_path: Path) -> Path:
    """A run that reached its target: its config now holds reach_mac_target and log_str."""
    folder = _folder(tmp_path, {"channel_sparsity_args": dict(
        CHANNEL, prune_channels_at_init=True, global_prune_rate=0.5, mac_target=0.0)})
    model = _net()
    pruner = Pruning(model, folder)
    pruner.prune(model, 0)
    saved = json.loads((folder / "pruning_config.json").read_text())["channel_sparsity_args"]
    assert saved["reach_mac_target"] is True and "MACs:" in saved["log_str"]
    return folder


class _UserLog:
    def __init__(self) -> None:
        self.infos: list = []
        self.warnings: list = []

    def info(self, msg: str) -> None:
        self.infos.append(msg)

    def warning(self, msg: str) -> None:
        self.warnings.append(msg)


def test_finished_config_on_a_fresh_model_warns_and_logs_measured_macs(
        tmp_path: Path, caplog, capsys) -> None:
    done = _finished_run(tmp_path)
    fresh_run = tmp_path / "fresh"
    fresh_run.mkdir()
    (fresh_run / "pruning_config.json").write_text((done / "pruning_config.json").read_text())
    model, log = _net(), _UserLog()
    from torch_pruning.pat.core.macs import MacCounter
    fresh_macs = MacCounter(model, torch.randn(1, 1, 16, 16)).base_macs
    pruner = Pruning(model, fresh_run, log=log)
    with caplog.at_level(logging.INFO, logger="torch_pruning.pat"):
        for epoch in range(3):
            pruner.prune(model, epoch, log=log)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and log.warnings == warnings
    msg = warnings[0]
    path = str(fresh_run / "pruning_config.json")
    assert path in msg and "reach_mac_target is true" in msg
    assert f"{fresh_macs:,.0f}" in msg and "load_state_dict_pruned" in msg
    assert "reach_mac_target to false" in msg
    from torch_pruning.pat.channel.progress import stored_macs
    base, pruned = stored_macs(pruner.config.channel.log_str)
    assert base == pytest.approx(fresh_macs, rel=1e-3) and pruned < base
    # every epoch: one short line whose MACs are the model's own, not the stored result
    from torch_pruning.pat.util.log import human_count
    done_lines = [line for line in log.infos if line.startswith("Channel pruning done")]
    assert len(done_lines) == 3
    assert all(f"MACs {human_count(fresh_macs)} " in line for line in done_lines)
    assert sum("Channel pruning summary" in line for line in log.infos) == 1

    assert _validate(tmp_path, fresh_run) == 1
    err = capsys.readouterr().err
    assert path in err and "load_state_dict_pruned" in err and "reach_mac_target to false" in err


def test_finished_config_with_the_pruned_checkpoint_is_quiet(tmp_path: Path, caplog) -> None:
    done = _finished_run(tmp_path)
    model = _net()
    first = Pruning(model, {"channel_sparsity_args": dict(
        CHANNEL, prune_channels_at_init=True, global_prune_rate=0.5, mac_target=0.0)})
    first.prune(model, 0)
    from torch_pruning import load_state_dict_pruned
    restarted, _, _ = load_state_dict_pruned(_net(), model.state_dict())
    pruner = Pruning(restarted, done)
    with caplog.at_level(logging.INFO, logger="torch_pruning.pat"):
        pruner.prune(restarted, 5)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert any(r.getMessage().startswith("Channel pruning done (epoch 5)")
               for r in caplog.records)


def test_finished_config_without_stored_figures_warns_that_it_cannot_check(
        tmp_path: Path, caplog, capsys) -> None:
    """reach_mac_target set to true by hand (log_str empty): no silent skip either."""
    folder = _folder(tmp_path, {"channel_sparsity_args": dict(
        CHANNEL, mac_target=0.5, reach_mac_target=True, log_str="")})
    model = _net()
    pruner = Pruning(model, folder)
    with caplog.at_level(logging.INFO, logger="torch_pruning.pat"):
        pruner.prune(model, 0)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "records no MAC figures" in warnings[0]
    assert str(folder / "pruning_config.json") in warnings[0]
    assert "load_state_dict_pruned" in warnings[0] and "reach_mac_target to false" in warnings[0]
    assert _validate(tmp_path, folder) == 0  # a warning: the model may well be the pruned one
    assert "records no MAC figures" in capsys.readouterr().out


# ---------------------------------------------------------------- item 5: logs a person can read
def _deep_cnn(depth: int) -> nn.Module:
    layers: list = [nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()]
    for _ in range(depth - 1):
        layers += [nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


def test_group_listing_is_bounded_at_info_and_complete_at_debug(caplog) -> None:
    from torch_pruning.pat.channel.grouping import LISTED_GROUPS

    model, log = _deep_cnn(LISTED_GROUPS + 5), _UserLog()
    config = {"channel_sparsity_args": dict(CHANNEL, layers="all", input_shape=[1, 3, 8, 8])}
    with caplog.at_level(logging.DEBUG, logger="torch_pruning.pat"):
        pruner = Pruning(model, config, log=log)
    groups = len(pruner.channel_pruner.groups)
    assert groups == LISTED_GROUPS + 5
    user_text = "\n".join(log.infos)
    assert user_text.count("Group number") == LISTED_GROUPS  # the user's log: bounded
    assert "5 more groups" in user_text and f"There are {groups} groups" in user_text
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert sum("Group number" in m for m in debug) == 5  # the rest, at DEBUG
    assert any(m.startswith(f"All {groups} source convs:") for m in debug)


def test_linear_groups_say_source_layer(caplog) -> None:
    from models.transformer import MLP_LAYERS, TinyTransformer, one_epoch_config

    log = _UserLog()
    config = one_epoch_config(MLP_LAYERS, input_shape=[1, 3, 16, 16])
    Pruning(TinyTransformer(), config, log=log)
    text = "\n".join(log.infos)
    assert f"Source layer: {MLP_LAYERS[0]}" in text and "Source conv" not in text
    assert "with the following source layers:" in text


# ---------------------------------------------------------------- item 8: "all" on today's models
def _torchvision(name: str) -> tuple:
    import torchvision

    import torch_pruning as tp

    if name == "vit_b_16":
        model = torchvision.models.vit_b_16(weights=None, image_size=32)
        tp.pat.split_multihead_attention(model)
        return model, [1, 3, 32, 32]
    return getattr(torchvision.models, name)(weights=None), [1, 3, 64, 64]


ALL_CONFIG = {"start_epoch": 0, "end_epoch": 3, "global_prune_rate": 0.5, "mac_target": 0.6,
              "layers": "all"}


@pytest.mark.parametrize("name, kinds", [
    ("convnext_tiny", {"Linear"}),            # its width lives in the blocks' MLP Linear layers
    ("vit_b_16", {"Linear", "heads"}),        # MLP hidden layers and whole attention heads
    ("swin_t", {"Linear"}),                   # MLP hidden layers; its embedding dimension is
])                                            # skipped with a reason (see the test below)
def test_all_selects_linear_and_attention_groups(name: str, kinds: set) -> None:
    model, shape = _torchvision(name)
    pruner = Pruning(model, {"channel_sparsity_args": dict(ALL_CONFIG, input_shape=shape)})
    groups = pruner.channel_pruner.groups
    assert groups, f"{name}: 'all' selected no prunable group"
    found = {"heads" if g.heads is not None else type(g.root).__name__ for g in groups}
    assert kinds <= found
    classifier = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    assert classifier not in {g.source for g in groups}  # the final classifier is kept


def test_all_on_swin_builds_in_seconds_and_names_what_upstream_cannot_follow() -> None:
    """Upstream's group propagation for swin_t's patch-merging layer never settles (its index
    lists multiply through the window reshapes); the layer is skipped with that reason instead
    of the build running for hours, and the MLP groups are still pruned."""
    model, shape = _torchvision("swin_t")
    log = _UserLog()
    pruner = Pruning(model, {"channel_sparsity_args": dict(ALL_CONFIG, input_shape=shape)},
                     log=log)
    text = "\n".join(log.infos)
    assert "features.6.reduction: upstream's DependencyGraph did not settle" in text
    mlp = [g.source for g in pruner.channel_pruner.groups]
    assert "features.7.1.mlp.0" in mlp and len(mlp) == 12  # the 12 blocks' MLP hidden layers


def test_a_group_that_does_not_settle_stops_instead_of_running_on(monkeypatch) -> None:
    import torch_pruning as tp
    from torch_pruning.pat.channel import tracing

    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1), nn.Flatten(),
                        nn.Linear(4 * 36, 2))
    DG = tracing.build_graph(net, torch.randn(1, 3, 8, 8))
    fn = tp.prune_conv_out_channels
    full = tracing.pruning_group(DG, net[2], fn, [0, 1, 2, 3])
    assert len(full) == len(DG.get_pruning_group(net[2], fn, [0, 1, 2, 3]))  # same as upstream
    monkeypatch.setattr(tracing, "GROUP_MAX_INDICES", 50)  # the flatten makes 4 x 36 indices
    with pytest.raises(tracing.GroupDidNotConverge, match="channel indices"):
        tracing.pruning_group(DG, net[2], fn, [0, 1, 2, 3])
    import torch_pruning.dependency.graph as upstream_graph
    assert upstream_graph.Group is tp.dependency.Group  # upstream is left as it was


def test_all_on_a_model_upstream_cannot_trace_says_so(tmp_path: Path) -> None:
    model, shape = _torchvision("shufflenet_v2_x0_5")
    folder = _folder(tmp_path, {"channel_sparsity_args": dict(ALL_CONFIG, input_shape=shape)})
    from torch_pruning.pat.channel.tracing import UntraceableModelError

    with pytest.raises(UntraceableModelError) as err:
        Pruning(model, folder)
    msg = str(err.value)
    assert str(folder / "pruning_config.json") in msg and "ShuffleNetV2" in msg
    assert "DependencyGraph failed to trace" in msg and "ZeroDivisionError" in msg
    assert "What to do" in msg and "is_prune to false" in msg
    assert isinstance(err.value, PruningConfigError)  # validate: one error: line, exit 2


# ---------------------------------------------------------------- item 1: validate every example
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

#: Each example's model, built the way the example builds it (examples/*.py).
FACTORIES = f'''
import sys
sys.path.insert(0, {str(EXAMPLES)!r})
import torch_pruning as tp
from digits_pat import DigitsNet
import infer_rebuild, llm_pat, resume, transformer_heads, two_inputs

def digits():
    return DigitsNet()

def digits16():
    return DigitsNet(16)

def infer():
    return DigitsNet(infer_rebuild.WIDTH)

def resumed():
    return DigitsNet(resume.WIDTH)

def vit():
    model = transformer_heads.DigitsViT()
    tp.pat.split_multihead_attention(model)  # as the example does before Pruning(...)
    return model

def two():
    return two_inputs.TwoStreamNet()

def llm():
    return llm_pat.make_model(quick=True)
'''

#: config file -> (factory, input shape as the example's example_inputs)
EXAMPLE_MODELS = {
    "digits_pat_config.json": ("digits", "1,1,8,8"),
    "digits_pat_config_quick.json": ("digits", "1,1,8,8"),
    "ddp_pat_config.json": ("digits16", "1,1,8,8"),
    "fsdp_pat_config.json": ("digits16", "1,1,8,8"),
    "infer_rebuild_config.json": ("infer", "1,1,8,8"),
    "one_shot_config.json": ("digits16", "1,1,8,8"),
    "resume_config.json": ("resumed", "1,1,8,8"),
    "transformer_heads_config.json": ("vit", "1,1,8,8"),
    "two_inputs_config.json": ("two", "1,1,8,8;1,1,8,8"),
    "llm_pat_config.json": ("llm", "1,16"),  # token ids: inspect/validate draw random ids
}


def test_every_example_config_is_listed() -> None:
    assert sorted(p.name for p in EXAMPLES.glob("*.json")) == sorted(EXAMPLE_MODELS)


@pytest.mark.parametrize("config", sorted(EXAMPLE_MODELS))
def test_validate_accepts_every_example_config(config: str, tmp_path: Path, capsys) -> None:
    factory, shape = EXAMPLE_MODELS[config]
    (tmp_path / "factories.py").write_text(FACTORIES)
    run = tmp_path / "run"
    run.mkdir()
    if config.startswith("digits_pat"):  # the example completes its config in code
        import sys
        sys.path.insert(0, str(EXAMPLES))
        try:
            from digits_pat import write_config
        finally:
            sys.path.remove(str(EXAMPLES))
        write_config(EXAMPLES / config, run, epochs=6)
    else:
        (run / "pruning_config.json").write_text((EXAMPLES / config).read_text())
    code = main(["validate", str(run), "--model", f"{tmp_path / 'factories.py'}:{factory}",
                 "--input-shape", shape])
    out = capsys.readouterr()
    assert code == 0, out.out + out.err
    assert "OK: the config prunes the layers listed above." in out.out


def test_inspect_lists_linear_and_attention_prunable_layers(tmp_path: Path, capsys) -> None:
    (tmp_path / "factories.py").write_text(FACTORIES)
    code = main(["inspect", "--model", f"{tmp_path / 'factories.py'}:vit", "--input-shape",
                 "1,1,8,8"])
    out = capsys.readouterr().out
    assert code == 0
    section = out.split("Prunable Linear and attention layers", 1)[1]
    assert "encoder.layers.0.linear1 (Linear)" in section  # the MLP hidden layer
    assert "heads of encoder.layers.0.self_attn" in section  # whole heads
    # the same groups Pruning builds with "all" (one code path)
    from torch_pruning.pat.tools.model_factory import load_model

    model = load_model(f"{tmp_path / 'factories.py'}:vit")
    pruner = Pruning(model, {"channel_sparsity_args": dict(
        ALL_CONFIG, input_shape=[1, 1, 8, 8])})
    for g in pruner.channel_pruner.groups:
        if not isinstance(g.root, nn.Conv2d):
            assert f"  {g.source} (" in section


# ---------------------------------------------------------------- item 7: Python versions
ROOT = Path(__file__).resolve().parents[1]


def _python310() -> str:
    import glob
    import shutil

    found = sorted(glob.glob("/root/.pyenv/versions/3.10*/bin/python")) + \
        [p for p in [shutil.which("python3.10")] if p]
    if not found:
        pytest.skip("no Python 3.10 interpreter on this machine")
    return found[0]


def test_setup_reads_pyproject_on_python_310(tmp_path: Path) -> None:
    """.ci/setup-venv parsed pyproject.toml with tomllib (3.11+) and failed on 3.10; on 3.10 it
    now installs tomli and .ci/requirements.py falls back on it (here: pip's vendored copy)."""
    import subprocess

    python = _python310()
    no_tomllib = subprocess.run([python, "-c", "import tomllib"], capture_output=True)
    assert no_tomllib.returncode != 0
    (tmp_path / "tomli.py").write_text("from pip._vendor.tomli import load, loads  # noqa\n")
    out = subprocess.run([python, str(ROOT / ".ci" / "requirements.py"),
                          str(ROOT / "pyproject.toml")], capture_output=True, text=True,
                         env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert "torch==2.14.1" in out.stdout.splitlines()
    script = (ROOT / ".ci" / "setup-venv").read_text()
    assert "import tomllib" in script and "tomli" in script  # installed when tomllib is missing


def test_the_stated_python_floor_is_310() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'requires-python = ">=3.10"' in pyproject
    readme = (ROOT / "README.md").read_text()
    assert "Python 3.10+" in readme and "3.9+" not in readme


@pytest.mark.slow
@pytest.mark.parametrize("name", ["convnext_tiny", "swin_t", "vit_b_16"])
def test_all_reaches_the_target_on_transformer_era_models_and_reloads_exactly(name: str) -> None:
    """Item 8 as the user ran it: "all", mac_target 0.6, four epochs of the loop, then the
    pruned checkpoint loaded into a fresh model of the same class."""
    import torch_pruning as tp
    from models.loop import five_line_loop

    torch.manual_seed(0)
    model, shape = _torchvision(name)
    x = torch.randn(2, *shape[1:])
    base, _ = tp.utils.count_ops_and_params(model, x[:1])
    pruner = Pruning(model, {"channel_sparsity_args": dict(ALL_CONFIG, input_shape=shape)})
    five_line_loop(model, pruner, [(x, torch.randint(0, 1000, (2,)))], epochs=4, lr=1e-3)
    macs, _ = tp.utils.count_ops_and_params(model, x[:1])
    assert pruner.channel_pruner.reached_target and macs <= 0.6 * base * 1.01, (macs / base)
    model.eval()
    fresh, _ = _torchvision(name)
    fresh, missing, unexpected = tp.load_state_dict_pruned(fresh, model.state_dict())
    assert not missing and not unexpected
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(x), model(x))
