"""CutMix's box sampling and the share of the image a box covers (for
:mod:`mixkit.functional.boxes`, which still serves these names).

A box set is an ``(N, 2 * d)`` int64 tensor ``[start_1..start_d, end_1..end_d]`` over the
``d`` trailing spatial dims (ends exclusive), with N = 1 (one box for the batch) or B.

Follows Yun et al., "CutMix" (ICCV 2019; github.com/clovaai/CutMix-PyTorch).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from mixkit import rng

__all__ = ["box_fraction", "one_box_fraction", "sample_cut_boxes"]


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
    if lam.numel() == 1:
        return _one_cut_box(lam.item(), spatial, generator)
    if (1 <= d <= 2 and lam.ndim == 1 and lam.device.type == "cpu" and not lam.requires_grad
            and lam.dtype in (torch.float32, torch.float64)):
        return _cut_boxes_numpy(lam, spatial, generator)
    # torch.rsub, torch.pow: the operators' Python wrappers cost more than the ops here
    ratio = torch.pow(torch.rsub(lam.to(torch.float64), 1.0).clamp_(0, 1), 1.0 / d)
    sizes = torch.tensor(list(spatial), dtype=torch.long)
    half = torch.floor(ratio.unsqueeze(1) * sizes).long().div_(2, rounding_mode="floor")  # (N, d)
    centre = torch.stack([rng.randint(0, size, (lam.shape[0],), generator=generator) for size in spatial], dim=1)
    return torch.cat([(centre - half).clamp_(min=0), torch.minimum(centre + half, sizes)], dim=1)


def _cut_boxes_numpy(lam: Tensor, spatial: Sequence[int], generator: torch.Generator | None) -> Tensor:
    """:func:`sample_cut_boxes` of many boxes in one or two dims, with the box arithmetic in
    numpy: the same draws (one ``randint`` call per dim, in dim order) and the same values (the
    side ratio is a square root or the share itself, as torch's ``pow`` computes it); a batch's
    boxes are a few hundred numbers, and a dozen torch calls cost several times more here."""
    n, d = lam.shape[0], len(spatial)
    share = np.subtract(1.0, lam.numpy(), dtype=np.float64)
    np.minimum(np.maximum(share, 0.0, out=share), 1.0, out=share)  # np.clip costs several times more
    ratio = np.sqrt(share, out=share) if d == 2 else share
    sizes = np.array(spatial, dtype=np.int64)
    with np.errstate(invalid="ignore"):  # a NaN lambda: the integer torch's .long() gives, without a warning
        half = np.floor(ratio[:, None] * sizes).astype(np.int64) // 2  # (N, d)
    centre = _centres(spatial, n, generator)
    boxes = np.empty((n, 2 * d), dtype=np.int64)
    np.maximum(centre - half, 0, out=boxes[:, :d])
    np.minimum(centre + half, sizes, out=boxes[:, d:])
    return torch.from_numpy(boxes)


def _centres(spatial: Sequence[int], n: int, generator: torch.Generator | None) -> np.ndarray:
    """``(n, d)`` int64 box centres (:func:`_centre_draws`, as numpy)."""
    return _centre_draws(spatial, n, generator).numpy().T


def _centre_draws(spatial: Sequence[int], n: int, generator: torch.Generator | None) -> Tensor:
    """``(d, n)`` int64 box centres, uniform per dim: one ``randint`` of ``n`` draws per dim, in
    dim order (equal sides: one call for all dims, the same draws)."""
    if not spatial:
        return torch.zeros((0, n), dtype=torch.int64)
    if len(set(spatial)) == 1:
        return rng.randint(0, spatial[0], (len(spatial), n), generator=generator)
    return torch.stack([rng.randint(0, size, (n,), generator=generator) for size in spatial])


def _one_cut_box(lam: float, spatial: Sequence[int], generator: torch.Generator | None) -> Tensor:
    """:func:`sample_cut_boxes` for one lambda, in Python scalars (the same draws and values;
    a dozen fewer tensor ops, which is most of a small batch's CutMix call)."""
    return box_tensor(one_cut_row(lam, spatial, generator))


def one_cut_row(lam: float, spatial: Sequence[int], generator: torch.Generator | None) -> list[int]:
    """The box of :func:`_one_cut_box` as a list ``starts + ends`` (no tensor made)."""
    d = len(spatial)
    share = min(max(1.0 - lam, 0.0), 1.0)
    # torch evaluates ``t ** 0.5`` as a square root and ``t ** 1.0`` as the identity
    ratio = math.sqrt(share) if d == 2 else share if d == 1 else share ** (1.0 / d)
    centres = _centre_draws(spatial, 1, generator).view(-1).tolist()
    starts, ends = [], []
    for size, centre in zip(spatial, centres):
        half = math.floor(ratio * size) // 2
        starts.append(max(centre - half, 0))
        ends.append(min(centre + half, size))
    return starts + ends


def box_tensor(row: list[int]) -> Tensor:
    """One box ``(1, 2 * d)`` int64 from its list (from numpy: cheaper than ``torch.tensor``)."""
    return torch.from_numpy(np.array([row], dtype=np.int64))


def row_fraction(row: Sequence[int], spatial: Sequence[int]) -> float:
    """:func:`one_box_fraction` of a box given as a list ``starts + ends``."""
    d = len(spatial)
    return math.prod(max(e - s, 0) for s, e in zip(row[:d], row[d:])) / float(math.prod(spatial))


def box_fraction(boxes: Tensor, spatial: Sequence[int]) -> Tensor:
    """``(N,)`` float64: the share of the volume each box covers."""
    d = len(spatial)
    if boxes.shape[0] == 1:
        return torch.tensor([one_box_fraction(boxes, spatial)], dtype=torch.float64)
    if boxes.device.type == "cpu" and boxes.dtype == torch.int64 and boxes.ndim == 2 and 1 <= d <= 2:
        # numpy: the same products (one or two sides, exact in float64), fewer calls
        b = boxes.numpy()
        sides = np.maximum(b[:, d:] - b[:, :d], 0).astype(np.float64)
        volume = sides[:, 0] * sides[:, 1] if d == 2 else sides[:, 0]
        return torch.from_numpy(volume / float(math.prod(spatial)))
    sides = (boxes[:, d:] - boxes[:, :d]).clamp_min(0).to(torch.float64)
    return sides.prod(dim=1) / float(math.prod(spatial))


def one_box_fraction(boxes: Tensor, spatial: Sequence[int]) -> float:
    """:func:`box_fraction` of one box ``(1, 2 * d)``, as a float (no tensor ops)."""
    return row_fraction(boxes.tolist()[0], spatial)
