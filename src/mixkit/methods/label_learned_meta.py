"""MetaMixUp: lambda learned by meta-gradients of a held-out loss.

Paper: Mai, Hu, Chen, Shen, Shen, "MetaMixUp: Learning Adaptive Interpolation Policy of MixUp
with Meta-Learning", IEEE TNNLS 2021 (arXiv 1908.10059). No official code was released.

**What was followed.** Only the paper's abstract and the seed survey's summary could be read
here, not its body. Both describe an online bi-level scheme: the model trains on a batch mixed
with the current lambda ("train state"); the gradient of a held-out ("validation") loss after
that step, taken with respect to lambda, updates lambda ("meta state"); and so on, in turn.
This module implements that scheme with the one-step look-ahead of learning-to-reweight
(Ren et al., ICML 2018), which MetaMixUp builds on. The choices below are this library's,
not verified against the paper: a single lambda shared by the batch and learned across steps
(not a network), clipped to [0, 1]; the meta step before the real step (lambda_t gives the
virtual step, lambda_{t+1} the real one); Adam on lambda with learning rate 1e-3, starting at
0.5; a virtual SGD step of ``virtual_lr`` (set it to the model's learning rate); plain
cross-entropy as the held-out loss; a tenth of each class held out.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from mixkit import rng
from mixkit._device import upload
from mixkit.base import MixMethod
from mixkit.errors import HyperParameterError
from mixkit.holdout import Holdout
from mixkit.label_policy import Criterion, LabelPolicy
from mixkit.losses import mixup_cross_entropy
from mixkit.methods.label_learned_shared import (
    average_across_ranks,
    blending,
    check_blend_method,
    mixing_layer,
    unwrap,
)
from mixkit.registry import register
from mixkit.types import MixTarget, StepOutput
from mixkit.validation import check_choice, check_positive_int, check_range

__all__ = ["MetaMixUp", "meta_lambda_gradient"]


def meta_lambda_gradient(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    holdout: tuple[Tensor, Tensor],
    *,
    lam: Tensor,
    index: Tensor,
    active: Tensor,
    layer: str,
    criterion: Criterion,
    virtual_lr: float,
) -> tuple[Tensor, Tensor]:
    """``d L_v(theta - virtual_lr * grad_theta L_mix(theta, lam)) / d lam`` and ``L_v``.

    ``L_mix`` is ``criterion`` on the batch blended at ``layer`` with ``lam`` (inactive rows
    keep lambda 1) and its mixed target; ``L_v`` the cross-entropy of the held-out batch under
    the virtually updated parameters. The virtual step runs through
    :func:`torch.func.functional_call` on copies: the model's parameters and buffers (e.g.
    batch-norm statistics) are left exactly as they were. Costs a double backward.

    Args:
        model: the network (its train/eval state is used as it is).
        x: ``(B, ...)`` training batch; ``y`` its labels ``(B,)`` or ``(B, K)``.
        holdout: a held-out batch ``(x_v, y_v)``.
        lam: 0-d lambda tensor (the weight of each row's own sample).
        index: ``(B,)`` partner rows; ``active`` ``(B,)`` bool, the rows that are mixed.
        layer: where to blend (``"input"`` or a submodule name).
        criterion: ``criterion(logits, target) -> loss`` for the mixed batch.
        virtual_lr: learning rate of the virtual SGD step.

    Returns:
        The 0-d gradient (``lam``'s dtype and device) and the held-out loss (detached).
    """
    base = unwrap(model)
    leaf = lam.detach().requires_grad_(True)
    trained = {n: p.detach().requires_grad_(True) for n, p in base.named_parameters() if p.requires_grad}
    frozen = {n: p for n, p in base.named_parameters() if not p.requires_grad}

    def buffers() -> dict[str, Tensor]:  # fresh copies: running statistics stay untouched
        return {n: b.detach().clone() for n, b in base.named_buffers()}

    work = torch.promote_types(x.dtype, torch.float32) if x.is_floating_point() else torch.float32
    rows = torch.where(active, upload(leaf, x.device, work), torch.ones((), device=x.device, dtype=work))
    with blending(base, layer, index, rows):
        logits = functional_call(base, {**trained, **frozen, **buffers()}, (x,))
    loss = criterion(logits, MixTarget.pair(y, index, rows))
    grads = torch.autograd.grad(loss, list(trained.values()), create_graph=True, allow_unused=True)
    fast = {n: p if g is None else p - virtual_lr * g for (n, p), g in zip(trained.items(), grads)}
    logits_v = functional_call(base, {**fast, **frozen, **buffers()}, (holdout[0],))
    loss_v = mixup_cross_entropy(logits_v, holdout[1])
    (g,) = torch.autograd.grad(loss_v, leaf, allow_unused=True)
    return (torch.zeros_like(leaf) if g is None else g).detach(), loss_v.detach()


@register(
    "metamixup",
    family="label",
    paper="MetaMixUp: Learning Adaptive Interpolation Policy of MixUp with Meta-Learning",
    authors="Mai et al.",
    venue="IEEE TNNLS 2021",
    year=2021,
    code="https://arxiv.org/abs/1908.10059",  # no official code was released
    sources=2,
    summary="Mixup lambda learned online by the meta-gradient of a held-out loss after a virtual step.",
    needs=("gradients",),
)
class MetaMixUp(LabelPolicy):
    """MetaMixUp: the mixing lambda is learned from held-out data by meta-gradients.

    **Partly unverified: see the module docstring.** Each training step: (1) the wrapped
    method draws the pairing (and, for Manifold Mixup, the layer); (2) a held-out batch is
    drawn (``holdout.sample(n, generator)``); (3) a virtual SGD step of the model on the batch
    mixed with the current lambda, through :func:`torch.func.functional_call` (the model and
    its batch-norm buffers are not touched), gives ``theta'(lambda)``; (4) the gradient of the
    held-out cross-entropy at ``theta'`` with respect to lambda updates lambda (own
    optimiser, then clipped to [0, 1]); (5) the returned loss is the engine's criterion on the
    batch mixed with the new lambda, held constant (no gradient reaches lambda through it).
    Lambda is the weight of the original sample, one value for the whole batch, kept across
    steps. ``p`` and ``mode`` act through the wrapped method (inactive samples keep lambda 1).
    Calling the policy mixes as the wrapped method does (its Beta lambda); the learned lambda
    acts in the training step. The lambda lives on the CPU in float64 (a scalar: its
    optimiser's state is tiny) and is moved to the batch's device at each step.

    The training engine keeps ``holdout_fraction`` of each class out of training and hands it
    over through :meth:`attach_holdout`; outside the engine, attach a
    :class:`~mixkit.holdout.Holdout` yourself.

    Args:
        method: ``"mixup"`` (input) or ``"manifold_mixup"`` (hidden layer), a name or a
            method object; other sample policies are refused (lambda must act differentiably).
        method_args: its hyper-parameters when given by name (its alpha is not used here).
        p: probability of mixing, passed to ``method`` when given by name.
        mode: ``"batch"`` or ``"elem"``, passed on like ``p``.
        num_classes: number of classes, passed on like ``p``.
        init_lam: lambda before any meta step, in [0, 1].
        meta_lr: learning rate of lambda's optimiser (0 freezes lambda at ``init_lam``).
        meta_optimizer: ``"adam"`` or ``"sgd"`` for lambda.
        virtual_lr: step size of the virtual SGD step (use the model's learning rate).
        holdout_fraction: share of each class the engine holds out, in (0, 1).
        holdout_batch_size: held-out samples per meta step (None: the training batch size).

    Example:
        >>> import torch, mixkit
        >>> from mixkit.holdout import Holdout
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
        >>> meta = mixkit.create("metamixup", num_classes=3, meta_optimizer="sgd", meta_lr=10.0)
        >>> meta.attach_holdout(Holdout(torch.rand(6, 3, 2, 2), torch.tensor([0, 1, 2, 0, 1, 2])))
        >>> out = meta.train_step(net, torch.rand(4, 3, 2, 2), torch.tensor([0, 1, 2, 0]),
        ...                       criterion=mixkit.mixup_cross_entropy, generator=torch.Generator().manual_seed(0))
        >>> 0 <= meta.lam <= 1, out.logs["lam"] == meta.lam
        (True, True)
    """

    def __init__(
        self,
        *,
        method: MixMethod | str = "mixup",
        method_args: dict[str, Any] | None = None,
        p: float | None = None,
        mode: str | None = None,
        num_classes: int | None = None,
        init_lam: float = 0.5,
        meta_lr: float = 1e-3,
        meta_optimizer: str = "adam",
        virtual_lr: float = 0.1,
        holdout_fraction: float = 0.1,
        holdout_batch_size: int | None = None,
    ) -> None:
        super().__init__(method=method, method_args=method_args, p=p, mode=mode, num_classes=num_classes)
        check_blend_method(self.inner, "metamixup")
        self.init_lam = check_range(init_lam, 0.0, 1.0, "init_lam")
        self.meta_lr = check_range(meta_lr, 0.0, math.inf, "meta_lr")
        self.meta_optimizer = check_choice(meta_optimizer, ("adam", "sgd"), "meta_optimizer")
        self.virtual_lr = check_range(virtual_lr, 0.0, math.inf, "virtual_lr")
        self.holdout_fraction = check_range(holdout_fraction, 0.0, 1.0, "holdout_fraction")
        if not 0.0 < self.holdout_fraction < 1.0:
            raise HyperParameterError(f"holdout_fraction must be in (0, 1), got {holdout_fraction}")
        self.holdout_batch_size = check_positive_int(holdout_batch_size, "holdout_batch_size")
        self._holdout: Holdout | None = None
        self._reset()

    def _reset(self) -> None:
        self._lam = torch.tensor(self.init_lam, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.Adam if self.meta_optimizer == "adam" else torch.optim.SGD
        self._optimizer = opt([self._lam], lr=self.meta_lr)
        self._stats = torch.zeros(2, dtype=torch.float64)  # sum of held-out losses; steps

    @property
    def lam(self) -> float:
        """The current learned lambda."""
        return float(self._lam.detach())

    def attach_holdout(self, holdout: Holdout) -> None:
        """Receive the held-out split the meta steps draw from."""
        self._holdout = holdout

    def train_step(
        self, model: nn.Module, x: Tensor, y: Tensor, *, criterion: Criterion, generator: torch.Generator | None = None
    ) -> StepOutput:
        """Meta-update lambda on a held-out batch, then the mixed loss with the new lambda."""
        rng.check_generator(generator)
        self.check(x, y)
        if self._holdout is None:
            raise RuntimeError("metamixup needs held-out data: train it with the mixkit engine (which holds out "
                               "holdout_fraction of each class) or call attach_holdout(Holdout(images, labels)) first")
        params = self.inner.sample(x, y, generator=generator)
        index, active, layer = upload(params.index, x.device), upload((params.lam < 1), x.device), mixing_layer(params)
        held = self._holdout.sample(self.holdout_batch_size or x.shape[0], generator)
        grad, held_loss = meta_lambda_gradient(model, x, y, held, lam=self._lam, index=index, active=active,
                                               layer=layer, criterion=criterion, virtual_lr=self.virtual_lr)
        self._meta_step(grad)
        work = torch.promote_types(x.dtype, torch.float32) if x.is_floating_point() else torch.float32
        rows = torch.where(active, upload(self._lam.detach(), x.device, work), torch.ones((), device=x.device, dtype=work))
        with blending(model, layer, index, rows):
            logits = model(x)
        target = MixTarget.pair(y, index, rows, self.num_classes)
        self._stats += torch.tensor([float(held_loss), 1.0], dtype=torch.float64)
        logs = {"lam": self.lam, "meta_grad": float(grad), "holdout_loss": float(held_loss)}
        return StepOutput(loss=criterion(logits, target), logits=logits, target=target, logs=logs)

    def _meta_step(self, grad: Tensor) -> None:
        g = grad.detach().to(dtype=torch.float64).cpu().reshape(())
        average_across_ranks([g])
        self._lam.grad = g
        self._optimizer.step()
        self._optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            self._lam.clamp_(0.0, 1.0)

    def epoch_end(self, model: nn.Module) -> dict[str, float]:
        """Log the current lambda and the epoch's mean held-out loss."""
        logs = dict(self.inner.epoch_end(model))
        logs["lam"] = self.lam
        if self._stats[1] > 0:
            logs["holdout_loss"] = float(self._stats[0] / self._stats[1])
        self._stats.zero_()
        return logs

    def policy_state(self) -> dict[str, Any]:
        """Lambda, its optimiser's state and the epoch's running sums."""
        return {"lam": self._lam.detach().clone(), "optimizer": copy.deepcopy(self._optimizer.state_dict()),
                "stats": self._stats.clone()}

    def load_policy_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`policy_state` (an empty dict resets lambda to ``init_lam``)."""
        if state and set(state) != {"lam", "optimizer", "stats"}:
            raise ValueError(f"MetaMixUp state must have the keys ['lam', 'optimizer', 'stats'], got {sorted(state)}")
        self._reset()
        if state:
            with torch.no_grad():
                self._lam.copy_(state["lam"].to(torch.float64))
            self._optimizer.load_state_dict(state["optimizer"])
            self._stats = state["stats"].clone().to(torch.float64)
