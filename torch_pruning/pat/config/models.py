"""Typed models of ``pruning_config.json`` (one model per section).

Every field of the contract (SPEC section 3) is declared here once, with its default, its
allowed range and its help text; the JSON Schema in ``docs/pruning_config.schema.json`` is
generated from these models (:func:`config_json_schema`). Loading, error reporting and
write-back live in :mod:`torch_pruning.pat.config.io`.
"""

from __future__ import annotations

import enum
from typing import Any, Dict, List, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "PruningMethod", "SliceMethod", "SliceMode", "RegularizeArgs", "MACParams", "StageArgs",
    "ChannelSparsityArgs", "SliceSparsityArgs", "PruningConfig", "DEPRECATED_KEYS",
    "REQUIRED_WHEN_ENABLED", "config_json_schema",
]


class PruningMethod(str, enum.Enum):
    """Importance + regularizer family of the channel pruner."""

    GROUP_NORM = "GroupNormPruner"
    BN_SCALE = "BNScalePruner"
    MAC_AWARE = "MACAwareImportance"


class SliceMethod(str, enum.Enum):
    """Importance of a weight slice."""

    L2_NORM = "L2_norm"


class SliceMode(str, enum.Enum):
    """``Prune``: regularize and mask. ``Unprune``: keep existing masks, add none, no penalty."""

    PRUNE = "Prune"
    UNPRUNE = "Unprune"


class _Section(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", validate_assignment=True,
                              use_enum_values=False)


def _rate(default: Any = ..., help: str = "") -> Any:
    return Field(default, ge=0.0, le=1.0, allow_inf_nan=False, description=help)


class RegularizeArgs(_Section):
    """``channel_sparsity_args.regularize``: group-lasso strengths."""

    reg: float = Field(0.0, ge=0.0, allow_inf_nan=False,
                       description="Base group-lasso strength (0 disables regularization; "
                                   "try 5e-2, 5e-3, 5e-4).")
    mac_reg: float = Field(0.0, ge=0.0, allow_inf_nan=False,
                           description="Extra strength in proportion to each group's share of "
                                       "the model's MACs (pushes expensive layers harder).")
    gamma: float = Field(1.0, ge=1.0, allow_inf_nan=False,
                         description="Within a group, the least important channel gets gamma "
                                     "times the strength of the most important (1 = uniform).")
    target: Literal["all", "pruned"] = Field(
        "all", description="Which channels are pushed: \"all\" selected channels, or only "
                           "\"pruned\": those the schedule would prune at the MAC target, "
                           "ranked afresh at every epoch end (the others train freely, so the "
                           "norms separate before masking starts).")
    growth: Literal["constant", "linear"] = Field(
        "constant", description="\"linear\": the strength grows from 0 to reg (and mac_reg) "
                                "over the epochs from begin_epoch up to start_epoch, then "
                                "stays; \"constant\": full strength from the first step.")
    begin_epoch: int = Field(
        0, ge=0, description="The penalty starts at this epoch (none before); with growth "
                             "\"linear\" it ramps from here to start_epoch. Dense training "
                             "before it keeps the whole network learning.")


class MACParams(_Section):
    """``channel_sparsity_args.MAC_params``: how MACAwareImportance mixes in layer cost."""

    use_macs: bool = Field(False, description="Combine importance with the layer's MAC cost.")
    type: Literal["Sum", "Mul"] = Field(
        "Sum", description="Sum: alpha*I/I_max + (1-alpha)*(1-m_hat); "
                           "Mul: I*(m_min/m)^(1/beta). Lower score is pruned first.")
    alpha: float = Field(0.5, ge=0.0, le=1.0, allow_inf_nan=False,
                         description="Weight of importance against cost in the Sum rule.")
    beta: float = Field(1.0, gt=0.0, allow_inf_nan=False,
                        description="Cost exponent 1/beta in the Mul rule (number > 0).")


class StageArgs(_Section):
    """One item of ``channel_sparsity_args.stages``: an intermediate removal."""

    mac_target: float = Field(..., gt=0.0, lt=1.0, allow_inf_nan=False,
                              description="MACs level (fraction of the original) this stage "
                                          "masks down to, above the section's mac_target.")
    start_epoch: int = Field(..., ge=0, description="First masking epoch of the stage.")
    end_epoch: int = Field(..., ge=0, description="Last masking epoch of the stage; at its end "
                                                  "the masked channels are removed physically.")


Shape = List[int]


def _required_unless_disabled(fields: List[str]) -> Dict[str, Any]:
    """JSON Schema rule: ``fields`` are required unless ``is_prune`` is false."""
    return {"if": {"properties": {"is_prune": {"const": False}}, "required": ["is_prune"]},
            "else": {"required": fields}}


class ChannelSparsityArgs(_Section):
    """``channel_sparsity_args``: grouped channel pruning to a MAC budget."""

    model_config = ConfigDict(json_schema_extra=_required_unless_disabled(
        ["start_epoch", "end_epoch", "global_prune_rate"]))

    is_prune: bool = Field(True, description="Enable channel pruning.")
    global_pruning: bool = Field(False, description="Rank channels across all selected groups "
                                                    "instead of per layer.")
    block_size: int = Field(1, ge=1, description="Channels left in each pruned layer are a "
                                                 "multiple of it (upstream round_to).")
    start_epoch: int = Field(0, ge=0, description="First pruning epoch (inclusive). Required.")
    end_epoch: int = Field(0, ge=0, description="Last pruning epoch (inclusive). Required.")
    epoch_rate: int = Field(1, ge=1, description="The target ratio steps up every epoch_rate "
                                                 "epochs from start_epoch.")
    global_prune_rate: float = _rate(0.0, "Channel ratio the schedule reaches at end_epoch. "
                                          "Required.")
    max_pruning_rate: float = _rate(1.0, "Cap on the fraction pruned in any one group.")
    schedule: Literal["ratio", "macs"] = Field(
        "ratio", description="What each masking step climbs: \"ratio\", the channel ratio, "
                             "linearly to global_prune_rate (stopping early at mac_target); "
                             "\"macs\", the MACs, linearly from 100% to mac_target at "
                             "end_epoch, each step landing on its level whatever the ranking "
                             "(global_prune_rate then caps the channel ratio; needs "
                             "mac_target > 0).")
    mac_target: float = _rate(0.0, "Fraction of the original MACs that remains (0.7 = 30% "
                                   "reduction); 0 turns the MAC target off.")
    cost: Literal["macs", "latency"] = Field(
        "macs", description="What mac_target and MAC_params measure: \"macs\", or \"latency\" "
                            "(each layer timed once on the model's device, cached in "
                            "latency_table.json beside this file; mac_target is then a fraction "
                            "of the estimated latency).")
    prune_at_target: bool = Field(True, description="Physically remove masked channels as soon "
                                                    "as mac_target is met.")
    reach_mac_target: bool = Field(False, description="State: written true when the target "
                                                      "is met.")
    log_str: str = Field("", description="State: the pruning summary written at the target.")
    pruning_method: PruningMethod = Field(
        PruningMethod.GROUP_NORM, strict=False,
        description="Importance and regularizer family: " +
                    ", ".join(m.value for m in PruningMethod) + ".")
    prune_channels_at_init: bool = Field(False, description="Prune physically (no masking "
                                                            "phase) on the first prune() call.")
    infer: bool = Field(False, description="Inference use: no regularization, physical pruning "
                                           "at the first call.")
    isomorphic: bool = Field(False, description="Use upstream's isomorphic pruning.")
    stages: List[StageArgs] = Field(
        default_factory=list,
        description="Intermediate removals before the final one (schedule \"macs\"): each "
                    "stage masks from the previous level down to its own mac_target over its "
                    "start_epoch..end_epoch, then removes the masked channels physically and "
                    "sets reset_optimizer, like the final removal; the section's start_epoch.."
                    "end_epoch then masks on to mac_target. Stages come in order, before "
                    "start_epoch, with falling mac_target. max_pruning_rate still counts "
                    "against each layer's original channels.")
    regularize: RegularizeArgs = Field(default_factory=RegularizeArgs,
                                       description="Regularization strengths.")
    MAC_params: MACParams = Field(default_factory=MACParams,
                                  description="MACAwareImportance settings.")
    layers: Union[Literal["all"], List[str]] = Field(
        "all", description="Layers whose groups may be pruned, as in model.named_modules() "
                           "('module.' prefix ignored): Conv2d, ConvTranspose2d or Linear (e.g. "
                           "a transformer block's MLP hidden layer), or an attention module "
                           "with a num_heads attribute and Linear q/k/v projections (pruned by "
                           "whole heads; torch_pruning.pat.split_multihead_attention converts "
                           "nn.MultiheadAttention); an unconverted MultiheadAttention is logged "
                           "as not pruned. "
                           "\"all\" selects every layer of those kinds (the Linear "
                           "projections inside an attention module go with its heads); layers "
                           "whose channels are model outputs, like the final classifier, are "
                           "kept.")
    input_shape: Optional[Union[Shape, List[Shape]]] = Field(
        None, description="Dummy input shape [B,C,H,W] (or a list of shapes) for graph "
                          "tracing, unless example_inputs is passed to Pruning.")
    container: Optional[Literal["tuple"]] = Field(
        None, description="Several inputs are passed as a tuple instead of a list.")
    verbose: Literal[0, 1, 2] = Field(1, description="2 also logs pruned channel indices.")

    @field_validator("layers")
    @classmethod
    def _layers_not_empty(cls, v: Any) -> Any:
        if isinstance(v, list) and not v:
            raise ValueError('list must name at least one layer (or use "all")')
        return v

    @model_validator(mode="after")
    def _macs_schedule_needs_target(self) -> "ChannelSparsityArgs":
        if self.is_prune and self.schedule == "macs" and self.mac_target <= 0:
            raise ValueError('schedule "macs" steps the MACs down to mac_target: set '
                             'mac_target in (0, 1], or use schedule "ratio"')
        return self

    @model_validator(mode="after")
    def _stages_in_order(self) -> "ChannelSparsityArgs":
        if not self.is_prune or not self.stages:
            return self
        if self.schedule != "macs" or not self.prune_at_target or self.infer \
                or self.prune_channels_at_init or self.cost != "macs":
            raise ValueError('stages need schedule "macs", prune_at_target true, cost "macs" '
                             'and neither infer nor prune_channels_at_init')
        level, after = 1.0, -1
        for i, stage in enumerate(self.stages):
            where = f"stages[{i}]"
            if not self.mac_target < stage.mac_target < level:
                raise ValueError(f"{where}.mac_target {stage.mac_target} must be below the "
                                 f"level before it ({level}) and above mac_target "
                                 f"{self.mac_target}")
            if not after < stage.start_epoch <= stage.end_epoch:
                raise ValueError(f"{where} runs epochs {stage.start_epoch}..{stage.end_epoch}: "
                                 f"it must start after epoch {after} (the stage before it) "
                                 "and end no earlier than it starts")
            level, after = stage.mac_target, stage.end_epoch
        if self.start_epoch <= after:
            raise ValueError(f"start_epoch {self.start_epoch} must come after the last stage's "
                             f"end_epoch {after}")
        return self

    @field_validator("input_shape")
    @classmethod
    def _positive_dims(cls, v: Any) -> Any:
        shapes = v if v and isinstance(v[0], list) else [v] if v else []
        for shape in shapes:
            if not shape or any(d < 1 for d in shape):
                raise ValueError("every dimension must be a positive integer, e.g. [1, 3, 224, 224]")
        return v


class SliceSparsityArgs(_Section):
    """``slice_sparsity_args``: block L2 slice pruning in the hardware's order."""

    model_config = ConfigDict(json_schema_extra=_required_unless_disabled(
        ["start_epoch", "end_epoch", "prune_rate"]))

    is_prune: bool = Field(True, description="Enable slice pruning.")
    block_size: int = Field(8, ge=1, description="A: filters per block.")
    depthwise_block_size: int = Field(2, ge=1, description="A for depthwise convolutions.")
    start_epoch: int = Field(0, ge=0, description="First slice-pruning epoch. Required.")
    end_epoch: int = Field(0, ge=0, description="Last slice-pruning epoch. Required.")
    epoch_rate: int = Field(1, ge=1, description="Masks step up every epoch_rate epochs.")
    prune_rate: float = _rate(0.0, "Fraction of eligible slices zeroed at the end of the "
                                   "schedule. Required.")
    pruning_gradually: bool = Field(True, description="Ramp the rate over the schedule instead "
                                                      "of jumping to it.")
    pruning_mode: SliceMode = Field(SliceMode.PRUNE, strict=False,
                                    description="Prune, or Unprune (no penalty, no new masks).")
    disable_first_index: bool = Field(False, description="Never prune the slice at x=0 of a "
                                                         "kernel row.")
    pruning_method: SliceMethod = Field(SliceMethod.L2_NORM, strict=False,
                                        description="Slice importance.")
    reg: float = Field(0.0, ge=0.0, allow_inf_nan=False, description="Slice regularization "
                                                                     "strength.")
    layers: Optional[List[str]] = Field(None, description="Conv2d layers to slice-prune; default "
                                                          "every Conv2d whose filters fill "
                                                          "whole blocks.")


class PruningConfig(BaseModel):
    """The whole ``pruning_config.json``. A missing section turns that pruner off."""

    model_config = ConfigDict(strict=True, extra="forbid", populate_by_name=True)

    schema_: Optional[str] = Field(None, alias="$schema",
                                   description="Optional JSON Schema reference for editors.")
    channel_sparsity_args: Optional[ChannelSparsityArgs] = None
    slice_sparsity_args: Optional[SliceSparsityArgs] = None


# Fields that must be given when a section is enabled (is_prune true).
REQUIRED_WHEN_ENABLED: Dict[str, List[str]] = {
    "channel_sparsity_args": ChannelSparsityArgs.model_config["json_schema_extra"]["else"]["required"],
    "slice_sparsity_args": SliceSparsityArgs.model_config["json_schema_extra"]["else"]["required"],
}

# Keys older configs carry, per object (its dotted path): accepted with a warning that names
# their replacement (a path inside the section), then ignored.
DEPRECATED_KEYS: Dict[str, Dict[str, str]] = {
    "channel_sparsity_args": {
        "alpha_shrinkage_reg": "regularize.gamma",
        "gamma_reg": "regularize.mac_reg",
        "reg": "regularize.reg",
    },
    "channel_sparsity_args.regularize": {
        "alpha_shrinkage_reg": "regularize.gamma",
        "gamma_reg": "regularize.mac_reg",
    },
    "slice_sparsity_args": {},
}


def config_json_schema() -> Dict[str, Any]:
    """The JSON Schema of ``pruning_config.json``, generated from :class:`PruningConfig`.

    Example:
        >>> config_json_schema()["title"]
        'PruningConfig'
    """
    schema = PruningConfig.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema
