"""The interface every input-space method shares: ``sample`` apart from ``apply``.

A method object holds hyper-parameters only. ``sample(x, y, generator=...)`` draws the
:class:`~mixkit.types.Params` of one call (on the CPU), ``apply(x, params)`` mixes any tensor
with them, ``target(y, params)`` mixes the labels, and ``__call__`` composes the three and
returns a :class:`~mixkit.types.MixOutput`. Methods pickle by constructor arguments.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from mixkit import rng
from mixkit._device import upload
from mixkit.functional.alloc import fresh_copy
from mixkit.holdout import Holdout
from mixkit.types import MixOutput, MixTarget, Params, StepOutput
from mixkit.validation import check_choice, check_labels, check_params, check_positive_int, check_probability, check_x

__all__ = ["MixMethod", "MixCollate"]

MODES = ("batch", "elem")


def _rebuild(cls: type, hparams: dict[str, Any], normalization: tuple[Any, Any] | None = None) -> Any:
    method = cls(**hparams)
    if normalization is not None:
        method.set_input_normalization(*normalization)
    return method


class MixMethod:
    """Base class of input-space mixing methods.

    Subclasses define ``sample`` and ``apply``, call ``super().__init__`` with the shared
    options, and store every constructor argument under its own name (``hparams`` reads them
    back for ``repr``, pickling and the registry).

    Args:
        p: probability of mixing the batch (``mode="batch"``) or each sample (``"elem"``).
        mode: ``"batch"`` draws one lambda (and one box or mask) for the whole batch;
            ``"elem"`` draws one per sample, vectorised.
        num_classes: number of classes, if known: labels are checked against it and dense
            labels can be built without passing it again.
    """

    name: ClassVar[str] = ""
    #: numbers of spatial dims the method accepts (None: any layout (B, ...)).
    spatial_dims: ClassVar[tuple[int, ...] | None] = None
    #: whether the method blends values (True) or only copies them (False: uint8 works too).
    needs_float: ClassVar[bool] = True
    #: whether the paper fixes the label weight (no lambda distribution to sample).
    fixed_lambda: ClassVar[bool] = False
    #: whether params with every ``lam == 1`` leave the batch unchanged (False for
    #: label-preserving augmentations such as AugMix, which change the image but not the label).
    identity_at_full_lambda: ClassVar[bool] = True
    #: per-channel ``(mean, std)`` the input was normalised with, for methods that work in
    #: pixel space (None: inputs are raw pixels in [0, 1]); see :meth:`set_input_normalization`.
    input_normalization: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    #: whether gradients flow from the mixed batch back into ``x`` (False for augmentation
    #: chains whose operations are computed in place and are mostly piecewise constant: they
    #: refuse an ``x`` that requires grad, with a clear error, rather than fail inside autograd).
    differentiable: ClassVar[bool] = True
    #: whether ``__call__`` writes the mixed batch into ``x`` (set by the methods that offer
    #: ``inplace=True`` and implement :meth:`_mix_`).
    inplace: bool = False
    #: share of every class the training engine keeps out of training for this method and
    #: hands to :meth:`attach_holdout` (0: the method needs no held-out data).
    holdout_fraction: float = 0.0

    def __init__(self, *, p: float, mode: str, num_classes: int | None) -> None:
        self.p = check_probability(p, "p")
        self.mode = check_choice(mode, MODES, "mode")
        self.num_classes = check_positive_int(num_classes, "num_classes")

    # ----------------------------------------------------------------------------- interface
    def sample(self, x: Tensor, y: Tensor | None = None, *, generator: torch.Generator | None = None) -> Params:
        """Draw the params of one call for batch ``x`` (labels ``y`` if the method uses them)."""
        raise NotImplementedError

    def apply(self, x: Tensor, params: Params) -> Tensor:
        """Mix ``x`` (or any tensor with the same batch size, e.g. features) with ``params``.

        The params are checked against ``x`` (batch size, box and mask sizes); ``x`` is never
        modified and the result is always a new tensor.
        """
        check_params(x, params)
        self._check_grad(x, inplace=False)  # apply never writes into x
        return self._mix(x, params)

    def _mix(self, x: Tensor, params: Params) -> Tensor:
        """The method's mixing, on params known to fit ``x``."""
        raise NotImplementedError

    def _mix_(self, x: Tensor, params: Params) -> Tensor:
        """:meth:`_mix` written into ``x`` (methods with an ``inplace`` option)."""
        raise NotImplementedError(f"{type(self).__name__} has no in-place mixing")

    def _check_grad(self, x: Tensor, *, inplace: bool) -> None:
        """Refuse an ``x`` that requires grad where autograd cannot follow the mix (``inplace``:
        the call writes into ``x``)."""
        if not (isinstance(x, Tensor) and x.requires_grad and torch.is_grad_enabled()):
            return
        if inplace:
            raise ValueError(
                f"{type(self).__name__}(inplace=True) writes into x, but x requires grad: autograd "
                "cannot see through that; build the method with inplace=False"
            )
        if not self.differentiable:
            raise ValueError(
                f"{type(self).__name__} is not differentiable in x (its augmentation operations run in "
                "place and are mostly piecewise constant), but x requires grad: pass x.detach(), or "
                "mix under torch.no_grad()"
            )

    def target(self, y: Tensor, params: Params) -> MixTarget:
        """The mixed target of labels ``y`` under ``params`` (two sources by default)."""
        return MixTarget.pair(y, params.index, params.lam, self.num_classes)

    def check(self, x: Tensor, y: Tensor) -> None:
        """Validate a batch and its labels; raises with the argument named."""
        check_x(x, spatial_dims=self.spatial_dims, needs_float=self.needs_float)
        check_labels(y, x.shape[0], self.num_classes)

    def __call__(self, x: Tensor, y: Tensor, *, generator: torch.Generator | None = None) -> MixOutput:
        """Mix a batch and its labels.

        Args:
            x: ``(B, C, *spatial)`` batch; never modified, unless the method was built with
                ``inplace=True`` (where offered), which writes the mixed batch into ``x``.
            y: integer labels ``(B,)`` or soft labels ``(B, K)``; never modified.
            generator: CPU generator for the draws (torch's global one if ``None``).

        Returns:
            The mixed batch (a new tensor, a plain copy when probability ``p`` said no; ``x``
            itself with ``inplace=True``), its target and the params.
        """
        rng.check_generator(generator)
        self.check(x, y)
        inplace = self.inplace
        self._check_grad(x, inplace=inplace)
        params = self.sample(x, y, generator=generator)
        unchanged = self.identity_at_full_lambda and params.lam_value == 1.0
        if inplace:
            mixed = x if unchanged else self._mix_(x, params)
        else:
            mixed = fresh_copy(x) if unchanged else self._mix(x, params)
        return MixOutput(mixed, self.target(y, params), params)

    # ------------------------------------------------------------------------- training
    def train_step(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        *,
        criterion: Callable[[Tensor, MixTarget], Tensor],
        generator: torch.Generator | None = None,
    ) -> StepOutput:
        """One training step's forward: mix, run the model, compute the loss.

        The engine knows only this protocol (and :meth:`state_dict`); methods that need extra
        forwards, gradients or their own sub-networks override it. The engine does the
        backward pass and the optimiser step.

        Args:
            model: the network being trained.
            x: the normalised input batch on the training device.
            y: integer labels ``(B,)`` or soft labels ``(B, K)``.
            criterion: ``criterion(logits, target) -> loss``, e.g. :func:`mixkit.mixup_cross_entropy`.
            generator: CPU generator for the mixing draws.
        """
        out = self(x, y, generator=generator)
        logits = model(out.x)
        return StepOutput(loss=criterion(logits, out.target), logits=logits, target=out.target)

    def state_dict(self) -> dict[str, Any]:
        """State to checkpoint besides the hyper-parameters (a mixer, a history buffer...)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        if state:
            raise ValueError(f"{type(self).__name__} keeps no state, got keys {sorted(state)}")

    def attach_holdout(self, holdout: Holdout) -> None:
        """Receive the held-out split the engine made for ``holdout_fraction`` (see
        :mod:`mixkit.holdout`); methods that ask for one override this."""
        raise TypeError(f"{type(self).__name__} does not use held-out data (holdout_fraction is 0)")

    def set_training_length(self, total_steps: int) -> None:
        """Called by the engine before training with the run's number of optimiser steps.

        Methods with schedules over training (a learnable Mixer's momentum and learning rate,
        decaying loss weights) override this; the rest ignore it.
        """

    def epoch_end(self, model: nn.Module) -> dict[str, float]:
        """Called by the engine after every training epoch, before the checkpoint is written.

        Methods that adapt between epochs (CAMixup's per-class switch, a refitted density)
        override this; the returned numbers are logged with the epoch's record.
        """
        return {}

    def set_input_normalization(self, mean: Sequence[float], std: Sequence[float]) -> None:
        """Tell the method how its inputs were normalised: ``x = (pixels - mean) / std``.

        The training engine calls this for every method. Only methods that work in pixel
        space (AugMix's posterize, PixMix's multiplicative mixing...) use it, through
        :meth:`_to_pixels` and :meth:`_from_pixels`; the rest are linear and indifferent.

        Args:
            mean: per-channel means in [0, 1] pixel units.
            std: per-channel standard deviations (> 0).
        """
        mean_t, std_t = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        if len(mean_t) != len(std_t) or not mean_t:
            raise ValueError(f"mean and std must have the same non-zero length, got {len(mean_t)} and {len(std_t)}")
        if min(std_t) <= 0:
            raise ValueError(f"std must be > 0, got {std_t}")
        self.input_normalization = (mean_t, std_t)

    def _stats(self, x: Tensor, dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor] | None:
        """The normalisation's ``(mean, std)`` shaped to broadcast over ``x``, in ``dtype``
        (default ``x``'s), or None when no normalisation is set."""
        if self.input_normalization is None:
            return None
        dtype = x.dtype if dtype is None else dtype
        mean, std = (upload(torch.tensor(v, dtype=dtype), x.device) for v in self.input_normalization)
        if x.dim() >= 2 and mean.numel() not in (1, x.shape[1]):
            raise ValueError(f"input normalisation has {mean.numel()} channels, x has {x.shape[1]}")
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return mean.view(shape), std.view(shape)

    def _to_pixels(self, x: Tensor) -> Tensor:
        """``x`` in [0, 1] pixel units (undoing :meth:`set_input_normalization`'s stats)."""
        stats = self._stats(x)
        return x if stats is None else x * stats[1] + stats[0]

    def _from_pixels(self, x: Tensor) -> Tensor:
        """Back from pixel units to the normalised space the input came in."""
        stats = self._stats(x)
        return x if stats is None else (x - stats[0]) / stats[1]

    # ------------------------------------------------------------------------------ helpers
    def _sample_rows(self, x: Tensor, y: Tensor | None, rows: Tensor, *, generator: torch.Generator | None = None) -> Params:
        """Params that need be right only for the samples where ``rows`` ``(B,)`` bool is True
        (the others may come back unmixed): what a composition that uses this method for some
        samples asks for. The default is :meth:`sample`; methods whose per-sample draws are
        costly (FMix's noise) draw them for those samples only."""
        return self.sample(x, y, generator=generator)

    def _active(self, b: int, generator: torch.Generator | None) -> Tensor:
        """``(B,)`` bool: which samples are mixed under ``p`` and ``mode``."""
        if self.mode == "batch":
            return rng.bernoulli((1,), self.p, generator=generator).expand(b)
        return rng.bernoulli((b,), self.p, generator=generator)

    @staticmethod
    def _partner(index: Tensor, active: Tensor) -> Tensor:
        """Partner rows, with inactive samples paired with themselves."""
        if bool(active.all()):
            return index
        return torch.where(active, index, torch.arange(index.shape[0]))

    def _per_sample(self, b: int, draw: Callable[[tuple[int, ...]], Tensor]) -> Tensor:
        """Call ``draw(size)`` once for the batch or once per sample, as ``mode`` says."""
        return draw((1,)).expand(b).clone() if self.mode == "batch" else draw((b,))

    @property
    def hparams(self) -> dict[str, Any]:
        """The constructor arguments of this object."""
        names = [n for n in inspect.signature(type(self).__init__).parameters if n != "self"]
        return {n: getattr(self, n) for n in names}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hparams.items())
        return f"{type(self).__name__}({args})"

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        return (_rebuild, (type(self), self.hparams, self.input_normalization))



class MixCollate:
    """A DataLoader ``collate_fn`` that collates a list of samples and mixes the batch.

    Draws come from torch's global RNG, which the DataLoader seeds per worker and per epoch
    (so workers differ, epochs differ, and ``torch.manual_seed`` makes it all reproducible).

    Args:
        method: an input-space method (cutting methods also work on uint8 images).
        collate: the collate function to apply first (default: torch's ``default_collate``).

    Returns (when called): a tuple ``(x, target)``.

    Example:
        >>> import mixkit
        >>> data = [(torch.rand(3, 8, 8), i % 2) for i in range(4)]
        >>> loader = torch.utils.data.DataLoader(data, batch_size=4,
        ...     collate_fn=MixCollate(mixkit.create("cutmix", num_classes=2)))
        >>> x, target = next(iter(loader))
        >>> x.shape, target.soft().shape
        (torch.Size([4, 3, 8, 8]), torch.Size([4, 2]))
    """

    def __init__(self, method: MixMethod, collate: Callable[[Sequence[Any]], Any] | None = None) -> None:
        self.method = method
        self.collate = collate

    def __call__(self, batch: Sequence[Any]) -> tuple[Tensor, MixTarget]:
        collate = self.collate or torch.utils.data.default_collate
        x, y = collate(batch)
        out = self.method(x, y)
        return out.x, out.target
