"""Masks with soft edges, grids of cells, hybrid blends, stacks, and GridMix's local loss.

Every mask follows mixkit's convention: 1 keeps the sample, 0 takes the partner. Masks are
``(N, 1, *spatial)`` with N = 1 (one mask for the batch) or B, built on the CPU in float32
(soft masks, from float64 profiles) or bool (hard masks).

Follows:
    * Lee et al., "SmoothMix: a Simple Yet Effective Data Augmentation to Train Robust
      Classifiers", CVPR-W 2020 (Gaussian and soft-edged square masks).
    * Park, Yun, Chun, "A Unified Analysis of Mixed Sample Data Augmentation: A Loss Function
      Perspective", NeurIPS 2022 (github.com/naver-ai/hmix-gmix: HMix's hybrid blend, GMix).
    * Baek, Bang, Shim, "GridMix: Strong regularization through local context mapping",
      Pattern Recognition 2021 (grid cells and the per-cell "local context" loss).
    * Chen, Sinha, Kyrillidis, "StackMix: A complementary Mix algorithm", UAI 2022.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mixkit import rng
from mixkit._device import upload
from mixkit.errors import ModelError, ShapeError
from mixkit.functional import row_paths
from mixkit.functional.alloc import fresh_like
from mixkit.functional.blend import (
    _lerp_into,
    blend,
    from_memory,
    match_format,
    memory_order,
    select_rows,
    take_rows,
    to_memory,
)
from mixkit.functional.boxes import (
    _copy_box_rows,
    _row_boxes,
    _spans,
    box_mask,
    box_weight,
)

__all__ = [
    "gaussian_blob",
    "grid_cell_mask",
    "grid_cross_entropy",
    "grid_logits",
    "hybrid_blend",
    "row_sums64",
    "sample_grid_cells",
    "soft_box_mask",
    "stack_pair",
]

_HALF = (torch.float16, torch.bfloat16)
#: float64 bytes converted at a time by :func:`row_sums64`
_SUM_CHUNK_BYTES = 1 << 22


def row_sums64(t: Tensor) -> Tensor:
    """``t.flatten(1).sum(dim=1, dtype=torch.float64)``, the same values, without a float64
    copy of the whole tensor.

    A reduction to float64 of a float32 (or bool) tensor converts all of it first: for 128
    masks of 224 x 224 that is a 51 MB temporary whose pages fault in at every call (36 ms,
    against 1 ms for the sum itself). Here a few rows (4 MiB of float64) are converted at a
    time; each row is still summed whole, in the same order.
    """
    flat = t.reshape(t.shape[0], -1)
    rows = max(1, _SUM_CHUNK_BYTES // (8 * max(1, flat.shape[1])))
    if flat.dtype == torch.float64 or flat.shape[0] <= rows:
        return flat.sum(dim=1, dtype=torch.float64)
    return torch.cat([flat[i : i + rows].sum(dim=1, dtype=torch.float64) for i in range(0, flat.shape[0], rows)])


def _axis_view(profile: Tensor, k: int, d: int) -> Tensor:
    """``(N, size)`` 1-D profile of spatial axis ``k`` as an ``(N, 1, ..., size, ...)`` view."""
    shape = [profile.shape[0], 1] + [1] * d
    shape[2 + k] = profile.shape[1]
    return profile.view(shape)


def gaussian_blob(centres: Tensor, sigma: Tensor, spatial: Sequence[int]) -> Tensor:
    """``exp(-|p - c|^2 / (2 sigma^2))`` at every pixel ``p``: 1 at the centre, 0 far away.

    Args:
        centres: ``(N, d)`` centre of each blob, in pixels (pixel ``i`` sits at ``i``).
        sigma: ``(N,)`` standard deviation in pixels (> 0).
        spatial: the spatial sizes, ``d`` of them.

    Returns:
        ``(N, 1, *spatial)`` float32, separable: the product of one profile per axis (each
        computed in float64).
    """
    d = len(spatial)
    var2 = 2.0 * sigma.to(torch.float64).clamp_min(1e-12).view(-1, 1) ** 2
    out = None
    for k, size in enumerate(spatial):
        pos = torch.arange(size, dtype=torch.float64)
        prof = torch.exp(-((pos - centres[:, k : k + 1].to(torch.float64)) ** 2) / var2)
        view = _axis_view(prof.to(torch.float32), k, d)
        out = view if out is None else out * view
    return _full(out, (centres.shape[0], 1) + tuple(spatial))


def soft_box_mask(boxes: Tensor, sigma: Tensor, spatial: Sequence[int]) -> Tensor:
    """A box with Gaussian-blurred edges: the box indicator convolved with a Gaussian.

    Pixel ``p`` covers ``[p, p + 1)`` and the box ``[start, end)``; the value at the pixel
    centre is ``prod_k Phi((p_k + 1/2 - start_k) / sigma) - Phi((p_k + 1/2 - end_k) / sigma)``,
    so it is ~1 deep inside, 1/2 on the edge, ~0 far outside, and the hard box at sigma = 0.

    Args:
        boxes: ``(N, 2 * d)`` int64 ``[starts, ends]`` (see :mod:`mixkit.functional.boxes`).
        sigma: ``(N,)`` blur in pixels (>= 0).
        spatial: the spatial sizes.

    Returns:
        ``(N, 1, *spatial)`` float32 in [0, 1], 1 inside the (blurred) box.
    """
    d = len(spatial)
    if bool((sigma <= 0).all()):
        return box_mask(boxes, spatial).to(torch.float32)
    scale = sigma.to(torch.float64).clamp_min(1e-12).view(-1, 1) * math.sqrt(2.0)
    out = None
    for k, size in enumerate(spatial):
        centre = torch.arange(size, dtype=torch.float64) + 0.5
        lo, hi = boxes[:, k : k + 1].to(torch.float64), boxes[:, d + k : d + k + 1].to(torch.float64)
        prof = 0.5 * (torch.erf((centre - lo) / scale) - torch.erf((centre - hi) / scale))
        prof = torch.where(hi > lo, prof, 0.0)
        view = _axis_view(prof.clamp(0, 1).to(torch.float32), k, d)
        out = view if out is None else out * view
    return _full(out, (boxes.shape[0], 1) + tuple(spatial))


def _full(out: Tensor | None, shape: tuple[int, ...]) -> Tensor:
    """The product of the per-axis profiles as a tensor of its own, ``shape`` (a copy only
    where a profile is broadcast: with two or more axes the product is already whole)."""
    assert out is not None
    return out if tuple(out.shape) == shape and out.is_contiguous() else out.expand(shape).clone()


def sample_grid_cells(
    lam: Tensor, grid: tuple[int, int], *, generator: torch.Generator | None = None
) -> Tensor:
    """Choose which cells of a grid keep the sample: ``round(lam * cells)`` of them, at random.

    Args:
        lam: ``(N,)`` share of the cells to keep.
        grid: ``(rows, columns)`` of cells.
        generator: CPU generator.

    Returns:
        ``(N, rows, columns)`` bool, True where the cell keeps the sample.
    """
    n, cells = lam.shape[0], grid[0] * grid[1]
    keep = torch.round(lam.to(torch.float64).clamp(0, 1) * cells).long()
    ranks = rng.uniform((n, cells), generator=generator).argsort(dim=1).argsort(dim=1)
    return (ranks < keep.unsqueeze(1)).view(n, grid[0], grid[1])


def grid_cell_mask(cells: Tensor, spatial: Sequence[int]) -> Tensor:
    """Spread ``(N, rows, cols)`` cell values over an image: pixel row ``r`` is in cell row
    ``floor(r * rows / H)`` (and likewise for columns), so cell sides differ by at most one.

    Returns:
        ``(N, 1, H, W)`` with the dtype of ``cells``.
    """
    (h, w), (gh, gw) = spatial, cells.shape[1:]
    rows = torch.arange(h) * gh // h
    cols = torch.arange(w) * gw // w
    return cells.index_select(1, rows).index_select(2, cols).unsqueeze(1)


def hybrid_blend(x: Tensor, index: Tensor, boxes: Tensor, outside: Tensor) -> Tensor:
    """HMix: ``x[index]`` inside ``boxes``; ``outside * x + (1 - outside) * x[index]`` elsewhere.

    One box per sample is one ``lerp`` whose weight is ``outside`` off the box and 0 on it
    (half inputs blended in float32, as :func:`~mixkit.functional.blend`).

    Args:
        x: ``(B, C, *spatial)`` float tensor.
        index: ``(B,)`` partner rows.
        boxes: ``(N, 2 * d)`` boxes, N in {1, B}.
        outside: ``(B,)`` weight of ``x`` outside the box (the Mixup part).
    """
    d = x.ndim - 2
    index = upload(index, x.device)
    order = memory_order(x)
    view = to_memory(x, order)
    if boxes.shape[0] == 1:
        out = to_memory(blend(x, index, outside), order)  # a new tensor
        if torch.is_grad_enabled() and out.requires_grad:  # the blend's own output may not be written into
            out = out.clone()
        spans = _spans(boxes[0], d, order)
        _copy_box_rows(out, view, index, spans)
        return match_format(from_memory(out, order), x)
    if row_paths.rows_without_grad(view, x, outside):
        out = _hybrid_rows(view, index, boxes, outside, tuple(x.shape[2:]), order)
        if out is not None:
            return match_format(from_memory(out, order), x)
    work = torch.float32 if x.dtype in _HALF else x.dtype
    # 1 - inside (exact: 0 or 1), times the Mixup weight, in the one new tensor box_weight made
    weight = box_weight(boxes, x.shape, work, order, x.device).neg_().add_(1.0)
    weight.mul_(upload(outside, x.device, work).view((-1,) + (1,) * (x.ndim - 1)))
    partner = take_rows(view, index).to(work)
    out = _lerp_into(partner, view.to(work), weight)
    return match_format(from_memory(out.to(x.dtype), order), x)


def _hybrid_rows(view: Tensor, index: Tensor, boxes: Tensor, outside: Tensor, spatial: tuple[int, ...],
                 order: tuple[int, ...] | None) -> Tensor | None:
    """:func:`hybrid_blend` with a box per sample, for large samples on the CPU: each row
    blended with its partner by its scalar weight (:func:`row_paths.lerp_rows`: the precision
    of the batched ``lerp``, float32 for half inputs), then the partner's box copied over it
    (where the batched weight is 0: the partner's values). The same values, without the
    batch-sized float32 copies and weight the batched form makes (which fault their pages in
    at every call). ``None`` when a box lies outside the image or the rows or weights do not
    fit (the batched form then clips or raises, as it always did)."""
    listed = _row_boxes(index.cpu(), boxes.cpu(), spatial, order)
    plan = row_paths.row_plan(view.shape[0], index, outside) if listed is not None else None
    if plan is None:
        return None
    out = row_paths.lerp_rows(view, *plan)
    for row, partner, spans in listed:
        row_paths.row_box(out, row, spans).copy_(row_paths.row_box(view, partner, spans))
    return out


def _squeeze(x: Tensor, dim: int, size: int) -> Tensor:
    """Shrink axis ``dim`` of ``x`` to ``size`` by area averaging (adaptive average pooling)."""
    if x.shape[dim] == 2 * size:  # the common case: means of pixel pairs, the same numbers
        pairs = x.unflatten(dim, (size, 2))  # (a + b) * 0.5 is the mean of two, bit for bit
        return torch.add(pairs.select(dim + 1, 0), pairs.select(dim + 1, 1)).mul_(0.5)
    d = x.ndim - 2
    out_size = list(x.shape[2:])
    out_size[dim - 2] = size
    pool = (F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d)[d - 1]
    return pool(x, out_size)


def stack_pair(x: Tensor, index: Tensor, axis: Tensor) -> Tensor:
    """StackMix at full resolution: each sample squeezed into the first part of one spatial
    axis and its partner into the rest, by area averaging (an antialiased resize).

    Along an axis of size ``S`` the sample gets ``S - S // 2`` pixels, the partner ``S // 2``.
    Integer images are resized in float32 and rounded back.

    Args:
        x: ``(B, C, *spatial)``.
        index: ``(B,)`` partner rows.
        axis: ``(B,)`` int64 spatial axis (0 for the first) of each sample, -1: left as is.
    """
    work = x.to(torch.float32) if (not x.is_floating_point() or x.dtype in _HALF) else x
    index = upload(index, x.device)
    first = int(axis[0])
    if (work is x and first >= 0 and x.shape[2 + first] % 2 == 0 and bool((axis == first).all())
            and not (torch.is_grad_enabled() and x.requires_grad)):
        # the common case, written straight into one output in x's layout (no temporaries:
        # a batch-sized one faults its pages in at every call): the pair means into the first
        # half, then their partners' rows gathered into the second, the same numbers as below
        dim, half = 2 + first, x.shape[2 + first] // 2
        out = fresh_like(x)
        pairs = x.unflatten(dim, (half, 2))
        own = torch.add(pairs.select(dim + 1, 0), pairs.select(dim + 1, 1), out=out.narrow(dim, 0, half)).mul_(0.5)
        torch.index_select(own, 0, index, out=out.narrow(dim, half, half))
        return out
    out = None
    for k in axis.unique().tolist():
        if k < 0:
            continue
        size = x.shape[2 + k]
        own = _squeeze(work, 2 + k, size - size // 2)
        other = own if size % 2 == 0 else _squeeze(work, 2 + k, size // 2)
        stacked = torch.cat([own, other.index_select(0, index)], dim=2 + k)
        if not x.is_floating_point():
            info = torch.iinfo(x.dtype)
            stacked = stacked.round_().clamp_(info.min, info.max)
        stacked = stacked.to(x.dtype)
        if bool((axis == k).all()):
            return match_format(stacked, x)
        out = select_rows(axis == k, match_format(stacked, x), x if out is None else out)
    return match_format(x.clone() if out is None else out, x)


def grid_logits(features: Tensor, head: nn.Module, grid: tuple[int, int]) -> Tensor:
    """Per-cell logits: average-pool a feature map to the grid, then classify each cell.

    Args:
        features: ``(B, C, h, w)`` feature map (any h, w: pooling is adaptive).
        head: an ``nn.Linear(C, K)`` (applied to each cell's feature vector, e.g. the model's
            own classifier) or any module mapping ``(B, C, rows, cols)`` to
            ``(B, K, rows, cols)`` (e.g. ``nn.Conv2d(C, K, 1)``).
        grid: ``(rows, cols)``.

    Returns:
        ``(B, K, rows, cols)`` logits.
    """
    if features.ndim != 4:
        raise ModelError(f"the local loss needs a (B, C, h, w) feature map, got shape {tuple(features.shape)}")
    pooled = F.adaptive_avg_pool2d(features, grid)
    if isinstance(head, nn.Linear):
        return head(pooled.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    out = head(pooled)
    if not isinstance(out, Tensor) or out.ndim != 4 or out.shape[0] != features.shape[0] or tuple(out.shape[2:]) != grid:
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ModelError(f"the local head must map (B, C, {grid[0]}, {grid[1]}) to (B, K, {grid[0]}, {grid[1]}), got {got}")
    return out


def grid_cross_entropy(logits: Tensor, y: Tensor, index: Tensor, cells: Tensor) -> Tensor:
    """GridMix's local loss: each cell classified as the sample it shows, averaged over cells.

    Args:
        logits: ``(B, K, rows, cols)`` per-cell logits.
        y: integer labels ``(B,)`` or soft labels ``(B, K)``.
        index: ``(B,)`` partner rows.
        cells: ``(N, rows, cols)`` bool, N in {1, B}: True where the cell shows the sample.

    Returns:
        The scalar mean cross-entropy over samples and cells.
    """
    if tuple(cells.shape[1:]) != tuple(logits.shape[2:]) or cells.shape[0] not in (1, logits.shape[0]):
        raise ShapeError(f"cells of shape {tuple(cells.shape)} do not fit logits of shape {tuple(logits.shape)}")
    dev = logits.device
    cells, index, y = upload(cells, dev), upload(index, dev), upload(y, dev)
    if y.ndim == 1:
        own, other = y.view(-1, 1, 1), y.index_select(0, index).view(-1, 1, 1)
        return F.cross_entropy(logits, torch.where(cells, own, other))
    own, other = y.view(*y.shape, 1, 1), y.index_select(0, index).view(*y.shape, 1, 1)
    soft = torch.where(cells.unsqueeze(1), own, other).to(logits.dtype)
    return F.cross_entropy(logits, soft.expand(-1, -1, *logits.shape[2:]))
