"""GridMix: a grid of cells, each from the sample or its partner, with a local cell loss.

Paper and reference code:
    * Baek, Bang, Shim, "GridMix: Strong regularization through local context mapping",
      Pattern Recognition 2021 (no official code found; OpenMixup's ``gridmix.py`` is a
      different method, IlyaDobrynin/GridMixup).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mixkit import rng
from mixkit.base import MixMethod
from mixkit.errors import HyperParameterError, ModelError, ShapeError
from mixkit.functional.blend import mask_blend
from mixkit.functional.masks import (
    grid_cell_mask,
    grid_cross_entropy,
    grid_logits,
    row_sums64,
    sample_grid_cells,
)
from mixkit.hooks import resolve_layer
from mixkit.methods.cutting_masks import _rows
from mixkit.registry import register
from mixkit.types import MaskParams, MixTarget, StepOutput
from mixkit.validation import check_alpha, check_range

__all__ = ["GridMix", "GridParams"]


@dataclass(frozen=True, eq=False, kw_only=True)
class GridParams(MaskParams):
    """Params of GridMix: the mask and the grid of cells it was spread from.

    Attributes:
        cells: ``(N, rows, cols)`` bool, N in {1, B}: True where the cell keeps the sample.
    """

    cells: Tensor


def _grid(grid: int | Sequence[int]) -> tuple[int, int]:
    pair = (grid, grid) if isinstance(grid, int) and not isinstance(grid, bool) else tuple(grid)  # type: ignore[arg-type]
    if len(pair) != 2 or not all(isinstance(g, int) and not isinstance(g, bool) and g >= 1 for g in pair):
        raise HyperParameterError(f"grid must be a positive int or a pair (rows, cols) of them, got {grid!r}")
    return (int(pair[0]), int(pair[1]))


@register(
    "gridmix",
    family="cutting",
    paper="GridMix: Strong regularization through local context mapping",
    authors="Baek et al.",
    venue="Pattern Recognition 2021",
    year=2021,
    code="https://sites.google.com/view/cvml-kaist/projects/gridmix-strong-regularization-through-local-context-mapping",
    sources=2,
    summary="A grid of cells, each from the sample or the partner; label weight = realised area; optional per-cell loss.",
)
class GridMix(MixMethod):
    """GridMix: each cell of a grid shows the sample or the partner, plus a local cell loss.

    ``lam ~ Beta(alpha, alpha)``; ``round(lam * cells)`` cells chosen at random keep ``x``, the
    others show ``x[perm]`` (cell sides differ by at most a pixel); lambda is the realised area
    kept, per sample. Pairing: a random permutation. The grid size, the draw of the cells
    and the loss weight are our reading of the paper (no reference code; not checked).

    The paper's "local context" loss classifies each cell as the sample it shows, with a
    classifier that shares every layer but the last with the global one. :meth:`train_step`
    adds ``local_loss_weight * mean_cells CE(cell_logits, cell_label)`` when
    ``feature_layer`` is given: that submodule's output ``(B, C, h, w)`` is caught by a hook
    during the one forward pass, average-pooled to the grid and classified by ``local_head``,
    the name of a submodule of the model (so the engine's optimiser trains it): a 1x1 conv
    built by :meth:`make_local_head` and attached to the model, or the model's own final
    ``nn.Linear`` (a shared head). Without ``feature_layer`` the step is the global loss only.

    Args:
        grid: cells per side, or ``(rows, cols)``.
        alpha: Beta concentration of the kept share of cells.
        local_loss_weight: weight of the local loss (>= 0).
        feature_layer: dotted name of the submodule giving the feature map, or ``None``.
        local_head: dotted name of the per-cell classifier (needed with ``feature_layer``).
        p: probability of mixing the batch or each sample.
        mode: ``"batch"`` (one grid) or ``"elem"`` (one grid per sample).
        num_classes: number of classes, if known.

    Example:
        >>> import torch, mixkit
        >>> out = mixkit.create("gridmix")(torch.rand(2, 3, 32, 32), torch.tensor([0, 1]),
        ...                                generator=torch.Generator().manual_seed(0))
        >>> float(out.params.cells.double().mean()) == float(out.params.lam[0])  # equal cells
        True
    """

    spatial_dims = (2,)
    needs_float = False

    def __init__(
        self,
        *,
        grid: int | Sequence[int] = 4,
        alpha: float = 1.0,
        local_loss_weight: float = 1.0,
        feature_layer: str | None = None,
        local_head: str | None = None,
        p: float = 1.0,
        mode: str = "batch",
        num_classes: int | None = None,
    ) -> None:
        super().__init__(p=p, mode=mode, num_classes=num_classes)
        self._grid = _grid(grid)
        self.grid = grid
        self.alpha = check_alpha(alpha)
        self.local_loss_weight = check_range(local_loss_weight, 0.0, 1e6, "local_loss_weight")
        if (feature_layer is None) != (local_head is None):
            raise HyperParameterError(
                "the local loss needs both feature_layer (the feature map's submodule) and local_head "
                "(the per-cell classifier's submodule, see GridMix.make_local_head); give both or neither"
            )
        self.feature_layer = feature_layer
        self.local_head = local_head

    @staticmethod
    def make_local_head(in_channels: int, num_classes: int) -> nn.Module:
        """A 1x1 conv per-cell classifier; attach it to the model before building the optimiser."""
        return nn.Conv2d(in_channels, num_classes, kernel_size=1)

    def sample(self, x: Tensor, y: Tensor | None = None, *, generator: torch.Generator | None = None) -> GridParams:
        b, spatial = x.shape[0], tuple(x.shape[2:])
        if spatial[0] < self._grid[0] or spatial[1] < self._grid[1]:
            raise ShapeError(f"a {self._grid[0]}x{self._grid[1]} grid needs an image at least that large, got {spatial}")
        index = rng.randperm(b, generator=generator)
        n = 1 if self.mode == "batch" else b
        lam = rng.beta((n,), self.alpha, self.alpha, generator=generator)
        cells = sample_grid_cells(lam, self._grid, generator=generator)
        active = self._active(b, generator)
        cells = cells | ~_rows(active, self.mode, 3)
        mask = grid_cell_mask(cells, spatial)
        kept = (row_sums64(mask) / mask[0].numel()).expand(b).clone()
        return GridParams(index=self._partner(index, active), lam=kept, mask=mask, cells=cells)

    def _mix(self, x: Tensor, params: GridParams) -> Tensor:
        return mask_blend(x, params.index, params.mask)

    def train_step(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        *,
        criterion: Callable[[Tensor, MixTarget], Tensor],
        generator: torch.Generator | None = None,
    ) -> StepOutput:
        """The global mixed loss, plus the weighted local cell loss if ``feature_layer`` is set."""
        if self.feature_layer is None or self.local_head is None:
            return super().train_step(model, x, y, criterion=criterion, generator=generator)
        out = self(x, y, generator=generator)
        caught: list[Tensor] = []
        handle = resolve_layer(model, self.feature_layer).register_forward_hook(lambda m, a, o: caught.append(o))
        try:
            logits = model(out.x)
        finally:
            handle.remove()
        if len(caught) != 1 or not isinstance(caught[0], Tensor):
            raise ModelError(f"layer {self.feature_layer!r} must run once per forward pass and return a tensor")
        cell_logits = grid_logits(caught[0], resolve_layer(model, self.local_head), self._grid)
        assert isinstance(out.params, GridParams)
        local = grid_cross_entropy(cell_logits, y, out.params.index, out.params.cells)
        loss = criterion(logits, out.target) + self.local_loss_weight * local
        return StepOutput(loss=loss, logits=logits, target=out.target, logs={"local_loss": float(local.detach())})


# ----------------------------------------------------------------------- halves: StackMix, YOCO
