"""The channel pruner: grouped importance, regularization, exact masks, MAC target, removal.

The :class:`~torch_pruning.pat.facade.Pruning` facade builds one :class:`ChannelPruner` from
``channel_sparsity_args`` and calls it from the user's loop::

    loss.backward(); pruner.channel_regularize(model); optimizer.step()   # every step
    pruner.prune(model, epoch, log=logger)                                # every epoch end
    if pruner.channel_pruner.reset_optimizer: ...                         # after removal

Lifecycle: *masking* (each scheduled epoch, the lowest-importance channels of each group are
masked — zero in every coupled parameter, kept zero by :class:`~torch_pruning.pat.core.masks.MaskSet`)
until the MACs of the masked model are at most ``mac_target`` of the original; then the state is
handed to ``write_back`` (the facade writes it to the config file) and, with ``prune_at_target``, the masked channels are removed
physically through upstream's group pruning. After that ``prune()`` only logs the summary.

Under FSDP2 (``fully_shard`` applied after the pruner was built) rankings read the whole
weights, all-gathered for the moment of ranking (:func:`~..util.fsdp.gathered_parameters`),
masks are applied to each rank's shard, and a physical removal first gathers the model into
plain parameters and removes ``fully_shard`` (:func:`~..util.fsdp.unshard_model`): the user
shards the reduced model again before re-creating the optimizer (docs/distributed.md).

Example:
    >>> masks = MaskSet()
    >>> pruner = ChannelPruner(model, cfg, example_inputs=torch.randn(1, 3, 32, 32),
    ...                        masks=masks)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import torch
import torch.distributed as dist
from torch import nn

from ..config.models import ChannelSparsityArgs, PruningMethod
from ..core.cost import CostModel, RemovalPlan
from ..core.hf import sync_hf_config
from ..core.latency import LatencyCost, load_or_measure
from ..core.macs import MacCounter
from ..core.masks import MaskSet
from ..util.fsdp import gathered_parameters, is_sharded, unshard_model
from ..util.log import UserLog, emit, human_count
from ..util.model import unwrap_model
from .group import keep_masks, removal_plan
from .grouping import log_groups, select_groups
from .importance import make_importance
from .progress import ProgressWatch, finished_config_mismatch, stored_macs
from .ranking import SelectionRules, fill_to_target, select_units, with_dead_units
from .stages import is_intermediate, levels, mark_original_units, original_widths, stage_schedule
from .regularizer import ChannelRegularizer
from .subnormal import SPENT_EVERY, SpentZeroing
from .tracing import build_graph

__all__ = ["ChannelPruner"]


def _may_be_sharded() -> bool:
    """Whether the user may shard the model after construction: FSDP2 needs a process group,
    and a sharded model cannot be copied, so the MAC counter (which copies it) is built at
    construction then; otherwise on first use, keeping construction close to a graph build."""
    return dist.is_available() and dist.is_initialized()


logger = logging.getLogger(__name__)

SECTION = "channel_sparsity_args"
LAYER = "channel"
_Plan = Dict[int, torch.Tensor]
#: Called with the state fields to write back to the config file once the target is met.
WriteBack = Callable[[Mapping[str, Any]], Any]


class ChannelPruner:
    """Prunes the channels of dependency groups to a MAC budget during training.

    Implements :class:`~torch_pruning.pat.core.pruner.Pruner`.

    Args:
        model: the model (DDP/DataParallel wrappers are unwrapped).
        cfg: the validated ``channel_sparsity_args``.
        example_inputs: inputs for tracing and MAC counting (tensor, list/tuple or dict).
        forward_fn: upstream-form ``fn(model, inputs)`` to run the model, or None.
        masks: the shared :class:`MaskSet`; this pruner owns its ``"channel"`` layer.
        config_path: the ``pruning_config.json`` the run uses (named in messages; the latency
            table is cached beside it).
        write_back: called with ``{"reach_mac_target": True, "log_str": summary}`` when the
            target is met (the facade writes them into ``config_path``); may raise OSError.
        log: a user log receiving the same lines as the ``torch_pruning.pat`` logger.
        inputs_field: where ``example_inputs`` came from, named when the model cannot run on
            them (``channel_sparsity_args.input_shape``, or ``example_inputs`` of Pruning).

    Attributes:
        reset_optimizer: set True after a physical removal; the user re-creates the optimizer
            and sets it back to False.
        reached_target: True once the target is met (or the config says it was).
        replaced_params: after a physical removal, old Parameter -> (new Parameter, kept
            indices per dim), for ``carry_optimizer_state``.

    Example:
        >>> cfg = ChannelSparsityArgs(start_epoch=0, end_epoch=4, global_prune_rate=0.8,
        ...                           mac_target=0.5)
        >>> pruner = ChannelPruner(model, cfg, example_inputs=torch.randn(1, 3, 32, 32),
        ...                        masks=MaskSet())  # doctest: +SKIP
        >>> pruner.prune(model, 0); pruner.macs() < pruner.base_macs  # doctest: +SKIP
        True
    """

    enabled = True

    def __init__(self, model: nn.Module, cfg: ChannelSparsityArgs, *, example_inputs: Any,
                 forward_fn: Optional[Callable[[nn.Module, Any], Any]] = None, masks: MaskSet,
                 config_path: Optional[Path] = None, write_back: Optional[WriteBack] = None,
                 log: Optional[UserLog] = None,
                 inputs_field: str = "example_inputs") -> None:
        self.cfg = cfg
        self.inputs_field = inputs_field
        self.write_back = write_back
        self.masks = masks
        self.config_path = Path(config_path) if config_path is not None else None
        self.log = log
        self.example_inputs = example_inputs
        self.forward_fn = forward_fn
        self._stage = 0  # intermediate removals done (``stages``)
        self.schedule = stage_schedule(cfg, 0)
        self._widths: Dict[str, int] = {}  # units per group before any removal
        self.rules = SelectionRules(cfg.block_size, cfg.max_pruning_rate, cfg.global_pruning,
                                    cfg.isomorphic)
        self.reset_optimizer = False
        self.reached_target = bool(cfg.reach_mac_target)
        self.groups: list = []
        self.regularizer: Optional[ChannelRegularizer] = None
        self.replaced_params: Dict[Any, Any] = {}
        self._model = unwrap_model(model)
        if is_sharded(self._model):
            raise RuntimeError(
                "Pruning(...) was given a model sharded with fully_shard: build it on the whole "
                "model before sharding (tracing and MAC counting copy the model, which FSDP2 "
                "forbids); see docs/distributed.md")
        self._summary = cfg.log_str
        self._pruned: _Plan = {}
        self._ratio = 0.0
        self._last_epoch: Optional[int] = None
        self._next_epoch = 0  # the epoch the next training step belongs to
        self._focus_epoch: Optional[int] = None  # the epoch the regularizer was focused for
        self._removed = False
        self._base: Optional[Tuple[float, int]] = None
        self._source = str(self.config_path) if self.config_path else "<config>"
        self._watch = ProgressWatch()
        self._finished_in_config = self.reached_target  # checked against the model at prune()
        self._summary_logged = False
        self._measured: Optional[Tuple[Tuple[Any, ...], float]] = None  # (shapes, MACs)
        self._spent = SpentZeroing()  # spent channels held at exact zero (CPU; .subnormal)
        self._steps_in_epoch = 0
        if self.reached_target:
            emit(f"{self._source}: reach_mac_target is true, so channel pruning is finished: "
                 "the model should have the reduced shapes (loaded with "
                 "load_state_dict_pruned); prune() checks its MACs against the stored result "
                 "once, then logs one line per epoch.", log, logger=logger)
            if _may_be_sharded():
                self.macs()  # counting copies the model: now, before any fully_shard
            return
        self._build(self._model, announce=cfg.verbose >= 1)
        if self.groups and _may_be_sharded():
            _ = self.counter  # it copies the model: now, before any fully_shard
        if cfg.cost == "latency" and self.groups:
            _ = self.cost_model  # time the layers now, on the model as given (unpruned)

    # ------------------------------------------------------------------ construction
    def _build(self, model: nn.Module, announce: bool, rebuild: bool = False) -> None:
        """Trace ``model`` and select its groups; ``rebuild`` (after a physical removal) keeps
        the warnings already given at construction out of the log (debug level)."""
        cfg = self.cfg
        warn = logging.DEBUG if rebuild else logging.WARNING
        self.graph = build_graph(model, self.example_inputs, self.forward_fn,
                                 source=self._source, inputs_field=self.inputs_field)
        groups = select_groups(model, self.graph, cfg.layers, source=self._source,
                               log=self.log if announce else None, quiet=rebuild)
        self._counter: Optional[MacCounter] = None  # built on first use (it traces once more)
        needs_costs = cfg.regularize.mac_reg > 0 or (
            cfg.pruning_method == PruningMethod.MAC_AWARE and cfg.MAC_params.use_macs)
        self._cost_model: Optional[CostModel] = None  # MacCounter, or LatencyCost
        cost = {g.root: self.cost_model.cost(dep.target.module for _, dep, _, _ in g.items)
                for g in groups} if needs_costs else {}
        self.importance = make_importance(cfg.pruning_method, costs=cost, params=cfg.MAC_params)
        accepts = getattr(self.importance, "accepts", None)
        unranked = [g.source for g in groups  # accepts reads the members only
                    if not (accepts(g.members) if accepts
                            else self.importance(g.group) is not None)]
        if unranked:
            emit(f"{cfg.pruning_method.value} cannot rank these groups (no layer it scores); "
                 f"they are not pruned: {unranked}", self.log, warn, logger)
        self.groups = [g for g in groups if g.source not in unranked]
        for number, g in enumerate(self.groups, 1):
            g.number = number
        if not self._widths:
            self._widths = original_widths(self.groups)
        mark_original_units(self.groups, self._widths)
        if announce:
            log_groups(self.groups, self.log)
        if not self.groups:
            emit(f"{SECTION}.layers selects no prunable group: channel pruning does nothing.",
                 self.log, warn, logger)
        self._pruned = {g.number: torch.zeros(g.units, dtype=torch.bool) for g in self.groups}
        reg = cfg.regularize
        self.regularizer = None
        self._spent.clear()
        if not cfg.infer and (reg.reg > 0 or reg.mac_reg > 0):
            self.regularizer = ChannelRegularizer(
                self.groups, cfg.pruning_method, reg=reg.reg, mac_reg=reg.mac_reg,
                gamma=reg.gamma, costs={g.number: cost.get(g.root, 0.0) for g in self.groups})

    @property
    def counter(self) -> MacCounter:
        """The MAC counter of the model in its current shapes (built on first use)."""
        if self._counter is None:
            self._counter = MacCounter(self._model, self.example_inputs, self.forward_fn)
            if self._base is None:
                self._base = (self._counter.base_macs, self._counter.base_params)
        return self._counter

    # ------------------------------------------------------------------ per step
    def regularize(self, model: nn.Module) -> None:
        """Add the channel penalty's gradient; call after ``loss.backward()``.

        A no-op with ``infer``, with ``reg == mac_reg == 0``, before ``regularize.begin_epoch``
        and once the target is reached.
        """
        if (self.reached_target or self.regularizer is None
                or self._next_epoch < self.cfg.regularize.begin_epoch):
            return
        if self._focus_epoch != self._next_epoch:
            self._refocus()
        self.regularizer.apply(self._pruned)
        if self._steps_in_epoch % SPENT_EVERY == 0:
            self._spent.set(self.regularizer.spent())
        self._steps_in_epoch += 1

    @property
    def next_epoch(self) -> int:
        """The epoch the next training step belongs to (one past the last ``prune()`` call)."""
        return self._next_epoch

    def _refocus(self) -> None:
        """Point the regularizer at this epoch's channels and strength (``regularize.target``
        and ``regularize.growth``); computed from the weights at the epoch's start."""
        reg, epoch = self.cfg.regularize, self._next_epoch
        self._focus_epoch = epoch
        scale = 1.0
        if reg.growth == "linear":
            begin = min(reg.begin_epoch, self.cfg.start_epoch)
            scale = min(1.0, (epoch - begin + 1) / (self.cfg.start_epoch - begin + 1))
        with gathered_parameters(self._model):
            focus = self._final_plan() if reg.target == "pruned" else None
        if focus is not None or scale != self.regularizer.scale:
            self.regularizer.focus_on(focus, scale)

    # ------------------------------------------------------------------ per epoch
    def prune(self, model: nn.Module, epoch: int, log: Optional[UserLog] = None) -> None:
        """Epoch-end step: mask more channels on schedule, finish at the target."""
        log = log if log is not None else self.log
        self._end_epoch(epoch)
        if self.reached_target:
            self._log_finished(epoch, log)
            return
        if not self.groups:
            return
        if self.cfg.prune_channels_at_init or self.cfg.infer:
            self._one_shot(model, epoch, log)
            return
        if not self.schedule.is_step(epoch) or (self._last_epoch is not None
                                               and epoch <= self._last_epoch):
            return
        with gathered_parameters(self._model):  # whole weights for ranking (FSDP2)
            plan, ratio, met = self._scheduled_plan(epoch)
            reached = met or (self.cfg.mac_target == 0 and self.schedule.is_last_step(epoch))
            plan, reached = self._agree(plan, reached)
            if not reached:
                self._watch_progress(plan, ratio, epoch, log)
        self._commit(plan, ratio, epoch, log)
        if reached:
            self._finish(model, epoch, log, physical=self.cfg.prune_at_target)
        elif is_intermediate(self.cfg, self._stage) and self.schedule.is_last_step(epoch):
            self._end_stage(model, epoch, log)
        elif self.schedule.is_last_step(epoch):
            emit(f"Channel pruning schedule ended at epoch {epoch} with MACs at "
                 f"{self._cost(self._pruned) / self.base_cost:.2%} of the original, above "
                 f"mac_target {self.cfg.mac_target:.2%}: raise {SECTION}.global_prune_rate or "
                 "call channel_pruner.remove_masked_channels(model).", log, logging.WARNING,
                 logger)

    def _end_epoch(self, epoch: int) -> None:
        """The bookkeeping of every epoch end: the next epoch's number, and the penalty ranked
        afresh (resumable bit for bit)."""
        self._next_epoch = epoch + 1
        if self.regularizer is not None:
            self.regularizer.restart()
            self._spent.clear()
            self._steps_in_epoch = 0

    def _log_finished(self, epoch: int, log: Optional[UserLog]) -> None:
        """After the target: the stored summary once (a restarted job), a loud warning once when
        the config says finished but the model has more MACs than the stored result, then one
        short line per epoch with the MACs measured on the model as it is."""
        macs = self.macs()
        if not self._summary_logged:
            self._summary_logged = True
            if self._summary:
                emit(self._summary, log, logger=logger)
            if self._finished_in_config:
                msg = finished_config_mismatch(self.cfg, macs, self._source)
                if msg:
                    emit(msg, log, logging.WARNING, logger)
        base = self._base[0] if self._base is not None else (stored_macs(self._summary) or
                                                              (None,))[0]
        masked = bool(self.groups) and not self._removed and any(
            bool(p.any()) for p in self._pruned.values())
        share = f" ({macs / base:.2%} of the original {human_count(base)})" if base else ""
        how = (", masked channels counted as removed (prune_at_target is false)" if masked
               else ", measured on the model")
        emit(f"Channel pruning done (epoch {epoch}): MACs {human_count(macs)}{share}{how}.",
             log, logger=logger)

    def _one_shot(self, model: nn.Module, epoch: int, log: Optional[UserLog]) -> None:
        with gathered_parameters(self._model):
            plan, ratio, met = self._select(self.cfg.global_prune_rate)
            if self.cfg.infer:  # channels training zeroed are dead weight whatever the target says
                plan = with_dead_units(self.groups, plan)
                met = met or self._cost(plan) <= self.cfg.mac_target * self.base_cost
        if self.cfg.mac_target > 0 and not met:
            emit(f"global_prune_rate {ratio} leaves MACs above mac_target "
                 f"{self.cfg.mac_target}; pruning to the rate.", log, logging.WARNING, logger)
        plan, _ = self._agree(plan, True)
        self._commit(plan, ratio, epoch, log)
        self._finish(model, epoch, log, physical=True)

    def _watch_progress(self, plan: _Plan, ratio: float, epoch: int,
                        log: Optional[UserLog]) -> None:
        """Warn once if the target is out of reach, once if a step masks nothing."""
        for msg in self._watch.check(epoch, ratio, plan, self._pruned, self.groups, self.rules,
                                     self.cfg, scores=self._scores,
                                     macs=lambda p: self._cost(p) / self.base_cost):
            emit(msg, log, logging.WARNING, logger)

    # ------------------------------------------------------------------ selection helpers
    def _scores(self) -> Dict[int, torch.Tensor]:
        scores = {}
        for g in self.groups:
            s = self.importance(g.group)
            s = s.detach().float().cpu() if s is not None else torch.zeros(g.channels)
            scores[g.number] = g.unit_mean(s)
        return scores

    def _channels(self, plan: _Plan) -> _Plan:
        return {g.number: g.expand_units(plan[g.number]) for g in self.groups}

    def _select(self, ratio: float, level: Optional[float] = None
                ) -> Tuple[_Plan, float, bool]:
        """The plan at ``ratio`` and whether it meets the MAC target; a plan that meets it (or
        the cost ``level``, if given) is replaced by the one between the current ratio and
        ``ratio`` that lands just under it."""
        scores = self._scores()
        plan = select_units(self.groups, scores, self._pruned, ratio, self.rules)
        target = self._target_macs()
        goal = target if level is None or target is None else max(level, target)
        if goal is None or self._cost(plan) > goal:
            return plan, ratio, False
        plan, ratio = self._land_on_target(scores, self._ratio, ratio, plan, goal)
        if goal <= target * (1 + 1e-9) and self._cost(plan) <= target:  # the final landing
            # (``level`` may differ from ``target`` by rounding there): spend the slack
            plan = fill_to_target(self.groups, scores, self._pruned, plan, self.rules,
                                  self._cost, target)
        return plan, ratio, target is not None and self._cost(plan) <= target

    def _scheduled_plan(self, epoch: int) -> Tuple[_Plan, float, bool]:
        """The plan at the end of ``epoch`` and whether it meets the MAC target."""
        if self.cfg.schedule == "ratio":
            return self._select(self.schedule.ratio(epoch))
        fraction = self.schedule.fraction(epoch)
        start, end = levels(self.cfg, self._stage)
        level = self.base_cost * (start - (start - end) * fraction)
        return self._select(self.schedule.final_ratio, level=level)

    def _final_plan(self) -> _Plan:
        """The plan at the end of the schedule, ranked with the weights as they are now."""
        return self._select(self.schedule.final_ratio)[0]

    def _removal(self, plan: _Plan) -> RemovalPlan:
        """The plan as the cost models take it: positions removed per module and handler."""
        return removal_plan(self.groups, self._channels(plan))

    def _count(self, plan: _Plan) -> Tuple[float, int]:
        return self.counter.count(self._removal(plan))

    def _cost(self, plan: _Plan) -> float:
        """What ``mac_target`` measures for ``plan``: MACs, or estimated latency (ms)."""
        return self.cost_model.count(self._removal(plan))[0]

    @property
    def cost_model(self) -> CostModel:
        """The MAC counter, or with ``cost: "latency"`` a :class:`~.latency.LatencyCost`
        (layers timed once on the model's device, cached beside the config)."""
        if getattr(self, "_cost_model", None) is None:
            self._cost_model = self.counter
            if self.cfg.cost == "latency":
                if getattr(self, "_per_ms", None) is None:
                    folder = self.config_path.parent if self.config_path is not None else None
                    table = load_or_measure(self._model, self.example_inputs, self.forward_fn,
                                            folder=folder, log=self.log)
                    self._per_ms = table.per_mac(self._model)
                self._cost_model = LatencyCost(self.counter, self._per_ms)
                if getattr(self, "_base_cost", None) is None:
                    self._base_cost = self._cost_model.base_cost
        return self._cost_model

    @property
    def base_cost(self) -> float:
        """``base_macs``, or with ``cost: "latency"`` the original estimated latency (ms)."""
        if self.cfg.cost != "latency":
            return self.base_macs
        _ = self.cost_model
        return self._base_cost

    def _target_macs(self) -> Optional[float]:
        return self.cfg.mac_target * self.base_cost if self.cfg.mac_target > 0 else None

    def _land_on_target(self, scores: Dict[int, torch.Tensor], lo: float, hi: float,
                        hi_plan: _Plan, target: float) -> Tuple[_Plan, float]:
        """The plan between ratios ``lo`` and ``hi`` whose MACs are just at/under ``target``."""
        lo_macs = self._cost(self._pruned)
        if lo_macs <= target:
            return dict(self._pruned), lo
        best, best_ratio, hi_macs = hi_plan, hi, self._cost(hi_plan)
        for _ in range(16):
            if hi_macs >= 0.99 * target or hi - lo < 1e-6:
                break
            frac = (lo_macs - target) / max(lo_macs - hi_macs, 1e-12)
            mid = lo + (hi - lo) * min(max(frac, 0.1), 0.9)
            plan = select_units(self.groups, scores, self._pruned, mid, self.rules)
            macs = self._cost(plan)
            if macs <= target:
                best, best_ratio, hi, hi_macs = plan, mid, mid, macs
            else:
                lo, lo_macs = mid, macs
        return best, best_ratio

    def _agree(self, plan: _Plan, reached: bool) -> Tuple[_Plan, bool]:
        """Under torch.distributed: the union of every rank's plan (identical in practice)."""
        if not (dist.is_available() and dist.is_initialized()) or not self.groups:
            return plan, reached
        device = (torch.device("cuda", torch.cuda.current_device())
                  if dist.get_backend() == "nccl" else torch.device("cpu"))
        flat = torch.cat([plan[g.number] for g in self.groups] + [torch.tensor([reached])])
        flat = flat.to(device=device, dtype=torch.int32)
        dist.all_reduce(flat, op=dist.ReduceOp.MAX)
        parts = flat.cpu().bool().split([g.units for g in self.groups] + [1])
        return {g.number: p for g, p in zip(self.groups, parts)}, bool(parts[-1])

    # ------------------------------------------------------------------ masks and state
    def _commit(self, plan: _Plan, ratio: float, epoch: int, log: Optional[UserLog]) -> None:
        new = {n: plan[n] & ~self._pruned[n] for n in plan}
        self._pruned, self._ratio, self._last_epoch = plan, ratio, epoch
        self._apply_masks()
        if self.cfg.verbose >= 1:
            macs = self._count(plan)[0]
            masked = sum(int(self._channels(plan)[g.number].sum()) for g in self.groups)
            total = sum(g.channels for g in self.groups)
            target = f", target {self.cfg.mac_target:.2%}" if self.cfg.mac_target > 0 else ""
            emit(f"Epoch {epoch}: channel ratio {ratio:.4f}, {masked}/{total} channels masked, "
                 f"MACs {human_count(macs)} ({macs / self.base_macs:.2%} of original{target})", log,
                 logger=logger)
        if self.cfg.verbose >= 2:
            for g in self.groups:
                idx = g.expand_units(new[g.number]).nonzero().flatten().tolist()
                if idx:
                    emit(f"Group {g.number} ({g.source}): pruned channels {idx}", log,
                         logger=logger)

    def _apply_masks(self) -> None:
        for (module, name), keep in keep_masks(self.groups, self._channels(self._pruned)).items():
            self.masks.update(LAYER, module, name, keep)

    def _finish(self, model: nn.Module, epoch: int, log: Optional[UserLog],
                physical: bool) -> None:
        self._summary = self._make_summary(epoch)
        self.reached_target = True
        try:
            if self.write_back is not None:
                self.write_back({"reach_mac_target": True, "log_str": self._summary})
        except OSError as e:
            emit(f"could not write the pruning state to {self.config_path}: {e}", log,
                 logging.WARNING, logger)
        emit(self._summary, log, logger=logger)
        self._summary_logged = True
        if physical:
            self.remove_masked_channels(model, log=log)

    def _end_stage(self, model: nn.Module, epoch: int, log: Optional[UserLog]) -> None:
        """An intermediate removal: remove what is masked, then mask on toward the next level
        (``reset_optimizer`` is set as at the final removal)."""
        _, level = levels(self.cfg, self._stage)
        emit(f"Stage {self._stage + 1} of {len(self.cfg.stages) + 1} ends (epoch {epoch}, level "
             f"{level:.2%}): removing its masked channels.", log, logger=logger)
        self.remove_masked_channels(model, log=log)
        self._removed = False  # more to mask: only the final removal finishes
        self._stage += 1
        self._ratio, self._focus_epoch = 0.0, None
        self.schedule = stage_schedule(self.cfg, self._stage)

    def _make_summary(self, epoch: int) -> str:
        macs, params = self._count(self._pruned)
        base_macs, base_params = self.base_macs, self._base[1]
        target = (f"target {self.cfg.mac_target:.2%}" if self.cfg.mac_target > 0
                  else "no MAC target")
        latency = self.cfg.cost == "latency"
        convs = all(isinstance(g.root, nn.modules.conv._ConvNd) and g.heads is None
                    for g in self.groups)
        kind = "conv" if convs else "layer"
        lines = [(f"Channel pruning summary ({self.cfg.pruning_method.value}, epoch {epoch}, "
                  f"channel ratio {self._ratio:.4f}):"),
                 (f"MACs: {human_count(base_macs)} -> {human_count(macs)} "
                  f"({macs / base_macs:.2%} of original{'' if latency else '; ' + target})"),
                 f"Params: {human_count(base_params)} -> {human_count(params)}",
                 f"Channels kept per group (source {kind}: kept/original):"]
        if latency:
            ms = self._cost(self._pruned)
            lines.insert(2, f"Estimated latency: {self.base_cost:.3f} ms -> {ms:.3f} ms "
                            f"({ms / self.base_cost:.2%} of original; {target}, cost "
                            "\"latency\": mac_target measures latency)")
        channels = self._channels(self._pruned)
        lines += [f"{g.source}: {g.channels - int(channels[g.number].sum())}/"
                  f"{(g.original_units or g.units) * (g.channels // g.units)}"
                  + (f" ({g.units - int(self._pruned[g.number].sum())}/{g.units} heads of "
                     f"{g.heads.name})" if g.heads else "")
                  for g in self.groups]
        return "\n".join(lines)

    def remove_masked_channels(self, model: nn.Module, log: Optional[UserLog] = None) -> None:
        """Physically remove every masked channel (upstream group pruning), then rebuild.

        Shapes shrink, every mask is re-indexed, the dependency graph is traced again and
        :attr:`reset_optimizer` becomes True: re-create the optimizer (and a DDP wrapper).
        Use it after a run with ``prune_at_target: false``. A model sharded with FSDP2's
        ``fully_shard`` is first gathered whole on every rank and ``fully_shard`` removed
        (:func:`~..util.fsdp.unshard_model`): call ``fully_shard`` on it again.
        """
        model = unwrap_model(model)
        self._spent.clear()  # its positions have the old shapes
        if unshard_model(model):
            emit("Gathered the FSDP-sharded model whole on every rank for the removal; it is "
                 "returned unsharded: call fully_shard on it again, then re-create the "
                 "optimizer.", log or self.log, logger=logger)
        macs = self._count(self._pruned)[0]  # equals the count after removal (tested)
        params_before = {(m, n): p for m in model.modules()
                         for n, p in m.named_parameters(recurse=False)}
        removed, heads = 0, []
        for g, gone in zip(self.groups, self._channels(self._pruned).values()):
            idxs = gone.nonzero().flatten().tolist()
            if idxs:
                g.group.prune(idxs)
                removed += len(idxs)
            if idxs and g.heads is not None:
                g.heads.remove(g.heads.module, self._pruned[g.number].nonzero().flatten())
                heads.append(f"{g.heads.name}.{g.heads.attr}="
                             f"{g.heads.count - int(self._pruned[g.number].sum())}")
        if sync_hf_config(model) is not None:
            emit(f"model.config follows the pruned weights: {model.config.pat_layers}",
                 log or self.log, logging.DEBUG, logger)
        self.masks.reindex(LAYER)
        #: old Parameter -> (new Parameter, kept indices per dim), for carry_optimizer_state
        self.replaced_params = {
            old: (getattr(m, n), self.masks.last_reindex[(m, n)])
            for (m, n), old in params_before.items()
            if getattr(m, n) is not old and (m, n) in self.masks.last_reindex}
        try:
            self._build(model, announce=False, rebuild=True)
        except Exception as exc:
            if not heads:
                raise
            raise RuntimeError(
                f"after removing whole attention heads ({', '.join(heads)}) the model's forward "
                f"failed: {exc}. The attention forward must take its shapes from the head count "
                "(e.g. reshape(B, N, -1), not reshape(B, N, C) with the input width)") from exc
        self._removed = True
        self.reset_optimizer = True
        note = f" (heads now: {', '.join(heads)})" if heads else ""
        emit(f"Physically removed {removed} channels{note}: MACs now {human_count(macs)} "
             f"({macs / self.base_macs:.2%} of original). Re-create the "
             "optimizer (channel_pruner.reset_optimizer is True).", log or self.log,
             logger=logger)

    # ------------------------------------------------------------------ checkpoint state
    def state_dict(self) -> Dict[str, Any]:
        """Pruned channels per group, schedule progress and the reached flag."""
        return {"version": 1, "reached": self.reached_target, "removed": self._removed,
                "summary": self._summary, "ratio": self._ratio, "last_epoch": self._last_epoch,
                "next_epoch": self._next_epoch, "base": self._base, "stage": self._stage,
                "widths": dict(self._widths),
                "pruned_units": {g.source: self._pruned[g.number].nonzero().flatten().clone()
                                 for g in self.groups}}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output (after loading the model weights).

        The saved state is the truth: a config file that says ``reach_mac_target`` while the
        state is from before the target (the job died between the write-back and its next
        checkpoint) resumes pruning. A state that does not fit the selected groups raises
        ValueError before anything changes.
        """
        if not state:
            return
        reached, removed = bool(state.get("reached")), bool(state.get("removed"))
        if not removed:  # validate before changing anything
            if not hasattr(self, "graph") and (not reached or state.get("pruned_units")):
                self._build(self._model, announce=False)  # from the model and config only
            pruned = self._pruned_from(state.get("pruned_units", {}))
        if self.reached_target and not reached:
            emit(f"{self._source} says reach_mac_target is true, but the checkpoint's pruner "
                 "state is from before the target was met: channel pruning continues from the "
                 "checkpoint.", self.log, logger=logger)
        self._summary = state.get("summary", self._summary)
        self._base = state.get("base") or self._base
        self._ratio, self._last_epoch = state.get("ratio", 0.0), state.get("last_epoch")
        self._next_epoch, self._focus_epoch = state.get("next_epoch", 0), None
        self.reached_target, self._removed = reached, removed
        self._stage = int(state.get("stage", 0))
        self.schedule = stage_schedule(self.cfg, self._stage)
        self._widths = dict(state.get("widths") or self._widths)
        mark_original_units(self.groups, self._widths)
        self._spent.clear()
        self._steps_in_epoch = 0
        if removed:  # the model is loaded in its final shapes: nothing left to mask
            self.groups, self._pruned, self.regularizer = [], {}, None
            self._counter = self._cost_model = None
            self.macs()  # counted now (it copies the model), before any fully_shard
            return
        self._pruned = pruned
        self.masks.clear(LAYER)
        self._apply_masks()

    def _pruned_from(self, saved: Dict[str, Any]) -> _Plan:
        by_source = {g.source: g for g in self.groups}
        pruned = {g.number: torch.zeros(g.units, dtype=torch.bool) for g in self.groups}
        for source, units in saved.items():
            g, units = by_source.get(source), torch.as_tensor(units, dtype=torch.long)
            if g is None or (units.numel() and not 0 <= int(units.min()) <= int(units.max())
                             < g.units):
                raise ValueError(f"the saved channel-pruner state has group '{source}' with "
                                 f"units {units.tolist()[:8]}, which do not fit the selected "
                                 f"groups {[(g.source, g.units) for g in self.groups]}; was it "
                                 f"saved with another {SECTION}.layers or model?")
            pruned[g.number][units] = True
        return pruned

    # ------------------------------------------------------------------ reporting
    @property
    def base_macs(self) -> float:
        """MACs of the model the pruner was built on (before any pruning)."""
        if self._base is None:
            if hasattr(self, "graph"):
                _ = self.counter  # building the counter records the base counts
            else:
                counter = MacCounter(self._model, self.example_inputs, self.forward_fn)
                self._base = (counter.base_macs, counter.base_params)
        return self._base[0]

    def macs(self) -> float:
        """MACs of the model now, counting masked channels as removed."""
        if not hasattr(self, "graph"):  # finished at construction: count the model as it is
            shapes = tuple(tuple(p.shape) for p in self._model.parameters())
            if self._measured is None or self._measured[0] != shapes:
                counter = MacCounter(self._model, self.example_inputs, self.forward_fn)
                self._measured = (shapes, counter.base_macs)
            return self._measured[1]
        return self._count(self._pruned)[0]

    def summary(self) -> str:
        """The pruning summary (``log_str``): the stored one once the target is reached."""
        if self.reached_target and self._summary:
            return self._summary
        return self._make_summary(self._last_epoch if self._last_epoch is not None else -1)
