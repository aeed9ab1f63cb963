"""Blends and box pastes of large samples on the CPU, one row at a time.

From :data:`ROW_LERP_MIN` elements per sample, a blend reads each sample and its partner where
they are and writes the output row by row (one kernel per row), in the order of the pairing's
chains (:func:`chain_order`), so that each partner is read from the cache right after its own
turn: no gathered copy of the partners is made. In place, a permutation's rows are rewritten
cycle by cycle, one row kept aside per cycle. Each row's weight is a scalar, which the kernels
apply in the precision of the batched forms, so the values are theirs to the bit. Used by
:mod:`mixkit.functional.blend` and :mod:`mixkit.functional.boxes`; a test patches the
thresholds to compare both forms.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mixkit._device import upload
from mixkit.functional.alloc import fresh, fresh_like

Span = tuple[int, int, int]  # (dim, start, length) of a box along one dim of a tensor

#: elements per sample from which a CPU blend runs one ``lerp`` per row, straight from the
#: sample and its partner into the output (below it, the per-call cost of B kernels exceeds
#: the saved pass over a gathered copy of the partners)
ROW_LERP_MIN = 1 << 15


def row_wise(view: Tensor) -> bool:
    """Whether :func:`lerp_rows` is the faster way to blend ``view``."""
    # (an empty batch takes the batched forms, which handle it; the cheapest tests first)
    b = view.shape[0] if view.ndim > 1 else 0
    return b > 0 and view.numel() >= ROW_LERP_MIN * b and view.device.type == "cpu"


def rows_without_grad(view: Tensor, *others: Tensor) -> bool:
    """:func:`row_wise`, and autograd follows none of ``view`` and ``others``: the row paths'
    plain copies and per-row kernels are then free to run (they build no graph)."""
    return row_wise(view) and not (torch.is_grad_enabled() and any(t.requires_grad for t in (view, *others)))


def row_plan(b: int, index: Tensor, lam: Tensor | float) -> tuple[list[int], list[float]] | None:
    """Each row's partner and weight as Python numbers for the row paths, or ``None`` when
    ``index`` is not ``B`` rows of the batch or ``lam`` neither one weight nor one per row (the
    batched forms then run, and raise as they always did)."""
    partners = index.tolist()
    if index.ndim != 1 or len(partners) != b or (partners and (min(partners) < 0 or max(partners) >= b)):
        return None
    weights = lam.reshape(-1).tolist() if isinstance(lam, Tensor) else [float(lam)]
    if len(weights) == 1:
        weights = weights * b
    return (partners, weights) if len(weights) == b else None


def lerp_rows(view: Tensor, partners: list[int], weights: list[float]) -> Tensor:
    """``lerp(view[partners[b]], view[b], weights[b])`` for each row ``b`` (a :func:`row_plan`),
    into a fresh contiguous tensor: one kernel per row, reading the sample and its partner where
    they are (no gathered copy of the partners: a pass over the batch fewer). Each row's weight
    is a scalar, which the kernel applies in the precision the batched forms use (float32 for
    half inputs: the same values bit for bit)."""
    out = fresh(tuple(view.shape), view.dtype, view.device)
    rows, outs = view.unbind(0), out.unbind(0)
    for row in chain_order(partners):
        torch.lerp(rows[partners[row]], rows[row], weights[row], out=outs[row])
    return out


def lerp_cycles_(view: Tensor, partners: list[int], weights: list[float]) -> None:
    """:func:`lerp_rows` written into ``view`` when ``partners`` is a permutation: along each
    cycle a row is overwritten before its partner (the next row of the cycle) is, and the
    cycle's first row, which the last one needs, is kept aside first. One row of scratch
    instead of a gathered copy of the batch, and each partner is read from the cache just
    before its own turn."""
    rows = view.unbind(0)
    first = torch.empty_like(rows[0])
    seen = [False] * len(partners)
    for start in range(len(partners)):
        if seen[start]:
            continue
        if partners[start] != start:
            first.copy_(rows[start])
        row = start
        while True:
            seen[row] = True
            partner = partners[row]
            source = first if partner == start and row != start else rows[partner]
            torch.lerp(source, rows[row], weights[row], out=rows[row])
            row = partner
            if row == start:
                break


def chain_order(partners: Sequence[int]) -> list[int]:
    """Every row once, each followed by its partner where that is not yet visited (a
    permutation's cycles in turn): a row blended right after serving as the previous row's
    partner is read from the cache (10-15% faster per float32 224x224 batch here)."""
    seen, order = [False] * len(partners), []
    for start in range(len(partners)):
        row = start
        while not seen[row]:
            seen[row] = True
            order.append(row)
            row = partners[row]
    return order


def select_rows(view: Tensor, partners: list[int], mask: Tensor) -> Tensor:
    """``mask * view[b] + (1 - mask) * view[partners[b]]`` per row (the batched form is
    ``blend._select``: a ``lerp``, or ``torch.where`` for integer rows and a bool mask), one
    kernel per row into a fresh tensor; the same kernels and weights, so the same values."""
    mask = upload(mask, view.device)
    out = fresh(tuple(view.shape), view.dtype, view.device)
    rows, outs = view.unbind(0), out.unbind(0)
    if mask.dtype == torch.bool and not view.is_floating_point():
        weights = mask.unbind(0)
        for row in chain_order(partners):
            torch.where(weights[row if len(weights) > 1 else 0], rows[row], rows[partners[row]], out=outs[row])
        return out
    weight = mask.to(view.dtype)
    if weight.ndim == view.ndim and weight.shape[-1] == 1 and view.shape[-1] > 1:
        weight = weight.expand(weight.shape[:-1] + view.shape[-1:]).contiguous()
    weights = weight.unbind(0)
    for row in chain_order(partners):
        torch.lerp(rows[partners[row]], rows[row], weights[row if len(weights) > 1 else 0], out=outs[row])
    return out


#: bytes per sample from which a per-sample paste copies row by row, each partner's box read
#: just before that partner's own row is copied (so from the cache): 7% faster for float32
#: 224x224 batches here, 5% slower for bfloat16 ones (half the bytes per row)
ROW_COPY_MIN_BYTES = 1 << 19


def row_box(t: Tensor, row: int, spans: Sequence[Span]) -> Tensor:
    """The box ``spans`` (dims of the batch ``t``) of row ``row``, in one ``as_strided`` (a third
    of the calls of a ``select`` and a ``narrow`` per dim)."""
    return box_as_strided(t, spans, row)


def box_as_strided(t: Tensor, spans: Sequence[Span], row: int | None = None) -> Tensor:
    """The box ``spans`` of ``t`` as one ``as_strided`` view (of row ``row`` alone, that dim
    dropped, if given). No range check: the caller knows the box lies inside ``t``."""
    size, strides, offset = list(t.shape), t.stride(), t.storage_offset()
    for dim, start, length in spans:
        size[dim] = length
        offset += start * strides[dim]
    if row is None:
        return t.as_strided(size, strides, offset)
    return t.as_strided(size[1:], strides[1:], offset + row * strides[0])


def copy_box_cycles_(view: Tensor, partners: list[int], spans: Sequence[Span]) -> None:
    """The partners' box copied over each row's box in place, ``partners`` a permutation: along
    each cycle a box is overwritten before its partner's is, the cycle's first box (which the
    last row needs) kept aside. One pass over the boxes instead of a gather and a copy back.
    ``partners`` is used up (entries set to -1 as their rows are done)."""
    first = torch.empty_like(row_box(view, 0, spans))
    for start in range(len(partners)):
        if partners[start] == start or partners[start] < 0:
            continue  # paired with itself (or a cycle already done: marked below)
        first.copy_(row_box(view, start, spans))
        row = start
        while True:
            partner = partners[row]
            partners[row] = -1  # done
            row_box(view, row, spans).copy_(first if partner == start else row_box(view, partner, spans))
            row = partner
            if row == start:
                break


def paste_nested_rows(view: Tensor, sources: Tensor, boxes: Tensor, spatial: Sequence[int],
                      first: int) -> Tensor | None:
    """Per-sample nested pastes (Mosaic, RICAP per sample) of large samples, row by row: each
    row starts as a copy of its first source, then each box ``k`` (later on top) is copied
    from source ``k + 1``: plain copies, so the values of the per-pixel gather they replace.

    Args:
        view: the batch in its memory order (``first`` is the dim of its first spatial axis).
        sources: ``(B, K)`` source rows; boxes: ``(B, K - 1, 2 * d)`` boxes of the image's
            ``spatial`` sizes.

    Returns:
        The output in ``view``'s order, or ``None`` when a source row or a box lies outside the
        batch or the image (the batched form then runs, and clips or raises as it always did).
    """
    b, d = view.shape[0], len(spatial)
    rows, listed = sources.tolist(), boxes.tolist()
    if sources.shape[0] != b or boxes.shape[0] != b or boxes.shape[1] != sources.shape[1] - 1:
        return None
    plan = []
    for r in range(b):
        if not all(0 <= s < b for s in rows[r]):
            return None
        spans = []
        for j, box in enumerate(listed[r]):
            if any(box[k] < 0 or box[d + k] > size for k, size in enumerate(spatial)):
                return None
            if all(box[d + k] > box[k] for k in range(d)):
                spans.append((rows[r][j + 1], tuple((first + k, box[k], box[d + k] - box[k]) for k in range(d))))
        plan.append(spans)
    out = fresh_like(view)
    ins, outs = view.unbind(0), out.unbind(0)
    for r in range(b):
        outs[r].copy_(ins[rows[r][0]])
        for source, spans in plan[r]:
            row_box(out, r, spans).copy_(row_box(view, source, spans))
    return out


def tile_rows(view: Tensor, sources: Tensor, cells: Tensor, offsets: Tensor, spatial: Sequence[int],
              first: int) -> Tensor | None:
    """Per-sample quadrant tilings (Mosaic, RICAP per sample) of large samples, row by row:
    each of a row's four cells ``[top, left, bottom, right]`` (which cover the image) is
    copied from the crop of its source whose corner is the cell's offset: plain copies, so the
    values of the per-pixel gather they replace.

    Returns:
        The output in ``view``'s order, or ``None`` when a source row, a cell or a crop lies
        outside the batch or the image (the batched form then runs).
    """
    b, (h, w) = view.shape[0], spatial
    if sources.shape != (b, 4) or cells.shape != (b, 4, 4) or offsets.shape != (b, 4, 2):
        return None
    rows, boxes, corners = sources.tolist(), cells.tolist(), offsets.tolist()
    plan = []
    for r in range(b):
        for k in range(4):
            top, left, bottom, right = boxes[r][k]
            sy, sx = corners[r][k]
            if not (0 <= rows[r][k] < b and 0 <= top <= bottom <= h and 0 <= left <= right <= w
                    and 0 <= sy <= h - (bottom - top) and 0 <= sx <= w - (right - left)):
                return None
            if bottom > top and right > left:
                height, width = bottom - top, right - left
                plan.append((r, rows[r][k], ((first, top, height), (first + 1, left, width)),
                             ((first, sy, height), (first + 1, sx, width))))
    out = fresh_like(view)
    for r, source, dst, src in plan:
        row_box(out, r, dst).copy_(row_box(view, source, src))
    return out
