"""AugMix's geometric operations, batched in torch (run by
:mod:`mixkit.functional.augment_dispatch`).

Rotations and shears of a batch are one ``grid_sample`` with per-sample affine matrices;
whole-pixel translations are slice copies, one per distinct shift (the same values: their
samples land on pixel centres). PIL's conventions are kept: the output pixel centre
``(x + .5, y + .5)`` maps to an input point (shears and translations about the top-left
corner, rotation about the centre), read with PIL's bilinear edges (clamped inside the
image, zero outside).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from mixkit._device import upload
from mixkit.functional.row_paths import box_as_strided

__all__ = ["GEOMETRIC_OPS", "affine_matrices", "translate", "warp"]

#: The geometric operations (translations by whole pixels are copies, the rest resampled).
GEOMETRIC_OPS: tuple[str, ...] = ("rotate", "shear_x", "shear_y", "translate_x", "translate_y")
_ENTRY = {"shear_x": 1, "translate_x": 2, "shear_y": 3, "translate_y": 5}  # of the flat (a, b, c, d, e, f)


def affine_matrices(ops: Sequence[str], counts: Sequence[int], magnitude: Tensor, h: int, w: int) -> Tensor:
    """``(N, 2, 3)`` float64 CPU PIL affine data (output pixel coords -> input pixel coords) of rows
    sorted by operation: the first ``counts[0]`` rows do ``ops[0]`` with their ``magnitude``,
    the next ``counts[1]`` ``ops[1]``, and so on."""
    m = magnitude.detach().to(device="cpu", dtype=torch.float64).numpy()
    data = np.zeros((m.shape[0], 6))  # a few hundred numbers: numpy, several times faster than torch here
    data[:, 0::4] = 1.0  # the identity's diagonal (a and e)
    start = 0
    for op, count in zip(ops, counts, strict=True):
        part, rows = m[start : start + count], data[start : start + count]
        if op == "rotate":  # PIL Image.rotate: about (w/2, h/2), counter-clockwise for degrees > 0
            a = torch.from_numpy(part * (math.pi / 180.0))
            cos, sin = torch.cos(a).numpy(), torch.sin(a).numpy()  # torch's cos and sin, as always
            cx, cy = w / 2.0, h / 2.0
            rows[:] = np.stack((cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy), axis=1)
        else:  # a shear factor or a shift, about the top-left corner
            rows[:, _ENTRY[op]] = part
        start += count
    return torch.from_numpy(data).view(-1, 2, 3)


@functools.lru_cache(maxsize=16)
def _grid_terms(h: int, w: int, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Per image size (never written): the pixel centres ``x + .5`` ``(1, 1, 1, W)`` and
    ``y + .5`` ``(1, 1, H, 1)``, and ``(1, 2, 1, 1)`` ``[2 / W, 2 / H]``, pixels to grid_sample's
    units."""
    xs = (torch.arange(w, device=device, dtype=dtype) + 0.5).view(1, 1, 1, w)
    ys = (torch.arange(h, device=device, dtype=dtype) + 0.5).view(1, 1, h, 1)
    to_grid = torch.tensor([2.0 / w, 2.0 / h], dtype=dtype, device=device).view(1, 2, 1, 1)
    return xs, ys, to_grid


def warp(x: Tensor, matrices: Tensor) -> Tensor:
    """Bilinear affine warp with per-sample matrices and PIL's edges.

    Each output pixel's source point is one broadcast ``a * x + (b * y + c)`` over the batch,
    in pixel units, where PIL's test is made: a point in ``[0, W) x [0, H)`` is read with its
    coordinates clamped to the pixel centres (PIL's clamped bilinear), a point outside reads 0
    (moved far out, with zero padding). The test is made before the points are scaled to
    grid_sample's [-1, 1] units, whose rounding could put a point exactly on the far edge
    (``x = W``, a translation by half pixels) inside. The outside test is written as 0/1
    floats (several times faster than bool tensors).
    """
    n, _, h, w = x.shape
    xs, ys, to_grid = _grid_terms(h, w, x.dtype, x.device)
    a, b, c = upload(matrices, x.device, x.dtype).view(n, 2, 3, 1, 1).unbind(2)
    planar = torch.add(a * xs, b * ys + c)  # (N, 2, H, W): the source points (sx, sy), in pixels
    sx, sy = planar.unbind(1)
    low = torch.minimum(sx, sy).lt_(0.0)
    if h == w:
        outside = torch.maximum(sx, sy).ge_(w).add_(low)  # 1 or 2 where outside
    else:
        outside = sx.ge(w).to(x.dtype).add_(sy.ge(h)).add_(low)
    sx.clamp_(0.5, w - 0.5).sub_(outside, alpha=4.0 * w)  # edge pixel centres; outside: far left
    sy.clamp_(0.5, h - 0.5)
    grid = planar.mul_(to_grid).sub_(1.0).permute(0, 2, 3, 1)  # normalised: 2 s / size - 1
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def translate(x: Tensor, shift: Tensor, axis: int, out: Tensor) -> None:
    """Whole-pixel translations into ``out``: ``out[..., i] = x[..., i + shift]`` along
    ``axis`` (3: x, 2: y) per sample, 0 where that falls outside; exactly :func:`warp` of a
    translation by an integer (its samples land on pixel centres).

    Each run of equal consecutive shifts is one slice copy (into zeros), so rows sorted by
    shift, as the dispatcher passes them, take one copy per distinct shift.
    """
    size = x.shape[axis]
    # runs of equal shifts, found in numpy (a few hundred numbers: cheaper than torch calls);
    # shifts are whole numbers, so truncating to int64 is torch's .long()
    shifts = shift.detach().to(device="cpu", dtype=torch.float64).numpy().astype(np.int64)
    out.zero_()
    if not len(shifts):
        return
    edges = np.flatnonzero(np.diff(shifts)) + 1
    starts = [0, *edges.tolist()]
    stops = [*edges.tolist(), len(shifts)]
    for start, stop, s in zip(starts, stops, shifts[starts].tolist(), strict=True):
        kept = size - abs(s)
        if kept > 0 and stop > start:  # each side's block in one view: the rows, then the kept run
            rows = (0, start, stop - start)
            box_as_strided(out, (rows, (axis, max(-s, 0), kept))).copy_(
                box_as_strided(x, (rows, (axis, max(s, 0), kept))))
