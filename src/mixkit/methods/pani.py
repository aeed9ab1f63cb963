"""Patch-level neighbourhood interpolation (Pani MixUp), a cutting-based k-source mix.

Paper: Sun, Yu, Lin, Zhu, "Patch-level Neighborhood Interpolation: A General and Effective
Graph-based Regularization Strategy", ACML 2023 (PMLR 222:1276-1291), arXiv 1911.09307. No
official code is published. The pure tensor functions are in :mod:`mixkit.functional.pani`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mixkit import rng
from mixkit._device import upload
from mixkit.base import MixMethod
from mixkit.errors import ShapeError
from mixkit.functional.pani import interpolate_patches, nearest_patches, patch_grid, patch_shares, source_weights
from mixkit.hooks import mix_features
from mixkit.methods.multi import MultiParams
from mixkit.registry import register
from mixkit.types import MixTarget, ModelMixOutput
from mixkit.validation import check_alpha, check_choice, check_labels, check_params, check_positive_int, check_x

__all__ = ["PaniMixup", "PaniParams"]

#: patches per image side when ``patch_size`` is None (2 x 2 patches on 32 x 32 images).
AUTO_GRID = 16


@dataclass(frozen=True, eq=False, kw_only=True)
class PaniParams(MultiParams):
    """Params of Pani MixUp.

    Attributes:
        sources: ``(B, 1 + m)`` int64: the row itself, then its ``m`` peer rows.
        weights: ``(B, 1 + m)`` float64 realised share of each source (rows sum to 1).
        neighbours: ``(B, P, K)`` int64 on the CPU: the ``K`` nearest patches of each patch,
            as flat ids ``row * P + i`` into the batch's ``P`` patches per sample.
        patch_size: the patch side ``s`` the neighbours were found with.
    """

    neighbours: Tensor
    patch_size: int


def _peers(b: int, m: int, generator: torch.Generator | None) -> Tensor:
    """``(B, m)`` distinct random rows per row, never the row itself (uniform subsets)."""
    scores = rng.uniform((b, b), generator=generator).fill_diagonal_(2.0)
    return scores.topk(m, dim=1, largest=False).indices


@register(
    "pani_mixup",
    family="cutting",
    paper="Patch-level Neighborhood Interpolation: A General and Effective Graph-based Regularization Strategy",
    authors="Sun et al.",
    venue="ACML 2023 (arXiv 1911.09307)",
    year=2023,
    code="https://arxiv.org/abs/1911.09307",
    sources="k",
    summary="Each patch interpolated with its K nearest patches from peer images; label weights = realised shares.",
)
class PaniMixup(MixMethod):
    """Pani MixUp: every patch blended with the mean of its K nearest patches in peer images.

    Each sample draws ``num_peers`` distinct peer rows of the batch at random (never itself).
    Its non-overlapping ``s x s`` patches are each linked to their ``k`` nearest patches
    (Euclidean, or cosine, distance between the flattened patches; any position) among the
    patches of its peers: the paper's patch-level graph. Every patch ``p`` becomes
    ``lam * p + (1 - lam) / k * sum(neighbours)`` with ``lam ~ Beta(alpha, alpha)`` per batch
    (``"batch"``) or per sample (``"elem"``), i.e. the paper's non-local interpolation
    ``p + sum_j eta_j (p_j - p)`` with equal coefficients ``eta_j = (1 - lam) / k``.

    Label: the realised share of each source, so the label splits as the pixel mass does: the
    sample keeps ``lam`` (``params.lam``; patches never come from the sample itself) and each
    peer gets ``(1 - lam) / k`` times the pixel share of every patch that took one of its
    patches as a neighbour. The target has ``1 + num_peers`` sources; ``params.index`` is the
    peer with the largest weight. When ``s`` does not divide ``H`` or ``W`` the grid is
    padded by edge replication and cropped back; edge patches then count only their
    in-image pixels in the label.

    What comes from where: the paper publishes no code, and only its abstract and the mixup
    survey's summary of it (X. Jin, "Sample and Label Policies for Mixup in Supervised
    Learning", 2024, section 1.3: a peer set by random matching or similarity, a patch set,
    a K-NN graph on patch similarity, linear interpolation of similar patches) could be read
    while writing this. Those steps are followed, with random peers. Equal coefficients, Beta lambda, the realised-share label and the defaults
    (``k = 10``, ``num_peers = 10``, ``s = ceil(min(H, W) / 16)``, i.e. 2 on 32 x 32 images)
    are this implementation's choices, not checked against the paper's text. The paper also
    builds its graphs on hidden features; :meth:`forward_at` does that through a hook.

    Cost: the exact search is ``B * m * P^2 * C s^2`` multiply-adds plus a top-``k`` over
    ``m * P`` distances for each of the ``B * P`` patches, so small patches on large images
    are slow (the default keeps 16 x 16 patches per image: at batch 128 and one thread, about
    0.18 s of CPU at 32 x 32, where selecting the top-k among 84 M distances takes more time
    than the products, and about 2 s at 224 x 224, where the products dominate; on the
    CPU the selection is :func:`~mixkit.functional.pani.smallest_columns`, about twice as fast
    as ``topk``).

    Args:
        alpha: Beta concentration of lambda (> 0).
        k: neighbours per patch (>= 1; capped by the peers' patch count).
        num_peers: peer images per sample (>= 1; capped by ``B - 1``).
        patch_size: patch side ``s`` in pixels; ``None``: ``ceil(min(H, W) / 16)``.
        metric: ``"euclidean"`` or ``"cosine"`` patch distance.
        p: probability of mixing the batch or each sample.
        mode: ``"batch"`` (one lambda) or ``"elem"`` (one lambda per sample).
        num_classes: number of classes, if known.

    Example:
        >>> import torch, mixkit
        >>> out = mixkit.create("pani_mixup", k=2, num_peers=3, patch_size=4)(
        ...     torch.rand(4, 3, 16, 16), torch.arange(4), generator=torch.Generator().manual_seed(0))
        >>> out.target.k, out.params.neighbours.shape, float(out.target.weight.sum(dim=1)[0])
        (4, torch.Size([4, 16, 2]), 1.0)
    """

    spatial_dims = (2,)

    def __init__(
        self,
        *,
        alpha: float = 1.0,
        k: int = 10,
        num_peers: int = 10,
        patch_size: int | None = None,
        metric: str = "euclidean",
        p: float = 1.0,
        mode: str = "batch",
        num_classes: int | None = None,
    ) -> None:
        super().__init__(p=p, mode=mode, num_classes=num_classes)
        self.alpha = check_alpha(alpha)
        self.k = check_positive_int(k, "k", allow_none=False)
        self.num_peers = check_positive_int(num_peers, "num_peers", allow_none=False)
        self.patch_size = check_positive_int(patch_size, "patch_size")
        self.metric = check_choice(metric, ("euclidean", "cosine"), "metric")

    def resolve_patch_size(self, spatial: tuple[int, int]) -> int:
        """The patch side used on images of size ``spatial``."""
        return self.patch_size or max(1, math.ceil(min(spatial) / AUTO_GRID))

    def sample(self, x: Tensor, y: Tensor | None = None, *, generator: torch.Generator | None = None) -> PaniParams:
        b, spatial = x.shape[0], (x.shape[2], x.shape[3])
        s = self.resolve_patch_size(spatial)
        n = math.prod(patch_grid(spatial, s))
        m = min(self.num_peers, b - 1)
        peers = _peers(b, m, generator)
        lam = self._per_sample(b, lambda size: rng.beta(size, self.alpha, self.alpha, generator=generator))
        active = self._active(b, generator)
        own = torch.arange(b)
        if m == 0:  # a batch of one: nothing to interpolate with
            nb = (own.view(b, 1, 1) * n + torch.arange(n).view(1, n, 1)).expand(b, n, 1).clone()
            return PaniParams(index=own, lam=torch.ones(b, dtype=torch.float64), sources=own.view(b, 1),
                              weights=torch.ones(b, 1, dtype=torch.float64), neighbours=nb, patch_size=s)
        lam = torch.where(active, lam, 1.0)
        nb = nearest_patches(x, peers, s, min(self.k, m * n), metric=self.metric).cpu()
        peer_w = source_weights(nb, peers, lam, patch_shares(spatial, s))
        index = torch.where(lam < 1, peers.gather(1, peer_w.argmax(dim=1, keepdim=True)).squeeze(1), own)
        return PaniParams(
            index=index, lam=lam, sources=torch.cat([own.unsqueeze(1), peers], dim=1),
            weights=torch.cat([lam.unsqueeze(1), peer_w], dim=1), neighbours=nb, patch_size=s,
        )

    def apply(self, x: Tensor, params: PaniParams) -> Tensor:
        check_params(x, params)
        b, s = x.shape[0], params.patch_size
        n = math.prod(patch_grid((x.shape[-2], x.shape[-1]), s)) if x.ndim == 4 else -1
        nb = params.neighbours
        if nb.ndim != 3 or nb.shape[:2] != (b, n) or int(nb.max()) >= b * n or int(nb.min()) < 0:
            raise ShapeError(
                f"neighbours of shape {tuple(nb.shape)} (patch size {s}) do not fit x of shape {tuple(x.shape)}; "
                "sample params for this size"
            )
        return self._mix(x, params)

    def _mix(self, x: Tensor, params: PaniParams) -> Tensor:
        return interpolate_patches(x, params.neighbours, params.lam, params.patch_size)

    def target(self, y: Tensor, params: PaniParams) -> MixTarget:
        dtype = torch.float64 if y.dtype == torch.float64 else torch.float32
        return MixTarget(y, upload(params.sources, y.device), upload(params.weights, y.device, dtype), self.num_classes)

    def forward_at(
        self, model: nn.Module, x: Tensor, y: Tensor, *, layer: str, generator: torch.Generator | None = None
    ) -> ModelMixOutput:
        """Run ``model`` with Pani MixUp applied to the output of ``layer`` (feature level).

        The peers, lambda and the patch graph are drawn on the layer's ``(B, C, H, W)`` output
        itself (neighbours by feature distance, as the paper builds its graphs in hidden
        layers), through a forward hook; ``"input"`` mixes the model's input.

        Returns:
            The logits, the mixed target and the :class:`PaniParams` used at ``layer``.
        """
        rng.check_generator(generator)
        check_labels(y, x.shape[0], self.num_classes)
        drawn: list[PaniParams] = []

        def mix(h: Tensor) -> Tensor:
            check_x(h, spatial_dims=self.spatial_dims, needs_float=True, name=f"the output of layer {layer!r}")
            drawn.append(self.sample(h, generator=generator))
            return self._mix(h, drawn[0])

        with mix_features(model, layer, mix):
            logits = model(x)
        return ModelMixOutput(logits, self.target(y, drawn[0]), drawn[0])  # type: ignore[arg-type]
