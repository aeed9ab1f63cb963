"""Cut-Thumbnail: a shrunk copy of the partner (or of the sample) pasted at a random place.

Paper and reference code:
    * Xie et al., "Cut-Thumbnail: A Novel Data Augmentation for Convolutional Neural Network",
      ACM MM 2021 (github.com/TianshuXie/Cut-Thumbnail).
"""

from __future__ import annotations

import torch
from torch import Tensor

from mixkit import rng
from mixkit.base import MixMethod
from mixkit.errors import HyperParameterError
from mixkit.functional.boxes import box_fraction
from mixkit.functional.multi import paste_thumbnails
from mixkit.methods.cutting import _empty_inactive
from mixkit.methods.multi import _rows
from mixkit.registry import register
from mixkit.types import BoxParams, MixOutput
from mixkit.validation import check_choice, check_range

__all__ = ["CutThumbnail"]


@register(
    "cut_thumbnail",
    family="multi",
    paper="Cut-Thumbnail: A Novel Data Augmentation for Convolutional Neural Network",
    authors="Xie et al.",
    venue="ACM MM 2021",
    year=2021,
    code="https://github.com/TianshuXie/Cut-Thumbnail",
    sources=2,
    summary="A shrunk copy (thumbnail) of the partner, or of the sample itself, pasted at a random place.",
)
class CutThumbnail(MixMethod):
    """Cut-Thumbnail: paste a thumbnail (the whole image, shrunk) over a random region.

    As the reference code (``train.py``): the thumbnail has side ``round(size * side)`` per
    dim (112 of 224 for ImageNet, ``size=0.5``) and lies wholly inside the image at a uniform
    position, one position per batch. ``variant="mixed"`` (mixed single thumbnail, MST, the
    paper's best) pastes the thumbnail of a partner ``x[perm]`` and gives it the label weight
    ``thumbnail_weight`` (the code's ``--lam 0.25``; ``None``: the thumbnail's realised area
    share, which is 0.25 at ``size=0.5``), so ``lam = 1 - weight``, the same for every mixed
    sample. ``variant="self"`` (self thumbnail, ST) pastes the sample's own thumbnail and
    keeps its label (``lam = 1``). The README's runs apply it to a batch with probability
    ``participation_rate`` 0.8 (pass ``p=0.8``; the default 1 mixes every batch). Resizing is
    (bi/tri)linear without antialiasing, as ResizeMix here (the code calls ``F.interpolate``
    with its default, nearest). Works on 1-D, 2-D and 3-D inputs and on uint8 images.

    Args:
        variant: ``"mixed"`` or ``"self"``.
        size: thumbnail side as a share of the image side, in (0, 1].
        thumbnail_weight: label weight of the thumbnail's source in [0, 1] (``"mixed"``);
            ``None`` uses its area share.
        p: probability of mixing the batch or each sample.
        mode: ``"batch"`` (one position) or ``"elem"`` (one position per sample).
        num_classes: number of classes, if known.

    Example:
        >>> import torch, mixkit
        >>> out = mixkit.create("cut_thumbnail", p=1.0)(torch.rand(2, 3, 32, 32), torch.tensor([0, 1]),
        ...                                             generator=torch.Generator().manual_seed(0))
        >>> out.params.boxes[0, 2:] - out.params.boxes[0, :2], float(out.params.lam[0])
        (tensor([16, 16]), 0.75)
    """

    spatial_dims = (1, 2, 3)
    needs_float = False
    fixed_lambda = True

    def __init__(
        self,
        *,
        variant: str = "mixed",
        size: float = 0.5,
        thumbnail_weight: float | None = None,
        p: float = 1.0,
        mode: str = "batch",
        num_classes: int | None = None,
    ) -> None:
        super().__init__(p=p, mode=mode, num_classes=num_classes)
        self.variant = check_choice(variant, ("mixed", "self"), "variant")
        self.size = check_range(size, 0.0, 1.0, "size")
        if self.size <= 0:
            raise HyperParameterError(f"size must be > 0, got {size}")
        self.thumbnail_weight = (
            None if thumbnail_weight is None else check_range(thumbnail_weight, 0.0, 1.0, "thumbnail_weight")
        )

    def sample(self, x: Tensor, y: Tensor | None = None, *, generator: torch.Generator | None = None) -> BoxParams:
        b, spatial = x.shape[0], tuple(x.shape[2:])
        index = rng.randperm(b, generator=generator) if self.variant == "mixed" else torch.arange(b)
        n = 1 if self.mode == "batch" else b
        starts, ends = [], []
        for s in spatial:
            side = min(max(1, round(self.size * s)), s)
            start = rng.randint(0, s - side + 1, (n,), generator=generator)
            starts.append(start)
            ends.append(start + side)
        active = self._active(b, generator)
        boxes = _empty_inactive(torch.stack(starts + ends, dim=1), _rows(n, active))
        if self.variant == "self":
            return BoxParams(index=index, lam=torch.ones(b, dtype=torch.float64), boxes=boxes)
        share = box_fraction(boxes, spatial).expand(b)
        if self.thumbnail_weight is not None:
            share = torch.where(share > 0, torch.full_like(share, self.thumbnail_weight), share)
        return BoxParams(index=self._partner(index, active), lam=1.0 - share, boxes=boxes)

    def __call__(self, x: Tensor, y: Tensor, *, generator: torch.Generator | None = None) -> MixOutput:
        if self.variant == "mixed":
            return super().__call__(x, y, generator=generator)
        rng.check_generator(generator)  # a self thumbnail keeps lam = 1 but still changes x
        self.check(x, y)
        params = self.sample(x, y, generator=generator)
        return MixOutput(self._mix(x, params), self.target(y, params), params)

    def _mix(self, x: Tensor, params: BoxParams) -> Tensor:
        return paste_thumbnails(x, params.index, params.boxes)
