"""The config model: every broken file gives a PruningConfigError naming file and field."""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from torch_pruning.pat.config.models import ChannelSparsityArgs, PruningConfig, config_json_schema
from torch_pruning.pat.config.errors import PruningConfigError
from torch_pruning.pat.config.io import load_config, validate_config, write_state

SEED_LIKE = {
    "channel_sparsity_args": {
        "is_prune": True, "global_pruning": False, "block_size": 4, "start_epoch": 2,
        "end_epoch": 6, "epoch_rate": 1, "global_prune_rate": 0.6, "max_pruning_rate": 0.8,
        "mac_target": 0.7, "reach_mac_target": False, "log_str": "",
        "pruning_method": "GroupNormPruner", "prune_channels_at_init": False, "infer": False,
        "isomorphic": False, "regularize": {"reg": 5e-4, "mac_reg": 1e-4, "gamma": 4},
        "MAC_params": {"use_macs": True, "type": "Sum", "alpha": 0.5, "beta": 2},
        "layers": ["layer1.conv1", "layer2.conv1"], "input_shape": [1, 3, 32, 32],
        "container": None,
    },
    "slice_sparsity_args": {
        "is_prune": True, "block_size": 8, "start_epoch": 3, "end_epoch": 5, "epoch_rate": 1,
        "prune_rate": 0.3, "pruning_gradually": True, "pruning_mode": "Prune",
        "disable_first_index": True, "pruning_method": "L2_norm", "reg": 1e-4,
    },
}


def test_seed_like_config_loads_with_every_field(write_config) -> None:
    loaded = load_config(write_config(SEED_LIKE))
    ch, sl = loaded.channel, loaded.slice
    assert ch.regularize.gamma == 4 and ch.MAC_params.beta == 2 and ch.block_size == 4
    assert ch.layers == ["layer1.conv1", "layer2.conv1"] and ch.pruning_method.value == "GroupNormPruner"
    assert sl.disable_first_index and sl.pruning_mode.value == "Prune"
    assert loaded.path.name == "pruning_config.json"


@pytest.mark.parametrize("kind", ["folder", "json_path", "dict", "object"])
def test_every_source_form_gives_the_same_config(write_config, kind: str) -> None:
    folder = write_config(SEED_LIKE)
    source = {"folder": folder, "json_path": folder / "pruning_config.json",
              "dict": SEED_LIKE, "object": PruningConfig.model_validate(
                  validate_config(SEED_LIKE).model_dump())}[kind]
    assert load_config(source).channel == load_config(folder).channel


def test_missing_file_means_no_config(tmp_path: Path) -> None:
    assert load_config(tmp_path) is None
    assert load_config(tmp_path / "nothing_here") is None


@pytest.mark.parametrize("section", ["channel_sparsity_args", "slice_sparsity_args"])
def test_disabled_section_needs_no_other_field(section: str) -> None:
    loaded = load_config({section: {"is_prune": False}})
    assert loaded.channel is None and loaded.slice is None


def test_invalid_json_reports_line_and_column(write_config) -> None:
    folder = write_config({})
    (folder / "pruning_config.json").write_text('{\n  "channel_sparsity_args": {\n    "reg": ,\n}')
    with pytest.raises(PruningConfigError, match=r"pruning_config.json: not valid JSON at line 3, column 12"):
        load_config(folder)


@pytest.mark.parametrize("path, value, expected", [
    (("channel_sparsity_args", "regularize", "reg"), -1, r"channel_sparsity_args\.regularize\.reg: .*greater than or equal to 0"),
    (("channel_sparsity_args", "mac_target"), 1.5, r"channel_sparsity_args\.mac_target: .*less than or equal to 1"),
    (("channel_sparsity_args", "block_size"), "4", r"channel_sparsity_args\.block_size: .*valid integer, got '4'"),
    (("channel_sparsity_args", "is_prune"), 1, r"channel_sparsity_args\.is_prune: .*valid boolean"),
    (("channel_sparsity_args", "MAC_params", "type"), "Max", r"channel_sparsity_args\.MAC_params\.type: .*'Sum' or 'Mul'"),
    (("channel_sparsity_args", "pruning_method"), "L1", r"pruning_method: .*'GroupNormPruner'"),
    (("channel_sparsity_args", "verbose"), 3, r"channel_sparsity_args\.verbose"),
    (("channel_sparsity_args", "input_shape"), [1, 0, 8], r"input_shape: .*positive integer"),
    (("slice_sparsity_args", "pruning_mode"), "prune", r"slice_sparsity_args\.pruning_mode: .*'Prune' or 'Unprune'"),
    (("slice_sparsity_args", "prune_rate"), float("nan"), r"slice_sparsity_args\.prune_rate: .*finite"),
])
def test_bad_value_names_file_field_and_allowed(write_config, path, value, expected) -> None:
    data = copy.deepcopy(SEED_LIKE)
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(PruningConfigError, match=expected) as info:
        load_config(write_config(data))
    assert "pruning_config.json" in str(info.value)
    assert info.value.field == ".".join(path)


@pytest.mark.parametrize("path, key, suggestion", [
    (("channel_sparsity_args",), "mac_targt", "mac_target"),
    (("channel_sparsity_args", "regularize"), "gama", "gamma"),
    (("slice_sparsity_args",), "blocksize", "block_size"),
    ((), "chanel_sparsity_args", "channel_sparsity_args"),
])
def test_unknown_key_suggests_closest(path, key, suggestion) -> None:
    data = copy.deepcopy(SEED_LIKE)
    node = data
    for part in path:
        node = node[part]
    node[key] = 1
    with pytest.raises(PruningConfigError, match=f"unknown key; did you mean '{suggestion}'"):
        validate_config(data)


@pytest.mark.parametrize("section, field", [
    ("channel_sparsity_args", "start_epoch"), ("channel_sparsity_args", "global_prune_rate"),
    ("slice_sparsity_args", "prune_rate"),
])
def test_missing_required_field_is_named(section: str, field: str) -> None:
    data = copy.deepcopy(SEED_LIKE)
    del data[section][field]
    with pytest.raises(PruningConfigError, match=f"{section}.{field}: required field is missing"):
        validate_config(data)


def test_end_before_start_is_rejected() -> None:
    data = copy.deepcopy(SEED_LIKE)
    data["channel_sparsity_args"]["end_epoch"] = 1
    with pytest.raises(PruningConfigError, match="end_epoch: 1 is before start_epoch 2"):
        validate_config(data)


@pytest.mark.parametrize("old, new", [("alpha_shrinkage_reg", "regularize.gamma"),
                                      ("gamma_reg", "regularize.mac_reg")])
def test_deprecated_keys_warn_with_replacement(old: str, new: str) -> None:
    data = copy.deepcopy(SEED_LIKE)
    data["channel_sparsity_args"][old] = 0.1
    with pytest.warns(DeprecationWarning, match=f"{old} is deprecated.*{new}"):
        cfg = validate_config(data)
    assert cfg.channel_sparsity_args.regularize == validate_config(SEED_LIKE).channel_sparsity_args.regularize


def test_write_state_preserves_user_keys_order_and_indent(write_config) -> None:
    data = copy.deepcopy(SEED_LIKE)
    data["my_notes"] = "kept"  # not a config key, but write_state must not drop anything
    folder = write_config(data, indent=2)
    path = folder / "pruning_config.json"
    write_state(path, "channel_sparsity_args", {"reach_mac_target": True, "log_str": "done"})
    text = path.read_text()
    after = json.loads(text)
    assert after["channel_sparsity_args"]["reach_mac_target"] is True
    assert after["channel_sparsity_args"]["log_str"] == "done"
    expected = copy.deepcopy(data)
    expected["channel_sparsity_args"].update(reach_mac_target=True, log_str="done")
    assert after == expected
    assert list(after["channel_sparsity_args"]) == list(data["channel_sparsity_args"])
    assert text.splitlines()[1].startswith('  "channel_sparsity_args"')
    assert [p.name for p in folder.iterdir()] == ["pruning_config.json"]  # no temp files left


def test_schema_file_is_up_to_date() -> None:
    schema_file = Path(__file__).resolve().parents[1] / "docs" / "pruning_config.schema.json"
    assert json.loads(schema_file.read_text()) == config_json_schema(), (
        "regenerate with: python -m torch_pruning.pat schema > docs/pruning_config.schema.json")


def test_schema_marks_required_fields_unless_disabled() -> None:
    channel = config_json_schema()["$defs"]["ChannelSparsityArgs"]
    assert channel["else"]["required"] == ["start_epoch", "end_epoch", "global_prune_rate"]
    assert channel["properties"]["mac_target"]["maximum"] == 1.0


# ---------------------------------------------------------------- property-based
_LEAVES = []


def _collect(node, prefix=()):
    for key, value in node.items():
        if isinstance(value, dict):
            _collect(value, prefix + (key,))
        else:
            _LEAVES.append(prefix + (key,))


_collect(SEED_LIKE)

_junk = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12),
                  st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
                  st.lists(st.integers(-3, 3), max_size=4), st.dictionaries(st.text(max_size=4), st.integers(), max_size=2))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(_LEAVES), st.sampled_from(["set", "delete", "unknown"]), _junk),
                min_size=1, max_size=4))
def test_random_breakage_gives_config_error_or_valid_config(edits) -> None:
    data = copy.deepcopy(SEED_LIKE)
    for path, action, value in edits:
        node = data
        for key in path[:-1]:
            node = node.setdefault(key, {}) if isinstance(node, dict) else node
        if not isinstance(node, dict):
            continue
        if action == "set":
            node[path[-1]] = value
        elif action == "delete":
            node.pop(path[-1], None)
        else:
            node[path[-1] + "_x"] = value
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            cfg = validate_config(data, "cfg.json")
        except PruningConfigError as err:
            assert str(err).startswith("cfg.json: ")
            assert err.field and err.field.split(".")[0] in data, err
            assert err.field.split(".")[0] in str(err)
            return
    assert isinstance(cfg, PruningConfig)
    if cfg.channel_sparsity_args is not None:
        assert isinstance(cfg.channel_sparsity_args, ChannelSparsityArgs)


@settings(max_examples=60, deadline=None)
@given(st.one_of(st.text(max_size=30), st.binary(max_size=30).map(lambda b: b.decode("latin-1"))))
def test_random_file_text_never_crashes(tmp_path_factory, text: str) -> None:
    folder = tmp_path_factory.mktemp("cfg")
    (folder / "pruning_config.json").write_text(text, encoding="utf-8")
    try:
        load_config(folder)
    except PruningConfigError as err:
        assert "pruning_config.json" in str(err)


def test_configuration_reference_is_up_to_date() -> None:
    from torch_pruning.pat.config.docs import config_reference_markdown

    page = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
    assert page.read_text() == config_reference_markdown(), (
        "regenerate with: python -m torch_pruning.pat config-docs > docs/configuration.md")
