"""Superpixels in torch: a batched SLIC and per-superpixel statistics.

Follows Achanta et al., "SLIC Superpixels Compared to State-of-the-Art Superpixel Methods"
(TPAMI 2012), with the conventions of scikit-image's ``segmentation.slic`` (which the
SuperpixelGridMasks authors' published follow-up code, LGCOAMix, calls; their own code is
unpublished): 3-channel images are clustered in CIELAB (D65), the distance is
``D^2 = d_lab^2 + (compactness / S)^2 d_xy^2`` with ``S`` the side of the initial cells,
compactness 10 and 10 iterations by default.

The implementation is vectorised over the batch (no loop over images or pixels):

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

from mixkit.errors import HyperParameterError, ShapeError

__all__ = [
    "paint_segments",
    "rgb_to_lab",
    "segment_counts",
    "segment_means",
    "select_segments",
    "slic_grid",
    "slic_labels",
]

#: sRGB (D65) to XYZ, and the D65 white point (the matrix and white scikit-image uses).
_RGB_TO_XYZ = ((0.412453, 0.357580, 0.180423), (0.212671, 0.715160, 0.072169), (0.019334, 0.119193, 0.950227))
_WHITE = (0.95047, 1.0, 1.08883)


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
    lin = torch.where(low, lo, lin.add_(0.055).div_(1.055).pow_(2.4))
    r, g, b = lin.unbind(1)
    f = []
    for row, white in zip(_RGB_TO_XYZ, _WHITE):
        t = r * (row[0] / white)
        t.add_(g, alpha=row[1] / white).add_(b, alpha=row[2] / white)
        small = t <= 0.008856
        f.append(torch.where(small, t * 7.787 + 16.0 / 116.0, t.clamp_min_(0.0).pow_(1.0 / 3.0)))
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


class _Layout:
    """Pixels regrouped in "dual" blocks: blocks of a cell's size shifted by half a cell, so
    the pixels of one block all lie between the same 2 x 2 initial centres, their candidates
    (SLIC's 2S x 2S window around each centre, with the centres at their birth places)."""

    def __init__(self, h: int, w: int, n_segments: int, device: torch.device) -> None:
        self.h, self.w = h, w
        self.gy, self.gx, self.bh, self.bw = slic_grid(n_segments, h, w)
        self.top, self.left = self.bh // 2, self.bw // 2
        self.ry = (h + self.top - 1) // self.bh + 1
        self.rx = (w + self.left - 1) // self.bw + 1
        r = torch.arange(self.ry, device=device).view(-1, 1, 1, 1)
        c = torch.arange(self.rx, device=device).view(1, -1, 1, 1)
        d = torch.tensor([0, 1], device=device)
        rows = (r - 1 + d.view(1, 1, 2, 1)).clamp(0, self.gy - 1)
        cols = (c - 1 + d.view(1, 1, 1, 2)).clamp(0, self.gx - 1)
        self.candidates = (rows * self.gx + cols).reshape(self.ry * self.rx, 4)  # (nb, 4)
        ys = torch.arange(h, device=device, dtype=torch.float32).view(1, 1, h, 1).expand(1, 1, h, w)
        xs = torch.arange(w, device=device, dtype=torch.float32).view(1, 1, 1, w).expand(1, 1, h, w)
        self.valid = self.blocks(torch.ones(1, 1, h, w, device=device))  # (1, 1, nb, P)
        self.positions = self.blocks(torch.cat([ys, xs], dim=1))  # (1, 2, nb, P), 0 on padding
        cells = (ys // self.bh) * self.gx + xs // self.bw
        self.cells = self.blocks(cells).long()[:, 0]  # (1, nb, P) birth cell of each pixel
        oy = torch.arange(self.ry, device=device, dtype=torch.float32) * self.bh - self.top
        ox = torch.arange(self.rx, device=device, dtype=torch.float32) * self.bw - self.left
        self.origin = torch.stack(torch.meshgrid(oy, ox, indexing="ij"), dim=-1).reshape(-1, 1, 2)  # (nb, 1, 2)
        py, px = torch.meshgrid(
            torch.arange(self.bh, device=device, dtype=torch.float32),
            torch.arange(self.bw, device=device, dtype=torch.float32),
            indexing="ij",
        )
        self.local = torch.stack([py, px]).reshape(2, 1, -1)  # (2, 1, P): offsets in a block

    def blocks(self, t: Tensor) -> Tensor:
        """``(B, F, H, W)`` -> ``(B, F, nb, P)`` zero-padded dual blocks."""
        b, f = t.shape[:2]
        pad = (self.left, self.rx * self.bw - self.w - self.left, self.top, self.ry * self.bh - self.h - self.top)
        t = torch.nn.functional.pad(t, pad).view(b, f, self.ry, self.bh, self.rx, self.bw)
        return t.permute(0, 1, 2, 4, 3, 5).reshape(b, f, self.ry * self.rx, self.bh * self.bw)

    def image(self, t: Tensor) -> Tensor:
        """``(B, nb, P)`` -> ``(B, H, W)``, padding dropped."""
        b = t.shape[0]
        t = t.view(b, self.ry, self.rx, self.bh, self.bw).permute(0, 1, 3, 2, 4)
        t = t.reshape(b, self.ry * self.bh, self.rx * self.bw)
        return t[:, self.top : self.top + self.h, self.left : self.left + self.w]


def _update(feats: Tensor, labels: Tensor, centres: Tensor) -> Tensor:
    """Centres ``(B, F, K)`` moved to the mean (colour, position) of their pixels; empty
    clusters stay put. ``feats`` ``(B, F + 1, N)`` holds each pixel's colour, position and
    a last row of 1 (0 on padding, which so weighs nothing): one scatter-add gives the sums
    and the counts."""
    b, f, k = centres.shape
    sums = centres.new_zeros(b, f + 1, k)
    sums.scatter_add_(2, labels.reshape(b, 1, -1).expand(b, f + 1, -1), feats)
    counts = sums[:, f:]
    return torch.where(counts > 0, sums[:, :f] / counts.clamp_min(1.0), centres)


def _assign(colour: Tensor, lay: _Layout, centres: Tensor, scale: float) -> Tensor:
    """``(B, nb, P)`` the nearest of each pixel's 4 candidate centres (ties: the first).

    Squared distances up to a per-pixel constant, ``|c|^2 - 2 <f, c>``, with positions
    relative to each block's origin (small numbers, so float32 stays accurate); the running
    minimum works in preallocated buffers.
    """
    b, f, _ = centres.shape
    nb, c = lay.candidates.shape[0], colour.shape[1]
    cand = centres.transpose(1, 2).contiguous().index_select(1, lay.candidates.flatten()).view(b, nb, 4, f)
    cand = torch.cat([cand[..., :c], (cand[..., c:] - lay.origin) * scale], dim=-1)
    norms = cand.square().sum(dim=-1).unsqueeze(-1)  # (B, nb, 4, 1)
    cand = cand.permute(3, 2, 0, 1).unsqueeze(-1)  # (F, 4, B, nb, 1)
    local = lay.local * scale  # (2, 1, P)
    shape = (b,) + colour.shape[2:]
    best, score = colour.new_empty(shape), colour.new_empty(shape)
    closer = torch.empty(shape, dtype=torch.bool, device=colour.device)
    which, step = (torch.zeros(shape, dtype=torch.uint8, device=colour.device) for _ in range(2))
    for j in range(4):
        out = best if j == 0 else score
        torch.mul(colour[:, 0], cand[0, j], out=out)
        for i in range(1, c):
            out.addcmul_(colour[:, i], cand[i, j])
        for i in range(2):
            out.addcmul_(local[i], cand[c + i, j])
        torch.add(norms[:, :, j], out, alpha=-2.0, out=out)
        if j:  # candidates come in increasing j: the last strict improvement is the largest j
            torch.lt(score, best, out=closer)
            torch.minimum(best, score, out=best)
            torch.mul(closer.view(torch.uint8), j, out=step)
            torch.maximum(which, step, out=which)
    return torch.gather(lay.candidates.unsqueeze(0).expand(b, -1, -1), 2, which.long())


def _compact(labels: Tensor, k: int) -> Tensor:
    """Relabel ``(B, N)`` labels in ``0..k-1`` to ``0..n_b-1`` per row, keeping their order."""
    present = torch.zeros(labels.shape[0], k, dtype=torch.long, device=labels.device)
    present.scatter_(1, labels, 1)
    return (present.cumsum(dim=1) - 1).gather(1, labels)


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
    b, c, h, w = x.shape
    lay = _Layout(h, w, n_segments, x.device)
    pixels = x.to(torch.float32)
    colour = lay.blocks(rgb_to_lab(pixels) if c == 3 else pixels.clamp(0.0, 1.0) * 100.0)
    scale = compactness / math.sqrt(lay.bh * lay.bw)
    k = lay.gy * lay.gx
    labels = lay.cells.expand(b, -1, -1)
    centres = torch.zeros(b, colour.shape[1] + 2, k, dtype=torch.float32, device=x.device)
    if iterations:
        feats = torch.cat([colour, lay.positions.expand(b, -1, -1, -1), lay.valid.expand(b, -1, -1, -1)], dim=1)
        feats = feats.flatten(2)  # (B, F + 1, nb * P): colour, position, 1 (0 on padding)
    for _ in range(iterations):
        centres = _update(feats, labels, centres)
        labels = _assign(colour, lay, centres, scale)
    labels = lay.image(labels).reshape(b, h * w)
    return _compact(labels, k).view(b, h, w)


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
    flat = labels.reshape(b, 1, -1).to(x.device)
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
    flat = labels.reshape(b, 1, -1).to(values.device).expand(b, c, -1)
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
