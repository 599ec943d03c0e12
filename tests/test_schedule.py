"""The channel schedule as a pure function: which ratio at the end of which epoch."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from torch_pruning.pat.config.models import ChannelSparsityArgs
from torch_pruning.pat.core.schedule import ChannelSchedule


@pytest.mark.parametrize("start,end,rate,final,expected", [
    # one step per epoch: linear ramp ending exactly at end_epoch
    (0, 3, 1, 0.8, [0.2, 0.4, 0.6, 0.8, 0.8]),
    # nothing before start_epoch, held after end_epoch
    (2, 3, 1, 0.5, [0.0, 0.0, 0.25, 0.5, 0.5]),
    # a step every 2 epochs: the ratio is flat between steps
    (0, 4, 2, 0.6, [0.2, 0.2, 0.4, 0.4, 0.6]),
    # a single pruning epoch jumps straight to the goal
    (1, 1, 1, 0.3, [0.0, 0.3, 0.3]),
    # end_epoch off the step grid: the last grid step (epoch 3) reaches the goal
    (0, 4, 3, 0.5, [0.25, 0.25, 0.25, 0.5, 0.5]),
])
def test_ratio_per_epoch(start: int, end: int, rate: int, final: float,
                         expected: list) -> None:
    schedule = ChannelSchedule(start, end, rate, final)
    assert [schedule.ratio(e) for e in range(len(expected))] == pytest.approx(expected)


@pytest.mark.parametrize("start,end,rate,steps", [
    (0, 9, 1, list(range(10))),
    (1, 5, 2, [1, 3, 5]),
    (0, 4, 3, [0, 3]),
])
def test_steps_fall_on_the_grid(start: int, end: int, rate: int, steps: list) -> None:
    schedule = ChannelSchedule(start, end, rate, 0.5)
    assert [e for e in range(end + 3) if schedule.is_step(e)] == steps
    assert schedule.last_step_epoch == steps[-1]
    assert schedule.is_last_step(steps[-1])
    assert schedule.ratio(steps[-1]) == 0.5


def test_from_config_reads_the_channel_section() -> None:
    cfg = ChannelSparsityArgs(start_epoch=3, end_epoch=6, epoch_rate=1, global_prune_rate=0.4)
    schedule = ChannelSchedule.from_config(cfg)
    assert schedule.ratios() == pytest.approx([0.1, 0.2, 0.3, 0.4])
    assert schedule.ratio(2) == 0.0


@pytest.mark.parametrize("kwargs,match", [
    (dict(start_epoch=5, end_epoch=2), "before start_epoch"),
    (dict(start_epoch=0, end_epoch=2, epoch_rate=0), "epoch_rate"),
    (dict(start_epoch=0, end_epoch=2, final_ratio=1.5), "final_ratio"),
])
def test_invalid_schedules_are_rejected(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ChannelSchedule(**kwargs)


@settings(max_examples=80, deadline=None)
@given(start=st.integers(0, 20), length=st.integers(0, 30), rate=st.integers(1, 7),
       final=st.floats(0.0, 1.0))
def test_ratio_is_monotone_and_reaches_the_goal(start: int, length: int, rate: int,
                                                final: float) -> None:
    schedule = ChannelSchedule(start, start + length, rate, final)
    ratios = [schedule.ratio(e) for e in range(start + length + rate + 2)]
    assert all(a <= b + 1e-12 for a, b in zip(ratios, ratios[1:]))
    assert all(r == 0.0 for r in ratios[:start])
    assert ratios[-1] == pytest.approx(final)
    # the ratio only changes at step epochs
    for e in range(1, len(ratios)):
        if ratios[e] != ratios[e - 1]:
            assert schedule.is_step(e)
