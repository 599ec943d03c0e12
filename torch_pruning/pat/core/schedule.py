"""The pruning schedules: which channel ratio (channel pruner) or slice fraction (slice pruner)
to reach at the end of each epoch.

A schedule answers one question, like an LR scheduler: *what ratio at epoch e?* It is pure
(no model, no state), so it is tested as a function.

The seed's rule: pruning steps happen every ``epoch_rate`` epochs from ``start_epoch`` up to
``end_epoch`` (inclusive), and the ratio climbs linearly so that the last step reaches
``global_prune_rate``. The ratio is computed as if ``global_prune_rate`` were the whole goal;
the channel pruner stops early, at the step where the MAC target is met.

Example:
    >>> s = ChannelSchedule(start_epoch=2, end_epoch=5, epoch_rate=1, final_ratio=0.4)
    >>> [s.ratio(e) for e in range(7)]
    [0.0, 0.0, 0.1, 0.2, 0.3, 0.4, 0.4]
    >>> [e for e in range(7) if s.is_step(e)]
    [2, 3, 4, 5]
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import List, Optional

from ..config.models import ChannelSparsityArgs, SliceSparsityArgs

__all__ = ["ChannelSchedule", "SliceSchedule"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChannelSchedule:
    """Linear, stepped channel-ratio schedule.

    Args:
        start_epoch: the first pruning epoch (its end is the first step).
        end_epoch: the last epoch a step may happen at (inclusive).
        epoch_rate: epochs between two steps (>= 1).
        final_ratio: the channel ratio reached by the last step (``global_prune_rate``).

    Steps are at ``start_epoch + k * epoch_rate`` for ``k = 0 .. n_steps - 1`` while the epoch
    is ``<= end_epoch``; step ``k`` reaches ``final_ratio * (k + 1) / n_steps``. Before the first
    step the ratio is 0; after the last it stays at ``final_ratio``.

    Example:
        >>> s = ChannelSchedule(0, 9, 3, 0.6)   # steps at epochs 0, 3, 6, 9
        >>> s.n_steps, s.ratio(3), s.ratio(4), s.last_step_epoch
        (4, 0.3, 0.3, 9)
    """

    start_epoch: int
    end_epoch: int
    epoch_rate: int = 1
    final_ratio: float = 0.0

    def __post_init__(self) -> None:
        if self.epoch_rate < 1:
            raise ValueError(f"epoch_rate must be >= 1, got {self.epoch_rate}")
        if self.end_epoch < self.start_epoch:
            raise ValueError(f"end_epoch {self.end_epoch} is before start_epoch "
                             f"{self.start_epoch}")
        if not 0.0 <= self.final_ratio <= 1.0:
            raise ValueError(f"final_ratio must be in [0, 1], got {self.final_ratio}")

    @classmethod
    def from_config(cls, cfg: ChannelSparsityArgs) -> ChannelSchedule:
        """The schedule of a ``channel_sparsity_args`` section.

        Example:
            >>> cfg = ChannelSparsityArgs(start_epoch=0, end_epoch=3, global_prune_rate=0.5)
            >>> ChannelSchedule.from_config(cfg).ratio(1)
            0.25
        """
        return cls(cfg.start_epoch, cfg.end_epoch, cfg.epoch_rate, cfg.global_prune_rate)

    @property
    def n_steps(self) -> int:
        """How many pruning steps the schedule has (at least 1)."""
        return (self.end_epoch - self.start_epoch) // self.epoch_rate + 1

    @property
    def last_step_epoch(self) -> int:
        """The epoch of the last step (``end_epoch`` when it falls on the step grid)."""
        return self.start_epoch + (self.n_steps - 1) * self.epoch_rate

    def step_index(self, epoch: int) -> int:
        """Number of steps completed at the end of ``epoch`` (0 before the first step).

        Example:
            >>> ChannelSchedule(2, 8, 2, 1.0).step_index(5)
            2
        """
        if epoch < self.start_epoch:
            return 0
        return min((epoch - self.start_epoch) // self.epoch_rate + 1, self.n_steps)

    def is_step(self, epoch: int) -> bool:
        """True when a pruning step happens at the end of ``epoch``.

        Example:
            >>> [ChannelSchedule(1, 5, 2, 0.5).is_step(e) for e in range(7)]
            [False, True, False, True, False, True, False]
        """
        return (self.start_epoch <= epoch <= self.end_epoch
                and (epoch - self.start_epoch) % self.epoch_rate == 0)

    def is_last_step(self, epoch: int) -> bool:
        """True at the epoch of the final step (where ``final_ratio`` is reached)."""
        return epoch == self.last_step_epoch

    def ratio(self, epoch: int) -> float:
        """The channel ratio to have reached at the end of ``epoch``.

        Example:
            >>> ChannelSchedule(0, 3, 1, 0.8).ratio(0)
            0.2
        """
        k = self.step_index(epoch)
        if k >= self.n_steps:
            return self.final_ratio
        return round(self.final_ratio * (k / self.n_steps), 12)  # k/n first: epochs may be huge

    def fraction(self, epoch: int) -> float:
        """The fraction of the schedule done at the end of ``epoch`` (0 before, 1 after).

        Example:
            >>> ChannelSchedule(2, 5, 1, 0.4).fraction(3)
            0.5
        """
        return self.step_index(epoch) / self.n_steps

    def ratios(self) -> List[float]:
        """The ratio reached at each step, in order.

        Example:
            >>> ChannelSchedule(0, 4, 2, 0.6).ratios()
            [0.2, 0.4, 0.6]
        """
        return [self.ratio(self.start_epoch + k * self.epoch_rate) for k in range(self.n_steps)]


class SliceSchedule:
    """Which fraction of eligible slices is zero after ``prune()`` at a given epoch.

    Pruning epochs are those of the channel schedule (:class:`ChannelSchedule`):
    ``start, start+every, start+2*every, ...`` while ``<= end``. With ``gradual`` the rate climbs
    linearly over those epochs and reaches ``rate`` at the last one; without it, it jumps to
    ``rate`` at ``start`` (later steps only top up slices that became eligible).

    Example:
        >>> s = SliceSchedule(start=2, end=6, every=2, rate=0.75, gradual=True)
        >>> [s.rate_at(e) for e in range(8)]
        [None, None, 0.25, None, 0.5, None, 0.75, None]
    """

    def __init__(self, start: int, end: int, every: int, rate: float, gradual: bool) -> None:
        self.rate = rate
        self.gradual = gradual
        self.steps = ChannelSchedule(start, end, every, rate)

    @classmethod
    def from_config(cls, cfg: SliceSparsityArgs) -> "SliceSchedule":
        """The schedule of a ``slice_sparsity_args`` section."""
        return cls(cfg.start_epoch, cfg.end_epoch, cfg.epoch_rate, cfg.prune_rate,
                   cfg.pruning_gradually)

    def rate_at(self, epoch: int) -> Optional[float]:
        """The target fraction for ``prune()`` at ``epoch``; None off the pruning epochs."""
        if not self.steps.is_step(epoch):
            return None
        return self.steps.ratio(epoch) if self.gradual else self.rate
