"""AugRmixAT: augmentation, AugMix and an adversarial perturbation, each randomly mixed.

Paper:
    * Liu, Shen, Zhao, Nie, "AugRmixAT: A Data Processing and Training Method for Improving
      Multiple Robustness and Generalization Performance", ICME 2022 (arXiv 2207.10290). No
      reference code was released (Papers with Code lists none).

What could be checked: the abstract, the survey's summary (several augmented versions of a
batch, from augmentation, AugMix and an adversarial perturbation, each passed through a
mixing method drawn at random, the losses summed) and the same authors' RandomMix, whose
candidate set (Mixup, CutMix, ResizeMix, FMix) the mixed-sample survey also names for
AugRmixAT. The paper's full text could not be read here; the choices it would settle are
listed in the class docstring.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from mixkit import rng
from mixkit._device import upload
from mixkit.base import MixMethod
from mixkit.errors import HyperParameterError
from mixkit.methods.augmix import AugMix, AugMixParams, augmix_jsd
from mixkit.methods.random_policies import ChoiceParams, RandomChoice
from mixkit.registry import register
from mixkit.types import MixTarget, Params, StepOutput
from mixkit.validation import check_range

__all__ = ["AugRmixAT", "AugRmixATParams", "pgd_perturb"]


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Put every submodule in eval mode, then restore each one's own flag."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.train(flag)


def pgd_perturb(
    model: nn.Module,
    pixels: Tensor,
    loss_fn: Callable[[Tensor], Tensor],
    *,
    to_input: Callable[[Tensor], Tensor] = lambda p: p,
    epsilon: float,
    step_size: float,
    steps: int,
    random_start: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """L-infinity PGD (Madry et al., 2018) in pixel units; FGSM is ``steps=1, step_size=epsilon,
    random_start=False``.

    Gradients are taken with :func:`torch.autograd.grad` with respect to the perturbation only,
    so nothing accumulates in the parameters' ``.grad``. The model runs as it is (callers pick
    its mode).

    Args:
        model: the network attacked.
        pixels: ``(B, C, H, W)`` images in [0, 1] pixel units; never modified.
        loss_fn: ``loss_fn(logits) -> scalar`` to increase.
        to_input: maps pixels to the model's input space (e.g. normalisation).
        epsilon: bound on ``|delta|`` per pixel, in pixel units.
        step_size: ascent step per iteration, in pixel units.
        steps: number of iterations (>= 1).
        random_start: start from ``U(-epsilon, epsilon)`` noise.
        generator: CPU generator for the random start.

    Returns:
        The perturbed pixels, detached: within ``epsilon`` of ``pixels`` and inside [0, 1].
    """
    base = pixels.detach()
    if random_start:
        delta = rng.uniform(tuple(base.shape), -epsilon, epsilon, generator=generator).to(base)
    else:
        delta = torch.zeros_like(base)
    delta = (base + delta).clamp(0.0, 1.0) - base
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = loss_fn(model(to_input(base + delta)))
        (grad,) = torch.autograd.grad(loss, delta)
        delta = (delta.detach() + step_size * grad.sign()).clamp(-epsilon, epsilon)
        delta = (base + delta).clamp(0.0, 1.0) - base
    return (base + delta).detach()


@dataclass(frozen=True, eq=False, kw_only=True)
class AugRmixATParams(Params):
    """Params of AugRmixAT: the AugMix draws and the random mix shared by every view.

    Attributes:
        augmix: the AugMix params (``active`` marks the samples processed under ``p``).
        mix: the random choice's params (inactive samples get the "not mixed" choice).
    """

    augmix: AugMixParams
    mix: ChoiceParams


@register(
    "augrmixat",
    family="random",
    paper="AugRmixAT: A Data Processing and Training Method for Improving Multiple Robustness and "
    "Generalization Performance",
    authors="Liu et al.",
    venue="ICME 2022",
    year=2022,
    code="https://arxiv.org/abs/2207.10290",
    sources="k",
    needs=("gradients",),
    summary="Clean, AugMix and PGD-perturbed views of the batch, each mixed by one method drawn at random "
    "(Mixup, CutMix, ResizeMix, FMix); the three losses summed.",
)
class AugRmixAT(MixMethod):
    """AugRmixAT: three views of the batch, each passed through one randomly drawn mix.

    :meth:`train_step` (the method): the batch ``x`` as the data pipeline augmented it (random
    crop and flip in ``mixkit train``), its AugMix image ``x_bar`` (:class:`AugMix`, pixel
    space) and an adversarial ``x_hat`` (:func:`pgd_perturb` on ``x`` against the clean labels,
    ``epsilon`` in pixel units, converted through :meth:`set_input_normalization`'s stats;
    the model is in eval mode during the attack and each submodule's mode is restored after)
    are mixed with one method drawn per batch (per sample in ``"elem"`` mode) from ``methods``,
    with the same pairing and lambda for the three views, and the three criteria are summed
    (plus ``jsd_weight`` times :func:`~mixkit.methods.augmix.augmix_jsd` of the three views).
    The plain call, without a model, returns the non-adversarial view ``mix(AugMix(x))``.
    Lambda and pairing are those of the method drawn (lambda the weight of the original).

    Choices the paper's text would settle (not readable here): the perturbed image is the
    clean one, not the AugMix one; one mix draw is shared by the three views; the attack is
    PGD with Madry et al.'s CIFAR training settings (8/255, 7 steps of 2/255, random start;
    ``steps=1, step_size=epsilon, random_start=False`` is FGSM); no consistency loss by default.

    Args:
        methods: registry names or method objects mixed at random (RandomMix's set).
        epsilon: L-infinity bound of the perturbation, in [0, 1] pixel units.
        step_size: PGD step, in pixel units.
        steps: PGD iterations (>= 1).
        random_start: start PGD from uniform noise in the epsilon ball.
        severity: AugMix operation severity (3).
        width: AugMix chains (3).
        depth: AugMix chain depth (-1: uniform in {1, 2, 3}).
        alpha: AugMix Dirichlet and Beta concentration (1).
        all_ops: AugMix with the colour operations too.
        jsd_weight: weight of the Jensen-Shannon consistency of the three views (0: none).
        p: probability of processing the batch (``"batch"``) or each sample (``"elem"``).
        mode: ``"batch"`` or ``"elem"`` (also passed to methods given by name).
        num_classes: number of classes.

    Example:
        >>> import torch, mixkit
        >>> m = mixkit.create("augrmixat", num_classes=4)
        >>> out = m(torch.rand(4, 3, 16, 16), torch.tensor([0, 1, 2, 3]), generator=torch.Generator().manual_seed(0))
        >>> out.x.shape, out.target.soft().sum(dim=1).tolist()
        (torch.Size([4, 3, 16, 16]), [1.0, 1.0, 1.0, 1.0])
    """

    differentiable = False
    spatial_dims = (2,)
    identity_at_full_lambda = False

    def __init__(
        self,
        *,
        methods: Sequence[MixMethod | str] = ("mixup", "cutmix", "resizemix", "fmix"),
        epsilon: float = 8 / 255,
        step_size: float = 2 / 255,
        steps: int = 7,
        random_start: bool = True,
        severity: int = 3,
        width: int = 3,
        depth: int = -1,
        alpha: float = 1.0,
        all_ops: bool = False,
        jsd_weight: float = 0.0,
        p: float = 1.0,
        mode: str = "batch",
        num_classes: int | None = None,
    ) -> None:
        super().__init__(p=p, mode=mode, num_classes=num_classes)
        self.methods = tuple(methods) if not isinstance(methods, str) else methods
        self.epsilon = check_range(epsilon, 0.0, 1.0, "epsilon")
        self.step_size = check_range(step_size, 0.0, 1.0, "step_size")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise HyperParameterError(f"steps must be a positive integer, got {steps!r}")
        self.steps = steps
        self.random_start = bool(random_start)
        self.severity, self.width, self.depth, self.alpha, self.all_ops = severity, width, depth, alpha, all_ops
        self.jsd_weight = check_range(jsd_weight, 0.0, float("inf"), "jsd_weight")
        self._augmix = AugMix(severity=severity, width=width, depth=depth, alpha=alpha, all_ops=all_ops,
                              mode=mode, num_classes=num_classes)
        self._mixer = RandomChoice(self.methods, mode=mode, num_classes=num_classes)

    def set_input_normalization(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().set_input_normalization(mean, std)
        self._augmix.set_input_normalization(mean, std)
        self._mixer.set_input_normalization(mean, std)

    def check(self, x: Tensor, y: Tensor) -> None:
        self._augmix.check(x, y)
        self._mixer.check(x, y)

    def sample(
        self, x: Tensor, y: Tensor | None = None, *, generator: torch.Generator | None = None
    ) -> AugRmixATParams:
        b = x.shape[0]
        active = self._active(b, generator)
        augmix = replace(self._augmix.sample(x, y, generator=generator), active=active)
        mix = self._mixer._sample_rows(x, y, active, generator=generator)  # no params drawn for inactive rows
        choice = torch.where(active, mix.choice, len(self.methods))
        inner = tuple(p if bool((choice == k).any()) else None for k, p in enumerate(mix.inner))
        index = torch.where(active, mix.index, torch.arange(b))
        lam = torch.where(active, mix.lam, torch.ones_like(mix.lam))
        mix = replace(mix, choice=choice, inner=inner, index=index, lam=lam)
        return AugRmixATParams(index=index, lam=lam, augmix=augmix, mix=mix)

    def _mix(self, x: Tensor, params: AugRmixATParams) -> Tensor:
        return self._mixer._mix(self._augmix._mix(x, params.augmix), params.mix)

    def target(self, y: Tensor, params: AugRmixATParams) -> MixTarget:  # type: ignore[override]
        return self._mixer.target(y, params.mix)

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, *, criterion: Callable[[Tensor, MixTarget], Tensor],
                generator: torch.Generator | None = None) -> Tensor:
        """The adversarial view of normalised batch ``x`` (PGD in pixel units, model in eval mode)."""
        labels = MixTarget.unmixed(y, self.num_classes)
        # the attack's extra forwards bypass DistributedDataParallel, which expects one backward per forward
        net = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
        work = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        with _eval_mode(net):
            pixels = pgd_perturb(net, self._to_pixels(work), lambda logits: criterion(logits, labels),
                                 to_input=self._from_pixels, epsilon=self.epsilon, step_size=self.step_size,
                                 steps=self.steps, random_start=self.random_start, generator=generator)
        return self._from_pixels(pixels).to(x.dtype)

    def train_step(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        *,
        criterion: Callable[[Tensor, MixTarget], Tensor],
        generator: torch.Generator | None = None,
    ) -> StepOutput:
        """Sum of the criterion on the mixed clean, AugMix and adversarial views."""
        rng.check_generator(generator)
        self.check(x, y)
        params = self.sample(x, y, generator=generator)
        target = self.target(y, params)
        active = upload(params.augmix.active, x.device).view(-1, *([1] * (x.ndim - 1)))
        x_hat = x
        if bool(params.augmix.active.any()):
            x_hat = torch.where(active, self.perturb(model, x, y, criterion=criterion, generator=generator), x)
        views = [self._mixer._mix(v, params.mix) for v in (x, self._augmix._mix(x, params.augmix), x_hat)]
        b = x.shape[0]
        logits = model(torch.cat(views))
        parts = [logits[i * b : (i + 1) * b] for i in range(3)]
        losses = [criterion(part, target) for part in parts]
        loss = losses[0] + losses[1] + losses[2]
        logs = {f"loss_{k}": float(v.detach()) for k, v in zip(("clean", "augmix", "adv"), losses, strict=True)}
        if self.jsd_weight > 0:
            consistency = augmix_jsd(*parts)
            loss = loss + self.jsd_weight * consistency
            logs["jsd"] = float(consistency.detach())
        return StepOutput(loss=loss, logits=parts[0], target=target, logs=logs)
