"""The test suite's one setup: import paths, headless plotting, quiet hypothesis, and a writer
for config folders.

Paths: the checkout comes first (``pythonpath = ["."]`` in pyproject.toml, so its
``torch_pruning`` overlay is imported), then ``tests/`` itself, so every test, in any folder,
imports the test models as ``from models import SmallCNN`` / ``from models.transformer import
...``. A test that starts a Python subprocess passes ``sys.path`` on (``PYTHONPATH``).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, Dict

import pytest
import torch

TESTS = str(Path(__file__).resolve().parent)
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)

os.environ.setdefault("MPLBACKEND", "Agg")
# Test models are small: one thread is fastest and immune to a busy 2-core machine
# (two threads under load made small models 30-60x slower here).
torch.set_num_threads(1)

try:
    from hypothesis import settings

    settings.register_profile("ci", max_examples=60, deadline=None)
    settings.load_profile("ci")
except ImportError:  # pragma: no cover - hypothesis is a test dependency
    pass


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[[Dict[str, Any]], Path]:
    """Write a dict as ``<tmp>/run/pruning_config.json`` and return the folder."""

    def _write(data: Dict[str, Any], indent: int = 4) -> Path:
        folder = tmp_path / "run"
        folder.mkdir(exist_ok=True)
        (folder / "pruning_config.json").write_text(json.dumps(data, indent=indent))
        return folder

    return _write
