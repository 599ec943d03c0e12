"""Print the library's dependencies and its `test` extra from pyproject.toml, one a line.

Used by .ci/setup-venv. Runs on Python 3.10+: `tomllib` is in the standard library from 3.11;
on 3.10 the `tomli` backport is used (setup-venv installs it into the venv first).
"""

import sys

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

with open(sys.argv[1], "rb") as f:
    project = tomllib.load(f)["project"]
print("\n".join(project["dependencies"] + project["optional-dependencies"]["test"]))
