"""RecursiveMix: the previous iteration's mixed batch, shrunk into the current one.

Paper and reference code:
    * Yang, Li, Zhao, Song, Yang, "RecursiveMix: Mixed Learning with History", NeurIPS 2022,
      arXiv 2203.06844 (github.com/implus/RecursiveMix-pytorch: ``utils.py::recursive_mix``,
      ``main.py::train``, ``models_cifar/resnet.py::forward``).

The method is stateful: it keeps the last (mixed) batch, its (mixed) target and, in
:meth:`RecursiveMix.train_step`, the model's logits on it. The history travels through
``state_dict()`` / ``load_state_dict()`` (so checkpoints resume exactly), never through pickling,
which rebuilds a method from its hyper-parameters only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from mixkit import rng
from mixkit._device import upload
from mixkit.base import MixMethod
from mixkit.errors import HyperParameterError, ModelError, ShapeError
from mixkit.functional.alloc import fresh_copy
from mixkit.functional.boxes import box_fraction, sample_cut_boxes
from mixkit.functional.recursive import (
    extend_target,
    extend_target_host,
    history_consistency,
    paste_history,
    roi_average,
)
from mixkit.hooks import resolve_layer
from mixkit.methods.cutting import _empty_inactive, _mask_rows
from mixkit.registry import register
from mixkit.types import BoxParams, MixOutput, MixTarget, StepOutput
from mixkit.validation import check_choice, check_range

__all__ = ["RecursiveMix", "RecursiveParams", "extend_target", "history_consistency", "paste_history", "roi_average"]

_STATE_KEYS = frozenset({"images", "labels", "index", "weight", "logits"})


@dataclass(frozen=True, eq=False, kw_only=True)
class RecursiveParams(BoxParams):
    """Params of RecursiveMix: ``history[b]``, resized to ``boxes``, is pasted over ``x[b]``.

    Attributes:
        history: ``(B, C, H, W)`` the historical batch, or ``None`` when the batch is its own
            history (no usable history yet).
        history_target: the :class:`MixTarget` of the history rows, ``None`` with ``history``.
    """

    history: Tensor | None
    history_target: MixTarget | None


# ---------------------------------------------------------------------------------- method
@register(
    "recursivemix",
    family="cutting",
    paper="RecursiveMix: Mixed Learning with History",
    authors="Yang et al.",
    venue="NeurIPS 2022",
    year=2022,
    code="https://github.com/implus/RecursiveMix-pytorch",
    sources="k",
    summary="The previous mixed batch, shrunk into a random box; labels mixed recursively by area; RoI consistency loss.",
)
class RecursiveMix(MixMethod):
    """RecursiveMix: paste the previous iteration's mixed batch, resized, into a random box.

    As ``utils.py::recursive_mix``: area share ``r ~ U(0, alpha)``, box side
    ``floor(size * sqrt(r))`` per dim, uniform centre, clipped (CutMix's box); the whole
    historical batch ``x~[t-1]`` is resized into it (nearest by default) with row ``b`` over row
    ``b``; ``lam = 1 - |box| / (H W)`` (realised) and the target is
    ``lam * y[t] + (1 - lam) * y~[t-1]``, recursively, so a label has ever more sources: it is a
    k-column :class:`MixTarget` whose ``labels`` are the current labels followed by the
    historical ones (integer or soft, no class count needed, exact); zero-weight sources are
    dropped and any past :attr:`max_sources` (weight below ``alpha ** 15``) fold into the last.
    ``params.lam`` is the current sample's weight, ``params.index`` the identity. The output
    and its target become the next history (the first ``B`` rows serve a smaller batch, as the
    reference's ``old[:bs]``; a larger batch or other image shape starts anew).

    :meth:`train_step` adds the consistency loss ``omega * (1 - lam) * KL(softmax(o[t-1]) ||
    softmax(head(RoIAlign(F(x~), box))))``, ``F`` the output of ``feature_layer`` and ``head``
    the classifier (default: the model's last ``nn.Linear``, the code's ``--share_fc``), with
    the logits ``o[t-1]`` of the previous step. Without ``feature_layer`` the step is the mixing
    only. Deviations from the code: (1) with no history (first call, after a reset) the batch is
    its own history, a shrunken copy pasted into itself (labels unchanged) where the code leaves
    it unmixed; (2) KL instead of the code's soft cross-entropy (the same gradient); (3) the
    RoI is the pasted box (the code hands roi_align the box with its axes swapped); (4) the code's default
    separate ``fc_roi`` head is not built. The history is dropped after each epoch (the code's
    ``old_inputs = None`` at the start of its epoch loop) unless ``epoch_reset=False``; ``mode="elem"`` and ``p`` are mixkit extensions.

    Args:
        alpha: upper end of the box's area share (0, 1]; the paper's 0.5.
        omega: weight of the consistency loss; the code's default 0.5 (its CIFAR-10 run: 0.1).
        interpolation: ``"nearest"`` (the code's default) or ``"bilinear"``.
        feature_layer: dotted name of the submodule whose output ``(B, C, h, w)`` is pooled.
        head: dotted name of the classifier of the pooled ``(B, C)`` features.
        epoch_reset: forget the history at the end of each training epoch (the reference's
            behaviour); False carries it across epochs (and through checkpoints).
        p: probability of mixing the batch or each sample.
        mode: ``"batch"`` (one box, the paper's) or ``"elem"`` (one box per sample).
        num_classes: number of classes, if known.

    Example:
        >>> import torch, mixkit
        >>> rm, g = mixkit.create("recursivemix", num_classes=3), torch.Generator().manual_seed(0)
        >>> _ = rm(torch.rand(2, 3, 32, 32), torch.tensor([0, 1]), generator=g)  # history
        >>> out = rm(torch.rand(2, 3, 32, 32), torch.tensor([2, 2]), generator=g)
        >>> area = float(out.params.boxes[0, 2:].sub(out.params.boxes[0, :2]).prod()) / 32**2
        >>> torch.allclose(out.target.soft(), torch.tensor([[area, 0, 1 - area], [0, area, 1 - area]]))
        True
    """

    spatial_dims = (2,)
    needs_float = False
    #: most sources a target keeps (deeper weights fold into the last column).
    max_sources: ClassVar[int] = 16

    def __init__(
        self,
        *,
        alpha: float = 0.5,
        omega: float = 0.5,
        interpolation: str = "nearest",
        feature_layer: str | None = None,
        head: str | None = None,
        epoch_reset: bool = True,
        p: float = 1.0,
        mode: str = "batch",
        num_classes: int | None = None,
    ) -> None:
        super().__init__(p=p, mode=mode, num_classes=num_classes)
        self.alpha = check_range(alpha, 0.0, 1.0, "alpha")
        if self.alpha <= 0:
            raise HyperParameterError(f"alpha must be in (0, 1], got {alpha}")
        self.omega = check_range(omega, 0.0, 1e6, "omega")
        self.interpolation = check_choice(interpolation, ("nearest", "bilinear"), "interpolation")
        if head is not None and feature_layer is None:
            raise HyperParameterError("head classifies the pooled region of feature_layer: give feature_layer too")
        self.feature_layer = feature_layer
        self.head = head
        self.epoch_reset = bool(epoch_reset)
        self.reset()

    # ----------------------------------------------------------------------------- history
    def reset(self) -> None:
        """Forget the history (the reference does this at the start of every epoch)."""
        self._images: Tensor | None = None
        self._target: MixTarget | None = None
        self._logits: Tensor | None = None
        self._host_target: tuple[Tensor, Tensor] | None = None  # the last target's index and weight, on the CPU

    def epoch_end(self, model: nn.Module) -> dict[str, float]:
        """The engine calls this after each epoch: with ``epoch_reset`` the next epoch starts
        without history, as in the reference's training loop."""
        if self.epoch_reset:
            self.reset()
        return {}

    def _fits(self, x: Tensor, y: Tensor | None) -> bool:
        if self._images is None or self._target is None:
            return False
        if self._images.shape[1:] != x.shape[1:] or self._images.shape[0] < x.shape[0]:
            return False
        labels = self._target.labels
        return y is None or (labels.shape[1:] == y.shape[1:] and labels.is_floating_point() == y.is_floating_point())

    def _history(self, x: Tensor, y: Tensor | None) -> tuple[Tensor | None, MixTarget | None]:
        if not self._fits(x, y):
            return None, None
        assert self._images is not None and self._target is not None
        b, t = x.shape[0], self._target
        return self._images[:b], MixTarget(t.labels, t.index[:b], t.weight[:b], t.num_classes)

    def state_dict(self) -> dict[str, Any]:
        """The history: images, target (labels, index, weight) and logits (or None)."""
        if self._images is None or self._target is None:
            return {}
        t = self._target
        return {"images": self._images, "labels": t.labels, "index": t.index, "weight": t.weight, "logits": self._logits}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a history from :meth:`state_dict` (``{}`` forgets it)."""
        self.reset()
        if not state:
            return
        if set(state) != _STATE_KEYS:
            raise ValueError(f"RecursiveMix state needs keys {sorted(_STATE_KEYS)}, got {sorted(state)}")
        images, index, weight, logits = state["images"], state["index"], state["weight"], state["logits"]
        rows = {images.shape[0], index.shape[0], weight.shape[0]} | ({logits.shape[0]} if logits is not None else set())
        if images.ndim != 4 or index.shape != weight.shape or len(rows) != 1:
            raise ShapeError("RecursiveMix state: images, index, weight and logits must share the batch size")
        self._images = images.clone()
        self._target = MixTarget(state["labels"].clone(), index.clone(), weight.clone(), self.num_classes)
        self._logits = None if logits is None else logits.clone()

    # -------------------------------------------------------------------------- interface
    def sample(self, x: Tensor, y: Tensor | None = None, *, generator: torch.Generator | None = None) -> RecursiveParams:
        b, spatial = x.shape[0], tuple(x.shape[2:])
        n = 1 if self.mode == "batch" else b
        share = rng.uniform((n,), 0.0, self.alpha, generator=generator)
        boxes = sample_cut_boxes(1.0 - share, spatial, generator=generator)
        active = self._active(b, generator)
        boxes = _empty_inactive(boxes, _mask_rows(active, self.mode))
        kept = (1.0 - box_fraction(boxes, spatial)).expand(b).clone()
        images, target = self._history(x, y)
        return RecursiveParams(index=torch.arange(b), lam=kept, boxes=boxes, history=images, history_target=target)

    def _mix(self, x: Tensor, params: BoxParams) -> Tensor:
        history = getattr(params, "history", None)
        return paste_history(x, x if history is None else history, params.boxes, self.interpolation)

    def target(self, y: Tensor, params: BoxParams) -> MixTarget:
        if not isinstance(params, RecursiveParams):
            raise TypeError(f"RecursiveMix needs RecursiveParams, got {type(params).__name__}")
        labels, index, weight = extend_target_host(y, params.lam, params.history_target, self.max_sources)
        self._host_target = (index, weight)  # kept as the next history's (no read-back from a GPU)
        return MixTarget(labels, upload(index, y.device), upload(weight, y.device), self.num_classes)

    def __call__(self, x: Tensor, y: Tensor, *, generator: torch.Generator | None = None) -> MixOutput:
        """Mix with the history, then keep the output and its target as the next history."""
        out = super().__call__(x, y, generator=generator)
        t = out.target
        self._images = fresh_copy(out.x.detach())  # a pooled block for large batches (no page faults)
        host, self._host_target = self._host_target, None
        index, weight = host if host is not None and host[0].shape == t.index.shape else (t.index, t.weight)
        self._target = MixTarget(t.labels.detach().clone(), index.clone(), weight.clone(), t.num_classes)
        self._logits = None
        return out

    # --------------------------------------------------------------------------- training
    def _classifier(self, model: nn.Module) -> nn.Module:
        if self.head is not None:
            return resolve_layer(model, self.head)
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise ModelError("the model has no nn.Linear to classify the pooled region: name one with head=...")
        return linears[-1]

    def _forward(self, model: nn.Module, x: Tensor) -> tuple[Tensor, Tensor | None]:
        if self.feature_layer is None:
            return model(x), None
        caught: list[Any] = []
        handle = resolve_layer(model, self.feature_layer).register_forward_hook(lambda m, a, o: caught.append(o))
        try:
            logits = model(x)
        finally:
            handle.remove()
        if len(caught) != 1 or not isinstance(caught[0], Tensor) or caught[0].ndim != 4:
            raise ModelError(f"layer {self.feature_layer!r} must run once per forward and return (B, C, h, w)")
        return logits, caught[0]

    def train_step(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        *,
        criterion: Callable[[Tensor, MixTarget], Tensor],
        generator: torch.Generator | None = None,
    ) -> StepOutput:
        """Mix with the history, the loss, plus the consistency loss when ``feature_layer`` is set."""
        old = self._logits[: x.shape[0]] if self._logits is not None and self._fits(x, y) else None
        out = self(x, y, generator=generator)
        logits, features = self._forward(model, out.x)
        loss, logs = criterion(logits, out.target), {}
        lam = upload(out.params.lam, logits.device)
        if old is not None and features is not None and bool((lam < 1).any()):
            pooled = roi_average(features, out.params.boxes, out.x.shape[2:])
            roi_logits = self._classifier(model)(pooled.to(features.dtype))
            consistency = history_consistency(roi_logits, old, self.omega * (1 - lam))
            loss = loss + consistency
            logs["consistency_loss"] = float(consistency.detach())
        self._logits = logits.detach()
        return StepOutput(loss=loss, logits=logits, target=out.target, logs=logs)
