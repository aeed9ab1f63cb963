"""Label policies that learn lambda: AdaMixup (here) and MetaMixUp (``label_learned_meta``).

Papers and reference code:
    * Guo, Mao, Zhang, "MixUp as Locally Linear Out-of-Manifold Regularization", AAAI 2019
      (arXiv 1809.02499; official TensorPack code github.com/SITE5039/AdaMixUp,
      ``GitHub.AdaMixup.AAAI.MNIST.Cifar.py``).
    * Mai, Hu, Chen, Shen, Shen, "MetaMixUp: Learning Adaptive Interpolation Policy of MixUp
      with Meta-Learning", IEEE TNNLS 2021 (arXiv 1908.10059; no official code).

Both learn the lambda of a linear blend, so both need a mixing that is differentiable in
lambda: they wrap Mixup (the input is blended) or Manifold Mixup (a hidden layer is blended,
through a hook) and refuse other sample policies (a CutMix box is not differentiable in its
area). The helpers shared by the two live here.
"""

from __future__ import annotations

import copy
import itertools
import math
from typing import Any

import torch
from torch import Tensor, nn

from mixkit import rng
from mixkit._device import upload
from mixkit.base import MixMethod
from mixkit.errors import HyperParameterError, ModelError
from mixkit.functional.learned_lambda import (
    intrusion_loss,
    policy_region,
    region_lambda,
    truncated_normal,
)
from mixkit.label_policy import Criterion, LabelPolicy
from mixkit.methods.label_learned_shared import (
    average_across_ranks,
    blending,
    check_blend_method,
    classifier_input,
    classifier_layer,
    mixing_layer,
    unwrap,
)
from mixkit.registry import register
from mixkit.types import MixTarget, StepOutput
from mixkit.validation import check_choice, check_range

__all__ = ["AdaMixup", "blending", "classifier_input", "check_blend_method"]

_STATE_KEYS = {"nets", "optimizer", "grads", "stats"}


# ------------------------------------------------------------------------- AdaMixup parts
def _small_trunk(in_channels: int, gen: torch.Generator) -> tuple[nn.Module, int]:
    trunk = nn.Sequential(
        nn.Conv2d(in_channels, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    )
    for m in trunk:
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu", generator=gen)
            nn.init.zeros_(m.bias)
    return trunk, 32


def _model_trunk(model: nn.Module) -> tuple[nn.Module, int]:
    """A copy of the model with its classifier replaced by the identity: it outputs features."""
    name, fc = classifier_layer(model)
    trunk = copy.deepcopy(unwrap(model))
    parent, _, leaf = name.rpartition(".")
    setattr(trunk.get_submodule(parent) if parent else trunk, leaf, nn.Identity())
    return trunk, fc.in_features


def _linear_stack(widths: tuple[int, ...], gen: torch.Generator) -> nn.Sequential:
    """Linear layers without activations, weights ~ N(0, 1e-3^2), zero biases (the official
    code's ``FullyConnected`` layers with ``random_normal_initializer(stddev=1e-3)``)."""
    layers = [nn.Linear(a, b) for a, b in itertools.pairwise(widths)]
    for lin in layers:
        nn.init.normal_(lin.weight, 0.0, 1e-3, generator=gen)
        nn.init.zeros_(lin.bias)
    return nn.Sequential(*layers)


def build_adamixup_nets(model: nn.Module, in_channels: int, policy_net: str) -> nn.ModuleDict:
    """AdaMixup's own sub-networks for ``model``: the policy region generator (a trunk and two
    linear layers to three scores) and the intrusion discriminator's head (two linear layers
    on the classifier's input features, to ``K`` then 2 outputs, as the official code).

    The trunk is a copy of ``model`` without its classifier (``"model"``; the paper uses the
    classifier's architecture with its own weights) or a two-convolution net (``"small"``).
    Initialisation uses a fixed seed (no global random state is touched).
    """
    gen = torch.Generator().manual_seed(0)
    fc = classifier_layer(model)[1]
    trunk, width = _model_trunk(model) if policy_net == "model" else _small_trunk(in_channels, gen)
    nets = nn.ModuleDict({
        "generator": trunk,
        "gate": _linear_stack((width, 100, 3), gen),
        "discriminator": _linear_stack((fc.in_features, fc.out_features, 2), gen),
    })
    nets.to(device=fc.weight.device, dtype=fc.weight.dtype)
    for p in nets.parameters():
        p.requires_grad_(True)
        p.grad = None
    return nets


@register(
    "adamixup",
    family="label",
    paper="MixUp as Locally Linear Out-of-Manifold Regularization",
    authors="Guo et al.",
    venue="AAAI 2019",
    year=2019,
    code="https://github.com/SITE5039/AdaMixUp",
    sources=2,
    summary="Per-pair mixing interval from a generator network, trained with an intrusion discriminator.",
    needs=("mixer",),
)
class AdaMixup(LabelPolicy):
    """AdaMixup: lambda drawn from a learned region ``[alpha, alpha + delta]`` per pair, kept
    off the data manifold by an intrusion discriminator.

    One training step follows the official code (``ResNet_Cifar_AdaMixup.build_graph``): the
    batch of ``B`` is split; the first ``h = ceil(B / 2)`` samples are mixed with partners
    drawn from the whole batch (the wrapped method's permutation), the other ``B - h`` are
    "unseen" positives for the discriminator. The generator sees ``(m1 * x + m2 * x[j]) / 2``
    with per-pixel ``m ~ N(0, 1)`` truncated at 2 (as the code), outputs three scores, and
    ``(alpha, delta)`` are the first two softmax outputs; ``lam = alpha + u * delta``,
    ``u ~ U(0, 1)`` (reparameterised). The classifier is trained on the ``h`` mixed and the
    ``h`` original samples (mixup CE, lambda = weight of the original sample); the
    discriminator, a two-layer linear head on the classifier's penultimate features (the
    trunk is shared with the classifier, as the code), labels the ``B`` originals 1 and the
    mixed samples 0. The loss is ``CE_mix + intrusion_weight * CE_intrusion``, minimised by
    the classifier, the generator and the discriminator together (the code sums the two and
    steps every variable with one optimiser). Deviations: the discriminator reuses the
    classifier's forward (one pass over ``B + h`` rows instead of two), so batch-norm
    statistics are shared; the generator and the head have their own SGD with a constant
    learning rate (the code decays it with the classifier's); only the two-image (fold 2)
    policy of the code is implemented. The paper's text was not available here.

    Gradients: the returned loss reaches the generator and the head through lambda and the
    features; the engine's ``backward`` fills their ``.grad``, and the policy's optimiser
    steps them at the start of the next :meth:`train_step` (and in :meth:`epoch_end`), so a
    step costs one backward pass. Pending gradients are part of :meth:`policy_state`.
    Sub-networks are built lazily on the model's device at the first step. ``p`` and
    ``mode`` act through the wrapped method (inactive pairs keep lambda 1 and are left out
    of the intrusion loss); lambda itself is always per pair. Calling the policy mixes as
    the wrapped method does (its Beta lambda); the learned lambda acts in the training step.

    Args:
        method: ``"mixup"`` (the paper) or ``"manifold_mixup"`` (the blend moves to a hidden
            layer); a name or a method object. Other sample policies are refused.
        method_args: its hyper-parameters when given by name (its alpha is not used here).
        p: probability of mixing, passed to ``method`` when given by name.
        mode: ``"batch"`` or ``"elem"``, passed on like ``p``.
        num_classes: number of classes, passed on like ``p``.
        policy_net: the generator's trunk, ``"model"`` (a copy of the model, as the paper) or
            ``"small"`` (two convolutions, for 2-D images; cheaper).
        intrusion_weight: weight of the intrusion loss (1 in the code; 0 turns it off).
        policy_lr: learning rate of the generator and the head (0.1, the CIFAR code's).
        momentum: their SGD momentum (0.9, as the code).
        weight_decay: their weight decay (1e-4, as the code).

    Example:
        >>> import torch, mixkit
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
        >>> ada = mixkit.create("adamixup", num_classes=3)
        >>> out = ada.train_step(net, torch.rand(4, 3, 2, 2), torch.tensor([0, 1, 2, 0]),
        ...                      criterion=mixkit.mixup_cross_entropy, generator=torch.Generator().manual_seed(0))
        >>> out.logits.shape, 0 < out.logs["lam"] < 1
        (torch.Size([4, 3]), True)
    """

    def __init__(
        self,
        *,
        method: MixMethod | str = "mixup",
        method_args: dict[str, Any] | None = None,
        p: float | None = None,
        mode: str | None = None,
        num_classes: int | None = None,
        policy_net: str = "model",
        intrusion_weight: float = 1.0,
        policy_lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 1e-4,
    ) -> None:
        super().__init__(method=method, method_args=method_args, p=p, mode=mode, num_classes=num_classes)
        check_blend_method(self.inner, "adamixup")
        self.policy_net = check_choice(policy_net, ("model", "small"), "policy_net")
        self.intrusion_weight = check_range(intrusion_weight, 0.0, math.inf, "intrusion_weight")
        self.policy_lr = check_range(policy_lr, 0.0, math.inf, "policy_lr")
        self.momentum = check_range(momentum, 0.0, 1.0, "momentum")
        self.weight_decay = check_range(weight_decay, 0.0, math.inf, "weight_decay")
        self._nets: nn.ModuleDict | None = None
        self._optimizer: torch.optim.Optimizer | None = None
        self._loaded: dict[str, Any] | None = None
        self._stats = torch.zeros(5, dtype=torch.float64)  # sums of lam, alpha, delta, intrusion; steps

    # ------------------------------------------------------------------ sub-networks
    @property
    def nets(self) -> nn.ModuleDict | None:
        """The generator (``"generator"`` trunk and ``"gate"``) and the discriminator head, once built."""
        return self._nets

    def _ensure_built(self, model: nn.Module, x: Tensor) -> None:
        if self._nets is None:
            if self.policy_net == "small" and x.ndim != 4:
                raise HyperParameterError(f"policy_net='small' takes images (B, C, H, W), got shape {tuple(x.shape)}")
            self._nets = build_adamixup_nets(model, x.shape[1], self.policy_net)
            self._optimizer = torch.optim.SGD(self._nets.parameters(), lr=self.policy_lr,
                                              momentum=self.momentum, weight_decay=self.weight_decay)
            if self._loaded is not None:
                self._restore(self._loaded)
                self._loaded = None

    def _step_policy(self) -> None:
        """Apply the gradients the last backward pass left on the policy's own parameters."""
        if self._nets is None or self._optimizer is None:
            return
        grads = [p.grad for p in self._nets.parameters() if p.grad is not None]
        if grads:
            average_across_ranks(grads)
            self._optimizer.step()
            self._optimizer.zero_grad(set_to_none=True)

    def _region(self, x: Tensor, index: Tensor, noise: Tensor) -> tuple[Tensor, Tensor]:
        assert self._nets is not None
        m = upload(noise, x.device, x.dtype)
        h = index.shape[0]
        gate_in = (m[0] * x[:h] + m[1] * x.index_select(0, index)) / 2
        return policy_region(self._nets["gate"](self._nets["generator"](gate_in)))

    # ------------------------------------------------------------------- training step
    def train_step(
        self, model: nn.Module, x: Tensor, y: Tensor, *, criterion: Criterion, generator: torch.Generator | None = None
    ) -> StepOutput:
        """One AdaMixup step (see the class docstring); ``logits`` and ``target`` cover the
        ``h`` mixed rows then the ``h`` original rows."""
        rng.check_generator(generator)
        self.check(x, y)
        self._ensure_built(model, x)
        self._step_policy()
        b = x.shape[0]
        h = b - b // 2
        params = self.inner.sample(x, y, generator=generator)
        index, active = upload(params.index[:h], x.device), upload((params.lam[:h] < 1), x.device)
        u = rng.uniform((h,), generator=generator)
        noise = truncated_normal((2, h) + tuple(x.shape[1:]), generator=generator)
        alpha, delta = self._region(x, index, noise)
        lam = torch.where(active, region_lambda(alpha, delta, u), torch.ones_like(alpha))
        logits, feats = self._forward(model, x, index, lam, mixing_layer(params))
        target = _ada_target(y, index, lam, self.num_classes)
        original = torch.arange(h + b, device=x.device) >= h
        weight = torch.cat([active.to(feats.dtype), feats.new_ones(b)])
        assert self._nets is not None
        if self.intrusion_weight > 0:
            intr = intrusion_loss(self._nets["discriminator"](feats), original, weight)
            loss = criterion(logits, target) + self.intrusion_weight * intr
        else:
            with torch.no_grad():
                intr = intrusion_loss(self._nets["discriminator"](feats), original, weight)
            loss = criterion(logits, target)
        # the loss saw lambda's graph; the engine's accuracy meter gets the same weights detached
        shown = MixTarget(target.labels, target.index, target.weight.detach(), target.num_classes)
        return StepOutput(loss=loss, logits=logits, target=shown, logs=self._log(lam, alpha, delta, intr, active))

    def _forward(self, model: nn.Module, x: Tensor, index: Tensor, lam: Tensor, layer: str) -> tuple[Tensor, Tensor]:
        """One forward over ``[x[:h] (mixed), x (original)]``; logits of the first ``2h`` rows and
        the classifier-input features of all ``B + h`` rows."""
        b, h = x.shape[0], index.shape[0]
        rows = torch.cat([index + h, torch.arange(h, h + b, device=x.device)])
        weights = torch.cat([lam, lam.new_ones(b).detach()])
        feats: list[Tensor] = []
        with classifier_input(model, feats), blending(model, layer, rows, weights):
            logits = model(torch.cat([x[:h], x]))
        if not feats:
            raise ModelError("the model's last nn.Linear did not run in its forward: AdaMixup needs it as the classifier")
        return logits[: 2 * h], feats[-1].flatten(1)

    def _log(self, lam: Tensor, alpha: Tensor, delta: Tensor, intr: Tensor, active: Tensor) -> dict[str, float]:
        with torch.no_grad():
            mixed = lam[active] if bool(active.any()) else lam
            values = torch.stack([mixed.mean(), alpha.mean(), delta.mean(), intr.to(alpha.dtype)]).double().cpu()
        self._stats += torch.cat([values, torch.ones(1, dtype=torch.float64)])
        return dict(zip(("lam", "alpha", "delta", "intrusion_loss"), values.tolist()))

    def epoch_end(self, model: nn.Module) -> dict[str, float]:
        """Apply the last pending policy step; log the epoch's mean lambda, alpha, delta and
        intrusion loss."""
        self._step_policy()
        logs = dict(self.inner.epoch_end(model))
        if self._stats[4] > 0:
            means = (self._stats[:4] / self._stats[4]).tolist()
            logs.update(zip(("lam", "alpha", "delta", "intrusion_loss"), means))
        self._stats.zero_()
        return logs

    # -------------------------------------------------------------------------- state
    def save_mixer(self, path: str) -> None:
        """Write the learned sub-networks and their optimiser (:meth:`policy_state`) to ``path``."""
        torch.save(self.policy_state(), path)

    def policy_state(self) -> dict[str, Any]:
        """The sub-networks, their optimiser, pending gradients and the epoch's running sums."""
        if self._nets is None or self._optimizer is None:
            return copy.deepcopy(self._loaded) if self._loaded is not None else {}
        return {
            "nets": {k: v.detach().clone() for k, v in self._nets.state_dict().items()},
            "optimizer": copy.deepcopy(self._optimizer.state_dict()),
            "grads": [None if p.grad is None else p.grad.detach().clone() for p in self._nets.parameters()],
            "stats": self._stats.clone(),
        }

    def load_policy_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`policy_state`; before the first step it is kept until the
        sub-networks are built (they need the model)."""
        if state and set(state) != _STATE_KEYS:
            raise ValueError(f"AdaMixup state must have the keys {sorted(_STATE_KEYS)}, got {sorted(state)}")
        if not state:
            self._nets, self._optimizer, self._loaded = None, None, None
            self._stats.zero_()
        elif self._nets is None:
            self._loaded = copy.deepcopy(state)
            self._stats = state["stats"].clone().to(torch.float64)
        else:
            self._restore(state)

    def _restore(self, state: dict[str, Any]) -> None:
        assert self._nets is not None and self._optimizer is not None
        params = list(self._nets.parameters())
        if len(state["grads"]) != len(params):
            raise ValueError(f"AdaMixup state holds {len(state['grads'])} gradients for {len(params)} parameters")
        self._nets.load_state_dict(state["nets"])
        self._optimizer.load_state_dict(state["optimizer"])
        for p, g in zip(params, state["grads"]):
            p.grad = None if g is None else g.to(device=p.device, dtype=p.dtype).clone()
        self._stats = state["stats"].clone().to(torch.float64)


def _ada_target(y: Tensor, index: Tensor, lam: Tensor, num_classes: int | None) -> MixTarget:
    """Target of ``[mixed (h), original (h)]``: ``lam`` on the own label, ``1 - lam`` on the
    partner's, then weight 1 on the own label (differentiable in ``lam``)."""
    h = index.shape[0]
    own = torch.arange(h, device=y.device)
    index = upload(index, y.device)
    w = upload(lam, y.device, torch.float64 if y.dtype == torch.float64 else torch.float32)
    idx = torch.cat([torch.stack([own, index], 1), torch.stack([own, own], 1)])
    one = torch.ones_like(w).detach()
    weight = torch.cat([torch.stack([w, 1 - w], 1), torch.stack([one, one - one], 1)])
    return MixTarget(y, idx, weight, num_classes)
