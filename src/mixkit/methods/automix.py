"""AutoMix: a MixBlock learns the pixel mask of a two-sample mix, through a momentum pipeline.

Papers and reference code:
    * Liu, Li, Wu, Liu, Chen, Wu, Li, "AutoMix: Unveiling the Power of Mixup for Stronger
      Classifiers", ECCV 2022, arXiv 2103.13027 (official code: OpenMixup,
      github.com/Westlake-AI/openmixup, ``openmixup/models/classifiers/automix.py`` class
      ``AutoMixup`` and ``openmixup/models/heads/pmix_block.py`` class ``PixelMixBlock``).

The MixBlock is a plain ``nn.Module`` (:class:`MixBlock`) and its mask prior a plain function
(:func:`mask_mean_loss`); the training step (classifier on the detached mix, MixBlock through
the frozen EMA encoder) lives in the method class.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mixkit import rng
from mixkit._device import upload
from mixkit.errors import HyperParameterError
from mixkit.learnable import LearnableMixMethod, cosine_value
from mixkit.losses import mixup_cross_entropy
from mixkit.registry import register
from mixkit.types import MixTarget
from mixkit.validation import check_choice, check_positive_int, check_range

__all__ = ["UPSAMPLE_MODES", "AutoMix", "MixBlock", "build_mixer_convs", "init_mixer_weights", "mask_mean_loss"]

#: Upsampling modes a mixer may use to bring its mask to the input size.
UPSAMPLE_MODES = ("nearest", "bilinear", "bicubic")


@torch.no_grad()
def init_mixer_weights(module: nn.Module, generator: torch.Generator | None = None, std: float = 0.01) -> None:
    """The reference init of the mixers: convs and linears ``normal(0, std)`` (drawn from
    ``generator``), zero bias."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            m.weight.copy_(rng.normal(tuple(m.weight.shape), generator=generator) * std)
            if m.bias is not None:
                m.bias.zero_()


def build_mixer_convs(
    module: nn.Module, in_channels: int, *, reduction: int, lam_concat: bool, upsample: str, key: bool,
    generator: torch.Generator | None,
) -> None:
    """The settings and 1x1 convs the mixers share (``query``, ``key`` if asked, ``value``,
    in that order), initialised as the reference (:func:`init_mixer_weights`)."""
    module.in_channels = check_positive_int(in_channels, "in_channels", allow_none=False)
    module.reduction = check_positive_int(reduction, "reduction", allow_none=False)
    module.lam_concat = bool(lam_concat)
    module.upsample = check_choice(upsample, UPSAMPLE_MODES, "upsample")
    module.inter_channels = max(module.in_channels // module.reduction, 1)
    c = module.in_channels + int(module.lam_concat)
    module.query = nn.Conv2d(c, module.inter_channels, 1)
    if key:
        module.key = nn.Conv2d(c, module.inter_channels, 1)
    module.value = nn.Conv2d(c, 1, 1)
    init_mixer_weights(module, generator)


def upsample(logits: Tensor, size: Sequence[int], mode: str) -> Tensor:
    """Bring ``(B, C, h, w)`` mask logits to ``size`` (``align_corners=False`` where it applies)."""
    size = tuple(int(s) for s in size)
    if tuple(logits.shape[-2:]) == size:
        return logits
    if mode == "nearest":
        return F.interpolate(logits, size=size, mode=mode)
    return F.interpolate(logits, size=size, mode=mode, align_corners=False)


def lam_channel(z: Tensor, lam: Tensor) -> Tensor:
    """``z (B, C, h, w)`` with a constant channel ``lam (B,)`` appended: ``(B, C + 1, h, w)``."""
    b, _, h, w = z.shape
    block = lam.to(device=z.device, dtype=z.dtype).view(b, 1, 1, 1).expand(b, 1, h, w)
    return torch.cat([z, block], dim=1)


class MixBlock(nn.Module):
    """AutoMix's MixBlock: a cross-attention mask between a sample and its partner.

    With ``z_i`` the features of a sample and ``z_j = z[index]`` its partner's (a stage of the
    EMA encoder, ``(B, C, h, w)``), lambda is appended as a constant channel
    (``z_i^lam = [z_i, lam]``, ``z_j^lam = [z_j, 1 - lam]``, the paper's lambda embedding and
    the ImageNet configs' ``lam_concat=True``; the CIFAR configs leave it out). One shared
    1x1 conv ``W_P`` (C(+1) -> C/r) embeds both, the cross-attention is
    ``P = softmax_row((W_P z_i^lam)^T (W_P z_j^lam) / sqrt(C/r))`` ``(B, hw, hw)``, a linear
    1x1 conv ``W_z`` (C(+1) -> 1) gives the content ``v = W_z z_i^lam`` and the mask of the
    sample is ``M = sigmoid(Upsample(P^T v))`` ``(B, 1, H, W)``, upsampled (nearest by default)
    before the sigmoid, as in ``PixelMixBlock.forward``; the partner gets ``1 - M``.

    Args:
        in_channels: channels ``C`` of the feature map.
        reduction: channel reduction ``r`` of the query/key embedding.
        lam_concat: append lambda as a channel (the paper's lambda input).
        upsample: ``"nearest"`` (the paper's), ``"bilinear"`` or ``"bicubic"``.
        generator: CPU generator for the initial weights (``normal(0, 0.01)``, zero bias).

    Example:
        >>> block = MixBlock(8)
        >>> z, lam = torch.randn(4, 8, 2, 2), torch.full((4,), 0.3)
        >>> mask = block(z, lam, torch.tensor([1, 2, 3, 0]), (8, 8))
        >>> mask.shape, bool(((mask > 0) & (mask < 1)).all())
        (torch.Size([4, 1, 8, 8]), True)
    """

    def __init__(
        self,
        in_channels: int,
        *,
        reduction: int = 2,
        lam_concat: bool = True,
        upsample: str = "nearest",
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        build_mixer_convs(self, in_channels, reduction=reduction, lam_concat=lam_concat, upsample=upsample, key=False,
                          generator=generator)

    def extra_repr(self) -> str:
        return f"lam_concat={self.lam_concat}, upsample={self.upsample!r}"

    def mask_logits(self, z: Tensor, lam: Tensor, index: Tensor) -> Tensor:
        """``(B, 1, h, w)`` mask logits of each sample at the feature resolution."""
        if z.dim() != 4 or z.shape[1] != self.in_channels:
            raise HyperParameterError(f"MixBlock expects features (B, {self.in_channels}, h, w), got {tuple(z.shape)}")
        z = z.to(self.query.weight.dtype)
        b, _, h, w = z.shape
        zi, zj = z, z.index_select(0, upload(index, z.device))
        if self.lam_concat:
            lam = upload(lam, z.device, z.dtype)
            zi, zj = lam_channel(zi, lam), lam_channel(zj, 1.0 - lam)
        q = self.query(zi).flatten(2).transpose(1, 2)  # (B, hw, d)
        k = self.query(zj).flatten(2)  # (B, d, hw)
        attn = torch.softmax(torch.bmm(q, k) / math.sqrt(self.inter_channels), dim=-1)  # (B, hw, hw)
        v = self.value(zi).flatten(2).transpose(1, 2)  # (B, hw, 1)
        return torch.bmm(attn.transpose(1, 2), v).view(b, 1, h, w)

    def forward(self, z: Tensor, lam: Tensor, index: Tensor, size: Sequence[int]) -> Tensor:
        """The mask of each sample (its partner gets ``1 - mask``).

        Args:
            z: ``(B, C, h, w)`` features of the batch.
            lam: ``(B,)`` lambda of each sample (the weight of the sample itself).
            index: ``(B,)`` int64 partner rows.
            size: the input's spatial size ``(H, W)``.

        Returns:
            ``(B, 1, H, W)`` mask in (0, 1), in the MixBlock's parameter dtype.
        """
        return torch.sigmoid(upsample(self.mask_logits(z, lam, index), size, self.upsample))


def mask_mean_loss(mask: Tensor, lam: Tensor, margin: float = 0.1) -> Tensor:
    """AutoMix's mask prior (``mask_loss_mode="L1"``): ``max(|mean(M) - mean(lam)| - margin, 0)``.

    As in ``PixelMixBlock.mask_loss`` the mean is over the whole batch and every pixel (with
    one lambda per batch, the reference's setting, ``mean(lam)`` is that lambda).

    Args:
        mask: ``(B, 1, H, W)`` mask of the samples themselves (the weight of lambda).
        lam: ``(B,)`` lambda of each sample.
        margin: the hinge ``epsilon`` (0.1 in the configs).

    Returns:
        A scalar in the mask's dtype.
    """
    target = lam.to(device=mask.device, dtype=mask.dtype).mean()
    return torch.clamp((mask.mean() - target).abs() - margin, min=0.0)


@register(
    "automix",
    family="learnable",
    paper="AutoMix: Unveiling the Power of Mixup for Stronger Classifiers",
    authors="Liu, Li, Wu, Liu, Chen, Wu, Li",
    venue="ECCV 2022",
    year=2022,
    code="https://github.com/Westlake-AI/openmixup",
    sources=2,
    summary="A MixBlock learns the two-sample pixel mask through a frozen EMA encoder (momentum pipeline).",
    needs=("model", "mixer"),
)
class AutoMix(LearnableMixMethod):
    """AutoMix: masks from a :class:`MixBlock` trained online through a momentum pipeline.

    Each step (the base :class:`~mixkit.learnable.LearnableMixMethod`; OpenMixup ``AutoMixup``)
    reads the EMA encoder's features at ``stage`` (``"auto"``: ``layer3``, the 3rd stage of a
    CIFAR ResNet as in the paper's l = 3), draws ``(lam_bb, perm_bb)`` and ``(lam_mb, perm_mb)``
    from ``Beta(alpha, alpha)``, trains the classifier on the DETACHED MixBlock mix
    ``M x + (1 - M) x[perm_bb]`` (plain Mixup when ``lam_bb`` is within ``lam_margin`` of 0 or 1)
    plus CE on the clean batch, and trains the MixBlock alone, with its own SGD, on
    ``MCE(f_k(M' x + (1 - M') x[perm_mb]), lam_mb) + w * max(|mean(M') - lam_mb| - margin, 0)``
    through the frozen EMA model ``f_k``. Lambda is the weight of the original sample and the
    labels use the sampled lambda (as the code). Deviations: lambda enters the MixBlock as a
    channel by default (paper; the CIFAR configs turn it off: ``lam_concat=False``); the code's
    ``mask_adjust`` (0 in the AutoMix configs) is not implemented; the code steps one SGD over
    classifier and MixBlock, here each has its own (the two losses share no parameters, so the
    gradients are the same).

    Args:
        alpha: Beta concentration (2).
        stage: model stage the MixBlock reads (``"auto"``).
        momentum, momentum_end: EMA momentum, cosine from 0.999 to 0.999999 after 10 %.
        lam_margin: plain Mixup below this lambda distance to 0 or 1 (0.08).
        mixer_lr, mixer_min_lr, mixer_momentum, mixer_weight_decay: the MixBlock's SGD
            (0.1, cosine to 0.05 as the CIFAR configs, 0.9, 1e-4).
        clean_weight: weight of the clean-batch CE (1).
        total_steps: steps of the schedules (None: constant momentum, lr and mask weight).
        reduction: the MixBlock's channel reduction (2).
        lam_concat: lambda as a MixBlock input channel.
        upsample: mask upsampling (``"nearest"``).
        mask_weight, mask_weight_end: weight ``w`` of the mask loss, cosine-annealed from the
            first to the second (0.1 constant on CIFAR; the ImageNet configs anneal to 0).
        mask_margin: the hinge margin of the mask loss (0.1).
        p, mode, num_classes: as every method.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
        ...                           torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3))
        >>> am = AutoMix(stage="1")
        >>> out = am(torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 0]), model=net)
        >>> out.logits.shape, out.params.mask.shape
        (torch.Size([4, 3]), torch.Size([4, 1, 8, 8]))
    """

    def __init__(
        self,
        *,
        alpha: float = 2.0,
        stage: str = "auto",
        momentum: float = 0.999,
        momentum_end: float = 0.999999,
        lam_margin: float = 0.08,
        mixer_lr: float = 0.1,
        mixer_min_lr: float = 0.05,
        mixer_momentum: float = 0.9,
        mixer_weight_decay: float = 1e-4,
        clean_weight: float = 1.0,
        total_steps: int | None = None,
        reduction: int = 2,
        lam_concat: bool = True,
        upsample: str = "nearest",
        mask_weight: float = 0.1,
        mask_weight_end: float = 0.1,
        mask_margin: float = 0.1,
        p: float = 1.0,
        mode: str = "batch",
        num_classes: int | None = None,
    ) -> None:
        super().__init__(alpha=alpha, stage=stage, momentum=momentum, momentum_end=momentum_end,
                         lam_margin=lam_margin, mixer_lr=mixer_lr, mixer_min_lr=mixer_min_lr,
                         mixer_momentum=mixer_momentum, mixer_weight_decay=mixer_weight_decay,
                         clean_weight=clean_weight, total_steps=total_steps, p=p, mode=mode, num_classes=num_classes)
        self.reduction = check_positive_int(reduction, "reduction", allow_none=False)
        if not isinstance(lam_concat, bool):
            raise HyperParameterError(f"lam_concat must be a bool, got {lam_concat!r}")
        self.lam_concat = lam_concat
        self.upsample = check_choice(upsample, UPSAMPLE_MODES, "upsample")
        self.mask_weight = check_range(mask_weight, 0.0, math.inf, "mask_weight")
        self.mask_weight_end = check_range(mask_weight_end, 0.0, math.inf, "mask_weight_end")
        self.mask_margin = check_range(mask_margin, 0.0, 1.0, "mask_margin")

    def mixer_config(self) -> dict[str, Any]:
        return {"reduction": self.reduction, "lam_concat": self.lam_concat, "upsample": self.upsample}

    def build_mixer(self, channels: int, generator: torch.Generator | None) -> nn.Module:
        return MixBlock(channels, generator=generator, **self.mixer_config())

    def generate_mask(self, feats: Tensor, index: Tensor, lam: Tensor, *, size: tuple[int, int]) -> Tensor:
        return self.mixer(feats, lam, index, size)

    def mixer_loss(
        self, logits: Tensor, y: Tensor, index: Tensor, lam: Tensor, mask: Tensor
    ) -> tuple[Tensor, dict[str, float]]:
        """``MCE(logits, y, y[index], lam) + w_t * mask_mean_loss(mask, lam, margin)``."""
        ce = mixup_cross_entropy(logits, MixTarget.pair(y, index, lam, self.num_classes))
        weight = cosine_value(self.step, self.total_steps, self.mask_weight, self.mask_weight_end)
        prior = mask_mean_loss(mask, lam, self.mask_margin)
        logs = {"mixer_ce": float(ce.detach()), "mask_loss": float(prior.detach()), "mask_mean": float(mask.detach().mean())}
        return ce + weight * prior.to(ce.dtype), logs
