"""The starter ``pruning_config.json`` that ``inspect --write-config DIR`` writes.

Every field at its default, ``layers`` set to the model's prunable convs, ``input_shape`` to
the inspected shapes, and example values for the fields without a default.

Example:
    >>> summary = summarize_model(model, make_inputs([[1, 3, 224, 224]]))  # doctest: +SKIP
    >>> data = starter_config(summary, [[1, 3, 224, 224]])                 # doctest: +SKIP
    >>> write_starter_config("runs/demo", data)                            # doctest: +SKIP
    PosixPath('runs/demo/pruning_config.json')
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Dict, Sequence, Union

from ..config.io import CONFIG_FILENAME, validate_config
from ..config.models import ChannelSparsityArgs, PruningConfig, SliceSparsityArgs
from ..util.io import atomic_write_text
from .model_factory import Shape, ToolError
from .summary import ModelSummary

__all__ = ["starter_config", "write_starter_config"]

logger = logging.getLogger(__name__)


def starter_config(summary: ModelSummary, input_shapes: Sequence[Shape]) -> Dict[str, Any]:
    """A complete ``pruning_config.json`` dict: every field with its default.

    ``layers`` lists the model's prunable convs and ``input_shape`` the given shapes. The
    fields without a default (epochs and rates) get example values to edit; slice pruning is
    written but off. The result validates with the config model.
    """
    shape: Any = list(input_shapes[0]) if len(input_shapes) == 1 else [list(s) for s in input_shapes]
    layers: Any = summary.prunable_convs or "all"
    channel = ChannelSparsityArgs(start_epoch=10, end_epoch=30, global_prune_rate=0.5,
                                  mac_target=0.7, layers=layers, input_shape=shape)
    slice_ = SliceSparsityArgs(is_prune=False, start_epoch=30, end_epoch=40, prune_rate=0.3)
    data = PruningConfig(channel_sparsity_args=channel,
                         slice_sparsity_args=slice_).model_dump(mode="json", exclude={"schema_"})
    validate_config(data, "<starter config>")
    return data


def write_starter_config(folder: Union[str, Path], data: Dict[str, Any],
                         force: bool = False) -> Path:
    """Write ``data`` as ``<folder>/pruning_config.json`` atomically; never overwrite unless
    ``force``. Returns the path written."""
    path = Path(folder)
    if path.suffix != ".json":
        path = path / CONFIG_FILENAME
    if path.exists() and not force:
        raise ToolError(f"{path} already exists; pass --force to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(data, indent=4) + "\n")
    return path
