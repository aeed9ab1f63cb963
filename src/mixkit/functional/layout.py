"""Memory layouts of image batches: channels_last kept through the mixes.

A channels_last batch is worked on through a permuted view in which it is contiguous
(:func:`memory_order`, :func:`to_memory`), so row gathers and element-wise kernels run at
full speed, and the result is permuted back (:func:`from_memory`) or copied to the input's
format (:func:`match_format`). Copies from one layout to another go through
:func:`copy_into`, which is faster than ``copy_`` for float32 and float64 on the CPU.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["affine_into", "copy_into", "from_memory", "in_format", "match_format", "memory_order", "to_memory"]

#: the integer type of each float type's width: a copy between layouts moves the bits as these
_AS_INT = {torch.float32: torch.int32, torch.float64: torch.int64}


def copy_into(dst: Tensor, src: Tensor) -> Tensor:
    """``dst.copy_(src)``, faster between memory layouts; returns ``dst``.

    In this CPU build, torch's float copy kernel is slower than its integer one when the two
    tensors' strides differ. ``python bench/layout.py`` (``bench/results/layout.json``) timed a
    float32 batch of 128 going contiguous to channels_last and back:

    * at 32 x 32, 399 against 282 us and 221 against 122 us, with the batch in cache (with
      ``--cold``: 468 against 440 and 429 against 362 us);
    * at 224 x 224, 13.6 against 8.9 ms and 17.3 against 13.0 ms.

    So float32 and float64 CPU tensors of the same shape and dtype whose strides differ are
    copied as same-width integers: the same bits, NaN payloads and signed zeros included.
    Anything else (a dtype change, broadcasting, autograd, other devices) is ``copy_``.
    """
    as_int = _AS_INT.get(src.dtype)
    if (
        as_int is None
        or dst.dtype != src.dtype
        or dst.device.type != "cpu"
        or src.device.type != "cpu"
        or dst.shape != src.shape
        or dst.stride() == src.stride()
        or src.is_neg()
        or dst.is_neg()
        or (torch.is_grad_enabled() and (src.requires_grad or dst.requires_grad))
    ):
        return dst.copy_(src)
    dst.view(as_int).copy_(src.view(as_int))
    return dst


def affine_into(dst: Tensor, src: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
    """``dst = src * scale + shift`` (a product, then a sum: two roundings); returns ``dst``.

    For per-channel ``scale`` and ``shift`` (``(1, C, 1, 1)``) into a contiguous ``dst``: a
    per-channel broadcast over a channels_last ``src`` runs several times slower than over a
    contiguous one, so when the layouts differ ``src`` is copied first (:func:`copy_into`) and
    the affine runs in place in ``dst``'s layout (the same values).
    """
    if dst.stride() == src.stride():
        return torch.mul(src, scale, out=dst).add_(shift)
    return copy_into(dst, src).mul_(scale).add_(shift)


def in_format(t: Tensor, memory_format: torch.memory_format) -> Tensor:
    """``t.contiguous(memory_format=memory_format)``, the copy (when one is needed) made by
    :func:`copy_into`; ``t`` itself when it is already in that format."""
    if t.is_contiguous(memory_format=memory_format):
        return t
    if torch.is_grad_enabled() and t.requires_grad:
        return t.contiguous(memory_format=memory_format)
    return copy_into(torch.empty_like(t, memory_format=memory_format), t)


def match_format(out: Tensor, like: Tensor) -> Tensor:
    """Return ``out`` in ``like``'s memory format (channels_last kept)."""
    for fmt, ndim in ((torch.channels_last, 4), (torch.channels_last_3d, 5)):
        if like.ndim == ndim and like.is_contiguous(memory_format=fmt) and not like.is_contiguous():
            return in_format(out, fmt)
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
