"""Hostile checkpoints: truncated or random files, wrong keys, shapes of another model.

Every one gives a :class:`CheckpointError` (for files: naming the file) and leaves the model
exactly as it was — parameters, buffers, module attributes and outputs.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Dict, Optional

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from torch import nn

import torch_pruning as tp
from models import MODELS, SmallCNN, TwoInputNet
from torch_pruning.pat.checkpoint.loading import CheckpointError

X = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
PRUNE_AT_INIT = {"channel_sparsity_args": {
    "start_epoch": 0, "end_epoch": 0, "global_prune_rate": 0.5, "prune_channels_at_init": True,
    "block_size": 4, "input_shape": [1, 3, 16, 16]}}


def _pruned_checkpoint() -> bytes:
    """A real training checkpoint of a physically pruned SmallCNN (model, pruner, epoch)."""
    torch.manual_seed(0)
    model = SmallCNN()
    pruner = tp.Pruning(model, PRUNE_AT_INIT)
    pruner.prune(model, 0)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "pruner": pruner.state_dict(), "epoch": 0}, buffer)
    return buffer.getvalue()


CHECKPOINT = _pruned_checkpoint()


class Snapshot:
    """Everything a failed load must leave alone."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.repr = repr(model)
        self.tensors = {k: v.clone() for k, v in model.state_dict().items()}
        self.out = self._run()

    def _run(self) -> Optional[torch.Tensor]:
        if isinstance(self.model, TwoInputNet):
            return None
        self.model.eval()
        with torch.no_grad():
            return self.model(X)

    def assert_unchanged(self) -> None:
        assert repr(self.model) == self.repr  # in/out channels, num_features, ...
        now = self.model.state_dict()
        assert now.keys() == self.tensors.keys()
        for k, v in self.tensors.items():
            assert now[k].shape == v.shape and torch.equal(now[k], v), k
        if self.out is not None:
            assert torch.equal(self._run(), self.out)


def refused(model: nn.Module, source: Any, match: Optional[str] = None) -> CheckpointError:
    """Load ``source``: it must raise CheckpointError and change nothing."""
    snap = Snapshot(model)
    with pytest.raises(CheckpointError, match=match) as info:
        tp.load_state_dict_pruned(model, source)
    snap.assert_unchanged()
    return info.value


_FILE = settings(max_examples=40, deadline=None,
                 suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.mark.timeout(60)
def test_the_intact_checkpoint_loads(tmp_path: Path) -> None:
    """The control: the file the hostile variants are made from is a good checkpoint."""
    path = tmp_path / "ckpt.pth"
    path.write_bytes(CHECKPOINT)
    model, missing, unexpected = tp.load_state_dict_pruned(SmallCNN(), path)
    assert (missing, unexpected) == ([], []) and model.features[0][0].out_channels == 8


@pytest.mark.timeout(120)
@_FILE
@given(cut=st.integers(0, len(CHECKPOINT) - 1))
def test_a_truncated_file_is_refused_naming_it(tmp_path: Path, cut: int) -> None:
    path = tmp_path / "truncated.pth"
    path.write_bytes(CHECKPOINT[:cut])
    error = refused(SmallCNN(), path)
    assert str(path) in str(error)


@pytest.mark.timeout(120)
@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@_FILE
@given(data=st.one_of(st.binary(max_size=4096),
                      st.binary(max_size=512).map(lambda b: b"PK\x03\x04" + b),  # a zip header
                      st.binary(max_size=512).map(lambda b: b"\x80\x02" + b)))  # a pickle header
def test_random_bytes_are_refused_naming_the_file(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "random.pth"
    path.write_bytes(data)
    error = refused(SmallCNN(), path)
    assert str(path) in str(error)


@pytest.mark.timeout(120)
@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@_FILE
@given(position=st.integers(0, len(CHECKPOINT) - 1), value=st.integers(0, 255))
def test_a_corrupted_byte_is_refused_or_loads_whole(tmp_path: Path, position: int,
                                                    value: int) -> None:
    """A flipped byte in tensor data cannot be detected (PyTorch files carry no checksum); a
    flip anywhere else is refused. Either way no half-loaded model."""
    data = bytearray(CHECKPOINT)
    assume(data[position] != value)
    data[position] = value
    path = tmp_path / "corrupt.pth"
    path.write_bytes(bytes(data))
    model = SmallCNN()
    snap = Snapshot(model)
    try:
        model, _, _ = tp.load_state_dict_pruned(model, path)
    except CheckpointError as error:
        assert str(path) in str(error) or "checkpoint" in str(error)
        snap.assert_unchanged()
        return
    assert model.features[0][0].out_channels == 8  # loaded completely: the pruned shapes


_tensors = st.builds(lambda shape: torch.zeros(shape),
                     st.lists(st.integers(1, 5), min_size=0, max_size=4).map(tuple))


@pytest.mark.timeout(120)
@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.text(min_size=1, max_size=20), _tensors, min_size=1, max_size=6))
def test_wrong_keys_are_refused(weights: Dict[str, torch.Tensor]) -> None:
    assume(not set(weights) & set(SmallCNN().state_dict()))
    refused(SmallCNN(), weights, match="does not look like a version of this SmallCNN")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("saved, target", [(s, t) for t in ("small", "residual", "decoder")
                                           for s in sorted(MODELS) + ["two_input"] if s != t])
def test_a_checkpoint_of_another_model_is_refused(saved: str, target: str) -> None:
    weights = (TwoInputNet() if saved == "two_input" else MODELS[saved]()).state_dict()
    refused(MODELS[target](), weights)


def _reshaped(shape: tuple, draw: Any) -> tuple:
    """A different shape: change one dimension, or the number of dimensions."""
    if draw(st.booleans()) or not shape:
        return tuple(draw(st.lists(st.integers(1, 6), min_size=0, max_size=5)
                          .filter(lambda s: len(s) != len(shape))))
    dim = draw(st.integers(0, len(shape) - 1))
    size = draw(st.integers(1, 40).filter(lambda n: n != shape[dim]))
    return shape[:dim] + (size,) + shape[dim + 1:]


@pytest.mark.timeout(120)
@settings(max_examples=60, deadline=None)
@given(st.data())
def test_shapes_that_fit_no_pruned_model_are_refused(data: st.DataObject) -> None:
    """The right keys with shapes of another model: one tensor (or a few) reshaped."""
    weights = SmallCNN().state_dict()
    keys = data.draw(st.lists(st.sampled_from([k for k, v in weights.items() if v.dim() > 0]),
                              min_size=1, max_size=3, unique=True))
    for key in keys:
        weights[key] = torch.zeros(_reshaped(tuple(weights[key].shape), data.draw))
    model = SmallCNN()
    snap = Snapshot(model)
    try:
        tp.load_state_dict_pruned(model, weights)
    except CheckpointError as error:
        assert any(key in str(error) or key.rpartition(".")[0] in str(error) for key in keys)
        snap.assert_unchanged()
        return
    # accepted: then every tensor now has exactly the checkpoint's shape (a consistent rebuild)
    for key, value in model.state_dict().items():
        assert value.shape == weights[key].shape, key


def _masked_pruner(model: nn.Module, **channel: Any) -> Any:
    cfg = {"start_epoch": 0, "end_epoch": 0, "global_prune_rate": 0.8,
           "prune_at_target": False, "input_shape": [1, 3, 16, 16]}
    cfg.update(channel)
    pruner = tp.Pruning(model, {"channel_sparsity_args": cfg})
    pruner.prune(model, 0)
    return pruner


@pytest.mark.timeout(60)
@pytest.mark.parametrize("saved, match", [
    (lambda: _masked_pruner(SmallCNN(), layers="all"), r"group 'features\.0\.0'"),
    (lambda: _masked_pruner(SmallCNN(width=32), layers=["features.1.0", "features.2.0"]),
     r"group 'features\.1\.0' with units \[.*\], which do not fit .*'features\.1\.0', 32\)"),
], ids=["other-layers", "wider-model"])
def test_a_pruner_state_that_does_not_fit_is_refused_before_any_change(saved: Any,
                                                                       match: str) -> None:
    state = saved().state_dict()
    model = SmallCNN()
    pruner = _masked_pruner(model, layers=["features.1.0", "features.2.0"], end_epoch=3,
                            global_prune_rate=0.4)
    before, snap = pruner.state_dict(), Snapshot(model)
    with pytest.raises(ValueError,
                       match=match + r".*another channel_sparsity_args\.layers or model"):
        pruner.load_state_dict(state)
    after = pruner.state_dict()
    assert after["channel"].keys() == before["channel"].keys()
    for key, value in before["channel"].items():
        if key == "pruned_units":
            assert all(torch.equal(value[k], after["channel"][key][k]) for k in value)
        else:
            assert after["channel"][key] == value, key
    snap.assert_unchanged()
