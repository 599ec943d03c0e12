"""Locating the installed upstream ``torch-pruning`` distribution without importing it."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path
from typing import Tuple

__all__ = ["SUPPORTED", "upstream_package_dir", "upstream_version", "upstream_metadata",
           "check_upstream_version"]

#: The upstream releases this package is tested with: ``>=1.6.1,<1.7``.
SUPPORTED: Tuple[Tuple[int, ...], Tuple[int, ...]] = ((1, 6, 1), (1, 7))
_INSTALL = "pip install 'torch-pruning>=1.6.1,<1.7'"


def _version_tuple(version: str) -> Tuple[int, ...]:
    parts = []
    for piece in version.split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def check_upstream_version(version: str) -> None:
    """Raise ImportError unless ``version`` is in the supported range.

    Example:
        >>> check_upstream_version("1.6.1")
    """
    low, high = SUPPORTED
    if not (low <= _version_tuple(version) < high):
        raise ImportError(
            f"torch-pruning-pat supports torch-pruning >=1.6.1,<1.7 but {version} is installed; "
            f"run: {_INSTALL}")


def upstream_package_dir() -> Path:
    """The directory of the installed upstream ``torch_pruning`` package.

    Found through the ``torch-pruning`` distribution's metadata, so nothing is imported.
    Raises ImportError saying what to install when upstream is missing or unsupported.
    """
    try:
        dist = metadata.distribution("torch-pruning")
    except metadata.PackageNotFoundError:
        raise ImportError(f"torch-pruning-pat needs upstream Torch-Pruning; run: {_INSTALL}") from None
    check_upstream_version(dist.version)
    path = Path(str(dist.locate_file("torch_pruning")))
    if not (path / "__init__.py").is_file():
        raise ImportError(
            f"the torch-pruning {dist.version} distribution has no package at {path}; "
            f"reinstall it: pip install --force-reinstall 'torch-pruning>=1.6.1,<1.7'")
    return path


def upstream_version() -> str:
    """The installed upstream ``torch-pruning`` version string, from its metadata."""
    return metadata.version("torch-pruning")


def upstream_metadata() -> Tuple[str, str, str]:
    """``(__version__, __author__, __email__)`` of upstream, from its distribution metadata."""
    meta = metadata.metadata("torch-pruning")
    return meta["Version"], meta.get("Author") or "", meta.get("Author-email") or ""
