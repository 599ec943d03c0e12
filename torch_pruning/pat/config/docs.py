"""Render the configuration reference (``docs/configuration.md``) from the config models."""

from __future__ import annotations

import enum
import json
import re
from typing import Any, List, Type

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from .models import (DEPRECATED_KEYS, REQUIRED_WHEN_ENABLED, ChannelSparsityArgs, MACParams,
                     RegularizeArgs, SliceSparsityArgs, StageArgs)

__all__ = ["config_reference_markdown"]

_INTRO = """# Configuration reference

`pruning_config.json` lives in the run's output folder (the `config_folder` given to
`Pruning`). It has two sections; a missing section, or `"is_prune": false`, turns that pruner
off and needs no other field. Unknown keys, wrong types and out-of-range values raise
`PruningConfigError` naming the file and the field path. Editors can validate the file with
[pruning_config.schema.json](pruning_config.schema.json).

This page is generated from the config models: `python -m torch_pruning.pat config-docs`.
"""


def _default(field: Any) -> str:
    if field.default is PydanticUndefined:
        return "required" if field.default_factory is None else "see below"
    value = getattr(field.default, "value", field.default)
    return f"`{json.dumps(value)}`"


def _constraints(field: Any) -> str:
    parts = []
    for meta in field.metadata:
        for attr, sym in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            if getattr(meta, attr, None) is not None:
                parts.append(f"{sym} {getattr(meta, attr)}")
    return ", ".join(parts)


def _type_name(field: Any) -> str:
    ann = field.annotation
    if isinstance(ann, type) and issubclass(ann, enum.Enum):
        return " or ".join(f'`"{m.value}"`' for m in ann)
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return "object"
    text = getattr(ann, "__name__", None) if isinstance(ann, type) else None
    text = text or str(ann)
    for old, new in (("typing.", ""), ("NoneType", "null"), ("Optional[", "null or ["),
                     ("Union[", "one of ["), ("List[", "list["), ("Literal[", "literal[")):
        text = text.replace(old, new)
    text = re.sub(r"[\w.]+\.\w+Args\b", "object", text)  # a list of nested sections
    return text.replace("|", "or")


def _table(model: Type[BaseModel], prefix: str, required: List[str]) -> List[str]:
    rows = ["| field | type | default | allowed | meaning |", "|---|---|---|---|---|"]
    for name, field in model.model_fields.items():
        default = "required" if name in required else _default(field)
        rows.append(f"| `{prefix}{name}` | {_type_name(field)} | {default} | "
                    f"{_constraints(field)} | {field.description or ''} |")
    return rows


def config_reference_markdown() -> str:
    """The markdown of ``docs/configuration.md``.

    Example:
        >>> "channel_sparsity_args" in config_reference_markdown()
        True
    """
    out = [_INTRO]
    for section, model, nested in (
            ("channel_sparsity_args", ChannelSparsityArgs,
             [("regularize", RegularizeArgs), ("MAC_params", MACParams),
              ("stages[]", StageArgs)]),
            ("slice_sparsity_args", SliceSparsityArgs, [])):
        out.append(f"## `{section}`\n\n{model.__doc__.strip()}\n")
        out.extend(_table(model, "", REQUIRED_WHEN_ENABLED[section]))
        for name, sub in nested:
            out.append(f"\n### `{section}.{name}`\n")
            out.extend(_table(sub, f"{name}.", []))
            nested_old = DEPRECATED_KEYS.get(f"{section}.{name}", {})
            if nested_old:
                out.append(f"\nDeprecated keys inside `{name}` (accepted with a warning, "
                           "ignored):\n")
                out.extend(f"- `{name}.{old}`: use `{new}`" for old, new in nested_old.items())
        deprecated = DEPRECATED_KEYS.get(section, {})
        if deprecated:
            out.append("\nDeprecated keys (accepted with a warning, ignored):\n")
            out.extend(f"- `{old}`: use `{new}`" for old, new in deprecated.items())
        out.append("")
    return "\n".join(out) + "\n"
