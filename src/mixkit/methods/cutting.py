"""Cutting-based mixing: a region of the partner replaces the same region of the sample.

Papers and reference code:
    * Yun et al., "CutMix: Regularization Strategy to Train Strong Classifiers with
      Localizable Features", ICCV 2019 (github.com/clovaai/CutMix-PyTorch).
    * Qin et al., "ResizeMix: Mixing Data with Preserved Object Information and True
      Labels", arXiv 2012.11101, 2020 (no official code; OpenMixup ``augments/resizemix.py``).
    * Harris et al., "FMix: Enhancing Mixed Sample Data Augmentation", arXiv 2002.12047, 2020
      (github.com/ecs-vlc/FMix).

Every method here reports, per sample, the lambda its mask realised: the share of the
sample that was kept.
"""

from __future__ import annotations

import math

from collections.abc import Sequence

import torch
from torch import Tensor

from mixkit import rng
from mixkit.base import MixMethod
from mixkit.errors import DTypeError, HyperParameterError
from mixkit.functional.blend import mask_blend
from mixkit.functional.box_sampling import box_tensor, one_cut_row, row_fraction
from mixkit.functional.boxes import box_fraction, one_box_fraction, paste_boxes, paste_boxes_, sample_cut_boxes
from mixkit.functional.resized_paste import paste_resized
from mixkit.functional.fourier import binarise_mask, fmix_counts, fourier_noise, top_count_mask
from mixkit.functional.masks import row_sums64
from mixkit.registry import register
from mixkit.types import BoxParams, MaskParams, ResizeParams
from mixkit.validation import check_alpha, check_flag, check_range

__all__ = ["CutMix", "ResizeMix", "FMix"]

_SPATIAL = (1, 2, 3)


def _empty_inactive(boxes: Tensor, active: Tensor) -> Tensor:
    """Collapse the boxes of inactive samples to nothing (end = start)."""
    if bool(active.all()):
        return boxes
    d = boxes.shape[1] // 2
    ends = torch.where(active.unsqueeze(1), boxes[:, d:], boxes[:, :d])
    return torch.cat([boxes[:, :d], ends], dim=1)


def _mask_rows(active: Tensor, mode: str) -> Tensor:
    return active[:1] if mode == "batch" else active


def _active_of(active: Tensor, wanted: Tensor | None) -> Tensor:
    return active if wanted is None else active & wanted


def _all_rows(drawn: Tensor, wanted: Tensor | None, fill: float | bool | int) -> Tensor:
    """``drawn`` (one row per True of ``wanted``) spread over all rows, ``fill`` elsewhere."""
    if wanted is None:
        return drawn
    out = drawn.new_full((wanted.shape[0],) + tuple(drawn.shape[1:]), fill)
    out[wanted] = drawn
    return out


@register(
    "cutmix",
    family="cutting",
    paper="CutMix: Regularization Strategy to Train Strong Classifiers with Localizable Features",
    authors="Yun et al.",
    venue="ICCV 2019",
    year=2019,
    code="https://github.com/clovaai/CutMix-PyTorch",
    sources=2,
    summary="A box of the partner pasted over the sample; label weight = kept area.",
)
class CutMix(MixMethod):
    """CutMix: paste a box of ``x[perm]`` into ``x``; lambda = the area of ``x`` kept.

    As the reference code: ``lam ~ Beta(alpha, alpha)``, box side ``floor(size * sqrt(1 -
    lam))`` per dim (``(1 - lam)^(1/d)`` for ``d`` spatial dims), centre uniform, box clipped
    to the image; the label weight is recomputed from the clipped box, per sample. Pairing: a
    random permutation. Works on 1-D, 2-D and 3-D inputs and on uint8 images. The paper
    applies it with probability 0.5 on CIFAR (``p=0.5``) and 1 on ImageNet.

    Args:
        alpha: Beta concentration (> 0).
        p: probability of mixing the batch or each sample.
        mode: ``"batch"`` (one box) or ``"elem"`` (one lambda and box per sample).
        num_classes: number of classes, if known.
        inplace: paste into ``x`` (which must not require grad) instead of a copy of it: one
            box copies only the box; boxes per sample gather the partners into a buffer
            reused across calls (:func:`mixkit.functional.gather_rows_scratch`).

    Example:
        >>> import torch, mixkit
        >>> out = mixkit.CutMix()(torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 3]),
        ...                       generator=torch.Generator().manual_seed(0))
        >>> box = out.params.boxes[0]
        >>> area = float((box[2] - box[0]) * (box[3] - box[1])) / (32 * 32)
        >>> abs(float(out.params.lam[0]) - (1 - area)) < 1e-12
        True
    """

    spatial_dims = _SPATIAL
    needs_float = False

    def __init__(
        self, *, alpha: float = 1.0, p: float = 1.0, mode: str = "batch", num_classes: int | None = None,
        inplace: bool = False,
    ) -> None:
        super().__init__(p=p, mode=mode, num_classes=num_classes)
        self.alpha = check_alpha(alpha)
        self.inplace = check_flag(inplace, "inplace")

    def sample(self, x: Tensor, y: Tensor | None = None, *, generator: torch.Generator | None = None) -> BoxParams:
        b, spatial = x.shape[0], tuple(x.shape[2:])
        index = rng.randperm(b, generator=generator)
        n = 1 if self.mode == "batch" else b
        lam = rng.beta((n,), self.alpha, self.alpha, generator=generator)
        if n == 1 and self.p >= 1.0:  # one box, every row mixed: the box kept as a list until the end
            row = one_cut_row(lam.item(), spatial, generator)
            value = 1.0 - row_fraction(row, spatial)
            lam = torch.full((b,), value, dtype=torch.float64)
            return BoxParams(index=index, lam=lam, boxes=box_tensor(row)).with_lam_value(value)
        boxes = sample_cut_boxes(lam, spatial, generator=generator)
        if self.p < 1.0:  # the per-row switch (at p = 1 every row is mixed)
            active = self._active(b, generator)
            boxes = _empty_inactive(boxes, _mask_rows(active, self.mode))
            index = self._partner(index, active)
        if n > 1:
            return BoxParams(index=index, lam=torch.rsub(box_fraction(boxes, spatial), 1.0), boxes=boxes)
        value = 1.0 - one_box_fraction(boxes, spatial)  # one box: every row keeps the same share
        lam = torch.full((b,), value, dtype=torch.float64)
        return BoxParams(index=index, lam=lam, boxes=boxes).with_lam_value(value)

    def _mix(self, x: Tensor, params: BoxParams) -> Tensor:
        return paste_boxes(x, params.index, params.boxes)

    def _mix_(self, x: Tensor, params: BoxParams) -> Tensor:
        return paste_boxes_(x, params.index, params.boxes)


@register(
    "resizemix",
    family="cutting",
    paper="ResizeMix: Mixing Data with Preserved Object Information and True Labels",
    authors="Qin et al.",
    venue="arXiv 2012.11101",
    year=2020,
    code="https://github.com/Westlake-AI/openmixup/blob/main/openmixup/models/augments/resizemix.py",
    sources=2,
    summary="The whole partner, shrunk by tau ~ U(0.1, 0.8), pasted at a random place; label weight = kept area.",
)
class ResizeMix(MixMethod):
    """ResizeMix: shrink the partner ``x[perm]`` by ``tau ~ U(scale)`` and paste it into ``x``.

    The patch has side ``max(1, floor(size * tau))`` per dim and lies wholly inside the image
    at a uniform position; lambda (the weight of ``x``) is the kept area ``1 - |patch| / |x|``
    (about ``1 - tau^2``), per sample. Resizing is (bi/tri)linear without antialiasing, as
    ``F.interpolate`` does (OpenMixup resizes with nearest). Pairing: a random permutation.

    Args:
        scale: ``(low, high)`` range of the scale rate tau, within (0, 1]; the paper's (0.1, 0.8).
        p: probability of mixing the batch or each sample.
        mode: ``"batch"`` (one patch size and place) or ``"elem"`` (one per sample).
        num_classes: number of classes, if known.

    Example:
        >>> import torch, mixkit
        >>> out = mixkit.ResizeMix()(torch.rand(2, 3, 32, 32), torch.tensor([0, 1]),
        ...                          generator=torch.Generator().manual_seed(0))
        >>> 1 - 0.8 ** 2 <= float(out.params.lam[0]) <= 1 - 0.1 ** 2
        True
    """

    spatial_dims = _SPATIAL
    needs_float = False

    def __init__(
        self,
        *,
        scale: Sequence[float] = (0.1, 0.8),
        p: float = 1.0,
        mode: str = "batch",
        num_classes: int | None = None,
    ) -> None:
        super().__init__(p=p, mode=mode, num_classes=num_classes)
        if isinstance(scale, (str, bytes)) or not isinstance(scale, Sequence) or len(scale) != 2:
            raise HyperParameterError(f"scale must be a pair (low, high) with 0 < low <= high <= 1, got {scale!r}")
        low = check_range(scale[0], 0.0, 1.0, "scale[0]")
        high = check_range(scale[1], low, 1.0, "scale[1]")
        if low <= 0:
            raise HyperParameterError(f"scale[0] must be > 0, got {low}")
        self.scale = (low, high)

    def sample(self, x: Tensor, y: Tensor | None = None, *, generator: torch.Generator | None = None) -> ResizeParams:
        b, spatial = x.shape[0], tuple(x.shape[2:])
        index = rng.randperm(b, generator=generator)
        n = 1 if self.mode == "batch" else b
        tau = rng.uniform((n,), *self.scale, generator=generator)
        if n == 1:
            return self._sample_one(b, spatial, index, float(tau), generator)
        starts, ends = [], []
        for size in spatial:
            side = torch.floor(size * tau).long().clamp(1, size)
            start = torch.floor(rng.uniform((n,), generator=generator) * (size - side + 1)).long()
            starts.append(start)
            ends.append(start + side)
        active = self._active(b, generator)
        boxes = _empty_inactive(torch.stack(starts + ends, dim=1), _mask_rows(active, self.mode))
        kept = (1.0 - box_fraction(boxes, spatial)).expand(b).clone()
        return ResizeParams(index=self._partner(index, active), lam=kept, boxes=boxes)

    def _sample_one(
        self, b: int, spatial: tuple[int, ...], index: Tensor, tau: float, generator: torch.Generator | None
    ) -> ResizeParams:
        """:meth:`sample` with one box for the batch, in Python scalars (same draws and values)."""
        starts, ends = [], []
        for size in spatial:
            side = min(max(math.floor(size * tau), 1), size)
            start = math.floor(float(rng.uniform((1,), generator=generator)) * (size - side + 1))
            starts.append(start)
            ends.append(start + side)
        active = self._active(b, generator)
        boxes = _empty_inactive(torch.tensor([starts + ends], dtype=torch.long), active[:1])
        value = 1.0 - one_box_fraction(boxes, spatial)
        lam = torch.full((b,), value, dtype=torch.float64)
        return ResizeParams(index=self._partner(index, active), lam=lam, boxes=boxes).with_lam_value(value)

    def _mix(self, x: Tensor, params: ResizeParams) -> Tensor:
        return paste_resized(x, params.index, params.boxes)


@register(
    "fmix",
    family="cutting",
    paper="FMix: Enhancing Mixed Sample Data Augmentation",
    authors="Harris et al.",
    venue="arXiv 2002.12047",
    year=2020,
    code="https://github.com/ecs-vlc/FMix",
    sources=2,
    summary="A binary mask from thresholded low-frequency Fourier noise holding exactly lam of the pixels.",
)
class FMix(MixMethod):
    """FMix: mix with a mask cut from low-frequency Fourier noise.

    ``lam ~ Beta(alpha, alpha)`` (``Beta(alpha + 1, alpha)`` with ``reformulate=True``); the
    grey image of :func:`mixkit.functional.fourier_noise` (decay power delta) keeps its
    ``ceil`` or ``floor(lam * N)`` brightest pixels (:func:`mixkit.functional.binarise_mask`);
    mask 1 keeps ``x``, 0 takes ``x[perm]``, and lambda is the mask's realised mean. Pairing:
    a random permutation. Works on 1-D, 2-D and 3-D inputs; binary masks (``max_soft=0``,
    the paper's default) also on uint8 images.

    Args:
        alpha: Beta concentration (> 0).
        decay_power: the spectrum's decay exponent delta (the paper's 3).
        max_soft: soft-edge half-width as a share of the pixels (0: binary mask).
        reformulate: draw lambda from Beta(alpha + 1, alpha), the paper's reformulation.
        p: probability of mixing the batch or each sample.
        mode: ``"batch"`` (one mask) or ``"elem"`` (one mask per sample).
        num_classes: number of classes, if known.

    Example:
        >>> import torch, mixkit
        >>> out = mixkit.FMix()(torch.rand(2, 3, 32, 32), torch.tensor([0, 1]),
        ...                     generator=torch.Generator().manual_seed(0))
        >>> abs(float(out.params.mask.float().mean()) - float(out.params.lam[0])) < 1e-9
        True
    """

    spatial_dims = _SPATIAL
    needs_float = False

    def __init__(
        self,
        *,
        alpha: float = 1.0,
        decay_power: float = 3.0,
        max_soft: float = 0.0,
        reformulate: bool = False,
        p: float = 1.0,
        mode: str = "batch",
        num_classes: int | None = None,
    ) -> None:
        super().__init__(p=p, mode=mode, num_classes=num_classes)
        self.alpha = check_alpha(alpha)
        self.decay_power = check_range(decay_power, 0.0, 1e3, "decay_power")
        self.max_soft = check_range(max_soft, 0.0, 0.5, "max_soft")
        self.reformulate = bool(reformulate)

    def check(self, x: Tensor, y: Tensor) -> None:
        super().check(x, y)
        if self.max_soft > 0 and not x.is_floating_point():
            raise DTypeError(f"x must be floating point when max_soft > 0 (soft masks blend), got {x.dtype}")

    def sample(self, x: Tensor, y: Tensor | None = None, *, generator: torch.Generator | None = None) -> MaskParams:
        return self._draw(x, None, generator)

    def _sample_rows(self, x: Tensor, y: Tensor | None, rows: Tensor, *, generator: torch.Generator | None = None) -> MaskParams:
        """Per-sample mode: noise and masks only for the samples where ``rows`` is True; the
        others come back unmixed (partner itself, lambda 1). The permutation and the lambdas
        are drawn for every sample, as by :meth:`sample` (which a subclass that overrides it
        gets instead)."""
        if self.mode == "batch" or bool(rows.all()) or type(self).sample is not FMix.sample:
            return self.sample(x, y, generator=generator)
        if not bool(rows.any()):  # no sample to mix: no draws
            b = x.shape[0]
            mask = torch.ones((b, 1) + tuple(x.shape[2:]), dtype=torch.float32 if self.max_soft > 0 else torch.bool)
            return MaskParams(index=torch.arange(b), lam=torch.ones(b, dtype=torch.float64), mask=mask)
        return self._draw(x, rows.to(device="cpu", dtype=torch.bool), generator)

    def _draw(self, x: Tensor, wanted: Tensor | None, generator: torch.Generator | None) -> MaskParams:
        """:meth:`sample`, with noise only for the ``wanted`` rows (all rows if ``None``)."""
        b, spatial = x.shape[0], tuple(x.shape[2:])
        index = rng.randperm(b, generator=generator)
        n = 1 if self.mode == "batch" else b
        a = self.alpha + 1.0 if self.reformulate else self.alpha
        lam = rng.beta((n,), a, self.alpha, generator=generator)
        drawn = lam if wanted is None else lam[wanted]
        # float32 noise: the reference construction up to rounding, three times faster
        noise = fourier_noise(
            drawn.shape[0], spatial, self.decay_power, generator=generator, dtype=torch.float32,
            normalise=self.max_soft > 0,
        )  # only the ranking of a hard mask's pixels matters: no normalisation
        shape = (n,) + (1,) * len(spatial)
        if self.max_soft > 0:
            mask = _all_rows(binarise_mask(noise, drawn, max_soft=self.max_soft, generator=generator), wanted, 1.0)
            active = _active_of(self._active(b, generator), wanted)
            rows = _mask_rows(active, self.mode)
            mask = torch.where(rows.view(shape), mask, 1.0).unsqueeze(1).float()
            kept = row_sums64(mask) / mask[0].numel()
        else:  # a hard mask: the top pixels as bool; its mean is known exactly from the counts
            total = noise[0].numel()
            num = fmix_counts(drawn, total, generator=generator)
            mask = _all_rows(top_count_mask(noise.view(-1, total), num).view(noise.shape), wanted, True)
            num = _all_rows(num, wanted, total)
            active = _active_of(self._active(b, generator), wanted)
            rows = _mask_rows(active, self.mode)
            mask = (mask | ~rows.view(shape)).unsqueeze(1)
            kept = torch.where(rows, num.to(torch.float64) / total, 1.0)
        return MaskParams(index=self._partner(index, active), lam=kept.expand(b).clone(), mask=mask)

    def _mix(self, x: Tensor, params: MaskParams) -> Tensor:
        return mask_blend(x, params.index, params.mask)
