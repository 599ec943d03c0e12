"""`import torch_pruning as tp` is upstream's whole API plus ours, from the checkout."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

import torch_pruning as tp
from torch_pruning.pat import _upstream

ROOT = Path(__file__).resolve().parents[1]
UPSTREAM_DIR = _upstream.upstream_package_dir()

_LIST_NAMES = """
import json, sys, torch_pruning as tp
def public(mod):
    return sorted(n for n in dir(mod) if not n.startswith('_'))
print(json.dumps({"file": tp.__file__, "tp": public(tp), "utils": public(tp.utils),
                  "pruner": public(tp.pruner), "importance": public(tp.importance)}))
"""


def _names(cwd: Path, pythonpath: str) -> dict:
    env = {"PYTHONPATH": pythonpath, "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", _LIST_NAMES], cwd=cwd, env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_checkout_overlay_is_the_imported_package() -> None:
    assert Path(tp.__file__).resolve() == ROOT / "torch_pruning" / "__init__.py"
    assert str(UPSTREAM_DIR) in tp.__path__


def test_overlay_exposes_every_public_upstream_name(tmp_path: Path) -> None:
    plain = _names(tmp_path, "")  # no checkout on the path: upstream's own __init__ runs
    ours = _names(tmp_path, str(ROOT))
    assert Path(plain["file"]).parent == UPSTREAM_DIR
    assert Path(ours["file"]).parent == ROOT / "torch_pruning"
    for section in ("tp", "utils", "pruner", "importance"):
        missing = set(plain[section]) - set(ours[section])
        assert not missing, f"tp.{section} lacks upstream names {sorted(missing)}"
    assert {"Pruning", "load_state_dict_pruned", "pat"} <= set(ours["tp"])
    assert {"Pruning", "load_state_dict_pruned"} <= set(ours["utils"])


def test_pat_names_resolve_everywhere() -> None:
    from torch_pruning.utils import Pruning, load_state_dict_pruned

    assert tp.Pruning is tp.utils.Pruning is Pruning is tp.pat.Pruning
    assert tp.load_state_dict_pruned is load_state_dict_pruned is tp.pat.load_state_dict_pruned
    # upstream's objects are upstream's, not copies
    assert tp.DependencyGraph.__module__ == "torch_pruning.dependency.graph"
    assert Path(sys.modules["torch_pruning.dependency.graph"].__file__).parent.parent == UPSTREAM_DIR


def test_no_pat_module_shadows_an_upstream_module() -> None:
    ours = {p.relative_to(ROOT / "torch_pruning") for p in (ROOT / "torch_pruning").rglob("*.py")}
    theirs = {p.relative_to(UPSTREAM_DIR) for p in UPSTREAM_DIR.rglob("*.py")
              if "pat" not in p.relative_to(UPSTREAM_DIR).parts}
    assert ours & theirs == {Path("__init__.py")}


@pytest.mark.parametrize("version", ["1.5.2", "1.7.0", "2.0"])
def test_unsupported_upstream_says_what_to_install(version: str) -> None:
    with pytest.raises(ImportError, match=r"pip install 'torch-pruning>=1\.6\.1,<1\.7'"):
        _upstream.check_upstream_version(version)


def test_missing_upstream_says_what_to_install(monkeypatch) -> None:
    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(_upstream.metadata, "distribution", missing)
    with pytest.raises(ImportError, match=r"needs upstream Torch-Pruning; run: pip install"):
        _upstream.upstream_package_dir()


def test_upstream_dunder_names_and_no_private_leftovers() -> None:
    assert tp.__version__ == metadata.version("torch-pruning")
    assert tp.__author__ and "@" in tp.__email__
    assert not hasattr(tp, "_upstream_package_dir") and not hasattr(tp, "_upstream_metadata")
