"""Label policies that change the loss: DecoupleMix and MixupE (RegMixup: :mod:`mixkit.methods.regmixup`).

Papers and reference code:
    * Liu et al., "Harnessing Hard Mixed Samples with Decoupled Regularizer", NeurIPS 2023
      (arXiv 2203.10761; OpenMixup ``models/losses/cross_entropy_loss.py::soft_mix_cross_entropy``
      and ``models/heads/cls_mixup_head.py``, github.com/Westlake-AI/openmixup).
    * Zou et al., "MixupE: Understanding and Improving Mixup from Directional Derivative
      Perspective", UAI 2023 (arXiv 2212.13381; github.com/oneHuster/MixupE, ``mixup.py``).

Each loss is also a plain function (:func:`decoupled_mixup_loss`, :func:`mixupe_term`,
:func:`mixupe_loss`) for use in one's own training loop; the policies wrap any sample policy
(Mixup by default) and plug the loss into its training step.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mixkit._device import upload
from mixkit._moved import moved_names
from mixkit.base import MixMethod
from mixkit.errors import HyperParameterError, ShapeError
from mixkit.label_policy import Criterion, LabelPolicy
from mixkit.losses import _check, _reduce, mixup_cross_entropy
from mixkit.registry import method_info, register
from mixkit.types import MixTarget, StepOutput
from mixkit.validation import check_alpha, check_labels

__all__ = [
    "DecoupleMix",
    "MixupE",
    "decoupled_log_softmax",
    "decoupled_mixup_loss",
    "decoupled_regularizer",
    "mixupe_loss",
    "mixupe_term",
    "source_classes",
]


def _nonneg(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value >= 0):
        raise HyperParameterError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def _with_alpha(
    method: MixMethod | str, method_args: dict[str, Any] | None, alpha: float | None
) -> dict[str, Any] | None:
    """``method_args`` plus ``alpha`` (``method_args["alpha"]`` wins) for a named method with one."""
    if alpha is None or not isinstance(method, str) or "alpha" not in method_info(method).defaults:
        return method_args
    return {"alpha": check_alpha(alpha), **(method_args or {})}


def source_classes(target: MixTarget) -> Tensor:
    """``(B, k)`` class of each source of each row (the argmax of a soft source label)."""
    labels = target.labels if target.labels.ndim == 1 else target.labels.argmax(dim=1)
    return labels[upload(target.index, labels.device)]


# ----------------------------------------------------------------------------- DecoupleMix
def decoupled_log_softmax(logits: Tensor, classes: Tensor, active: Tensor) -> Tensor:
    """Log of the decoupled softmax of each source's class, the other mixed classes removed.

    ``log phi[b, s] = z[b, c_s] - logsumexp_{c not in M_b \\ {c_s}} z[b, c]`` with ``M_b`` the
    classes of the active sources of row ``b``: the other mixed classes leave the denominator.

    Args:
        logits: ``(B, K)`` scores ``z``.
        classes: ``(B, k)`` int64 class of each source.
        active: ``(B, k)`` bool, which sources are mixed in (weight > 0).

    Returns:
        ``(B, k)`` log-probabilities in the logits' (float32 or wider) dtype.
    """
    work = logits.to(torch.promote_types(logits.dtype, torch.float32))
    classes = classes.to(logits.device)
    present = torch.zeros_like(work).scatter_add_(1, classes, active.to(work)) > 0  # (B, K)
    own = F.one_hot(classes, work.shape[1]).bool()  # (B, k, K)
    removed = present.unsqueeze(1) & ~own
    denom = torch.logsumexp(work.unsqueeze(1).masked_fill(removed, float("-inf")), dim=2)
    return work.gather(1, classes) - denom


def decoupled_regularizer(
    logits: Tensor, target: MixTarget | Tensor, *, lam_power: float = 0.0, reduction: str = "mean"
) -> Tensor:
    """DecoupleMix's regulariser: ``sum_c w_c * (-log phi_c)`` over each row's mixed classes.

    Each distinct class ``c`` among a row's sources of positive weight contributes once (the
    paper's two-hot ``y_[a,b]``, multi-hot for k sources), with the other mixed classes removed
    from its softmax denominator (:func:`decoupled_log_softmax`). ``w_c = lam_c ** lam_power``,
    ``lam_c`` the row's total weight on class ``c``: 1 with the paper's ``lam_power = 0``;
    ``lam_power = 1`` is OpenMixup's CIFAR setting (``lam_scale_mode='pow', lam_idx=1``). Rows
    with a single mixed class (unmixed, or paired within a class) get no term, as in OpenMixup.

    Args:
        logits: ``(B, K)`` scores.
        target: a :class:`MixTarget` (any k); integer or soft labels count as unmixed.
        lam_power: exponent of the class weight in the regulariser (>= 0).
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (``(B,)``).
    """
    t = _check(logits, target, reduction, 0.0)
    lam_power = _nonneg(lam_power, "lam_power")
    weight = t.weight.to(logits.device)
    active = weight > 0
    classes = source_classes(t.to(logits.device))
    same = classes.unsqueeze(2) == classes.unsqueeze(1)  # (B, k, k)
    earlier = torch.ones(t.k, t.k, dtype=torch.bool, device=logits.device).tril(-1)
    first = active & ~(same & earlier & active.unsqueeze(1)).any(dim=2)  # first active source of its class
    mixed = first.sum(dim=1, keepdim=True) >= 2
    class_weight = (same.to(weight) * weight.unsqueeze(1)).sum(dim=2)  # (B, k) total weight of c_s
    nll = -decoupled_log_softmax(logits, classes, active)
    w = (first & mixed).to(nll) * class_weight.to(nll).clamp_min(0).pow(lam_power)
    return _reduce((w * nll).sum(dim=1), reduction)


def decoupled_mixup_loss(
    logits: Tensor, target: MixTarget | Tensor, eta: float = 0.1, *, lam_power: float = 0.0,
    criterion: Criterion = mixup_cross_entropy,
) -> Tensor:
    """Decoupled Mixup loss: ``criterion(logits, target) + eta * decoupled_regularizer``.

    With the default criterion (mixup cross-entropy) this is the paper's ``L_MCE + eta * L_DM``;
    it is plain mixup cross-entropy at ``eta = 0`` and on unmixed rows.

    Example:
        >>> logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 2.0]])
        >>> t = MixTarget.pair(torch.tensor([0, 1]), torch.tensor([1, 0]), torch.tensor([0.6, 0.6]))
        >>> bool(torch.isclose(decoupled_mixup_loss(logits, t, eta=0.0), mixup_cross_entropy(logits, t)))
        True
    """
    eta = _nonneg(eta, "eta")
    loss = criterion(logits, target)
    if eta == 0:
        return loss
    return loss + eta * decoupled_regularizer(logits, target, lam_power=lam_power)


@register(
    "decouplemix",
    family="label",
    paper="Harnessing Hard Mixed Samples with Decoupled Regularizer",
    authors="Liu et al.",
    venue="NeurIPS 2023",
    year=2023,
    code="https://github.com/Westlake-AI/openmixup/blob/main/openmixup/models/losses/cross_entropy_loss.py",
    sources="k",
    summary="Mixup CE plus eta times a CE whose softmax leaves out the other mixed classes.",
)
class DecoupleMix(LabelPolicy):
    """DecoupleMix (Decoupled Mixup): ``L = L_MCE + eta * sum_c -log phi_c(z)``.

    ``phi_c`` is the softmax without the other mixed class(es) in its denominator, so each
    mixed class is pushed up on its own; the sum runs over each row's distinct mixed classes
    (two-hot; multi-hot for k-source policies such as RICAP, the other k - 1 classes removed).
    The paper's form (two-hot, constant ``eta``) is the default; ``lam_power = 1`` weights each
    class by its label weight as OpenMixup's CIFAR configs do. As OpenMixup's
    ``soft_mix_cross_entropy``, rows with one class (same-class pairs, unmixed) get plain
    mixup CE; unlike it, weights follow each sample's own classes (OpenMixup reads lambda from
    row 0 and pairs its eta list with classes in index order), and its "less"/"more" modes are
    not offered. Soft input labels use each source's argmax. The mixup CE part is the engine's
    criterion (label smoothing applies to it); the regulariser uses the hard classes.

    Args:
        method, method_args, p, mode, num_classes: the sample policy (Mixup by default) and
            its options, as for :class:`~mixkit.label_policy.LabelPolicy`.
        eta: weight of the decoupled regulariser (the paper's 0.1 on CIFAR).
        lam_power: class weight ``lam_c ** lam_power`` in the regulariser (0: the paper's two-hot).

    Example:
        >>> import torch, mixkit
        >>> dm = mixkit.create("decouplemix", method="cutmix", num_classes=3)
        >>> t = MixTarget.pair(torch.tensor([0, 1]), torch.tensor([1, 0]), torch.tensor([0.7, 0.7]))
        >>> loss = dm.loss(torch.zeros(2, 3), t, mixkit.mixup_cross_entropy)
        >>> round(float(loss), 4)  # log 3 + 0.1 * 2 * log 2
        1.2372
    """

    def __init__(
        self,
        *,
        method: MixMethod | str = "mixup",
        method_args: dict[str, Any] | None = None,
        p: float | None = None,
        mode: str | None = None,
        num_classes: int | None = None,
        eta: float = 0.1,
        lam_power: float = 0.0,
    ) -> None:
        super().__init__(method=method, method_args=method_args, p=p, mode=mode, num_classes=num_classes)
        self.eta = _nonneg(eta, "eta")
        self.lam_power = _nonneg(lam_power, "lam_power")

    def loss(self, logits: Tensor, target: MixTarget, criterion: Criterion) -> Tensor:
        return decoupled_mixup_loss(logits, target, self.eta, lam_power=self.lam_power, criterion=criterion)


# ---------------------------------------------------------------------------------- MixupE
def _dense_labels(y: Tensor, logits: Tensor) -> Tensor:
    check_labels(y, logits.shape[0], logits.shape[1], name="y")
    if y.ndim == 2:
        return y.to(device=logits.device, dtype=logits.dtype)
    return F.one_hot(y.long().to(logits.device), logits.shape[1]).to(logits.dtype)


def mixupe_term(clean_logits: Tensor, y: Tensor, *, threshold: float = 1.0, reduction: str = "mean") -> Tensor:
    """MixupE's first-order term on CLEAN logits: ``r_n = f(x_n) . (y_n - softmax(f(x_n)))``.

    As the official code's recommended version 3: only samples with ``r_n < threshold`` count
    (the mask is not differentiated), the gradient flows through both ``f`` and the softmax,
    and ``"mean"`` sums the kept ``r_n`` and divides by the whole batch size.

    Args:
        clean_logits: ``(B, K)`` the model's output on the unmixed batch.
        y: integer labels ``(B,)`` or soft labels ``(B, K)``.
        threshold: samples with ``r_n >= threshold`` are left out (``inf``: version 4, none).
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (``(B,)``, zeros where left out).
    """
    if clean_logits.ndim != 2:
        raise ShapeError(f"clean_logits must have shape (B, K), got {tuple(clean_logits.shape)}")
    f = clean_logits.to(torch.promote_types(clean_logits.dtype, torch.float32))
    r = (f * (_dense_labels(y, f) - torch.softmax(f, dim=1))).sum(dim=1)
    r = torch.where(r.detach() < threshold, r, torch.zeros_like(r))
    return _reduce(r, reduction)


def mixupe_loss(
    mixed_loss: Tensor, clean_logits: Tensor, y: Tensor, *, eta: float = 0.001, alpha: float = 2.0,
    threshold: float = 1.0,
) -> Tensor:
    """MixupE's loss: ``L = L_mix - eta * (1 - lam_bar) * mixupe_term``, rescaled to ``|L_mix|``.

    ``lam_bar = (alpha + 1) / (2 alpha + 1)`` is the mean of Beta(alpha + 1, alpha). As the
    official code, ``L`` is multiplied by ``|L_mix| / |L|`` (both detached): the value stays
    that of the mixup loss and only the gradient's direction changes. ``eta = 0`` gives
    ``L_mix`` exactly.

    Args:
        mixed_loss: the scalar mixup loss on the mixed batch.
        clean_logits: ``(B, K)`` the model's output on the unmixed batch.
        y: integer labels ``(B,)`` or soft labels ``(B, K)`` of the unmixed batch.
        eta: weight of the term (the official CIFAR-100 command's 0.001).
        alpha: the mixup's Beta concentration, for ``lam_bar``.
        threshold: see :func:`mixupe_term`.
    """
    eta, alpha = _nonneg(eta, "eta"), check_alpha(alpha)
    if eta == 0:
        return mixed_loss
    lam_bar = (alpha + 1.0) / (2.0 * alpha + 1.0)
    term = (1.0 - lam_bar) * mixupe_term(clean_logits, y, threshold=threshold)
    total = mixed_loss - eta * term
    scale = mixed_loss.detach().abs() / total.detach().abs().clamp_min(torch.finfo(total.dtype).tiny)
    return scale * total


@register(
    "mixupe",
    family="label",
    paper="MixupE: Understanding and Improving Mixup from Directional Derivative Perspective",
    authors="Zou et al.",
    venue="UAI 2023",
    year=2023,
    code="https://github.com/oneHuster/MixupE",
    sources="k",
    summary="Mixup loss minus eta times a first-order directional term on clean logits, rescaled.",
)
class MixupE(LabelPolicy):
    """MixupE: mixup loss with an extra first-order term on the clean batch (version 3).

    Each step runs the wrapped method's training step (the mixup loss ``L_mix``), then a clean
    forward ``f = model(x)`` and :func:`mixupe_loss`: ``L = L_mix - eta (1 - lam_bar) mean_n
    r_n 1[r_n < tau]`` with ``r_n = f_n . (y_n - softmax(f_n))``, rescaled by ``|L_mix| / |L|``.
    This is the official code's recommended "version 3" (``--mixupe_version 3``), with its
    README's CIFAR-100 settings eta = 0.001, tau = 1.0; that run uses Mixup with alpha = 2.0
    (pass ``alpha=2.0``; the policy does not impose it). ``lam_bar = (alpha + 1) / (2 alpha +
    1)`` needs the mixup's alpha: the wrapped method's ``alpha`` unless given.
    The clean forward runs in the model's current (training) mode after the mixed one, as in
    the official code, so BatchNorm sees both batches. The logged ``mixupe_term`` is the
    unweighted mean ``r`` term.

    Args:
        method, method_args, p, mode, num_classes: the sample policy (Mixup by default) and
            its options, as for :class:`~mixkit.label_policy.LabelPolicy`.
        eta: weight of the term.
        threshold: tau, samples with ``r_n >= tau`` are left out.
        alpha: the mixup's Beta concentration: passed to ``method`` when given by name (like
            ``p``) and used for ``lam_bar`` (None: the wrapped method's own ``alpha``).

    Example:
        >>> import torch, mixkit
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
        >>> x, y = torch.rand(4, 3, 2, 2), torch.tensor([0, 1, 2, 0])
        >>> out = mixkit.create("mixupe", num_classes=3).train_step(
        ...     net, x, y, criterion=mixkit.mixup_cross_entropy, generator=torch.Generator().manual_seed(0))
        >>> out.loss.shape, "mixupe_term" in out.logs
        (torch.Size([]), True)
    """

    def __init__(
        self,
        *,
        method: MixMethod | str = "mixup",
        method_args: dict[str, Any] | None = None,
        p: float | None = None,
        mode: str | None = None,
        num_classes: int | None = None,
        eta: float = 0.001,
        threshold: float = 1.0,
        alpha: float | None = None,
    ) -> None:
        args = _with_alpha(method, method_args, alpha)
        super().__init__(method=method, method_args=args, p=p, mode=mode, num_classes=num_classes)
        self.method_args = dict(method_args) if method_args else None  # as given
        self.eta = _nonneg(eta, "eta")
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or math.isnan(threshold):
            raise HyperParameterError(f"threshold must be a number, got {threshold!r}")
        self.threshold = float(threshold)
        self.alpha = None if alpha is None else check_alpha(alpha)
        self.lam_alpha = self._resolve_alpha()

    def _resolve_alpha(self) -> float:
        inner_alpha = getattr(self.inner, "alpha", None)
        has_alpha = isinstance(inner_alpha, (int, float)) and not isinstance(inner_alpha, bool)
        if has_alpha and (self.alpha is None or isinstance(self.method, str)):
            return check_alpha(inner_alpha)  # the alpha the mixing really uses
        if self.alpha is not None:
            return self.alpha  # a method object: alpha sets lam_bar only
        raise HyperParameterError(
            f"MixupE needs the mixup's Beta alpha for lam_bar, and {type(self.inner).__name__} has no "
            "scalar 'alpha': pass alpha=... (CLI: --label-arg alpha=...)"
        )

    def train_step(
        self, model: nn.Module, x: Tensor, y: Tensor, *, criterion: Criterion, generator: torch.Generator | None = None
    ) -> StepOutput:
        """The wrapped method's step (``L_mix``), a clean forward, then :func:`mixupe_loss`."""
        seen: list[Tensor] = []

        def mix_criterion(logits: Tensor, target: MixTarget) -> Tensor:
            seen.append(criterion(logits, target))
            return seen[-1]

        out = self.inner.train_step(model, x, y, criterion=mix_criterion, generator=generator)
        clean = model(x)
        mixed_loss = seen[-1]  # a method's own extra losses (a mixer's) stay outside the rescaling
        loss = out.loss - mixed_loss + mixupe_loss(
            mixed_loss, clean, y, eta=self.eta, alpha=self.lam_alpha, threshold=self.threshold
        )
        term = float(mixupe_term(clean.detach(), y, threshold=self.threshold))
        return StepOutput(loss=loss, logits=out.logits, target=out.target, logs={**out.logs, "mixupe_term": term})


# -------------------------------------------------------------------------------- RegMixup


#: ``RegMixup`` and ``regmixup_loss`` moved to :mod:`mixkit.methods.regmixup`; still importable from here.
__getattr__ = moved_names(__name__, dict.fromkeys(("RegMixup", "regmixup_loss"), "mixkit.methods.regmixup"))
