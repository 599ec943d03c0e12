"""Hostile configs through the ``Pruning`` facade: huge and negative numbers, unicode names.

tests/test_config.py fuzzes the config model (random types, unknown and missing keys); here
the whole facade runs: a config either raises :class:`PruningConfigError` naming the file and
the exact field, or gives pruners that train and prune without crashing.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, List, Tuple

import pytest
import torch
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from torch import nn

import torch_pruning as tp
from models import SmallCNN
from models.loop import five_line_loop
from torch_pruning.pat.config.errors import PruningConfigError

BASE = {
    "channel_sparsity_args": {
        "start_epoch": 0, "end_epoch": 2, "global_prune_rate": 0.5, "mac_target": 0.6,
        "block_size": 4, "input_shape": [1, 3, 8, 8], "regularize": {"reg": 1e-3},
        "MAC_params": {"use_macs": True, "type": "Mul"}, "pruning_method": "MACAwareImportance"},
    "slice_sparsity_args": {"start_epoch": 1, "end_epoch": 2, "prune_rate": 0.5,
                            "block_size": 4, "reg": 1e-4},
}

#: Every numeric field (input_shape is left out: a valid huge shape would allocate it).
NUMERIC: List[Tuple[str, ...]] = [
    ("channel_sparsity_args", f) for f in (
        "block_size", "start_epoch", "end_epoch", "epoch_rate", "global_prune_rate",
        "max_pruning_rate", "mac_target", "verbose")
] + [("channel_sparsity_args", "regularize", f) for f in ("reg", "mac_reg", "gamma")] + [
    ("channel_sparsity_args", "MAC_params", f) for f in ("alpha", "beta")
] + [("slice_sparsity_args", f) for f in (
    "block_size", "depthwise_block_size", "start_epoch", "end_epoch", "epoch_rate",
    "prune_rate", "reg")]

hostile_numbers = st.one_of(
    st.integers(-(10 ** 30), 10 ** 30),
    st.sampled_from([-1, 0, 2 ** 31, 2 ** 63, -(2 ** 63) - 1, 10 ** 400, -(10 ** 400)]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e308, -1e308, 5e-324, -0.0, 1e-300, 1.0000000001]),
)

_SETTINGS = settings(max_examples=40, deadline=None,
                     suppress_health_check=[HealthCheck.function_scoped_fixture])


def _write(folder: Path, data: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pruning_config.json").write_text(json.dumps(data, ensure_ascii=False),
                                                encoding="utf-8")
    return folder


def _set(data: Any, path: Tuple[str, ...], value: Any) -> Any:
    data = json.loads(json.dumps(data))
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return data


def _exercise(model: nn.Module, pruner: Any) -> None:
    """A short run of the SPEC loop: a step per epoch and every prune() of the schedules."""
    five_line_loop(model, pruner, [(torch.randn(2, 3, 8, 8), torch.randint(0, 10, (2,)))],
                   epochs=4, make_optimizer=lambda params: torch.optim.SGD(params, lr=0.01))


@pytest.mark.timeout(120)
@_SETTINGS
@given(path=st.sampled_from(NUMERIC), value=hostile_numbers)
@example(path=("channel_sparsity_args", "end_epoch"), value=10 ** 400)  # found: float overflow
@example(path=("channel_sparsity_args", "block_size"), value=10 ** 400)  # found: pruned all
@example(path=("channel_sparsity_args", "regularize", "reg"), value=3.4e38)  # found: overflow
@example(path=("slice_sparsity_args", "block_size"), value=10 ** 400)
def test_huge_and_negative_numbers_give_a_field_error_or_a_working_pruner(
        tmp_path_factory: pytest.TempPathFactory, path: Tuple[str, ...], value: Any) -> None:
    folder = _write(tmp_path_factory.mktemp("cfg"), _set(BASE, path, value))
    model = SmallCNN(width=4)
    try:
        pruner = tp.Pruning(model, folder)
    except PruningConfigError as err:
        assert str(err).startswith(f"{folder / 'pruning_config.json'}: ")
        # the field that was set, or the one it conflicts with (end_epoch before start_epoch)
        assert err.field == ".".join(path) or (
            path[-1] in ("start_epoch", "end_epoch") and err.field.endswith("end_epoch")), err
        assert err.field in str(err)
        return
    _exercise(model, pruner)
    if isinstance(value, float) and not math.isfinite(value):
        pytest.fail(f"{'.'.join(path)} = {value} was accepted")


_layer_names = st.lists(st.text(max_size=16), min_size=1, max_size=3)


@pytest.mark.timeout(120)
@_SETTINGS
@given(names=_layer_names, section=st.sampled_from(["channel_sparsity_args",
                                                     "slice_sparsity_args"]))
def test_unicode_layer_names_name_the_layers_field(tmp_path_factory: pytest.TempPathFactory,
                                                  names: List[str], section: str) -> None:
    real = {n for n, _ in SmallCNN().named_modules()}
    stripped = [n[len("module."):] if n.startswith("module.") else n for n in names]
    assume(not set(stripped) & real)
    folder = _write(tmp_path_factory.mktemp("cfg"), _set(BASE, (section, "layers"), names))
    with pytest.raises(PruningConfigError) as info:
        tp.Pruning(SmallCNN(width=4), folder)
    err = info.value
    assert err.field == f"{section}.layers", err
    assert str(err).startswith(f"{folder / 'pruning_config.json'}: {section}.layers")
    assert any(repr(n).strip("'\"") in str(err) or n in str(err) for n in names)


@pytest.mark.timeout(120)
@_SETTINGS
@given(value=st.one_of(st.integers(), st.floats(), st.none(), st.booleans(),
                       st.lists(st.one_of(st.integers(), st.none(), st.floats()), min_size=1,
                                max_size=3),
                       st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)))
def test_layers_of_the_wrong_type_name_the_layers_field(tmp_path_factory: pytest.TempPathFactory,
                                                        value: Any) -> None:
    assume(not (isinstance(value, float) and math.isnan(value)))
    folder = _write(tmp_path_factory.mktemp("cfg"),
                    _set(BASE, ("channel_sparsity_args", "layers"), value))
    with pytest.raises(PruningConfigError) as info:
        tp.Pruning(SmallCNN(width=4), folder)
    assert info.value.field.startswith("channel_sparsity_args.layers"), info.value
