"""Cutting-based mixing by halves: stacked halves (StackMix) and one cut with each half
augmented apart (YOCO).

Papers and reference code:
    * Chen, Sinha, Kyrillidis, "StackMix: A complementary Mix algorithm", UAI 2022
      (arXiv 2011.12618; no official code).
    * Han et al., "You Only Cut Once: Boosting Data Augmentation with a Single Cut", ICML 2022
      (github.com/JunlinHan/YOCO, ``classification/cifar10/main.py``).

Every method here reports, per sample, the lambda its cut realised.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch
from torch import Tensor

from mixkit import rng
from mixkit.base import MixMethod
from mixkit.errors import HyperParameterError, ShapeError
from mixkit.functional import row_paths
from mixkit.functional.alloc import fresh, fresh_like
from mixkit.functional.blend import from_memory, match_format, memory_order, select_rows
from mixkit.functional.masks import (
    stack_pair,
)
from mixkit.registry import create, method_info, register
from mixkit.types import MixOutput, Params
from mixkit.validation import check_choice

__all__ = ["YOCO", "StackMix", "StackParams", "YOCOParams"]

_SPATIAL = (1, 2, 3)


@dataclass(frozen=True, eq=False, kw_only=True)
class StackParams(Params):
    """Params of StackMix.

    Attributes:
        axis: ``(B,)`` int64, the spatial axis each sample is stacked along (0 for the first
            spatial dim), or -1 where it is left as is.
    """

    axis: Tensor


@register(
    "stackmix",
    family="cutting",
    paper="StackMix: A complementary Mix algorithm",
    authors="Chen et al.",
    venue="UAI 2022",
    year=2022,
    code="https://arxiv.org/abs/2011.12618",
    sources=2,
    summary="The sample and its partner, each squeezed to half size, side by side; labels 0.5 / 0.5.",
)
class StackMix(MixMethod):
    """StackMix: the sample and its partner side by side, the label the mean of the two.

    The paper feeds the concatenation of two images with the mean of their one-hot labels
    (its body could not be reached to check whether it doubles the input or resizes). mixkit
    methods keep the input's shape, so each image is squeezed to half its size along the
    stacking axis by area averaging (an antialiased resize) and the halves are concatenated:
    the sample first (top or left), its partner after. Along an axis of size ``S`` the sample
    gets ``S - S // 2`` pixels and lambda is that share: 0.5 for even sizes, whatever the
    mode (``"elem"`` only draws activity and, with ``axis="random"``, the axis per sample).
    Pairing: a random permutation. Integer images are resized in float32 and rounded back.

    Args:
        axis: ``"width"`` (side by side, the last axis), ``"height"`` (one above the other)
            or ``"random"`` (either, with probability 1/2).
        p: probability of mixing the batch or each sample.
        mode: ``"batch"`` or ``"elem"``.
        num_classes: number of classes, if known.

    Example:
        >>> import torch, mixkit
        >>> x = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 1, 2, 4)  # sample i is all i
        >>> out = mixkit.create("stackmix")(x, torch.arange(4), generator=torch.Generator().manual_seed(0))
        >>> j = float(out.params.index[1])
        >>> out.x[1, 0].tolist() == [[1.0, 1.0, j, j]] * 2, out.params.lam.tolist()
        (True, [0.5, 0.5, 0.5, 0.5])
    """

    spatial_dims = _SPATIAL
    needs_float = False
    #: lambda is the same for every sample (0.5 for even sizes): "elem" mode cannot vary it.
    fixed_lambda: ClassVar[bool] = True

    def __init__(self, *, axis: str = "width", p: float = 1.0, mode: str = "batch", num_classes: int | None = None) -> None:
        super().__init__(p=p, mode=mode, num_classes=num_classes)
        self.axis = check_choice(axis, ("width", "height", "random"), "axis")

    def _axes(self, d: int) -> tuple[int, ...]:
        return {"width": (d - 1,), "height": (d - 2,), "random": (d - 2, d - 1)}[self.axis]

    def check(self, x: Tensor, y: Tensor) -> None:
        super().check(x, y)
        if self.axis != "width" and x.ndim < 4:
            raise ShapeError(f"axis={self.axis!r} needs 2 or 3 spatial dims, got x of shape {tuple(x.shape)}")
        if any(x.shape[2 + k] < 2 for k in self._axes(x.ndim - 2)):
            raise ShapeError(f"stacking needs at least 2 pixels along the axis, got x of shape {tuple(x.shape)}")

    def sample(self, x: Tensor, y: Tensor | None = None, *, generator: torch.Generator | None = None) -> StackParams:
        b, d = x.shape[0], x.ndim - 2
        index = rng.randperm(b, generator=generator)
        first = self._axes(d)[0]
        k = first + (self._per_sample(b, lambda s: rng.randint(0, 2, s, generator=generator))
                     if self.axis == "random" else torch.zeros(b, dtype=torch.long))
        active = self._active(b, generator)
        sizes = torch.tensor(x.shape[2:], dtype=torch.float64)[k]
        lam = torch.where(active, (sizes - torch.div(sizes, 2, rounding_mode="floor")) / sizes, 1.0)
        return StackParams(index=self._partner(index, active), lam=lam, axis=torch.where(active, k, -1))

    def _mix(self, x: Tensor, params: StackParams) -> Tensor:
        if params.axis.shape != (x.shape[0],) or int(params.axis.max()) >= x.ndim - 2:
            raise ShapeError(f"params.axis {params.axis.tolist()} does not fit x of shape {tuple(x.shape)}")
        return stack_pair(x, params.index, params.axis)


def _flip_rows(h: Tensor, flips: Tensor, order: tuple[int, ...] | None) -> Tensor:
    """``h`` with the rows where ``flips (B,)`` is True mirrored along the last dim.

    Large samples on the CPU outside autograd (a half batch at 224x224 is 38 MB, a fresh tensor
    whose pages fault in at every call, twice: the flipped copy and the selection) are copied
    row by row, flipped or not, into one pooled block in ``order`` (the batch's memory order):
    the same values, where the batched selection is a 0/1 ``lerp`` (exact for finite values).
    """
    if not row_paths.rows_without_grad(h):
        return h.flip(-1) if bool(flips.all()) else select_rows(flips, h.flip(-1), h)
    shape = tuple(h.shape) if order is None else tuple(h.shape[d] for d in order)
    out = from_memory(fresh(shape, h.dtype, h.device), order)
    for src, dst, flip in zip(h.unbind(0), out.unbind(0), flips.tolist(), strict=True):
        dst.copy_(src.flip(-1) if flip else src)
    return out


@dataclass(frozen=True, eq=False, kw_only=True)
class YOCOParams(Params):
    """Params of YOCO: one cut, per-half flips and the inner method's params per half.

    Attributes:
        dim: the tensor dim cut (2 = height for images, 3 = width).
        split: size of the first half along ``dim``.
        active: ``(B,)`` bool, the samples YOCO applies to (the others are copied).
        flips: ``(B, 2)`` bool, whether each half is flipped horizontally.
        inner: the inner method's params for each half (``None`` without an inner method).
    """

    dim: int
    split: int
    active: Tensor
    flips: Tensor
    inner: tuple[Params, Params] | None


def _inner_method(name: str, mode: str, kwargs: dict[str, Any] | None) -> MixMethod:
    info = method_info(name) if isinstance(name, str) else None
    if info is None or name == "yoco" or info.family not in ("linear", "cutting") or info.sources != 2 or info.needs:
        raise HyperParameterError(
            f"inner must name a two-source input-space method of the linear or cutting family "
            f"(e.g. 'mixup', 'cutmix'), got {name!r}"
        )
    if kwargs and ({"p", "mode"} & set(kwargs)):
        raise HyperParameterError("inner_kwargs cannot set p or mode: YOCO's own p and mode apply to the inner method")
    return create(name, p=1.0, mode=mode, **(kwargs or {}))


@register(
    "yoco",
    family="cutting",
    paper="You Only Cut Once: Boosting Data Augmentation with a Single Cut",
    authors="Han et al.",
    venue="ICML 2022",
    year=2022,
    code="https://github.com/JunlinHan/YOCO",
    sources=2,
    summary="Cut in two halves, augment (flip, then an inner mix such as Mixup) each half on its own, concatenate.",
)
class YOCO(MixMethod):
    """YOCO: cut each image in two, augment each half independently, and put them back.

    As the reference code: one cut per call, through the middle (``size // 2``) of the
    height or the width with probability 1/2 each; each half is then (1) flipped
    horizontally with probability 1/2 (``flip``; one draw per half for the batch in
    ``"batch"`` mode as torchvision's flip on a batch, per sample in ``"elem"`` mode), (2)
    passed to ``augment`` if given, (3) mixed by the ``inner`` registered method with its own
    lambda but one shared permutation, as the code's ``--mixup`` option; the label weight is
    the area-weighted mean of the halves' lambdas (the code's ``(lam1 + lam2) / 2``). Without
    ``inner`` the label is unchanged. ``augment`` draws its own randomness, so ``apply``
    replays it only if it is deterministic; it must be picklable for DataLoader workers.

    Args:
        inner: registry name of a two-source linear or cutting method, or ``None``.
        inner_kwargs: hyper-parameters of the inner method (not ``p`` or ``mode``).
        flip: flip each half horizontally at random.
        augment: a batched ``(B, C, *half) -> same shape`` augmentation for each half.
        p: probability of applying YOCO to the batch or to each sample.
        mode: ``"batch"`` or ``"elem"`` (passed to the inner method).
        num_classes: number of classes, if known.

    Example:
        >>> import torch, mixkit
        >>> out = mixkit.create("yoco")(torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 3]),
        ...                             generator=torch.Generator().manual_seed(0))
        >>> l1, l2 = (float(q.lam[0]) for q in out.params.inner)
        >>> abs(float(out.params.lam[0]) - (l1 + l2) / 2) < 1e-12
        True
    """

    spatial_dims = _SPATIAL

    def __init__(
        self,
        *,
        inner: str | None = "mixup",
        inner_kwargs: dict[str, Any] | None = None,
        flip: bool = True,
        augment: Callable[[Tensor], Tensor] | None = None,
        p: float = 1.0,
        mode: str = "batch",
        num_classes: int | None = None,
    ) -> None:
        super().__init__(p=p, mode=mode, num_classes=num_classes)
        if inner is None and inner_kwargs:
            raise HyperParameterError("inner_kwargs given without an inner method")
        if augment is not None and not callable(augment):
            raise HyperParameterError(f"augment must be callable or None, got {type(augment).__name__}")
        self.inner, self.flip, self.augment = inner, bool(flip), augment
        self.inner_kwargs = None if inner_kwargs is None else dict(inner_kwargs)
        self._inner = None if inner is None else _inner_method(inner, self.mode, self.inner_kwargs)
        self.needs_float = self._inner.needs_float if self._inner is not None else False  # type: ignore[misc]

    def __call__(self, x: Tensor, y: Tensor, *, generator: torch.Generator | None = None) -> MixOutput:
        # the base class skips samples whose lambda is 1; YOCO also changes those (flips)
        rng.check_generator(generator)
        self.check(x, y)
        params = self.sample(x, y, generator=generator)
        mixed = self._mix(x, params) if bool(params.active.any()) else x.clone()
        return MixOutput(mixed, self.target(y, params), params)

    def sample(self, x: Tensor, y: Tensor | None = None, *, generator: torch.Generator | None = None) -> YOCOParams:
        b, d = x.shape[0], x.ndim - 2
        index = rng.randperm(b, generator=generator)
        active = self._active(b, generator)
        index = self._partner(index, active)
        dim = 2 if d == 1 else d + int(rng.randint(0, 2, (1,), generator=generator))
        size = x.shape[dim]
        if size < 2:
            raise ShapeError(f"YOCO cuts dim {dim} in two but x has size {size} there (shape {tuple(x.shape)})")
        split, lam, inner = size // 2, torch.ones(b, dtype=torch.float64), None
        flips = torch.zeros(b, 2, dtype=torch.bool)
        if self.flip:
            n = 1 if self.mode == "batch" else b
            flips = rng.bernoulli((n, 2), 0.5, generator=generator).expand(b, 2) & active.unsqueeze(1)
        if self._inner is not None:
            halves = (x.narrow(dim, 0, split), x.narrow(dim, split, size - split))
            inner = tuple(replace(self._inner.sample(h, y, generator=generator), index=index) for h in halves)
            both = (split * inner[0].lam + (size - split) * inner[1].lam) / size
            lam = torch.where(active, both.to(torch.float64), 1.0)
        return YOCOParams(index=index, lam=lam, dim=dim, split=split, active=active, flips=flips, inner=inner)  # type: ignore[arg-type]

    def _half(self, h: Tensor, flips: Tensor, inner: Params | None, order: tuple[int, ...] | None = None) -> Tensor:
        if bool(flips.any()):
            h = _flip_rows(h, flips, order)
        if self.augment is not None:
            h = self.augment(h)
        if inner is not None:
            assert self._inner is not None
            h = self._inner.apply(h, inner)
        return h

    def _mix(self, x: Tensor, params: YOCOParams) -> Tensor:
        size = x.shape[params.dim] if 2 <= params.dim < x.ndim else 0
        if not 0 < params.split < size or params.flips.shape != (x.shape[0], 2):
            raise ShapeError(f"params cut dim {params.dim} at {params.split}; they do not fit x of shape {tuple(x.shape)}")
        halves = (x.narrow(params.dim, 0, params.split), x.narrow(params.dim, params.split, size - params.split))
        inner = params.inner or (None, None)
        order = memory_order(x)
        mixed = [self._half(h, params.flips[:, k], inner[k], order) for k, h in enumerate(halves)]
        if torch.is_grad_enabled() and any(m.requires_grad for m in mixed) or any(m.dtype != x.dtype for m in mixed):
            out = torch.cat(mixed, dim=params.dim)
        else:  # into a pooled block in x's layout (a fresh batch-sized tensor faults its pages in)
            out = fresh_like(x)
            out.narrow(params.dim, 0, params.split).copy_(mixed[0])
            out.narrow(params.dim, params.split, size - params.split).copy_(mixed[1])
        if not bool(params.active.all()):
            out = select_rows(params.active, out, x)
        return match_format(out, x)
