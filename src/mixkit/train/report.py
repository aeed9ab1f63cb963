"""The files a run leaves: ``metrics.json`` (final and per-epoch metrics, timing, the config)
and ``curves.png``."""

from __future__ import annotations

import json
import os
import platform
import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from mixkit.metrics import median_of_last
from mixkit.train.evaluation import evaluate_corruptions

if TYPE_CHECKING:
    from mixkit.train.config import TrainConfig
    from mixkit.train.engine import TrainData, _Run

__all__ = ["write_run_files", "final_metrics", "write_json"]


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically."""
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, default=float) + "\n")
    os.replace(tmp, path)


def final_metrics(history: list[dict[str, Any]], median_last: int) -> dict[str, Any]:
    """Last evaluation's metrics plus the median top-1 of the last ``median_last`` ones."""
    evals = [h for h in history if "test" in h]
    if not evals:
        return {}
    last = evals[-1]["test"]
    tail = [h["test"]["top1"] for h in evals[-median_last:]]
    return {
        "top1": last["top1"],
        "top1_median_last": median_of_last(tail, len(tail)),
        "median_last_n": len(tail),
        "top5": last["top5"],
        "nll": last["nll"],
        "ece": last["ece"],
        "epoch": evals[-1]["epoch"],
    }


def write_run_files(run: _Run, data: TrainData, cfg: TrainConfig, device: torch.device, *, enabled: bool) -> dict[str, Any]:
    """Final evaluation (with corruptions), then ``metrics.json`` and ``curves.png``."""
    out = Path(cfg.out)
    assert run.history is not None
    final = final_metrics(run.history, cfg.median_last)
    if cfg.corruptions:
        corr = evaluate_corruptions(run.model, data, cfg, device, seed=0)
        final["corruption_top1"] = corr["mean_top1"]
        final["corruption"] = corr["per_corruption"]
        final["corruption_images"] = corr["images"]
    epoch_times = [h["epoch_time_s"] for h in run.history]
    metrics = {
        "final": final,
        "epochs": run.history,
        "wall_time_s": run.elapsed,
        "train_time_per_epoch_s": sum(epoch_times) / len(epoch_times),
        "median_epoch_time_s": statistics.median(epoch_times),
        "images_per_s": sum(h["images"] for h in run.history) / sum(epoch_times),
        "train_images": int(data.train_labels.shape[0]),
        "test_images": int(data.test_labels.shape[0]),
        "config": cfg.to_dict(),
        "versions": {"torch": torch.__version__, "python": platform.python_version(), "threads": torch.get_num_threads()},
        "finished": True,
    }
    if enabled:
        save_mixer = getattr(run.method, "save_mixer", None)
        if cfg.save_mixer and callable(save_mixer):
            save_mixer(cfg.save_mixer)
        write_json(out / "metrics.json", metrics)
        try:
            from mixkit.train.plots import plot_curves

            plot_curves(run.history, out / "curves.png", title=f"{cfg.method} on {cfg.data} ({cfg.model})")
        except ImportError:
            pass
    return metrics
