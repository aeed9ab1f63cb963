"""Masks and source maps of the mixed-example variants, built for a whole batch at once.

Follows Summers & Dinneen, "Improved Mixed-Example Data Augmentation", WACV 2019, and its
reference code (github.com/ceciliaresearch/MixedExample, ``mixed_example.py``), which mixes
one pair ``(x_i, x_j)`` at a time in TensorFlow; here every variant draws ``N`` pairs' masks
in one batched call.

A draw is ``(mask, lam, rows, cols)``:

* ``mask``: ``(N, 1, H, W)`` (``(N, C, H, W)`` for ``random_elements``), True/1 where the
  mixed image keeps the sample ``x_i``, False/0 where it takes the partner ``x_j``; bool
  masks copy pixels, float masks (``noisy_mixup``, ``vh_mixup``) blend them;
* ``lam``: ``(N,)`` float64, the label weight of ``x_i`` (the share of its pixels, except
  ``noisy_mixup``, whose label uses the drawn coefficient, as the code does);
* ``rows`` / ``cols``: ``(N, H)`` / ``(N, W)`` int64 or ``None``: where the partner's pixels
  are read. Output pixel ``(r, c)`` taken from the partner reads ``x_j[:, rows[r], cols[c]]``
  (``None``: the same row or column). Only the variants that move a region of the partner
  (``random_square`` and the interval variants) have them.

Integer draws ``U{a..b-1}`` follow TensorFlow's ``random_uniform(minval=a, maxval=b)`` and
NumPy's ``randint(a, b)``, both exclusive of ``b``, as in the reference code.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from mixkit import rng
from mixkit._device import upload
from mixkit.functional.blend import gather_rows, mask_blend, select_by_mask
from mixkit.functional.masks import row_sums64

__all__ = ["MIXED_EXAMPLE_VARIANTS", "BLENDING_VARIANTS", "sample_mixed_example", "shifted_mask_mix"]

Draw = tuple[Tensor, Tensor, "Tensor | None", "Tensor | None"]

#: The paper's mixed-example variants, plus its headline VH-Mixup.
MIXED_EXAMPLE_VARIANTS = (
    "vertical_concat",
    "horizontal_concat",
    "mixed_concat",
    "random_2x2",
    "random_square",
    "random_cols",
    "random_rows",
    "random_col_interval",
    "random_row_interval",
    "random_pixels",
    "random_elements",
    "noisy_mixup",
    "vh_mixup",
)
#: Variants whose masks blend values (floating-point input only); the others copy pixels.
BLENDING_VARIANTS = ("noisy_mixup", "vh_mixup")


def _uint(low: Tensor | int, high: Tensor | int, n: int, g: torch.Generator | None) -> Tensor:
    """``(n,)`` int64 draws from ``U{low..high-1}`` (per-row bounds allowed, ``high > low``)."""
    low_t = torch.as_tensor(low, dtype=torch.long).expand(n)
    span = (torch.as_tensor(high, dtype=torch.long) - low_t).expand(n)
    return low_t + torch.floor(rng.uniform((n,), generator=g) * span).long().clamp_max(span - 1)


def _grid(h: int, w: int) -> tuple[Tensor, Tensor]:
    """Row and column indices shaped ``(1, 1, H, 1)`` and ``(1, 1, 1, W)``."""
    return torch.arange(h).view(1, 1, h, 1), torch.arange(w).view(1, 1, 1, w)


def _col(v: Tensor) -> Tensor:
    return v.view(-1, 1, 1, 1)


def _share(mask: Tensor) -> Tensor:
    """``(N,)`` float64: the share of each mask that keeps the sample."""
    if mask.dtype == torch.bool:  # an exact count, without copying an expanded mask
        return row_sums64(mask) / mask[0].numel()
    return mask.flatten(1).to(torch.float64).mean(dim=1)


def _full(mask: Tensor, h: int, w: int) -> Tensor:
    return mask.expand(mask.shape[0], mask.shape[1], h, w)


def _vertical(n: int, c: int, h: int, w: int, g: torch.Generator | None) -> Draw:
    i, _ = _grid(h, w)
    mask = _full(i < _col(_uint(0, h, n, g)), h, w)  # top rows from the sample
    return mask, _share(mask), None, None


def _horizontal(n: int, c: int, h: int, w: int, g: torch.Generator | None) -> Draw:
    _, j = _grid(h, w)
    mask = _full(j < _col(_uint(0, w, n, g)), h, w)  # left columns from the sample
    return mask, _share(mask), None, None


def _mixed_concat(n: int, c: int, h: int, w: int, g: torch.Generator | None) -> Draw:
    i, j = _grid(h, w)
    r, k = _uint(0, h, n, g), _uint(0, w, n, g)
    mask = (i < _col(r)) == (j < _col(k))  # the sample top-left and bottom-right
    return mask, _share(mask), None, None


def _random_2x2(n: int, c: int, h: int, w: int, g: torch.Generator | None) -> Draw:
    hb, wb = round(0.25 * h), round(0.25 * w)  # the code's buffer: round(0.5 * 0.5 * size)
    r, k = _uint(hb, h - hb, n, g), _uint(wb, w - wb, n, g)
    keep = rng.uniform((n, 4), generator=g) < rng.uniform((n, 1), generator=g)
    i, j = _grid(h, w)
    quadrant = 2 * (i >= _col(r)).long() + (j >= _col(k)).long()  # 0 TL, 1 TR, 2 BL, 3 BR
    mask = keep.gather(1, quadrant.reshape(n, h * w)).view(n, 1, h, w)
    return mask, _share(mask), None, None


def _lines(n: int, count: int, g: torch.Generator | None) -> Tensor:
    """``(n, count)`` bool: each line kept with a probability drawn per row from U(0, 1)."""
    return rng.uniform((n, count), generator=g) < rng.uniform((n, 1), generator=g)


def _random_rows(n: int, c: int, h: int, w: int, g: torch.Generator | None) -> Draw:
    mask = _full(_lines(n, h, g).view(n, 1, h, 1), h, w)
    return mask, _share(mask), None, None


def _random_cols(n: int, c: int, h: int, w: int, g: torch.Generator | None) -> Draw:
    mask = _full(_lines(n, w, g).view(n, 1, 1, w), h, w)
    return mask, _share(mask), None, None


def _random_pixels(n: int, c: int, h: int, w: int, g: torch.Generator | None) -> Draw:
    mask = _lines(n, h * w, g).view(n, 1, h, w)
    return mask, _share(mask), None, None


def _random_elements(n: int, c: int, h: int, w: int, g: torch.Generator | None) -> Draw:
    mask = _lines(n, c * h * w, g).view(n, c, h, w)
    return mask, _share(mask), None, None


def _span_map(start: Tensor, end: Tensor, src: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """Inside ``[start, end)`` per row: ``(N, size)`` bool, and the source index map."""
    pos = torch.arange(size).unsqueeze(0)
    inside = (pos >= start.unsqueeze(1)) & (pos < end.unsqueeze(1))
    return inside, torch.where(inside, pos - start.unsqueeze(1) + src.unsqueeze(1), pos)


def _interval(n: int, size: int, g: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """The code's interval: ``i1 ~ U{0..S-1}``, ``i2 ~ U{i1..S-1}``, source ``i3 ~ U{0..S-L-1}``."""
    start = _uint(0, size, n, g)
    end = _uint(start, size, n, g)
    src = _uint(0, size - (end - start), n, g)
    return _span_map(start, end, src, size)


def _random_col_interval(n: int, c: int, h: int, w: int, g: torch.Generator | None) -> Draw:
    inside, cols = _interval(n, w, g)
    mask = _full(~inside.view(n, 1, 1, w), h, w)
    return mask, _share(mask), None, cols


def _random_row_interval(n: int, c: int, h: int, w: int, g: torch.Generator | None) -> Draw:
    inside, rows = _interval(n, h, g)
    mask = _full(~inside.view(n, 1, h, 1), h, w)
    return mask, _share(mask), rows, None


def _square_span(n: int, size: int, side: int, g: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """The square's span on one axis: centre ``U{0..S-1}``, clipped; source offset uniform."""
    centre = _uint(0, size, n, g)
    start = (centre - side // 2).clamp_min(0)
    end = (centre + side - side // 2).clamp_max(size)
    # the code draws the source start with randint(0, S - len): exclusive, so at least 1 value
    src = _uint(0, (size - (end - start)).clamp_min(1), n, g)
    return _span_map(start, end, src, size)


def _random_square(n: int, h: int, w: int, side: int, g: torch.Generator | None) -> Draw:
    in_r, rows = _square_span(n, h, side, g)
    in_c, cols = _square_span(n, w, side, g)
    mask = ~(in_r.view(n, 1, h, 1) & in_c.view(n, 1, 1, w))
    return mask, _share(mask), rows, cols


def _noisy_mixup(n: int, h: int, w: int, std: float, g: torch.Generator | None) -> Draw:
    coeff = rng.uniform((n,), generator=g)
    mask = (_col(coeff) + std * rng.normal((n, 1, h, w), generator=g)).clamp(0, 1)
    return mask.float(), coeff, None, None  # label: the drawn coefficient, as the code


def _vh_mixup(n: int, c: int, h: int, w: int, g: torch.Generator | None) -> Draw:
    coeff = _col(rng.uniform((n,), generator=g))
    i, j = _grid(h, w)
    rows, cols = _uint(0, h, n, g), _uint(0, w, n, g)
    mask = coeff * (i < _col(rows)) + (1 - coeff) * (j < _col(cols))
    return mask.float(), _share(mask), None, None


_DRAWS: dict[str, Callable[[int, int, int, int, torch.Generator | None], Draw]] = {
    "vertical_concat": _vertical,
    "horizontal_concat": _horizontal,
    "mixed_concat": _mixed_concat,
    "random_2x2": _random_2x2,
    "random_cols": _random_cols,
    "random_rows": _random_rows,
    "random_col_interval": _random_col_interval,
    "random_row_interval": _random_row_interval,
    "random_pixels": _random_pixels,
    "random_elements": _random_elements,
    "vh_mixup": _vh_mixup,
}


def sample_mixed_example(
    variant: str,
    n: int,
    shape: tuple[int, int, int],
    *,
    square_size: float = 0.5,
    noise_std: float = 0.025,
    generator: torch.Generator | None = None,
) -> Draw:
    """Draw ``n`` masks of a mixed-example variant (on the CPU).

    Args:
        variant: one of :data:`MIXED_EXAMPLE_VARIANTS`.
        n: number of masks (1 for the whole batch, or B).
        shape: ``(C, H, W)`` of one sample.
        square_size: ``random_square``'s side as a share of ``min(H, W)`` (rounded, >= 1 px).
        noise_std: ``noisy_mixup``'s per-pixel standard deviation around the coefficient.
        generator: CPU generator.

    Returns:
        ``(mask, lam, rows, cols)`` as described in the module docstring.
    """
    c, h, w = shape
    if variant == "random_square":
        side = max(1, round(square_size * min(h, w)))
        return _random_square(n, h, w, side, generator)
    if variant == "noisy_mixup":
        return _noisy_mixup(n, h, w, noise_std, generator)
    if variant not in _DRAWS:
        raise ValueError(f"variant must be one of {list(MIXED_EXAMPLE_VARIANTS)}, got {variant!r}")
    return _DRAWS[variant](n, c, h, w, generator)


def shifted_mask_mix(
    x: Tensor, index: Tensor, mask: Tensor, rows: Tensor | None = None, cols: Tensor | None = None
) -> Tensor:
    """``mask * x + (1 - mask) * x[index]``, the partner first re-indexed by ``rows``/``cols``.

    Output pixel ``(r, c)`` taken from the partner reads ``x[index][:, :, rows[r], cols[c]]``
    (per mask row), which moves a region of the partner elsewhere in one batched gather.

    Args:
        x: ``(B, C, H, W)``, any dtype for bool masks, floating point for float masks.
        index: ``(B,)`` partner rows.
        mask: ``(N, 1 or C, H, W)`` with N in {1, B}; True/1 keeps ``x``.
        rows: ``(N, H)`` int64 source rows, or ``None`` (same row).
        cols: ``(N, W)`` int64 source columns, or ``None`` (same column).
    """
    if rows is None and cols is None:
        return mask_blend(x, index, mask)
    partner = gather_rows(x, index)
    b, c, h, w = x.shape
    if rows is not None:
        rows = upload(rows, x.device).view(-1, 1, h, 1).expand(b, c, h, w)
        partner = partner.gather(2, rows)
    if cols is not None:
        cols = upload(cols, x.device).view(-1, 1, 1, w).expand(b, c, h, w)
        partner = partner.gather(3, cols)
    return select_by_mask(x, partner, mask)
