"""The ``Pruning`` facade: reads the config and wires both pruners into the user's loop.

It only wires: the pruners (:class:`~torch_pruning.pat.core.pruner.Pruner`), the config
write-back, the report and the optimizer carry live in their own packages.

Example (the five lines a training script adds)::

    from torch_pruning.utils import Pruning
    pruner = Pruning(model, output_dir, log=logger)
    ...  # per step:
    loss = loss + pruner.slice_regularize(model)
    loss.backward(); pruner.channel_regularize(model); optimizer.step()
    ...  # per epoch:
    pruner.prune(model, epoch, log=logger)
    if pruner.channel_pruner.reset_optimizer:
        optimizer = make_optimizer(model); pruner.channel_pruner.reset_optimizer = False
"""

from __future__ import annotations

import functools
import inspect
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .config.errors import PruningConfigError
from .config.io import CONFIG_FILENAME, ConfigSource, LoadedConfig, load_config, write_state
from .config.models import ChannelSparsityArgs
from .core.masks import MaskSet
from .core.pruner import InertPruner, Pruner
from .util.log import UserLog, emit
from .util.fsdp import is_sharded
from .util.model import model_device, to_device, unwrap_model

if TYPE_CHECKING:
    from .channel.pruner import ChannelPruner
    from .slice.pruner import SlicePruner
    from .tools.report import PruningReport

__all__ = ["Pruning", "normalize_forward_fn", "make_example_inputs"]

logger = logging.getLogger(__name__)

Inputs = Union[torch.Tensor, Sequence[torch.Tensor], Dict[str, torch.Tensor]]
ForwardFn = Callable[[nn.Module, Inputs], Any]


def _call_with(fn: Callable[..., Any], inputs: Inputs) -> Any:
    if isinstance(inputs, dict):
        return fn(**inputs)
    if isinstance(inputs, (list, tuple)):
        return fn(*inputs)
    return fn(inputs)


def normalize_forward_fn(forward_fn: Optional[Callable[..., Any]],
                         model: nn.Module) -> Optional[ForwardFn]:
    """Turn either accepted ``forward_fn`` form into upstream's ``fn(model, inputs)`` form.

    * the seed's form: a bound method of the model itself (``model.forward``), whatever its
      arity, or a function with a single parameter: it takes the inputs;
    * upstream's form: ``fn(model, example_inputs)``, e.g. to pick ``out["logits"]``.

    Example:
        >>> net = nn.Linear(2, 2)
        >>> fn = normalize_forward_fn(net.forward, net)
        >>> fn(net, torch.zeros(1, 2)).shape
        torch.Size([1, 2])
    """
    if forward_fn is None:
        return None
    owners = {id(model), id(unwrap_model(model))}
    if inspect.ismethod(forward_fn) and id(forward_fn.__self__) in owners:
        # re-bind to whichever model is run, so copies (e.g. for MAC counting) run themselves
        method = forward_fn.__func__
        return lambda m, inputs: _call_with(functools.partial(method, unwrap_model(m)), inputs)
    try:
        params = [p for p in inspect.signature(forward_fn).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
                  and p.default is p.empty]
        variadic = any(p.kind is p.VAR_POSITIONAL
                       for p in inspect.signature(forward_fn).parameters.values())
    except (TypeError, ValueError):  # builtins without a signature: assume upstream's form
        params, variadic = [None, None], False
    if len(params) == 1 and not variadic:
        return lambda _model, inputs: forward_fn(inputs)
    return forward_fn


def make_example_inputs(cfg: ChannelSparsityArgs, device: torch.device,
                        source: str = "") -> Inputs:
    """Dummy inputs from ``input_shape`` (one shape, or a list of shapes packed per ``container``).

    Example:
        >>> cfg = ChannelSparsityArgs(start_epoch=0, end_epoch=1, global_prune_rate=0.5,
        ...                           input_shape=[1, 3, 8, 8])
        >>> make_example_inputs(cfg, torch.device("cpu")).shape
        torch.Size([1, 3, 8, 8])
    """
    shape = cfg.input_shape
    if shape is None:
        raise PruningConfigError(
            "channel_sparsity_args.input_shape: required to trace the model's dependency graph "
            "when Pruning(...) gets no example_inputs; give e.g. [1, 3, 224, 224] or a list of "
            "shapes", source=source, field="channel_sparsity_args.input_shape")
    if isinstance(shape[0], list):
        tensors = [torch.randn(*s, device=device) for s in shape]
        return tuple(tensors) if cfg.container == "tuple" else tensors
    return torch.randn(*shape, device=device)


class Pruning:
    """Pruning-aware training for a model, configured by ``pruning_config.json``.

    Args:
        model: the model to prune (may be wrapped in DistributedDataParallel).
        config_folder: a folder holding ``pruning_config.json``, a path to a ``.json`` file, a
            dict, or a :class:`~torch_pruning.pat.config.models.PruningConfig`. No file: pruning is
            disabled with one log line and every call below is a no-op.
        forward_fn: how to run the model on the example inputs while tracing: the seed's
            ``model.forward`` or upstream's ``fn(model, inputs)``.
        log: an object with ``.info`` that receives the same lines as the
            ``torch_pruning.pat`` logger.
        device: where example inputs are made (default: the model's device).
        example_inputs: inputs for tracing; overrides ``input_shape`` from the config.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
        >>> pruner = Pruning(net, "/nonexistent-folder")   # no config: pruning disabled
        >>> float(pruner.slice_regularize(net))
        0.0
    """

    def __init__(self, model: nn.Module, config_folder: ConfigSource,
                 forward_fn: Optional[Callable[..., Any]] = None, log: Optional[UserLog] = None,
                 device: Optional[Union[str, torch.device]] = None,
                 example_inputs: Optional[Inputs] = None) -> None:
        self.log = log
        self.model = unwrap_model(model)
        self.example_inputs: Optional[Inputs] = None
        self._before: Optional[list] = None
        self.masks = MaskSet()
        self.channel_pruner: Union[ChannelPruner, InertPruner] = InertPruner()
        self.slice_pruner: Union[SlicePruner, InertPruner] = InertPruner()
        loaded = load_config(config_folder)
        self.config = loaded
        if loaded is None:
            where = Path(config_folder) if isinstance(config_folder, (str, Path)) else config_folder
            if isinstance(where, Path) and where.suffix != ".json":
                where = where / CONFIG_FILENAME
            emit(f"No pruning config at {where}: pruning is disabled.", log)
            return
        self.device = torch.device(device) if device is not None else model_device(model)
        source = str(loaded.path) if loaded.path else "<config>"
        try:
            self._build_pruners(model, loaded, forward_fn, example_inputs, source, log)
        except PruningConfigError as err:  # name the file in errors found against the model
            if err.source:
                raise
            raise PruningConfigError(str(err), source=source, field=err.field) from None
        if loaded.channel is None and loaded.slice is None:
            emit(f"{source}: both channel and slice pruning are off.", log)
        elif loaded.channel is not None and loaded.slice is not None \
                and loaded.channel.block_size % loaded.slice.block_size:
            emit(f"{source}: channel_sparsity_args.block_size ({loaded.channel.block_size}) is not "
                 f"a multiple of slice_sparsity_args.block_size ({loaded.slice.block_size}): "
                 "after channel pruning, layers whose filter counts do not fill whole slice "
                 "blocks are skipped by slice pruning; make it a multiple to slice-prune them.",
                 log, logging.WARNING, logger)

    def _build_pruners(self, model: nn.Module, loaded: LoadedConfig,
                       forward_fn: Optional[Callable[..., Any]],
                       example_inputs: Optional[Inputs], source: str,
                       log: Optional[UserLog]) -> None:
        if loaded.channel is not None:
            from .channel.pruner import ChannelPruner

            inputs = (to_device(example_inputs, self.device) if example_inputs is not None
                      else make_example_inputs(loaded.channel, self.device, source))
            self.example_inputs = inputs
            self.channel_pruner = ChannelPruner(
                model, loaded.channel, example_inputs=inputs,
                forward_fn=normalize_forward_fn(forward_fn, model), masks=self.masks,
                config_path=loaded.path,
                write_back=functools.partial(write_state, loaded.path, "channel_sparsity_args"),
                log=log, inputs_field=("example_inputs" if example_inputs is not None
                                       else "channel_sparsity_args.input_shape"))
        if loaded.slice is not None:
            from .slice.pruner import SlicePruner

            self.slice_pruner = SlicePruner(model, loaded.slice, masks=self.masks, log=log)

    @property
    def pruners(self) -> Tuple[Pruner, Pruner]:
        """The channel and the slice pruner (an :class:`InertPruner` for a disabled one)."""
        return self.channel_pruner, self.slice_pruner

    @property
    def enabled(self) -> bool:
        """True when at least one pruner is active."""
        return any(not isinstance(p, InertPruner) for p in self.pruners)

    def channel_regularize(self, model: nn.Module) -> None:
        """Add the channel group-lasso to the gradients; call after ``loss.backward()``."""
        self.channel_pruner.regularize(model)

    def slice_regularize(self, model: nn.Module) -> torch.Tensor:
        """The slice penalty to add to the loss (a 0 tensor on the model's device when off)."""
        penalty = self.slice_pruner.regularize(model)
        if penalty is None:
            return torch.zeros((), device=model_device(model))
        return penalty

    def prune(self, model: nn.Module, epoch: int, log: Optional[UserLog] = None) -> None:
        """Run the epoch-end pruning step of both pruners (masking, or physical removal)."""
        log = log if log is not None else self.log
        self._capture_before()
        was_reached = self.channel_pruner.reached_target
        self.channel_pruner.prune(model, epoch, log=log)
        self.slice_pruner.prune(model, epoch, log=log)
        if self.channel_pruner.reached_target and not was_reached and self._before is not None \
                and self.config is not None and self.config.path is not None:
            self.report().save(self.config.path.parent, log=log)

    def _capture_before(self) -> None:
        """Record the report's "before" rows while the model still has its original shapes.

        Masks do not change shapes, so any time before the first physical removal will do:
        the first ``prune()`` (or ``report()``), not construction, which stays cheap.
        """
        if self._before is None and self.example_inputs is not None \
                and not self.channel_pruner.reached_target:
            if is_sharded(self.model):  # counting copies the model, which FSDP2 forbids
                emit("the pruning report's 'before' rows need the model before fully_shard: "
                     "call pruner.report() once before sharding", level=logging.DEBUG,
                     logger=logger)
                return
            from .tools.report import layer_stats

            self._before = layer_stats(self.model, self.example_inputs)

    def carry_optimizer_state(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        """Keep ``optimizer`` (and its momentum/Adam moments) after a physical removal.

        An alternative to re-creating the optimizer when ``channel_pruner.reset_optimizer`` is
        true: the optimizer is pointed at the reduced parameters and its per-parameter state
        is sliced to the surviving channels, so training continues as on the masked model.

        Example:
            >>> if pruner.channel_pruner.reset_optimizer:             # doctest: +SKIP
            ...     optimizer = pruner.carry_optimizer_state(optimizer)
            ...     pruner.channel_pruner.reset_optimizer = False
        """
        from .checkpoint.optimizer import carry_optimizer_state

        replaced = self.channel_pruner.replaced_params
        if not replaced:
            raise RuntimeError("no channels were physically removed yet: there is no optimizer "
                               "state to carry (call this when channel_pruner.reset_optimizer "
                               "is true)")
        carry_optimizer_state(optimizer, replaced)
        return optimizer

    def report(self) -> "PruningReport":
        """The pruning report: per layer channels, MACs and params before/after, slice sparsity.

        Saved as ``pruning_report.txt`` and ``.png`` beside the config when the MAC target is
        met; call ``pruner.report().save(folder)`` or ``.text()`` any time.

        Example:
            >>> print(pruner.report().text())  # doctest: +SKIP
        """
        from .tools.report import PruningReport, layer_stats

        self._capture_before()
        if self.example_inputs is None or self._before is None:
            raise RuntimeError(
                "the pruning report needs the channel pruner's example inputs from the start of "
                "the run: enable channel_sparsity_args (with input_shape, or pass example_inputs "
                "to Pruning) before any channel was removed")
        after = layer_stats(self.model, self.example_inputs, self.masks)  # masked = removed
        sparsity = self.slice_pruner.sparsity()
        return PruningReport(self._before, after, sparsity)

    def state_dict(self) -> Dict[str, Any]:
        """The pruners' state, to save in a training checkpoint beside the model.

        Example:
            >>> torch.save({"model": model.state_dict(), "pruner": pruner.state_dict()}, f)  # doctest: +SKIP
        """
        return {"channel": self.channel_pruner.state_dict(),
                "slice": self.slice_pruner.state_dict()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore the state saved by :meth:`state_dict` (load the model weights first)."""
        self.channel_pruner.load_state_dict(state.get("channel", {}))
        self.slice_pruner.load_state_dict(state.get("slice", {}))
