"""Evaluation of a model in training: clean test metrics and accuracy under corruptions."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from mixkit.functional.layout import in_format
from mixkit.metrics import ClassificationMeter
from mixkit.train import distributed as dist

if TYPE_CHECKING:
    from mixkit.train.config import TrainConfig
    from mixkit.train.engine import TrainData

__all__ = ["evaluate", "evaluate_corruptions", "predict"]


def _standardize(x01: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    m = torch.tensor(mean, dtype=x01.dtype, device=x01.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x01.dtype, device=x01.device).view(1, -1, 1, 1)
    return (x01 - m) / s


@torch.no_grad()
def predict(
    model: nn.Module,
    images: Tensor,
    data: TrainData,
    cfg: TrainConfig,
    device: torch.device,
    transform: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """Logits for ``images`` (this rank's share, gathered across ranks), in eval mode.

    ``images`` are uint8, or float in [0, 1]. ``transform`` maps a float batch in [0, 1] to
    another before normalising. The model's train/eval state is restored afterwards; in a
    distributed run the unwrapped model is used, with rank 0's batch-norm statistics.
    """
    dist.sync_buffers(model)
    model = dist.unwrap(model)
    was_training = model.training
    model.eval()
    n = images.shape[0]
    per = -(-n // dist.world())
    lo, hi = min(n, dist.rank() * per), min(n, (dist.rank() + 1) * per)
    outs = []
    for start in range(lo, hi, cfg.eval_batch_size):
        x = images[start : min(hi, start + cfg.eval_batch_size)].to(device)
        x = x.float() / 255.0 if not x.is_floating_point() else x
        if transform is not None:
            x = transform(x)
        x = _standardize(x, data.mean, data.std)
        if cfg.channels_last and x.ndim == 4:
            x = in_format(x, torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.amp):
            outs.append(model(x).float())
    logits = torch.cat(outs) if outs else torch.zeros(0, data.num_classes, device=device)
    model.train(was_training)
    return _gather_uneven(logits, per)


def _gather_uneven(logits: Tensor, per: int) -> Tensor:
    if dist.world() == 1:
        return logits
    padded = torch.zeros(per, logits.shape[1], dtype=logits.dtype, device=logits.device)
    padded[: logits.shape[0]] = logits
    sizes = dist.gather_cat(torch.tensor([logits.shape[0]], device=logits.device))
    parts = dist.gather_cat(padded).split(per)
    return torch.cat([p[: int(s)] for p, s in zip(parts, sizes)])


def evaluate(model: nn.Module, data: TrainData, cfg: TrainConfig, device: torch.device) -> dict[str, Any]:
    """Top-1, top-5 (percent), NLL and ECE (15 bins) on the clean test set, with reliability bins."""
    meter = ClassificationMeter(data.num_classes)
    meter.update(predict(model, data.test_images, data, cfg, device), data.test_labels.to(device))
    result: dict[str, Any] = dict(meter.compute())
    # empty bins have no accuracy: null in JSON rather than NaN
    result["reliability"] = {k: [None if v != v else v for v in t.tolist()] for k, t in meter.reliability().items()}
    return result


def evaluate_corruptions(
    model: nn.Module, data: TrainData, cfg: TrainConfig, device: torch.device, *, seed: int = 0
) -> dict[str, Any]:
    """Top-1 under each corruption and severity of ``cfg.corruption_severities``, and their mean.

    The corrupted images are made once, on the CPU, in global order and fixed chunks with
    seeded draws, so every method, batch size and process count sees the same images.
    """
    from mixkit.corruptions import CORRUPTIONS, corrupt
    from mixkit.data import subset_per_class

    images, labels = data.test_images, data.test_labels
    if cfg.corruption_subset is not None:
        counts = torch.bincount(labels, minlength=data.num_classes)
        keep = subset_per_class(labels, min(cfg.corruption_subset, int(counts.min())), seed=0)
        images, labels = images[keep], labels[keep]
    labels = labels.to(device)
    table: dict[str, dict[str, float]] = {}
    for name in CORRUPTIONS:
        table[name] = {}
        for severity in cfg.corruption_severities:
            gen = torch.Generator().manual_seed(seed * 1009 + severity)
            chunks = [corrupt(images[i : i + 256].float() / 255.0, name, severity, generator=gen)
                      for i in range(0, images.shape[0], 256)]
            logits = predict(model, torch.cat(chunks), data, cfg, device)
            table[name][str(severity)] = float((logits.argmax(dim=1) == labels).double().mean() * 100)
    values = [v for row in table.values() for v in row.values()]
    return {"per_corruption": table, "mean_top1": sum(values) / len(values), "images": int(labels.shape[0])}
