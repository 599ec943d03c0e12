"""Torch-Pruning with pruning-aware training (checkout overlay of upstream ``torch_pruning``).

This file is used when the repository checkout is first on ``sys.path`` (tests, examples).
It extends this package's ``__path__`` with the installed upstream package directory (found
through the ``torch-pruning`` distribution's metadata), re-exports upstream's public API by
importing upstream's modules by name, then adds the PAT names. The installed wheel does not
ship this file: there a startup hook attaches the same names to upstream's own package.
"""

from .pat._upstream import upstream_package_dir as _upstream_package_dir

__path__.append(str(_upstream_package_dir()))  # noqa: F821  (the package's own __path__)

# Upstream's public API, module by module (never by executing upstream's __init__.py).
from . import _helpers, utils  # noqa: E402,F401
from .dependency import *  # noqa: E402,F401,F403
from .pruner import *  # noqa: E402,F401,F403
from .pruner import importance  # noqa: E402,F401
from .serialization import save, load, state_dict, load_state_dict  # noqa: E402,F401
from . import ops  # noqa: E402,F401
from .pat._upstream import upstream_metadata as _upstream_metadata  # noqa: E402

# Upstream's own dunder names, from its distribution metadata (its __init__ is never read).
# __version__ is the installed release (upstream 1.6.1's __init__ still says "1.6.0").
__version__, __author__, __email__ = _upstream_metadata()

# PAT names, also attached to upstream's ``torch_pruning.utils``.
from . import pat  # noqa: E402

pat.attach(__import__(__name__))
del _upstream_package_dir, _upstream_metadata
