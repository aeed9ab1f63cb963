"""Superpixels in torch: a batched SLIC and per-superpixel statistics.

Follows Achanta et al., "SLIC Superpixels Compared to State-of-the-Art Superpixel Methods"
(TPAMI 2012), with the conventions of scikit-image's ``segmentation.slic`` (which the
SuperpixelGridMasks authors' published follow-up code, LGCOAMix, calls; their own code is
unpublished): 3-channel images are clustered in CIELAB (D65), the distance is
``D^2 = d_lab^2 + (compactness / S)^2 d_xy^2`` with ``S`` the side of the initial cells,
compactness 10 and 10 iterations by default.

The implementation is vectorised over the batch (no loop over images or pixels; the engine,
tuned for CPU, is :mod:`mixkit.functional._slic`):

* a ``gy x gx`` grid of initial cells (``gy * gx`` about ``n_segments``, :func:`slic_grid`)
  gives the centres, initialised at each cell's mean colour and centroid;
* each pixel is compared only with the 2 x 2 centres whose birth cells' centres surround it,
  i.e. the centres whose ``2S x 2S`` SLIC window (placed at their birth) holds the pixel; the
  pixels are regrouped once into blocks of a cell's size shifted by half a cell, within
  which the 4 candidates are the same, so an assignment is a few broadcast passes;
* centres move to the mean (colour, position) of their pixels (scatter-add); empty ones
  stay put.

So a superpixel never leaves the ``2S x 2S`` window around its birth cell's centre. Unlike
scikit-image there is no connectivity post-processing: a superpixel may come in a few
pieces within that window; labels are made compact instead (``0..n-1`` per image, in
birth-cell order).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from mixkit._device import upload
from mixkit.errors import HyperParameterError, ShapeError
from mixkit.functional import _slic
from mixkit.functional.fastmath import power_

__all__ = [
    "paint_segments",
    "rgb_to_lab",
    "segment_counts",
    "segment_means",
    "select_segments",
    "slic_grid",
    "slic_labels",
]


def rgb_to_lab(rgb: Tensor) -> Tensor:
    """CIELAB (D65) of sRGB pixels, as ``skimage.color.rgb2lab``, in float32.

    Args:
        rgb: ``(B, 3, H, W)`` sRGB in [0, 1] (values outside are clamped).

    Returns:
        ``(B, 3, H, W)`` float32: L in [0, 100], a and b in about [-128, 127].
    """
    lin = rgb.to(torch.float32).clamp(0.0, 1.0)
    low = lin <= 0.04045
    lo = lin / 12.92
    lin = torch.where(low, lo, power_(lin.add_(0.055).div_(1.055), 2.4))
    r, g, b = lin.unbind(1)
    f = []
    for row, white in zip(_slic.RGB_TO_XYZ, _slic.WHITE):
        t = r * (row[0] / white)
        t.add_(g, alpha=row[1] / white).add_(b, alpha=row[2] / white)
        small = t <= 0.008856
        f.append(torch.where(small, t * 7.787 + 16.0 / 116.0, power_(t.clamp_min_(0.0), 1.0 / 3.0)))
    fx, fy, fz = f
    return torch.stack([fy * 116.0 - 16.0, (fx - fy).mul_(500.0), (fy - fz).mul_(200.0)], dim=1)


def slic_grid(n_segments: int, height: int, width: int) -> tuple[int, int, int, int]:
    """The initial grid of SLIC: ``(gy, gx, bh, bw)``, rows and columns of cells of
    ``bh x bw`` pixels (the last row and column may be cut short by the image border).

    ``gy * gx`` is about ``n_segments``, cells about square, at most one cell per pixel.
    """
    if isinstance(n_segments, bool) or not isinstance(n_segments, int) or n_segments < 1:
        raise HyperParameterError(f"n_segments must be a positive integer, got {n_segments!r}")
    rows = min(height, max(1, round(math.sqrt(n_segments * height / width))))
    cols = min(width, max(1, round(n_segments / rows)))
    bh, bw = -(-height // rows), -(-width // cols)
    return -(-height // bh), -(-width // bw), bh, bw


def slic_labels(x: Tensor, n_segments: int, *, compactness: float = 10.0, iterations: int = 10) -> Tensor:
    """SLIC superpixels of a batch of images, in one batched computation.

    Args:
        x: ``(B, C, H, W)`` pixels in [0, 1] (float; clamped for the colour features). Three
            channels are read as sRGB and clustered in CIELAB; other channel counts use
            ``100 * x`` (the L range), so ``compactness`` means the same.
        n_segments: about how many superpixels (the initial grid of :func:`slic_grid`; at
            most one per pixel).
        compactness: weight ``m`` of the spatial distance, ``D^2 = d_colour^2 + (m / S)^2
            d_xy^2`` with ``S`` the initial cell side (scikit-image's default 10): higher
            gives more regular, grid-like superpixels.
        iterations: assignment steps (0: the initial grid itself).

    Returns:
        ``(B, H, W)`` int64 labels, compact per image: ``0..n_b-1``, every label used.

    Example:
        >>> x = torch.rand(2, 3, 32, 32)
        >>> labels = slic_labels(x, 16)
        >>> labels.shape, bool(labels.min() == 0), int(labels.amax()) < 16
        (torch.Size([2, 32, 32]), True, True)
    """
    if x.ndim != 4:
        raise ShapeError(f"x must have shape (B, C, H, W), got shape {tuple(x.shape)}")
    if not (compactness > 0 and math.isfinite(compactness)):
        raise HyperParameterError(f"compactness must be a finite number > 0, got {compactness}")
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 0:
        raise HyperParameterError(f"iterations must be an integer >= 0, got {iterations!r}")
    h, w = x.shape[2:]
    return _slic.segment(x.detach().to(torch.float32), slic_grid(n_segments, h, w), compactness, iterations)


def segment_counts(labels: Tensor) -> Tensor:
    """``(B,)`` number of superpixels of compact labels ``(B, H, W)`` (the largest label + 1)."""
    return labels.flatten(1).amax(dim=1) + 1


def segment_means(x: Tensor, labels: Tensor, num_segments: int | None = None) -> Tensor:
    """Per-superpixel mean of each channel, by scatter-add.

    Sums are accumulated in float64, so a segment of identical float32 (or half) values
    has exactly that value as its mean.

    Args:
        x: ``(B, C, H, W)`` float.
        labels: ``(B, H, W)`` int64 in ``0..K-1``.
        num_segments: ``K`` (default: the largest label + 1).

    Returns:
        ``(B, C, K)`` float64 means (0 for an empty segment).
    """
    if labels.shape != (x.shape[0],) + tuple(x.shape[2:]):
        raise ShapeError(f"labels of shape {tuple(labels.shape)} do not fit x of shape {tuple(x.shape)}")
    b, c = x.shape[:2]
    k = int(labels.max()) + 1 if num_segments is None else num_segments
    flat = upload(labels.reshape(b, 1, -1), x.device)
    sums = torch.zeros(b, c, k, dtype=torch.float64, device=x.device)
    sums.scatter_add_(2, flat.expand(b, c, -1), x.reshape(b, c, -1).to(torch.float64))
    counts = torch.zeros(b, 1, k, dtype=torch.float64, device=x.device)
    counts.scatter_add_(2, flat, torch.ones(b, 1, flat.shape[2], dtype=torch.float64, device=x.device))
    return sums / counts.clamp_min(1.0)


def paint_segments(values: Tensor, labels: Tensor) -> Tensor:
    """The image whose every pixel holds its superpixel's value.

    Args:
        values: ``(B, C, K)`` one value per superpixel and channel.
        labels: ``(B, H, W)`` int64 in ``0..K-1``.

    Returns:
        ``(B, C, H, W)`` in ``values``' dtype.
    """
    b, c = values.shape[:2]
    flat = upload(labels.reshape(b, 1, -1), values.device).expand(b, c, -1)
    return values.gather(2, flat).view((b, c) + tuple(labels.shape[1:]))


def select_segments(num_segments: Tensor, ratio: float, keys: Tensor) -> Tensor:
    """Pick ``round(ratio * n_b)`` superpixels per image: those with the smallest keys.

    Args:
        num_segments: ``(B,)`` int64 number of superpixels ``n_b`` of each image.
        ratio: the share of superpixels to pick, in [0, 1] (halves round up).
        keys: ``(N, K)`` random keys, N in {1, B} (one row shared by the batch: the same
            superpixel indices, i.e. about the same grid cells, in every image), K >= max n_b.

    Returns:
        ``(B, K)`` bool, True for a picked superpixel (never for labels >= n_b).
    """
    n = num_segments.to(keys.device).view(-1, 1)
    k = keys.shape[1]
    valid = torch.arange(k, device=keys.device).view(1, k) < n
    rank = torch.where(valid, keys, 2.0).argsort(dim=1).argsort(dim=1)
    take = torch.floor(ratio * n.to(torch.float64) + 0.5)
    return valid & (rank < take)
