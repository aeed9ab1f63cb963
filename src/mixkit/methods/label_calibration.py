"""Calibration label policies: RankMixup's ranking losses and CAMixup's per-class switch.

Papers and reference code:
    * Noh, Park, Lee, Ham, "RankMixup: Ranking-Based Mixup Training for Network
      Calibration", ICCV 2023 (github.com/cvlab-yonsei/RankMixup: ``calibrate/losses/rankmixup.py``,
      ``calibrate/net/resnet_mixup.py``, ``calibrate/engine/trainer.py``, ``configs/``).
    * Wen, Jerfel, Muller, Dusenberry, Snoek, Lakshminarayanan, Tran, "Combining Ensembles
      and Data Augmentation Can Harm Your Calibration", ICLR 2021 (github.com/google/edward2,
      ``experimental/marginalization_mixup/data_utils.py::adaptive_mixup_aug`` and
      ``batchensemble.py``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mixkit import rng
from mixkit.base import MixMethod
from mixkit.errors import HyperParameterError, LabelError
from mixkit.holdout import Holdout
from mixkit.label_policy import Criterion, LabelPolicy
from mixkit.methods.linear import MixUp
from mixkit.registry import register
from mixkit.types import BlendParams, MixOutput, MixTarget, Params, StepOutput
from mixkit.validation import check_choice, check_positive_int, check_range

__all__ = ["CAMixup", "RankMixup", "class_calibration_gap", "mixup_ndcg", "mixup_ranking_loss"]

_RANKINGS = ("mrl", "mndcg")
_EVAL_BATCH = 256


def mixup_ranking_loss(clean_logits: Tensor, mixed_logits: Tensor, mask: Tensor, *, margin: float) -> Tensor:
    """RankMixup's MRL: a mixed sample must score below its clean sample by ``margin``.

    ``mean_b mask_b * max(0, max_c mixed_bc - max_c clean_bc + margin)``: the mean runs over
    the whole batch (masked rows count as zeros), as the reference code's ``.mean()``.

    Args:
        clean_logits: ``(B, K)`` logits of the clean batch.
        mixed_logits: ``(B, K)`` logits of its mixed version.
        mask: ``(B,)`` bool or float, 1 where the mixed label differs from the clean one.
        margin: the logit margin.
    """
    work = torch.promote_types(clean_logits.dtype, torch.float32)
    gap = mixed_logits.to(work).amax(dim=1) - clean_logits.to(work).amax(dim=1) + margin
    return (mask.to(device=gap.device, dtype=work) * F.relu(gap)).mean()


def mixup_ndcg(clean_logits: Tensor, mixed_logits: Tensor, relevance: Tensor) -> Tensor:
    """RankMixup's M-NDCG per sample: confidences ranked like the mixed labels' relevance.

    The list holds the clean sample first (relevance 1), then the ``M`` mixed samples in
    decreasing relevance; gains are the max softmax probabilities in the same order.
    ``DCG = sum_k g_k / log2(k + 1)``, ``IDCG = sum_k r_k / log2(k + 1)`` and the score is
    ``DCG / IDCG`` if ``IDCG > DCG`` else ``IDCG / DCG``, so it lies in (0, 1] and is 1 when
    every confidence equals its relevance.

    Args:
        clean_logits: ``(B, K)``.
        mixed_logits: ``(M, B, K)``, ``M`` mixed versions of the batch.
        relevance: ``(M, B)``, the largest entry of each mixed soft label.

    Returns:
        ``(B,)`` NDCG scores.
    """
    work = torch.promote_types(clean_logits.dtype, torch.float32)
    clean_gain = torch.softmax(clean_logits.to(work), dim=1).amax(dim=1, keepdim=True)
    gains = torch.softmax(mixed_logits.to(work), dim=2).amax(dim=2).t()
    rel = relevance.to(device=gains.device, dtype=work).t()
    order = torch.argsort(rel, dim=1, descending=True, stable=True)
    gains = torch.cat([clean_gain, gains.gather(1, order)], dim=1)
    rel = torch.cat([torch.ones_like(clean_gain), rel.gather(1, order)], dim=1)
    discount = torch.log2(torch.arange(2, gains.shape[1] + 2, device=gains.device, dtype=work))
    dcg, idcg = (gains / discount).sum(dim=1), (rel / discount).sum(dim=1)
    return torch.where(idcg > dcg, dcg / idcg, idcg / dcg)


def _mixed_rows(target: MixTarget, labels: Tensor, num_classes: int) -> Tensor:
    """``(B,)`` bool: rows whose mixed label differs from the clean one (not same-class, not lam=1)."""
    own = MixTarget.unmixed(labels).soft(num_classes)
    return (target.soft(num_classes) - own.to(target.weight.device)).abs().sum(dim=1) > 1e-6


@register(
    "rankmixup",
    family="label",
    paper="RankMixup: Ranking-Based Mixup Training for Network Calibration",
    authors="Noh et al.",
    venue="ICCV 2023",
    year=2023,
    code="https://github.com/cvlab-yonsei/RankMixup",
    sources=2,
    summary="Cross-entropy on clean inputs plus a ranking loss: mixed samples must be less confident.",
)
class RankMixup(LabelPolicy):
    """RankMixup: clean cross-entropy plus a ranking term over mixed samples.

    As the reference trainer: one forward on the clean batch, whose loss is the engine's
    criterion on the clean labels, and forwards on mixed versions of the batch (the wrapped
    sample policy's own training step, so any method works) that enter only through the
    ranking term, weighted by ``weight`` (the paper's alpha):

    * ``ranking="mrl"``: one mixed batch, :func:`mixup_ranking_loss` on the max logits with
      ``margin`` (the code compares logits; its probability variant is commented out).
      Rows whose mixed label equals the clean one (same-class pairs, lambda = 1) are masked.
      The reference code's mask, shaped ``(B,)`` against a ``(B, 1)`` hinge, broadcasts to
      ``(B, B)`` and so scales the mean hinge by the share of unmasked rows instead of
      masking row by row; here each row is masked, as the paper describes.
    * ``ranking="mndcg"``: ``num_mixed`` mixed batches, loss ``1 - mean`` :func:`mixup_ndcg`,
      relevance of a mixed sample = its largest soft-label entry (``max(lam, 1 - lam)``).

    Defaults follow the official configs: weight 0.1, margin 2 (CIFAR; 1 on Tiny-ImageNet),
    one mixed batch for MRL and three for M-NDCG. The configs mix with input Mixup of
    alpha 2 (CIFAR) / 1 (Tiny-ImageNet): pass ``method_args={"alpha": 2.0}`` to match.
    The mixed batches run as separate forwards (the code concatenates the M-NDCG batches
    into one, which only changes batch-norm statistics). Reduces to the criterion on the
    clean batch when ``weight = 0``, and for MRL when nothing is mixed (every row masked).
    The step returns the clean logits and labels.

    Args:
        method: the sample policy (registry name or object), Mixup by default.
        method_args: its hyper-parameters when given by name.
        p: probability of mixing, passed to ``method`` by name.
        mode: ``"batch"`` or ``"elem"``, passed to ``method`` by name.
        num_classes: number of classes, if known.
        ranking: ``"mrl"`` or ``"mndcg"``.
        margin: MRL's logit margin (>= 0).
        weight: weight of the ranking term (>= 0).
        num_mixed: mixed batches for M-NDCG (>= 1).

    Example:
        >>> import torch, mixkit
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
        >>> step = mixkit.create("rankmixup").train_step(
        ...     net, torch.rand(4, 3, 2, 2), torch.tensor([0, 1, 2, 0]),
        ...     criterion=mixkit.mixup_cross_entropy, generator=torch.Generator().manual_seed(0))
        >>> step.loss.ndim, step.logits.shape, sorted(step.logs)
        (0, torch.Size([4, 3]), ['ce', 'rank'])
    """

    def __init__(
        self,
        *,
        method: MixMethod | str = "mixup",
        method_args: dict[str, Any] | None = None,
        p: float | None = None,
        mode: str | None = None,
        num_classes: int | None = None,
        ranking: str = "mrl",
        margin: float = 2.0,
        weight: float = 0.1,
        num_mixed: int = 3,
    ) -> None:
        super().__init__(method=method, method_args=method_args, p=p, mode=mode, num_classes=num_classes)
        self.ranking = check_choice(ranking, _RANKINGS, "ranking")
        self.margin = check_range(margin, 0.0, math.inf, "margin")
        self.weight = check_range(weight, 0.0, math.inf, "weight")
        self.num_mixed = check_positive_int(num_mixed, "num_mixed", allow_none=False)

    def ranking_loss(self, clean_logits: Tensor, mixed: list[tuple[Tensor, MixTarget]], labels: Tensor) -> Tensor:
        """The ranking term from the clean logits and the ``(logits, target)`` of each mixed batch."""
        k = clean_logits.shape[1]
        if self.ranking == "mrl":
            logits, target = mixed[0]
            return mixup_ranking_loss(clean_logits, logits, _mixed_rows(target, labels, k), margin=self.margin)
        logits = torch.stack([lg for lg, _ in mixed])
        relevance = torch.stack([t.soft(k).amax(dim=1) for _, t in mixed])
        return 1.0 - mixup_ndcg(clean_logits, logits, relevance).mean()

    def train_step(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        *,
        criterion: Criterion,
        generator: torch.Generator | None = None,
    ) -> StepOutput:
        """Clean forward and loss, then the mixed forwards and the weighted ranking term."""
        logits = model(x)
        clean = MixTarget.unmixed(y, self.num_classes)
        ce = criterion(logits, clean)
        if self.weight == 0:
            return StepOutput(loss=ce, logits=logits, target=clean, logs={"ce": float(ce.detach())})
        count = 1 if self.ranking == "mrl" else self.num_mixed
        seen: list[tuple[Tensor, MixTarget]] = []
        rank: list[Tensor] = []

        def rank_criterion(mixed_logits: Tensor, target: MixTarget) -> Tensor:
            seen.append((mixed_logits, target))
            if len(seen) < count:  # the term needs every mixed batch: it comes with the last one
                return ce.new_zeros(())
            rank.append(self.ranking_loss(logits, seen, y))
            return self.weight * rank[0]

        extra = [self.inner.train_step(model, x, y, criterion=rank_criterion, generator=generator).loss
                 for _ in range(count)]
        loss = ce + torch.stack(extra).sum()
        return StepOutput(loss=loss, logits=logits, target=clean,
                          logs={"ce": float(ce.detach()), "rank": float(rank[0].detach())})


# ----------------------------------------------------------------------------------- CAMixup
def class_calibration_gap(logits: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """Per class ``c``: accuracy minus mean confidence over the samples of true class ``c``.

    Args:
        logits: ``(N, K)`` predictions.
        labels: ``(N,)`` int labels.
        num_classes: ``K``.

    Returns:
        ``(K,)`` float64 gaps, NaN for classes without samples.
    """
    probs = torch.softmax(logits.to(torch.float64), dim=1)
    conf, pred = probs.max(dim=1)
    labels = labels.to(probs.device).long()
    count = torch.bincount(labels, minlength=num_classes).to(torch.float64)
    acc = torch.zeros(num_classes, dtype=torch.float64, device=probs.device)
    acc.index_add_(0, labels, (pred == labels).double())
    mean_conf = torch.zeros_like(acc).index_add_(0, labels, conf)
    gap = (acc - mean_conf) / count.clamp_min(1)
    return torch.where(count > 0, gap, math.nan).cpu()


def _predict(model: nn.Module, holdout: Holdout) -> tuple[Tensor, Tensor]:
    """The model's logits on every held-out sample, in eval mode (restored after)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            outs = [(model(x).float().cpu(), y.cpu()) for x, y in holdout.batches(_EVAL_BATCH)]
    finally:
        model.train(was_training)
    return torch.cat([o for o, _ in outs]), torch.cat([y for _, y in outs])


@register(
    "camixup",
    family="label",
    paper="Combining Ensembles and Data Augmentation Can Harm Your Calibration",
    authors="Wen et al.",
    venue="ICLR 2021",
    year=2021,
    code="https://github.com/google/edward2/tree/main/experimental/marginalization_mixup",
    sources=2,
    summary="Mixup switched off per class where held-out accuracy exceeds confidence, re-measured every epoch.",
)
class CAMixup(LabelPolicy):
    """CAMixup (Confidence-Adjusted Mixup): Mixup only for the classes the model is over-confident on.

    After every epoch (:meth:`epoch_end`) the model predicts the held-out split in eval
    mode; per class ``c``, ``gap_c = accuracy_c - mean max-probability_c`` over samples of
    true class ``c``. Classes with ``gap_c > 0`` (under-confident) stop mixing, the others
    mix with the wrapped Mixup's alpha. Then, as the code's ``adaptive_mixup_aug``: each
    sample draws ``lam ~ Beta(alpha_c, alpha_c)`` from its own class's alpha (``lam = 1`` for
    classes switched off), ``lam <- max(lam, 1 - lam)``, and mixes with the reversed batch
    (row ``b`` with row ``B - 1 - b``), labels alike. ``p`` and ``mode`` gate mixing as in
    Mixup; lambda is always per sample once measured. The per-class alphas are the state
    (:meth:`policy_state`); classes absent from the held-out split keep their alpha.

    Where this follows the code rather than the paper's text: the held-out split is 5% of
    the training set (``tfds`` ``train[95%:]``); a single model is measured (the code does it
    per ensemble member). Deviations: the code trains its first epoch without mixing; here,
    until the first measurement, calling the policy is exactly the wrapped Mixup. The code
    clips alpha to [0, 1] so that 1 doubles as "off" (a Mixup alpha of 1 would switch every
    class off); here "off" is stored as alpha 0 and any alpha > 0 is drawn from, so Mixup's
    alpha 1 works. Only plain Mixup can be wrapped (the switch changes its lambda draw).

    Args:
        method: the sample policy; must be ``"mixup"`` (or a :class:`~mixkit.MixUp`).
        method_args: Mixup's hyper-parameters (its ``alpha`` is the alpha of mixing classes).
        p: probability of mixing, passed to Mixup.
        mode: ``"batch"`` or ``"elem"``, passed to Mixup (matters before the first measurement).
        num_classes: number of classes (else read from the model's output width).
        holdout_fraction: share of every class the engine keeps out of training, in (0, 1).

    Example:
        >>> import torch, mixkit
        >>> from mixkit.holdout import Holdout
        >>> cam = mixkit.create("camixup", num_classes=2)
        >>> # a stub model whose held-out "images" are its logits: class 0 right and sure,
        >>> # class 1 wrong and sure (over-confident)
        >>> cam.attach_holdout(Holdout(torch.tensor([[3.0, 0.0], [3.0, 0.0]]).view(2, 2, 1, 1),
        ...                            torch.tensor([0, 1])))
        >>> logs = cam.epoch_end(torch.nn.Flatten())
        >>> cam.class_alpha.tolist(), logs["camixup_mixing_classes"]
        ([0.0, 1.0], 1.0)
    """

    def __init__(
        self,
        *,
        method: MixMethod | str = "mixup",
        method_args: dict[str, Any] | None = None,
        p: float | None = None,
        mode: str | None = None,
        num_classes: int | None = None,
        holdout_fraction: float = 0.05,
    ) -> None:
        super().__init__(method=method, method_args=method_args, p=p, mode=mode, num_classes=num_classes)
        if type(self.inner) is not MixUp:
            raise HyperParameterError(
                f"CAMixup switches Mixup's lambda per class and wraps only 'mixup', got {type(self.inner).__name__}; "
                "use another label policy with other sample policies"
            )
        self.holdout_fraction = check_range(holdout_fraction, 0.0, 1.0, "holdout_fraction")
        if not 0.0 < self.holdout_fraction < 1.0:
            raise HyperParameterError(f"holdout_fraction must be in (0, 1), got {holdout_fraction}")
        #: ``(K,)`` float64 Beta concentration per class (0: no mixing); None before measuring.
        self.class_alpha: Tensor | None = None
        self._holdout: Holdout | None = None

    # ------------------------------------------------------------------------- mixing
    def sample(self, x: Tensor, y: Tensor | None = None, *, generator: torch.Generator | None = None) -> Params:
        if self.class_alpha is None:
            return self.inner.sample(x, y, generator=generator)
        if y is None:
            raise LabelError("CAMixup draws each lambda from the sample's class: sample() needs the labels y")
        classes = (y.argmax(dim=1) if y.ndim == 2 else y).cpu().long()
        if classes.numel() and int(classes.max()) >= self.class_alpha.numel():
            raise LabelError(f"label {int(classes.max())} has no measured alpha ({self.class_alpha.numel()} classes)")
        alpha = self.class_alpha[classes]
        b = x.shape[0]
        lam = torch.ones(b, dtype=torch.float64)
        for a in torch.unique(alpha[alpha > 0]).tolist():
            rows = alpha == a
            lam[rows] = rng.beta((int(rows.sum()),), a, a, generator=generator)
        lam = torch.maximum(lam, 1.0 - lam)
        active = self.inner._active(b, generator)
        index = self._partner(torch.arange(b - 1, -1, -1), active)
        return BlendParams(index=index, lam=torch.where(active, lam, 1.0))

    def __call__(self, x: Tensor, y: Tensor, *, generator: torch.Generator | None = None) -> MixOutput:  # type: ignore[override]
        return MixMethod.__call__(self, x, y, generator=generator)

    def train_step(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        *,
        criterion: Criterion,
        generator: torch.Generator | None = None,
    ) -> StepOutput:
        """Mix with the per-class lambdas, run the model, the engine's criterion."""
        return MixMethod.train_step(self, model, x, y, criterion=criterion, generator=generator)

    # ----------------------------------------------------------------- measuring
    def attach_holdout(self, holdout: Holdout) -> None:
        self._holdout = holdout

    def epoch_end(self, model: nn.Module) -> dict[str, float]:
        """Measure each class's accuracy-confidence gap on the held-out split and switch."""
        logs = dict(self.inner.epoch_end(model))
        if self._holdout is None:
            raise RuntimeError("CAMixup needs held-out data: call attach_holdout() first (the training engine does)")
        logits, labels = _predict(model, self._holdout)
        k = self.num_classes or logits.shape[1]
        if k != logits.shape[1]:
            raise LabelError(f"num_classes={k} but the model outputs {logits.shape[1]} classes")
        gap = class_calibration_gap(logits, labels, k)
        on = torch.full((k,), float(self.inner.alpha), dtype=torch.float64)
        previous = on if self.class_alpha is None else self.class_alpha
        alpha = torch.where(gap > 0, 0.0, on)
        self.class_alpha = torch.where(gap.isnan(), previous, alpha)
        logs["camixup_mixing_classes"] = float((self.class_alpha > 0).sum())
        logs["camixup_mean_gap"] = float(gap[~gap.isnan()].mean()) if bool((~gap.isnan()).any()) else 0.0
        return logs

    def policy_state(self) -> dict[str, Any]:
        return {"class_alpha": None if self.class_alpha is None else self.class_alpha.clone()}

    def load_policy_state(self, state: dict[str, Any]) -> None:
        unknown = set(state) - {"class_alpha"}
        if unknown:
            raise ValueError(f"CAMixup state has unknown keys {sorted(unknown)}")
        alpha = state.get("class_alpha")
        self.class_alpha = None if alpha is None else torch.as_tensor(alpha, dtype=torch.float64).clone().cpu()
