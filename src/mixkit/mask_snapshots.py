"""Snapshots of a learnable method's masks over training, for ``mixkit show --checkpoint``.

The papers (AutoMix Fig. 1 and 6, SAMix Fig. 6) show how the learned masks of a few fixed pairs
change as training goes on. A :class:`MaskSnapshots` keeps a small probe batch (the first pairs
of the first training batch) and, at the end of epochs 1, 2, 5, 10, 20, 50... and of the last
epoch, the Mixer's masks for each probe pair at a few fixed lambdas, computed in eval mode
without gradient and without any random draw: recording changes nothing in the training. The
snapshots live in the method's ``state_dict``, so a checkpoint holds the whole history.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from mixkit.learnable import LearnableMixMethod

__all__ = ["MaskSnapshots", "snapshot_epoch"]

#: lambdas (weight of the first image of a pair) at which masks are recorded
PROBE_LAMS = (0.3, 0.5, 0.7)
#: probe pairs kept from the first training batch
PROBE_PAIRS = 4


def snapshot_epoch(epoch: int) -> bool:
    """Whether ``epoch`` (1-based) is in the 1-2-5 series: 1, 2, 5, 10, 20, 50, 100..."""
    while epoch >= 10 and epoch % 10 == 0:
        epoch //= 10
    return epoch in (1, 2, 5)


class MaskSnapshots:
    """The probe pairs and the masks recorded for them over training.

    Attributes:
        probe: ``(2n, C, H, W)`` float16 probe images as the method received them (normalised);
            pair ``i`` is ``(probe[i], probe[n + i])``. None until the first training batch.
        lams: the recorded lambdas (weight of the pair's first image).
        records: one dict per snapshot: ``epoch``, ``step`` and ``masks`` ``(n, L, H, W)`` uint8
            (mask * 255: the weight of the pair's first image per pixel).
    """

    def __init__(self) -> None:
        self.probe: Tensor | None = None
        self.lams: tuple[float, ...] = PROBE_LAMS
        self.records: list[dict[str, Any]] = []
        self.epochs = 0
        self.pixel_stats: tuple[list[float], list[float]] | None = None

    def pixels(self) -> Tensor:
        """The probe images in [0, 1] pixel units (undoing the run's input normalisation)."""
        if self.probe is None:
            raise ValueError("no probe images: the method has not trained a step")
        x = self.probe.float()
        if self.pixel_stats is None:
            return x
        mean, std = (torch.tensor(v, dtype=x.dtype).view(1, -1, 1, 1) for v in self.pixel_stats)
        return x * std + mean

    def set_probe(self, x: Tensor, normalization: tuple[Any, Any] | None = None) -> None:
        """Keep the first ``2n`` rows of a batch as probe pairs (once; batches of < 2 are skipped).

        ``normalization`` is the ``(mean, std)`` the batch was normalised with (for pictures).
        """
        n = min(PROBE_PAIRS, x.shape[0] // 2)
        if self.probe is None and n >= 1 and x.ndim == 4:
            self.probe = x[: 2 * n].detach().to("cpu", torch.float16).clone()
            if normalization is not None:
                self.pixel_stats = ([float(v) for v in normalization[0]], [float(v) for v in normalization[1]])

    @torch.no_grad()
    def epoch_end(self, method: LearnableMixMethod) -> dict[str, float]:
        """Count the epoch; on a snapshot epoch (or the last one) record the masks.

        Returns:
            ``{"mask_mean_gap": mean |mean(mask) - lambda|}`` over probe pairs and lambdas when a
            snapshot was taken (how closely the masks' area follows lambda), else ``{}``.
        """
        self.epochs += 1
        last = method.total_steps is not None and method.step >= method.total_steps
        if self.probe is None or method.mixer is None or not (snapshot_epoch(self.epochs) or last):
            return {}
        if self.records and self.records[-1]["step"] == method.step:
            return {}
        masks = self.masks(method)
        gap = (masks.mean(dim=(2, 3)) - torch.tensor(self.lams, dtype=masks.dtype)).abs().mean()
        self.records.append({"epoch": self.epochs, "step": method.step,
                             "masks": (masks * 255).round().to(torch.uint8)})
        return {"mask_mean_gap": float(gap)}

    def masks(self, method: LearnableMixMethod) -> Tensor:
        """``(n, L, H, W)`` float masks of the probe pairs from the method's current Mixer (eval mode)."""
        device = next(method.mixer.parameters()).device
        x = self.probe.to(device=device, dtype=torch.float32)
        n = x.shape[0] // 2
        index = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(device)
        modes = method.encoder.training, method.mixer.training
        method.encoder.eval()
        method.mixer.eval()
        try:
            feats = method._features(x)
            out = [method.generate_mask(feats, index, torch.full((2 * n,), lam, dtype=torch.float64, device=device),
                                        size=tuple(x.shape[2:]))[:n, 0] for lam in self.lams]
        finally:
            method.encoder.train(modes[0])
            method.mixer.train(modes[1])
        return torch.stack(out, dim=1).float().cpu()

    def state_dict(self) -> dict[str, Any]:
        """Tensors and numbers only (safe to load with ``weights_only=True``)."""
        return {"probe": self.probe, "lams": list(self.lams), "epochs": self.epochs,
                "records": [dict(r) for r in self.records], "pixel_stats": self.pixel_stats}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (states saved before snapshots existed leave this empty)."""
        self.probe = state.get("probe")
        self.lams = tuple(state.get("lams", PROBE_LAMS))
        self.epochs = int(state.get("epochs", 0))
        self.records = [dict(r) for r in state.get("records", [])]
        stats = state.get("pixel_stats")
        self.pixel_stats = (list(stats[0]), list(stats[1])) if stats is not None else None
