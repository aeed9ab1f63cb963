"""Image data sets as in-memory uint8 tensors, with a decoded-array cache.

Formats read (each described where its loader is defined):

- Fashion-MNIST (Xiao, Rasul, Vollgraf 2017), through :func:`load_fashion_mnist`.
- CIFAR-10 and CIFAR-100 (Krizhevsky 2009): the official python-format archives
  (``cifar-10-python.tar.gz``, ``cifar-100-python.tar.gz``) or their extracted folders; and
  CIFAR-10 re-encoded as JPEG (``cifar10-{train,test}-jpeg.tar.gz``, ``<split>/<class>/*.jpg``).
- ImageFolder trees: ``root/<split>/<class>/*.png`` (or ``root/<class>/...``).
- Tiny-ImageNet-200 (Le & Yang 2015): ``train/<wnid>/images/*.JPEG``, ``val/images`` with
  ``val/val_annotations.txt``, ``wnids.txt`` and ``words.txt``.

Archives are read member by member in memory (nothing is written next to the data or
anywhere else), after refusing any member that is a link, a special file, or has an absolute
path or ``..``; :func:`safe_extract` unpacks an archive to disk under the same rules. Decoded
images are cached in ``cache_dir`` (default ``$MIXKIT_CACHE`` or ``~/.cache/mixkit``) as an
``.npz`` file whose name hashes the source paths, sizes, modification times and the split, so
a changed source is decoded again and an unchanged one only once.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mixkit import rng
from mixkit.data.archives import (
    IMAGE_EXTENSIONS,
    UnsafeArchiveError,
    decode_labelled,
    safe_extract,
)
from mixkit.data.fashion_mnist import (
    FASHION_MNIST_CLASSES,
    find_fashion_mnist,
    load_fashion_mnist,
)
from mixkit.data.fashion_mnist import cache_dir as default_cache_dir
from mixkit.errors import (
    DTypeError,
    HyperParameterError,
    LabelError,
    ShapeError,
    suggest,
)

__all__ = [
    "CIFAR10_CLASSES",
    "DATASET_NAMES",
    "IMAGE_EXTENSIONS",
    "ImageData",
    "UnsafeArchiveError",
    "load_dataset",
    "safe_extract",
    "subset_per_class",
]

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_SPLIT_FOLDERS = frozenset({"train", "val", "valid", "validation", "test"})
_CACHE_VERSION = 1


@dataclass(frozen=True, eq=False)
class ImageData:
    """A labelled image data set held in memory.

    Attributes:
        images: ``(N, C, H, W)`` uint8 tensor, contiguous.
        labels: ``(N,)`` int64 tensor of class indices into ``classes``.
        classes: class names, index ``k`` naming label ``k``.
        name: the data set name given to :func:`load_dataset`.
        split: the split read (``"val"`` for Tiny-ImageNet's ``"test"``).
        source: the file or folder the data came from.

    Example:
        >>> data = ImageData(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.tensor([0, 1]), ("cat", "dog"), "toy")
        >>> len(data), data.num_classes
        (2, 2)
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]
    name: str
    split: str = ""
    source: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "classes", tuple(self.classes))
        if self.images.dtype != torch.uint8:
            raise DTypeError(f"images must be uint8, got {self.images.dtype}")
        if self.images.dim() != 4:
            raise ShapeError(f"images must be (N, C, H, W), got shape {tuple(self.images.shape)}")
        if self.labels.dtype != torch.int64 or self.labels.shape != self.images.shape[:1]:
            raise LabelError(f"labels must be int64 of shape ({self.images.shape[0]},), got "
                             f"{self.labels.dtype} {tuple(self.labels.shape)}")
        if self.labels.numel() and (int(self.labels.min()) < 0 or int(self.labels.max()) >= len(self.classes)):
            raise LabelError(f"labels must lie in [0, {len(self.classes)}) for {len(self.classes)} classes")

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def num_classes(self) -> int:
        """Number of classes, ``len(classes)``."""
        return len(self.classes)


def subset_per_class(
    labels: torch.Tensor, n_per_class: int, *, seed: int = 0, num_classes: int | None = None, offset: int = 0
) -> torch.Tensor:
    """Indices of ``n_per_class`` samples of every class, the same on every call.

    Each class's samples are ranked by one random permutation drawn from a
    ``torch.Generator`` seeded by ``seed``, so subsets are nested: the subset of size ``n``
    holds the one of size ``n - 1``. ``offset`` skips the first ``offset`` ranked samples of
    each class: ``offset=n`` gives a subset disjoint from the one of size ``n`` (e.g. to
    pre-train on other images of the same data set).

    Args:
        labels: ``(N,)`` integer class labels.
        n_per_class: samples to keep per class (>= 1).
        seed: seed of the generator that picks the samples.
        num_classes: when given, every class ``0..num_classes-1`` must have enough
            samples; otherwise only the classes present in ``labels`` are used.
        offset: ranked samples of each class skipped before the ``n_per_class`` kept (>= 0).

    Returns:
        ``(K * n_per_class,)`` int64 indices into ``labels``, sorted ascending.

    Example:
        >>> labels = torch.tensor([0, 1, 0, 1, 0, 1, 2, 2])
        >>> labels[subset_per_class(labels, 2)].bincount().tolist()
        [2, 2, 2]
    """
    if labels.dim() != 1 or labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise LabelError(f"labels must be a 1-D integer tensor, got {labels.dtype} {tuple(labels.shape)}")
    if n_per_class < 1:
        raise HyperParameterError(f"n_per_class must be >= 1, got {n_per_class}")
    if offset < 0:
        raise HyperParameterError(f"offset must be >= 0, got {offset}")
    labels = labels.cpu()
    classes = range(num_classes) if num_classes is not None else torch.unique(labels).tolist()
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for c in classes:
        index = torch.nonzero(labels == c).flatten()
        if index.numel() < offset + n_per_class:
            raise HyperParameterError(f"class {c} has {index.numel()} samples, fewer than offset + n_per_class = "
                                      f"{offset} + {n_per_class}")
        chosen.append(index[rng.randperm(index.numel(), generator=generator)[offset:offset + n_per_class]])
    return torch.sort(torch.cat(chosen)).values if chosen else torch.zeros(0, dtype=torch.long)


# ---------------------------------------------------------------- archives, decoding, cache

_Built = tuple[np.ndarray, np.ndarray, tuple[str, ...]]


def _cached(cache: Path, name: str, split: str, key: list, build: Callable[[], _Built], source: Path) -> ImageData:
    """Load the arrays cached under ``key``, or build them and cache them atomically."""
    digest = hashlib.sha256(json.dumps([_CACHE_VERSION, name, split, key]).encode()).hexdigest()[:24]
    path = cache / f"{name}-{split}-{digest}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                images, labels, classes = z["images"], z["labels"], tuple(str(c) for c in z["classes"])
            return ImageData(torch.from_numpy(images), torch.from_numpy(labels), classes, name, split, str(source))
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
            print(f"mixkit: ignoring unreadable cache {path} ({err}); decoding again", file=sys.stderr)
    images, labels, classes = build()
    try:
        cache.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache, prefix=path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, images=images, labels=labels, classes=np.array(classes, dtype=str))
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError as err:
        print(f"mixkit: could not cache the decoded arrays in {cache} ({err}); pass cache_dir=", file=sys.stderr)
    return ImageData(torch.from_numpy(images), torch.from_numpy(labels), classes, name, split, str(source))


def _image_files(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursively, hidden entries skipped, links not followed), sorted."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found += [Path(dirpath, f) for f in filenames
                  if not f.startswith(".") and os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS]
    return sorted(found)


def _load_files(files: list[Path], base: Path, label_of: Callable[[str], int], classes: tuple[str, ...], *,
                name: str, split: str, cache: Path) -> ImageData:
    """Decode (or load from cache) image files; ``label_of`` maps a path relative to ``base``."""
    if not files:
        raise FileNotFoundError(f"no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) under {base}")
    rel = [p.relative_to(base).as_posix() for p in files]
    stats = [p.stat() for p in files]
    key = [str(base.resolve()), list(classes)] + [[r, st.st_size, st.st_mtime_ns] for r, st in zip(rel, stats)]

    def build() -> _Built:
        items = ((r, p.read_bytes()) for r, p in zip(rel, files))
        return (*decode_labelled(items, label_of, f"{name} {split} ({base})"), classes)

    return _cached(cache, name, split, key, build, base)


def _folder_labeller(classes: tuple[str, ...], where: Path | str) -> Callable[[str], int]:
    index = {c: k for k, c in enumerate(classes)}

    def label_of(rel: str) -> int:
        top = rel.split("/", 1)[0]
        if top not in index:
            raise FileNotFoundError(f"{where}: {rel} is not inside one of the class folders {list(classes)}")
        return index[top]

    return label_of


def _load_tree(folder: Path, folders: tuple[str, ...], classes: tuple[str, ...], *, name: str, split: str,
               cache: Path) -> ImageData:
    """Images of ``folder/<folders[k]>/**`` labelled ``k``."""
    files = [f for c in folders for f in _image_files(folder / c)]
    return _load_files(files, folder, _folder_labeller(folders, folder), classes, name=name, split=split, cache=cache)


# ---------------------------------------------------------------- the data sets


def _require_root(name: str, root: str | os.PathLike[str] | None) -> Path:
    if root is None:
        raise FileNotFoundError(f"{name} needs root= (the folder holding the data set)")
    base = Path(root).expanduser()
    if not base.is_dir():
        raise FileNotFoundError(f"{name}: root {base} is not a folder")
    return base


def _load_imagefolder(root: str | os.PathLike[str] | None, split: str, cache: Path) -> ImageData:
    """``root/<split>/<class>/`` if that split folder exists, else ``root/<class>/`` (split ignored)."""
    base = _require_root("imagefolder", root)
    folder = base / split
    if not folder.is_dir():
        splits = sorted(d.name for d in base.iterdir() if d.is_dir() and d.name.lower() in _SPLIT_FOLDERS)
        if splits:
            raise FileNotFoundError(f"imagefolder: no {split!r} folder in {base}; it has {splits}")
        folder = base
    classes = tuple(sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")))
    if not classes:
        raise FileNotFoundError(f"imagefolder: no class folders in {folder} (expected {folder}/<class>/*.png)")
    return _load_tree(folder, classes, classes, name="imagefolder", split=split, cache=cache)


def _load_tiny_imagenet(root: str | os.PathLike[str] | None, split: str, cache: Path) -> ImageData:
    """Classes in sorted wnid order, named by the first synonym in ``words.txt``."""
    base = _require_root("tiny_imagenet", root)
    base = base / "tiny-imagenet-200" if not (base / "wnids.txt").is_file() else base
    if not (base / "wnids.txt").is_file():
        raise FileNotFoundError(f"tiny_imagenet: no wnids.txt in {base}; download "
                                "http://cs231n.stanford.edu/tiny-imagenet-200.zip, unzip it and pass root=")
    wnids = tuple(sorted({w.strip() for w in (base / "wnids.txt").read_text().split() if w.strip()}))
    words_file = base / "words.txt"
    words = dict(line.split("\t", 1) for line in words_file.read_text().splitlines() if "\t" in line) \
        if words_file.is_file() else {}
    names = [words.get(w, w).split(",")[0].strip() for w in wnids]
    classes = tuple(n if names.count(n) == 1 else f"{n} ({w})" for n, w in zip(names, wnids))
    if split == "train":
        return _load_tree(base / "train", wnids, classes, name="tiny_imagenet", split="train", cache=cache)
    rows = [line.split("\t") for line in (base / "val" / "val_annotations.txt").read_text().splitlines() if line]
    index = {w: k for k, w in enumerate(wnids)}
    unknown = sorted({r[1] for r in rows} - index.keys())
    if unknown:
        raise LabelError(f"tiny_imagenet: val_annotations.txt names wnids not in wnids.txt: {unknown[:5]}")
    label = {r[0]: index[r[1]] for r in rows}
    files = [base / "val" / "images" / f for f in label]
    return _load_files(files, base / "val" / "images", label.__getitem__, classes,
                       name="tiny_imagenet", split="val", cache=cache)


def _load_fashion(root: str | os.PathLike[str] | None, split: str, cache: Path) -> ImageData:
    images, labels = load_fashion_mnist(split, root)
    source = find_fashion_mnist(root) or default_cache_dir() / "fashion-mnist"
    return ImageData(images, labels, FASHION_MNIST_CLASSES, "fashion_mnist", split, str(source))


def _load_cifar(name: str, root: str | os.PathLike[str] | None, split: str, cache: Path) -> ImageData:
    from mixkit.data.cifar import load_cifar  # imported here: it builds on this module

    return load_cifar(name, root, split, cache)


_LOADERS: dict[str, tuple[Callable[..., ImageData], tuple[str, ...] | None]] = {
    "fashion_mnist": (_load_fashion, ("train", "test")),
    "cifar10": (lambda root, split, cache: _load_cifar("cifar10", root, split, cache), ("train", "test")),
    "cifar100": (lambda root, split, cache: _load_cifar("cifar100", root, split, cache), ("train", "test")),
    "imagefolder": (_load_imagefolder, None),
    "tiny_imagenet": (_load_tiny_imagenet, ("train", "val", "test")),
}
DATASET_NAMES = tuple(_LOADERS)


def load_dataset(
    name: str, *, root: str | os.PathLike[str] | None = None, split: str = "train",
    cache_dir: str | os.PathLike[str] | None = None,
) -> ImageData:
    """Load a whole split into memory as uint8 images and int64 labels.

    Args:
        name: one of :data:`DATASET_NAMES`.
        root: the folder holding the data. Optional for ``fashion_mnist`` (Debian package,
            cache, download) and CIFAR (``$MIXKIT_DATA`` folders, then the cache dir);
            required for ``imagefolder`` and ``tiny_imagenet``. CIFAR prefers, in each folder,
            the python-format folder, then its archive, then (CIFAR-10) the JPEG archive
            ``cifar10-<split>-jpeg.tar.gz`` or its unpacked ``<split>/<class>/`` tree.
        split: ``"train"`` or ``"test"``; Tiny-ImageNet also ``"val"`` (``"test"`` reads
            val, its test labels being unpublished); ImageFolder any sub-folder name.
        cache_dir: where decoded arrays are cached (default ``$MIXKIT_CACHE`` or
            ``~/.cache/mixkit``). Used for decoded images and archives, not for the
            python-format CIFAR folders or Fashion-MNIST, which read fast enough.

    Returns:
        :class:`ImageData`; images ``(N, C, H, W)`` ordered by label, then file name.

    Raises:
        ValueError: unknown ``name`` or ``split``.
        FileNotFoundError: no data where the loader looked (the message lists where).
        UnsafeArchiveError: an archive holds links or paths leaving its folder.
        ImportError: Pillow is needed to decode JPEG/PNG files and is missing.
    """
    if name not in _LOADERS:
        raise ValueError(f"unknown data set {name!r}; valid names: {', '.join(DATASET_NAMES)}."
                         + suggest(name, DATASET_NAMES))
    loader, splits = _LOADERS[name]
    bad = split not in splits if splits else (not split or split in (".", "..") or "/" in split or "\\" in split)
    if bad:
        raise ValueError(f"{name}: split must be one of {list(splits)}, got {split!r}" if splits
                         else f"{name}: split must be a folder name, got {split!r}")
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return loader(root, split, cache)
