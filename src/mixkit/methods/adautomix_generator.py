"""AdAutoMix's mask generator and its losses: plain modules and functions.

Behind :mod:`mixkit.methods.adautomix`. Papers and reference code:
    * Qin, Jin, Jiang, El-Yacoubi, Gao, "Adversarial AutoMixup", ICLR 2024, arXiv 2312.11954
      (official code: github.com/JinXins/Adversarial-AutoMixup, merged into OpenMixup,
      github.com/Westlake-AI/openmixup: ``openmixup/models/classifiers/adautomix.py`` class
      ``AdAutoMix`` and ``openmixup/models/heads/adaptive_mask.py`` class ``AdaptiveMask``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mixkit._device import upload
from mixkit.errors import HyperParameterError
from mixkit.methods.automix import build_mixer_convs, upsample
from mixkit.validation import (
    check_range,
)

__all__ = ["AdaptiveMaskGenerator", "adversarial_generator_loss", "blend_sources", "cosine_consistency"]


class AdaptiveMaskGenerator(nn.Module):
    """AdAutoMix's generator: one mask per source, normalised across the N sources.

    For a row mixing sources ``n = 1..N`` with features ``z_n`` ``(C, h, w)`` (rows
    ``sources[:, n]`` of the EMA encoder's stage output) and ratios ``lam_n``, each ``z_n`` gets
    lambda as a constant channel (``lam_concat``, the paper's lambda input and
    ``AdaptiveMask``'s default; the CIFAR configs leave it out), then separate 1x1 convs give
    ``q_n``, ``k_n`` (C(+1) -> C/r) and ``v_n`` (C(+1) -> 1). Source n attends to all the
    others: ``A_n = softmax_row(sum_{n' != n} q_n^T k_{n'} / sqrt(C/r))`` ``(hw, hw)`` (for N = 2
    the reference's pairwise cross-attention), its mask logits are ``m_n = A_n v_n`` and
    ``M = softmax_n(Upsample(m))`` ``(B, N, H, W)``: every pixel's weights sum to 1.

    Args:
        in_channels: channels ``C`` of the feature map.
        reduction: channel reduction ``r`` of the query/key embedding.
        lam_concat: append each source's lambda as a channel.
        upsample: ``"bilinear"`` (the CIFAR configs'), ``"nearest"`` or ``"bicubic"``.
        generator: CPU generator for the initial weights (``normal(0, 0.01)``, zero bias).

    Example:
        >>> gen = AdaptiveMaskGenerator(8)
        >>> z = torch.randn(4, 8, 2, 2)
        >>> sources = torch.tensor([[0, 1, 2], [1, 2, 3], [2, 3, 0], [3, 0, 1]])
        >>> masks = gen(z, sources, torch.full((4, 3), 1 / 3), (8, 8))
        >>> masks.shape, torch.allclose(masks.sum(dim=1), torch.ones(4, 8, 8))
        (torch.Size([4, 3, 8, 8]), True)
    """

    def __init__(
        self,
        in_channels: int,
        *,
        reduction: int = 2,
        lam_concat: bool = True,
        upsample: str = "bilinear",
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        build_mixer_convs(self, in_channels, reduction=reduction, lam_concat=lam_concat, upsample=upsample, key=True,
                          generator=generator)

    def extra_repr(self) -> str:
        return f"lam_concat={self.lam_concat}, upsample={self.upsample!r}"

    def mask_logits(self, z: Tensor, sources: Tensor, weights: Tensor) -> Tensor:
        """``(B, N, h, w)`` mask logits of each source at the feature resolution."""
        if z.dim() != 4 or z.shape[1] != self.in_channels:
            raise HyperParameterError(
                f"AdaptiveMaskGenerator expects features (B, {self.in_channels}, h, w), got {tuple(z.shape)}"
            )
        if sources.dim() != 2 or sources.shape != weights.shape or sources.shape[0] != z.shape[0]:
            raise HyperParameterError(
                f"sources and weights must both be (B, N) with B = {z.shape[0]}, "
                f"got {tuple(sources.shape)} and {tuple(weights.shape)}"
            )
        z = z.to(self.query.weight.dtype)
        b, n = sources.shape
        h, w = z.shape[-2:]
        f = z.index_select(0, sources.reshape(-1).to(z.device))  # (B*N, C, h, w)
        if self.lam_concat:
            f = torch.cat([f, weights.reshape(-1, 1, 1, 1).to(f).expand(-1, 1, h, w)], dim=1)
        q = self.query(f).view(b, n, self.inter_channels, h * w)
        k = self.key(f).view(b, n, self.inter_channels, h * w)
        v = self.value(f).view(b, n, h * w)
        k_others = k.sum(dim=1, keepdim=True) - k  # sum over the other sources
        scores = torch.einsum("bndp,bndq->bnpq", q, k_others) / math.sqrt(self.inter_channels)
        attn = torch.softmax(scores, dim=-1)  # (B, N, hw, hw)
        return torch.einsum("bnpq,bnq->bnp", attn, v).view(b, n, h, w)

    def forward(self, z: Tensor, sources: Tensor, weights: Tensor, size: Sequence[int]) -> Tensor:
        """The masks of the N sources of every row.

        Args:
            z: ``(B, C, h, w)`` features of the batch.
            sources: ``(B, N)`` int64 rows each mixed sample draws from.
            weights: ``(B, N)`` mixing ratios (lambda of each source).
            size: the input's spatial size ``(H, W)``.

        Returns:
            ``(B, N, H, W)`` masks in (0, 1) summing to 1 over N, in the generator's dtype.
        """
        return torch.softmax(upsample(self.mask_logits(z, sources, weights), size, self.upsample), dim=1)


def blend_sources(x: Tensor, sources: Tensor, masks: Tensor) -> Tensor:
    """``sum_n masks[:, n] * x[sources[:, n]]``: the N-source mix ``(B, C, H, W)``.

    Args:
        x: ``(B, C, H, W)`` batch.
        sources: ``(B, N)`` int64 rows.
        masks: ``(B, N, H, W)`` (or ``(B, N, 1, 1)`` for constant ratios) weights.
    """
    out = None
    for n in range(sources.shape[1]):
        term = x.index_select(0, upload(sources[:, n], x.device)) * masks[:, n : n + 1].to(x)
        out = term if out is None else out + term
    return out


def cosine_consistency(mix_logits: Tensor, source_logits: Tensor, weights: Tensor) -> Tensor:
    """``mean_b sum_n lam_bn cos(f(x~_b), f(x_{s_bn}))``: how much the mix keeps its sources.

    Args:
        mix_logits: ``(B, K)`` teacher output on the mixed batch.
        source_logits: ``(B, N, K)`` teacher output on each row's sources.
        weights: ``(B, N)`` mixing ratios.

    Returns:
        A scalar in [-1, 1].
    """
    cos = F.cosine_similarity(mix_logits.unsqueeze(1), source_logits, dim=-1)  # (B, N)
    return (cos * weights.to(cos)).sum(dim=1).mean()


def adversarial_generator_loss(mix_ce: Tensor, consistency: Tensor, beta: float = 0.3) -> Tensor:
    """The generator's loss on an adversarial step: ``-beta * L_amce + (1 - beta) * (1 - cos)``.

    Minimising it makes the mix hard for the EMA teacher (its mixup cross-entropy goes up)
    while keeping its prediction close to its sources' (the cosine consistency goes up), the
    paper's stated aim of the cosine term ("to prevent the collapse of the inherent meanings of
    images", the abstract). The official code adds ``+ (1 - beta) * cos``, which lowers the
    similarity; the gradient here is that of ``-(1 - beta) * cos`` (the 1 keeps the term >= 0).

    Args:
        mix_ce: the teacher's mixup cross-entropy on the generated mix.
        consistency: :func:`cosine_consistency` of the same mix.
        beta: ``beta_radio``, the weight of the adversarial term (0.3 on CIFAR).
    """
    beta = check_range(beta, 0.0, 1.0, "beta")
    return -beta * mix_ce + (1.0 - beta) * (1.0 - consistency)
