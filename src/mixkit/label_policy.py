"""Label policies: how a sample policy's mixed batch becomes a loss.

A label policy wraps a sample policy (any registered mixing method, Mixup by default) and
changes what the model is trained against: a different loss on the mixed target
(DecoupleMix), an extra clean forward (RegMixup, RankMixup), a relabelled target (GenLabel,
LUMix), a lambda learned on the side (AdaMixup, MetaMixUp). It is itself a
:class:`~mixkit.MixMethod`: calling it mixes exactly as the wrapped method does, and its
:meth:`~LabelPolicy.train_step` is where the policy acts, so the training engine treats it
like any method (``mixkit train --method cutmix --label-policy decouplemix``, or
``--method decouplemix`` for the policy on its default Mixup).

Subclasses change the loss by overriding :meth:`LabelPolicy.loss` (the wrapped method's own
training step then runs with it as its criterion, so feature-level and model-aware methods
keep their forward), or override :meth:`LabelPolicy.train_step` when they need more (a clean
forward, the model's predictions, their own optimiser).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from mixkit.base import MixMethod
from mixkit.errors import HyperParameterError
from mixkit.holdout import Holdout
from mixkit.types import MixOutput, MixTarget, Params, StepOutput

__all__ = ["LabelPolicy", "Criterion"]

Criterion = Callable[[Tensor, MixTarget], Tensor]


def _build_inner(method: MixMethod | str, method_args: dict[str, Any] | None, shared: dict[str, Any]) -> MixMethod:
    from mixkit.registry import create, method_info

    if isinstance(method, MixMethod):
        if method_args:
            raise HyperParameterError("method_args apply only when method is a registry name")
        if isinstance(method, LabelPolicy):
            raise HyperParameterError("method must be a sample policy, not another label policy")
        return method
    if not isinstance(method, str):
        raise HyperParameterError(f"method must be a registry name or a mixkit method, got {type(method).__name__}")
    info = method_info(method)
    if info.family == "label":
        raise HyperParameterError(f"method must be a sample policy, got the label policy {method!r}")
    args = dict(method_args or {})
    for key, value in shared.items():
        if key in info.defaults and value is not None:
            args.setdefault(key, value)
    return create(method, **args)


class LabelPolicy(MixMethod):
    """Base class of label policies: a sample policy plus a rule for the loss.

    Args:
        method: the sample policy, a registry name or a method object (default ``"mixup"``).
        method_args: hyper-parameters for ``method`` when it is given by name.
        p: probability of mixing, passed to ``method`` when given by name (None: its default).
        mode: ``"batch"`` or ``"elem"``, passed on like ``p`` (None: its default).
        num_classes: number of classes, passed on like ``p``.
    """

    def __init__(
        self,
        *,
        method: MixMethod | str = "mixup",
        method_args: dict[str, Any] | None = None,
        p: float | None = None,
        mode: str | None = None,
        num_classes: int | None = None,
    ) -> None:
        self.method = method
        self.method_args = dict(method_args) if method_args else None
        self.inner = _build_inner(method, self.method_args, {"p": p, "mode": mode, "num_classes": num_classes})
        super().__init__(p=self.inner.p, mode=self.inner.mode, num_classes=num_classes or self.inner.num_classes)
        self.p, self.mode = p, mode  # as given, so hparams rebuild the same object
        self.spatial_dims = self.inner.spatial_dims  # type: ignore[misc]
        self.needs_float = self.inner.needs_float  # type: ignore[misc]
        self.fixed_lambda = self.inner.fixed_lambda  # type: ignore[misc]
        self.identity_at_full_lambda = self.inner.identity_at_full_lambda  # type: ignore[misc]
        if self.holdout_fraction == 0:
            self.holdout_fraction = self.inner.holdout_fraction

    # ----------------------------------------------------------- mixing: the sample policy's
    def sample(self, x: Tensor, y: Tensor | None = None, *, generator: torch.Generator | None = None) -> Params:
        return self.inner.sample(x, y, generator=generator)

    def _mix(self, x: Tensor, params: Params) -> Tensor:
        return self.inner._mix(x, params)

    def apply(self, x: Tensor, params: Params) -> Tensor:
        return self.inner.apply(x, params)

    def target(self, y: Tensor, params: Params) -> MixTarget:
        return self.inner.target(y, params)

    def check(self, x: Tensor, y: Tensor) -> None:
        self.inner.check(x, y)

    def __call__(self, x: Tensor, y: Tensor, *, generator: torch.Generator | None = None, **kwargs: Any) -> MixOutput:
        return self.inner(x, y, generator=generator, **kwargs)

    # ----------------------------------------------------------------- the policy's part
    def loss(self, logits: Tensor, target: MixTarget, criterion: Criterion) -> Tensor:
        """The policy's loss on the mixed batch's logits (default: the engine's criterion)."""
        return criterion(logits, target)

    def train_step(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        *,
        criterion: Criterion,
        generator: torch.Generator | None = None,
    ) -> StepOutput:
        """The wrapped method's training step, with :meth:`loss` as its criterion."""

        def policy_criterion(logits: Tensor, target: MixTarget) -> Tensor:
            return self.loss(logits, target, criterion)

        return self.inner.train_step(model, x, y, criterion=policy_criterion, generator=generator)

    # ------------------------------------------------------------- state, passed through
    def policy_state(self) -> dict[str, Any]:
        """The policy's own state to checkpoint (subclasses with state override this)."""
        return {}

    def load_policy_state(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"{type(self).__name__} keeps no state, got keys {sorted(state)}")

    def state_dict(self) -> dict[str, Any]:
        return {"method": self.inner.state_dict(), "policy": self.policy_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state.get("method", {}))
        self.load_policy_state(state.get("policy", {}))

    def set_input_normalization(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().set_input_normalization(mean, std)
        self.inner.set_input_normalization(mean, std)

    def attach_holdout(self, holdout: Holdout) -> None:
        if self.inner.holdout_fraction > 0:
            self.inner.attach_holdout(holdout)
        else:
            super().attach_holdout(holdout)

    def set_training_length(self, total_steps: int) -> None:
        self.inner.set_training_length(total_steps)

    def epoch_end(self, model: nn.Module) -> dict[str, float]:
        return self.inner.epoch_end(model)
