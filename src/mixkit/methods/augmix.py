"""AugMix: mixing augmentation chains of one image, with a Jensen-Shannon consistency loss.

Paper and reference code:
    * Hendrycks, Mu, Cubuk, Zoph, Gilmer, Lakshminarayanan, "AugMix: A Simple Data Processing
      Method to Improve Robustness and Uncertainty", ICLR 2020
      (github.com/google-research/augmix: ``augmentations.py``, ``augment_and_mix.py``,
      ``cifar.py`` ``aug`` and ``train``).

The operations and chains are :mod:`mixkit.functional.augment_ops`; this module holds the
method class and the loss.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mixkit import rng
from mixkit._device import upload
from mixkit.base import MixMethod
from mixkit.errors import HyperParameterError, ShapeError
from mixkit.functional.augment_chains import ChainDraws, apply_chains, sample_chains
from mixkit.functional.augment_ops import ALL_OPS, AUGMIX_OPS
from mixkit.functional.blend import gather_rows
from mixkit.registry import register
from mixkit.types import MixTarget, Params, StepOutput
from mixkit.validation import check_alpha, check_positive_int, check_range

__all__ = ["AugMix", "AugMixParams", "augmix_jsd"]

_HALF = (torch.float16, torch.bfloat16)


def augmix_jsd(logits_clean: Tensor, logits_aug1: Tensor, logits_aug2: Tensor) -> Tensor:
    """AugMix's Jensen-Shannon consistency loss between three views' predictions.

    ``JS = (KL(p_c || M) + KL(p_1 || M) + KL(p_2 || M)) / 3`` with ``M = (p_c + p_1 + p_2) / 3``
    clamped to [1e-7, 1] before the log, each KL averaged over the batch (the reference
    ``cifar.py``: ``F.kl_div(log M, p, reduction='batchmean')``). The paper weights it by 12.
    Half-precision logits are upcast to float32.

    Args:
        logits_clean: ``(B, K)`` logits of the clean images.
        logits_aug1: ``(B, K)`` logits of the first AugMix view.
        logits_aug2: ``(B, K)`` logits of the second AugMix view.

    Returns:
        The scalar loss (0 when the three predictions agree).

    Example:
        >>> z = torch.randn(4, 10)
        >>> float(augmix_jsd(z, z, z)) < 1e-6
        True
    """
    views = (logits_clean, logits_aug1, logits_aug2)
    if any(v.ndim != 2 or v.shape != logits_clean.shape for v in views):
        raise ShapeError(f"the three logits must share one (B, K) shape, got {[tuple(v.shape) for v in views]}")
    probs = [F.softmax(v.float() if v.dtype in _HALF else v, dim=1) for v in views]
    log_mixture = torch.clamp((probs[0] + probs[1] + probs[2]) / 3.0, 1e-7, 1.0).log()
    return sum(F.kl_div(log_mixture, p, reduction="batchmean") for p in probs) / 3.0


@dataclass(frozen=True, eq=False, kw_only=True)
class AugMixParams(Params):
    """Params of AugMix: which samples are augmented and the draws of their mixtures.

    Attributes:
        active: ``(B,)`` bool, the samples that are augmented (the others are copied).
        chains: the :class:`~mixkit.functional.augment_ops.ChainDraws` of every sample.
    """

    active: Tensor
    chains: ChainDraws


@register(
    "augmix",
    family="linear",
    paper="AugMix: A Simple Data Processing Method to Improve Robustness and Uncertainty",
    authors="Hendrycks et al.",
    venue="ICLR 2020",
    year=2020,
    code="https://github.com/google-research/augmix",
    sources=1,
    summary="A convex mix of the image and of width random augmentation chains of it; label kept; "
    "JS consistency loss in the training step.",
)
class AugMix(MixMethod):
    """AugMix: ``x~ = m * x + (1 - m) * sum_i w_i * chain_i(x)``; the label is not mixed.

    Per sample, as the reference ``aug``: ``w ~ Dirichlet(alpha, ..., alpha)`` over ``width``
    chains, ``m ~ Beta(alpha, alpha)`` (the reference writes ``(1 - m) * x + m * mix``; the
    same distribution since Beta(alpha, alpha) is symmetric), each chain ``depth`` operations
    (uniform in {1, 2, 3} when -1) drawn uniformly from the reference's nine operations (13
    with ``all_ops``) at levels ~ U(0.1, severity). The mix is done in pixel space: inputs
    normalised by the training engine are converted with :meth:`set_input_normalization`'s
    stats and back. No pairing: ``params.index`` is the identity and every label weight is 1.
    ``p`` and ``mode`` decide which samples are augmented (all or none for ``"batch"``, each
    apart for ``"elem"``); the chains are always drawn per sample, as the paper does.

    :meth:`train_step` follows the reference ``cifar.py``: with ``jsd=True`` the clean batch
    and two independent AugMix views go through the model as one batch, the criterion is
    applied to the clean logits and ``jsd_weight`` (12) times :func:`augmix_jsd` is added;
    with ``jsd=False`` one AugMix view is trained with the criterion.

    Args:
        severity: operation severity in [1, 10] (the reference's ``aug_severity``, 3).
        width: number of chains (``mixture_width``, 3).
        depth: operations per chain (``mixture_depth``; -1: uniform in {1, 2, 3}).
        alpha: Dirichlet and Beta concentration (1).
        all_ops: also use color, contrast, brightness and sharpness (``--all-ops``).
        jsd: train with the Jensen-Shannon consistency loss (``not --no-jsd``).
        jsd_weight: weight of the consistency loss (12 in the reference).
        p: probability of augmenting the batch or each sample.
        mode: ``"batch"`` or ``"elem"`` (which samples ``p`` selects).
        num_classes: number of classes, if known.

    Example:
        >>> import torch, mixkit
        >>> out = mixkit.create("augmix")(torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 3]),
        ...                               generator=torch.Generator().manual_seed(0))
        >>> out.x.shape, out.target.weight.flatten().tolist()
        (torch.Size([4, 3, 32, 32]), [1.0, 1.0, 1.0, 1.0])
    """

    differentiable = False
    spatial_dims = (2,)
    identity_at_full_lambda = False

    def __init__(
        self,
        *,
        severity: int = 3,
        width: int = 3,
        depth: int = -1,
        alpha: float = 1.0,
        all_ops: bool = False,
        jsd: bool = True,
        jsd_weight: float = 12.0,
        p: float = 1.0,
        mode: str = "batch",
        num_classes: int | None = None,
    ) -> None:
        super().__init__(p=p, mode=mode, num_classes=num_classes)
        self.severity = check_positive_int(severity, "severity", allow_none=False)
        if self.severity > 10:
            raise HyperParameterError(f"severity must be an integer in [1, 10], got {severity}")
        self.width = check_positive_int(width, "width", allow_none=False)
        self.depth = depth if depth == -1 else check_positive_int(depth, "depth", allow_none=False)
        self.alpha = check_alpha(alpha)
        self.all_ops = bool(all_ops)
        self.jsd = bool(jsd)
        self.jsd_weight = check_range(jsd_weight, 0.0, float("inf"), "jsd_weight")

    @property
    def ops(self) -> tuple[str, ...]:
        """The operation names in use."""
        return ALL_OPS if self.all_ops else AUGMIX_OPS

    def sample(self, x: Tensor, y: Tensor | None = None, *, generator: torch.Generator | None = None) -> AugMixParams:
        b = x.shape[0]
        chains = sample_chains(b, (x.shape[-2], x.shape[-1]), width=self.width, depth=self.depth,
                               severity=self.severity, alpha=self.alpha, ops=self.ops, generator=generator)
        active = self._active(b, generator)
        return AugMixParams(index=torch.arange(b), lam=torch.ones(b, dtype=torch.float64), active=active,
                            chains=chains)

    def _mix(self, x: Tensor, params: AugMixParams) -> Tensor:
        rows = params.active.nonzero().squeeze(1)
        if rows.numel() == x.shape[0]:  # every sample: no gather or scatter
            return self._augment(x, params.chains)
        out = x.clone()
        if rows.numel():
            dev_rows = upload(rows, x.device)
            out.index_copy_(0, dev_rows, self._augment(gather_rows(x, dev_rows), params.chains.take(rows)))
        return out

    def _augment(self, x: Tensor, chains: ChainDraws) -> Tensor:
        # pixels, chains and back, the conversions in apply_chains' contiguous work buffer
        stats = self._stats(x, torch.float32 if x.dtype in _HALF else x.dtype)
        return apply_chains(x, chains, self.ops, normalization=stats)

    def target(self, y: Tensor, params: Params) -> MixTarget:
        return MixTarget.unmixed(y, self.num_classes)

    def train_step(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        *,
        criterion: Callable[[Tensor, MixTarget], Tensor],
        generator: torch.Generator | None = None,
    ) -> StepOutput:
        """Criterion on the clean logits plus ``jsd_weight`` times the JS loss of (clean, view 1, view 2)."""
        if not self.jsd:
            return super().train_step(model, x, y, criterion=criterion, generator=generator)
        rng.check_generator(generator)
        self.check(x, y)
        first = self.sample(x, y, generator=generator)
        second = self.sample(x, y, generator=generator)
        b = x.shape[0]
        logits = model(torch.cat([x, self._mix(x, first), self._mix(x, second)]))
        clean, aug1, aug2 = logits[:b], logits[b : 2 * b], logits[2 * b :]
        target = self.target(y, first)
        consistency = augmix_jsd(clean, aug1, aug2)
        loss = criterion(clean, target) + self.jsd_weight * consistency
        return StepOutput(loss=loss, logits=clean, target=target, logs={"jsd": float(consistency.detach())})
