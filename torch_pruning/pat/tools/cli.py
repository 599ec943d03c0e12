"""Command line: ``python -m torch_pruning.pat <command>``.

Commands:
    schema       print the JSON Schema of pruning_config.json
    config-docs  print the configuration reference (markdown)
    inspect      list prunable layers (Conv2d, Linear, attention), groups and MACs; write a starter config
    validate     dry-run a pruning_config.json on a model
    analyze      plot channel L2 norms across a run's checkpoints (same as analyze.py)
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Callable, Dict, List, Optional

__all__ = ["main", "COMMANDS"]


def _schema(args: argparse.Namespace) -> int:
    from ..config.models import config_json_schema

    sys.stdout.write(json.dumps(config_json_schema(), indent=2) + "\n")
    return 0


def _config_docs(args: argparse.Namespace) -> int:
    from ..config.docs import config_reference_markdown

    sys.stdout.write(config_reference_markdown())
    return 0


#: name -> (help, argument setup, handler); other modules register more commands here.
COMMANDS: Dict[str, tuple] = {
    "schema": ("print the JSON Schema of pruning_config.json", lambda p: None, _schema),
    "config-docs": ("print the configuration reference (docs/configuration.md)", lambda p: None,
                    _config_docs),
}

from . import analyze as _analyze, inspect as _inspect  # noqa: E402

_inspect.register(COMMANDS)
_analyze.register(COMMANDS)


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``python -m torch_pruning.pat`` and the ``torch-pruning-pat`` script."""
    parser = argparse.ArgumentParser(prog="python -m torch_pruning.pat",
                                     description="torch-pruning-pat tools")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, setup, handler) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        setup(p)
        p.set_defaults(handler=handler)
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    return handler(args)
