"""Mixed-example data augmentation: non-linear ways of combining two images.

Paper and reference code:
    * Summers & Dinneen, "Improved Mixed-Example Data Augmentation", WACV 2019
      (github.com/ceciliaresearch/MixedExample, ``mixed_example.py``: one function per variant).

Every variant builds, per pair, a mask of which pixels come from the sample and which from
its partner (some variants move a region of the partner); the label weight is the share of
the sample's pixels, except ``noisy_mixup`` (the drawn coefficient), as the reference code.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mixkit import rng
from mixkit.base import MixMethod
from mixkit.errors import DTypeError, ShapeError
from mixkit.functional.mixed_example import (
    BLENDING_VARIANTS,
    MIXED_EXAMPLE_VARIANTS,
    sample_mixed_example,
    shifted_mask_mix,
)
from mixkit.registry import register
from mixkit.types import Params
from mixkit.validation import check_choice, check_params, check_range

__all__ = ["MixedExample", "MixedExampleParams"]


@dataclass(frozen=True, eq=False, kw_only=True)
class MixedExampleParams(Params):
    """Params of a mixed-example mix: ``x~ = mask * x + (1 - mask) * moved(x[index])``.

    Attributes:
        mask: ``(N, 1, H, W)`` (``(N, C, H, W)`` for ``random_elements``), N in {1, B}; True/1
            keeps the sample. Bool masks copy pixels, float masks blend them.
        rows: ``(N, H)`` int64 partner rows read at each output row, or ``None`` (same row).
        cols: ``(N, W)`` int64 partner columns read at each output column, or ``None``.
    """

    mask: Tensor
    rows: Tensor | None = None
    cols: Tensor | None = None


def _check_fit(x: Tensor, params: MixedExampleParams) -> None:
    if x.ndim != 4:
        raise ShapeError(f"x must have shape (B, C, H, W), got shape {tuple(x.shape)}")
    m, (b, c, h, w) = params.mask, x.shape
    if m.ndim != 4 or m.shape[0] not in (1, b) or m.shape[1] not in (1, c) or tuple(m.shape[2:]) != (h, w):
        raise ShapeError(f"mask of shape {tuple(m.shape)} does not fit x of shape {tuple(x.shape)}")
    for name, table, size in (("rows", params.rows, h), ("cols", params.cols, w)):
        if table is not None and (table.shape != (m.shape[0], size) or int(table.min()) < 0 or int(table.max()) >= size):
            raise ShapeError(f"{name} of shape {tuple(table.shape)} does not fit x of shape {tuple(x.shape)}")


@register(
    "mixed_example",
    family="linear",
    paper="Improved Mixed-Example Data Augmentation",
    authors="Summers & Dinneen",
    venue="WACV 2019",
    year=2019,
    code="https://github.com/ceciliaresearch/MixedExample",
    sources=2,
    summary="The paper's non-linear pair mixes (concats, 2x2, squares, rows, columns, pixels, noisy mixup); "
    "label weight = the sample's pixel share.",
)
class MixedExample(MixMethod):
    """Mixed-example augmentation: one of the paper's ways of combining ``x`` with ``x[perm]``.

    Variants, as the reference code (sizes ``H x W``, draws ``U{a..b-1}``; "kept" is ``x``):

    * ``vertical_concat``: the top ``r ~ U{0..H-1}`` rows kept; ``horizontal_concat``: the
      left ``c ~ U{0..W-1}`` columns.
    * ``mixed_concat``: split at ``r``, ``c``; top-left and bottom-right kept. (The code draws
      the row split from ``W`` and the column split from ``H``; equal for square images.)
    * ``random_2x2``: split at ``r ~ U{h_b..H-h_b-1}`` (``h_b = round(H/4)``), same for
      ``c``; each quadrant kept with a probability ``q ~ U(0, 1)`` drawn per pair.
    * ``random_square``: a square of side ``round(square_size * min(H, W))`` (the code's
      16 px on 32 px CIFAR), centre uniform, clipped, filled from a uniformly placed square of
      the partner (the code draws the source corner with ``randint(0, S - side)``, exclusive).
    * ``random_rows`` / ``random_cols`` / ``random_pixels`` / ``random_elements``: each row
      / column / pixel / element (channel included) kept with probability ``q ~ U(0, 1)``.
    * ``random_row_interval`` / ``random_col_interval``: rows (columns) ``[i1, i2)``,
      ``i1 ~ U{0..S-1}``, ``i2 ~ U{i1..S-1}``, replaced by the partner's ``[i3, i3 + i2 -
      i1)``, ``i3 ~ U{0..S-(i2-i1)-1}``.
    * ``noisy_mixup``: a per-pixel weight ``clip(N(m, noise_std^2), 0, 1)``, ``m ~ U(0, 1)``;
      the label weight is ``m`` itself (the code's rule), not the realised mean.
    * ``vh_mixup`` (the paper's headline VH-Mixup): ``m ~ U(0, 1)`` blend of a vertical and a
      horizontal concat of the same pair; label weight ``m r/H + (1 - m) c/W``.

    Lambda is the share of ``x``'s pixels (except ``noisy_mixup``). Pairing: a random
    permutation (the code pairs consecutive samples of a shuffled stream, so never a sample
    with itself; here a fixed point of the permutation keeps its image, except in the three
    variants that move a region, where it gets a region of itself moved). Works on
    ``(B, C, H, W)``; the copying variants work on uint8, ``noisy_mixup`` and ``vh_mixup``
    need floating point. VH-BC+ (BC+ on the two concats) is not included. The paper does not
    name a default variant; ``vertical_concat`` (the first it lists) is the default here.

    Args:
        variant: one of the names above.
        square_size: ``random_square``'s side as a share of ``min(H, W)``, in (0, 1].
        noise_std: ``noisy_mixup``'s per-pixel standard deviation (the code's 0.025).
        p: probability of mixing the batch or each sample.
        mode: ``"elem"`` (one mask per pair, as the code) or ``"batch"`` (one for the batch).
        num_classes: number of classes, if known.

    Example:
        >>> import torch, mixkit
        >>> out = mixkit.create("mixed_example", variant="random_2x2")(
        ...     torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 3]), generator=torch.Generator().manual_seed(0))
        >>> share = out.params.mask.flatten(1).double().mean(dim=1)
        >>> bool(torch.allclose(share, out.params.lam))
        True
    """

    spatial_dims = (2,)
    needs_float = False

    def __init__(
        self,
        *,
        variant: str = "vertical_concat",
        square_size: float = 0.5,
        noise_std: float = 0.025,
        p: float = 1.0,
        mode: str = "elem",
        num_classes: int | None = None,
    ) -> None:
        super().__init__(p=p, mode=mode, num_classes=num_classes)
        self.variant = check_choice(variant, MIXED_EXAMPLE_VARIANTS, "variant")
        self.square_size = check_range(square_size, 1e-9, 1.0, "square_size")
        self.noise_std = check_range(noise_std, 0.0, 1e3, "noise_std")

    def check(self, x: Tensor, y: Tensor) -> None:
        super().check(x, y)
        if self.variant in BLENDING_VARIANTS and not x.is_floating_point():
            raise DTypeError(f"x must be floating point for variant={self.variant!r} (it blends), got {x.dtype}")

    def sample(
        self, x: Tensor, y: Tensor | None = None, *, generator: torch.Generator | None = None
    ) -> MixedExampleParams:
        b, c, h, w = x.shape
        index = rng.randperm(b, generator=generator)
        n = 1 if self.mode == "batch" else b
        mask, lam, rows, cols = sample_mixed_example(
            self.variant, n, (c, h, w), square_size=self.square_size, noise_std=self.noise_std, generator=generator
        )
        active = self._active(b, generator)
        keep = (active[:1] if self.mode == "batch" else active).view(n, 1, 1, 1)
        mask = torch.where(keep, mask, torch.ones((), dtype=mask.dtype))
        lam = torch.where(active, lam.expand(b), 1.0)
        return MixedExampleParams(index=self._partner(index, active), lam=lam, mask=mask, rows=rows, cols=cols)

    def apply(self, x: Tensor, params: Params) -> Tensor:
        check_params(x, params)
        if not isinstance(params, MixedExampleParams):
            raise TypeError(f"params must be MixedExampleParams, got {type(params).__name__}")
        _check_fit(x, params)
        return self._mix(x, params)

    def _mix(self, x: Tensor, params: MixedExampleParams) -> Tensor:
        return shifted_mask_mix(x, params.index, params.mask, params.rows, params.cols)
