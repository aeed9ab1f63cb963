"""Pictures of runs: training curves, benchmark bars with error bars, reliability diagrams.

Needs matplotlib (``pip install 'mixkit[plot]'``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mixkit.viz import _pyplot

__all__ = ["plot_curves", "plot_accuracy_curves", "plot_bars", "plot_reliability"]


def _save(fig: Any, path: str | Path) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    _pyplot().close(fig)
    return out


def plot_curves(history: Sequence[Mapping[str, Any]], path: str | Path, *, title: str = "") -> Path:
    """Training loss, training and test top-1 per epoch, and the learning rate."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    epochs = [h["epoch"] for h in history]
    axes[0].plot(epochs, [h["train_loss"] for h in history], label="train loss")
    tests = [h for h in history if "test" in h]
    axes[0].plot([h["epoch"] for h in tests], [h["test"]["nll"] for h in tests], "o-", label="test NLL")
    axes[1].plot(epochs, [h["train_acc"] for h in history], label="train (mixed) top-1")
    axes[1].plot([h["epoch"] for h in tests], [h["test"]["top1"] for h in tests], "o-", label="test top-1")
    axes[2].plot(epochs, [h["lr"] for h in history])
    for ax, label in zip(axes, ("loss", "top-1 (%)", "learning rate (epoch end)")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        if ax is not axes[2]:
            ax.legend(fontsize=8)
    fig.suptitle(title)
    return _save(fig, path)


def plot_accuracy_curves(runs: Mapping[str, Sequence[Sequence[Mapping[str, Any]]]], path: str | Path) -> Path:
    """Test top-1 per epoch for each method (mean over its seeds' histories)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for method, histories in runs.items():
        series: dict[int, list[float]] = {}
        for history in histories:
            for h in history:
                if "test" in h:
                    series.setdefault(h["epoch"], []).append(h["test"]["top1"])
        xs = sorted(series)
        ax.plot(xs, [sum(series[e]) / len(series[e]) for e in xs], "o-", ms=3, label=method)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test top-1 (%)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_bars(rows: Sequence[Mapping[str, Any]], path: str | Path, *, metric: str = "top1") -> Path:
    """One bar per method: mean of ``metric`` over seeds with a standard-deviation error bar."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(5, 1.1 * len(rows)), 3.8))
    names = [r["method"] for r in rows]
    means = [r[f"{metric}_mean"] for r in rows]
    stds = [r[f"{metric}_std"] for r in rows]
    ax.bar(names, means, yerr=stds, capsize=4, color="#4C72B0")
    low = min(m - s for m, s in zip(means, stds))
    ax.set_ylim(max(0.0, low - 5), max(m + s for m, s in zip(means, stds)) + 2)
    ax.set_ylabel(f"test {metric} (%)")
    for i, (m, n) in enumerate(zip(means, (r["seeds"] for r in rows))):
        ax.text(i, m, f"{m:.1f}\n(n={n})", ha="center", va="bottom", fontsize=7)
    ax.tick_params(axis="x", labelrotation=30)
    return _save(fig, path)


def plot_reliability(reliability: Mapping[str, Mapping[str, Sequence[float]]], path: str | Path) -> Path:
    """Reliability diagrams (accuracy against confidence per bin), one panel per method."""
    plt = _pyplot()
    n = len(reliability)
    fig, axes = plt.subplots(1, n, figsize=(2.8 * n, 3.0), squeeze=False)
    for ax, (method, rel) in zip(axes[0], reliability.items()):
        lower, upper = rel["lower"], rel["upper"]
        acc = [0.0 if a is None or a != a else a for a in rel["accuracy"]]  # empty bin -> 0
        ax.bar(lower, acc, width=[u - l for l, u in zip(lower, upper)], align="edge", edgecolor="k", alpha=0.7)
        ax.plot([0, 1], [0, 1], "r--", lw=1)
        ax.set_title(method, fontsize=9)
        ax.set_xlabel("confidence")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
    axes[0][0].set_ylabel("accuracy")
    return _save(fig, path)
