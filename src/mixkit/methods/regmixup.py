"""RegMixup: the mixup loss added to the clean cross-entropy, as a regulariser.

Paper and reference code:
    * Pinto et al., "RegMixup: Mixup as a Regularizer Can Surprisingly Improve Accuracy and Out
      Distribution Robustness", NeurIPS 2022 (arXiv 2206.14502; github.com/FrancescoPinto/RegMixup).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from mixkit.base import MixMethod
from mixkit.errors import HyperParameterError
from mixkit.label_policy import Criterion, LabelPolicy
from mixkit.losses import mixup_cross_entropy
from mixkit.methods.label_losses import _nonneg, _with_alpha
from mixkit.registry import register
from mixkit.types import MixTarget, StepOutput
from mixkit.validation import check_alpha

__all__ = ["RegMixup", "regmixup_loss"]


def regmixup_loss(
    clean_logits: Tensor, y: Tensor, mixed_logits: Tensor, target: MixTarget, *, eta: float = 1.0,
    criterion: Criterion = mixup_cross_entropy,
) -> Tensor:
    """RegMixup's loss ``(CE(f(x), y) + eta * MCE(f(x~), target)) / (1 + eta)``.

    The paper writes ``CE + eta * MCE``; the official code averages cross-entropy over the
    concatenated ``[x; x~]`` batch, which is that sum halved at its eta = 1. Dividing by
    ``1 + eta`` keeps both: the code's value at eta = 1 and plain CE at eta = 0.

    Args:
        clean_logits: ``(B, K)`` output on the unmixed batch.
        y: its integer labels ``(B,)`` or soft labels ``(B, K)``.
        mixed_logits: ``(B', K)`` output on the mixed batch.
        target: the mixed batch's :class:`MixTarget`.
        eta: weight of the mixup term.
        criterion: ``criterion(logits, target)``, mixup cross-entropy by default.
    """
    eta = _nonneg(eta, "eta")
    ce = criterion(clean_logits, MixTarget.unmixed(y, clean_logits.shape[1]))
    if eta == 0:
        return ce
    return (ce + eta * criterion(mixed_logits, target)) / (1.0 + eta)


def _stacked_target(target: MixTarget) -> MixTarget:
    """The ``2B``-row target of ``[x; x~]``: each clean row its own label, then ``target``."""
    b, k = target.index.shape
    own = torch.arange(b, device=target.index.device).unsqueeze(1).expand(b, k)
    first = torch.zeros_like(target.weight)
    first[:, 0] = target.weight.sum(dim=1)
    index, weight = torch.cat([own, target.index]), torch.cat([first, target.weight])
    return MixTarget(target.labels, index, weight, target.num_classes)


@register(
    "regmixup",
    family="label",
    paper="RegMixup: Mixup as a Regularizer Can Surprisingly Improve Accuracy and Out Distribution Robustness",
    authors="Pinto et al.",
    venue="NeurIPS 2022",
    year=2022,
    code="https://github.com/FrancescoPinto/RegMixup",
    sources="k",
    summary="Clean cross-entropy plus eta times mixup cross-entropy on the same batch.",
)
class RegMixup(LabelPolicy):
    """RegMixup: cross-entropy on the clean batch plus mixup CE as a regulariser.

    The loss is :func:`regmixup_loss`, ``(CE(f(x), y) + eta * MCE(f(x~), y~)) / (1 + eta)``
    (the paper's ``CE + eta * MCE`` over ``1 + eta``; exactly the official code's value at
    eta = 1). As the official code, input-space methods run ONE forward on ``[x; x~]`` (so
    BatchNorm normalises both halves together); methods with their own training step
    (feature-level, model-aware) run it for ``x~`` and a separate clean forward. The paper
    needs a large alpha (lambda near 0.5): named Mixup defaults to the official default
    alpha = 20 (its CIFAR-100 commands use 10: ``alpha=10``); other methods and method
    objects keep their own settings unless ``alpha`` is given.
    The returned logits and target cover all ``2B`` rows.

    Args:
        method, method_args, p, mode, num_classes: the sample policy (Mixup by default) and
            its options, as for :class:`~mixkit.label_policy.LabelPolicy`.
        eta: weight of the mixup term (the paper's 1).
        alpha: the method's Beta alpha when given by name (``method_args["alpha"]`` wins;
            None: 20 for ``"mixup"``, the method's default otherwise).

    Example:
        >>> import torch, mixkit
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
        >>> rm = mixkit.create("regmixup", num_classes=3)
        >>> out = rm.train_step(net, torch.rand(4, 3, 2, 2), torch.tensor([0, 1, 2, 0]),
        ...                     criterion=mixkit.mixup_cross_entropy)
        >>> rm.inner.alpha, out.logits.shape
        (20.0, torch.Size([8, 3]))
    """

    def __init__(
        self,
        *,
        method: MixMethod | str = "mixup",
        method_args: dict[str, Any] | None = None,
        p: float | None = None,
        mode: str | None = None,
        num_classes: int | None = None,
        eta: float = 1.0,
        alpha: float | None = None,
    ) -> None:
        if alpha is not None and not isinstance(method, str):
            raise HyperParameterError("alpha applies only when method is a registry name")
        self.alpha = None if alpha is None else check_alpha(alpha)
        args = _with_alpha(method, method_args, 20.0 if alpha is None and method == "mixup" else alpha)
        super().__init__(method=method, method_args=args, p=p, mode=mode, num_classes=num_classes)
        self.method_args = dict(method_args) if method_args else None  # as given
        self.eta = _nonneg(eta, "eta")

    def train_step(
        self, model: nn.Module, x: Tensor, y: Tensor, *, criterion: Criterion, generator: torch.Generator | None = None
    ) -> StepOutput:
        """Clean and mixed forwards (one concatenated forward for input-space methods)."""
        if type(self.inner).train_step is MixMethod.train_step:
            out = self.inner(x, y, generator=generator)
            logits = model(torch.cat([x, out.x]))
            clean, mixed, target = logits[: x.shape[0]], logits[x.shape[0]:], out.target
            loss, logs = regmixup_loss(clean, y, mixed, target, eta=self.eta, criterion=criterion), {}
        else:  # the method's own step for x~ (its extra losses, if any, keep their weight)
            share = self.eta / (1.0 + self.eta)
            step = self.inner.train_step(
                model, x, y, criterion=lambda z, t: share * criterion(z, t), generator=generator
            )
            clean, target, logs = model(x), step.target, step.logs
            logits = torch.cat([clean, step.logits])
            loss = criterion(clean, MixTarget.unmixed(y, clean.shape[1])) / (1.0 + self.eta) + step.loss
        return StepOutput(loss=loss, logits=logits, target=_stacked_target(target), logs=logs)
