"""LUMix: label weights mixed from the sample policy's lambda, the model's prediction and noise.

Paper: Sun et al., "LUMix: Improving Mixup by Better Modelling Label Uncertainty", ICASSP 2024
(arXiv 2211.15846). The official repository (github.com/kevin-ssy/LUMix) holds no code.

**Unverified details.** The paper's body could not be read here (only its abstract); the
structure below is the one the seed survey reports for it: ``lam = lam_0 (1 - r_s - r_r) +
lam_s r_s + lam_r r_r`` with ``lam_0`` the sample policy's lambda, ``lam_s = p_A / (p_A + p_B)``
from the softmax of the model on the mixed image and ``lam_r ~ Beta(a, a)`` (the survey prints
``+ lam_r`` without ``r_r``, which would leave [0, 1]; the ``r_r`` weight is taken as meant).
The values of ``r_s``, ``r_r`` and ``a`` are NOT from the paper: 0.1, 0.1 and a = 1 (uniform
noise, as the survey's wording "sampled from a uniform distribution" suggests) are this
library's choice.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from mixkit import rng
from mixkit._device import upload
from mixkit.base import MixMethod
from mixkit.errors import HyperParameterError, ShapeError
from mixkit.label_policy import Criterion, LabelPolicy
from mixkit.losses import as_target, mixup_cross_entropy
from mixkit.methods.label_losses import source_classes
from mixkit.registry import register
from mixkit.types import MixTarget, StepOutput
from mixkit.validation import check_alpha, check_range

__all__ = ["LUMix", "lumix_loss", "lumix_noise", "lumix_target"]


def _check_ratios(r_s: float, r_r: float) -> tuple[float, float]:
    r_s, r_r = check_range(r_s, 0.0, 1.0, "r_s"), check_range(r_r, 0.0, 1.0, "r_r")
    if r_s + r_r > 1.0:
        raise HyperParameterError(f"r_s + r_r must be <= 1, got {r_s} + {r_r}")
    return r_s, r_r


def lumix_noise(b: int, k: int, a: float = 1.0, *, generator: torch.Generator | None = None) -> Tensor:
    """``(B, k)`` random label weights: Dirichlet(a, ..., a) rows (k = 2: ``(lam_r, 1 - lam_r)``,
    ``lam_r ~ Beta(a, a)``), float64 on the CPU."""
    if k == 1:
        return torch.ones(b, 1, dtype=torch.float64)
    return rng.dirichlet((b,), [check_alpha(a, "a")] * k, generator=generator)


def lumix_target(target: MixTarget, probs: Tensor, noise: Tensor, *, r_s: float = 0.1, r_r: float = 0.1) -> MixTarget:
    """The relabelled target: ``w' = w (1 - r_s - r_r) + S (r_s w_s + r_r w_r)`` per row.

    ``w`` are the target's weights and ``S`` their row sum (1 for normalised policies);
    ``w_s[b, s] = p[b, c_s] / sum_t p[b, c_t]`` with ``p`` the prediction and ``c_s`` the class of
    source ``s`` (``p_A / (p_A + p_B)`` for two sources); ``w_r`` the noise. Only sources with
    positive weight take part (the others stay at 0), so an unmixed row keeps its label.

    Args:
        target: the sample policy's :class:`MixTarget` (any k).
        probs: ``(B, K)`` the model's (detached) softmax on the mixed batch.
        noise: ``(B, k)`` non-negative rows, e.g. from :func:`lumix_noise`.
        r_s: share of the prediction-based weights.
        r_r: share of the random weights.
    """
    r_s, r_r = _check_ratios(r_s, r_r)
    w = target.weight
    if probs.ndim != 2 or probs.shape[0] != w.shape[0] or noise.shape != w.shape:
        raise ShapeError(f"probs must be (B, K) and noise (B, k) for weights {tuple(w.shape)}, got "
                         f"{tuple(probs.shape)} and {tuple(noise.shape)}")
    active = (w > 0).to(w.dtype)
    classes = source_classes(target).to(probs.device)
    p_src = probs.detach().gather(1, classes).to(device=w.device, dtype=w.dtype) * active
    n_src = upload(noise, w.device, w.dtype) * active

    def normalised(v: Tensor) -> Tensor:  # rows with no mass fall back to the target's own weights
        tiny = torch.finfo(w.dtype).tiny
        total = v.sum(dim=1, keepdim=True)
        return torch.where(total > 0, v / total.clamp_min(tiny), w / w.sum(1, keepdim=True).clamp_min(tiny))

    scale = w.sum(dim=1, keepdim=True)
    new = w * (1.0 - r_s - r_r) + scale * (r_s * normalised(p_src) + r_r * normalised(n_src))
    return MixTarget(target.labels, target.index, new, target.num_classes)


def lumix_loss(
    logits: Tensor,
    target: MixTarget | Tensor,
    noise: Tensor,
    *,
    r_s: float = 0.1,
    r_r: float = 0.1,
    probs: Tensor | None = None,
    criterion: Criterion = mixup_cross_entropy,
) -> Tensor:
    """``criterion(logits, lumix_target(target, probs, noise))``; plain mixup CE at r_s = r_r = 0.

    Args:
        logits: ``(B, K)`` the model's output on the mixed batch.
        target: the mixed batch's :class:`MixTarget` (plain labels count as unmixed).
        noise: ``(B, k)`` random weights (:func:`lumix_noise`).
        r_s: share of the prediction-based weights.
        r_r: share of the random weights.
        probs: the prediction to use (None: ``softmax(logits)``, detached).
        criterion: ``criterion(logits, target)``, mixup cross-entropy by default.

    Example:
        >>> logits = torch.tensor([[2.0, 0.0], [2.0, 0.0]])
        >>> t = MixTarget.pair(torch.tensor([0, 1]), torch.tensor([1, 0]), torch.tensor([0.5, 0.5]))
        >>> noise = torch.full((2, 2), 0.5)
        >>> new = lumix_target(t, torch.softmax(logits, 1), noise, r_s=1.0, r_r=0.0)
        >>> round(float(new.weight[0, 0]), 4)  # p_A / (p_A + p_B) = e^2 / (e^2 + 1)
        0.8808
        >>> bool(lumix_loss(logits, t, noise, r_s=0.0, r_r=0.0) == mixup_cross_entropy(logits, t))
        True
    """
    t = as_target(target, logits.shape[1])
    if probs is None:
        probs = torch.softmax(logits.detach().to(torch.promote_types(logits.dtype, torch.float32)), dim=1)
    return criterion(logits, lumix_target(t, probs, noise, r_s=r_s, r_r=r_r))


@register(
    "lumix",
    family="label",
    paper="LUMix: Improving Mixup by Better Modelling Label Uncertainty",
    authors="Sun et al.",
    venue="ICASSP 2024",
    year=2024,
    code="https://github.com/kevin-ssy/LUMix",
    sources="k",
    summary="Label weight mixed from lambda, the model's prediction on the mix and random noise.",
)
class LUMix(LabelPolicy):
    """LUMix: relabel each mixed sample from its lambda, the model's prediction and noise.

    **Unverified: see the module docstring.** The structure ``lam = lam_0 (1 - r_s - r_r) +
    lam_s r_s + lam_r r_r`` is the one the seed survey reports; ``r_s = r_r = 0.1`` and the
    uniform noise (``a = 1``) are this library's choice, not the paper's (its text and code
    were not available). ``lam_0`` is the wrapped method's lambda (any method, any k);
    ``lam_s = p_A / (p_A + p_B)`` from the model's softmax on the mixed batch (the same
    forward, detached); ``lam_r ~ Beta(a, a)``, one per sample (Dirichlet for k sources). The
    loss is the engine's criterion on the relabelled target; unmixed rows are left alone.

    Args:
        method, method_args, p, mode, num_classes: the sample policy (Mixup by default) and
            its options, as for :class:`~mixkit.label_policy.LabelPolicy`.
        r_s: share of the prediction-based weight (0: none).
        r_r: share of the random weight (0: none).
        a: concentration of the noise's Beta (Dirichlet) distribution.

    Example:
        >>> import torch, mixkit
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
        >>> out = mixkit.create("lumix", method="cutmix", num_classes=3).train_step(
        ...     net, torch.rand(4, 3, 2, 2), torch.tensor([0, 1, 2, 0]),
        ...     criterion=mixkit.mixup_cross_entropy, generator=torch.Generator().manual_seed(0))
        >>> bool(torch.allclose(out.target.weight.sum(dim=1), torch.ones(4)))
        True
    """

    def __init__(
        self,
        *,
        method: MixMethod | str = "mixup",
        method_args: dict[str, Any] | None = None,
        p: float | None = None,
        mode: str | None = None,
        num_classes: int | None = None,
        r_s: float = 0.1,
        r_r: float = 0.1,
        a: float = 1.0,
    ) -> None:
        super().__init__(method=method, method_args=method_args, p=p, mode=mode, num_classes=num_classes)
        self.r_s, self.r_r = _check_ratios(r_s, r_r)
        self.a = check_alpha(a, "a")

    def relabel(self, logits: Tensor, target: MixTarget, generator: torch.Generator | None = None) -> MixTarget:
        """The LUMix target of a mixed batch, from its logits (noise drawn with ``generator``)."""
        noise = lumix_noise(target.index.shape[0], target.k, self.a, generator=generator)
        probs = torch.softmax(logits.detach().to(torch.promote_types(logits.dtype, torch.float32)), dim=1)
        return lumix_target(target, probs, noise, r_s=self.r_s, r_r=self.r_r)

    def loss(self, logits: Tensor, target: MixTarget, criterion: Criterion) -> Tensor:
        """The criterion on the relabelled target (noise from torch's global generator)."""
        return criterion(logits, self.relabel(logits, target))

    def train_step(
        self, model: nn.Module, x: Tensor, y: Tensor, *, criterion: Criterion, generator: torch.Generator | None = None
    ) -> StepOutput:
        """The wrapped method's step with the relabelled target (noise drawn after its draws)."""
        relabelled: list[MixTarget] = []

        def policy_criterion(logits: Tensor, target: MixTarget) -> Tensor:
            relabelled.append(self.relabel(logits, target, generator))
            return criterion(logits, relabelled[-1])

        out = self.inner.train_step(model, x, y, criterion=policy_criterion, generator=generator)
        return StepOutput(loss=out.loss, logits=out.logits, target=relabelled[-1], logs=out.logs)
