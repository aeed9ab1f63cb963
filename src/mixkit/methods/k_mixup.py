"""k-Mixup: mixup between clouds of k samples matched by optimal transport.

Paper and reference code:
    * Greenewald et al., "k-Mixup Regularization for Deep Learning via Optimal Transport",
      TMLR 2023 (github.com/AnmingGu/kmixup-cifar10).
"""

from __future__ import annotations

import torch
from torch import Tensor

from mixkit import rng
from mixkit.base import MixMethod
from mixkit.functional.blend import blend
from mixkit.functional.multi import match_clouds
from mixkit.registry import register
from mixkit.types import BlendParams
from mixkit.validation import check_alpha, check_positive_int

__all__ = ["KMixup"]


@register(
    "k_mixup",
    family="multi",
    paper="k-Mixup Regularization for Deep Learning via Optimal Transport",
    authors="Greenewald et al.",
    venue="TMLR 2023",
    year=2023,
    code="https://github.com/AnmingGu/kmixup-cifar10",
    sources=2,
    summary="Mixup between clouds of k samples matched by optimal transport (an exact assignment).",
)
class KMixup(MixMethod):
    """k-Mixup: mixup of each sample with its optimal-transport match in a partner cloud.

    The batch is split into clouds of ``k`` random rows (a last, smaller cloud takes the rest);
    each cloud's partner cloud is the next ``k`` rows of the same random order (disjoint from
    it; the code draws a second permutation, which may overlap) and its samples are matched by
    the permutation minimising the total squared Euclidean distance (the discrete
    Wasserstein-2 coupling, solved exactly by
    :func:`mixkit.functional.multi.linear_assignment`), then
    ``x~ = lam * x + (1 - lam) * x[match]`` with ``lam ~ Beta(alpha, alpha)``, and the
    same for labels. The paper's displacement interpolation uses one lambda per cloud pair;
    ``"batch"`` mode draws one for the batch, as the reference code, and ``"elem"`` one per
    sample. The code matches with unsquared distances (scipy ``distance_matrix``), which can
    give another permutation. Batches of fewer than ``2k`` samples use clouds of ``B // 2`` (a
    single cloud matched with itself would pair every sample with itself). ``k=1`` is mixup.
    Defaults: ``k=16`` (the README's example, which pairs it with ``alpha=10``) and the code's
    ``alpha=1``.

    Args:
        k: cloud size (>= 1).
        alpha: Beta concentration (> 0).
        p: probability of mixing the batch or each sample.
        mode: ``"batch"`` (one lambda) or ``"elem"`` (one lambda per sample).
        num_classes: number of classes, if known.

    Example:
        >>> import torch, mixkit
        >>> x = torch.rand(8, 3, 4, 4)
        >>> out = mixkit.create("k_mixup", k=4)(x, torch.arange(8), generator=torch.Generator().manual_seed(0))
        >>> lam, index = float(out.params.lam[0]), out.params.index
        >>> torch.allclose(out.x, lam * x + (1 - lam) * x[index])
        True
    """

    def __init__(
        self, *, k: int = 16, alpha: float = 1.0, p: float = 1.0, mode: str = "batch", num_classes: int | None = None
    ) -> None:
        super().__init__(p=p, mode=mode, num_classes=num_classes)
        self.k = check_positive_int(k, "k", allow_none=False)
        self.alpha = check_alpha(alpha)

    def sample(self, x: Tensor, y: Tensor | None = None, *, generator: torch.Generator | None = None) -> BlendParams:
        b = x.shape[0]
        k = max(1, min(self.k, b // 2))
        order = rng.randperm(b, generator=generator)
        lam = self._per_sample(b, lambda size: rng.beta(size, self.alpha, self.alpha, generator=generator))
        active = self._active(b, generator)
        index = match_clouds(x, order, order.roll(-k), k)  # partner cloud: the next k rows of `order`
        return BlendParams(index=self._partner(index, active), lam=torch.where(active, lam, 1.0))

    def _mix(self, x: Tensor, params: BlendParams) -> Tensor:
        return blend(x, params.index, params.lam)
