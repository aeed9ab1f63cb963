"""Cutting-based mixing with shaped masks: soft edges, Gaussians and hybrids (grids: :mod:`mixkit.methods.gridmix`).

Papers and reference code:
    * Lee, Zaheer, Astrid, Lee, "SmoothMix: a Simple Yet Effective Data Augmentation to Train
      Robust Classifiers", CVPR-W 2020 (no official code; OpenMixup ``augments/smoothmix.py``).
    * Park, Yun, Chun, "A Unified Analysis of Mixed Sample Data Augmentation: A Loss Function
      Perspective", NeurIPS 2022 (github.com/naver-ai/hmix-gmix, ``mixup.py``).

Every method here reports, per sample, the lambda its mask or cut realised.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from mixkit import rng
from mixkit._moved import moved_names
from mixkit.base import MixMethod
from mixkit.errors import HyperParameterError
from mixkit.functional.blend import mask_blend
from mixkit.functional.boxes import box_fraction, sample_cut_boxes
from mixkit.functional.masks import (
    gaussian_blob,
    hybrid_blend,
    row_sums64,
    soft_box_mask,
)
from mixkit.registry import register
from mixkit.types import BoxParams, MaskParams
from mixkit.validation import check_alpha, check_choice, check_range

__all__ = [
    "GMix",
    "HMix",
    "HMixParams",
    "SmoothMix",
]

_SPATIAL = (1, 2, 3)


@dataclass(frozen=True, eq=False, kw_only=True)
class HMixParams(BoxParams):
    """Params of HMix: a box of the partner, and a blend outside it.

    Attributes:
        outside: ``(B,)`` float64, the weight of the sample outside the box.
    """

    outside: Tensor


def _rows(active: Tensor, mode: str, ndim: int) -> Tensor:
    """Which mask rows are mixed, shaped to broadcast over ``(N, 1, *spatial)``."""
    rows = active[:1] if mode == "batch" else active
    return rows.view((-1,) + (1,) * (ndim - 1))


def _finish(method: MixMethod, mask: Tensor, active: Tensor, index: Tensor) -> MaskParams:
    """Unmix inactive rows, store the mask as float32 and lambda as its realised mean."""
    b = active.shape[0]
    if not bool(active.all()):  # (all active: the mask as it is, no pass over it)
        mask = torch.where(_rows(active, method.mode, mask.ndim), mask, 1.0)
    mask = mask.to(torch.float32)
    kept = (row_sums64(mask) / mask[0].numel()).expand(b).clone()
    return MaskParams(index=method._partner(index, active), lam=kept, mask=mask)


def _centres(n: int, spatial: Sequence[int], generator: torch.Generator | None) -> Tensor:
    """``(N, d)`` centres uniform over the pixels."""
    return torch.stack([rng.randint(0, s, (n,), generator=generator) for s in spatial], dim=1).double()


@register(
    "smoothmix",
    family="cutting",
    paper="SmoothMix: a Simple Yet Effective Data Augmentation to Train Robust Classifiers",
    authors="Lee et al.",
    venue="CVPR Workshops 2020",
    year=2020,
    code="https://github.com/Westlake-AI/openmixup/blob/main/openmixup/models/augments/smoothmix.py",
    sources=2,
    summary="A soft-edged (Gaussian or blurred-square) region of the partner; label weight = the mask's mean.",
)
class SmoothMix(MixMethod):
    """SmoothMix: CutMix with soft edges, ``x~ = M * x + (1 - M) * x[perm]``, lambda = mean(M).

    ``shape="circle"`` (OpenMixup's variant): the partner shows through a Gaussian blob
    ``G = exp(-|p - c|^2 / (2 sigma^2))``, ``M = 1 - G``, centre ``c`` uniform over the pixels
    and ``sigma ~ U(sigma) * H`` (the first spatial side), as the reference code. ``shape=
    "square"`` (the paper's square mask): a CutMix box (``lam ~ Beta(alpha, alpha)``, side
    ``size * sqrt(1 - lam)``, centre uniform, clipped) whose edges are blurred by a Gaussian of
    standard deviation ``edge * H``; the edge width is ours (the paper's value could not be
    checked). Either way the label weight is the mask's realised mean, per sample: the paper's
    ``lam = sum(G) / HW`` is the PARTNER's share, which OpenMixup gives to the sample instead
    (an inverted label, not copied). Pairing: a random permutation.

    Args:
        shape: ``"circle"`` (Gaussian) or ``"square"`` (soft-edged box).
        sigma: ``(low, high)`` range of the Gaussian's sigma as a share of the height (circle).
        alpha: Beta concentration of the box area (square).
        edge: blur of the square's edges as a share of the height (square).
        p: probability of mixing the batch or each sample.
        mode: ``"batch"`` (one mask) or ``"elem"`` (one mask per sample).
        num_classes: number of classes, if known.

    Example:
        >>> import torch, mixkit
        >>> out = mixkit.create("smoothmix")(torch.rand(2, 3, 32, 32), torch.tensor([0, 1]),
        ...                                  generator=torch.Generator().manual_seed(0))
        >>> abs(float(out.params.mask.double().mean()) - float(out.params.lam[0])) < 1e-12
        True
    """

    spatial_dims = _SPATIAL

    def __init__(
        self,
        *,
        shape: str = "circle",
        sigma: Sequence[float] = (0.25, 0.5),
        alpha: float = 1.0,
        edge: float = 0.05,
        p: float = 1.0,
        mode: str = "batch",
        num_classes: int | None = None,
    ) -> None:
        super().__init__(p=p, mode=mode, num_classes=num_classes)
        self.shape = check_choice(shape, ("circle", "square"), "shape")
        if isinstance(sigma, (str, bytes)) or not isinstance(sigma, Sequence) or len(sigma) != 2:
            raise HyperParameterError(f"sigma must be a pair (low, high) with 0 < low <= high, got {sigma!r}")
        low = check_range(sigma[0], 1e-6, 1e6, "sigma[0]")
        self.sigma = (low, check_range(sigma[1], low, 1e6, "sigma[1]"))
        self.alpha = check_alpha(alpha)
        self.edge = check_range(edge, 0.0, 10.0, "edge")

    def sample(self, x: Tensor, y: Tensor | None = None, *, generator: torch.Generator | None = None) -> MaskParams:
        b, spatial = x.shape[0], tuple(x.shape[2:])
        index = rng.randperm(b, generator=generator)
        n = 1 if self.mode == "batch" else b
        if self.shape == "circle":
            centres = _centres(n, spatial, generator)
            sigma = rng.uniform((n,), *self.sigma, generator=generator) * spatial[0]
            mask = 1.0 - gaussian_blob(centres, sigma, spatial)
        else:
            lam = rng.beta((n,), self.alpha, self.alpha, generator=generator)
            boxes = sample_cut_boxes(lam, spatial, generator=generator)
            mask = 1.0 - soft_box_mask(boxes, torch.full((n,), self.edge * spatial[0]), spatial)
        return _finish(self, mask, self._active(b, generator), index)

    def _mix(self, x: Tensor, params: MaskParams) -> Tensor:
        return mask_blend(x, params.index, params.mask)


@register(
    "gmix",
    family="cutting",
    paper="A Unified Analysis of Mixed Sample Data Augmentation: A Loss Function Perspective",
    authors="Park et al.",
    venue="NeurIPS 2022",
    year=2022,
    code="https://github.com/naver-ai/hmix-gmix",
    sources=2,
    summary="Gaussian Mixup: a Gaussian blob of area lam (or 1 - lam) blends the pair; label weight = the mask's mean.",
)
class GMix(MixMethod):
    """GMix: the pair blended through a Gaussian blob whose integral is the smaller share.

    As the official ``gmix_gaussian_kernel``: ``lam ~ Beta(alpha, alpha)``, ``l = min(lam, 1 -
    lam)``, centre ``c`` uniform over the pixels, ``G = exp(-pi |p - c|^2 / (l * H * W))`` (the
    code writes ``l * H^2`` for its square images; the integral of G is ``l * H * W`` either
    way); the mask of the sample is ``G`` if ``lam < 0.5`` else ``1 - G``, and lambda is the
    mask's realised mean (``lam`` up to the blob's clipping at the border), per sample.
    N-D inputs use ``exp(-pi |p - c|^2 / (l * N)^(2/d))`` for ``N`` pixels. The official code
    mixes only in batch mode; ``"elem"`` draws one blob per sample. Pairing: a random
    permutation (the code flips the batch).

    Args:
        alpha: Beta concentration (> 0).
        p: probability of mixing the batch or each sample.
        mode: ``"batch"`` (one blob) or ``"elem"`` (one blob per sample).
        num_classes: number of classes, if known.

    Example:
        >>> import torch, mixkit
        >>> out = mixkit.create("gmix")(torch.rand(2, 3, 32, 32), torch.tensor([0, 1]),
        ...                             generator=torch.Generator().manual_seed(0))
        >>> abs(float(out.params.mask.double().mean()) - float(out.params.lam[1])) < 1e-12
        True
    """

    spatial_dims = _SPATIAL

    def __init__(self, *, alpha: float = 1.0, p: float = 1.0, mode: str = "batch", num_classes: int | None = None) -> None:
        super().__init__(p=p, mode=mode, num_classes=num_classes)
        self.alpha = check_alpha(alpha)

    def sample(self, x: Tensor, y: Tensor | None = None, *, generator: torch.Generator | None = None) -> MaskParams:
        b, spatial = x.shape[0], tuple(x.shape[2:])
        index = rng.randperm(b, generator=generator)
        n = 1 if self.mode == "batch" else b
        lam = rng.beta((n,), self.alpha, self.alpha, generator=generator)
        small = torch.minimum(lam, 1.0 - lam)
        numel, d = float(torch.tensor(spatial).prod()), len(spatial)
        sigma = torch.sqrt((small * numel) ** (2.0 / d) / (2.0 * torch.pi))
        blob = gaussian_blob(_centres(n, spatial, generator), sigma, spatial)
        high = (lam >= 0.5).to(torch.float32).view((-1,) + (1,) * (d + 1))
        mask = torch.addcmul(high, blob, 1.0 - 2.0 * high, out=blob)  # blob, or 1 - blob (exact), in place
        return _finish(self, mask, self._active(b, generator), index)

    def _mix(self, x: Tensor, params: MaskParams) -> Tensor:
        return mask_blend(x, params.index, params.mask)


@register(
    "hmix",
    family="cutting",
    paper="A Unified Analysis of Mixed Sample Data Augmentation: A Loss Function Perspective",
    authors="Park et al.",
    venue="NeurIPS 2022",
    year=2022,
    code="https://github.com/naver-ai/hmix-gmix",
    sources=2,
    summary="Hybrid of Mixup and CutMix: a box of area r(1 - lam) pasted, the rest blended; label weight = lam.",
)
class HMix(MixMethod):
    """HMix: paste a box of the partner and blend the rest, so the sample keeps share lam.

    As the official ``hmix_bbox_and_lam`` and ``_mix_batch``: ``lam ~ Beta(alpha, alpha)``; a
    box of side ``floor(size * sqrt(1 - lam) * sqrt(r))`` (``(r (1 - lam))^(1/d)`` in d dims),
    centre uniform, clipped; ``lam_cut = 1 - box area``; outside the box ``x~ = lam_mix * x +
    (1 - lam_mix) * x[perm]`` with ``lam_mix = lam / lam_cut``, inside it ``x[perm]``; the
    label weight ``lam_mix * lam_cut`` is the sample's realised share (= lam). ``r = 1`` is
    close to CutMix, ``r -> 0`` is Mixup. Default ``r = 0.5`` as the paper's figures (the
    code's default is 1). The official code mixes only in batch mode; ``"elem"`` draws one
    lam and box per sample. Pairing: a random permutation (the code flips the batch).

    Args:
        alpha: Beta concentration (> 0).
        r: hybrid ratio in [0, 1]: the box covers about ``r (1 - lam)`` of the image.
        p: probability of mixing the batch or each sample.
        mode: ``"batch"`` (one lam and box) or ``"elem"`` (one per sample).
        num_classes: number of classes, if known.

    Example:
        >>> import torch, mixkit
        >>> out = mixkit.create("hmix")(torch.rand(2, 3, 32, 32), torch.tensor([0, 1]),
        ...                             generator=torch.Generator().manual_seed(0))
        >>> p = out.params
        >>> cut = 1 - float((p.boxes[0, 2:] - p.boxes[0, :2]).prod()) / 32 ** 2
        >>> abs(float(p.outside[0]) * cut - float(p.lam[0])) < 1e-12
        True
    """

    spatial_dims = _SPATIAL

    def __init__(
        self, *, alpha: float = 1.0, r: float = 0.5, p: float = 1.0, mode: str = "batch", num_classes: int | None = None
    ) -> None:
        super().__init__(p=p, mode=mode, num_classes=num_classes)
        self.alpha = check_alpha(alpha)
        self.r = check_range(r, 0.0, 1.0, "r")

    def sample(self, x: Tensor, y: Tensor | None = None, *, generator: torch.Generator | None = None) -> HMixParams:
        b, spatial = x.shape[0], tuple(x.shape[2:])
        index = rng.randperm(b, generator=generator)
        n = 1 if self.mode == "batch" else b
        lam = rng.beta((n,), self.alpha, self.alpha, generator=generator)
        boxes = sample_cut_boxes(1.0 - self.r * (1.0 - lam), spatial, generator=generator)
        active = self._active(b, generator)
        rows = active[:1] if self.mode == "batch" else active
        d = len(spatial)
        boxes = torch.cat([boxes[:, :d], torch.where(rows.unsqueeze(1), boxes[:, d:], boxes[:, :d])], dim=1)
        lam = torch.where(rows, lam, 1.0)
        cut = 1.0 - box_fraction(boxes, spatial)
        outside = torch.where(cut > 0, lam / cut.clamp_min(1e-300), 1.0).clamp(0.0, 1.0)
        kept = (outside * cut).expand(b).clone()
        return HMixParams(index=self._partner(index, active), lam=kept, boxes=boxes, outside=outside.expand(b).clone())

    def _mix(self, x: Tensor, params: HMixParams) -> Tensor:
        return hybrid_blend(x, params.index, params.boxes, params.outside)


#: ``GridMix`` and ``GridParams`` moved to :mod:`mixkit.methods.gridmix`; still importable from here.
__getattr__ = moved_names(__name__, dict.fromkeys(("GridMix", "GridParams"), "mixkit.methods.gridmix"))
