"""Training without mixing: empirical risk minimisation, registered like any method.

Paper: Vapnik, "Principles of Risk Minimization for Learning Theory", NeurIPS 1991; the
baseline every mixup paper compares against.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mixkit.base import MixMethod
from mixkit.functional.alloc import fresh_copy
from mixkit.registry import register
from mixkit.types import BlendParams, MixOutput, MixTarget

__all__ = ["ERM"]


@register(
    "erm",
    family="baseline",
    paper="Principles of Risk Minimization for Learning Theory",
    authors="Vapnik",
    venue="NeurIPS 1991",
    year=1991,
    code="https://papers.nips.cc/paper/1991/hash/ff4d5fbbafdf976cfdc032e3bde78de5-Abstract.html",
    sources=1,
    summary="No mixing: the plain training baseline, so baselines take the same path as methods.",
)
class ERM(MixMethod):
    """Empirical risk minimisation: the batch and its labels pass through unmixed.

    The output is a copy of the input (the caller's batch is never aliased) and the target
    has one source per sample with weight 1, so every loss reduces to its plain form.

    Args:
        num_classes: number of classes, if known.

    Example:
        >>> import torch, mixkit
        >>> out = mixkit.create("erm")(torch.rand(2, 3, 4, 4), torch.tensor([0, 1]))
        >>> out.target.k, out.target.lam.tolist()
        (1, [1.0, 1.0])
    """

    def __init__(self, *, num_classes: int | None = None) -> None:
        super().__init__(p=0.0, mode="batch", num_classes=num_classes)

    def sample(self, x: Tensor, y: Tensor | None = None, *, generator: torch.Generator | None = None) -> BlendParams:
        b = x.shape[0]
        return BlendParams(index=torch.arange(b), lam=torch.ones(b, dtype=torch.float64))

    def _mix(self, x: Tensor, params: BlendParams) -> Tensor:
        return fresh_copy(x)

    def target(self, y: Tensor, params: BlendParams) -> MixTarget:
        return MixTarget.unmixed(y, self.num_classes)

    def __call__(self, x: Tensor, y: Tensor, *, generator: torch.Generator | None = None) -> MixOutput:
        self.check(x, y)
        params = self.sample(x, y)
        return MixOutput(fresh_copy(x), self.target(y, params), params)
