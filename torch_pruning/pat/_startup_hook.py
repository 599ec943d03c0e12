"""Startup hook of the installed wheel (shipped as the top-level ``_torch_pruning_pat_hook``).

The wheel installs ``torch_pruning/pat/`` inside upstream's package directory and a ``.pth``
file that imports this module at interpreter start. It registers a ``sys.meta_path`` finder
that, when ``torch_pruning`` is first imported, lets upstream's own ``__init__`` run and then
attaches the PAT names to it and to ``torch_pruning.utils``. Nothing heavy runs at startup:
no torch import, no metadata scan until ``torch_pruning`` itself is imported.

A checkout overlay (the repository's ``torch_pruning/__init__.py`` first on ``sys.path``)
attaches the names itself; the finder then steps aside.
"""

import importlib.abc
import importlib.machinery
import logging
import os
import sys

_NAME = "torch_pruning"


class _AttachingLoader(importlib.abc.Loader):
    def __init__(self, inner):
        self._inner = inner

    def create_module(self, spec):
        return self._inner.create_module(spec)

    def exec_module(self, module):
        self._inner.exec_module(module)
        try:
            from torch_pruning import pat
        except ImportError:
            logging.getLogger("torch_pruning.pat").warning(
                "torch-pruning-pat is installed but torch_pruning.pat is not inside the "
                "installed torch-pruning package (%s). An editable install (pip install -e) "
                "cannot shadow an installed package of the same name: install it normally "
                "(pip install .) or run with the checkout first on sys.path.",
                os.path.dirname(module.__file__ or ""))
            return
        pat.attach(module)


class _PatFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname != _NAME:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None or not spec.origin:
            return spec
        package_dir = os.path.dirname(spec.origin)
        if os.path.exists(os.path.join(package_dir, "pat", "_upstream.py")) and \
                os.path.exists(os.path.join(package_dir, "dependency")) is False:
            return spec  # the checkout overlay: it attaches the PAT names itself
        spec.loader = _AttachingLoader(spec.loader)
        return spec


def install():
    """Register the finder once (idempotent)."""
    if not any(isinstance(f, _PatFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _PatFinder())


install()
