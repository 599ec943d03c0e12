"""``inspect`` and ``validate``: look at a model before pruning it, and dry-run a config on it.

``python -m torch_pruning.pat inspect --model torchvision.models:resnet18 --input-shape 1,3,224,224``
lists the model's Conv2d layers (name, weight shape, the dependency group their output
channels belong to, MACs and MAC share), the MACs of every other layer type, and the groups
as upstream's :class:`~torch_pruning.DependencyGraph` couples them. MACs come from
``tp.utils.count_ops_and_params`` and the listed numbers add up to its total exactly.
``--write-config DIR`` writes a starter ``pruning_config.json`` with every field; with
``--mac-target X --epochs N`` it writes the recommended recipe instead
(:func:`~torch_pruning.pat.tools.recipe.recommend_config`).

``python -m torch_pruning.pat validate DIR --model module:factory`` loads ``DIR``'s config,
resolves its layer names against the model and prints what would be pruned. Exit codes:
0 = something would be pruned, 1 = an enabled pruner would prune nothing (or both are off),
2 = an error (bad config, unknown layer name, model that cannot be built).

This module holds the two commands; the pieces live in their own modules:
:mod:`.model_factory` (``--model``, ``--input-shape``, :class:`~.model_factory.ToolError`),
:mod:`.summary` (layers, groups, MACs), :mod:`.starter_config` (``--write-config``) and
:mod:`.validate` (what ``validate`` reports).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, Dict, Sequence

from ..config.errors import PruningConfigError
from ..config.io import CONFIG_FILENAME, load_config
from .model_factory import (Shape, ToolError, format_shape, load_model, make_inputs,
                            parse_input_shape)
from .recipe import recommend_config
from .starter_config import starter_config, write_starter_config
from .summary import format_summary, summarize_model
from .validate import check_config

__all__ = ["register"]

logger = logging.getLogger(__name__)


def _error(msg: str) -> int:
    sys.stderr.write(f"error: {msg}\n")
    return 2


def _setup_inspect(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, metavar="MODULE:FACTORY",
                   help="e.g. torchvision.models:resnet18 or path/to/net.py:make_net "
                        "(called without arguments)")
    p.add_argument("--input-shape", default="1,3,224,224", metavar="B,C,H,W",
                   help="example input shape; several inputs separated by ';' "
                        "(default 1,3,224,224)")
    p.add_argument("--write-config", metavar="DIR",
                   help="also write a starter pruning_config.json into DIR")
    p.add_argument("--force", action="store_true",
                   help="overwrite an existing pruning_config.json")
    p.add_argument("--mac-target", type=float, metavar="X",
                   help="with --epochs: write the recommended recipe (recommend_config) for "
                        "this fraction of the MACs instead of the starter config")
    p.add_argument("--epochs", type=int, metavar="N",
                   help="with --mac-target: the length of the whole training run")
    p.add_argument("--lr-restart", action="store_true",
                   help="with --mac-target: your loop restarts its learning-rate schedule at "
                        "the removal (recommend_config(..., lr_restart=True))")


def _recommended(model: Any, shapes: Sequence[Shape], mac_target: float, epochs: int,
                 lr_restart: bool = False) -> Dict[str, Any]:
    try:
        return recommend_config(model, make_inputs(shapes, model=model), mac_target, epochs,
                                lr_restart=lr_restart)
    except ValueError as e:
        raise ToolError(f"--mac-target/--epochs: {e}") from e


def _run_inspect(args: argparse.Namespace) -> int:
    try:
        shapes = parse_input_shape(args.input_shape)
        recipe = args.mac_target is not None or args.epochs is not None
        if args.lr_restart and not recipe:
            raise ToolError("--lr-restart goes with --mac-target and --epochs (it places the "
                            "recommended recipe's phases for a learning-rate restart)")
        if recipe and (args.mac_target is None or args.epochs is None or not args.write_config):
            raise ToolError("--mac-target and --epochs go together, with --write-config DIR: "
                            "e.g. --write-config runs/exp --mac-target 0.5 --epochs 30")
        if args.write_config and not args.force:  # fail before the slow part
            target = Path(args.write_config)
            target = target if target.suffix == ".json" else target / CONFIG_FILENAME
            if target.exists():
                raise ToolError(f"{target} already exists; pass --force to overwrite it")
        model = load_model(args.model)
        summary = summarize_model(model, make_inputs(shapes, model=model))
        title = f"{args.model}, input {' + '.join(format_shape(s) for s in shapes)}"
        sys.stdout.write(format_summary(summary, title))
        if args.write_config and recipe:
            data = _recommended(model, shapes, args.mac_target, args.epochs, args.lr_restart)
            path = write_starter_config(args.write_config, data, force=args.force)
            ch = data["channel_sparsity_args"]
            restart = (" Restart your learning-rate schedule over the epochs left when "
                       "reset_optimizer turns true." if args.lr_restart else "")
            sys.stdout.write(
                f"\nWrote {path}: the recommended recipe (docs/recipes.md) for mac_target "
                f"{args.mac_target} in {args.epochs} epochs: regularization until epoch "
                f"{ch['start_epoch']}, masking epochs {ch['start_epoch']}-{ch['end_epoch']}, "
                f"fine-tuning after.{restart} Check it with\n"
                f"  python -m torch_pruning.pat validate {path.parent} --model {args.model}\n")
        elif args.write_config:
            path = write_starter_config(args.write_config, starter_config(summary, shapes),
                                        force=args.force)
            sys.stdout.write(
                f"\nWrote {path}: every field at its default, the {len(summary.prunable_convs)} "
                "prunable Conv2d layers, and example values for the fields without a default "
                "(start_epoch, end_epoch, global_prune_rate; mac_target 0.7). Set them and "
                "regularize.reg for your run, then check it with\n"
                f"  python -m torch_pruning.pat validate {path.parent} --model {args.model}\n")
    except (ToolError, PruningConfigError) as e:
        return _error(str(e))
    return 0


def _setup_validate(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", metavar="DIR",
                   help="folder holding pruning_config.json (or the .json file)")
    p.add_argument("--model", required=True, metavar="MODULE:FACTORY",
                   help="the model the config is meant for (called without arguments)")
    p.add_argument("--input-shape", metavar="B,C,H,W",
                   help="example input shape (default: channel_sparsity_args.input_shape)")


def _run_validate(args: argparse.Namespace) -> int:
    try:
        loaded = load_config(args.config)
        if loaded is None:
            return _error(f"no {CONFIG_FILENAME} in {args.config}; write one with "
                          f"'python -m torch_pruning.pat inspect --model {args.model} "
                          f"--write-config {args.config}'")
        section = loaded.config.channel_sparsity_args
        if args.input_shape:
            shapes = parse_input_shape(args.input_shape)
        elif section is not None and section.input_shape:
            shape = section.input_shape
            shapes = shape if isinstance(shape[0], list) else [shape]  # type: ignore[assignment]
        else:
            return _error("no input shape: pass --input-shape or set "
                          "channel_sparsity_args.input_shape")
        container = section.container if section is not None else None
        model = load_model(args.model)
        report = check_config(loaded, model, make_inputs(shapes, container, model=model),
                              inputs_field=("--input-shape" if args.input_shape
                                            else "channel_sparsity_args.input_shape"))
    except (ToolError, PruningConfigError) as e:
        return _error(str(e))
    sys.stdout.write(report.text())
    if not report.would_prune:
        for reason in report.nothing:
            sys.stderr.write(f"error: {reason}\n")
        return 1
    sys.stdout.write("OK: the config prunes the layers listed above.\n")
    return 0


def register(commands: Dict[str, tuple]) -> None:
    """Add ``inspect`` and ``validate`` to the CLI's command registry."""
    commands["inspect"] = ("list prunable layers (Conv2d, Linear, attention), dependency groups "
                           "and MACs; "
                           "--write-config writes a starter config", _setup_inspect, _run_inspect)
    commands["validate"] = ("dry-run a pruning_config.json on a model: what would be pruned",
                            _setup_validate, _run_validate)
