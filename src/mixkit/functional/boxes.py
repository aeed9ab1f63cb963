"""Boxes: box masks and pasting into a batch (CutMix's box sampling is in
:mod:`mixkit.functional.box_sampling`, resized pasting for ResizeMix in
:mod:`mixkit.functional.resized_paste`; both still importable from here).

A box set is an ``(N, 2 * d)`` int64 tensor ``[start_1..start_d, end_1..end_d]`` over the
``d`` trailing spatial dims (ends exclusive), with N = 1 (one box for the batch) or B.

Follows Yun et al., "CutMix" (ICCV 2019; github.com/clovaai/CutMix-PyTorch).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from mixkit._device import upload
from mixkit._moved import moved_names
from mixkit.functional import row_paths
from mixkit.functional.alloc import fresh_copy, fresh_like
from mixkit.functional.blend import (
    broadcasts_to,
    from_memory,
    gather_rows_scratch,
    match_format,
    memory_order,
    take_rows,
    to_memory,
)
from mixkit.functional.box_sampling import (  # box sampling: also served from here
    box_fraction,
    one_box_fraction,
    sample_cut_boxes,
)

__all__ = ["sample_cut_boxes", "box_fraction", "one_box_fraction", "box_mask", "box_weight", "paste_boxes", "paste_boxes_"]


def box_mask(boxes: Tensor, spatial: Sequence[int], device: torch.device | str | None = None) -> Tensor:
    """``(N, 1, *spatial)`` bool, True inside each box."""
    d = len(spatial)
    boxes = upload(boxes, device)
    inside = None
    for k, size in enumerate(spatial):
        pos = torch.arange(size, device=boxes.device)
        hit = (pos >= boxes[:, k : k + 1]) & (pos < boxes[:, d + k : d + k + 1])  # (N, size)
        hit = hit.view((boxes.shape[0],) + (1,) * (k + 1) + (size,) + (1,) * (d - k - 1))
        inside = hit if inside is None else inside & hit
    assert inside is not None
    return inside


def box_weight(
    boxes: Tensor, shape: Sequence[int], dtype: torch.dtype, order: tuple[int, ...] | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """The boxes' indicator (1 inside) as a float weight, built from one profile per axis.

    Args:
        boxes: ``(N, 2 * d)`` boxes.
        shape: the batch's shape ``(B, C, *spatial)``.
        dtype: the weight's dtype.
        order: ``None`` for ``(N, 1, *spatial)``; a :func:`~mixkit.functional.blend.memory_order`
            to get the weight in that dim order, channels last included: ``(N, *spatial, C)``,
            the last axis's profile repeated over the channels so that the product and the
            blend run along contiguous memory.
        device: where to build it.
    """
    d = len(shape) - 2
    n, c, spatial = boxes.shape[0], shape[1], tuple(shape[2:])
    boxes = upload(boxes, device)
    # every axis's profile in one set of ops: (N, d, longest side), 1 where start <= pos < end
    pos = torch.arange(max(spatial, default=0), device=boxes.device)
    bounds = boxes.reshape(n, 2, d, 1)
    profiles = torch.ge(pos, bounds[:, 0]).logical_and_(torch.lt(pos, bounds[:, 1])).to(dtype)
    out = None
    for k, size in enumerate(spatial):
        hit = profiles[:, k, :size]  # (N, size)
        if order is None:
            hit = hit.view((n, 1) + (1,) * k + (size,) + (1,) * (d - k - 1))
        elif k == d - 1:
            hit = hit.unsqueeze(2).expand(n, size, c).contiguous().view((n,) + (1,) * k + (size, c))
        else:
            hit = hit.view((n,) + (1,) * k + (size,) + (1,) * (d - k))
        out = hit if out is None else out * hit
    assert out is not None
    return out


Span = row_paths.Span  # (dim, start, length) of a box along one dim of a tensor


def _spans(box: Tensor | list[int], d: int, order: tuple[int, ...] | None = None) -> tuple[Span, ...]:
    """The box's extent along each spatial dim of ``x`` (``order``: of its :func:`memory_order`
    view, where the spatial dims come first)."""
    b = box.tolist() if isinstance(box, Tensor) else box
    first = 2 if order is None else 1
    return tuple((first + k, b[k], max(b[d + k] - b[k], 0)) for k in range(d))


def _narrow(t: Tensor, spans: Sequence[Span]) -> Tensor:
    """The box of ``t`` (a view). A box inside ``t`` on several dims is one ``as_strided``
    (each view op costs microseconds here: two ``narrow`` calls take 2.6 times as long);
    otherwise, or where autograd records the view, one ``narrow`` per dim (which checks the
    range: a start past the end raises)."""
    if len(spans) > 1 and not (t.requires_grad and torch.is_grad_enabled()):
        shape = t.shape
        for dim, start, length in spans:
            if start < 0 or length < 0 or start + length > shape[dim]:
                break
        else:
            return row_paths.box_as_strided(t, spans)
    for dim, start, length in spans:
        t = t.narrow(dim, start, length)
    return t


def _gather_box(view: Tensor, index: Tensor, spans: Sequence[Span], *, scratch: bool = False) -> Tensor:
    """``_narrow(view, spans).index_select(0, index)``, as a view of the same values.

    Gathering a box's rows directly runs an element-by-element kernel; when the box spans most
    of its trailing dims, the rows of the whole band it lies in are gathered instead (one copy
    per contiguous run, 2-4x faster) and the box narrowed out of them. ``scratch``: gather into
    the thread's reused buffer (:func:`~mixkit.functional.blend.gather_rows_scratch`; valid
    until its next use), for a caller that copies the result at once: a fresh box of a large
    batch costs page faults on the CPU, often more than the copy.
    """
    gather = gather_rows_scratch if scratch else (lambda t, i: t.index_select(0, i))
    shape = view.shape
    for k, (dim, start, length) in enumerate(spans):
        if (start, length) == (0, shape[dim]):
            continue
        inner = math.prod(shape[dim + 1 :])
        kept = inner
        for later_dim, _, later_length in spans[k + 1 :]:
            kept = kept // shape[later_dim] * later_length
        if view.is_contiguous() and inner <= _BAND_WASTE * max(kept, 1):
            return _narrow(gather(view.narrow(dim, start, length), index), spans[k + 1 :])
        break
    return gather(_narrow(view, spans), index)


def _copy_box_rows(out: Tensor, view: Tensor, index: Tensor, spans: Sequence[Span]) -> None:
    """Write the partners' box, ``_narrow(view, spans)[index]``, into ``_narrow(out, spans)``
    (``out`` a tensor of its own, not sharing memory with ``view``).

    On the CPU without autograd the rows are gathered straight into the box of ``out`` (one
    pass, about twice as fast as gathering into a buffer and copying it: 3.2 against 5.7 ms
    for half of a bfloat16 batch of 128 at 224x224); otherwise through :func:`_gather_box`.
    """
    dst = _narrow(out, spans)
    if (view.device.type == "cpu" and index.shape == view.shape[:1]
            and not (torch.is_grad_enabled() and (out.requires_grad or view.requires_grad))):
        torch.index_select(_narrow(view, spans), 0, index, out=dst)
    else:
        dst.copy_(_gather_box(view, index, spans))


#: how many times the box's own elements the band around it may hold for :func:`_gather_box`
#: to gather the band (its copy runs several times faster per element)
_BAND_WASTE = 3


def _paste_setup(x: Tensor, index: Tensor, boxes: Tensor) -> tuple[tuple[int, ...] | None, Tensor, Tensor, tuple[Span, ...] | None]:
    """``x``'s memory order and view in it, ``index`` on its device, and the spans of the
    batch's one box (``None`` for a box per sample)."""
    order = memory_order(x)
    spans = _spans(boxes.tolist()[0], x.ndim - 2, order) if boxes.shape[0] == 1 else None
    return order, to_memory(x, order), upload(index, x.device), spans


def paste_boxes(x: Tensor, index: Tensor, boxes: Tensor) -> Tensor:
    """Copy ``x[index]`` into ``x`` inside ``boxes``, out of place (any dtype, uint8 included).

    One box for the batch: a copy of ``x`` and one gather of the partners' region; one box per
    sample: the partners gathered, then ``x`` written back outside the boxes in one pass (a
    ``lerp`` whose 0/1 weight is built from per-axis profiles; ``torch.where`` for integer
    images), or, for large samples on the CPU, a copy of ``x`` and one copy per box from its
    partner. Works in the input's memory order, so channels_last stays channels_last.
    """
    order, view, index, spans = _paste_setup(x, index, boxes)
    if spans is not None:
        if torch.is_grad_enabled() and x.requires_grad:
            return match_format(from_memory(_BoxPaste.apply(view, index, spans), order), x)
        out = fresh_copy(view)  # view's strides: x's format once viewed back
        _copy_box_rows(out, view, index, spans)
        return from_memory(out, order)
    listed = _row_boxes(index, boxes, x.shape[2:], order) if row_paths.rows_without_grad(view, x) else None
    if listed is not None:
        pasted = {row: (partner, spans) for row, partner, spans in listed}
        if view[0].nbytes < row_paths.ROW_COPY_MIN_BYTES:  # one copy of the batch, then the boxes
            out = fresh_copy(view)
            for row, (partner, spans) in pasted.items():
                row_paths.row_box(out, row, spans).copy_(row_paths.row_box(view, partner, spans))
            return match_format(from_memory(out, order), x)
        out = fresh_like(view)
        rows, outs = view.unbind(0), out.unbind(0)
        for row in row_paths.chain_order(index.tolist()):  # the partner's box is read just before its row is copied
            outs[row].copy_(rows[row])
            if row in pasted:
                partner, spans = pasted[row]
                row_paths.row_box(out, row, spans).copy_(row_paths.row_box(view, partner, spans))
        return match_format(from_memory(out, order), x)
    partner = take_rows(view, index)
    return match_format(from_memory(_paste_into(view, partner, boxes, order), order), x)


def _row_boxes(index: Tensor, boxes: Tensor, spatial: Sequence[int], order: tuple[int, ...] | None) -> list[tuple[int, int, tuple[Span, ...]]] | None:
    """``(row, partner, spans)`` of each non-empty box of a box per sample (the spans of the
    batch's memory-order view when ``order`` is given); ``None`` unless ``index`` holds one row
    of the batch per box and every box lies in the image (the batched forms then run: they clip
    boxes to the image and raise on bad rows, as they always did)."""
    d, b = len(spatial), boxes.shape[0]
    partners, rows = index.tolist(), []
    if index.ndim != 1 or len(partners) != b or boxes.shape != (b, 2 * d):
        return None
    for row, (partner, box) in enumerate(zip(partners, boxes.tolist())):
        if not 0 <= partner < b or any(box[k] < 0 or box[d + k] > size for k, size in enumerate(spatial)):
            return None
        spans = _spans(box, d, order)
        if all(length > 0 for _, _, length in spans):
            rows.append((row, partner, spans))
    return rows


def paste_boxes_(x: Tensor, index: Tensor, boxes: Tensor) -> Tensor:
    """:func:`paste_boxes` written into ``x`` (the same values); returns ``x``.

    One box: the partners' box rows are gathered, then copied over ``x``'s box (no copy of
    the batch); for large samples on the CPU paired by a permutation, the boxes are copied
    along its cycles instead (one pass). One box per sample: the partners are gathered into a
    buffer reused across calls (:func:`~mixkit.functional.blend.gather_rows_scratch`) and
    written over ``x`` inside the boxes in one pass; for large samples, each partner's box is
    copied out, then each pasted. ``x`` must not require grad.
    """
    if torch.is_grad_enabled() and x.requires_grad:
        raise ValueError("paste_boxes_ writes into x: x may not require grad (use paste_boxes)")
    order, view, index, spans = _paste_setup(x, index, boxes)
    if (spans is not None and row_paths.row_wise(view) and view.is_contiguous() and index.ndim == 1
            and all(start >= 0 and start + length <= view.shape[dim] for dim, start, length in spans)):
        # (a box outside the image takes the batched path, which raises or clips as it always did:
        # the rows' strided boxes would reach into the neighbouring rows)
        partners = index.tolist()
        if sorted(partners) == list(range(view.shape[0])):
            row_paths.copy_box_cycles_(view, partners, spans)
            return x
    if spans is not None:  # the box's partner rows are gathered before the box is written
        region = _narrow(view, spans)
        if row_paths.row_wise(view) or view.element_size() < 4:  # the band's longer runs copy faster
            region.copy_(_gather_box(view, index, spans, scratch=True))
        else:  # small samples of 4-byte or wider values: the box itself, fewer calls (float32 in place at 32x32: 0.98x)
            region.copy_(gather_rows_scratch(region, index))
        return x
    if not view.is_contiguous():
        return x.copy_(paste_boxes(x, index, boxes))
    pasted = _row_boxes(index, boxes, x.shape[2:], order) if row_paths.row_wise(view) else None
    if pasted is not None:  # each partner's box is copied out before any box is written
        crops = [row_paths.row_box(view, partner, spans).clone() for _, partner, spans in pasted]
        for (row, _, spans), crop in zip(pasted, crops):
            row_paths.row_box(view, row, spans).copy_(crop)
        return x
    partner = gather_rows_scratch(view, index)
    if view.is_floating_point():
        torch.lerp(view, partner, box_weight(boxes, x.shape, view.dtype, order, view.device), out=view)
    else:
        torch.where(to_memory(~box_mask(boxes, x.shape[2:], view.device), order), view, partner, out=view)
    return x


def _inverse_permutation(index: Tensor) -> Tensor | None:
    """``inverse`` with ``inverse[index[i]] = i`` if ``index`` is a permutation of
    ``0..B-1`` on the CPU, else ``None``.

    A backward that adds each row's gradient into its partner row (``index_add_``, one kernel
    call per row on the CPU) gathers it instead when the pairing is a permutation: 3-4 times
    faster at 32x32. The values are the same (each row receives one gradient; ``0 + v`` and
    ``v`` differ at most in the sign of a zero).
    """
    n = index.shape[0]
    if index.device.type != "cpu" or index.ndim != 1 or n == 0:
        return None
    counts = torch.bincount(index, minlength=n)
    if counts.shape[0] != n or not bool(counts.eq(1).all()):
        return None
    return torch.empty_like(index).scatter_(0, index, torch.arange(n, dtype=index.dtype))


class _BoxPaste(torch.autograd.Function):
    """One box of ``x[index]`` pasted into ``x``, with a one-pass backward: the gradient
    copied, and its box replaced by the box's gradient added into the partner rows (gathered
    by the inverse pairing when that is a permutation; autograd's own graph of the clone and
    the indexed assignment makes several batch-sized tensors)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, index: Tensor, spans: tuple[Span, ...]) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(index)
        ctx.spans = spans
        out = fresh_copy(x)
        _copy_box_rows(out, x, index, spans)
        return out

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        (index,) = ctx.saved_tensors
        part = _narrow(g, ctx.spans)
        inverse = None if torch.is_grad_enabled() else _inverse_permutation(index)
        if inverse is not None:  # each row's box gradient goes to one partner: a gather
            grad = fresh_copy(g)
            torch.index_select(part, 0, inverse, out=_narrow(grad, ctx.spans))
            return grad, None, None
        zeros = torch.zeros_like(part)
        # create_graph: the out-of-place (differentiable) scatter
        inside = zeros.index_add(0, index, part) if torch.is_grad_enabled() else zeros.index_add_(0, index, part)
        grad = fresh_copy(g)  # a clone (differentiable under create_graph)
        _narrow(grad, ctx.spans).copy_(inside)
        return grad, None, None


def _paste_into(view: Tensor, patch: Tensor, boxes: Tensor, order: tuple[int, ...] | None) -> Tensor:
    """``patch`` inside the boxes, ``view`` elsewhere (both in memory order; ``patch`` may be reused)."""
    shape = from_memory(view, order).shape
    if not view.is_floating_point():
        keep = to_memory(~box_mask(boxes, shape[2:], view.device), order)
        return torch.where(keep, view, patch)
    inside = box_weight(boxes, shape, view.dtype, order, view.device)
    return _lerp_end(view, patch, inside)


def _lerp_end(start: Tensor, end: Tensor, weight: Tensor) -> Tensor:
    """``torch.lerp(start, end, weight)``, written into ``end`` (a temporary) when allowed."""
    if torch.is_grad_enabled() and (start.requires_grad or end.requires_grad or weight.requires_grad):
        return torch.lerp(start, end, weight)
    if not (broadcasts_to(start.shape, end.shape) and broadcasts_to(weight.shape, end.shape)) or start.dtype != end.dtype:
        return torch.lerp(start, end, weight)
    return torch.lerp(start, end, weight, out=end)


# ResizeMix's paste lives in its own module; the old import path keeps working
__getattr__ = moved_names(__name__, {"paste_resized": "mixkit.functional.resized_paste"})
