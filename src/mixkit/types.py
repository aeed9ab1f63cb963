"""Core types shared by every method: the mixed target, the call output and the params.

Conventions (they hold everywhere in mixkit):

* **Lambda is the weight of the original sample**: ``x~ = lam * x + (1 - lam) * x[index]``,
  and the label of row ``b`` is ``lam[b] * y[b] + (1 - lam[b]) * y[index[b]]``. Area-based
  methods report the lambda their mask realised, per sample.
* A :class:`MixTarget` stores *which* rows each mixed sample draws from (``index (B, k)``)
  and *how much* (``weight (B, k)``), with ``index[:, 0]`` the sample itself for two-source
  methods. Dense soft labels are built only on request (:meth:`MixTarget.soft`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from mixkit._device import upload
from mixkit.errors import LabelError

__all__ = [
    "MixTarget",
    "MixOutput",
    "ModelMixOutput",
    "Params",
    "BlendParams",
    "BoxParams",
    "MaskParams",
    "ResizeParams",
    "LayerParams",
    "StepOutput",
]


def _weight_dtype(labels: Tensor) -> torch.dtype:
    if labels.is_floating_point() and labels.dtype == torch.float64:
        return torch.float64
    return torch.float32


def _label_range_check() -> Callable[..., None]:
    """:func:`mixkit.validation.check_label_range` (imported at first use: validation imports
    this module; an import statement in the call costs about a microsecond every time)."""
    global _LABEL_RANGE_CHECK
    if _LABEL_RANGE_CHECK is None:
        from mixkit.validation import check_label_range

        _LABEL_RANGE_CHECK = check_label_range
    return _LABEL_RANGE_CHECK


_LABEL_RANGE_CHECK: Callable[..., None] | None = None


@functools.lru_cache(maxsize=16)
def _arange(n: int, device: torch.device) -> Tensor:
    """``arange(n)`` shared between calls (read only: it is only ever copied from)."""
    return torch.arange(n, device=device)


@functools.lru_cache(maxsize=16)
def _pair_constants(dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
    """``([0, 1], [1, -1])`` for :meth:`MixTarget.pair` (read only)."""
    return torch.tensor([0.0, 1.0], dtype=dtype, device=device), torch.tensor([1.0, -1.0], dtype=dtype, device=device)


@dataclass(frozen=True, eq=False)
class MixTarget:
    """Labels of a mixed batch: ``k`` source rows per sample and their weights.

    Args:
        labels: the caller's labels, integer ``(B,)`` or soft ``(B, K)``; never modified.
        index: ``(B, k)`` int64, the batch rows each mixed sample draws from.
        weight: ``(B, k)`` float, how much of each source (sums to 1 for normalised methods).
        num_classes: number of classes ``K`` if known.

    Example:
        >>> t = MixTarget.pair(torch.tensor([0, 2]), torch.tensor([1, 0]), torch.tensor([0.7, 0.7]))
        >>> t.soft(num_classes=3)
        tensor([[0.7000, 0.0000, 0.3000],
                [0.3000, 0.0000, 0.7000]])
    """

    labels: Tensor
    index: Tensor
    weight: Tensor
    num_classes: int | None = None

    def __post_init__(self) -> None:
        # integer labels of any width (uint8, int32...) are used as int64 indices
        if not self.labels.is_floating_point() and self.labels.dtype != torch.int64:
            object.__setattr__(self, "labels", self.labels.long())

    @classmethod
    def unmixed(cls, labels: Tensor, num_classes: int | None = None) -> MixTarget:
        """The target of a batch that was not mixed (k = 1, weight 1)."""
        b = labels.shape[0]
        index = torch.arange(b, device=labels.device).unsqueeze(1)
        weight = torch.ones(b, 1, dtype=_weight_dtype(labels), device=labels.device)
        return cls(labels, index, weight, num_classes)

    @classmethod
    def pair(cls, labels: Tensor, index: Tensor, lam: Tensor, num_classes: int | None = None) -> MixTarget:
        """A two-source target: row ``b`` is ``lam[b] * y[b] + (1 - lam[b]) * y[index[b]]``."""
        dev = labels.device
        b = labels.shape[0]
        own = _arange(b, dev)
        lam = upload(lam, dev, _weight_dtype(labels))
        idx = torch.stack([own, upload(index, dev)], dim=1)
        # [lam, 1 - lam] in one op: [0, 1] + lam * [1, -1] (exact: the products are)
        offset, sign = _pair_constants(lam.dtype, dev)
        weight = torch.addcmul(offset, lam.unsqueeze(1), sign)
        return cls(labels, idx, weight, num_classes)

    @property
    def lam(self) -> Tensor:
        """``(B,)`` weight of each sample's own label (the first source)."""
        return self.weight[:, 0]

    @property
    def k(self) -> int:
        """Number of sources per sample."""
        return self.index.shape[1]

    def resolve_num_classes(self, num_classes: int | None = None) -> int:
        """The class count to use for dense labels, checked against the labels."""
        if self.labels.ndim == 2:
            width = self.labels.shape[1]
            for given, what in ((num_classes, "num_classes"), (self.num_classes, "target.num_classes")):
                if given is not None and given != width:
                    raise LabelError(f"{what}={given} disagrees with the soft labels' width {width}")
            return width
        k = num_classes if num_classes is not None else self.num_classes
        if k is None:
            raise LabelError(
                "num_classes is needed to build dense labels from integer labels: pass "
                "soft(num_classes=K), or give num_classes=K to the method"
            )
        return k

    def soft(self, num_classes: int | None = None, smoothing: float = 0.0) -> Tensor:
        """Dense ``(B, K)`` soft labels, with optional label smoothing of each source.

        Smoothing maps each source's one-hot (or soft) label ``e`` to ``(1 - s) * e + s / K``
        before mixing.
        """
        if not 0.0 <= smoothing < 1.0:
            raise LabelError(f"smoothing must be in [0, 1), got {smoothing}")
        kc = self.resolve_num_classes(num_classes)
        if self.labels.ndim == 2:
            src = self.labels[self.index].to(self.weight.dtype)  # (B, k, K)
            dense = (self.weight.unsqueeze(-1) * src).sum(dim=1)
        else:
            _label_range_check()(self.labels, kc, name="target.labels")
            dense = torch.zeros(self.index.shape[0], kc, dtype=self.weight.dtype, device=self.weight.device)
            dense.scatter_add_(1, self.labels.take(self.index), self.weight)  # take: cheaper than indexing
        if smoothing:
            dense = dense * (1.0 - smoothing) + self.weight.sum(dim=1, keepdim=True) * (smoothing / kc)
        return dense

    def to(self, device: torch.device | str) -> MixTarget:
        """A copy with every tensor on ``device``."""
        return MixTarget(self.labels.to(device), self.index.to(device), self.weight.to(device), self.num_classes)


@dataclass(frozen=True, eq=False, kw_only=True)
class Params:
    """What a method sampled for one call: the pairing and the realised lambda.

    Attributes:
        index: ``(B,)`` int64, the partner row of each sample.
        lam: ``(B,)`` float64, the weight of each sample's own label (realised, per sample).
    """

    index: Tensor
    lam: Tensor

    @property
    def batch_size(self) -> int:
        return self.index.shape[0]

    @functools.cached_property
    def lam_value(self) -> float | None:
        """The common lambda of every sample as a float, ``None`` if they differ."""
        from mixkit.functional.blend import uniform_value

        return uniform_value(self.lam)

    def with_lam_value(self, value: float | None) -> Params:
        """Record that every entry of ``lam`` equals ``value`` (a method that drew one lambda
        for the batch knows it), or that they differ (``None``); :attr:`lam_value` then needs
        no reduction. Returns self."""
        self.__dict__["lam_value"] = value
        return self


@dataclass(frozen=True, eq=False, kw_only=True)
class BlendParams(Params):
    """Params of a linear blend (Mixup, BC learning): ``x~ = lam * x + (1 - lam) * x[index]``."""


@dataclass(frozen=True, eq=False, kw_only=True)
class BoxParams(Params):
    """Params of a box paste (CutMix).

    Attributes:
        boxes: ``(N, 2 * d)`` int64 on the CPU, ``[start_1..start_d, end_1..end_d]`` per box
            for ``d`` spatial dims (ends exclusive); ``N`` is 1 (one box for the batch) or ``B``.
    """

    boxes: Tensor


@dataclass(frozen=True, eq=False, kw_only=True)
class ResizeParams(BoxParams):
    """Params of ResizeMix: the partner, shrunk into ``boxes``, is pasted over the sample."""


@dataclass(frozen=True, eq=False, kw_only=True)
class MaskParams(Params):
    """Params of a mask mix: ``x~ = mask * x + (1 - mask) * x[index]``.

    Attributes:
        mask: ``(N, 1, *spatial)`` with N = 1 or B; 1 keeps the sample, 0 takes the partner.
            A bool mask copies values (a hard mask, fine on uint8 images); a float mask in
            [0, 1] blends them (a soft mask).
    """

    mask: Tensor


@dataclass(frozen=True, eq=False, kw_only=True)
class LayerParams(Params):
    """Params of a feature-level mix: the layer whose output is blended.

    Attributes:
        layer: the submodule name, or ``"input"`` for the model's input.
    """

    layer: str


@dataclass(frozen=True, eq=False)
class MixOutput:
    """What an input-space method returns.

    Attributes:
        x: the mixed input, same shape, dtype, device and memory format as the input.
        target: the :class:`MixTarget` of the mixed batch.
        params: the :class:`Params` that produced it (replay with ``method.apply``).
    """

    x: Tensor
    target: MixTarget
    params: Params


@dataclass(frozen=True, eq=False)
class ModelMixOutput:
    """What a feature-level method returns when it runs the model itself.

    Attributes:
        logits: the model's output on the batch mixed at ``params.layer``.
        target: the :class:`MixTarget` of the mixed batch.
        params: the :class:`LayerParams` that produced it.
    """

    logits: Tensor
    target: MixTarget
    params: LayerParams


@dataclass(frozen=True, eq=False)
class StepOutput:
    """What one training step of a method returns to the engine.

    Attributes:
        loss: the scalar loss to back-propagate.
        logits: the model's output on the (mixed) batch.
        target: the :class:`MixTarget` the loss was computed against.
        logs: extra scalars to log (e.g. a mixer's own loss).
    """

    loss: Tensor
    logits: Tensor
    target: MixTarget
    logs: dict[str, float] = field(default_factory=dict)
