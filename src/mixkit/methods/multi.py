"""k-sample mixing: each mixed sample draws on more than one partner, or on an optimal partner.

Papers and reference code:
    * Takahashi, Matsubara, Uehara, "Data Augmentation using Random Image Cropping and
      Patching for Deep CNNs", ACML 2018 / IEEE TCSVT 2020 (github.com/jackryo/ricap).
    * Jeong et al., "Observations on K-image Expansion of Image-Mixing Augmentation" (DCutMix),
      IEEE Access 2023, arXiv 2110.04248 (github.com/clovaai/DCutMix).
    * Bochkovskiy, Wang, Liao, "YOLOv4: Optimal Speed and Accuracy of Object Detection",
      arXiv 2004.10934, 2020 (Mosaic; github.com/AlexeyAB/darknet, ``src/data.c``).

k-source methods return a :class:`MultiParams`: ``sources (B, k)`` (column 0 the row itself)
and ``weights (B, k)``, the realised share of each source; ``lam`` is the total weight of the
row's own sample and ``index`` its first partner. Partners come from
:func:`mixkit.functional.multi.chain_sources`, so the k sources of a row are distinct when the
batch holds at least k samples (the reference codes draw independent permutations, which may
repeat a row; the distribution of each source is the same).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from mixkit import rng
from mixkit._device import upload
from mixkit._moved import moved_names
from mixkit.base import MixMethod
from mixkit.errors import HyperParameterError
from mixkit.functional.multi import (
    chain_sources,
    check_nested,
    check_tiling,
    merge_repeats,
    nested_shares,
    own_weight,
    paste_nested,
    quadrant_cells,
    quadrant_shares,
    sample_nested_boxes,
    tile_quadrants,
)
from mixkit.methods.cutting import _empty_inactive
from mixkit.registry import register
from mixkit.types import MixTarget, Params
from mixkit.validation import (
    check_alpha,
    check_choice,
    check_params,
    check_positive_int,
    check_range,
)

__all__ = ["MultiParams", "TileParams", "NestedBoxParams", "RICAP", "Mosaic", "DCutMix"]


@dataclass(frozen=True, eq=False, kw_only=True)
class MultiParams(Params):
    """Params of a k-source mix.

    Attributes:
        sources: ``(B, k)`` int64 rows each output draws from (column 0: the row itself).
        weights: ``(B, k)`` float64 realised share of each source; rows sum to 1 (a source
            repeated in a small batch has its weights merged into its first column).
    """

    sources: Tensor
    weights: Tensor


@dataclass(frozen=True, eq=False, kw_only=True)
class TileParams(MultiParams):
    """Params of a 2 x 2 tiling (RICAP, Mosaic).

    Attributes:
        centre: ``(N, 2)`` int64 boundary point ``(row, col)`` of the cells, N in {1, B}.
        offsets: ``(N, 4, 2)`` int64 top-left of each cell's crop (TL, TR, BL, BR) in its source.
    """

    centre: Tensor
    offsets: Tensor


@dataclass(frozen=True, eq=False, kw_only=True)
class NestedBoxParams(MultiParams):
    """Params of DCutMix: ``boxes (N, k - 1, 2 * d)``, each inside the last, N in {1, B}."""

    boxes: Tensor


def _multi_target(y: Tensor, params: MultiParams, num_classes: int | None) -> MixTarget:
    dtype = torch.float64 if y.dtype == torch.float64 else torch.float32
    return MixTarget(y, upload(params.sources, y.device), upload(params.weights, y.device, dtype), num_classes)


def _rows(n: int, rows: Tensor) -> Tensor:
    """Per-row flags reduced to the geometry's N rows (N = 1: one geometry for the batch)."""
    return rows[:1] if n == 1 else rows


class _Tiling(MixMethod):
    """Shared parts of RICAP and Mosaic: four sources tiled around a boundary point."""

    spatial_dims = (2,)
    needs_float = False

    @staticmethod
    def _tile_params(
        spatial: tuple[int, int], centre: Tensor, offsets: Tensor, active: Tensor, generator: torch.Generator | None
    ) -> TileParams:
        """Params from a geometry: sources drawn, inactive or self-only rows made plain copies."""
        b, n = active.shape[0], centre.shape[0]
        sources = chain_sources(b, 4, generator=generator)
        sources = torch.where(active.unsqueeze(1), sources, torch.arange(b).unsqueeze(1))
        plain = (sources == torch.arange(b).unsqueeze(1)).all(dim=1)  # nothing to mix: copy
        starts = quadrant_cells(centre, spatial)[..., :2]
        offsets = torch.where(_rows(n, plain).view(n, 1, 1), starts, offsets)
        weights = merge_repeats(sources, quadrant_shares(centre, spatial).expand(b, 4))
        return TileParams(
            index=sources[:, 1].clone(), lam=own_weight(sources, weights), sources=sources, weights=weights,
            centre=centre, offsets=offsets,
        )

    def apply(self, x: Tensor, params: TileParams) -> Tensor:
        check_params(x, params)
        check_tiling(x, params.sources, params.centre, params.offsets)
        return self._mix(x, params)

    def _mix(self, x: Tensor, params: TileParams) -> Tensor:
        return tile_quadrants(x, params.sources, params.centre, params.offsets)

    def target(self, y: Tensor, params: TileParams) -> MixTarget:
        return _multi_target(y, params, self.num_classes)


@register(
    "ricap",
    family="multi",
    paper="Data Augmentation using Random Image Cropping and Patching for Deep CNNs",
    authors="Takahashi et al.",
    venue="ACML 2018 / IEEE TCSVT 2020",
    year=2018,
    code="https://github.com/jackryo/ricap",
    sources=4,
    summary="Crops of four images patched into the quadrants around a Beta boundary; label weights = crop areas.",
)
class RICAP(_Tiling):
    """RICAP: four random crops, from four samples, patched into the four quadrants.

    As the reference code: boundary ``(h, w) = (round(H * b1), round(W * b2))`` with
    ``b1, b2 ~ Beta(beta, beta)``; the quadrants TL ``(h, w)``, TR ``(h, W - w)``, BL
    ``(H - h, w)`` and BR ``(H - h, W - w)`` show crops of their sources taken at uniform
    positions; each source's label weight is its quadrant's area share (the four sum to 1).
    Pairing: the TL crop comes from the sample itself and the others from its successors in a
    random cycle (the code draws four independent permutations); ``lam`` is the TL share (plus
    any repeat of the sample in batches of fewer than 4). ``"batch"`` mode shares the boundary
    and the crop positions over the batch, as the code does. 2-D inputs, uint8 included.

    Args:
        beta: Beta concentration of the boundary (> 0; the paper's 0.3).
        p: probability of mixing the batch or each sample.
        mode: ``"batch"`` (one boundary) or ``"elem"`` (one boundary and crops per sample).
        num_classes: number of classes, if known.

    Example:
        >>> import torch, mixkit
        >>> out = mixkit.create("ricap")(torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 3]),
        ...                              generator=torch.Generator().manual_seed(0))
        >>> out.target.k, float(out.target.weight.sum(dim=1)[0])
        (4, 1.0)
    """

    def __init__(
        self, *, beta: float = 0.3, p: float = 1.0, mode: str = "batch", num_classes: int | None = None
    ) -> None:
        super().__init__(p=p, mode=mode, num_classes=num_classes)
        self.beta = check_alpha(beta, "beta")

    def sample(self, x: Tensor, y: Tensor | None = None, *, generator: torch.Generator | None = None) -> TileParams:
        b, (h, w) = x.shape[0], tuple(x.shape[2:])
        n = 1 if self.mode == "batch" else b
        bh = torch.round(h * rng.beta((n,), self.beta, self.beta, generator=generator)).long()
        bw = torch.round(w * rng.beta((n,), self.beta, self.beta, generator=generator)).long()
        centre = torch.stack([bh, bw], dim=1)
        cells = quadrant_cells(centre, (h, w))
        room = torch.tensor([h, w]) - (cells[..., 2:] - cells[..., :2]) + 1
        offsets = torch.floor(rng.uniform((n, 4, 2), generator=generator) * room).long()
        return self._tile_params((h, w), centre, offsets, self._active(b, generator), generator)


@register(
    "mosaic",
    family="multi",
    paper="YOLOv4: Optimal Speed and Accuracy of Object Detection",
    authors="Bochkovskiy et al.",
    venue="arXiv 2004.10934",
    year=2020,
    code="https://github.com/AlexeyAB/darknet",
    sources=4,
    summary="Four images stitched in a 2 x 2 grid around a random centre; label weights = cell areas.",
)
class Mosaic(_Tiling):
    """Mosaic for classification: four samples stitched in a 2 x 2 grid around a random centre.

    The centre ``(cy, cx)`` is a uniform integer in ``[int(lo * H), int(hi * H)] x [int(lo *
    W), int(hi * W)]``; the cells TL, TR, BL, BR come from the sample and three partners
    (successors in a random cycle) and each label weight is its cell's area share. With
    ``placement="aligned"`` (the YOLOv4 authors' classifier code, darknet
    ``load_data_augment``, ``offset=(0.2, 0.8)``) a cell shows the same region of its source;
    with ``"corner"`` (the detection Mosaic, as keras-cv's ``Mosaic``) the four whole images
    meet at the centre, i.e. an ``H x W`` window of the ``2H x 2W`` stitched grid. No resizing:
    values are copied (uint8 works). darknet mixes half of the batches (``p=0.5``).

    Args:
        offset: ``(lo, hi)`` range of the centre as a share of each side, within [0, 1].
        placement: ``"aligned"`` or ``"corner"`` (see above).
        p: probability of mixing the batch or each sample.
        mode: ``"batch"`` (one centre) or ``"elem"`` (one centre per sample).
        num_classes: number of classes, if known.

    Example:
        >>> import torch, mixkit
        >>> out = mixkit.create("mosaic")(torch.rand(4, 3, 10, 10), torch.tensor([0, 1, 2, 3]),
        ...                               generator=torch.Generator().manual_seed(0))
        >>> cy, cx = out.params.centre[0].tolist()
        >>> abs(float(out.params.lam[0]) - cy * cx / 100) < 1e-12
        True
    """

    def __init__(
        self,
        *,
        offset: Sequence[float] = (0.2, 0.8),
        placement: str = "aligned",
        p: float = 1.0,
        mode: str = "batch",
        num_classes: int | None = None,
    ) -> None:
        super().__init__(p=p, mode=mode, num_classes=num_classes)
        if isinstance(offset, (str, bytes)) or not isinstance(offset, Sequence) or len(offset) != 2:
            raise HyperParameterError(f"offset must be a pair (lo, hi) with 0 <= lo <= hi <= 1, got {offset!r}")
        lo = check_range(offset[0], 0.0, 1.0, "offset[0]")
        self.offset = (lo, check_range(offset[1], lo, 1.0, "offset[1]"))
        self.placement = check_choice(placement, ("aligned", "corner"), "placement")

    def sample(self, x: Tensor, y: Tensor | None = None, *, generator: torch.Generator | None = None) -> TileParams:
        b, (h, w) = x.shape[0], tuple(x.shape[2:])
        n = 1 if self.mode == "batch" else b
        lo, hi = self.offset
        centre = torch.stack(
            [rng.randint(int(lo * s), int(hi * s) + 1, (n,), generator=generator).clamp(0, s) for s in (h, w)], dim=1
        )
        offsets = quadrant_cells(centre, (h, w))[..., :2]
        if self.placement == "corner":  # the TL cell shows its source's bottom-right corner, etc.
            size = torch.tensor([h, w])
            far = (size - centre).unsqueeze(1)  # (n, 1, 2)
            pick = torch.tensor([[1, 1], [1, 0], [0, 1], [0, 0]])  # which coords start at `far`
            offsets = far * pick
        return self._tile_params((h, w), centre, offsets, self._active(b, generator), generator)


@register(
    "dcutmix",
    family="multi",
    paper="Observations on K-image Expansion of Image-Mixing Augmentation",
    authors="Jeong et al.",
    venue="IEEE Access 2023 (arXiv 2110.04248)",
    year=2023,
    code="https://github.com/clovaai/DCutMix",
    sources="k",
    summary="k-image CutMix: nested boxes of successive partners, Dirichlet areas; label weights = visible areas.",
)
class DCutMix(MixMethod):
    """DCutMix: k-image CutMix whose visible areas follow a Dirichlet draw (stick-breaking).

    As the reference code (``joint_dirichlet``, mode ``dcutmix``): shares ``s ~ Dir(alpha *
    1_k)``; box 0 is cut inside the image, box 1 inside box 0, and so on
    (:func:`mixkit.functional.multi.sample_nested_boxes`); source ``j`` (the sample for
    ``j = 0``, then its successors in a random cycle) shows in the ring between boxes ``j - 1``
    and ``j``, the last source inside the last box. Later boxes cover earlier ones and each
    label weight is the realised visible area, so the weights sum to 1 and match ``s`` up to
    rounding. The code draws one Dirichlet per sample (``mode="elem"``); ``"batch"`` shares one.
    The README's CIFAR-100 PyramidNet-110 run uses ``alpha=0.2``; the code's defaults are
    ``k=5, alpha=1``. Works on 1-D, 2-D and 3-D inputs and on uint8 images.

    Args:
        k: number of images mixed per sample (>= 2; ``k=2`` is CutMix with boxes kept inside).
        alpha: Dirichlet concentration (> 0).
        p: probability of mixing the batch or each sample.
        mode: ``"batch"`` (one set of boxes) or ``"elem"`` (one per sample, as the code).
        num_classes: number of classes, if known.

    Example:
        >>> import torch, mixkit
        >>> out = mixkit.create("dcutmix", k=3)(torch.rand(4, 3, 16, 16), torch.tensor([0, 1, 2, 3]),
        ...                                     generator=torch.Generator().manual_seed(0))
        >>> tuple(out.params.sources.shape), round(float(out.params.weights.sum(dim=1)[0]), 12)
        ((4, 3), 1.0)
    """

    spatial_dims = (1, 2, 3)
    needs_float = False

    def __init__(
        self, *, k: int = 5, alpha: float = 1.0, p: float = 1.0, mode: str = "batch", num_classes: int | None = None
    ) -> None:
        super().__init__(p=p, mode=mode, num_classes=num_classes)
        self.k = check_positive_int(k, "k", allow_none=False)
        if self.k < 2:
            raise HyperParameterError(f"k must be >= 2 (images per mixed sample), got {k}")
        self.alpha = check_alpha(alpha)

    def sample(
        self, x: Tensor, y: Tensor | None = None, *, generator: torch.Generator | None = None
    ) -> NestedBoxParams:
        b, spatial = x.shape[0], tuple(x.shape[2:])
        n = 1 if self.mode == "batch" else b
        shares = rng.dirichlet((n,), [self.alpha] * self.k, generator=generator)
        boxes = sample_nested_boxes(shares, spatial, generator=generator)
        sources = chain_sources(b, self.k, generator=generator)
        active = self._active(b, generator)
        keep = _rows(n, active).repeat_interleave(self.k - 1)
        boxes = _empty_inactive(boxes.flatten(0, 1), keep).view(boxes.shape)
        sources = torch.where(active.unsqueeze(1), sources, torch.arange(b).unsqueeze(1))
        weights = merge_repeats(sources, nested_shares(boxes, spatial).expand(b, self.k))
        return NestedBoxParams(
            index=sources[:, 1].clone(), lam=own_weight(sources, weights), sources=sources, weights=weights, boxes=boxes
        )

    def apply(self, x: Tensor, params: NestedBoxParams) -> Tensor:
        check_params(x, params)
        check_nested(x, params.sources, params.boxes)
        return self._mix(x, params)

    def _mix(self, x: Tensor, params: NestedBoxParams) -> Tensor:
        return paste_nested(x, params.sources, params.boxes)

    def target(self, y: Tensor, params: NestedBoxParams) -> MixTarget:
        return _multi_target(y, params, self.num_classes)


#: ``CutThumbnail`` and ``KMixup`` moved to modules of their own; still importable from here.
__getattr__ = moved_names(
    __name__, {"CutThumbnail": "mixkit.methods.cut_thumbnail", "KMixup": "mixkit.methods.k_mixup"}
)
