"""Pure functions behind the learned-lambda label policies (AdaMixup, MetaMixUp).

Papers and reference code:
    * Guo, Mao, Zhang, "MixUp as Locally Linear Out-of-Manifold Regularization", AAAI 2019
      (github.com/SITE5039/AdaMixUp): the policy region ``[alpha, alpha + delta]`` from a
      three-way softmax, ``lam = alpha + u * delta`` with ``u ~ U(0, 1)``, and the intrusion
      loss (original samples are class 1, mixed samples class 0).
    * Mai, Hu, Chen, Shen, Shen, "MetaMixUp: Learning Adaptive Interpolation Policy of MixUp
      with Meta-Learning", IEEE TNNLS 2021 (arXiv 1908.10059): a lambda trained by gradients,
      which needs a blend that is differentiable in lambda.

Unlike :func:`mixkit.functional.blend` (which turns a lambda shared by the whole batch into a
Python float, and so cuts its gradient), :func:`lerp_blend` keeps lambda in the graph.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from mixkit import rng
from mixkit._device import upload
from mixkit.functional.blend import match_format

__all__ = ["lerp_blend", "policy_region", "region_lambda", "intrusion_loss", "truncated_normal"]

_HALF = (torch.float16, torch.bfloat16)


def lerp_blend(x: Tensor, index: Tensor, lam: Tensor) -> Tensor:
    """``lam * x + (1 - lam) * x[index]``, differentiable in ``x`` and in ``lam``.

    Half-precision inputs are blended in float32 and cast back; the memory format is kept.

    Args:
        x: ``(B, ...)`` float tensor.
        index: ``(B,)`` partner rows.
        lam: ``(B,)`` weight of each row's own sample (any float dtype, may require grad;
            exact at 0 and 1).

    Returns:
        The ``(B, ...)`` blend, ``x``'s dtype.

    Example:
        >>> lam = torch.tensor([0.25, 1.0], requires_grad=True)
        >>> out = lerp_blend(torch.tensor([[4.0], [8.0]]), torch.tensor([1, 0]), lam)
        >>> out.flatten().tolist(), out.sum().backward(), lam.grad.tolist()
        ([7.0, 8.0], None, [-4.0, 4.0])
    """
    work = x.float() if x.dtype in _HALF else x
    partner = work.index_select(0, upload(index, x.device))
    weight = upload(lam, x.device, work.dtype).view((lam.shape[0],) + (1,) * (x.ndim - 1))
    out = torch.lerp(partner, work, weight)  # exact at lam = 0 and lam = 1
    return match_format(out.to(x.dtype), x)


def policy_region(gate_logits: Tensor) -> tuple[Tensor, Tensor]:
    """AdaMixup's policy region: ``(alpha, delta)`` from a softmax over three outputs.

    The third softmax output is discarded (as the official code), so ``alpha >= 0``,
    ``delta >= 0`` and ``alpha + delta <= 1``: the region ``[alpha, alpha + delta]`` lies in [0, 1].

    Args:
        gate_logits: ``(N, 3)`` scores of the policy region generator.

    Returns:
        ``alpha (N,)`` and ``delta (N,)``.
    """
    if gate_logits.ndim != 2 or gate_logits.shape[1] != 3:
        raise ValueError(f"gate_logits must have shape (N, 3), got {tuple(gate_logits.shape)}")
    probs = torch.softmax(gate_logits.to(torch.promote_types(gate_logits.dtype, torch.float32)), dim=1)
    return probs[:, 0], probs[:, 1]


def region_lambda(alpha: Tensor, delta: Tensor, u: Tensor) -> Tensor:
    """``lam = alpha + u * delta``: the reparameterised draw from ``U(alpha, alpha + delta)``.

    Args:
        alpha: ``(N,)`` lower ends of the regions.
        delta: ``(N,)`` widths.
        u: ``(N,)`` draws from U(0, 1) (constants: the gradient flows to ``alpha``, ``delta``).
    """
    return alpha + upload(u, alpha.device, alpha.dtype) * delta


def intrusion_loss(logits: Tensor, original: Tensor, weight: Tensor | None = None) -> Tensor:
    """AdaMixup's intrusion loss: cross-entropy of the binary "original or mixed" classifier.

    ``L = sum_n w_n * CE(logits_n, 1[original_n]) / sum_n w_n`` (class 1 = an original
    sample on the data manifold, class 0 = a mixed one); unit weights give the mean, as the
    official code.

    Args:
        logits: ``(N, 2)`` scores of the intrusion discriminator.
        original: ``(N,)`` bool, True for original samples.
        weight: ``(N,)`` non-negative row weights (e.g. 0 for a sample that was not mixed).

    Returns:
        The scalar loss (0 when every weight is 0).
    """
    if logits.ndim != 2 or logits.shape[1] != 2 or original.shape != (logits.shape[0],):
        raise ValueError(f"logits must be (N, 2) and original (N,), got {tuple(logits.shape)} and {tuple(original.shape)}")
    work = logits.to(torch.promote_types(logits.dtype, torch.float32))
    ce = F.cross_entropy(work, original.to(device=logits.device, dtype=torch.long), reduction="none")
    if weight is None:
        return ce.mean()
    w = weight.to(device=logits.device, dtype=work.dtype)
    total = w.sum()
    return (ce * w).sum() / torch.where(total > 0, total, torch.ones_like(total))


def truncated_normal(size: tuple[int, ...], bound: float = 2.0, *, generator: torch.Generator | None = None) -> Tensor:
    """Float64 standard normal draws truncated to ``[-bound, bound]`` (TensorFlow's
    ``truncated_normal`` uses ``bound = 2``), by the inverse CDF of a uniform draw."""
    low = 0.5 * (1.0 + math.erf(-bound / math.sqrt(2.0)))
    u = rng.uniform(size, low, 1.0 - low, generator=generator)
    return math.sqrt(2.0) * torch.special.erfinv(2.0 * u - 1.0)
