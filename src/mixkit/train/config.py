"""Training configuration: one dataclass, presets for the field's recipes, JSON round-trip."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mixkit.errors import HyperParameterError, suggest

__all__ = ["TrainConfig", "PRESETS", "resolve_config"]


@dataclass
class TrainConfig:
    """Everything a run depends on. ``metrics.json`` and ``config.json`` record it in full.

    Attributes:
        data: data set name (``fashion_mnist``, ``cifar10``, ``cifar100``, ``imagefolder``,
            ``tiny_imagenet``).
        data_root: where the data set lives (None: the loader's default places).
        model: model name (see ``mixkit.models.list_models()``).
        method: registered method name (``erm`` for no mixing).
        method_args: hyper-parameters of the method (``alpha``, ``p``, ``mode``...).
        label_policy: a registered label policy (family ``label``) to train ``method`` with
            (None: the plain loss).
        label_policy_args: hyper-parameters of the label policy.
        epochs: number of epochs.
        batch_size: training batch size.
        subset: training images per class (None: all), the same subset for every run of a seed-free choice.
        subset_seed: seed of the subset choice (fixed so that every run sees the same images).
        subset_offset: skip the first ``subset_offset`` images per class of that choice: a subset
            disjoint from the default one of that size (e.g. to pre-train a Mixer on other images).
        optimizer: ``sgd`` or ``adamw``.
        lr: peak learning rate.
        momentum: SGD momentum.
        nesterov: Nesterov momentum for SGD.
        weight_decay: weight decay.
        schedule: ``cosine`` or ``onecycle``. One-cycle is PyTorch's ``OneCycleLR`` with its
            defaults: 30% warm-up from lr/25, cosine annealing, and momentum cycled between
            0.95 and 0.85 (``momentum`` is then not used).
        warmup_epochs: linear warm-up length (cosine schedule only).
        loss: ``ce`` (mixup cross-entropy) or ``bce`` (mixup binary cross-entropy).
        label_smoothing: smoothing of each source label.
        amp: bfloat16 autocast (on CPU and GPU).
        channels_last: use the channels_last memory format.
        clip_grad: max gradient norm (None: no clipping).
        augment: random crop (padding 4) and horizontal flip.
        seed: seed of model init, data order, augmentation and mixing.
        eval_every: evaluate on the test set every N epochs (the last ``median_last`` always).
        median_last: the final metric also reports the median top-1 of the last N evaluations.
        corruptions: evaluate accuracy under common corruptions at the end.
        corruption_severities: severities used for that.
        corruption_subset: test images per class scored under corruptions (a fixed, balanced
            subset; None: the whole test set), to keep the corruption pass to seconds.
        eval_batch_size: batch size of evaluation.
        device: ``cpu``, ``cuda`` or ``auto``.
        threads: torch CPU threads (None: torch's default).
        cache_dir: where decoded data sets are cached.
        out: output directory.
        save_mixer: for learnable methods, a file to save the trained mixer to.
        pair_across_ranks: in distributed runs, pair samples across processes.
    """

    data: str = "fashion_mnist"
    data_root: str | None = None
    model: str = "resnet20"
    method: str = "erm"
    method_args: dict[str, Any] = field(default_factory=dict)
    label_policy: str | None = None
    label_policy_args: dict[str, Any] = field(default_factory=dict)
    epochs: int = 10
    batch_size: int = 128
    subset: int | None = None
    subset_seed: int = 0
    subset_offset: int = 0
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: str = "onecycle"
    warmup_epochs: float = 0.0
    loss: str = "ce"
    label_smoothing: float = 0.0
    amp: bool = False
    channels_last: bool = True
    clip_grad: float | None = None
    augment: bool = True
    seed: int = 0
    eval_every: int = 1
    median_last: int = 10
    corruptions: bool = True
    corruption_severities: tuple[int, ...] = (1, 3, 5)
    corruption_subset: int | None = 100
    eval_batch_size: int = 128
    device: str = "auto"
    threads: int | None = None
    cache_dir: str | None = None
    out: str = "runs/run"
    save_mixer: str | None = None
    pair_across_ranks: bool = False

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["corruption_severities"] = list(self.corruption_severities)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        for key in data:
            if key not in names:
                raise HyperParameterError(f"unknown config key {key!r}.{suggest(key, names)}")
        cfg = cls(**data)
        cfg.corruption_severities = tuple(cfg.corruption_severities)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Raise on values that cannot work."""
        checks = [
            (self.epochs >= 1, "epochs must be >= 1"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.subset is None or self.subset >= 1, "subset must be >= 1 images per class"),
            (self.subset_offset >= 0, "subset_offset must be >= 0"),
            (self.optimizer in ("sgd", "adamw"), "optimizer must be 'sgd' or 'adamw'"),
            (self.schedule in ("cosine", "onecycle"), "schedule must be 'cosine' or 'onecycle'"),
            (self.loss in ("ce", "bce"), "loss must be 'ce' or 'bce'"),
            (self.lr > 0, "lr must be > 0"),
            (0 <= self.label_smoothing < 1, "label_smoothing must be in [0, 1)"),
            (self.eval_every >= 1 and self.median_last >= 1, "eval_every and median_last must be >= 1"),
            (self.eval_batch_size >= 1, "eval_batch_size must be >= 1"),
            (self.corruption_subset is None or self.corruption_subset >= 1, "corruption_subset must be >= 1"),
            (self.threads is None or self.threads >= 1, "threads must be >= 1"),
            (self.warmup_epochs >= 0, "warmup_epochs must be >= 0"),
            (all(1 <= s <= 5 for s in self.corruption_severities), "corruption severities must be in 1..5"),
            (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"), "device must be auto, cpu or cuda"),
        ]
        for ok, message in checks:
            if not ok:
                raise HyperParameterError(f"{message}")

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")


#: Recipes. ``quick`` runs in minutes on 2 CPU cores; ``cifar10-2k`` is the benchmark regime
#: where mixing shows its effect on this kind of machine; the ``openmixup-*`` presets follow
#: OpenMixup's CIFAR-100 settings (batch 100, SGD lr 0.1, wd 1e-4, cosine).
PRESETS: dict[str, dict[str, Any]] = {
    "quick": dict(
        data="fashion_mnist", model="resnet20", epochs=3, subset=300, batch_size=128, lr=0.1,
        schedule="onecycle", weight_decay=5e-4, eval_every=3, median_last=2, corruption_severities=(3,),
        corruption_subset=50,
    ),
    "cifar10-2k": dict(
        data="cifar10", model="resnet20", epochs=100, subset=200, subset_seed=0, batch_size=128, lr=0.1,
        momentum=0.9, nesterov=True, weight_decay=5e-4, schedule="onecycle", eval_every=10, median_last=10,
    ),
    "openmixup-cifar100-r18": dict(
        data="cifar100", model="preact_resnet18", epochs=800, batch_size=100, lr=0.1, momentum=0.9,
        nesterov=False, weight_decay=1e-4, schedule="cosine", eval_every=1, median_last=10,
    ),
}


def resolve_config(preset: str | None = None, **overrides: Any) -> TrainConfig:
    """A config from a preset (if any) with explicit overrides applied (None means unset)."""
    base: dict[str, Any] = {}
    if preset is not None:
        if preset not in PRESETS:
            raise HyperParameterError(f"unknown preset {preset!r}.{suggest(preset, PRESETS)} Presets: {', '.join(PRESETS)}")
        base.update(PRESETS[preset])
    base.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig.from_dict(base)
