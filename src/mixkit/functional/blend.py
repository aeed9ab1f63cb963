"""Linear blends of a batch with a partner row per sample.

Follows Zhang et al., "mixup: Beyond Empirical Risk Minimization" (ICLR 2018) and, for
:func:`bc_plus_blend`, Tokozume et al., "Between-class Learning for Image Classification"
(CVPR 2018; reference code github.com/mil-tokyo/bc_learning_image).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from mixkit._device import upload
from mixkit.functional import row_paths
from mixkit.functional.alloc import fresh, fresh_like, is_large
from mixkit.functional.layout import (  # also re-exported here
    from_memory,
    match_format,
    memory_order,
    to_memory,
)
from mixkit.functional.scratch import (  # gather_rows_scratch, release_blend_scratch: also re-exported here
    _blend_half_rows,
    gather_rows_scratch,
    release_blend_scratch,
)

__all__ = ["blend", "blend_", "gather_rows_scratch", "release_blend_scratch", "bc_plus_blend", "mask_blend", "select_by_mask", "match_format", "memory_order", "gather_rows", "take_rows", "select_rows"]


def gather_rows(x: Tensor, index: Tensor) -> Tensor:
    """``x[index]`` along dim 0, gathered in ``x``'s memory order (keeps channels_last)."""
    order = memory_order(x)
    return from_memory(take_rows(to_memory(x, order), index), order)


def take_rows(x: Tensor, index: Tensor) -> Tensor:
    """``x.index_select(0, index)``; a large contiguous ``x`` on the CPU is gathered as
    ``(B, -1)`` rows into :func:`~mixkit.functional.alloc.fresh` memory (no page faults; the
    row views cost more than they save on small batches, where a view op takes about a
    microsecond)."""
    index = upload(index, x.device)
    if x.ndim > 2 and x.is_contiguous() and not (torch.is_grad_enabled() and x.requires_grad):
        n, per_row = index.shape[0], math.prod(x.shape[1:])  # (not -1: an empty batch has no row size)
        if is_large(n * per_row, x.dtype, x.device):
            rows = x.view(x.shape[0], per_row)
            out = torch.index_select(rows, 0, index, out=fresh((n, per_row), x.dtype, x.device))
            return out.view((n,) + x.shape[1:])
    return x.index_select(0, index)


def select_rows(rows: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """``a`` in the rows where ``rows (B,)`` is True, ``b`` elsewhere (a new tensor).

    Floating-point tensors go through a ``lerp`` with a 0/1 weight per row (exact for finite
    values, and several times faster than ``torch.where``); others through ``torch.where``.
    """
    rows = upload(rows, a.device).view((-1,) + (1,) * (a.ndim - 1))
    if a.is_floating_point() and a.dtype == b.dtype:
        return torch.lerp(b, a, rows.to(a.dtype))
    return torch.where(rows, a, b)


def uniform_value(lam: Tensor | float) -> float | None:
    """The common value of ``lam`` as a float if all its entries are equal, else ``None``."""
    if not isinstance(lam, Tensor):
        return float(lam)
    if lam.numel() == 1:
        return float(lam.reshape(()))
    if not lam.numel():  # no rows, no common value (aminmax has no identity)
        return None
    low, high = torch.aminmax(lam)
    return float(low) if bool(low == high) else None


_HALF = (torch.float16, torch.bfloat16)


def blend(x: Tensor, index: Tensor, lam: Tensor | float, *, check_uniform: bool = True) -> Tensor:
    """``lam * x + (1 - lam) * x[index]``, out of place.

    Works in the input's memory order (one row gather and one ``lerp``), so channels_last
    inputs give channels_last outputs without copies. Half-precision inputs are blended at
    float32 precision and rounded once: with one weight for the batch the half-precision
    ``lerp`` kernel does exactly that; per-sample weights (which would be rounded to the
    input's precision if the kernel took them) go through float32 a chunk of rows at a time,
    so no float32 copy of the batch is made.

    Args:
        x: ``(B, ...)`` float tensor.
        index: ``(B,)`` partner rows.
        lam: ``(B,)`` weight of each row's own sample (exact at 0 and 1), or one float.
        check_uniform: look for one common value in a ``lam`` tensor (the faster one-weight
            kernels then run); callers that know the weights differ pass ``False``.
    """
    order = memory_order(x)
    view = to_memory(x, order)
    lam_grad = isinstance(lam, Tensor) and lam.requires_grad and torch.is_grad_enabled()
    # a float would cut a learned lambda out of the graph: such a lambda stays a tensor
    value = uniform_value(lam) if (check_uniform or not isinstance(lam, Tensor)) and not lam_grad else None
    if torch.is_grad_enabled() and x.requires_grad and not lam_grad:
        if value is not None:
            return _ScalarBlend.apply(x, upload(index, x.device), value)
        assert isinstance(lam, Tensor)
        return _RowBlend.apply(x, upload(index, x.device), upload(lam, x.device))
    # below, autograd sees x only together with a learned lambda (lam_grad); otherwise the
    # gathered partners, a temporary, hold the result
    plan = row_paths.row_plan(view.shape[0], index, lam if value is None else value) if not lam_grad and row_paths.row_wise(view) else None
    if plan is not None:
        out = row_paths.lerp_rows(view, *plan)
    elif value is not None:
        out = take_rows(view, index).lerp_(view, value)
    elif x.dtype in _HALF and not (torch.is_grad_enabled() and x.requires_grad):
        assert isinstance(lam, Tensor)
        out = _blend_half_rows(view, index, lam)
    else:
        assert isinstance(lam, Tensor)
        work = view.float() if x.dtype in _HALF else view
        shape = (lam.shape[0],) + (1,) * (x.ndim - 1)
        w = upload(lam, x.device, work.dtype).view(shape)
        partner = take_rows(work, index)
        out = (torch.lerp(partner, work, w) if lam_grad else partner.lerp_(work, w)).to(x.dtype)
    return match_format(from_memory(out, order), x)


class _ScalarBlend(torch.autograd.Function):
    """``lerp(x[index], x, w)`` for one float ``w``, with a two-pass backward:
    ``grad_x = w * g``, then ``(1 - w) * g`` added into the partner rows (autograd's own graph
    makes a zero tensor, a scatter and two sums of the batch's size)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, index: Tensor, w: float) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(index)
        ctx.w = w
        order = memory_order(x)
        view = to_memory(x, order)
        plan = row_paths.row_plan(view.shape[0], index, w) if row_paths.row_wise(view) else None
        out = row_paths.lerp_rows(view, *plan) if plan is not None else take_rows(view, index).lerp_(view, w)
        return match_format(from_memory(out, order), x)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        (index,) = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: a differentiable (out-of-place) scatter
            return (g * ctx.w).index_add(0, index, g, alpha=1.0 - ctx.w), None, None
        grad = torch.mul(g, ctx.w, out=fresh_like(g))
        return grad.index_add_(0, index, g, alpha=1.0 - ctx.w), None, None


class _RowBlend(torch.autograd.Function):
    """``lerp(x[index], x, w)`` with one weight per row (float32 arithmetic for half inputs),
    with a backward of one product and one scatter-add into the partner rows."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, index: Tensor, lam: Tensor) -> Tensor:  # type: ignore[override]
        work = torch.float32 if x.dtype in _HALF else x.dtype
        w = lam.to(work).view((lam.shape[0],) + (1,) * (x.ndim - 1))
        ctx.save_for_backward(index, w)
        order = memory_order(x)
        view = to_memory(x, order)
        plan = row_paths.row_plan(view.shape[0], index, lam) if row_paths.row_wise(view) else None
        if plan is not None:
            out = row_paths.lerp_rows(view, *plan)
        elif x.dtype in _HALF:
            out = _blend_half_rows(view, index, lam)
        else:
            out = take_rows(view, index).lerp_(view, to_memory(w, order))
        return match_format(from_memory(out, order), x)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        index, w = ctx.saved_tensors
        gw = g.to(w.dtype)
        if torch.is_grad_enabled():  # create_graph: the out-of-place (differentiable) scatter
            return (gw * w).index_add(0, index, gw * (1.0 - w)).to(g.dtype), None, None
        grad = torch.mul(gw, w, out=fresh_like(gw))
        return grad.index_add_(0, index, gw.mul_(1.0 - w) if gw is not g else gw * (1.0 - w)).to(g.dtype), None, None


def blend_(x: Tensor, index: Tensor, lam: Tensor | float) -> Tensor:
    """:func:`blend` written into ``x`` (the same values); returns ``x``.

    The partners are gathered first (into :func:`gather_rows_scratch`'s reusable buffer),
    then one ``lerp`` writes the result over ``x``: no batch-sized tensor is allocated. Large
    samples on the CPU paired by a permutation are blended row by row along its cycles
    instead, one row kept aside per cycle (no gather at all). ``x`` must not require grad.
    """
    if torch.is_grad_enabled() and (x.requires_grad or (isinstance(lam, Tensor) and lam.requires_grad)):
        raise ValueError("blend_ writes into x: x and lam may not require grad (use blend)")
    order = memory_order(x)
    view = to_memory(x, order)
    if not view.is_contiguous():
        return x.copy_(blend(x, index, lam))
    plan = row_paths.row_plan(view.shape[0], index, lam) if row_paths.row_wise(view) else None
    if plan is not None and sorted(plan[0]) == list(range(view.shape[0])):  # a permutation: cycle by cycle
        row_paths.lerp_cycles_(view, *plan)
        return x
    partners = gather_rows_scratch(view, index)
    value = uniform_value(lam)
    if value is not None:
        torch.lerp(partners, view, value, out=view)
    elif x.dtype in _HALF:
        assert isinstance(lam, Tensor)
        _blend_half_rows(view, index, lam, partners=partners, out=view)
    else:
        assert isinstance(lam, Tensor)
        w = upload(lam, x.device, x.dtype).view((lam.shape[0],) + (1,) * (x.ndim - 1))
        torch.lerp(partners, view, w, out=view)
    return x


def bc_plus_blend(x: Tensor, index: Tensor, ratio: Tensor) -> Tensor:
    """BC+ mixing: images treated as waveforms, their standard deviation as sound pressure.

    With ``g1 = std(x_i)``, ``g2 = std(x_j)`` and label ratio ``r``:
    ``p = 1 / (1 + g1 / g2 * (1 - r) / r)`` and
    ``x~ = (p * x_i + (1 - p) * x_j) / sqrt(p^2 + (1 - p)^2)``. The paper feeds BC+ per-image
    zero-mean images (train and test alike); this function does not subtract the mean.

    Args:
        x: ``(B, ...)`` float tensor.
        index: ``(B,)`` partner rows.
        ratio: ``(B,)`` label weight ``r`` of each row's own sample.
    """
    if not x.shape[0]:  # nothing to mix (and std over no rows warns)
        return x.clone()
    work = torch.promote_types(x.dtype, torch.float32)
    order = memory_order(x)
    g = to_memory(x, order).reshape(x.shape[0], math.prod(x.shape[1:])).to(work).std(dim=1, correction=0)
    g1, g2 = g, g.index_select(0, upload(index, x.device))
    r = upload(ratio, x.device, work)
    num, den = r * g2, r * g2 + (1 - r) * g1
    # p = r g2 / (r g2 + (1 - r) g1), the paper's formula times r g2 / r g2: finite at r = 0;
    # two constant images (g1 = g2 = 0) fall back to p = r.
    p = torch.where(den > 0, num / den.clamp_min(torch.finfo(work).tiny), r)
    scale = 1.0 / torch.sqrt(p * p + (1 - p) * (1 - p))
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    view = to_memory(x, order)
    partner = take_rows(view, index)
    out = _lerp_into(partner, view, p.to(x.dtype).view(shape)).mul_(scale.to(x.dtype).view(shape))
    return match_format(from_memory(out, order), x)


def mask_blend(x: Tensor, index: Tensor, mask: Tensor) -> Tensor:
    """``mask * x + (1 - mask) * x[index]`` for a mask ``(N, 1, *spatial)``, N in {1, B}.

    A boolean mask copies values (works on uint8); a float mask blends them.
    """
    order = memory_order(x)
    view = to_memory(x, order)
    if (row_paths.row_wise(view) and mask.ndim == view.ndim and mask.shape[0] in (1, view.shape[0])
            and not (torch.is_grad_enabled() and (x.requires_grad or mask.requires_grad))):
        plan = row_paths.row_plan(view.shape[0], index, 0.0)
        if plan is not None:
            return match_format(from_memory(row_paths.select_rows(view, plan[0], to_memory(mask, order)), order), x)
    partner = take_rows(view, index)
    return match_format(from_memory(_select(view, partner, to_memory(mask, order), into=True), order), x)


def select_by_mask(x: Tensor, partner: Tensor, mask: Tensor) -> Tensor:
    """``mask * x + (1 - mask) * partner``: a bool mask copies values, a float mask blends."""
    order = memory_order(x)
    out = _select(to_memory(x, order), to_memory(partner, order), to_memory(mask, order))
    return match_format(from_memory(out, order), x)


def _select(x: Tensor, partner: Tensor, mask: Tensor, *, into: bool = False) -> Tensor:
    """:func:`select_by_mask` on tensors in the same dim order (the mask broadcasts).

    Floating-point inputs go through ``lerp`` (its weight 0 or 1 gives exactly ``partner``
    or ``x`` for finite values, and it runs several times faster than ``torch.where``: 101
    against 1082 us for a float32 batch of 128 at 32x32 and a random mask, here). A mask
    broadcast along the innermost dim (channels_last's channels), where a broadcast defeats
    vectorisation, is expanded first; but when the partner is one value per channel (a colour,
    broadcast over the pixels) and there are at most ``_PER_CHANNEL_MAX`` channels, one
    strided ``lerp`` per channel runs instead (3.9x faster; with a full partner it was 1.2x
    faster alone but not inside the superpixel methods: ``bench/ab.py`` gave 1.03 slower). Integer
    inputs (bool masks) take bit operations (:func:`_select_bits`). ``into=True`` says ``partner`` is a temporary of
    the caller's that may hold the result.
    """
    mask = upload(mask, x.device)
    if mask.dtype == torch.bool and not x.is_floating_point():
        return _select_bits(x, partner, mask)
    weight = mask.to(x.dtype)
    if x.ndim and weight.ndim == x.ndim and weight.shape[-1] == 1 and x.shape[-1] > 1:
        if (x.shape[-1] <= _PER_CHANNEL_MAX and partner.dtype == x.dtype and partner.ndim == x.ndim
                and partner.shape[-1] in (1, x.shape[-1]) and math.prod(partner.shape[:-1]) == 1
                and broadcasts_to(weight.shape, x.shape)
                and not (torch.is_grad_enabled() and (x.requires_grad or partner.requires_grad or weight.requires_grad))):
            out = torch.empty_like(x)  # (the partner, one colour, cannot hold the result)
            w = weight.squeeze(-1)
            for c in range(x.shape[-1]):
                torch.lerp(partner.select(-1, min(c, partner.shape[-1] - 1)), x.select(-1, c), w,
                           out=out.select(-1, c))
            return out
        weight = weight.expand(weight.shape[:-1] + x.shape[-1:]).contiguous()
    return _lerp_into(partner, x, weight) if into else torch.lerp(partner, x, weight)


def _select_bits(x: Tensor, partner: Tensor, mask: Tensor) -> Tensor:
    """``torch.where(mask, x, partner)`` for integer tensors, as ``partner ^ ((x ^ partner) &
    keep)`` with ``keep`` all ones where ``mask`` (the same values, exactly). torch's
    ``where`` is slow on random masks here: 793 against 49 us for a uint8 batch of 128 at
    32x32, 70 against 6.3 ms at 224x224 (3.7-5x with channels_last's broadcast mask). Bool
    tensors, mixed dtypes and a mask larger than the result take ``where``."""
    if x.dtype == torch.bool or partner.dtype != x.dtype:
        return torch.where(mask, x, partner)
    shape = torch.broadcast_shapes(x.shape, partner.shape)
    if not broadcasts_to(mask.shape, shape):
        return torch.where(mask, x, partner)
    keep = mask.to(x.dtype).neg_()  # -1: every bit set (uint8: 255)
    return torch.bitwise_xor(x, partner).bitwise_and_(keep).bitwise_xor_(partner)


#: channels (innermost dim) up to which :func:`_select` blends one channel at a time
_PER_CHANNEL_MAX = 4


def _lerp_into(start: Tensor, end: Tensor, weight: Tensor | float) -> Tensor:
    """``torch.lerp(start, end, weight)`` written into ``start`` (a temporary of the caller)
    when autograd need not see it, saving an allocation; out of place otherwise."""
    if torch.is_grad_enabled() and (
        start.requires_grad or end.requires_grad or (isinstance(weight, Tensor) and weight.requires_grad)
    ):
        return torch.lerp(start, end, weight)
    if not (broadcasts_to(end.shape, start.shape) and start.dtype == end.dtype) or (
        isinstance(weight, Tensor) and not broadcasts_to(weight.shape, start.shape)
    ):
        return torch.lerp(start, end, weight)
    return start.lerp_(end, weight)


def broadcasts_to(shape: Sequence[int], target: Sequence[int]) -> bool:
    """Whether a tensor of ``shape`` broadcasts to ``target`` without growing it."""
    if len(shape) > len(target):
        return False
    return all(s == 1 or s == t for s, t in zip(reversed(shape), reversed(target)))
