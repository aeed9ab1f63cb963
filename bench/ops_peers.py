"""Adapters that build the peer libraries' operations for ``bench/ops.py``.

Each adapter turns one peer operation into ``call(x) -> Tensor`` (the mixed batch; the
labels are mixed too, inside the call, where the peer does it), built for one batch of labels
and one class count. The peers are installed only in the benchmark environment
(``scripts/bench-env.sh``); a peer that cannot be loaded is reported by :func:`load_peers`
with the reason, and its cells are skipped.

Peers and what their call does (the ``NOTES`` below are printed in ``docs/benchmarks/ops.md``):

* ``timm`` -- ``timm.data.mixup.Mixup`` loaded from the installed file ``timm/data/mixup.py``
  as a standalone module (importing the ``timm`` package needs torchvision; that file imports
  only numpy and torch). Modes ``batch``, ``elem`` and ``pair`` (``timm_pair``). timm mixes
  IN PLACE on ``x`` (``elem``/``pair`` loop over the batch in Python, writing into ``x``), so
  every timed call mixes a fresh ``x.clone()``; the clone is timed on its own as the ``clone``
  column. Labels: dense ``(B, K)`` soft targets, ``label_smoothing=0``. Needs an even batch.
* ``kornia`` -- ``RandomMixUpV2``, ``RandomCutMixV2`` (``use_correct_lambda=True``) and
  ``RandomMosaic``, ``p=1.0`` (kornia applies ``p`` twice, issue #4649). Per-sample by default;
  ``same_on_batch=True`` is its batch mode (not available for Mosaic). Out of place. Labels:
  ``(B, 3)`` rows ``[y, y_partner, lambda]`` (``(1, B, 3)`` for CutMix); Mosaic mixes no labels.
* ``mixup`` -- the PyPI package ``mixup`` (Andrei-Lock/mixup): ``VanillaMixUp``, ``CutMix``,
  ``ResizeMix``, ``FMix``, ``SaliencyMix`` and ``PuzzleMix`` (``mode="heuristic"`` saliency),
  ``probability=1``. One lambda per batch (SaliencyMix and PuzzleMix loop over the batch in
  Python). Out of place. Labels: dense, mixed from the one-hot ``(B, K)`` float labels it is given.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

#: peer column names, in table order (``timm_pair`` is timm's ``mode="pair"``).
PEER_LIBS = ("timm", "timm_pair", "kornia", "mixup")

#: what each peer's timed call does, for the Markdown page.
NOTES = {
    "timm": "timm `Mixup` (`mode='batch'|'elem'`), `label_smoothing=0`, dense soft targets; works IN PLACE, "
    "so each call mixes a fresh `x.clone()` (timed inside the call; the clone alone is the `clone` column)",
    "timm_pair": "timm `Mixup(mode='pair')` (per pair of samples, Python loop over B/2), same clone protocol as timm",
    "kornia": "kornia `RandomMixUpV2` / `RandomCutMixV2(use_correct_lambda=True)` / `RandomMosaic`, `p=1.0`; "
    "`same_on_batch=True` in batch mode; out of place; labels as `(B, 3)` `[y, y2, lambda]` rows (Mosaic: none)",
    "mixup": "PyPI `mixup` 0.2 (`VanillaMixUp`, `CutMix`, `ResizeMix`, `FMix`, `SaliencyMix`, `PuzzleMix` with "
    "heuristic saliency), one lambda per batch; out of place; dense labels mixed from one-hot input",
}


@dataclass
class Peers:
    """The loaded peer modules (None where not importable) and why not."""

    timm_mixup: Any = None
    kornia_aug: Any = None
    mixup_pkg: Any = None
    versions: dict[str, str | None] | None = None
    reasons: dict[str, str] | None = None


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _load_timm_mixup() -> Any:
    """``timm/data/mixup.py`` as a module of its own, without importing ``timm``."""
    spec = importlib.util.find_spec("timm")  # locates the package without executing it
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("timm is not installed (pip install --no-deps timm)")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "mixup.py"
    module_spec = importlib.util.spec_from_file_location("_bench_timm_mixup", path)
    if module_spec is None or module_spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def load_peers(libs: tuple[str, ...] | list[str]) -> Peers:
    """Import the requested peers; each failure is recorded with its reason."""
    peers = Peers(versions={}, reasons={})
    loaders = {
        "timm": ("timm_mixup", _load_timm_mixup),
        "kornia": ("kornia_aug", lambda: importlib.import_module("kornia.augmentation")),
        "mixup": ("mixup_pkg", lambda: importlib.import_module("mixup")),
    }
    for lib, (attr, load) in loaders.items():
        peers.versions[lib] = _version(lib)
        if lib not in libs:
            continue
        try:
            module = load()
            if lib == "mixup" and not hasattr(module, "VanillaMixUp"):
                where = getattr(module, "__file__", "?")
                raise ImportError(f"the module 'mixup' at {where} is not the PyPI mixup package")
            setattr(peers, attr, module)
        except Exception as exc:  # noqa: BLE001 - any import failure means "skip this peer"
            peers.reasons[lib] = f"{type(exc).__name__}: {exc}"
    return peers


def seed_peers(seed: int = 0) -> None:
    """The peers draw from numpy's, Python's and torch's global generators."""
    np.random.seed(seed)
    random.seed(seed)
    torch.manual_seed(seed)


#: peer operations whose backward cannot be timed above a side length: mixup's PuzzleMix writes
#: every swapped block into a clone with its own in-place slice assignment, one autograd
#: CopySlices node per block and sample, each of whose backward copies the whole gradient (about
#: 128 x 1568 copies of a 77 MB gradient at 224x224: hours for one call).
BACKWARD_MAX_SIZE = {("mixup", "puzzlemix"): 64}


def backward_too_slow(lib: str, op: str, size: int) -> str | None:
    """Why ``lib``'s ``op`` is not timed with backward at this size (None: it is)."""
    limit = BACKWARD_MAX_SIZE.get((lib, op))
    if limit is None or size <= limit:
        return None
    return f"not timed: backward of one call takes hours above {limit}x{limit} (one CopySlices node per block)"


# ---------------------------------------------------------------------------------- builders
Call = Callable[[Tensor], Tensor]


def _timm(peers: Peers, op: str, timm_mode: str, y: Tensor, num_classes: int, inplace: bool = False) -> Call | None:
    if op not in ("mixup", "cutmix"):
        return None
    alphas = {"mixup_alpha": 1.0, "cutmix_alpha": 0.0} if op == "mixup" else {"mixup_alpha": 0.0, "cutmix_alpha": 1.0}
    mix = peers.timm_mixup.Mixup(**alphas, prob=1.0, mode=timm_mode, label_smoothing=0.0, num_classes=num_classes)
    own: list[Tensor] = []

    def call(x: Tensor) -> Tensor:
        if not inplace:
            out, _target = mix(x.clone(), y)  # timm writes into its input: mix a fresh copy
            return out
        if not own:  # in place: a tensor of its own, mixed again at every call
            own.append(x.detach().clone())
        out, _target = mix(own[0], y)
        return out

    return call


def timm_inplace(peers: Peers, op: str, mode: str, y: Tensor, num_classes: int) -> Call | None:
    """timm's own in-place call, on a tensor kept (and overwritten) across calls."""
    if peers.timm_mixup is None:
        return None
    return _timm(peers, op, mode, y, num_classes, inplace=True)


def _kornia(peers: Peers, op: str, mode: str, y: Tensor) -> Call | None:
    aug = peers.kornia_aug
    same = mode == "batch"
    if op == "mixup":
        module = aug.RandomMixUpV2(p=1.0, same_on_batch=same, data_keys=["input", "class"])
    elif op == "cutmix":
        module = aug.RandomCutMixV2(p=1.0, same_on_batch=same, use_correct_lambda=True, data_keys=["input", "class"])
    elif op == "mosaic" and mode == "elem":  # RandomMosaic fixes same_on_batch=False
        mosaic = aug.RandomMosaic(p=1.0)
        return lambda x: mosaic(x)
    else:
        return None
    return lambda x: module(x, y)[0]


def _mixup_pkg(peers: Peers, op: str, mode: str, y_dense: Tensor) -> Call | None:
    if mode != "batch":
        return None
    pkg = peers.mixup_pkg
    classes = {
        "mixup": lambda: pkg.VanillaMixUp(alpha=1.0, probability=1.0),
        "cutmix": lambda: pkg.CutMix(alpha=1.0, probability=1.0),
        "resizemix": lambda: pkg.ResizeMix(alpha=1.0, probability=1.0),
        "fmix": lambda: pkg.FMix(alpha=1.0, probability=1.0, decay_power=3.0),
        "saliencymix": lambda: pkg.SaliencyMix(alpha=1.0, probability=1.0, mode="heuristic"),
        "puzzlemix": lambda: pkg.PuzzleMix(alpha=1.0, probability=1.0, mode="heuristic"),
    }
    if op not in classes:
        return None
    method = classes[op]()
    return lambda x: method(x, y_dense)[0]


def build_peer(peers: Peers, lib: str, op: str, mode: str, y: Tensor, num_classes: int) -> Call | None:
    """The call of peer ``lib`` for operation ``op`` in ``mode`` ("batch" | "elem"), or None
    when the peer does not offer it (or is not loaded).

    Args:
        peers: the loaded peers.
        lib: one of :data:`PEER_LIBS`.
        op: the operation (mixkit's name: "mixup", "cutmix", "resizemix", "fmix", ...).
        mode: "batch" (one lambda for the batch) or "elem" (per sample).
        y: ``(B,)`` integer labels on the device of the input.
        num_classes: the class count for dense targets.
    """
    if lib in ("timm", "timm_pair"):
        if peers.timm_mixup is None or (lib == "timm_pair" and mode != "elem"):
            return None
        timm_mode = "pair" if lib == "timm_pair" else mode
        return _timm(peers, op, timm_mode, y, num_classes)
    if lib == "kornia":
        return None if peers.kornia_aug is None else _kornia(peers, op, mode, y)
    if lib == "mixup":
        if peers.mixup_pkg is None:
            return None
        dense = torch.nn.functional.one_hot(y, num_classes).float()
        return _mixup_pkg(peers, op, mode, dense)
    raise ValueError(f"unknown peer {lib!r}; expected one of {PEER_LIBS}")
