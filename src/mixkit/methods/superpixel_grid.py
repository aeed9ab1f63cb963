"""SuperpixelGridMasks: superpixels of the image cut, averaged, or taken from another image.

Paper: Hammoudi, Cabani, Slika, Benhabiles, Dornaika, Melkemi, "SuperpixelGridCut,
SuperpixelGridMean and SuperpixelGridMix Data Augmentation", arXiv 2204.08458, 2022 (journal
version: "SuperpixelGridMasks Data Augmentation: Application to Precision Health and Other
Real-world Data", J. Healthcare Informatics Research 6(4), 2022). Reference code:
github.com/hammoudiproject/SuperpixelGridMasks, whose README shows examples and results for
``q`` superpixels and a ratio ``r`` of them (e.g. ``q=100, r=0.4``; example files
``SEG100P0.4M0`` for Cut, ``...M1`` for Mean) but, at the version read, announces the code
without publishing it. The paper's text could
not be read either, so the procedure below is the one its abstract, figures and README
describe, with SLIC as in scikit-image (what the authors' later superpixel mixing code,
LGCOAMix, github.com/DanielaPlusPlus/LGCOAMix, calls):

1. decompose the image into about ``q`` superpixels with SLIC
   (:func:`mixkit.functional.superpixels.slic_labels`, computed in torch on the batch);
2. pick ``round(r * n)`` of its ``n`` superpixels at random;
3. Cut: set them to black; Mean: fill each with its mean colour; Mix: fill them with the
   pixels of a second image at the same places.

Cut and Mean keep the label (``lam = 1``); Mix's label weight is the realised share of the
image's own pixels, per sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mixkit import rng
from mixkit._device import upload
from mixkit.base import MixMethod
from mixkit.errors import HyperParameterError, ShapeError
from mixkit.functional.blend import mask_blend, match_format, select_by_mask
from mixkit.functional.layout import affine_into
from mixkit.functional.masks import row_sums64
from mixkit.functional.superpixels import (
    paint_segments,
    segment_counts,
    segment_means,
    select_segments,
    slic_grid,
    slic_labels,
)
from mixkit.registry import register
from mixkit.types import MaskParams, MixTarget, Params
from mixkit.validation import check_choice, check_range

__all__ = ["SuperpixelGridCut", "SuperpixelGridMean", "SuperpixelGridMix", "SuperpixelParams"]

_PAPER = "SuperpixelGridCut, SuperpixelGridMean and SuperpixelGridMix Data Augmentation"
_AUTHORS = "Hammoudi et al."
_CODE = "https://github.com/hammoudiproject/SuperpixelGridMasks"


@dataclass(frozen=True, eq=False, kw_only=True)
class SuperpixelParams(MaskParams):
    """Params of the SuperpixelGrid methods: the superpixels and the ones picked.

    Attributes:
        mask: ``(B, 1, H, W)`` bool, False on the picked superpixels (cut, averaged or taken
            from the partner), True where the image keeps its own pixels.
        segments: ``(B, H, W)`` int64 superpixel labels, ``0..n_b-1`` per image (all 0 for an
            image left alone), on the input's device.
        selected: ``(B, K)`` bool, which superpixel labels were picked.
    """

    segments: Tensor
    selected: Tensor


def _check_iterations(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise HyperParameterError(f"iterations must be an integer >= 0, got {value!r}")
    return value


class _SuperpixelGrid(MixMethod):
    """Shared options and the draw: SLIC superpixels, then ``round(ratio * n)`` picked."""

    spatial_dims = (2,)

    def __init__(
        self,
        *,
        n_segments: int = 100,
        ratio: float = 0.2,
        compactness: float = 10.0,
        iterations: int = 10,
        p: float = 1.0,
        mode: str = "batch",
        num_classes: int | None = None,
    ) -> None:
        super().__init__(p=p, mode=mode, num_classes=num_classes)
        slic_grid(n_segments, 1, 1)  # validates n_segments
        self.n_segments = n_segments
        self.ratio = check_range(ratio, 0.0, 1.0, "ratio")
        self.compactness = check_range(compactness, 1e-6, 1e6, "compactness")
        self.iterations = _check_iterations(iterations)

    def _pixels(self, x: Tensor) -> Tensor:
        """``x`` as float32 pixels in [0, 1] for the segmentation (integers read as 8-bit)."""
        if not x.is_floating_point():
            return x.to(torch.float32) / 255.0
        x = x.detach().to(torch.float32)  # the segmentation is not differentiable
        stats = self._stats(x)
        if stats is None:
            return x
        # written contiguous: the segmentation reads colour planes (see affine_into)
        return affine_into(torch.empty(x.shape, dtype=torch.float32, device=x.device), x, stats[1], stats[0])

    def _segments(self, x: Tensor, rows: Tensor) -> Tensor:
        """``(B, H, W)`` SLIC labels of the images in ``rows`` (0 elsewhere)."""
        b, _, h, w = x.shape
        rows = rows.cpu()  # tested on the host: no wait for a device
        if bool(rows.all()):
            return self._slic(x)
        segments = torch.zeros(b, h, w, dtype=torch.long, device=x.device)
        if bool(rows.any()):
            picked = upload(rows.nonzero().flatten(), x.device)
            segments.index_copy_(0, picked, self._slic(x.index_select(0, picked)))
        return segments

    def _slic(self, x: Tensor) -> Tensor:
        """``(B, H, W)`` SLIC labels of ``x``, read as pixels."""
        return slic_labels(self._pixels(x), self.n_segments, compactness=self.compactness, iterations=self.iterations)

    def _draw(self, x: Tensor, active: Tensor, generator: torch.Generator | None) -> tuple[Tensor, Tensor, Tensor]:
        """Segment ``x`` where ``active`` and pick superpixels: ``(segments, selected, mask)``.

        The random keys are one row for the batch (``"batch"``: the same superpixel indices,
        i.e. about the same grid cells, in every image) or one row per sample (``"elem"``).
        """
        b, _, h, w = x.shape
        gy, gx = slic_grid(self.n_segments, h, w)[:2]
        keys = rng.uniform((1 if self.mode == "batch" else b, gy * gx), generator=generator)
        segments = self._segments(x, active)
        selected = select_segments(segment_counts(segments), self.ratio, upload(keys, x.device))
        selected &= upload(active, x.device).unsqueeze(1)
        return segments, selected, (~selected).gather(1, segments.flatten(1)).view(b, 1, h, w)


class _LabelPreserving(_SuperpixelGrid):
    """Cut and Mean: the image changes, its label does not (one source, ``lam = 1``)."""

    identity_at_full_lambda = False

    def sample(self, x: Tensor, y: Tensor | None = None, *, generator: torch.Generator | None = None) -> SuperpixelParams:
        b = x.shape[0]
        active = self._active(b, generator)
        segments, selected, mask = self._draw(x, active, generator)
        return SuperpixelParams(
            index=torch.arange(b), lam=torch.ones(b, dtype=torch.float64), mask=mask, segments=segments, selected=selected
        )

    def target(self, y: Tensor, params: Params) -> MixTarget:
        return MixTarget.unmixed(y, self.num_classes)


@register(
    "superpixel_gridcut",
    family="cutting",
    paper=_PAPER,
    authors=_AUTHORS,
    venue="arXiv 2204.08458",
    year=2022,
    code=_CODE,
    sources=1,
    summary="A share r of the image's SLIC superpixels set to black; the label is kept.",
)
class SuperpixelGridCut(_LabelPreserving):
    """SuperpixelGridCut: black out ``round(r * n)`` of the image's ``n`` SLIC superpixels.

    The superpixels come from :func:`mixkit.functional.superpixels.slic_labels` (about
    ``n_segments`` of them, the paper's ``q``), the picked ones are a uniform random subset of
    size ``round(ratio * n)`` (the paper's ``r``). "Black" is 0 in pixel space, as the
    paper's pictures show: with :meth:`set_input_normalization` the cut pixels get
    ``(0 - mean) / std``, not 0 in normalised units. The label is kept (one source, weight
    1). Defaults ``q = 100, r = 0.2``: the reference README's best Cut setting (PASCAL VOC,
    VGG19) and its figures' ``r``; SLIC's compactness and iterations as scikit-image's.
    ``"batch"`` draws one set of keys (the same superpixel indices are picked in every
    image, each image keeping its own superpixels) and one decision under ``p``; ``"elem"``
    one of each per sample. Works on uint8 images (values are copied or zeroed).

    Args:
        n_segments: about how many superpixels (``q``).
        ratio: the share of superpixels cut (``r``), in [0, 1].
        compactness: SLIC's spatial weight (higher: more regular superpixels).
        iterations: SLIC iterations.
        p: probability of augmenting the batch or each sample.
        mode: ``"batch"`` or ``"elem"``.
        num_classes: number of classes, if known.

    Example:
        >>> import torch, mixkit
        >>> x = torch.rand(2, 3, 32, 32)
        >>> out = mixkit.create("superpixel_gridcut")(x, torch.tensor([0, 1]),
        ...                                           generator=torch.Generator().manual_seed(0))
        >>> cut = ~out.params.mask.expand_as(x)
        >>> bool((out.x[cut] == 0).all()), bool(torch.equal(out.x[~cut], x[~cut])), out.target.k
        (True, True, 1)
    """

    needs_float = False

    def _mix(self, x: Tensor, params: MaskParams) -> Tensor:
        mask = upload(params.mask, x.device)
        if mask.device.type == "cpu" and bool(mask.all()):  # (on a device: no wait for the test)
            return x.clone()
        black = torch.zeros((1, x.shape[1], 1, 1), dtype=x.dtype, device=x.device)
        if x.is_floating_point():
            black = self._from_pixels(black)
        if not x.is_floating_point():
            return match_format(torch.where(mask, x, black), x)
        return select_by_mask(x, black, mask)  # a 0/1 lerp: the same values (finite x), faster


@register(
    "superpixel_gridmean",
    family="cutting",
    paper=_PAPER,
    authors=_AUTHORS,
    venue="arXiv 2204.08458",
    year=2022,
    code=_CODE,
    sources=1,
    summary="A share r of the image's SLIC superpixels filled with their mean colour; the label is kept.",
)
class SuperpixelGridMean(_LabelPreserving):
    """SuperpixelGridMean: fill ``round(r * n)`` of the ``n`` SLIC superpixels with their mean.

    Superpixels and the pick as :class:`SuperpixelGridCut`; each picked superpixel takes the
    mean colour of its pixels (per channel, computed by scatter-add in float64 and cast
    back). The mean is linear, so averaging the normalised input equals normalising the
    pixel-space mean: no conversion is needed. The label is kept (one source, weight 1).
    Defaults ``q = 100, r = 0.2`` as Cut and Mix (the README's best Mean setting was ``q =
    1000, r = 0.4`` on PASCAL VOC images; at 32 x 32 that makes one-pixel superpixels, whose
    mean is the pixel itself).

    Args:
        n_segments: about how many superpixels (``q``).
        ratio: the share of superpixels averaged (``r``), in [0, 1].
        compactness: SLIC's spatial weight (higher: more regular superpixels).
        iterations: SLIC iterations.
        p: probability of augmenting the batch or each sample.
        mode: ``"batch"`` or ``"elem"``.
        num_classes: number of classes, if known.

    Example:
        >>> import torch, mixkit
        >>> x = torch.rand(2, 3, 32, 32)
        >>> out = mixkit.create("superpixel_gridmean")(x, torch.tensor([0, 1]),
        ...                                            generator=torch.Generator().manual_seed(0))
        >>> seg, pick = out.params.segments[0], out.params.selected[0].nonzero()[0, 0]
        >>> inside = seg == pick
        >>> bool(torch.allclose(out.x[0][:, inside], x[0][:, inside].mean(1, keepdim=True)))
        True
    """

    def _mix(self, x: Tensor, params: SuperpixelParams) -> Tensor:
        mask = upload(params.mask, x.device)
        if mask.device.type == "cpu" and bool(mask.all()):  # (on a device: no wait for the test)
            return x.clone()
        if params.segments.shape != (x.shape[0],) + tuple(x.shape[2:]):
            raise ShapeError(f"segments of shape {tuple(params.segments.shape)} do not fit x of shape {tuple(x.shape)}")
        means = segment_means(x, upload(params.segments, x.device), params.selected.shape[1])
        painted = paint_segments(means.to(x.dtype), params.segments)
        if not x.is_floating_point():
            return match_format(torch.where(mask, x, painted), x)
        return select_by_mask(x, painted, mask)  # a 0/1 lerp: the same values (finite x), faster


@register(
    "superpixel_gridmix",
    family="cutting",
    paper=_PAPER,
    authors=_AUTHORS,
    venue="arXiv 2204.08458",
    year=2022,
    code=_CODE,
    sources=2,
    summary="A share r of the image's SLIC superpixels taken from a partner image; label weight = realised pixel share.",
)
class SuperpixelGridMix(_SuperpixelGrid):
    """SuperpixelGridMix: ``round(r * n)`` of the ``n`` SLIC superpixels show the partner.

    Superpixels and the pick as :class:`SuperpixelGridCut`, computed on the sample itself
    (``segment_on="sample"``, our reading of the paper: one decomposition of image 1 for the
    three variants) or on the partner whose superpixels are pasted (``"partner"``, as the
    authors' later LGCOAMix code); the picked superpixels take the partner's pixels at the
    same places. ``x~ = M * x + (1 - M) * x[perm]`` with ``M`` the kept pixels, and lambda
    (the weight of ``x``'s label) is the realised share ``mean(M)``, per sample; it varies
    with the superpixels' sizes around ``1 - r``, and there is no lambda distribution to
    draw (``fixed_lambda``). Pairing: a random permutation. Defaults ``q = 100, r = 0.2``
    (the README's best Mix setting). Works on uint8 images.

    Args:
        n_segments: about how many superpixels (``q``).
        ratio: the share of superpixels taken from the partner (``r``), in [0, 1].
        compactness: SLIC's spatial weight (higher: more regular superpixels).
        iterations: SLIC iterations.
        segment_on: ``"sample"`` or ``"partner"``: whose superpixels are cut.
        p: probability of mixing the batch or each sample.
        mode: ``"batch"`` or ``"elem"``.
        num_classes: number of classes, if known.

    Example:
        >>> import torch, mixkit
        >>> out = mixkit.create("superpixel_gridmix")(torch.rand(2, 3, 32, 32), torch.tensor([0, 1]),
        ...                                           generator=torch.Generator().manual_seed(0))
        >>> m = out.params.mask
        >>> bool(torch.equal(m.flatten(1).double().mean(1), out.params.lam))
        True
    """

    fixed_lambda = True
    needs_float = False

    def __init__(
        self,
        *,
        n_segments: int = 100,
        ratio: float = 0.2,
        compactness: float = 10.0,
        iterations: int = 10,
        segment_on: str = "sample",
        p: float = 1.0,
        mode: str = "batch",
        num_classes: int | None = None,
    ) -> None:
        super().__init__(
            n_segments=n_segments, ratio=ratio, compactness=compactness, iterations=iterations,
            p=p, mode=mode, num_classes=num_classes,
        )
        self.segment_on = check_choice(segment_on, ("sample", "partner"), "segment_on")

    def sample(self, x: Tensor, y: Tensor | None = None, *, generator: torch.Generator | None = None) -> SuperpixelParams:
        b = x.shape[0]
        index = rng.randperm(b, generator=generator)
        active = self._active(b, generator)
        index = self._partner(index, active)
        source = x if self.segment_on == "sample" else x.index_select(0, upload(index, x.device))
        segments, selected, mask = self._draw(source, active, generator)
        lam = row_sums64(mask).cpu() / mask[0].numel()
        return SuperpixelParams(index=index, lam=lam, mask=mask, segments=segments, selected=selected)

    def _mix(self, x: Tensor, params: MaskParams) -> Tensor:
        return mask_blend(x, params.index, params.mask)
