"""Pictures of what methods do: a grid of mixed images with their label weights.

Needs matplotlib (``pip install 'mixkit[plot]'``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from mixkit.registry import create, list_methods, method_info
from mixkit.types import MixTarget

__all__ = ["method_gallery", "pair_grid", "mask_snapshots_figure"]


def _pyplot():  # type: ignore[no-untyped-def]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ImportError("pictures need matplotlib: pip install 'mixkit[plot]' (or pip install matplotlib)") from err
    return plt


def _caption(target: MixTarget, row: int, names: Sequence[str]) -> str:
    cls = target.labels if target.labels.ndim == 1 else target.labels.argmax(dim=1)
    parts: dict[str, float] = {}
    for src, w in zip(target.index[row].tolist(), target.weight[row].tolist()):
        name = names[int(cls[src])]
        parts[name] = parts.get(name, 0.0) + w
    top = sorted(parts.items(), key=lambda kv: -kv[1])[:2]
    return "\n".join(f"{w:.2f} {n}" for n, w in top if w > 0.005)


def _show(ax, img: Tensor) -> None:  # type: ignore[no-untyped-def]
    img = img.detach().float().clamp(0, 1).cpu()
    if img.shape[0] == 1:
        ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    else:
        ax.imshow(img[:3].permute(1, 2, 0).numpy(), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def method_gallery(
    images: Tensor,
    labels: Tensor,
    path: str | os.PathLike[str],
    *,
    methods: Sequence[str] | None = None,
    class_names: Sequence[str] | None = None,
    seed: int = 0,
) -> Path:
    """Render every method applied to the same batch, one row per method, and save it.

    Each method runs with its paper defaults in per-sample mode, so each column shows its own
    lambda. Feature-level methods are shown applying their mix to the input itself.

    Args:
        images: ``(N, C, H, W)`` float images in [0, 1] (N columns).
        labels: ``(N,)`` integer labels.
        path: the image file to write (PNG, PDF, SVG...).
        methods: registry names (default: every sample policy that mixes without a model; the
            baseline, the label policies (they mix as the method they wrap) and the learnable
            methods (their masks need a trained Mixer) are left out).
        class_names: names for the captions (default: class numbers).
        seed: seed of the draws.

    Returns:
        The path written.
    """
    plt = _pyplot()
    if methods is None:
        methods = [n for n in list_methods()
                   if method_info(n).family not in ("baseline", "label") and "mixer" not in method_info(n).needs]
    methods = list(methods)
    num_classes = int(labels.max()) + 1
    names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
    n = images.shape[0]
    fig, axes = plt.subplots(len(methods) + 1, n, figsize=(1.35 * n + 1.2, 1.6 * (len(methods) + 1)), squeeze=False)
    for col in range(n):
        _show(axes[0, col], images[col])
        axes[0, col].set_title(names[int(labels[col])], fontsize=7)
    axes[0, 0].set_ylabel("original", fontsize=9)
    generator = torch.Generator().manual_seed(seed)
    for row, name in enumerate(methods, start=1):
        method = create(name, mode="elem") if "mode" in method_info(name).defaults else create(name)
        params = method.sample(images, labels, generator=generator)
        mixed = method.apply(images, params)
        target = method.target(labels, params)
        for col in range(n):
            _show(axes[row, col], mixed[col])
            axes[row, col].set_title(_caption(target, col, names), fontsize=6)
        info = method_info(name)
        where = "\nmix shown at input" if "features" in info.needs else ""
        axes[row, 0].set_ylabel(f"{name}\n({info.family}, {info.year}){where}", fontsize=8)
    fig.tight_layout()
    fig.suptitle("mixkit: each method with paper defaults, one lambda per sample", fontsize=10, y=1.0, va="bottom")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out


def pair_grid(
    images: Tensor,
    labels: Tensor,
    path: str | os.PathLike[str],
    *,
    method: str,
    hparams: dict | None = None,
    class_names: Sequence[str] | None = None,
    seed: int = 0,
) -> Path:
    """Three rows per picture: each sample, its partner, and their mix with its label weights.

    Args:
        images: ``(N, C, H, W)`` float images in [0, 1].
        labels: ``(N,)`` integer labels.
        path: the image file to write.
        method: registry name.
        hparams: the method's hyper-parameters (paper defaults otherwise).
        class_names: names for the captions.
        seed: seed of the draws.
    """
    if "mixer" in method_info(method).needs:
        raise ValueError(f"{method} draws its masks with a Mixer trained alongside a model: show a trained one "
                         f"with mixkit show --method {method} --checkpoint RUN/checkpoint.pt")
    plt = _pyplot()
    m = create(method, **(hparams or {}))
    names = list(class_names) if class_names is not None else [str(i) for i in range(int(labels.max()) + 1)]
    params = m.sample(images, labels, generator=torch.Generator().manual_seed(seed))
    mixed, target = m.apply(images, params), m.target(labels, params)
    n = images.shape[0]
    fig, axes = plt.subplots(3, n, figsize=(1.45 * n + 1.0, 5.2), squeeze=False)
    rows = [(images, "sample"), (images[params.index], "partner"), (mixed, "mix")]
    for r, (batch, title) in enumerate(rows):
        for col in range(n):
            _show(axes[r, col], batch[col])
        axes[r, 0].set_ylabel(title, fontsize=9)
    for col in range(n):
        axes[0, col].set_title(names[int(labels[col])], fontsize=7)
        axes[1, col].set_title(names[int(labels[params.index[col]])], fontsize=7)
        axes[2, col].set_xlabel(_caption(target, col, names), fontsize=7)
    fig.tight_layout()
    fig.suptitle(f"{method} {m.hparams}", fontsize=8, y=1.0, va="bottom")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out


def mask_snapshots_figure(snapshots: dict, path: str | os.PathLike[str], *, title: str = "") -> Path:
    """The learned masks and mixes of fixed probe pairs over training (the papers' figures).

    Args:
        snapshots: a learnable method's ``state_dict()["snapshots"]`` (see
            :class:`mixkit.mask_snapshots.MaskSnapshots`), e.g. from a run's ``checkpoint.pt``.
        path: the image file to write.
        title: the figure's title.

    The first row shows each probe pair (image A, image B) and their plain Mixup at lambda 0.5;
    then, for each recorded epoch, one row of masks (white: A's weight 1) and one row of mixes,
    one column per pair and lambda (lambda is A's weight).
    """
    from mixkit.mask_snapshots import MaskSnapshots

    snaps = MaskSnapshots()
    snaps.load_state_dict(snapshots)
    if snaps.probe is None or not snaps.records:
        raise ValueError("no mask snapshots in this state: they are recorded at the end of epochs 1, 2, 5, 10, 20, "
                         "50... of a run made with mixkit >= 0.1's learnable methods")
    plt = _pyplot()
    images = snaps.pixels().clamp(0, 1)
    n, lams = images.shape[0] // 2, snaps.lams
    cols = n * len(lams)
    rows = 1 + 2 * len(snaps.records)
    fig, axes = plt.subplots(rows, cols, figsize=(0.95 * cols + 0.8, 0.95 * rows + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for i in range(n):
        a, b = images[i], images[n + i]
        for j, (img, name) in enumerate([(a, "A"), (b, "B"), (0.5 * a + 0.5 * b, "mixup 0.5")]):
            if j < len(lams):
                _show(axes[0, i * len(lams) + j], img)
                axes[0, i * len(lams) + j].set_axis_on()
                axes[0, i * len(lams) + j].set_title(f"pair {i + 1}: {name}", fontsize=6)
    for r, rec in enumerate(snaps.records):
        masks = rec["masks"].float() / 255.0
        for i in range(n):
            for k, lam in enumerate(lams):
                m = masks[i, k].unsqueeze(0)
                mix = m * images[i] + (1 - m) * images[n + i]
                col = i * len(lams) + k
                for off, img in ((1, m), (2, mix)):
                    ax = axes[2 * r + off, col]
                    _show(ax, img)
                    ax.set_axis_on()
                if r == 0:
                    axes[1, col].set_title(f"lambda {lam:g}", fontsize=6)
                axes[2 * r + 1, col].set_xlabel(f"mean {float(m.mean()):.2f}", fontsize=5, labelpad=1)
        axes[2 * r + 1, 0].set_ylabel(f"epoch {rec['epoch']}\nmask", fontsize=7)
        axes[2 * r + 2, 0].set_ylabel(f"epoch {rec['epoch']}\nmix", fontsize=7)
    fig.tight_layout()
    if title:
        fig.suptitle(title, fontsize=9, y=1.0, va="bottom")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return out
