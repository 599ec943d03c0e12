"""Loading ``pruning_config.json`` with precise errors, and atomic write-back of state fields.

:func:`load_config` accepts a folder (reads ``<folder>/pruning_config.json``), a path to a
``.json`` file, a dict or a :class:`~torch_pruning.pat.config.models.PruningConfig`. Every problem
raises :class:`PruningConfigError` naming the file, the field path
(``channel_sparsity_args.regularize.reg``), the bad value and what is allowed.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

from pydantic import BaseModel, ValidationError

from ..util.io import atomic_write_text
from ..util.log import emit, is_rank_zero
from .errors import PruningConfigError
from .models import (DEPRECATED_KEYS, REQUIRED_WHEN_ENABLED, ChannelSparsityArgs, PruningConfig,
                     SliceSparsityArgs)

__all__ = ["CONFIG_FILENAME", "LoadedConfig", "ConfigSource", "load_config", "validate_config",
           "write_state"]

logger = logging.getLogger(__name__)

CONFIG_FILENAME = "pruning_config.json"
ConfigSource = Union[str, "os.PathLike[str]", Mapping[str, Any], PruningConfig, None]


@dataclass
class LoadedConfig:
    """A validated config and where it came from.

    ``channel`` / ``slice`` are None when that section is missing or has ``is_prune: false``.
    ``path`` is the JSON file (None for dicts and objects): state is written back there.
    """

    config: PruningConfig
    path: Optional[Path]

    @property
    def channel(self) -> Optional[ChannelSparsityArgs]:
        c = self.config.channel_sparsity_args
        return c if c is not None and c.is_prune else None

    @property
    def slice(self) -> Optional[SliceSparsityArgs]:
        s = self.config.slice_sparsity_args
        return s if s is not None and s.is_prune else None


def _model_for(path: Sequence[Any]) -> Optional[type]:
    model: Any = PruningConfig
    for part in path:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return None
        ann = field.annotation
        candidates = [ann] + list(getattr(ann, "__args__", ()))
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)),
                     None)
        if model is None:
            return None
    return model


def _allowed(path: Sequence[Any]) -> str:
    parent = _model_for(path[:-1])
    if parent is None:
        return ""
    field = parent.model_fields.get(path[-1])
    if field is None:
        return ""
    desc = field.description or ""
    return f" ({desc})" if desc else ""


def _clean_loc(loc: Sequence[Any], extra: bool) -> List[Any]:
    """Field path of a pydantic error without its union-member tags (e.g. ``list[int]``)."""
    path: List[Any] = []
    model: Optional[type] = PruningConfig
    for i, part in enumerate(loc):
        fields = getattr(model, "model_fields", {}) if model is not None else {}
        if isinstance(part, int):
            path.append(part)
        elif part in fields or (part == "$schema" and model is PruningConfig):
            path.append(part)
            model = _model_for([p for p in path if isinstance(p, str)])
        elif extra and i == len(loc) - 1:
            path.append(part)
    return path


def _format_errors(err: ValidationError, source: str) -> PruningConfigError:
    lines = []
    first = ""
    for e in err.errors():
        extra = e["type"] == "extra_forbidden"
        loc = _clean_loc(e["loc"], extra)
        path = ".".join(str(p) for p in loc)
        first = first or path
        names_path = [p for p in loc if isinstance(p, str)]
        if extra:
            parent = _model_for(names_path[:-1])
            names = list(parent.model_fields) if parent else []
            if parent is PruningConfig:
                names = ["channel_sparsity_args", "slice_sparsity_args", "$schema"]
            close = difflib.get_close_matches(str(loc[-1]), names, n=1)
            hint = (f"; did you mean '{close[0]}'?" if close
                    else f"; allowed keys: {', '.join(names)}")
            lines.append(f"{path}: unknown key{hint}")
        else:
            lines.append(f"{path}: {e['msg']}, got {e.get('input')!r}{_allowed(names_path)}")
    return PruningConfigError("invalid pruning config:\n  " + "\n  ".join(dict.fromkeys(lines)),
                              source=source, field=first)


def _drop_deprecated(body: Dict[str, Any], where: str, section: str,
                     source: str) -> Dict[str, Any]:
    """``body`` (the object at dotted path ``where``) without its deprecated keys, each warned
    about with the key that replaces it (SPEC section 3: accepted, not refused)."""
    body = dict(body)
    for old, new in DEPRECATED_KEYS.get(where, {}).items():
        if old in body:
            del body[old]
            msg = (f"{source}: {where}.{old} is deprecated and ignored; "
                   f"use {section}.{new} instead")
            warnings.warn(msg, DeprecationWarning, stacklevel=5)
            emit(msg, level=logging.WARNING, logger=logger)
    return body


def _disabled_section(body: Dict[str, Any], model: type, section: str) -> Dict[str, Any]:
    """A section with ``"is_prune": false``: only ``is_prune`` must be valid. The other fields
    are kept where they validate (e.g. ``input_shape``, which ``validate`` may use) and dropped
    otherwise (an empty ``layers``, a key of another version), with a debug line."""
    body = dict(body)
    for _ in range(len(body) + 1):
        try:
            model.model_validate(body)
            return body
        except ValidationError as err:
            bad = {e["loc"][0] for e in err.errors() if e["loc"] and e["loc"][0] != "is_prune"}
            if not bad:
                raise
            for key in bad:
                body.pop(key, None)
            logger.debug("%s is disabled; not checking %s", section, sorted(map(str, bad)))
    return {"is_prune": False}


def _check_sections(data: Dict[str, Any], source: str) -> Dict[str, Any]:
    """Required-when-enabled fields, deprecated keys and disabled sections (pydantic cannot
    say these well)."""
    data = dict(data)
    models = {"channel_sparsity_args": ChannelSparsityArgs,
              "slice_sparsity_args": SliceSparsityArgs}
    for section, required in REQUIRED_WHEN_ENABLED.items():
        body = data.get(section)
        if body is None:
            continue
        if not isinstance(body, dict):
            raise PruningConfigError(f"{section}: must be an object, got {type(body).__name__}",
                                     source=source, field=section)
        body = _drop_deprecated(body, section, section, source)
        for key, value in list(body.items()):
            if isinstance(value, dict) and f"{section}.{key}" in DEPRECATED_KEYS:
                body[key] = _drop_deprecated(value, f"{section}.{key}", section, source)
        if body.get("is_prune", True) is False:
            data[section] = _disabled_section(body, models[section], section)
            continue
        data[section] = body
        missing = [f for f in required if f not in body]
        if missing:
            field = f"{section}.{missing[0]}"
            known = set(models[section].model_fields)
            unknown = [k for k in body if k not in known]
            close = difflib.get_close_matches(missing[0], unknown, n=1, cutoff=0.6)
            typo = (f"; the config has the unknown key '{section}.{close[0]}', which is close to "
                    f"it: rename '{close[0]}' to '{missing[0]}'" if close else "")
            raise PruningConfigError(
                f"{field}: required field is missing{typo} (required when is_prune is true: "
                f"{', '.join(required)}; set \"is_prune\": false to disable this pruner)",
                source=source, field=field)
        start, end = body.get("start_epoch"), body.get("end_epoch")
        if isinstance(start, int) and isinstance(end, int) and end < start:
            raise PruningConfigError(
                f"{section}.end_epoch: {end} is before start_epoch {start}; "
                "end_epoch must be >= start_epoch", source=source, field=f"{section}.end_epoch")
    return data


def _read_json(path: Path) -> Dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise PruningConfigError(f"cannot read the file: {e}", source=str(path)) from e
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise PruningConfigError(f"not valid JSON at line {e.lineno}, column {e.colno}: {e.msg}",
                                 source=str(path)) from e
    if not isinstance(data, dict):
        raise PruningConfigError(f"top level must be a JSON object, got {type(data).__name__}",
                                 source=str(path))
    return data


def validate_config(data: Mapping[str, Any], source: str = "<dict>") -> PruningConfig:
    """Validate a config mapping into a :class:`PruningConfig` or raise PruningConfigError.

    Example:
        >>> cfg = validate_config({"channel_sparsity_args": {"is_prune": False}})
        >>> cfg.channel_sparsity_args.is_prune
        False
    """
    if not isinstance(data, Mapping):
        raise PruningConfigError(f"config must be a mapping, got {type(data).__name__}",
                                 source=source)
    clean = _check_sections(dict(data), source)
    try:
        return PruningConfig.model_validate(clean)
    except ValidationError as e:
        raise _format_errors(e, source) from None


def load_config(source: ConfigSource) -> Optional[LoadedConfig]:
    """Load and validate a pruning config; None when no config file exists.

    ``source`` is a folder holding ``pruning_config.json``, a path to a ``.json`` file, a dict,
    or a ready :class:`PruningConfig`.

    Example:
        >>> load_config({"slice_sparsity_args": {"is_prune": False}}).slice is None
        True
    """
    if source is None:
        return None
    if isinstance(source, PruningConfig):
        return LoadedConfig(source, None)
    if isinstance(source, Mapping):
        return LoadedConfig(validate_config(source), None)
    if not isinstance(source, (str, os.PathLike)):
        raise PruningConfigError(
            f"config source must be a folder, a .json path, a dict or a PruningConfig, "
            f"got {type(source).__name__}")
    path = Path(source)
    if path.is_dir() or (not path.suffix and not path.exists()):
        path = path / CONFIG_FILENAME
    if not path.exists():
        return None
    return LoadedConfig(validate_config(_read_json(path), str(path)), path)


def _indent_of(text: str) -> int:
    for line in text.splitlines()[1:]:
        stripped = line.lstrip(" ")
        if stripped and len(stripped) < len(line):
            return len(line) - len(stripped)
    return 4


def write_state(path: Optional[Path], section: str, updates: Mapping[str, Any]) -> bool:
    """Set state fields (e.g. ``reach_mac_target``, ``log_str``) of ``section`` in the file.

    Every other key keeps its value and order. Written atomically and on rank 0 only.
    Returns True when the file was written.
    """
    if path is None or not is_rank_zero():
        return False
    text = Path(path).read_text(encoding="utf-8")
    data = json.loads(text)
    data.setdefault(section, {}).update(updates)
    atomic_write_text(path, json.dumps(data, indent=_indent_of(text), ensure_ascii=False) + "\n")
    return True
