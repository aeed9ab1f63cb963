"""Evaluation metrics: top-k accuracy, negative log-likelihood and calibration.

- Top-1 / top-5 accuracy and the "median of the last epochs" convention of the mixup
  literature (e.g. Yun et al., "CutMix", ICCV 2019, and the OpenMixup benchmarks report the
  median top-1 of the last 10 epochs).
- Expected calibration error (ECE) as in Guo et al., "On Calibration of Modern Neural
  Networks", ICML 2017 (reference code github.com/gpleiss/temperature_scaling,
  ``temperature_scaling.py``, ``_ECELoss``): ``M`` equal-width confidence bins
  ``((m - 1) / M, m / M]``, ``ECE = sum_m |B_m| / n * |acc(B_m) - conf(B_m)|`` with the
  confidence the top softmax probability; a fraction in [0, 1]. Thulasidasan et al., "On
  Mixup Training: Improved Calibration and Predictive Uncertainty for Deep Neural Networks",
  NeurIPS 2019, use the same measure for mixup.

:class:`ClassificationMeter` streams over batches with O(bins) state (sums, never
per-sample values). Its state is one float64 vector, so a distributed run sums it with a
single ``all_reduce``::

    state = meter.state_tensor().to(device)
    torch.distributed.all_reduce(state)
    meter.load_state_tensor(state)
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from mixkit.errors import DTypeError, HyperParameterError, ShapeError
from mixkit.validation import check_label_range, check_positive_int

__all__ = [
    "topk_correct",
    "expected_calibration_error",
    "median_of_last",
    "ClassificationMeter",
]

_SCALARS = 4  # count, top-1 correct, top-5 correct, summed NLL


def _check_scores(scores: Tensor, labels: Tensor, *, name: str) -> None:
    """``scores (B, K)`` floating point, ``labels (B,)`` integers in ``[0, K)``."""
    if not isinstance(scores, Tensor) or not isinstance(labels, Tensor):
        raise TypeError(f"{name} and labels must be torch.Tensors")
    if scores.ndim != 2 or scores.shape[1] == 0:
        raise ShapeError(f"{name} must have shape (B, K) with K >= 1, got shape {tuple(scores.shape)}")
    if not scores.is_floating_point():
        raise DTypeError(f"{name} must be floating point, got {scores.dtype}")
    if labels.ndim != 1:
        raise ShapeError(f"labels must have shape (B,) (integer class indices), got shape {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise DTypeError(f"labels must hold integer class indices, got dtype {labels.dtype}")
    if labels.shape[0] != scores.shape[0]:
        raise ShapeError(f"labels have batch size {labels.shape[0]} but {name} have {scores.shape[0]}")
    check_label_range(labels, scores.shape[1], name="labels")


def _check_ks(ks: Iterable[int]) -> tuple[int, ...]:
    ks = tuple(ks)
    if not ks:
        raise HyperParameterError("ks must name at least one k")
    for k in ks:
        check_positive_int(k, "each k in ks", allow_none=False)
    return ks


def _correct_at(scores: Tensor, labels: Tensor, ks: Sequence[int]) -> dict[int, Tensor]:
    """Per-k 0-dim int64 tensors: how many labels are among the top ``min(k, K)`` scores."""
    top = scores.topk(min(max(ks), scores.shape[1]), dim=1).indices
    hits = top == labels.unsqueeze(1)
    return {k: hits[:, : min(k, scores.shape[1])].any(dim=1).sum() for k in ks}


def topk_correct(logits: Tensor, labels: Tensor, ks: Iterable[int] = (1, 5)) -> dict[int, int]:
    """How many samples have their label among the ``k`` highest scores, for each ``k``.

    ``k`` is capped at the number of classes ``K`` (so top-5 on 3 classes counts every
    sample). Ties are broken as :func:`torch.topk` breaks them.

    Args:
        logits: ``(B, K)`` scores (logits or probabilities: only their order matters).
        labels: ``(B,)`` integer labels in ``[0, K)``.
        ks: the ``k`` values, positive integers.

    Returns:
        ``{k: count}`` with the requested ``k`` as keys.

    Example:
        >>> topk_correct(torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2]]), torch.tensor([2, 0]), ks=(1, 2))
        {1: 1, 2: 2}
    """
    _check_scores(logits, labels, name="logits")
    counts = _correct_at(logits.detach(), labels, _check_ks(ks))
    return {k: int(v) for k, v in counts.items()}


def _bin_edges(n_bins: int) -> Tensor:
    return torch.linspace(0.0, 1.0, n_bins + 1, dtype=torch.float64)


def _bin_sums(confidence: Tensor, correct: Tensor, n_bins: int) -> Tensor:
    """``(3, n_bins)`` float64: per-bin count, summed confidence, summed correctness.

    Bin ``m`` holds confidences in ``(m / M, (m + 1) / M]`` (bin 0 also takes 0).
    """
    conf = confidence.to(torch.float64)
    inner = _bin_edges(n_bins)[1:-1].to(conf.device)
    index = torch.bucketize(conf, inner, right=False)
    sums = torch.zeros(3, n_bins, dtype=torch.float64, device=conf.device)
    sums[0].index_add_(0, index, torch.ones_like(conf))
    sums[1].index_add_(0, index, conf)
    sums[2].index_add_(0, index, correct.to(torch.float64))
    return sums


def _ece_from_sums(sums: Tensor) -> float:
    count = float(sums[0].sum())
    if count == 0:
        return math.nan
    return float((sums[2] - sums[1]).abs().sum()) / count


def expected_calibration_error(probs: Tensor, labels: Tensor, n_bins: int = 15) -> float:
    """Expected calibration error (Guo et al. 2017) of predicted probabilities.

    Args:
        probs: ``(N, K)`` class probabilities (e.g. ``logits.softmax(1)``); each row must sum
            to 1 within 0.01, which catches logits passed by mistake.
        labels: ``(N,)`` integer labels in ``[0, K)``.
        n_bins: number of equal-width confidence bins (15 as in the paper).

    Returns:
        The ECE as a fraction in [0, 1] (``nan`` for ``N == 0``).

    Example:
        >>> probs = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.3, 0.7], [0.3, 0.7]])
        >>> round(expected_calibration_error(probs, torch.tensor([0, 1, 1, 1])), 4)
        0.35
    """
    _check_scores(probs, labels, name="probs")
    check_positive_int(n_bins, "n_bins", allow_none=False)
    probs = probs.detach()
    if probs.numel():
        low, high = (float(v) for v in torch.aminmax(probs))
        worst = float((probs.sum(dim=1, dtype=torch.float64) - 1.0).abs().max())
        if low < 0.0 or high > 1.0 or worst > 0.01:
            raise ValueError(
                f"probs must be probabilities (entries in [0, 1], rows summing to 1), got entries in "
                f"[{low:.4g}, {high:.4g}] and a row sum off by {worst:.4g}; pass logits.softmax(dim=1)"
            )
    confidence, prediction = probs.max(dim=1)
    return _ece_from_sums(_bin_sums(confidence, prediction == labels, n_bins))


def median_of_last(values: Sequence[float], n: int) -> float:
    """Median of the last ``n`` values, e.g. the top-1 accuracy of the last 10 epochs.

    For an even ``n`` this is the mean of the two middle values (as :func:`numpy.median`).
    Any ``nan`` among them gives ``nan``.

    Args:
        values: one value per epoch, oldest first.
        n: how many of the latest values to take; at most ``len(values)``.

    Example:
        >>> median_of_last([10.0, 80.0, 91.0, 90.0, 92.0], 3)
        91.0
    """
    check_positive_int(n, "n", allow_none=False)
    values = [float(v) for v in values]
    if len(values) < n:
        raise HyperParameterError(f"median_of_last needs at least n={n} values, got {len(values)}")
    tail = values[-n:]
    if any(math.isnan(v) for v in tail):
        return math.nan
    return float(statistics.median(tail))


class ClassificationMeter:
    """Streaming top-1 / top-5 accuracy, NLL and ECE over an evaluation set.

    State is a single float64 vector of ``4 + 3 * n_bins`` sums (count, top-1 hits, top-5
    hits, summed NLL, then per-bin count, summed confidence and hits), kept on the device of
    the last logits. Meters merge by adding states, so ``update`` over chunks, ``merge`` of
    per-process meters and one ``update`` over everything give the same result.

    Args:
        num_classes: expected number of classes ``K`` (``None``: taken from the first batch;
            every later batch must match).
        n_bins: confidence bins of the ECE and the reliability diagram.

    Example:
        >>> meter = ClassificationMeter(n_bins=15)
        >>> meter.update(torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0]))
        >>> result = meter.compute()
        >>> result["top1"], result["count"]
        (50.0, 2)
    """

    def __init__(self, num_classes: int | None = None, *, n_bins: int = 15) -> None:
        self.num_classes = check_positive_int(num_classes, "num_classes")
        self.n_bins = check_positive_int(n_bins, "n_bins", allow_none=False)
        self._state = torch.zeros(_SCALARS + 3 * self.n_bins, dtype=torch.float64)

    def reset(self) -> None:
        """Forget every sample seen."""
        self._state = torch.zeros_like(self._state)

    @torch.no_grad()
    def update(self, logits: Tensor, labels: Tensor) -> None:
        """Add a batch.

        Args:
            logits: ``(B, K)`` unnormalised scores.
            labels: ``(B,)`` integer labels in ``[0, K)``.
        """
        _check_scores(logits, labels, name="logits")
        if self.num_classes is None:
            self.num_classes = logits.shape[1]
        elif logits.shape[1] != self.num_classes:
            raise ShapeError(f"logits have {logits.shape[1]} classes but the meter counts {self.num_classes}")
        log_probs = logits.detach().to(torch.float64).log_softmax(dim=1)
        labels = labels.to(log_probs.device)
        hits = _correct_at(log_probs, labels, (1, 5))
        nll = F.nll_loss(log_probs, labels, reduction="sum")
        log_conf, prediction = log_probs.max(dim=1)
        bins = _bin_sums(log_conf.exp(), prediction == labels, self.n_bins)
        count = torch.tensor(float(labels.shape[0]), dtype=torch.float64, device=log_probs.device)
        batch = torch.cat([torch.stack([count, hits[1].double(), hits[5].double(), nll]), bins.flatten()])
        self._state = self._state.to(batch.device) + batch

    def compute(self) -> dict[str, float | int]:
        """``top1`` and ``top5`` (percent), ``nll`` (mean, nats), ``ece`` (fraction), ``count``.

        With no sample seen, every metric is ``nan`` and ``count`` is 0.
        """
        state = self._state.cpu()
        count = float(state[0])
        if count == 0:
            return {"top1": math.nan, "top5": math.nan, "nll": math.nan, "ece": math.nan, "count": 0}
        return {
            "top1": 100.0 * float(state[1]) / count,
            "top5": 100.0 * float(state[2]) / count,
            "nll": float(state[3]) / count,
            "ece": _ece_from_sums(self._bins(state)),
            "count": int(count),
        }

    def reliability(self) -> dict[str, Tensor]:
        """Per-bin data for a reliability diagram, all ``(n_bins,)`` CPU tensors.

        Returns:
            ``lower`` and ``upper`` bin edges, ``confidence`` (mean top probability) and
            ``accuracy`` (fraction correct) per bin, ``nan`` for empty bins, and ``count``
            (int64; they sum to the number of samples).
        """
        sums = self._bins(self._state.cpu())
        edges = _bin_edges(self.n_bins)
        filled = sums[0] > 0
        nan = torch.full_like(sums[0], math.nan)
        return {
            "lower": edges[:-1],
            "upper": edges[1:],
            "confidence": torch.where(filled, sums[1] / sums[0].clamp_min(1), nan),
            "accuracy": torch.where(filled, sums[2] / sums[0].clamp_min(1), nan),
            "count": sums[0].round().to(torch.int64),
        }

    def state_tensor(self) -> Tensor:
        """A copy of the state: ``(4 + 3 * n_bins,)`` float64 sums, safe to ``all_reduce``."""
        return self._state.clone()

    def load_state_tensor(self, state: Tensor) -> None:
        """Replace the state, e.g. with the ``all_reduce`` sum of every process's state."""
        if not isinstance(state, Tensor) or state.shape != self._state.shape:
            got = tuple(state.shape) if isinstance(state, Tensor) else type(state).__name__
            raise ShapeError(f"state must have shape {tuple(self._state.shape)} (n_bins={self.n_bins}), got {got}")
        self._state = state.detach().to(torch.float64).clone()

    def merge(self, other: ClassificationMeter) -> None:
        """Add the samples another meter has seen to this one."""
        if not isinstance(other, ClassificationMeter):
            raise TypeError(f"can only merge a ClassificationMeter, got {type(other).__name__}")
        if other.n_bins != self.n_bins:
            raise HyperParameterError(f"cannot merge meters with n_bins={self.n_bins} and {other.n_bins}")
        if None not in (self.num_classes, other.num_classes) and self.num_classes != other.num_classes:
            raise ShapeError(f"cannot merge meters over {self.num_classes} and {other.num_classes} classes")
        self.num_classes = self.num_classes or other.num_classes
        self._state = self._state + other._state.to(self._state.device)

    def _bins(self, state: Tensor) -> Tensor:
        return state[_SCALARS:].view(3, self.n_bins)
