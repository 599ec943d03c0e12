"""How channel L2 norms shrink over a regularization run, and when to start pruning.

``python analyze.py RUN_DIR`` (or ``python -m torch_pruning.pat analyze RUN_DIR``) reads the
run's checkpoints in epoch order, computes one L2 norm per prunable channel, counts the
channels below a threshold per checkpoint, suggests the first epoch where that fraction reaches
the target rate, and draws one picture of the norm histograms across epochs.

A channel norm is the L2 norm of a conv output filter (without ``--model``) or of a channel of a
dependency group of ``--model`` over every parameter coupled to it; :mod:`.analyze_norms`
defines both.

The default threshold is 10% of the median channel norm of the earliest checkpoint; the target
rate is ``--rate``, or with a config the channels that must go to meet its ``mac_target``
(``1 - sqrt(mac_target)``: pruning a fraction r of every layer's channels leaves about
``(1 - r)^2`` of the MACs), or without a MAC target its ``global_prune_rate``. The suggested
epoch is the first checkpoint whose fraction of channels below the threshold is >= the rate.

This module holds the analysis and the command; the pieces live in their own modules and are
re-exported here: :mod:`.analyze_checkpoints` (finding and reading checkpoints),
:mod:`.analyze_norms` (the norms) and :mod:`.analyze_plots` (the picture).
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import numpy as np
import torch
from torch import nn

from ..config.errors import PruningConfigError
from ..config.io import ConfigSource, LoadedConfig, load_config
from .analyze_checkpoints import AnalyzeError, Checkpoint, find_checkpoints, load_weights
from .analyze_norms import GroupNorms, conv_channel_norms
from .analyze_plots import plot_analysis
from .model_factory import ToolError, load_model, make_inputs, parse_input_shape

__all__ = ["RunAnalysis", "analyze_run", "format_table", "main", "register"]

logger = logging.getLogger(__name__)

DEFAULT_THRESHOLD_FRACTION = 0.1


@dataclass
class RunAnalysis:
    """Norms per checkpoint, counts below the threshold and the suggested start epoch."""

    run_dir: Path
    checkpoints: List[Checkpoint]
    norms: List[np.ndarray]
    layers: List[str]
    threshold: float
    threshold_note: str
    rate: Optional[float]
    rate_note: str
    mode: str
    suggested: Optional[int] = None  # index into checkpoints
    suggestion: str = ""
    small: List[int] = field(default_factory=list)

    @property
    def totals(self) -> List[int]:
        """Channels per checkpoint."""
        return [len(n) for n in self.norms]

    @property
    def fractions(self) -> List[float]:
        """Fraction of channels below the threshold, per checkpoint."""
        return [s / t if t else 0.0 for s, t in zip(self.small, self.totals)]

    @property
    def suggested_epoch(self) -> Optional[int]:
        """The suggested ``start_epoch``, or None."""
        return None if self.suggested is None else self.checkpoints[self.suggested].epoch


def _rate_from(rate: Optional[float], loaded: Optional[LoadedConfig]) -> tuple:
    if rate is not None:
        return rate, "--rate"
    section = loaded.config.channel_sparsity_args if loaded else None
    where = loaded.path if loaded and loaded.path else "the config"
    if section is not None and section.mac_target > 0:
        # the channels that must go to meet the MAC target: removing a fraction r of the
        # channels of every layer leaves about (1 - r)^2 of the MACs
        rate = round(1.0 - section.mac_target ** 0.5, 4)
        return rate, f"to reach mac_target {section.mac_target:g} in {where}, 1 - sqrt(mac_target)"
    if section is not None and section.global_prune_rate > 0:
        return section.global_prune_rate, f"global_prune_rate in {where}"
    return None, ""


def _suggest(result: RunAnalysis) -> None:
    rate, thr = result.rate, result.threshold
    if rate is None:
        result.suggestion = ("No suggestion: no target rate; pass --rate or a config with "
                             "channel_sparsity_args.mac_target or global_prune_rate.")
        return
    fr = result.fractions
    for i, f in enumerate(fr):
        if f >= rate - 1e-12:
            ck = result.checkpoints[i]
            before = (f" (epoch {result.checkpoints[i - 1].epoch}: {fr[i - 1]:.1%})" if i else
                      " (already at the first checkpoint)")
            result.suggested = i
            result.suggestion = (
                f"Suggested start_epoch: {ck.epoch}. It is the first checkpoint where at least "
                f"{rate:.0%} of the channels (target rate, {result.rate_note}) have an L2 norm "
                f"below {thr:.3g}: {result.small[i]}/{result.totals[i]} = {f:.1%}{before}.")
            return
    best = int(np.argmax(fr))
    result.suggestion = (
        f"No checkpoint reaches the target: {rate:.0%} of the channels ({result.rate_note}) "
        f"below {thr:.3g}; the most is {fr[best]:.1%} at epoch {result.checkpoints[best].epoch}. "
        "Regularize longer or harder (regularize.reg), or raise --threshold.")


def analyze_run(run_dir: Union[str, Path], *, config: ConfigSource = None,
                model: Optional[nn.Module] = None, example_inputs: Any = None,
                threshold: Optional[float] = None, rate: Optional[float] = None,
                progress: bool = True) -> RunAnalysis:
    """Analyze the checkpoints of ``run_dir`` (see the module docs for the rules).

    ``config`` defaults to ``run_dir``'s ``pruning_config.json`` when there is one. With
    ``model`` (and ``example_inputs``, default from the config's ``input_shape``) norms are
    per dependency group; without, per conv output filter.

    Example:
        >>> result = analyze_run("runs/digits", rate=0.5)          # doctest: +SKIP
        >>> result.suggested_epoch, result.suggestion              # doctest: +SKIP
    """
    from tqdm import tqdm

    checkpoints = find_checkpoints(run_dir)
    loaded = load_config(config if config is not None else run_dir)
    if loaded is None and config is not None:
        raise AnalyzeError(f"--config {config}: no such config file")
    section = loaded.config.channel_sparsity_args if loaded else None
    layers = section.layers if section is not None else "all"
    group_norms = None
    if model is not None:
        if example_inputs is None:
            if section is None or not section.input_shape:
                raise AnalyzeError("--model needs an input shape: pass --input-shape or set "
                                   "channel_sparsity_args.input_shape in the config")
            shape = section.input_shape
            example_inputs = make_inputs(shape if isinstance(shape[0], list) else [shape],
                                         section.container)
        group_norms = GroupNorms(model, example_inputs, layers)
    norms, names = [], []
    with tqdm(checkpoints, desc="checkpoints", unit="ckpt", disable=not progress,
              file=sys.stderr) as bar:  # closed (newline) before an error is reported
        for ck in bar:
            weights = load_weights(ck.path)
            per_layer = (group_norms(weights, str(ck.path)) if group_norms is not None else
                         conv_channel_norms(weights, None if layers == "all" else layers,
                                            str(ck.path)))
            names = names or list(per_layer)
            norms.append(torch.cat(list(per_layer.values())).double().numpy())
    rate, rate_note = _rate_from(rate, loaded)
    if threshold is None:
        first = norms[0][np.isfinite(norms[0])]
        threshold = DEFAULT_THRESHOLD_FRACTION * float(np.median(first)) if first.size else 0.0
        note = (f"{DEFAULT_THRESHOLD_FRACTION:.0%} of the median channel norm at epoch "
                f"{checkpoints[0].epoch}; set it with --threshold")
    else:
        note = "from --threshold"
    result = RunAnalysis(
        run_dir=Path(run_dir), checkpoints=checkpoints, norms=norms, layers=names,
        threshold=threshold, threshold_note=note, rate=rate, rate_note=rate_note,
        mode="dependency groups of --model" if group_norms is not None else "conv output filters")
    result.small = [int(np.sum(n < threshold)) for n in norms]
    _suggest(result)
    logger.info("%s: %s", run_dir, result.suggestion)
    return result


def format_table(result: RunAnalysis) -> str:
    """The per-checkpoint table the CLI prints, ending with the suggestion."""
    width = max(len(c.path.name) for c in result.checkpoints)
    n_layers = len(result.layers)
    lines = [f"Channel L2 norms in {result.run_dir} ({len(result.checkpoints)} checkpoints; "
             f"{result.mode}: {n_layers} layer(s))",
             f"threshold {result.threshold:.4g} ({result.threshold_note})"
             + (f"; target rate {result.rate:.0%} ({result.rate_note})" if result.rate else ""),
             "",
             f"{'epoch':>6}  {'checkpoint':<{width}}  {'below threshold':>16}  {'fraction':>8}"]
    for i, ck in enumerate(result.checkpoints):
        mark = "  <- suggested start" if i == result.suggested else ""
        if i and result.totals[i] != result.totals[i - 1]:
            mark += (f"  (channel count {result.totals[i - 1]} -> {result.totals[i]}: "
                     "channels were removed)")
        lines.append(f"{ck.epoch:>6}  {ck.path.name:<{width}}  "
                     f"{result.small[i]:>7} / {result.totals[i]:<6}  "
                     f"{100 * result.fractions[i]:>7.1f}%{mark}")
    lines += ["", result.suggestion]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- command line
def _setup(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR", help="folder with the run's checkpoints "
                   "(epoch_003.pt, checkpoint_epoch3.pth, ckpt-3.pt, model_3.pth, ...)")
    p.add_argument("--config", help="pruning_config.json or its folder (default: the one in "
                                    "RUN_DIR, if any): selects layers and the target rate")
    p.add_argument("--model", metavar="MODULE:FACTORY",
                   help="measure dependency groups of this model (e.g. "
                        "torchvision.models:resnet18) instead of single conv filters")
    p.add_argument("--input-shape", metavar="B,C,H,W",
                   help="example input for --model (default: the config's input_shape)")
    p.add_argument("--threshold", type=float,
                   help="L2 norm below which a channel counts as small (default: 10%% of the "
                        "median norm of the first checkpoint)")
    p.add_argument("--rate", type=float, help="target fraction of small channels (default: from "
                                              "the config's mac_target, else its "
                                              "global_prune_rate)")
    p.add_argument("--out", help="picture to write (default: RUN_DIR/channel_norms.png)")


def _run(args: argparse.Namespace) -> int:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        if args.threshold is not None and not args.threshold > 0:
            raise AnalyzeError(f"--threshold must be > 0, got {args.threshold}")
        if args.rate is not None and not 0 < args.rate <= 1:
            raise AnalyzeError(f"--rate must be in (0, 1], got {args.rate}")
        model = load_model(args.model) if args.model else None
        inputs = make_inputs(parse_input_shape(args.input_shape)) if args.input_shape else None
        result = analyze_run(args.run_dir, config=args.config, model=model,
                             example_inputs=inputs, threshold=args.threshold, rate=args.rate)
        out = Path(args.out) if args.out else Path(args.run_dir) / "channel_norms.png"
        path = plot_analysis(result, out)
    except (ToolError, PruningConfigError) as e:
        sys.stderr.write(f"error: {e}\n")
        return 2
    sys.stdout.write(format_table(result))
    sys.stdout.write(f"Picture: {path}\n")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``analyze.py``; returns the exit code (2 with a message on errors)."""
    parser = argparse.ArgumentParser(
        prog="analyze.py", description="Plot per-channel L2 norms across a run's checkpoints, "
        "count small channels and suggest the epoch to start pruning.")
    _setup(parser)
    return _run(parser.parse_args(argv))


def register(commands: Dict[str, tuple]) -> None:
    """Add ``analyze`` to the CLI's command registry."""
    commands["analyze"] = ("plot channel L2 norms across a run's checkpoints and suggest when "
                           "to start pruning", _setup, _run)
