"""ResizeMix's paste: each partner shrunk to its box (linear interpolation) and pasted there.

Qin et al., "ResizeMix: Mixing Data with Preserved Object Information and True Labels" (arXiv
2012.11101; reference code github.com/Westlake-AI/openmixup, ``resizemix.py``). Moved here from
:mod:`mixkit.functional.boxes`, which still serves ``paste_resized``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from mixkit._device import upload
from mixkit.functional.alloc import fresh_copy
from mixkit.functional.blend import (
    from_memory,
    gather_rows,
    match_format,
    memory_order,
    to_memory,
)
from mixkit.functional.boxes import Span, _narrow, _paste_into, _row_boxes, _spans
from mixkit.functional.resize import interpolate_batch
from mixkit.functional.row_paths import rows_without_grad

__all__ = ["paste_resized"]


def _interp_mode(d: int) -> str:
    return {1: "linear", 2: "bilinear", 3: "trilinear"}[d]


def _work_dtype(x: Tensor) -> torch.dtype:
    return x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32


def _cast_back(y: Tensor, like: Tensor) -> Tensor:
    if like.is_floating_point():
        return y.to(like.dtype)
    info = torch.iinfo(like.dtype)
    return y.round().clamp(info.min, info.max).to(like.dtype)


def paste_resized(x: Tensor, index: Tensor, boxes: Tensor) -> Tensor:
    """Shrink each partner ``x[index]`` to its box (linear interpolation) and paste it there.

    One box for the batch resizes the batch with ``F.interpolate`` and gathers the partners'
    thumbnails; one box per sample samples the same points with ``F.grid_sample`` in one
    batched call (equal up to rounding).
    """
    d = x.ndim - 2
    index = upload(index, x.device)
    work = _work_dtype(x)
    if boxes.shape[0] == 1:
        spans = _spans(boxes[0], d)
        sides = [length for _, _, length in spans]
        if min(sides) <= 0:
            return fresh_copy(x)
        small = _shrink(x, sides, work)
        out = fresh_copy(x)
        _narrow(out, spans).copy_(_cast_back(gather_rows(small, index), x))
        return out
    listed = _row_boxes(index, boxes, x.shape[2:], None) if rows_without_grad(x) else None
    if listed is not None:
        return _paste_resized_rows(x, listed, work)
    return _paste_resized_each(x, index, boxes, work)


def _paste_resized_rows(x: Tensor, listed: list[tuple[int, int, tuple[Span, ...]]], work: torch.dtype) -> Tensor:
    """:func:`paste_resized` with a box per sample, for large samples on the CPU: each partner
    resized to its box with ``F.interpolate`` (the batch mode's values) and copied in, instead
    of sampling every pixel of every image with ``grid_sample`` and keeping the boxes' alone.
    Each image is resized in its own layout (converting one image to channels_last, where the
    bilinear kernel is faster, costs about what it saves)."""
    d = x.ndim - 2
    out, mode = fresh_copy(x), _interp_mode(d)
    for row, partner, spans in listed:
        src = x[partner : partner + 1].to(work)
        small = F.interpolate(src, size=[length for _, _, length in spans], mode=mode, align_corners=False)
        _narrow(out[row : row + 1], spans).copy_(_cast_back(small, x))
    return out


#: elements per chunk when a half-precision or integer batch is resized through float32
_RESIZE_CHUNK = 1 << 17


def _shrink(x: Tensor, sides: Sequence[int], work: torch.dtype) -> Tensor:
    """``F.interpolate(x.to(work), sides)`` (linear, no corner alignment); inputs of another
    dtype go through ``work`` a chunk of images at a time, so no ``work`` copy of the batch
    is made."""
    mode = _interp_mode(x.ndim - 2)
    if x.dtype == work:
        return interpolate_batch(x, sides, mode)
    rows = max(1, _RESIZE_CHUNK // max(1, x[0].numel()))
    if torch.is_grad_enabled() and x.requires_grad:
        # whole: the backward of each chunk's slice of ``x`` would be a zero tensor of x's size
        return interpolate_batch(x, sides, mode, dtype=work)
    out = None
    for s in range(0, x.shape[0], rows):
        part = F.interpolate(x[s : s + rows].to(work), size=list(sides), mode=mode, align_corners=False)
        if out is None:
            if part.shape[0] == x.shape[0]:
                return part
            cl = part.ndim == 4 and part.is_contiguous(memory_format=torch.channels_last) and not part.is_contiguous()
            fmt = torch.channels_last if cl else torch.contiguous_format
            out = torch.empty((x.shape[0],) + part.shape[1:], dtype=work, device=x.device, memory_format=fmt)
        out[s : s + rows] = part
    assert out is not None
    return out


def _resize_grid(boxes: Tensor, spatial: Sequence[int], work: torch.dtype, device: torch.device) -> Tensor:
    """``(B, *spatial, d)`` grid_sample coordinates: each box's pixels read its whole source."""
    d = len(spatial)
    boxes = upload(boxes, device)
    coords = []  # per dim: (B, size) normalised source coordinates for grid_sample
    for k, size in enumerate(spatial):
        start = boxes[:, k : k + 1].to(work)
        side = (boxes[:, d + k : d + k + 1] - boxes[:, k : k + 1]).clamp_min(1).to(work)
        pos = torch.arange(size, device=device, dtype=work)
        src = ((pos - start + 0.5) * (size / side) - 0.5).clamp_min(0)  # interpolate's rule
        coords.append((2 * src + 1) / size - 1)
    if d == 1:  # grid_sample has no 1-D form: use a 2-D image of height 1
        coords = [torch.zeros_like(coords[0][:, :1])] + coords
    b, sizes = boxes.shape[0], [c.shape[1] for c in coords]
    axes = []
    for k, c in enumerate(coords):
        shape = [b] + [1] * len(coords)
        shape[k + 1] = sizes[k]
        axes.append(c.view(shape).expand([b] + sizes))
    return torch.stack(axes[::-1], dim=-1)  # grid_sample wants (x, y[, z]) order


def _paste_resized_each(x: Tensor, index: Tensor, boxes: Tensor, work: torch.dtype) -> Tensor:
    spatial = x.shape[2:]
    src = gather_rows(x, index).to(work)
    if len(spatial) == 1:
        src = src.unsqueeze(2)
    grid = _resize_grid(boxes, spatial, work, x.device)
    sampled = F.grid_sample(src, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if len(spatial) == 1:
        sampled = sampled.squeeze(2)
    sampled = match_format(_cast_back(sampled, x), x)
    order = memory_order(x)
    return match_format(from_memory(_paste_into(to_memory(x, order), to_memory(sampled, order), boxes, order), order), x)
