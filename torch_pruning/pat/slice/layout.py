"""The slice layout: how the hardware walks a conv weight, as index tensors.

For a conv weight of shape ``C_out x C_in x H x W`` (``C_in`` is the per-group input count of
a grouped conv) and block size ``A``:

* the *surviving* filters are those not removed by channel masks, in ascending order;
  call them ``f[0], f[1], ..., f[n-1]``;
* with ``B = n / A`` blocks, block ``b`` holds the surviving filters at positions
  ``b, b+B, b+2B, ..., b+(A-1)B`` (SPEC section 5);
* each block is cut into ``B * C_in * H * W`` *slices* of length ``A``, one per
  ``(block, c_in, y, x)``; slice ``s = ((b * C_in + c_in) * H + y) * W + x`` holds the weights
  ``weight[f[b + a*B], c_in, y, x]`` for ``a = 0 .. A-1``.

Because position ``j = a*B + b``, the surviving rows viewed as ``[A, B*C_in*H*W]`` put slice
``s`` in column ``s``: gathering every slice of a layer is one ``index_select`` (no copy at all
when every filter survives) and a view. :meth:`SliceLayout.index` spells the same layout out as
flat weight indices for readers and toolchains.

**Filter counts that do not fill whole blocks.** When the number of surviving filters is zero
or not a multiple of ``A``, :func:`slice_layout` returns ``None``; the slice pruner then skips
that layer (with a log line naming it) until the count fills whole blocks again.

Physically removing channel-masked filters does not change the layout: it is defined on the
surviving filters in order, which removal keeps.
"""

from __future__ import annotations

from functools import cached_property
from typing import Optional, Sequence, Tuple, Union

import torch
from torch import nn

__all__ = ["SliceLayout", "slice_layout", "conv_block_size", "is_depthwise"]

Shape = Tuple[int, int, int, int]


class SliceLayout:
    """The slices of one conv weight in hardware order (build it with :func:`slice_layout`).

    Attributes:
        weight_shape: ``(C_out, C_in, H, W)`` of the weight the layout was computed for.
        block_size: ``A``, the slice length.
        filters: LongTensor ``[A*B]`` of the surviving filter indices, ascending; the filter at
            position ``a*B + b`` is the ``a``-th member of block ``b``.

    Example:
        >>> lay = slice_layout((4, 1, 1, 2), 2)
        >>> lay.blocks.tolist()           # block b = filters b, b+B
        [[0, 2], [1, 3]]
        >>> lay.index.tolist()            # flat weight indices, one row per slice
        [[0, 4], [1, 5], [2, 6], [3, 7]]
    """

    def __init__(self, weight_shape: Shape, block_size: int, filters: torch.Tensor) -> None:
        self.weight_shape = weight_shape
        self.block_size = block_size
        self.filters = filters
        self.all_filters = filters.numel() == weight_shape[0]

    # ------------------------------------------------------------------ sizes
    @property
    def num_blocks(self) -> int:
        """``B``: surviving filters / ``A``."""
        return self.filters.numel() // self.block_size

    @property
    def slices_per_block(self) -> int:
        """``C_in * H * W``: slices in one block."""
        _, c_in, h, w = self.weight_shape
        return c_in * h * w

    @property
    def num_slices(self) -> int:
        """``S = B * C_in * H * W``."""
        return self.num_blocks * self.slices_per_block

    @property
    def grid_shape(self) -> Tuple[int, int, int, int]:
        """``(B, C_in, H, W)``: a per-slice tensor of ``S`` entries reshapes to this grid."""
        _, c_in, h, w = self.weight_shape
        return (self.num_blocks, c_in, h, w)

    # ------------------------------------------------------------------ index tensors
    @cached_property
    def blocks(self) -> torch.Tensor:
        """LongTensor ``[B, A]``: each block's filters, in the order the hardware walks them."""
        return self.filters.view(self.block_size, self.num_blocks).t().contiguous()

    @cached_property
    def index(self) -> torch.Tensor:
        """LongTensor ``[S, A]``: ``weight.flatten()[index[s]]`` is slice ``s``."""
        k = self.slices_per_block
        offsets = torch.arange(k, device=self.filters.device)
        rows = self.blocks * k  # [B, A]
        return (rows.unsqueeze(1) + offsets.view(1, k, 1)).reshape(-1, self.block_size)

    def _slice_ids(self) -> torch.Tensor:
        return torch.arange(self.num_slices, device=self.filters.device)

    @cached_property
    def block(self) -> torch.Tensor:
        """LongTensor ``[S]``: the block of each slice."""
        return self._slice_ids() // self.slices_per_block

    @cached_property
    def c_in(self) -> torch.Tensor:
        """LongTensor ``[S]``: the (per-group) input channel of each slice."""
        _, c_in, h, w = self.weight_shape
        return (self._slice_ids() // (h * w)) % c_in

    @cached_property
    def y(self) -> torch.Tensor:
        """LongTensor ``[S]``: the kernel row of each slice."""
        _, _, h, w = self.weight_shape
        return (self._slice_ids() // w) % h

    @cached_property
    def x(self) -> torch.Tensor:
        """LongTensor ``[S]``: the kernel column of each slice (``x == 0`` is the first index)."""
        return self._slice_ids() % self.weight_shape[3]

    # ------------------------------------------------------------------ tensor ops
    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """All slices of a weight-shaped ``tensor`` as ``[S, A]`` (equal to ``flatten()[index]``).

        One ``index_select`` when some filters are channel-masked, a pure view otherwise, so
        autograd flows through it cheaply.

        Example:
            >>> lay = slice_layout((4, 1, 1, 2), 2)
            >>> lay.gather(torch.arange(8.).view(4, 1, 1, 2)).tolist()
            [[0.0, 4.0], [1.0, 5.0], [2.0, 6.0], [3.0, 7.0]]
        """
        return self.rows(tensor).t()

    def rows(self, tensor: torch.Tensor) -> torch.Tensor:
        """The slices as ``[A, S]``: column ``s`` is slice ``s`` (:meth:`gather` transposed)."""
        rows = tensor.reshape(self.weight_shape[0], -1)
        if not self.all_filters:
            rows = rows.index_select(0, self.filters.to(rows.device))
        return rows.reshape(self.block_size, self.num_slices)

    def sq_norms(self, tensor: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Squared L2 norm of every slice, ``[S]``: one ``vecdot`` over :meth:`gather`.

        ``out``, when given, is a ``[S]`` tensor to write into.

        Example:
            >>> slice_layout((4, 1, 1, 2), 2).sq_norms(torch.arange(8.).view(4, 1, 1, 2)).tolist()
            [16.0, 26.0, 40.0, 58.0]
        """
        slices = self.gather(tensor)
        return torch.linalg.vecdot(slices, slices, out=out)

    def row_sq_norms(self, tensor: torch.Tensor, out: Optional[torch.Tensor] = None
                     ) -> torch.Tensor:
        """Squared L2 norm of every slice, ``[S]``, summed row by row over :meth:`rows`.

        ``A`` fused multiply-adds of ``[S]`` vectors: the weight is read once and no
        weight-sized temporary is made (``vecdot`` over :meth:`gather` multiplies into one and
        costs about twice as much). Equal to :meth:`sq_norms` up to rounding; the penalty uses
        this one, ranking for pruning uses :meth:`sq_norms`. ``out``: a ``[S]`` tensor to
        write into.

        Example:
            >>> lay = slice_layout((4, 1, 1, 2), 2)
            >>> lay.row_sq_norms(torch.arange(8.).view(4, 1, 1, 2)).tolist()
            [16.0, 26.0, 40.0, 58.0]
        """
        rows = self.rows(tensor)
        out = torch.mul(rows[0], rows[0], out=out)
        for a in range(1, self.block_size):
            out.addcmul_(rows[a], rows[a])
        return out

    def scale(self, tensor: torch.Tensor, per_slice: torch.Tensor) -> torch.Tensor:
        """``tensor`` times the factor of the slice each entry belongs to (0 off the layout).

        Example:
            >>> lay = slice_layout((4, 1, 1, 2), 2)
            >>> lay.scale(torch.ones(4, 1, 1, 2), torch.tensor([1., 2., 3., 4.]))[:, 0, 0].tolist()
            [[1.0, 2.0], [3.0, 4.0], [1.0, 2.0], [3.0, 4.0]]
        """
        out = self.rows(tensor) * per_slice
        if self.all_filters:
            return out.view(self.weight_shape)
        full = torch.zeros((self.weight_shape[0], self.slices_per_block), dtype=out.dtype,
                           device=out.device)
        full.index_copy_(0, self.filters.to(out.device), out.view(-1, self.slices_per_block))
        return full.view(self.weight_shape)

    def scatter(self, per_slice: torch.Tensor, fill: Union[bool, float] = True) -> torch.Tensor:
        """Spread a per-slice tensor ``[S]`` over the weight's shape; other filters get ``fill``.

        Example:
            >>> lay = slice_layout((4, 1, 1, 2), 2)
            >>> lay.scatter(torch.tensor([True, False, True, True]))[:, 0, 0].tolist()
            [[True, False], [True, True], [True, False], [True, True]]
        """
        c_out = self.weight_shape[0]
        k = self.slices_per_block
        out = torch.full((c_out, k), fill, dtype=per_slice.dtype, device=per_slice.device)
        rows = per_slice.view(1, self.num_blocks, k).expand(self.block_size, -1, -1)
        out.index_copy_(0, self.filters.to(out.device), rows.reshape(-1, k))
        return out.view(self.weight_shape)


def slice_layout(weight_shape: Sequence[int], block_size: int,
                 surviving: Optional[torch.Tensor] = None, *,
                 device: Optional[torch.device] = None) -> Optional[SliceLayout]:
    """Compute the slice layout of a 4-d conv weight; None when filters do not fill whole blocks.

    Args:
        weight_shape: ``(C_out, C_in_per_group, H, W)``.
        block_size: ``A`` (use :func:`conv_block_size` to pick it for a conv).
        surviving: boolean ``[C_out]`` (True = filter not channel-masked) or a LongTensor of
            surviving filter indices; None means every filter survives.
        device: where the index tensors live (default: ``surviving``'s device, else CPU).

    Returns None when the number of surviving filters is 0 or not a multiple of ``A``.

    Example:
        >>> lay = slice_layout((16, 8, 3, 3), 8)
        >>> lay.num_blocks, lay.num_slices, tuple(lay.index.shape)
        (2, 144, (144, 8))
        >>> slice_layout((12, 8, 3, 3), 8) is None
        True
    """
    shape = tuple(int(d) for d in weight_shape)
    if len(shape) != 4:
        raise ValueError(f"slice layouts are defined for 4-d conv weights, got shape {shape}")
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    if surviving is None:
        dev = device if device is not None else torch.device("cpu")
        filters = torch.arange(shape[0], device=dev)
    else:
        dev = device if device is not None else surviving.device
        if surviving.dtype == torch.bool:
            if surviving.numel() != shape[0]:
                raise ValueError(f"surviving has {surviving.numel()} entries for "
                                 f"{shape[0]} filters")
            filters = surviving.nonzero().flatten().to(dev)
        else:
            filters = surviving.to(device=dev, dtype=torch.long).sort().values
    n = filters.numel()
    if n == 0 or n % block_size:
        return None
    return SliceLayout(shape, block_size, filters)  # type: ignore[arg-type]


def is_depthwise(conv: nn.Conv2d) -> bool:
    """True for a depthwise conv: one input channel per group (weight ``C_out x 1 x H x W``).

    Example:
        >>> is_depthwise(nn.Conv2d(8, 8, 3, groups=8)), is_depthwise(nn.Conv2d(8, 8, 3))
        (True, False)
    """
    return conv.groups > 1 and conv.weight.shape[1] == 1


def conv_block_size(conv: nn.Conv2d, block_size: int, depthwise_block_size: int) -> int:
    """``A`` for ``conv``: ``depthwise_block_size`` for depthwise convs, else ``block_size``.

    Example:
        >>> conv_block_size(nn.Conv2d(8, 8, 3, groups=8), 8, 2)
        2
    """
    return depthwise_block_size if is_depthwise(conv) else block_size
