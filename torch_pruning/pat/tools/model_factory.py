"""What the command-line tools take: a model as ``module:factory`` and example input shapes.

``inspect``, ``validate`` and ``analyze.py`` build the user's model with :func:`load_model`,
read ``--input-shape`` with :func:`parse_input_shape` and feed :func:`make_inputs` to the
dependency graph. Every tool reports what the user must change as a :class:`ToolError`.

Example:
    >>> model = load_model("torchvision.models:resnet18")
    >>> x = make_inputs(parse_input_shape("1,3,64,64"))
    >>> model(x).shape
    torch.Size([1, 1000])
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import logging
import sys
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

__all__ = ["ToolError", "load_model", "parse_input_shape", "format_shape", "make_inputs"]

logger = logging.getLogger(__name__)

Shape = List[int]
Inputs = Union[torch.Tensor, List[torch.Tensor], Tuple[torch.Tensor, ...]]


class ToolError(ValueError):
    """A command-line tool cannot do what it was asked; the message says what to change."""


def _import_module(module_part: str) -> Any:
    if module_part.endswith(".py") or "/" in module_part or "\\" in module_part:
        path = Path(module_part).resolve()
        if not path.is_file():
            raise ToolError(f"--model: no such file {module_part}")
        name = f"_pat_user_model_{abs(hash(str(path)))}"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise ToolError(f"--model: cannot import {module_part} as a Python file")
        module = importlib.util.module_from_spec(spec)
        sys.path.insert(0, str(path.parent))  # let the file import its sibling modules
        try:
            spec.loader.exec_module(module)
        finally:
            sys.path.remove(str(path.parent))
        return module
    try:
        return importlib.import_module(module_part)
    except ImportError as e:
        raise ToolError(f"--model: cannot import module '{module_part}': {e}") from e


def load_model(spec: str) -> nn.Module:
    """Build a model from ``module:factory``; the factory is called without arguments.

    ``module`` is a dotted module (``torchvision.models``) or a path to a ``.py`` file;
    ``factory`` is a function or class in it (dotted attributes allowed). torchvision's
    factories called without arguments build the model with ``weights=None``.

    Example:
        >>> load_model("torchvision.models:resnet18").fc.out_features
        1000
    """
    module_part, sep, attr = spec.rpartition(":")
    if not sep or not module_part or not attr:
        raise ToolError(f"--model: expected module:factory (e.g. torchvision.models:resnet18 "
                        f"or path/to/net.py:make_net), got {spec!r}")
    obj: Any = _import_module(module_part)
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = [n for n in dir(obj) if not n.startswith("_")]
            close = difflib.get_close_matches(part, names, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ToolError(f"--model: '{module_part}' has no attribute '{part}'{hint}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ToolError(f"--model: {spec} is not callable")
    model = obj()
    if not isinstance(model, nn.Module):
        raise ToolError(f"--model: {spec}() returned {type(model).__name__}, not a torch.nn.Module")
    return model


def parse_input_shape(text: str) -> List[Shape]:
    """Parse ``"1,3,224,224"`` (or ``1x3x224x224``; several shapes separated by ``;``).

    Example:
        >>> parse_input_shape("1,3,64,64;1,1,64,64")
        [[1, 3, 64, 64], [1, 1, 64, 64]]
    """
    shapes = []
    for chunk in text.split(";"):
        parts = chunk.replace("x", ",").replace(" ", "").strip(",").split(",")
        try:
            shape = [int(p) for p in parts]
        except ValueError:
            shape = []
        if not shape or any(d < 1 for d in shape):
            raise ToolError(f"--input-shape: expected positive integers like 1,3,224,224, "
                            f"got {chunk!r}")
        shapes.append(shape)
    return shapes


def format_shape(shape: Sequence[int]) -> str:
    """A shape as the tools print it, e.g. ``1x3x224x224`` (:func:`parse_input_shape` reads it).

    Example:
        >>> format_shape([1, 3, 224, 224])
        '1x3x224x224'
    """
    return "x".join(str(d) for d in shape)


def _vocabulary(model: Any) -> Optional[int]:
    """The vocabulary size of a model that takes token ids (a Hugging Face model whose
    ``get_input_embeddings()`` is an ``nn.Embedding``), else None."""
    get = getattr(model, "get_input_embeddings", None)
    embedding = get() if callable(get) else None
    return embedding.num_embeddings if isinstance(embedding, torch.nn.Embedding) else None


def make_inputs(shapes: Sequence[Shape], container: Optional[str] = None,
                model: Any = None) -> Inputs:
    """Random example inputs: one tensor for one shape, else a list (tuple if ``container``).

    For a ``model`` that takes token ids (e.g. a Hugging Face decoder), a 2-D shape
    ``batch,tokens`` gives random token ids instead of floats.

    Example:
        >>> make_inputs([[2, 3]]).dtype
        torch.float32
    """
    vocab = _vocabulary(model) if model is not None else None
    tensors = [torch.randint(0, vocab, tuple(s)) if vocab and len(s) == 2 else torch.randn(*s)
               for s in shapes]
    if len(tensors) == 1:
        return tensors[0]
    return tuple(tensors) if container == "tuple" else tensors
