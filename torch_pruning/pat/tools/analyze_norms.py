"""Per-channel L2 norms of a checkpoint's weights, as ``analyze.py`` measures them.

What a "channel norm" is:

* :func:`conv_channel_norms` (``analyze.py`` without ``--model``): the L2 norm of each output
  filter of every 4-D weight (Conv2d) in the checkpoint, or of the convs the config's
  ``layers`` names;
* :class:`GroupNorms` (with ``--model module:factory``): the L2 norm of each channel of each
  dependency group of the selected convs, over every parameter coupled to it (conv filter and
  bias, norm-layer affine parameters, the consumers' input slices), as upstream's
  ``GroupMagnitudeImportance(p=2, group_reduction="sum", bias=True)`` sums it, then
  square-rooted.

Example:
    >>> w = torch.ones(3, 2, 1, 1)
    >>> conv_channel_norms({"conv.weight": w})["conv"]
    tensor([1.4142, 1.4142, 1.4142])
"""

from __future__ import annotations

import difflib
import logging
from typing import Any, Dict, Mapping, Optional, Sequence, Union

import torch
from torch import nn

from ..channel.grouping import resolve_layers
from ..core.masks import strip_module_prefix
from .analyze_checkpoints import AnalyzeError
from .summary import conv_dependency_groups

__all__ = ["conv_channel_norms", "GroupNorms"]

logger = logging.getLogger(__name__)


def conv_channel_norms(weights: Mapping[str, torch.Tensor],
                       layers: Optional[Sequence[str]] = None,
                       source: str = "") -> Dict[str, torch.Tensor]:
    """Per output channel L2 norms of the 4-D (Conv2d) weights, by layer name.

    Example:
        >>> w = torch.zeros(2, 1, 1, 1); w[1] = 3.0
        >>> conv_channel_norms({"conv.weight": w})
        {'conv': tensor([0., 3.])}
    """
    convs = {k[:-len(".weight")]: v for k, v in weights.items()
             if k.endswith(".weight") and v.dim() == 4}
    if layers is not None:
        missing = [strip_module_prefix(n) for n in layers if strip_module_prefix(n) not in convs]
        if missing:
            hints = []
            for n in missing:
                close = difflib.get_close_matches(n, list(convs), n=3, cutoff=0.5)
                hints.append(f"'{n}'" + (f" (close matches: {', '.join(close)})" if close else ""))
            raise AnalyzeError(f"{source}: no 4-D conv weight for the configured layer(s) "
                               f"{', '.join(hints)}")
        convs = {strip_module_prefix(n): convs[strip_module_prefix(n)] for n in layers}
    if not convs:
        raise AnalyzeError(f"{source}: no 4-D conv weights in the checkpoint")
    return {name: w.detach().float().flatten(1).norm(dim=1) for name, w in convs.items()}


class GroupNorms:
    """Group L2 norms of the output channels of the channel pruner's groups of ``layers``
    (resolved and grouped by the pruner's own code: a config ``Pruning`` accepts, analyze reads).

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1))
        >>> norms = GroupNorms(net, torch.randn(1, 1, 8, 8))
        >>> norms(net.state_dict())["0"].shape
        torch.Size([4])
    """

    def __init__(self, model: nn.Module, example_inputs: Any,
                 layers: Union[str, Sequence[str]] = "all") -> None:
        import torch_pruning as tp

        self.model = model.eval()
        # the channel pruner's resolver: the same names are accepted, the same errors raised
        convs = None if layers == "all" else [m for _, m in resolve_layers(model, layers)]
        self.groups = [(g, group) for g, group in conv_dependency_groups(model, example_inputs, convs)
                       if g.prunable]
        if not self.groups:
            raise AnalyzeError("no prunable dependency group among the selected convs")
        self._importance = tp.importance.GroupMagnitudeImportance(
            p=2, group_reduction="sum", normalizer=None, bias=True)

    @torch.no_grad()
    def __call__(self, weights: Mapping[str, torch.Tensor], source: str = "") -> Dict[str, torch.Tensor]:
        """Load ``weights`` into the model and return the norms per group (keyed by source conv)."""
        try:
            missing, _ = self.model.load_state_dict(dict(weights), strict=False)
        except RuntimeError as e:
            raise AnalyzeError(f"{source}: the weights do not fit --model: "
                               f"{str(e).splitlines()[-1].strip()}") from e
        params = {n for n, _ in self.model.named_parameters()}
        missing = [k for k in missing if k in params]
        if missing:
            raise AnalyzeError(f"{source}: lacks {len(missing)} parameters of --model, e.g. "
                               f"{', '.join(missing[:3])}; was it saved from another model?")
        return {g.members[0]: self._importance(group).clamp_min(0).sqrt()
                for g, group in self.groups}
