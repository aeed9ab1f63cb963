"""Memory layouts of image batches: channels_last kept through the mixes.

A channels_last batch is worked on through a permuted view in which it is contiguous
(:func:`memory_order`, :func:`to_memory`), so row gathers and element-wise kernels run at
full speed, and the result is permuted back (:func:`from_memory`) or copied to the input's
format (:func:`match_format`).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["from_memory", "match_format", "memory_order", "to_memory"]


def match_format(out: Tensor, like: Tensor) -> Tensor:
    """Return ``out`` in ``like``'s memory format (channels_last kept)."""
    for fmt, ndim in ((torch.channels_last, 4), (torch.channels_last_3d, 5)):
        if like.ndim == ndim and like.is_contiguous(memory_format=fmt) and not like.is_contiguous():
            return out.contiguous(memory_format=fmt)
    return out


def memory_order(x: Tensor) -> tuple[int, ...] | None:
    """The dim order in which ``x`` is laid out in memory, if it is not the logical one.

    ``x.permute(order)`` is then a contiguous view (channels_last: ``(0, 2, 3, 1)``), on
    which row gathers and element-wise kernels run at full speed; permuting the result back
    gives a tensor in ``x``'s memory format. ``None`` for contiguous (or other) layouts.
    """
    if x.ndim in (4, 5) and not x.is_contiguous():
        fmt = torch.channels_last if x.ndim == 4 else torch.channels_last_3d
        if x.is_contiguous(memory_format=fmt):
            return (0,) + tuple(range(2, x.ndim)) + (1,)
    return None


def to_memory(t: Tensor, order: tuple[int, ...] | None) -> Tensor:
    """``t`` viewed in the dim order of :func:`memory_order` (``None``: as it is)."""
    return t if order is None else t.permute(order)


def from_memory(t: Tensor, order: tuple[int, ...] | None) -> Tensor:
    """Undo :func:`to_memory`: back to the logical dim order (a view)."""
    return t if order is None else t.permute((0, t.ndim - 1) + tuple(range(1, t.ndim - 1)))
