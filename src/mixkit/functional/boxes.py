"""Boxes: CutMix's box sampling, box masks, and pasting (plain or resized) into a batch.

A box set is an ``(N, 2 * d)`` int64 tensor ``[start_1..start_d, end_1..end_d]`` over the
``d`` trailing spatial dims (ends exclusive), with N = 1 (one box for the batch) or B.

Follows Yun et al., "CutMix" (ICCV 2019; github.com/clovaai/CutMix-PyTorch) and Qin et al.,
"ResizeMix" (arXiv 2012.11101).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from mixkit import rng
from mixkit.functional.blend import match_format

__all__ = ["sample_cut_boxes", "box_fraction", "box_mask", "paste_boxes", "paste_resized"]


def sample_cut_boxes(lam: Tensor, spatial: Sequence[int], *, generator: torch.Generator | None = None) -> Tensor:
    """CutMix boxes: side ``floor(size * (1 - lam)^(1/d))`` per dim, uniform centre, clipped.

    Args:
        lam: ``(N,)`` sampled lambdas (share of the sample to keep before clipping).
        spatial: the spatial sizes ``(H, W)`` (or ``(L,)``, ``(D, H, W)``).
        generator: CPU generator.

    Returns:
        ``(N, 2 * d)`` int64 boxes; the realised kept share is ``1 - box_fraction(...)``.
    """
    d = len(spatial)
    ratio = (1.0 - lam.to(torch.float64)).clamp(0, 1) ** (1.0 / d)
    starts, ends = [], []
    for size in spatial:
        side = torch.floor(size * ratio).long()
        centre = rng.randint(0, size, (lam.shape[0],), generator=generator)
        starts.append((centre - side // 2).clamp(0, size))
        ends.append((centre + side // 2).clamp(0, size))
    return torch.stack(starts + ends, dim=1)


def box_fraction(boxes: Tensor, spatial: Sequence[int]) -> Tensor:
    """``(N,)`` float64: the share of the volume each box covers."""
    d = len(spatial)
    sides = (boxes[:, d:] - boxes[:, :d]).clamp_min(0).to(torch.float64)
    return sides.prod(dim=1) / float(math.prod(spatial))


def box_mask(boxes: Tensor, spatial: Sequence[int], device: torch.device | str | None = None) -> Tensor:
    """``(N, 1, *spatial)`` bool, True inside each box."""
    d = len(spatial)
    boxes = boxes.to(device)
    inside = None
    for k, size in enumerate(spatial):
        pos = torch.arange(size, device=boxes.device)
        hit = (pos >= boxes[:, k : k + 1]) & (pos < boxes[:, d + k : d + k + 1])  # (N, size)
        hit = hit.view((boxes.shape[0],) + (1,) * (k + 1) + (size,) + (1,) * (d - k - 1))
        inside = hit if inside is None else inside & hit
    assert inside is not None
    return inside


def _slices(box: Tensor, d: int) -> tuple[slice, ...]:
    b = box.tolist()
    return (slice(None), slice(None)) + tuple(slice(b[k], b[d + k]) for k in range(d))


def paste_boxes(x: Tensor, index: Tensor, boxes: Tensor) -> Tensor:
    """Copy ``x[index]`` into ``x`` inside ``boxes``, out of place (any dtype, uint8 included)."""
    d = x.ndim - 2
    index = index.to(x.device)
    if boxes.shape[0] == 1:
        out = x.clone()
        region = _slices(boxes[0], d)
        out[region] = x[region].index_select(0, index)
        return out
    mask = box_mask(boxes, x.shape[2:], x.device)
    return match_format(torch.where(mask, x.index_select(0, index), x), x)


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

    One box for the batch resizes with ``F.interpolate``; one box per sample samples the
    same points with ``F.grid_sample`` in one batched call (equal up to rounding).
    """
    d = x.ndim - 2
    index = index.to(x.device)
    work = _work_dtype(x)
    if boxes.shape[0] == 1:
        region = _slices(boxes[0], d)
        sides = [s.stop - s.start for s in region[2:]]
        if min(sides) <= 0:
            return x.clone()
        src = x.index_select(0, index).to(work)
        small = F.interpolate(src, size=sides, mode=_interp_mode(d), align_corners=False)
        out = x.clone()
        out[region] = _cast_back(small, x)
        return out
    return _paste_resized_each(x, index, boxes, work)


def _paste_resized_each(x: Tensor, index: Tensor, boxes: Tensor, work: torch.dtype) -> Tensor:
    spatial = x.shape[2:]
    d = len(spatial)
    boxes_dev = boxes.to(device=x.device)
    coords = []  # per dim: (B, size) normalised source coordinates for grid_sample
    for k, size in enumerate(spatial):
        start = boxes_dev[:, k : k + 1].to(work)
        side = (boxes_dev[:, d + k : d + k + 1] - boxes_dev[:, k : k + 1]).clamp_min(1).to(work)
        pos = torch.arange(size, device=x.device, dtype=work)
        src = ((pos - start + 0.5) * (size / side) - 0.5).clamp_min(0)  # interpolate's rule
        coords.append((2 * src + 1) / size - 1)
    src = x.index_select(0, index).to(work)
    if d == 1:  # grid_sample has no 1-D form: use a 2-D image of height 1
        src, coords = src.unsqueeze(2), [torch.zeros_like(coords[0][:, :1])] + coords
    b = x.shape[0]
    sizes = [c.shape[1] for c in coords]
    axes = []
    for k, c in enumerate(coords):
        shape = [b] + [1] * len(coords)
        shape[k + 1] = sizes[k]
        axes.append(c.view(shape).expand([b] + sizes))
    grid = torch.stack(axes[::-1], dim=-1)  # grid_sample wants (x, y[, z]) order
    sampled = F.grid_sample(src, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if d == 1:
        sampled = sampled.squeeze(2)
    mask = box_mask(boxes, spatial, x.device)
    return match_format(torch.where(mask, _cast_back(sampled, x), x), x)
