"""AdAutoMix: an adversarial generator of N-sample mixes against an EMA teacher.

Papers and reference code:
    * Qin, Jin, Jiang, El-Yacoubi, Gao, "Adversarial AutoMixup", ICLR 2024, arXiv 2312.11954
      (official code: github.com/JinXins/Adversarial-AutoMixup, merged into OpenMixup,
      github.com/Westlake-AI/openmixup: ``openmixup/models/classifiers/adautomix.py`` class
      ``AdAutoMix`` and ``openmixup/models/heads/adaptive_mask.py`` class ``AdaptiveMask``).

The generator is a plain ``nn.Module`` (:class:`AdaptiveMaskGenerator`) and its losses plain
functions (:func:`cosine_consistency`, :func:`adversarial_generator_loss`); the training step
lives in the method class.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from mixkit import rng
from mixkit._device import upload
from mixkit.errors import HyperParameterError, ShapeError
from mixkit.functional.multi import chain_sources, merge_repeats, own_weight
from mixkit.hooks import resolve_layer
from mixkit.learnable import LearnableMixMethod, cosine_value
from mixkit.losses import mixup_cross_entropy
from mixkit.methods.adautomix_generator import (
    AdaptiveMaskGenerator,
    adversarial_generator_loss,
    blend_sources,
    cosine_consistency,
)
from mixkit.methods.automix import UPSAMPLE_MODES
from mixkit.methods.multi import MultiParams
from mixkit.registry import register
from mixkit.types import MixTarget, Params, StepOutput
from mixkit.validation import (
    check_choice,
    check_params,
    check_positive_int,
    check_range,
)

__all__ = [
    "AdAutoMix",
    "AdaptiveMaskGenerator",
    "SourceMaskParams",
    "adversarial_generator_loss",
    "blend_sources",
    "cosine_consistency",
]


@dataclass(frozen=True, eq=False, kw_only=True)
class SourceMaskParams(MultiParams):
    """Params of a learned N-source mix: ``x~ = sum_n masks[:, n] * x[sources[:, n]]``.

    Attributes:
        masks: ``(B, N, H, W)`` per-pixel weights of the sources (sum 1 over N); constant
            (the ratios) for rows mixed linearly.
    """

    masks: Tensor


def _source_draw(b: int, k: int, lam: Tensor, active: Tensor, generator: torch.Generator | None) -> MultiParams:
    """Sources (the row, then its successors in a random cycle) and ratios; inactive rows keep themselves."""
    sources = chain_sources(b, k, generator=generator)
    sources = torch.where(active.unsqueeze(1), sources, torch.arange(b).unsqueeze(1))
    weights = merge_repeats(sources, lam)
    return MultiParams(index=sources[:, 1].clone(), lam=own_weight(sources, weights), sources=sources, weights=weights)


@register(
    "adautomix",
    family="learnable",
    paper="Adversarial AutoMixup",
    authors="Qin, Jin, Jiang, El-Yacoubi, Gao",
    venue="ICLR 2024",
    year=2024,
    code="https://github.com/JinXins/Adversarial-AutoMixup",
    sources="k",
    summary="A generator of N-sample masks trained adversarially (with a cosine consistency) against an EMA teacher.",
    needs=("model", "mixer"),
)
class AdAutoMix(LearnableMixMethod):
    """AdAutoMix: N-sample masks from a generator trained against the frozen EMA teacher.

    Each step: the EMA encoder runs once on the clean batch (its ``stage`` features feed the
    :class:`AdaptiveMaskGenerator`, its logits are the sources' predictions ``f_k(x_n)``); two
    independent draws of sources (the row, then ``k - 1`` partners) and ratios
    ``lam_n ~ Beta(alpha, alpha)`` normalised to sum 1 are made. The classifier trains on the
    DETACHED generated mix (linear N-mix when the own ratio is within ``lam_margin`` of 0 or
    1) with ``MCE_N + (1 - r) CE(clean) + r MCE_N(linear N-mix)`` for ``k > 2`` (``MCE + CE``
    for ``k = 2``), ``r = mixup_ratio``. The generator alone (own SGD) minimises ``MCE_N`` of
    the EMA teacher on the other mix, except every ``adv_interval``-th step (0, 2, 4, ...),
    when it minimises :func:`adversarial_generator_loss`
    ``-beta L_amce + (1 - beta)(1 - cos)``: the mix becomes hard for the teacher while its
    prediction stays close to its sources'. Labels use the sampled ratios (as the code);
    ``lam`` is the row's own ratio.

    Where this departs from the official code: the cosine consistency is MAXIMISED by the
    generator, as the paper states its purpose ("to prevent the collapse of the inherent
    meanings of images"; the code minimises ``+(1 - beta) cos``, lowering the similarity; we
    could not check the sign in the paper's own equation); the lambda margin tests the own
    ratio (the code's 3-sample test ``margin >= lam_1 or margin < 1 - lam_1`` is almost always
    true, so its classifier nearly always sees linear mixes); the first source is the row
    itself (the code permutes all N, the same distribution); the two draws are independent
    (the code shares the ratios). Lambda enters the generator as a channel by default (the
    ``AdaptiveMask`` default; the CIFAR configs turn it off). One EMA forward of the clean batch
    gives the features and all ``f_k(x_n)`` (the code runs N + 1 forwards; the outputs are the
    same up to rounding since the sources are permutations of the batch).

    Args:
        k: number of mixed samples N (3).
        alpha: Beta concentration (1).
        beta: ``beta_radio``, weight of the adversarial term (0.3).
        mixup_ratio: ``mixup_radio`` r, share of the linear N-mix term for ``k > 2`` (0.5).
        adv_interval: every how many steps the generator plays adversarially (2).
        stage, momentum, momentum_end, lam_margin, mixer_lr, mixer_min_lr, mixer_momentum,
            mixer_weight_decay, clean_weight, total_steps: as :class:`~mixkit.methods.automix.AutoMix`
            (``lam_margin`` 0.03 as the configs).
        reduction, lam_concat, upsample: the generator's (2, True, ``"bilinear"``).
        p, mode, num_classes: as every method.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
        ...                           torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3))
        >>> am = AdAutoMix(stage="1")
        >>> out = am(torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 0]), model=net)
        >>> out.logits.shape, out.params.masks.shape, out.target.k
        (torch.Size([4, 3]), torch.Size([4, 3, 8, 8]), 3)
    """

    def __init__(
        self,
        *,
        k: int = 3,
        alpha: float = 1.0,
        beta: float = 0.3,
        mixup_ratio: float = 0.5,
        adv_interval: int = 2,
        stage: str = "auto",
        momentum: float = 0.999,
        momentum_end: float = 0.999999,
        lam_margin: float = 0.03,
        mixer_lr: float = 0.1,
        mixer_min_lr: float = 0.05,
        mixer_momentum: float = 0.9,
        mixer_weight_decay: float = 1e-4,
        clean_weight: float = 1.0,
        total_steps: int | None = None,
        reduction: int = 2,
        lam_concat: bool = True,
        upsample: str = "bilinear",
        p: float = 1.0,
        mode: str = "batch",
        num_classes: int | None = None,
    ) -> None:
        super().__init__(alpha=alpha, stage=stage, momentum=momentum, momentum_end=momentum_end,
                         lam_margin=lam_margin, mixer_lr=mixer_lr, mixer_min_lr=mixer_min_lr,
                         mixer_momentum=mixer_momentum, mixer_weight_decay=mixer_weight_decay,
                         clean_weight=clean_weight, total_steps=total_steps, p=p, mode=mode, num_classes=num_classes)
        self.k = check_positive_int(k, "k", allow_none=False)
        if self.k < 2:
            raise HyperParameterError(f"k must be >= 2 (the number of mixed samples), got {k}")
        self.beta = check_range(beta, 0.0, 1.0, "beta")
        self.mixup_ratio = check_range(mixup_ratio, 0.0, 1.0, "mixup_ratio")
        self.adv_interval = check_positive_int(adv_interval, "adv_interval", allow_none=False)
        self.reduction = check_positive_int(reduction, "reduction", allow_none=False)
        if not isinstance(lam_concat, bool):
            raise HyperParameterError(f"lam_concat must be a bool, got {lam_concat!r}")
        self.lam_concat = lam_concat
        self.upsample = check_choice(upsample, UPSAMPLE_MODES, "upsample")

    # ----------------------------------------------------------- the base class's hooks
    def mixer_config(self) -> dict[str, Any]:
        return {"reduction": self.reduction, "lam_concat": self.lam_concat, "upsample": self.upsample}

    def build_mixer(self, channels: int, generator: torch.Generator | None) -> nn.Module:
        return AdaptiveMaskGenerator(channels, generator=generator, **self.mixer_config())

    def generate_mask(self, feats: Tensor, index: Tensor, lam: Tensor, *, size: tuple[int, int]) -> Tensor:
        """The two-source mask (the row's own weight, ``(B, 1, H, W)``) from the generator."""
        own = torch.arange(feats.shape[0], device=feats.device)
        sources = torch.stack([own, upload(index, feats.device)], dim=1)
        weights = upload(torch.stack([lam, 1.0 - lam], dim=1), feats.device, feats.dtype)
        return self.mixer(feats, sources, weights, size)[:, :1]

    # ------------------------------------------------------------------------- sampling
    def _ratios(self, b: int, generator: torch.Generator | None) -> Tensor:
        """``(B, k)`` float64 ratios: ``k`` Beta draws normalised to sum 1 (one set per batch or row)."""
        draws = rng.beta((1 if self.mode == "batch" else b, self.k), self.alpha, self.alpha, generator=generator)
        return (draws / draws.sum(dim=1, keepdim=True)).expand(b, self.k).clone()

    def sample(self, x: Tensor, y: Tensor | None = None, *, generator: torch.Generator | None = None) -> MultiParams:
        """Sources and ratios of the classifier's batch (``p`` and ``mode`` apply); the masks
        need the model (:meth:`mask_params`)."""
        b = x.shape[0]
        lam = self._ratios(b, generator)
        return _source_draw(b, self.k, lam, self._active(b, generator), generator)

    def _mixer_draw(self, b: int, generator: torch.Generator | None) -> MultiParams:  # type: ignore[override]
        return _source_draw(b, self.k, self._ratios(b, generator), torch.ones(b, dtype=torch.bool), generator)

    @torch.no_grad()
    def mask_params(self, x: Tensor, draw: Params, feats: Tensor | None = None) -> SourceMaskParams:  # type: ignore[override]
        """The generator's masks for ``draw`` (no gradient); rows whose own ratio is within
        ``lam_margin`` of 0 or 1 (inactive rows too) get constant masks, a linear N-mix."""
        if feats is None:
            feats = self.encoder.features(x).to(self._feature_dtype(x))
        sources, weights = upload(draw.sources, x.device), upload(draw.weights, x.device, feats.dtype)
        masks = self.mixer(feats, sources, weights, tuple(x.shape[2:]))
        lam = upload(draw.lam, x.device, masks.dtype).view(-1, 1, 1, 1)
        linear = (lam <= self.lam_margin) | (lam >= 1.0 - self.lam_margin)
        masks = torch.where(linear, weights.view(*weights.shape, 1, 1).expand_as(masks), masks)
        return SourceMaskParams(index=draw.index, lam=draw.lam, sources=draw.sources, weights=draw.weights, masks=masks)

    def apply(self, x: Tensor, params: Params) -> Tensor:
        check_params(x, params)
        if not isinstance(params, SourceMaskParams):
            raise TypeError(f"AdAutoMix.apply needs SourceMaskParams (from a call), got {type(params).__name__}")
        if params.masks.shape != (x.shape[0], params.sources.shape[1], *x.shape[2:]):
            raise ShapeError(f"masks of shape {tuple(params.masks.shape)} do not fit x of shape {tuple(x.shape)}")
        return self._mix(x, params)

    def _mix(self, x: Tensor, params: Params) -> Tensor:
        return blend_sources(x, params.sources, params.masks)

    def target(self, y: Tensor, params: Params) -> MixTarget:
        dtype = torch.float64 if y.dtype == torch.float64 else torch.float32
        return MixTarget(y, upload(params.sources, y.device), upload(params.weights, y.device, dtype), self.num_classes)

    # --------------------------------------------------------------------------- calling
    @torch.no_grad()
    def _teacher(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """One EMA forward of the clean batch: the ``stage`` features and the logits."""
        store: list[Tensor] = []
        layer = resolve_layer(self.encoder.model, self.encoder.stage)
        handle = layer.register_forward_hook(lambda module, args, out: store.append(out))
        try:
            logits = self.encoder(x)
        finally:
            handle.remove()
        return store[0].to(self._feature_dtype(x)), logits

    def train_step(  # type: ignore[override]
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        *,
        criterion: Callable[[Tensor, MixTarget], Tensor],
        generator: torch.Generator | None = None,
    ) -> StepOutput:
        """One AdAutoMix iteration: EMA update, generator step, classifier loss (to back-propagate)."""
        rng.check_generator(generator)
        self.check(x, y)
        self._build(model, x, generator)
        self._sync_mode(model)
        self._before_step(model)
        feats, teacher_logits = self._teacher(x)
        params = self.mask_params(x, self.sample(x, y, generator=generator), feats)
        logs = self._generator_step(x, y, feats, teacher_logits, self._mixer_draw(x.shape[0], generator))
        target = self.target(y, params)
        logits = model(self._mix(x, params))
        loss = criterion(logits, target)
        if self.clean_weight:
            clean = criterion(model(x), MixTarget.unmixed(y, self.num_classes))
            if self.k > 2 and self.mixup_ratio:
                weights = upload(params.weights, x.device, x.dtype)
                linear = criterion(model(blend_sources(x, params.sources, weights.view(*weights.shape, 1, 1))), target)
                clean = (1.0 - self.mixup_ratio) * clean + self.mixup_ratio * linear
            loss = loss + self.clean_weight * clean
        self.step += 1
        return StepOutput(loss=loss, logits=logits, target=target, logs=logs)

    def _generator_step(self, x: Tensor, y: Tensor, feats: Tensor, teacher_logits: Tensor, draw: MultiParams) -> dict[str, float]:
        """The generator's update through the frozen EMA teacher (adversarial every ``adv_interval`` steps)."""
        sources, weights = upload(draw.sources, x.device), upload(draw.weights, x.device, feats.dtype)
        masks = self.mixer(feats, sources, weights, tuple(x.shape[2:]))
        logits = self.encoder(blend_sources(x, sources, masks))
        ce = mixup_cross_entropy(logits, MixTarget(y, sources, weights, self.num_classes))
        adversarial = self.step % self.adv_interval == 0
        logs = {"mixer_ce": float(ce.detach()), "adversarial": float(adversarial)}
        loss = ce
        if adversarial:
            cos = cosine_consistency(logits.float(), teacher_logits[sources].float(), weights)
            loss = adversarial_generator_loss(ce, cos, self.beta)
            logs["cosine"] = float(cos.detach())
        for group in self.optimizer.param_groups:
            group["lr"] = cosine_value(self.step, self.total_steps, self.mixer_lr, self.mixer_min_lr)
        self.optimizer.zero_grad(set_to_none=True)
        torch.autograd.backward(loss, inputs=[q for q in self.mixer.parameters() if q.requires_grad])
        self.optimizer.step()
        return {"mixer_loss": float(loss.detach()), "mixer_lr": self.optimizer.param_groups[0]["lr"], **logs}
