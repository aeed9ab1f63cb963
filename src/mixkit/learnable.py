"""Shared machinery of learnable mixup (AutoMix, SAMix, AdAutoMix): the momentum encoder,
the schedules and the training step in which a Mixer learns to generate masks.

Papers and reference code:
    * Liu et al., "AutoMix: Unveiling the Power of Mixup for Stronger Classifiers", ECCV 2022.
    * Li et al., "Boosting Discriminative Visual Representation Learning with Scenario-Agnostic
      Mixup" (SAMix), arXiv 2111.15454.
    * OpenMixup (github.com/Westlake-AI/openmixup): ``openmixup/models/classifiers/automix.py``
      (``AutoMixup``: the two-branch step, ``momentum_update``, ``lam_margin``) and
      ``openmixup/core/hooks/momentum_hook.py`` (``CosineScheduleHook``).

How a step works (:meth:`LearnableMixMethod.train_step`; algorithms.md 1.7): the EMA copy of
the model (:class:`MomentumEncoder`, no gradients) gives the features ``z`` of the clean batch at
``stage``; two independent draws ``(lam_bb, perm_bb)`` and ``(lam_mb, perm_mb)`` are made. The
Mixer builds the backbone mask from ``(z, lam_bb, perm_bb)`` WITHOUT gradient (replaced by the
constant ``lam_bb`` when ``lam_bb <= lam_margin`` or ``>= 1 - lam_margin``: plain Mixup) and the
mixer mask from ``(z, lam_mb, perm_mb)`` WITH gradient; the mixer batch goes through the frozen
EMA model, the subclass's :meth:`~LearnableMixMethod.mixer_loss` is back-propagated into the
Mixer's parameters only and the Mixer's own SGD steps; the classifier's loss (the engine's
``criterion`` on the detached backbone batch, plus ``clean_weight`` x CE on the clean batch as
OpenMixup's ``head_one``) is returned for the engine to back-propagate. The EMA update
``theta_k <- m_t theta_k + (1 - m_t) theta_q`` runs at the start of each step (equal to the
code's update after the previous step).

Writing a subclass: implement three methods and pass the shared options to ``__init__``:

* ``build_mixer(channels, generator) -> nn.Module``: a new Mixer for features with ``channels``
  channels, initialised with draws from ``generator`` (see :func:`mixkit.rng.normal`); also
  ``mixer_config() -> dict`` (its constructor keywords, saved with :meth:`save_mixer`).
* ``generate_mask(feats, index, lam, *, size) -> Tensor``: with ``self.mixer``, the ``(B, 1, H, W)``
  mask (``size = (H, W)``, the input's size) in [0, 1] giving the weight of each row's OWN
  sample (1 keeps ``x[b]``, 0 takes ``x[index[b]]``); ``feats (B, C, h, w)``, ``index (B,)``
  int64, ``lam (B,)`` float64. Differentiable with respect to the Mixer's parameters.
* ``mixer_loss(logits, y, index, lam, mask) -> (loss, logs)``: the Mixer's loss from the frozen
  EMA model's ``logits (B, K)`` on the mixer batch made with ``mask``; ``self.progress`` (t / T
  in [0, 1]) is there for decaying weights. ``logs`` maps names to floats.

Everything (EMA encoder, Mixer, its optimiser, step counter) goes through ``state_dict``; a
state loaded before the first step is applied when the parts are built, so resuming is exact.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from mixkit import rng
from mixkit.base import MixMethod
from mixkit.errors import HyperParameterError
from mixkit.functional.blend import mask_blend
from mixkit.mask_snapshots import MaskSnapshots
from mixkit.momentum import MomentumEncoder, cosine_value, momentum_at, resolve_stage
from mixkit.types import (
    BlendParams,
    MaskParams,
    MixTarget,
    ModelMixOutput,
    Params,
    StepOutput,
)
from mixkit.validation import check_alpha, check_range

__all__ = ["MomentumEncoder", "LearnableMixMethod", "momentum_at", "cosine_value", "resolve_stage", "load_mixer"]

MIXER_FORMAT = "mixkit.mixer/1"


def load_mixer(path: str) -> dict[str, Any]:
    """Read a file written by :meth:`LearnableMixMethod.save_mixer` (tensors only, safe load).

    Returns:
        ``{"format", "method", "config", "channels", "stage", "mixer", "encoder"}``: the Mixer's
        constructor keywords and state, its input channels and stage, the EMA model's state.
    """
    data = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(data, dict) or data.get("format") != MIXER_FORMAT:
        raise ValueError(f"{path} is not a mixer file written by mixkit's save_mixer")
    return data


class LearnableMixMethod(MixMethod):
    """Base class of AutoMix-style methods: a Mixer trained online through an EMA encoder.

    See the module docstring for the step and for what a subclass implements. Lambda is the
    weight of the original sample; labels use the SAMPLED lambda (as the code), the Mixer's
    mask is pushed towards it by the subclass's mask loss.

    Args:
        alpha: Beta concentration of both lambdas (paper: 2).
        stage: the model stage the Mixer reads (``"auto"``: ``layer3`` or the deepest stage).
        momentum: EMA momentum at the start (0.999).
        momentum_end: EMA momentum at the end of the cosine schedule (CIFAR 0.999999).
        lam_margin: backbone masks with ``lam <= margin`` or ``>= 1 - margin`` become plain Mixup.
        mixer_lr: the Mixer's SGD learning rate (0.1).
        mixer_min_lr: its cosine schedule's final rate (CIFAR configs 0.05, ImageNet 1e-3).
        mixer_momentum: SGD momentum (0.9).
        mixer_weight_decay: SGD weight decay (1e-4).
        clean_weight: weight of the classifier's CE on the clean batch (code's ``head_one``: 1).
        total_steps: training steps T for the schedules (None: constant momentum, lr, weights).
        p, mode, num_classes: as every method (``p`` applies to the backbone batch).
    """

    needs_float = True
    spatial_dims = (2,)

    def __init__(self, *, alpha: float, stage: str, momentum: float, momentum_end: float, lam_margin: float,
                 mixer_lr: float, mixer_min_lr: float, mixer_momentum: float, mixer_weight_decay: float,
                 clean_weight: float, total_steps: int | None, p: float, mode: str, num_classes: int | None) -> None:
        super().__init__(p=p, mode=mode, num_classes=num_classes)
        self.alpha = check_alpha(alpha)
        if not isinstance(stage, str) or not stage:
            raise HyperParameterError(f"stage must be a module name or 'auto', got {stage!r}")
        self.stage = stage
        self.momentum = check_range(momentum, 0.0, 1.0, "momentum")
        self.momentum_end = check_range(momentum_end, 0.0, 1.0, "momentum_end")
        self.lam_margin = check_range(lam_margin, 0.0, 0.5, "lam_margin")
        self.mixer_lr = check_range(mixer_lr, 0.0, math.inf, "mixer_lr")
        self.mixer_min_lr = check_range(mixer_min_lr, 0.0, math.inf, "mixer_min_lr")
        self.mixer_momentum = check_range(mixer_momentum, 0.0, 1.0, "mixer_momentum")
        self.mixer_weight_decay = check_range(mixer_weight_decay, 0.0, math.inf, "mixer_weight_decay")
        self.clean_weight = check_range(clean_weight, 0.0, math.inf, "clean_weight")
        if total_steps is not None and (isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1):
            raise HyperParameterError(f"total_steps must be a positive int or None, got {total_steps!r}")
        self.total_steps = total_steps
        self._reset()

    def _reset(self) -> None:
        self.encoder: MomentumEncoder | None = None
        self.mixer: nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.step = 0
        self.channels = 0
        self._pending: dict[str, Any] | None = None
        self.snapshots = MaskSnapshots()

    # ------------------------------------------------------------------ subclass interface
    def build_mixer(self, channels: int, generator: torch.Generator | None) -> nn.Module:
        """A new Mixer for ``channels``-channel features (initialised from ``generator``)."""
        raise NotImplementedError

    def mixer_config(self) -> dict[str, Any]:
        """The Mixer's constructor keywords (saved with it)."""
        raise NotImplementedError

    def generate_mask(self, feats: Tensor, index: Tensor, lam: Tensor, *, size: tuple[int, int]) -> Tensor:
        """``(B, 1, *size)`` weight of each row's own sample, from ``self.mixer``."""
        raise NotImplementedError

    def mixer_loss(self, logits: Tensor, y: Tensor, index: Tensor, lam: Tensor, mask: Tensor) -> tuple[Tensor, dict[str, float]]:
        """The Mixer's loss from the frozen EMA model's logits on the mixer batch."""
        raise NotImplementedError

    # ------------------------------------------------------------------------- sampling
    def set_training_length(self, total_steps: int) -> None:
        """Take the run's step count for the schedules unless ``total_steps`` was given."""
        if self.total_steps is None:
            self.total_steps = int(total_steps)

    @property
    def progress(self) -> float:
        """Training progress t / T in [0, 1] (0 without ``total_steps``)."""
        return min(self.step / self.total_steps, 1.0) if self.total_steps else 0.0

    def sample(self, x: Tensor, y: Tensor | None = None, *, generator: torch.Generator | None = None) -> BlendParams:
        """The pairing and lambda of the backbone batch (``p`` and ``mode`` apply); the mask
        needs the model: see :meth:`mask_params`."""
        b = x.shape[0]
        index = rng.randperm(b, generator=generator)
        lam = self._per_sample(b, lambda size: rng.beta(size, self.alpha, self.alpha, generator=generator))
        active = self._active(b, generator)
        return BlendParams(index=self._partner(index, active), lam=torch.where(active, lam, 1.0))

    def _mixer_draw(self, b: int, generator: torch.Generator | None) -> BlendParams:
        index = rng.randperm(b, generator=generator)
        lam = self._per_sample(b, lambda size: rng.beta(size, self.alpha, self.alpha, generator=generator))
        return BlendParams(index=index, lam=lam)

    def _mix(self, x: Tensor, params: Params) -> Tensor:
        if not isinstance(params, MaskParams):
            raise TypeError(f"{type(self).__name__}.apply needs MaskParams (from mask_params or a call), got {type(params).__name__}")
        return mask_blend(x, params.index, params.mask)

    def _feature_dtype(self, x: Tensor) -> torch.dtype:
        return torch.float64 if x.dtype == torch.float64 else torch.float32

    @torch.no_grad()
    def _features(self, x: Tensor) -> Tensor:
        """The EMA encoder's features of the clean batch (no gradient), in the Mixer's dtype."""
        return self.encoder.features(x).to(self._feature_dtype(x))

    @torch.no_grad()
    def mask_params(self, x: Tensor, draw: Params, feats: Tensor | None = None) -> MaskParams:
        """The backbone mask for ``draw`` from the current Mixer (no gradient), with the
        ``lam_margin`` rule: rows with an extreme lambda (inactive rows too) get a constant mask.
        ``feats`` are :meth:`_features` of ``x`` if already computed."""
        feats = self._features(x) if feats is None else feats
        mask = self.generate_mask(feats, draw.index.to(x.device), draw.lam.to(x.device), size=tuple(x.shape[2:]))
        lam = draw.lam.to(device=x.device, dtype=mask.dtype).view(-1, 1, 1, 1)
        linear = (lam <= self.lam_margin) | (lam >= 1.0 - self.lam_margin)
        mask = torch.where(linear, lam.expand_as(mask), mask)
        return MaskParams(index=draw.index, lam=draw.lam, mask=mask)

    # --------------------------------------------------------------------------- building
    def _build(self, model: nn.Module, x: Tensor, generator: torch.Generator | None) -> None:
        if self.mixer is not None:
            return
        self._build_parts(model, x, generator)
        self.snapshots.set_probe(x, self.input_normalization)  # after a loaded state, which may hold one

    def _build_parts(self, model: nn.Module, x: Tensor, generator: torch.Generator | None) -> None:
        self.encoder = self._make_encoder(model, x)
        training = self.encoder.training
        self.encoder.eval()  # no BN-statistics update from this probe
        with torch.no_grad():
            self.channels = int(self.encoder.features(x[:1]).shape[1])
        self.encoder.train(training)
        pending, self._pending = self._pending, None
        # with a state to load, the initial weights are overwritten: draw them from a private
        # generator so the caller's draws continue exactly as in the run that saved the state
        init_gen = torch.Generator().manual_seed(0) if pending else generator
        self.mixer = self.build_mixer(self.channels, init_gen).to(device=x.device, dtype=self._feature_dtype(x))
        self._make_optimizer()
        if pending:
            self._load_built(pending)

    def _make_encoder(self, model: nn.Module, x: Tensor) -> MomentumEncoder:
        return MomentumEncoder(model, resolve_stage(model, self.stage)).to(x.device)

    def _make_optimizer(self) -> None:
        self.optimizer = torch.optim.SGD(self.mixer.parameters(), lr=self.mixer_lr, momentum=self.mixer_momentum,
                                         weight_decay=self.mixer_weight_decay)

    # --------------------------------------------------------------------------- calling
    def __call__(self, x: Tensor, y: Tensor, *, model: nn.Module, generator: torch.Generator | None = None) -> ModelMixOutput:  # type: ignore[override]
        """Mix with the current Mixer (no training) and run ``model`` on the mixed batch.

        The first call builds the EMA encoder (a copy of ``model``) and the Mixer.
        """
        rng.check_generator(generator)
        self.check(x, y)
        self._build(model, x, generator)
        self._sync_mode(model)
        params = self.mask_params(x, self.sample(x, y, generator=generator))
        logits = model(self._mix(x, params))
        return ModelMixOutput(logits, self.target(y, params), params)  # type: ignore[arg-type]

    def train_step(self, model: nn.Module, x: Tensor, y: Tensor, *, criterion: Callable[[Tensor, MixTarget], Tensor],  # type: ignore[override]
                   generator: torch.Generator | None = None) -> StepOutput:
        """One AutoMix/SAMix iteration: EMA update, Mixer step, classifier loss (to back-propagate)."""
        rng.check_generator(generator)
        self.check(x, y)
        self._build(model, x, generator)
        self._sync_mode(model)
        self._before_step(model)
        feats = self._features(x)
        params = self.mask_params(x, self.sample(x, y, generator=generator), feats)
        logs = self._mixer_step(x, y, feats, self._mixer_draw(x.shape[0], generator))
        target = self.target(y, params)
        logits = model(self._mix(x, params))
        loss = criterion(logits, target)
        if self.clean_weight:
            loss = loss + self.clean_weight * criterion(model(x), MixTarget.unmixed(y, self.num_classes))
        self.step += 1
        return StepOutput(loss=loss, logits=logits, target=target, logs=logs)

    def _sync_mode(self, model: nn.Module) -> None:
        """The Mixer and the EMA encoder run in the model's train/eval mode (as in the code)."""
        self.mixer.train(model.training)
        self.encoder.train(model.training)

    def epoch_end(self, model: nn.Module) -> dict[str, float]:
        """Record the masks of the probe pairs on snapshot epochs (see :mod:`mixkit.mask_snapshots`)."""
        return self.snapshots.epoch_end(self)

    def _before_step(self, model: nn.Module) -> None:
        self.encoder.update(model, momentum_at(self.step, self.total_steps, self.momentum, self.momentum_end))

    def _mixer_step(self, x: Tensor, y: Tensor, feats: Tensor, draw: BlendParams) -> dict[str, float]:
        """Forward the mixer batch through the frozen EMA model; step the Mixer on its loss."""
        index, lam = draw.index.to(x.device), draw.lam.to(x.device)
        mask = self.generate_mask(feats, index, lam, size=tuple(x.shape[2:]))
        logits = self.encoder(mask_blend(x, index, mask))
        loss, logs = self.mixer_loss(logits, y, index, lam, mask)
        for group in self.optimizer.param_groups:
            group["lr"] = cosine_value(self.step, self.total_steps, self.mixer_lr, self.mixer_min_lr)
        self.optimizer.zero_grad(set_to_none=True)
        params = [q for q in self.mixer.parameters() if q.requires_grad]
        torch.autograd.backward(loss, inputs=params)
        self.optimizer.step()
        return {"mixer_loss": float(loss.detach()), "mixer_lr": self.optimizer.param_groups[0]["lr"], **logs}

    # ------------------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """EMA encoder, Mixer, its optimiser and the step counter (empty before the first step)."""
        if self.mixer is None:
            return dict(self._pending) if self._pending else {}
        state = {"step": self.step, "encoder": self.encoder.state_dict(), "mixer": self.mixer.state_dict(),
                 "snapshots": self.snapshots.state_dict()}
        if self.optimizer is not None:
            state["optimizer"] = self.optimizer.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; before the first step it is kept until the parts exist."""
        if not state:
            return
        missing = {"step", "encoder", "mixer"} - set(state)
        if missing:
            raise ValueError(f"{type(self).__name__} state lacks {sorted(missing)}")
        state = copy.deepcopy(state)  # never share buffers with the caller's state
        if self.mixer is None:
            self._pending = state
            self.step = int(state["step"])
            return
        self._load_built(state)

    def _load_built(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.snapshots.load_state_dict(state.get("snapshots", {}))
        self.encoder.load_state_dict(state["encoder"])
        self.mixer.load_state_dict(state["mixer"])
        if self.optimizer is not None:
            self.optimizer.load_state_dict(state["optimizer"])

    def save_mixer(self, path: str) -> None:
        """Save the Mixer, its configuration and the EMA model it reads (see :func:`load_mixer`)."""
        if self.mixer is None:
            raise RuntimeError(f"{type(self).__name__} has no Mixer yet: train at least one step first")
        torch.save({"format": MIXER_FORMAT, "method": self.name, "config": self.mixer_config(),
                    "channels": self.channels, "stage": self.encoder.stage,
                    "mixer": self.mixer.state_dict(), "encoder": self.encoder.model.state_dict(),
                    "snapshots": self.snapshots.state_dict()}, path)

