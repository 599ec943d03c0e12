"""The slice layout against a slow reference written from SPEC section 5's formula."""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import torch_pruning as tp
from torch_pruning.pat.slice.layout import conv_block_size, is_depthwise, slice_layout

# (weight shape C_out x C_in x H x W, A, surviving filters or None for all)
CASES = [
    ((16, 3, 3, 3), 8, None),                               # 3x3, two blocks
    ((16, 1, 3, 3), 2, [0, 1, 2, 3, 5, 8, 9, 15]),         # depthwise, channel-masked filters
    ((12, 4, 1, 7), 4, [1, 2, 3, 4, 7, 8, 9, 10]),         # non-square 1x7
    ((8, 2, 5, 5), 4, None),                                # 5x5
    ((8, 16, 1, 1), 4, None),                               # 1x1
    ((6, 2, 7, 3), 1, None),                                # A = 1: one filter per block
    ((24, 2, 2, 3), 8, list(range(0, 24, 3)) + list(range(1, 24, 3))),  # 16 of 24 survive
    ((4, 3, 7, 7), 4, None),                                # 7x7, a single block (B = 1)
]


def reference_slices(shape: Sequence[int], a_size: int,
                     surviving: Optional[List[int]]) -> List[Tuple[List[int], int, int, int, int]]:
    """SPEC section 5, literally: (flat weight indices, block, c_in, y, x) per slice."""
    c_out, c_in, h, w = shape
    filters = list(range(c_out)) if surviving is None else sorted(surviving)
    A = a_size
    B = len(filters) // A
    order = [p for group in [[b + a for b in range(0, A * B, B)] for a in range(B)] for p in group]
    out = []
    for blk in range(B):
        members = [filters[p] for p in order[blk * A:(blk + 1) * A]]
        for c in range(c_in):
            for y in range(h):
                for x in range(w):
                    out.append(([((f * c_in + c) * h + y) * w + x for f in members], blk, c, y, x))
    return out


def _surviving(shape: Sequence[int], surviving: Optional[List[int]]) -> Optional[torch.Tensor]:
    if surviving is None:
        return None
    keep = torch.zeros(shape[0], dtype=torch.bool)
    keep[surviving] = True
    return keep


@pytest.mark.parametrize("shape,a_size,surviving", CASES)
def test_layout_matches_spec_reference(shape, a_size, surviving):
    lay = slice_layout(shape, a_size, _surviving(shape, surviving))
    ref = reference_slices(shape, a_size, surviving)
    assert lay.num_slices == len(ref)
    assert lay.index.tolist() == [r[0] for r in ref]
    assert lay.block.tolist() == [r[1] for r in ref]
    assert lay.c_in.tolist() == [r[2] for r in ref]
    assert lay.y.tolist() == [r[3] for r in ref]
    assert lay.x.tolist() == [r[4] for r in ref]
    assert list(lay.grid_shape) == [lay.num_blocks] + list(shape[1:])


@pytest.mark.parametrize("shape,a_size,surviving", CASES)
def test_gather_and_scatter_follow_the_index(shape, a_size, surviving):
    lay = slice_layout(shape, a_size, _surviving(shape, surviving))
    weight = torch.randn(shape)
    assert torch.equal(lay.gather(weight), weight.flatten()[lay.index])
    drop = torch.rand(lay.num_slices) < 0.5
    keep = lay.scatter(~drop, True)
    expected = torch.ones(weight.numel(), dtype=torch.bool)
    expected[lay.index[drop].flatten()] = False
    assert torch.equal(keep.flatten(), expected)


@st.composite
def layouts(draw):
    a_size, blocks = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    c_out = a_size * blocks + draw(st.integers(0, 4))
    shape = (c_out, draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    surviving = sorted(draw(st.permutations(range(c_out)))[:a_size * blocks])
    return shape, a_size, surviving


@given(layouts())
def test_every_surviving_weight_is_in_exactly_one_slice(case):
    shape, a_size, surviving = case
    lay = slice_layout(shape, a_size, _surviving(shape, surviving))
    assert lay.index.tolist() == [r[0] for r in reference_slices(shape, a_size, surviving)]
    per_filter = shape[1] * shape[2] * shape[3]
    expected = sorted(f * per_filter + k for f in surviving for k in range(per_filter))
    assert sorted(lay.index.flatten().tolist()) == expected


def test_surviving_may_be_given_as_indices():
    by_mask = slice_layout((12, 4, 1, 7), 4, _surviving((12,), [1, 2, 3, 4, 7, 8, 9, 10]))
    by_index = slice_layout((12, 4, 1, 7), 4, torch.tensor([10, 9, 8, 7, 4, 3, 2, 1]))
    assert torch.equal(by_mask.index, by_index.index)


@pytest.mark.parametrize("shape,a_size,surviving", [
    ((12, 3, 3, 3), 8, None),             # 12 filters: not a multiple of 8
    ((16, 3, 3, 3), 8, list(range(10))),  # 10 survivors of 16
    ((16, 3, 3, 3), 4, []),               # nothing survives
])
def test_filters_not_filling_whole_blocks_have_no_layout(shape, a_size, surviving):
    assert slice_layout(shape, a_size, _surviving(shape, surviving)) is None


@pytest.mark.parametrize("conv,expected", [
    (nn.Conv2d(8, 8, 3, groups=8), 2),
    (nn.Conv2d(8, 16, 3, groups=8), 2),   # depthwise with multiplier 2
    (nn.Conv2d(8, 8, 3, groups=2), 8),
    (nn.Conv2d(8, 8, 1), 8),
])
def test_depthwise_convs_use_the_depthwise_block_size(conv, expected):
    assert conv_block_size(conv, 8, 2) == expected
    assert is_depthwise(conv) == (expected == 2)


@pytest.mark.parametrize("removed", [[0, 5, 6, 11], [8, 9, 10, 11], [0, 1, 2, 3]])
def test_layout_is_unchanged_by_physical_removal_of_masked_filters(removed):
    conv = nn.Conv2d(4, 12, (3, 1))
    keep = torch.ones(12, dtype=torch.bool)
    keep[removed] = False
    before = slice_layout(conv.weight.shape, 4, keep).gather(conv.weight.detach()).clone()
    tp.prune_conv_out_channels(conv, idxs=removed)
    after = slice_layout(conv.weight.shape, 4).gather(conv.weight.detach())
    assert torch.equal(before, after)
