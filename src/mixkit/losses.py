"""Losses on mixed targets: mixup cross-entropy and mixup binary cross-entropy.

Both take a :class:`~mixkit.types.MixTarget`, integer labels ``(B,)`` or soft labels
``(B, K)``, and reduce to plain (label-smoothed) cross-entropy / BCE when nothing was mixed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mixkit.errors import HyperParameterError, LabelError, ShapeError
from mixkit.types import MixTarget
from mixkit.validation import check_label_range, check_labels

__all__ = ["mixup_cross_entropy", "mixup_binary_cross_entropy", "as_target"]

_REDUCTIONS = ("mean", "sum", "none")


def as_target(target: MixTarget | Tensor, num_classes: int | None = None) -> MixTarget:
    """Wrap plain labels as an unmixed :class:`MixTarget` (a target is returned as is)."""
    if isinstance(target, MixTarget):
        return target
    if not isinstance(target, Tensor):
        raise TypeError(f"target must be a MixTarget or a tensor of labels, got {type(target).__name__}")
    return MixTarget.unmixed(target, num_classes)


def _check(logits: Tensor, target: MixTarget | Tensor, reduction: str, smoothing: float) -> MixTarget:
    if logits.ndim != 2:
        raise ShapeError(f"logits must have shape (B, K), got shape {tuple(logits.shape)}")
    if reduction not in _REDUCTIONS:
        raise HyperParameterError(f"reduction must be one of {list(_REDUCTIONS)}, got {reduction!r}")
    if not 0.0 <= smoothing < 1.0:
        raise HyperParameterError(f"smoothing must be in [0, 1), got {smoothing}")
    if not isinstance(target, MixTarget):
        check_labels(target, logits.shape[0], logits.shape[1], name="target")
    t = as_target(target, logits.shape[1])
    if t.labels.ndim == 1:
        check_label_range(t.labels, logits.shape[1], name="target.labels")
    if t.index.shape[0] != logits.shape[0]:
        raise ShapeError(f"target has batch size {t.index.shape[0]} but logits have {logits.shape[0]}")
    if t.num_classes is not None and t.num_classes != logits.shape[1]:
        raise LabelError(f"target.num_classes={t.num_classes} but logits have {logits.shape[1]} classes")
    if t.labels.ndim == 2 and t.labels.shape[1] != logits.shape[1]:
        raise LabelError(f"soft labels have {t.labels.shape[1]} classes but logits have {logits.shape[1]}")
    return t


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def mixup_cross_entropy(
    logits: Tensor, target: MixTarget | Tensor, *, smoothing: float = 0.0, reduction: str = "mean"
) -> Tensor:
    """Cross-entropy against a mixed target: ``sum_k w_k * CE(logits, y[index_k])``.

    Equal to the soft-target cross-entropy on ``target.soft(K, smoothing)``; for integer
    labels it gathers ``k`` log-probabilities per row instead of building the dense matrix.
    Half-precision logits are upcast to float32 for the softmax.

    Args:
        logits: ``(B, K)`` scores.
        target: a :class:`MixTarget`, integer labels ``(B,)`` or soft labels ``(B, K)``.
        smoothing: label smoothing applied to each source label.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (per sample, ``(B,)``).

    Example:
        >>> logits, y = torch.randn(4, 3), torch.tensor([0, 2, 1, 1])
        >>> bool(torch.isclose(mixup_cross_entropy(logits, y), F.cross_entropy(logits, y)))
        True
    """
    t = _check(logits, target, reduction, smoothing)
    work = torch.promote_types(logits.dtype, torch.float32)
    logp = F.log_softmax(logits.to(work), dim=1)
    weight = t.weight.to(device=logits.device, dtype=work)
    if t.labels.ndim == 1:
        picked = logp.gather(1, t.labels.to(logits.device)[t.index.to(logits.device)])  # (B, k)
        loss = -(weight * picked).sum(dim=1)
        if smoothing:
            loss = (1 - smoothing) * loss - smoothing * logp.mean(dim=1) * weight.sum(dim=1)
    else:
        dense = t.to(logits.device).soft(logits.shape[1], smoothing).to(work)
        loss = -(dense * logp).sum(dim=1)
    return _reduce(loss, reduction)


def mixup_binary_cross_entropy(
    logits: Tensor,
    target: MixTarget | Tensor,
    *,
    smoothing: float = 0.0,
    target_threshold: float | None = None,
    pos_weight: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Binary cross-entropy with logits against the dense mixed target.

    As timm's ``BinaryCrossEntropy``: the dense soft target (with optional smoothing) is
    optionally binarised at ``target_threshold`` (``t > threshold``), then each class is a
    sigmoid output. The per-sample loss is the mean over classes: ``"none"`` returns it
    ``(B,)``, ``"mean"`` averages it over samples (= the mean over all entries), ``"sum"``
    sums it over samples.

    Args:
        logits: ``(B, K)`` scores.
        target: a :class:`MixTarget`, integer labels ``(B,)`` or soft labels ``(B, K)``.
        smoothing: label smoothing applied to each source label.
        target_threshold: if set, targets above it become 1 and the rest 0.
        pos_weight: ``(K,)`` weight of positive examples per class.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
    """
    t = _check(logits, target, reduction, smoothing)
    if target_threshold is not None and not 0.0 <= target_threshold < 1.0:
        raise HyperParameterError(f"target_threshold must be in [0, 1), got {target_threshold}")
    work = torch.promote_types(logits.dtype, torch.float32)
    dense = t.to(logits.device).soft(logits.shape[1], smoothing).to(work)
    if target_threshold is not None:
        dense = (dense > target_threshold).to(work)
    if pos_weight is not None:
        pos_weight = pos_weight.to(device=logits.device, dtype=work)
    loss = F.binary_cross_entropy_with_logits(logits.to(work), dense, pos_weight=pos_weight, reduction="none")
    return _reduce(loss.mean(dim=1), reduction)
