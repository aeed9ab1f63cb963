"""k-sample mixing: quadrant tilings, nested boxes and optimal matching of point clouds.

Pure tensor functions behind :mod:`mixkit.methods.multi`. A k-source mix is described by
``sources (B, k)``, the batch rows each output draws from (column 0 is the row itself), and
the geometry that says which source shows where.

Follows Takahashi et al., "RICAP" (ACML 2018; github.com/jackryo/ricap), Bochkovskiy et al.,
"YOLOv4" Mosaic (arXiv 2004.10934; github.com/AlexeyAB/darknet ``load_data_augment``), Jeong
et al., "Observations on K-image Expansion of Image-Mixing Augmentation" (DCutMix; IEEE Access
2023; github.com/clovaai/DCutMix), Xie et al., "Cut-Thumbnail" (ACM MM 2021;
github.com/TianshuXie/Cut-Thumbnail) and Greenewald et al., "k-Mixup Regularization for Deep
Learning via Optimal Transport" (TMLR 2023; github.com/AnmingGu/kmixup-cifar10). The
assignment solver is the O(n^3) Hungarian method with potentials (Kuhn-Munkres as refined by
Jonker and Volgenant), run on many small problems at once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from mixkit import rng
from mixkit._device import upload
from mixkit.errors import ShapeError
from mixkit.functional.alloc import fresh_copy, fresh_like
from mixkit.functional.blend import (
    from_memory,
    gather_rows,
    match_format,
    memory_order,
    to_memory,
)
from mixkit.functional import row_paths
from mixkit.functional.boxes import _copy_box_rows, _spans, box_mask
from mixkit.functional.pixel_gather import _gather_pixels
from mixkit.functional.matching import (  # re-exported here
    linear_assignment,
    match_clouds,
)
from mixkit.functional.resize import interpolate_batch

__all__ = [
    "chain_sources",
    "check_nested",
    "check_tiling",
    "layer_map",
    "linear_assignment",
    "match_clouds",
    "merge_repeats",
    "nested_shares",
    "own_weight",
    "paste_nested",
    "paste_thumbnails",
    "quadrant_cells",
    "quadrant_shares",
    "sample_nested_boxes",
    "tile_quadrants",
]


def chain_sources(b: int, k: int, *, generator: torch.Generator | None = None) -> Tensor:
    """``(B, k)`` int64 source rows: the row itself, then its ``k - 1`` successors in a random cycle.

    With ``order`` a random permutation, row ``order[i]`` draws from ``order[i + j mod B]`` in
    column ``j``; each column is a permutation of the batch, and the ``k`` sources of a row are
    distinct whenever ``B >= k`` (smaller batches wrap around and repeat rows).
    """
    order = rng.randperm(b, generator=generator)
    pos = torch.empty_like(order)
    pos[order] = torch.arange(b)
    shift = torch.arange(k)
    return order[(pos.unsqueeze(1) + shift) % b]


def own_weight(sources: Tensor, weights: Tensor) -> Tensor:
    """``(B,)`` float64: the total weight of each row's own sample among its sources."""
    own = sources == torch.arange(sources.shape[0], device=sources.device).unsqueeze(1)
    return (weights.to(torch.float64) * own).sum(dim=1)


def merge_repeats(sources: Tensor, weights: Tensor) -> Tensor:
    """Weights with each repeated source's weight moved to its first column (``(B, k)``).

    Small batches repeat rows in ``sources``; merging keeps the dense labels unchanged and
    makes column 0 carry the row's whole own weight.
    """
    same = sources.unsqueeze(2) == sources.unsqueeze(1)  # (B, k, k)
    first = same.int().argmax(dim=2)  # first column holding the same row
    return torch.zeros(weights.shape, dtype=weights.dtype, device=weights.device).scatter_add_(1, first, weights)


def quadrant_cells(centre: Tensor, spatial: Sequence[int]) -> Tensor:
    """``(N, 4, 4)`` int64 cells ``[top, left, bottom, right]`` (TL, TR, BL, BR) around ``centre``.

    Args:
        centre: ``(N, 2)`` int64 boundary point ``(row, col)``, within ``[0, H] x [0, W]``.
        spatial: ``(H, W)``.
    """
    h, w = spatial
    cy, cx = centre[:, 0], centre[:, 1]
    zero, hh, ww = torch.zeros_like(cy), torch.full_like(cy, h), torch.full_like(cx, w)
    tops = torch.stack([zero, zero, cy, cy], dim=1)
    lefts = torch.stack([zero, cx, zero, cx], dim=1)
    bottoms = torch.stack([cy, cy, hh, hh], dim=1)
    rights = torch.stack([cx, ww, cx, ww], dim=1)
    return torch.stack([tops, lefts, bottoms, rights], dim=2)


def quadrant_shares(centre: Tensor, spatial: Sequence[int]) -> Tensor:
    """``(N, 4)`` float64: the share of the image each quadrant cell covers (rows sum to 1)."""
    cells = quadrant_cells(centre, spatial).to(torch.float64)
    area = (cells[..., 2] - cells[..., 0]) * (cells[..., 3] - cells[..., 1])
    return area / float(math.prod(spatial))


def tile_quadrants(x: Tensor, sources: Tensor, centre: Tensor, offsets: Tensor) -> Tensor:
    """Fill the four quadrant cells of each output with crops of their sources.

    Cell ``k`` of row ``b`` (``[top, left, bottom, right]`` from :func:`quadrant_cells`) shows
    ``x[sources[b, k]]`` from the crop of the same size whose top-left corner is
    ``offsets[., k]``. Works on any dtype (uint8 included): values are only copied.

    Args:
        x: ``(B, C, H, W)`` batch; not modified.
        sources: ``(B, 4)`` int64 source rows of the cells TL, TR, BL, BR.
        centre: ``(N, 2)`` int64 boundary points, N in {1, B} (one geometry or one per row).
        offsets: ``(N, 4, 2)`` int64 top-left ``(row, col)`` of each cell's crop in its source.

    Returns:
        ``(B, C, H, W)``, a new tensor in ``x``'s memory format.
    """
    spatial = tuple(x.shape[2:])
    cells = quadrant_cells(centre, spatial)
    sources = upload(sources, x.device)
    if centre.shape[0] == 1:
        order = memory_order(x)
        view = to_memory(x, order)
        windows = []  # (destination, source) index of each cell
        for k, (t, l, b, r) in enumerate(cells[0].tolist()):
            sy, sx = offsets[0, k].tolist()
            windows.append((_window(t, b, l, r, order), _window(sy, sy + b - t, sx, sx + r - l, order)))
        if torch.is_grad_enabled() and x.requires_grad:
            out = _CellCopy.apply(view, sources, tuple(windows))
        else:
            out = _copy_cells(view, sources, windows)
        return match_format(from_memory(out, order), x)
    out = _by_rows(x, lambda view, first: row_paths.tile_rows(view, sources.cpu(), cells.cpu(), offsets.cpu(),
                                                              spatial, first))
    if out is not None:  # large samples: cell copies instead of a per-pixel gather
        return out
    dev = x.device
    h, w = spatial
    shift = upload(offsets, dev) - upload(cells[..., :2], dev)  # (B, 4, 2) source corner - destination corner
    start = sources * (h * w) + shift[..., 0] * w + shift[..., 1]  # (B, 4) flat offset of each cell
    right = torch.arange(w, device=dev) >= upload(centre[:, 1:], dev)  # (B, W)
    top = torch.where(right, start[:, 1:2], start[:, 0:1])
    bottom = torch.where(right, start[:, 3:4], start[:, 2:3])
    below = (torch.arange(h, device=dev) >= upload(centre[:, :1], dev)).unsqueeze(2)  # (B, H, 1)
    flat = torch.where(below, bottom.unsqueeze(1), top.unsqueeze(1))
    flat += torch.arange(h * w, device=dev).view(h, w)
    return _gather_pixels(x, flat.view(-1))


def _copy_cells(view: Tensor, sources: Tensor, windows: Sequence[tuple[tuple[slice, ...], tuple[slice, ...]]]) -> Tensor:
    """Cell ``k`` of every output row: the source window of row ``sources[:, k]``."""
    out = fresh_like(view)
    for k, (dst, src) in enumerate(windows):
        if view.device.type == "cpu" and not (torch.is_grad_enabled() and view.requires_grad):
            # straight into the output's cell: one pass, no cell-sized temporary
            torch.index_select(view[src], 0, sources[:, k], out=out[dst])
        else:
            out[dst] = view[src].index_select(0, sources[:, k])
    return out


class _CellCopy(torch.autograd.Function):
    """:func:`_copy_cells` with a backward of one scatter-add per cell (autograd's graph of the
    four window assignments copies the whole gradient for each)."""

    @staticmethod
    def forward(ctx: Any, view: Tensor, sources: Tensor, windows: tuple) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(sources)
        ctx.windows = windows
        return _copy_cells(view, sources, windows)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        (sources,) = ctx.saved_tensors
        grad = torch.zeros_like(g)
        for k, (dst, src) in enumerate(ctx.windows):
            if torch.is_grad_enabled():  # create_graph: differentiable (out-of-place) updates
                cell = torch.zeros_like(g)
                cell[src] = torch.zeros_like(g[src]).index_add(0, sources[:, k], g[dst])
                grad = grad + cell
            else:
                grad[src].index_add_(0, sources[:, k], g[dst])
        return grad, None, None


def _by_rows(x: Tensor, paste: Callable[[Tensor, int], Tensor | None]) -> Tensor | None:
    """``paste(view, first)`` on ``x`` in its memory order (``first``: the view's first spatial
    dim) for large samples on the CPU outside autograd, back in ``x``'s format; ``None``
    otherwise, or when ``paste`` declines (the batched gather then runs)."""
    if not row_paths.rows_without_grad(x):
        return None
    order = memory_order(x)
    out = paste(to_memory(x, order), 2 if order is None else 1)
    return None if out is None else match_format(from_memory(out, order), x)


def _window(top: int, bottom: int, left: int, right: int, order: tuple[int, ...] | None) -> tuple[slice, ...]:
    """Index of rows ``[top, bottom)`` and columns ``[left, right)`` of a 2-D batch (or its
    channels-last view)."""
    rows, cols = slice(top, bottom), slice(left, right)
    return (slice(None), slice(None), rows, cols) if order is None else (slice(None), rows, cols, slice(None))


def check_tiling(x: Tensor, sources: Tensor, centre: Tensor, offsets: Tensor) -> None:
    """Raise :class:`~mixkit.errors.ShapeError` unless a quadrant tiling fits ``x (B, C, H, W)``."""
    b, (h, w), n = x.shape[0], tuple(x.shape[2:]), centre.shape[0]
    fits = sources.shape == (b, 4) and centre.shape in ((1, 2), (b, 2)) and offsets.shape == (n, 4, 2)
    if fits:
        cells = quadrant_cells(centre, (h, w))
        ends = offsets + cells[..., 2:] - cells[..., :2]
        fits = bool((ends >= offsets).all() & (offsets >= 0).all() & (ends <= torch.tensor([h, w])).all())
    if not fits:
        raise ShapeError(f"tiling params do not fit x of shape {tuple(x.shape)}; sample params for this size")


def check_nested(x: Tensor, sources: Tensor, boxes: Tensor) -> None:
    """Raise :class:`~mixkit.errors.ShapeError` unless nested boxes fit ``x (B, C, *spatial)``."""
    d, b = x.ndim - 2, x.shape[0]
    fits = boxes.ndim == 3 and boxes.shape[0] in (1, b) and boxes.shape[2] == 2 * d
    fits = fits and sources.shape == (b, boxes.shape[1] + 1)
    if fits:
        fits = bool((boxes[..., d:] <= torch.tensor(x.shape[2:])).all() & (boxes >= 0).all())
    if not fits:
        raise ShapeError(f"nested boxes of shape {tuple(boxes.shape)} do not fit x of shape {tuple(x.shape)}")


def sample_nested_boxes(
    shares: Tensor, spatial: Sequence[int], *, generator: torch.Generator | None = None
) -> Tensor:
    """DCutMix's nested boxes: box ``k`` holds the stick left after the first ``k + 1`` shares.

    Stick-breaking as the reference code: ``v_k = s_k / (1 - s_0 - ... - s_{k-1})``; box ``k``
    has side ``round(side_{k-1} * (1 - v_k)^(1/d))`` per dim (the image is box ``-1``) and a
    uniform integer place inside box ``k - 1``. The ring between boxes ``k - 1`` and ``k``
    shows source ``k``; the last box shows the last source.

    Args:
        shares: ``(N, K)`` target shares (rows of a Dirichlet draw), K >= 2.
        spatial: the spatial sizes, 1 to 3 dims.
        generator: CPU generator.

    Returns:
        ``(N, K - 1, 2 * d)`` int64 boxes ``[start_1..start_d, end_1..end_d]``, each inside the last.
    """
    d = len(spatial)
    shares = shares.to(torch.float64)
    n, k = shares.shape
    left = 1.0 - torch.cumsum(shares, dim=1) + shares  # stick left before piece k
    v = torch.where(left > 0, shares / left.clamp_min(1e-300), torch.ones_like(shares)).clamp(0, 1)
    starts = torch.zeros(n, d, dtype=torch.long)
    sides = torch.tensor(list(spatial), dtype=torch.long).expand(n, d)
    boxes = []
    for j in range(k - 1):
        ratio = (1.0 - v[:, j : j + 1]) ** (1.0 / d)
        new = torch.round(sides.to(torch.float64) * ratio).long().clamp(max=sides)
        room = (sides - new + 1).to(torch.float64)
        starts = starts + torch.floor(rng.uniform((n, d), generator=generator) * room).long().clamp(max=sides - new)
        sides = new
        boxes.append(torch.cat([starts, starts + sides], dim=1))
    return torch.stack(boxes, dim=1)


def nested_shares(boxes: Tensor, spatial: Sequence[int]) -> Tensor:
    """``(N, K)`` float64 visible shares of nested boxes: the rings, then the innermost box."""
    d = len(spatial)
    vol = (boxes[..., d:] - boxes[..., :d]).clamp_min(0).to(torch.float64).prod(dim=-1)
    vol = vol / float(math.prod(spatial))
    outer = torch.cat([torch.ones_like(vol[:, :1]), vol], dim=1)
    return torch.cat([outer[:, :-1] - outer[:, 1:], outer[:, -1:]], dim=1)


def layer_map(boxes: Tensor, spatial: Sequence[int], device: torch.device | str | None = None) -> Tensor:
    """``(N, *spatial)`` int64: which source shows at each position (later boxes cover earlier).

    Source 0 outside every box, source ``k + 1`` inside box ``k`` unless a later box covers it.
    """
    small = torch.uint8 if boxes.shape[1] < 256 else torch.long
    layer = torch.zeros((boxes.shape[0],) + tuple(spatial), dtype=small, device=device)
    for j in range(boxes.shape[1]):
        layer.masked_fill_(box_mask(boxes[:, j], spatial, device).squeeze(1), j + 1)
    return layer.long()


def paste_nested(x: Tensor, sources: Tensor, boxes: Tensor) -> Tensor:
    """Paste ``x[sources[:, k + 1]]`` inside box ``k``, for k = 0.. in turn (later boxes on top).

    Args:
        x: ``(B, C, *spatial)`` batch, 1 to 3 spatial dims, any dtype; not modified.
        sources: ``(B, K)`` int64 source rows (column 0 shows outside every box).
        boxes: ``(N, K - 1, 2 * d)`` int64 boxes, N in {1, B}.
    """
    d = x.ndim - 2
    sources = upload(sources, x.device)
    if boxes.shape[0] == 1:
        order = memory_order(x)
        view = to_memory(x, order)
        out = fresh_copy(view)
        for j in range(boxes.shape[1]):
            spans = _spans(boxes[0, j], d, order)
            _copy_box_rows(out, view, sources[:, j + 1], spans)
        return match_format(from_memory(out, order), x)
    spatial = tuple(x.shape[2:])
    out = _by_rows(x, lambda view, first: row_paths.paste_nested_rows(view, sources, boxes, spatial, first))
    if out is not None:  # large samples: box copies instead of a per-pixel gather
        return out
    start = sources * math.prod(spatial)  # (B, K) flat offset of each source
    flat = start[:, :1].view((-1,) + (1,) * d).repeat((1,) + spatial)
    for j in range(boxes.shape[1]):  # later boxes cover earlier ones
        inside = box_mask(boxes[:, j], spatial, x.device).squeeze(1)
        torch.where(inside, start[:, j + 1].view((-1,) + (1,) * d), flat, out=flat)
    flat += torch.arange(math.prod(spatial), device=x.device).view(spatial)
    return _gather_pixels(x, flat.view(-1))


def _thumbnail_rows(out: Tensor, thumbs: Tensor, index: Tensor, boxes: Tensor, full: Tensor,
                    size: list[int]) -> bool:
    """Per-sample thumbnails of large samples on the CPU, outside autograd: each row's
    thumbnail, ``thumbs[index[r]]``, copied into its box of ``out`` (plain copies: the values
    of the batched gather and indexed assignment, which builds an index per pixel). False
    (nothing written) when the rows or a box do not fit (the batched form then raises)."""
    if not row_paths.rows_without_grad(out, thumbs):
        return False
    b, d = out.shape[0], len(size)
    rows, starts, kept = index.tolist(), boxes[:, :d].tolist(), full.tolist()
    spatial = out.shape[2:]
    if len(rows) != b or boxes.shape[0] != b or any(not 0 <= r < thumbs.shape[0] for r in rows) or any(
            k and any(not 0 <= a <= n - s for a, n, s in zip(start, spatial, size))
            for start, k in zip(starts, kept)):
        return False
    order = memory_order(out)
    first = 2 if order is None else 1
    view, small = to_memory(out, order), to_memory(thumbs, order)
    for r in range(b):
        if kept[r]:
            spans = tuple((first + k, starts[r][k], size[k]) for k in range(d))
            row_paths.row_box(view, r, spans).copy_(small[rows[r]])
    return True


def paste_thumbnails(x: Tensor, index: Tensor, boxes: Tensor) -> Tensor:
    """Paste the whole of ``x[index]``, shrunk to the boxes' common size, into ``x`` at each box.

    Cut-Thumbnail's paste: every box has the same size (or is empty: that row is left as is);
    the thumbnails are made once for the batch with ``F.interpolate`` ((bi/tri)linear,
    ``align_corners=False``, as :func:`mixkit.functional.paste_resized`) and rounded back for
    integer images.

    Args:
        x: ``(B, C, *spatial)`` batch, 1 to 3 spatial dims, any dtype; not modified.
        index: ``(B,)`` the row whose thumbnail each row receives.
        boxes: ``(N, 2 * d)`` int64 boxes, N in {1, B}, all of one size or empty.
    """
    d = x.ndim - 2
    sides = boxes[:, d:] - boxes[:, :d]
    full = (sides > 0).all(dim=1)
    if not bool(full.any()):
        return fresh_copy(x)
    size = sides[full][0].tolist()
    work = x if x.dtype in (torch.float32, torch.float64) else x.float()
    thumbs = interpolate_batch(work, size, ("linear", "bilinear", "trilinear")[d - 1])
    if x.is_floating_point():
        thumbs = thumbs.to(x.dtype)
    else:
        info = torch.iinfo(x.dtype)
        thumbs = thumbs.round_().clamp_(info.min, info.max).to(x.dtype)
    out = fresh_copy(x)
    if boxes.shape[0] != 1 and _thumbnail_rows(out, thumbs, index, boxes, full, size):
        return out
    thumbs = gather_rows(thumbs, index)
    if boxes.shape[0] == 1:
        out[(slice(None), slice(None)) + tuple(slice(a, a + s) for a, s in zip(boxes[0, :d].tolist(), size))] = thumbs
        return out
    rows = upload(full.nonzero().squeeze(1), x.device)
    starts = upload(boxes[full, :d], x.device)
    grids = tuple(
        starts[:, i].view((-1,) + (1,) * d)
        + torch.arange(s, device=x.device).view((1,) * (i + 1) + (s,) + (1,) * (d - i - 1))
        for i, s in enumerate(size)
    )
    out[(rows.view((-1,) + (1,) * d), slice(None)) + grids] = thumbs.index_select(0, rows).movedim(1, -1)
    return out
