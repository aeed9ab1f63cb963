"""The training engine: one loop for every registered method.

The engine knows one protocol: ``method.train_step(model, x, y, criterion=..., generator=...)``
returns a :class:`~mixkit.types.StepOutput`, and ``method.state_dict()`` /
``load_state_dict()`` carry the method's own state into checkpoints. It never branches on a
method's name. A checkpoint is written atomically at the end of every epoch, holding the
model, optimiser, scheduler, method state and every RNG state, so ``resume=True`` continues
an interrupted run to the same final weights as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mixkit._device import upload
from mixkit.base import MixMethod
from mixkit.data.augment import normalize
from mixkit.errors import HyperParameterError
from mixkit.functional.layout import in_format
from mixkit.holdout import Holdout, split_holdout
from mixkit.losses import mixup_binary_cross_entropy, mixup_cross_entropy
from mixkit.registry import create, list_methods, method_info
from mixkit.train import distributed as dist
from mixkit.train.config import TrainConfig
from mixkit.train.evaluation import evaluate
from mixkit.train.progress import JsonlLog, Progress
from mixkit.types import MixTarget

__all__ = ["train", "TrainData", "load_train_data", "CHECKPOINT"]

CHECKPOINT = "checkpoint.pt"


@dataclass(frozen=True)
class TrainData:
    """In-memory uint8 data for a run: training and test images, labels, normalisation."""

    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def load_train_data(cfg: TrainConfig) -> TrainData:
    """Load the configured data set (and subset) through :mod:`mixkit.data`."""
    from mixkit.data import dataset_stats, load_dataset, subset_per_class

    train = load_dataset(cfg.data, root=cfg.data_root, split="train", cache_dir=cfg.cache_dir)
    test = load_dataset(cfg.data, root=cfg.data_root, split="test", cache_dir=cfg.cache_dir)
    images, labels = train.images, train.labels
    if cfg.subset is not None:
        keep = subset_per_class(labels, cfg.subset, seed=cfg.subset_seed, offset=cfg.subset_offset)
        images, labels = images[keep], labels[keep]
    mean, std = dataset_stats(cfg.data, images)
    return TrainData(images, labels, test.images, test.labels, tuple(train.classes), tuple(mean), tuple(std))


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def build_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """SGD (with momentum, optionally Nesterov) or AdamW, weight decay on every parameter
    (as the plain recipes the field reports)."""
    params = list(model.parameters())
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                           nesterov=cfg.nesterov and cfg.momentum > 0)


def build_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int) -> Any:
    """A per-step schedule: one-cycle (PyTorch's defaults), or cosine with linear warm-up."""
    total = cfg.epochs * steps_per_epoch
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=total)
    warm = int(cfg.warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def build_criterion(cfg: TrainConfig) -> Callable[[Tensor, MixTarget], Tensor]:
    """The loss on mixed targets, from ``cfg.loss`` and ``cfg.label_smoothing``."""
    fn = mixup_binary_cross_entropy if cfg.loss == "bce" else mixup_cross_entropy
    return functools.partial(fn, smoothing=cfg.label_smoothing)


def _mixed_accuracy(logits: Tensor, target: MixTarget) -> float:
    """Weighted share of correct predictions against each source label."""
    labels = target.labels if target.labels.ndim == 1 else target.labels.argmax(dim=1)
    pred = logits.detach().argmax(dim=1)
    hits = (pred.unsqueeze(1) == labels.to(pred.device)[target.index.to(pred.device)]).to(target.weight.dtype)
    return float((hits * target.weight.to(pred.device)).sum() / target.weight.sum().clamp_min(1e-12))


@dataclass
class _Run:
    """Mutable state of a run: what a checkpoint holds."""

    model: nn.Module
    method: Any
    optimizer: torch.optim.Optimizer
    scheduler: Any
    gens: dict[str, torch.Generator]
    epoch: int = 0
    history: list[dict[str, Any]] | None = None
    elapsed: float = 0.0


def _seed_generators(seed: int, rank: int, shared_mix: bool) -> dict[str, torch.Generator]:
    """Data order is shared by all ranks; augmentation and mixing differ per rank, except
    that pairing across ranks needs the same mixing draws everywhere."""
    return {
        "data": torch.Generator().manual_seed(seed * 7919 + 1),
        "augment": torch.Generator().manual_seed(seed * 7919 + 2 + 1000 * rank),
        "mix": torch.Generator().manual_seed(seed * 7919 + 3 + (0 if shared_mix else 1000 * rank)),
    }


def _rng_state(run: _Run) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), **{k: g.get_state() for k, g in run.gens.items()}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _checkpoint_state(run: _Run, cfg: TrainConfig) -> dict[str, Any]:
    """Everything to continue the run; collective (every rank contributes its RNG states)."""
    return {
        "epoch": run.epoch,
        "config": cfg.to_dict(),
        "world_size": dist.world(),
        "model": dist.unwrap(run.model).state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "method": run.method.state_dict(),
        "rng": dist.gather_objects(_rng_state(run)),  # one entry per rank
        "history": run.history,
        "elapsed": run.elapsed,
    }


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically (a temporary file, then a rename)."""
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _restore(run: _Run, state: dict[str, Any]) -> None:
    dist.unwrap(run.model).load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    run.method.load_state_dict(state["method"])
    rngs = state["rng"][dist.rank()]
    torch.set_rng_state(rngs["torch"])
    if "cuda" in rngs and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rngs["cuda"])
    for k, g in run.gens.items():
        g.set_state(rngs[k])
    run.epoch, run.history, run.elapsed = state["epoch"], state["history"], state["elapsed"]


#: settings that may differ between a checkpoint and the run that resumes it
RESUME_FREE = frozenset({"out", "threads", "device", "eval_batch_size", "data_root", "cache_dir", "save_mixer"})


def config_differences(saved: dict[str, Any], cfg: TrainConfig) -> list[str]:
    """Settings (other than :data:`RESUME_FREE`) in which ``saved`` and ``cfg`` differ, as JSON.

    A setting missing from ``saved`` (written before the setting existed) counts as its default.
    """
    now = json.loads(json.dumps(cfg.to_dict()))
    defaults = json.loads(json.dumps(TrainConfig().to_dict()))
    saved = json.loads(json.dumps(saved))
    return sorted(k for k in now if k not in RESUME_FREE and saved.get(k, defaults[k]) != now[k])


def _check_resumable(state: dict[str, Any], cfg: TrainConfig) -> None:
    diff = config_differences(state["config"], cfg)
    if diff:
        raise ValueError(f"cannot resume: the checkpoint was made with other settings for {', '.join(diff)}")
    if state.get("world_size", 1) != dist.world():
        raise ValueError(f"cannot resume: the checkpoint was made by {state.get('world_size', 1)} processes, "
                         f"this run has {dist.world()}")


def _prepare_batch(images: Tensor, data: TrainData, cfg: TrainConfig, gen: torch.Generator, device: torch.device) -> Tensor:
    from mixkit.data import normalize, random_crop_flip

    x = upload(images, device)  # without blocking to CUDA only (MPS: pytorch#139550)
    if cfg.augment:
        x = random_crop_flip(x, padding=4, flip=True, generator=gen)
    x = normalize(x, data.mean, data.std)
    return in_format(x, torch.channels_last) if cfg.channels_last and x.ndim == 4 else x


def _train_epoch(run: _Run, data: TrainData, cfg: TrainConfig, device: torch.device, hooks: dict[str, Callable]) -> dict[str, float]:
    run.model.train()
    criterion = build_criterion(cfg)
    order = torch.randperm(data.train_labels.shape[0], generator=run.gens["data"])
    batches = dist.shard_batches(order, cfg.batch_size)
    bar = Progress(len(batches), f"epoch {run.epoch + 1}/{cfg.epochs}", enabled=dist.is_main())
    totals = {"loss": 0.0, "acc": 0.0, "n": 0}
    start = time.perf_counter()
    for step, idx in enumerate(batches):
        x = _prepare_batch(data.train_images[idx], data, cfg, run.gens["augment"], device)
        y = upload(data.train_labels[idx], device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.amp):
            out = dist.train_step(run.method, run.model, x, y, criterion, run.gens["mix"], cfg.pair_across_ranks)
        run.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        if cfg.clip_grad is not None:
            nn.utils.clip_grad_norm_(run.model.parameters(), cfg.clip_grad)
        run.optimizer.step()
        run.scheduler.step()
        b = idx.shape[0]
        totals["loss"] += float(out.loss.detach()) * b
        totals["acc"] += _mixed_accuracy(out.logits, out.target) * b
        totals["n"] += b
        elapsed = time.perf_counter() - start
        bar.update(1, loss=totals["loss"] / totals["n"], acc=100 * totals["acc"] / totals["n"], img_s=totals["n"] * dist.world() / elapsed)
        if "batch_end" in hooks:
            hooks["batch_end"](run.epoch, step)
    seconds = time.perf_counter() - start
    loss_sum, acc_sum, n = dist.sum_floats([totals["loss"], totals["acc"], totals["n"]])
    return {"train_loss": loss_sum / n, "train_acc": 100 * acc_sum / n, "images": int(n),
            "epoch_time_s": seconds, "images_per_s": n / seconds, "lr": run.optimizer.param_groups[0]["lr"]}


def _should_eval(epoch: int, cfg: TrainConfig) -> bool:
    return epoch % cfg.eval_every == 0 or epoch > cfg.epochs - cfg.median_last


def create_method(cfg: TrainConfig, num_classes: int) -> MixMethod:
    """The configured method, wrapped in the configured label policy if there is one."""
    args = dict(cfg.method_args)
    if "num_classes" in method_info(cfg.method).defaults:
        args.setdefault("num_classes", num_classes)
    method = create(cfg.method, **args)
    if cfg.label_policy is None:
        return method
    info = method_info(cfg.label_policy)
    if info.family != "label":
        raise HyperParameterError(f"label_policy must be a label policy (family 'label'), got {cfg.label_policy!r} "
                                  f"(family {info.family!r}); label policies: {', '.join(list_methods(family='label'))}")
    policy_args = dict(cfg.label_policy_args)
    if "num_classes" in info.defaults:
        policy_args.setdefault("num_classes", num_classes)
    return create(cfg.label_policy, method=method, **policy_args)


def _split_holdout(method: MixMethod, data: TrainData, cfg: TrainConfig, device: torch.device) -> TrainData:
    """Keep ``method.holdout_fraction`` of every class out of training and give it to the method."""
    if method.holdout_fraction <= 0:
        return data
    train_idx, held_idx = split_holdout(data.train_labels, method.holdout_fraction, seed=cfg.subset_seed)

    def prepare(images: Tensor) -> Tensor:
        x = normalize(images.to(device), data.mean, data.std)
        return in_format(x, torch.channels_last) if cfg.channels_last and x.ndim == 4 else x

    method.attach_holdout(Holdout(data.train_images[held_idx], data.train_labels[held_idx], prepare))
    return dataclasses.replace(data, train_images=data.train_images[train_idx], train_labels=data.train_labels[train_idx])


def _build_run(cfg: TrainConfig, data: TrainData, method: MixMethod, model: nn.Module | None, device: torch.device) -> _Run:
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    if model is None:
        from mixkit.models import create_model

        model = create_model(cfg.model, num_classes=data.num_classes, in_channels=data.train_images.shape[1])
    model = model.to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model = dist.wrap(model, device)
    optimizer = build_optimizer(cfg, model)
    steps = len(dist.shard_batches(torch.arange(data.train_labels.shape[0]), cfg.batch_size))
    if steps == 0:
        raise ValueError(f"no training batch: {data.train_labels.shape[0]} training images for {dist.world()} processes")
    scheduler = build_scheduler(cfg, optimizer, steps)
    method.set_training_length(steps * cfg.epochs)
    torch.manual_seed(cfg.seed + 1000 * dist.rank())  # dropout and other global draws differ per rank
    return _Run(model, method, optimizer, scheduler, _seed_generators(cfg.seed, dist.rank(), cfg.pair_across_ranks), history=[])


def train(
    cfg: TrainConfig,
    *,
    resume: bool = False,
    data: TrainData | None = None,
    model: nn.Module | None = None,
    hooks: dict[str, Callable] | None = None,
) -> dict[str, Any]:
    """Train ``cfg.method`` on ``cfg.data`` and write the run's files to ``cfg.out``.

    Args:
        cfg: the configuration.
        resume: continue from ``cfg.out/checkpoint.pt`` if it exists.
        data: in-memory data (default: loaded from ``cfg``).
        model: any ``nn.Module`` (default: ``cfg.model`` from :mod:`mixkit.models`).
        hooks: optional callbacks, ``{"batch_end": fn(epoch, step)}``.

    Returns:
        The metrics dictionary also written to ``cfg.out/metrics.json``.
    """
    from mixkit.train.report import write_run_files

    cfg.validate()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = _device(cfg.device)
    data = data or load_train_data(cfg)
    method = create_method(cfg, data.num_classes)
    method.set_input_normalization(data.mean, data.std)
    data = _split_holdout(method, data, cfg, device)
    main = dist.is_main()
    run = _build_run(cfg, data, method, model, device)
    ckpt = _open_run_dir(run, cfg, resume, main)
    log = JsonlLog(Path(cfg.out) / "log.jsonl", enabled=main)
    while run.epoch < cfg.epochs:
        record = _run_epoch(run, data, cfg, device, hooks or {})
        log.write(record)
        state = _checkpoint_state(run, cfg)
        if main:
            save_checkpoint(ckpt, state)
        dist.barrier()
    return write_run_files(run, data, cfg, device, enabled=main)


def _open_run_dir(run: _Run, cfg: TrainConfig, resume: bool, main: bool) -> Path:
    """Restore ``run`` from the checkpoint in ``cfg.out`` (``resume``), or start the folder
    afresh (refusing to overwrite a run); save the config. Returns the checkpoint's path."""
    out = Path(cfg.out)
    ckpt = out / CHECKPOINT
    if ckpt.exists() and not resume:
        raise FileExistsError(f"{out} already holds a run: pass resume=True (--resume) to continue it, or choose another out")
    if resume and ckpt.exists():
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        _check_resumable(state, cfg)
        _restore(run, state)
    elif main:
        out.mkdir(parents=True, exist_ok=True)
        for stale in ("log.jsonl", "metrics.json"):
            (out / stale).unlink(missing_ok=True)
    if main:
        cfg.save(out / "config.json")
    return ckpt


def _run_epoch(run: _Run, data: TrainData, cfg: TrainConfig, device: torch.device, hooks: dict[str, Callable]) -> dict:
    """One epoch: training, the method's epoch end, evaluation when due; the epoch's record,
    appended to ``run.history``."""
    t0 = time.perf_counter()
    record = {"epoch": run.epoch + 1, **_train_epoch(run, data, cfg, device, hooks)}
    run.epoch += 1
    adapted = run.method.epoch_end(run.model)
    if adapted:
        record["method"] = adapted
    if _should_eval(run.epoch, cfg):
        record["test"] = evaluate(run.model, data, cfg, device)
    run.elapsed += time.perf_counter() - t0
    assert run.history is not None
    run.history.append(record)
    return record
