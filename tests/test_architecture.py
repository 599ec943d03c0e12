"""The package's imports follow the one-way flow of docs/architecture.md.

Every ``.py`` file under ``torch_pruning/pat`` is parsed (nothing is imported) and each import of
another PAT module is checked against the layer rules below; matplotlib may only be imported by
the plotting modules, and only inside the function that draws.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import pytest

PAT = Path(__file__).resolve().parents[1] / "torch_pruning" / "pat"

#: Concept folders (and top-level modules) by layer: a module may import its own folder and any
#: folder of a lower layer, never one of its own layer or above. ``checkpoint`` is checked apart.
LAYER: Dict[str, int] = {
    "_upstream": 0, "util": 0,
    "config": 1,
    "core": 2,
    "attention": 3,
    "channel": 4, "slice": 4, "checkpoint": 4,
    "tools": 5,
    "facade": 6,
    "__init__": 7, "__main__": 7, "_startup_hook": 7,
}
#: Checkpoint loading must work without the pruners: only these PAT modules are allowed.
CHECKPOINT_MAY_IMPORT = ("util", "config.errors", "core.heads", "core.hf", "checkpoint")
#: The only modules that draw pictures.
PLOTTING = {"tools.report", "tools.analyze_plots"}


def _modules() -> Iterator[Tuple[str, Path]]:
    for path in sorted(PAT.rglob("*.py")):
        rel = path.relative_to(PAT).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        yield ".".join(parts), path


def _package_of(module: str, path: Path) -> List[str]:
    parts = module.split(".")
    return parts if path.name == "__init__.py" and module != "__init__" else parts[:-1]


def _imports(module: str, path: Path) -> Iterator[Tuple[int, str, bool]]:
    """``(line, imported PAT module or external name, at module top level)``."""
    tree = ast.parse(path.read_text(), str(path))
    top = {id(n) for n in tree.body}
    top |= {id(m) for n in tree.body if isinstance(n, (ast.If, ast.Try)) for m in n.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, _strip(alias.name), id(node) in top
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = _package_of(module, path)
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
                names = [f"{target}.{a.name}" if target else a.name for a in node.names]
                # ``from . import x`` imports modules x; ``from .m import f`` imports module m
                for name in (names if not node.module else [target]):
                    yield node.lineno, "pat:" + name, id(node) in top
            else:
                yield node.lineno, _strip(node.module or ""), id(node) in top


def _strip(name: str) -> str:
    prefix = "torch_pruning.pat"
    if name == prefix:
        return "pat:__init__"
    if name.startswith(prefix + "."):
        return "pat:" + name[len(prefix) + 1:]
    return name


def _concept(module: str) -> str:
    return module.split(".")[0]


def _violation(module: str, target: str) -> Optional[str]:
    if target == "__init__" or _concept(target) == _concept(module):
        return None
    src, dst = _concept(module), _concept(target)
    if src == "checkpoint":
        if not any(target == ok or target.startswith(ok + ".") for ok in CHECKPOINT_MAY_IMPORT):
            return f"checkpoint loading may only import {CHECKPOINT_MAY_IMPORT}"
        return None
    if src in ("channel", "slice", "checkpoint") and dst in ("channel", "slice", "checkpoint"):
        return f"{src} and {dst} are siblings: move what both need down into core"
    if src == "slice" and dst == "attention":
        return "the slice pruner does not prune heads"
    if LAYER[dst] >= LAYER[src] and not (src in ("__init__", "__main__", "_startup_hook")):
        return f"{src} (layer {LAYER[src]}) may not import {dst} (layer {LAYER[dst]})"
    return None


def _all_imports() -> List[Tuple[str, int, str, bool]]:
    return [(module, line, target, top) for module, path in _modules()
            for line, target, top in _imports(module, path)]


def test_every_folder_has_a_layer() -> None:
    unknown = sorted({_concept(m) for m, _ in _modules()} - set(LAYER))
    assert not unknown, f"give these a layer in LAYER and docs/architecture.md: {unknown}"


def test_imports_flow_one_way() -> None:
    bad = []
    for module, line, target, _ in _all_imports():
        if target.startswith("pat:"):
            why = _violation(module, target[4:])
            if why:
                bad.append(f"{module}:{line} imports {target[4:]}: {why}")
    assert not bad, "\n".join(bad)


def test_cost_models_know_no_pruner() -> None:
    """MACs and latency take plain removal plans, never channel groups or tracing."""
    for module, line, target, _ in _all_imports():
        if module in ("core.macs", "core.latency", "core.cost"):
            assert not target.startswith(("pat:channel", "pat:attention")), (module, line, target)


def test_pruners_do_not_write_config_files() -> None:
    for module, line, target, _ in _all_imports():
        if _concept(module) in ("channel", "slice"):
            assert target != "pat:config.io", f"{module}:{line}: pruners do not do config I/O"


def test_matplotlib_only_inside_plotting_functions() -> None:
    bad = [f"{module}:{line} imports {target}" + ("" if module in PLOTTING else
                                                  " outside the plotting modules")
           for module, line, target, top in _all_imports()
           if target.split(".")[0] == "matplotlib" and (top or module not in PLOTTING)]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("module, target, allowed", [
    ("core.macs", "channel.group", False),
    ("channel.pruner", "config.io", True),  # layer-wise fine; test_pruners_... forbids it
    ("checkpoint.loading", "attention.heads", False),
    ("checkpoint.loading", "core.heads", True),
    ("slice.pruner", "channel.pruner", False),
    ("tools.validate", "channel.grouping", True),
    ("config.io", "core.masks", False),
    ("tools.cli", "facade", False),
])
def test_the_rules_can_fail(module: str, target: str, allowed: bool) -> None:
    """The checker itself rejects what the diagram forbids."""
    assert (_violation(module, target) is None) is allowed
