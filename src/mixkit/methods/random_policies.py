"""Random policies: one mixing method drawn per batch or per sample from a weighted list.

Papers and reference code:
    * Liu, Zhang, Li, Wu, "RandomMix: A mixed sample data augmentation method with multiple
      mixed modes", arXiv 2205.08728, 2022 (no reference code was checked: the candidate set
      and equal weights follow the paper's description).
    * The composition itself follows torchvision's ``v2.RandomChoice`` and mmpretrain's
      ``RandomBatchAugment`` (weights summing to less than one leave the rest unmixed).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor

from mixkit._device import upload
from mixkit.base import MixMethod
from mixkit.errors import HyperParameterError
from mixkit.functional.alloc import fresh_copy, fresh_like
from mixkit.functional.blend import gather_rows, memory_order, select_rows, to_memory
from mixkit.methods.cutting import CutMix, FMix, ResizeMix
from mixkit.methods.cutting_masks import GMix, HMix, HMixParams, SmoothMix
from mixkit.methods.gridmix import GridMix, GridParams
from mixkit.methods.linear import MixUp
from mixkit.registry import create, method_info, register
from mixkit.types import (
    BlendParams,
    BoxParams,
    MaskParams,
    MixTarget,
    Params,
    ResizeParams,
)

__all__ = ["RandomChoice", "RandomMix", "ChoiceParams"]


@dataclass(frozen=True, eq=False, kw_only=True)
class ChoiceParams(Params):
    """Params of a random choice: which method each sample got, and that method's params.

    Attributes:
        choice: ``(B,)`` int64 index into the methods; ``len(methods)`` means "not mixed".
        inner: one entry per method: its params for this batch, or ``None`` if unused.
    """

    choice: Tensor
    inner: tuple[Params | None, ...]


def _resolve(methods: Sequence[MixMethod | str], num_classes: int | None, mode: str) -> list[MixMethod]:
    out = []
    for m in methods:
        if isinstance(m, str):
            options = {"num_classes": num_classes, "mode": mode}
            m = create(m, **{k: v for k, v in options.items() if k in method_info(m).defaults})
        if not isinstance(m, MixMethod):
            raise HyperParameterError(f"methods must be registry names or mixkit methods, got {type(m).__name__}")
        if method_info(m.name).needs:
            raise HyperParameterError(f"{m.name} needs {', '.join(method_info(m.name).needs)}; "
                                      "a random choice takes input-space methods only")
        out.append(m)
    return out


def _weights(p: float | Sequence[float] | None, n: int) -> tuple[float, ...]:
    if p is None:
        p = 1.0
    if isinstance(p, (int, float)):
        if not 0.0 <= p <= 1.0:
            raise HyperParameterError(f"p must be in [0, 1] or a list of {n} probabilities, got {p}")
        return tuple(float(p) / n for _ in range(n))
    p = tuple(float(v) for v in p)
    if len(p) != n or any(v < 0 for v in p) or sum(p) > 1 + 1e-9:
        raise HyperParameterError(f"p must hold {n} probabilities >= 0 summing to at most 1, got {list(p)}")
    return p


#: methods whose output row ``r`` depends only on ``x[r]``, ``x[index[r]]`` and row ``r`` of
#: the params fields listed (each ``(B, ...)``, or ``(1, ...)`` shared by the rows), with the
#: exact params type they sample: these mix only the rows that drew them and their partners
_ROW_WISE: dict[type, tuple[type, tuple[str, ...]]] = {
    MixUp: (BlendParams, ()),
    CutMix: (BoxParams, ("boxes",)),
    ResizeMix: (ResizeParams, ("boxes",)),
    FMix: (MaskParams, ("mask",)),
    SmoothMix: (MaskParams, ("mask",)),
    GMix: (MaskParams, ("mask",)),
    GridMix: (GridParams, ("mask", "cells")),
    HMix: (HMixParams, ("boxes", "outside")),
}


def _sub_batch(rows: list[int], index: list[int], b: int) -> tuple[Tensor, Tensor]:
    """The batch rows a mix of ``rows`` alone reads, and the pairing within them.

    Returns ``sub``: ``rows`` first, then their partners not among them (two rows at least,
    so that per-row params never look shared), and ``sub_index``: each row's partner as a
    position in ``sub`` (the partners' own rows are paired with themselves; their output is
    not used).
    """
    partners = [index[r] for r in rows]
    extra = sorted(set(partners).difference(rows))
    if len(rows) + len(extra) < 2:
        extra = [(rows[0] + 1) % b]
    sub = rows + extra
    position = {row: s for s, row in enumerate(sub)}
    sub_index = [position[row] for row in partners] + list(range(len(rows), len(sub)))
    return torch.tensor(sub), torch.tensor(sub_index)


def _sub_params(params: Params, fields: tuple[str, ...], sub: Tensor, sub_index: Tensor) -> Params:
    """``params`` for the rows ``sub`` of the batch, paired by ``sub_index``."""
    b = params.batch_size
    per_row = {}
    for name in fields:
        t = getattr(params, name)
        per_row[name] = t if t.shape[0] != b else t.index_select(0, upload(sub, t.device))
    lam = params.lam.index_select(0, upload(sub, params.lam.device))
    # the whole batch's common lambda (or none): the same kernels as for the whole batch
    return replace(params, index=sub_index, lam=lam, **per_row).with_lam_value(params.lam_value)


def _mixed_rows(method: MixMethod, x: Tensor, params: Params, rows: list[int]) -> Tensor:
    """``method.apply(x, params)[rows]``; a row-wise method mixes only those rows (and reads
    their partners), any other method the whole batch."""
    spec = _ROW_WISE.get(type(method))
    if spec is None or type(params) is not spec[0]:
        return gather_rows(method.apply(x, params), upload(torch.tensor(rows), x.device))
    sub, sub_index = _sub_batch(rows, params.index.tolist(), x.shape[0])
    mixed = method.apply(gather_rows(x, upload(sub, x.device)), _sub_params(params, spec[1], sub, sub_index))
    return mixed[: len(rows)]


def _put_rows(out: Tensor, rows: list[int], mixed: Tensor) -> Tensor:
    """``mixed`` written into the ``rows`` of ``out`` (in place); returns ``out``."""
    order = memory_order(out)  # row copies along contiguous memory (channels_last too)
    to_memory(out, order).index_copy_(0, upload(torch.tensor(rows), out.device), to_memory(mixed, order))
    return out


class RandomChoice(MixMethod):
    """Apply one of several methods, drawn per batch or per sample with probabilities ``p``.

    Weights summing to less than one leave the rest of the batches (or samples) unmixed.
    Per-sample mode draws every method's params for the whole batch (no loop over samples;
    a method's costly per-sample draws, FMix's noise, only for the samples that chose it),
    then runs each method once on the rows that drew it: a method whose rows mix
    independently (Mixup, CutMix, ResizeMix, FMix, SmoothMix, GMix, HMix, GridMix) on those
    rows and their partners alone, any other on the whole batch, keeping those rows (every
    method runs on the whole batch when ``x`` requires grad). The target has as many sources
    as the widest method's, with zero weights where a method uses fewer.

    Args:
        methods: registry names or method objects (input-space methods).
        p: probability of each method, or one number: the probability of mixing at all,
            shared equally by the methods (default 1: always mix, uniform choice).
        mode: ``"batch"`` (one method per call) or ``"elem"`` (one per sample); methods
            given by name get the same mode.
        num_classes: number of classes, passed to methods given by name.

    Example:
        >>> import torch, mixkit
        >>> rc = mixkit.RandomChoice(["mixup", "cutmix"], p=[0.5, 0.5], mode="elem")
        >>> out = rc(torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 3]), generator=torch.Generator().manual_seed(0))
        >>> out.params.choice.tolist()  # 0: mixup, 1: cutmix
        [1, 1, 0, 1]
    """

    def __init__(
        self,
        methods: Sequence[MixMethod | str],
        *,
        p: float | Sequence[float] | None = None,
        mode: str = "batch",
        num_classes: int | None = None,
    ) -> None:
        super().__init__(p=1.0, mode=mode, num_classes=num_classes)
        if isinstance(methods, str) or not methods:
            raise HyperParameterError(f"methods must be a non-empty list, got {methods!r}")
        self.methods = tuple(methods)
        self._methods = _resolve(self.methods, num_classes, self.mode)
        self.p = p if p is None or isinstance(p, (int, float)) else tuple(p)
        self._probs = torch.tensor(_weights(p, len(self._methods)) + (0.0,), dtype=torch.float64)
        self._probs[-1] = max(0.0, 1.0 - float(self._probs[:-1].sum()))
        self.needs_float = any(m.needs_float for m in self._methods)  # type: ignore[misc]
        self.differentiable = all(m.differentiable for m in self._methods)  # type: ignore[misc]
        self.identity_at_full_lambda = all(m.identity_at_full_lambda for m in self._methods)  # type: ignore[misc]

    def set_input_normalization(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().set_input_normalization(mean, std)
        for m in self._methods:
            m.set_input_normalization(mean, std)

    def check(self, x: Tensor, y: Tensor) -> None:
        for m in self._methods:
            m.check(x, y)

    def sample(self, x: Tensor, y: Tensor | None = None, *, generator: torch.Generator | None = None) -> ChoiceParams:
        return self._draw(x, y, None, generator)

    def _sample_rows(self, x: Tensor, y: Tensor | None, rows: Tensor, *, generator: torch.Generator | None = None) -> ChoiceParams:
        """The choice drawn for every sample as by :meth:`sample`; samples outside ``rows`` then
        get the "not mixed" choice, so no method draws their params (FMix's noise)."""
        return self._draw(x, y, rows.to(device="cpu", dtype=torch.bool), generator)

    def _draw(self, x: Tensor, y: Tensor | None, wanted: Tensor | None, generator: torch.Generator | None) -> ChoiceParams:
        """:meth:`sample`; ``wanted``: the samples that may be mixed (all if ``None``)."""
        b = x.shape[0]
        n = 1 if self.mode == "batch" else b
        choice = torch.multinomial(self._probs, n, replacement=True, generator=generator).expand(b).clone()
        if wanted is not None:
            choice = torch.where(wanted, choice, len(self._methods))
        index, lam = torch.arange(b), torch.ones(b, dtype=torch.float64)
        inner: list[Params | None] = []
        for k, method in enumerate(self._methods):
            rows = choice == k
            params = method._sample_rows(x, y, rows, generator=generator) if bool(rows.any()) else None
            inner.append(params)
            if params is not None:
                index = torch.where(rows, params.index, index)
                lam = torch.where(rows, params.lam.to(torch.float64), lam)
        return ChoiceParams(index=index, lam=lam, choice=choice, inner=tuple(inner))

    def _mix(self, x: Tensor, params: ChoiceParams) -> Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            return self._mix_whole(x, params)
        choice = params.choice.tolist()
        used = [k for k, inner in enumerate(params.inner) if inner is not None]
        drawn = set(choice)
        if len(drawn) == 1 and drawn <= set(used):  # one method for every row (batch mode)
            return self._methods[choice[0]].apply(x, params.inner[choice[0]])
        # when every row drew a method, each is written below: no copy of x to start from
        # (in reusable blocks for large batches: no page faults, see mixkit.functional.alloc)
        out = fresh_like(x) if drawn <= set(used) else fresh_copy(x)
        for k in used:
            rows = [r for r, c in enumerate(choice) if c == k]
            if rows:
                out = _put_rows(out, rows, _mixed_rows(self._methods[k], x, params.inner[k], rows))
        return out

    def _mix_whole(self, x: Tensor, params: ChoiceParams) -> Tensor:
        """:meth:`_mix` with every method run on the whole batch and each sample's rows kept
        by a 0/1 ``lerp``: used when ``x`` requires grad, whose backward (the order in which a
        row's gradients from several methods add up) this keeps as it always was."""
        out = None
        for k, (method, inner) in enumerate(zip(self._methods, params.inner)):
            if inner is None:
                continue
            mixed = method.apply(x, inner)
            rows = params.choice == k
            if bool(rows.all()):
                return mixed
            out = select_rows(rows, mixed, x if out is None else out)
        return x.clone() if out is None else out

    def target(self, y: Tensor, params: ChoiceParams) -> MixTarget:
        parts = {k: m.target(y, p) for k, (m, p) in enumerate(zip(self._methods, params.inner)) if p is not None}
        width = max([t.k for t in parts.values()] + [1])
        b = y.shape[0]
        index = torch.arange(b, device=y.device).unsqueeze(1).repeat(1, width)
        weight = torch.zeros(b, width, device=y.device)
        weight[:, 0] = 1.0
        choice = upload(params.choice, y.device).unsqueeze(1)
        for k, t in parts.items():
            rows = choice == k
            index = torch.where(rows, F.pad(t.index, (0, width - t.k)), index)  # padded sources get weight 0
            weight = torch.where(rows, F.pad(t.weight, (0, width - t.k)), weight.to(t.weight.dtype))
        return MixTarget(y, index, weight, self.num_classes)


@register(
    "randommix",
    family="random",
    paper="RandomMix: A mixed sample data augmentation method with multiple mixed modes",
    authors="Liu et al.",
    venue="arXiv 2205.08728",
    year=2022,
    code="https://arxiv.org/abs/2205.08728",
    sources="k",
    summary="One of Mixup, CutMix, ResizeMix and FMix drawn per batch (or per sample), equal weights.",
)
class RandomMix(RandomChoice):
    """RandomMix: a random choice among Mixup, CutMix, ResizeMix and FMix (paper defaults).

    Pairing and lambda are those of the method drawn (lambda the weight of the original
    sample). Any registered input-space methods and weights can be given instead.

    Args:
        methods: registry names or method objects.
        p: probability of each method (default: uniform, as the paper).
        mode: ``"batch"`` or ``"elem"``.
        num_classes: number of classes.

    Example:
        >>> import torch, mixkit
        >>> out = mixkit.create("randommix")(torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 3]))
        >>> out.x.shape
        torch.Size([4, 3, 8, 8])
    """

    def __init__(
        self,
        *,
        methods: Sequence[MixMethod | str] = ("mixup", "cutmix", "resizemix", "fmix"),
        p: float | Sequence[float] | None = None,
        mode: str = "batch",
        num_classes: int | None = None,
    ) -> None:
        super().__init__(methods, p=p, mode=mode, num_classes=num_classes)
