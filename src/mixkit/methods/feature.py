"""Feature-level mixing: hidden representations blended inside the model, through hooks.

Papers and reference code:
    * Verma et al., "Manifold Mixup: Better Representations by Interpolating Hidden
      States", ICML 2019 (github.com/vikasverma1077/manifold_mixup).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from mixkit import rng
from mixkit.base import MixMethod
from mixkit.errors import HyperParameterError
from mixkit.functional.blend import blend
from mixkit.hooks import INPUT, mix_features
from mixkit.registry import register
from mixkit.types import LayerParams, MixTarget, ModelMixOutput, StepOutput
from mixkit.validation import check_alpha, check_labels, check_params, check_x

__all__ = ["ManifoldMixup"]


@register(
    "manifold_mixup",
    family="feature",
    paper="Manifold Mixup: Better Representations by Interpolating Hidden States",
    authors="Verma et al.",
    venue="ICML 2019",
    year=2019,
    code="https://github.com/vikasverma1077/manifold_mixup",
    sources=2,
    summary="Mixup of hidden states at a layer drawn at random from a list (input included).",
    needs=("model", "features"),
)
class ManifoldMixup(MixMethod):
    """Manifold Mixup: blend the output of a randomly chosen layer, then finish the forward.

    Each call draws a layer uniformly from ``layers`` (``"input"`` is the model's input),
    ``lam ~ Beta(alpha, alpha)`` and a random permutation; the layer's output ``h`` becomes
    ``lam * h + (1 - lam) * h[perm]`` through a forward hook, so any ``nn.Module`` works
    unchanged. The defaults follow the reference code for PreAct ResNets: alpha = 2 and
    k in {input, after stage 1, after stage 2} (stages named ``layer1``, ``layer2`` as in
    the mixkit and torchvision ResNets); name your model's own modules otherwise.

    Args:
        alpha: Beta concentration (> 0).
        layers: candidate layer names (dotted submodule paths or ``"input"``).
        p: probability of mixing the batch or each sample.
        mode: ``"batch"`` (one lambda) or ``"elem"`` (one lambda per sample).
        num_classes: number of classes, if known.

    Example:
        >>> import torch, mixkit
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 8), torch.nn.ReLU(),
        ...                           torch.nn.Linear(8, 3))
        >>> mm = mixkit.ManifoldMixup(layers=["input", "1", "2"])
        >>> out = mm(torch.rand(4, 3, 2, 2), torch.tensor([0, 1, 2, 0]), model=net)
        >>> out.logits.shape, out.params.layer in ("input", "1", "2")
        (torch.Size([4, 3]), True)
    """

    def __init__(
        self,
        *,
        alpha: float = 2.0,
        layers: Sequence[str] = (INPUT, "layer1", "layer2"),
        p: float = 1.0,
        mode: str = "batch",
        num_classes: int | None = None,
    ) -> None:
        super().__init__(p=p, mode=mode, num_classes=num_classes)
        self.alpha = check_alpha(alpha)
        if isinstance(layers, str) or not layers or not all(isinstance(n, str) for n in layers):
            raise HyperParameterError(f"layers must be a non-empty sequence of layer names, got {layers!r}")
        self.layers = tuple(layers)

    def check(self, x: Tensor, y: Tensor) -> None:
        # Integer inputs (token ids) are fine when the input itself is never blended.
        check_x(x, spatial_dims=None, needs_float=INPUT in self.layers)
        check_labels(y, x.shape[0], self.num_classes)

    def sample(self, x: Tensor, y: Tensor | None = None, *, generator: torch.Generator | None = None) -> LayerParams:
        b = x.shape[0]
        index = rng.randperm(b, generator=generator)
        lam = self._per_sample(b, lambda size: rng.beta(size, self.alpha, self.alpha, generator=generator))
        layer = self.layers[int(rng.randint(0, len(self.layers), (1,), generator=generator))]
        active = self._active(b, generator)
        return LayerParams(index=self._partner(index, active), lam=torch.where(active, lam, 1.0), layer=layer)

    def _mix(self, x: Tensor, params: LayerParams) -> Tensor:
        """Blend any ``(B, ...)`` tensor (the chosen layer's output) with ``params``."""
        return blend(x, params.index, params.lam)

    @contextmanager
    def mixing(self, model: nn.Module, params: LayerParams) -> Iterator[None]:
        """Within the block, ``model``'s forward mixes ``params.layer`` with ``params``."""
        def mix(h: Tensor) -> Tensor:
            check_params(h, params, name=f"the output of layer {params.layer!r}")
            return self._mix(h, params)

        with mix_features(model, params.layer, mix):
            yield

    def __call__(  # type: ignore[override]
        self, x: Tensor, y: Tensor, *, model: nn.Module, generator: torch.Generator | None = None
    ) -> ModelMixOutput:
        """Run ``model`` on ``x`` with the mix applied at a random layer.

        Args:
            x: the model's input batch ``(B, ...)``; never modified.
            y: integer labels ``(B,)`` or soft labels ``(B, K)``.
            model: the network; it is called once, in whatever train/eval state it is in.
            generator: CPU generator for the draws.
        """
        rng.check_generator(generator)
        self.check(x, y)
        params = self.sample(x, y, generator=generator)
        with self.mixing(model, params):
            logits = model(x)
        return ModelMixOutput(logits, self.target(y, params), params)

    def train_step(  # type: ignore[override]
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        *,
        criterion: Callable[[Tensor, MixTarget], Tensor],
        generator: torch.Generator | None = None,
    ) -> StepOutput:
        """Forward with the mix at a random layer; the loss on the mixed target."""
        out = self(x, y, model=model, generator=generator)
        return StepOutput(loss=criterion(out.logits, out.target), logits=out.logits, target=out.target)
