"""CIFAR-10 and CIFAR-100 (Krizhevsky 2009): the official python-format archives
(``cifar-10-python.tar.gz``, ``cifar-100-python.tar.gz``) or their extracted folders, and
CIFAR-10 re-encoded as JPEG (``cifar10-{train,test}-jpeg.tar.gz``, ``<split>/<class>/*.jpg``).

Behind :func:`mixkit.data.load_dataset`; the pickled batches are read with an unpickler that
only rebuilds NumPy arrays (a data file cannot run code).
"""

from __future__ import annotations

import importlib
import io
import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mixkit.data.archives import (
    IMAGE_EXTENSIONS,
    archive_files,
    decode_labelled,
    file_stat,
    verify_checksum,
)
from mixkit.data.fashion_mnist import cache_dir as default_cache_dir
from mixkit.data.sets import (
    CIFAR10_CLASSES,
    ImageData,
    _Built,
    _cached,
    _folder_labeller,
    _load_tree,
)

__all__ = ["load_cifar"]


class _NumpyUnpickler(pickle.Unpickler):
    """Unpickles only containers, strings and NumPy arrays: a data file cannot run code."""

    _ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")} | {
        (f"numpy.{core}.{mod}", name) for core in ("core", "_core")
        for mod, name in (("multiarray", "_reconstruct"), ("multiarray", "scalar"), ("numeric", "_frombuffer"))}

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}: not part of a NumPy array")
        if module.startswith("numpy.core."):  # NumPy >= 2 renamed it numpy._core (and warns on the old name)
            try:
                return getattr(importlib.import_module("numpy._core." + module[11:]), name)
            except ImportError:
                pass
        return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class _Cifar:
    folder: str
    archive: str
    meta: str
    names_key: bytes
    labels_key: bytes
    batches: tuple[tuple[str, ...], tuple[str, ...]]  # train, test


_CIFAR = {
    "cifar10": _Cifar("cifar-10-batches-py", "cifar-10-python.tar.gz", "batches.meta", b"label_names", b"labels",
                      (tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",))),
    "cifar100": _Cifar("cifar-100-python", "cifar-100-python.tar.gz", "meta", b"fine_label_names", b"fine_labels",
                       (("train",), ("test",))),
}


def _read_cifar(read: Callable[[str], bytes], fmt: _Cifar, split: str) -> _Built:
    """Arrays of a python-format CIFAR split; ``read(file_name)`` gives a file's bytes."""
    load = lambda n: _NumpyUnpickler(io.BytesIO(read(n)), encoding="bytes").load()  # noqa: E731
    classes = tuple(c.decode() for c in load(fmt.meta)[fmt.names_key])
    parts = [load(b) for b in fmt.batches[split == "test"]]
    images = np.concatenate([np.asarray(p[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32) for p in parts])
    labels = np.concatenate([np.asarray(p[fmt.labels_key], dtype=np.int64) for p in parts])
    return np.ascontiguousarray(images), labels, classes


def _search_roots(root: str | os.PathLike[str] | None) -> list[Path]:
    if root is not None:
        return [Path(root).expanduser()]
    return [Path(p) for p in os.environ.get("MIXKIT_DATA", "").split(os.pathsep) if p] + [default_cache_dir()]


def load_cifar(name: str, root: str | os.PathLike[str] | None, split: str, cache: Path) -> ImageData:
    """Python-format folder, then python-format archive, then (CIFAR-10) JPEG archive or tree."""
    fmt, jpeg = _CIFAR[name], f"cifar10-{split}-jpeg.tar.gz"
    roots = _search_roots(root)
    for r in roots:
        folder = r if r.name == fmt.folder else r / fmt.folder
        if folder.is_dir():
            images, labels, classes = _read_cifar(lambda n: (folder / n).read_bytes(), fmt, split)
            return ImageData(torch.from_numpy(images), torch.from_numpy(labels), classes, name, split, str(folder))
        if (r / fmt.archive).is_file():
            archive = r / fmt.archive
            return _cached(cache, name, split, file_stat(archive), lambda: _cifar_archive(archive, fmt, split), archive)
        if name == "cifar10" and (r / jpeg).is_file():
            return _cached(cache, name, split, file_stat(r / jpeg), lambda: _jpeg_archive(r / jpeg, split), r / jpeg)
        if name == "cifar10" and (r / split / CIFAR10_CLASSES[0]).is_dir():
            return _load_tree(r / split, CIFAR10_CLASSES, CIFAR10_CLASSES, name=name, split=split, cache=cache)
    wanted = f"{fmt.folder}/ or {fmt.archive}" + (f" or {jpeg}" if name == "cifar10" else "")
    url = "https://www.cs.toronto.edu/~kriz/" + fmt.archive
    raise FileNotFoundError(f"{name} not found: looked for {wanted} in {', '.join(map(str, roots))}; "
                            f"download {url} and pass root= (or set MIXKIT_DATA to) the folder holding it")


def _cifar_archive(archive: Path, fmt: _Cifar, split: str) -> _Built:
    verify_checksum(archive)
    files = {parts[-1]: data for parts, data in archive_files(archive) if parts[:-1] == (fmt.folder,)}

    def read(n: str) -> bytes:
        if n not in files:
            raise FileNotFoundError(f"{archive} has no {fmt.folder}/{n}; is it the official archive?")
        return files[n]

    return _read_cifar(read, fmt, split)


def _jpeg_archive(archive: Path, split: str) -> _Built:
    verify_checksum(archive)
    items = (("/".join(parts[1:]), data) for parts, data in archive_files(archive)
             if parts[0] == split and os.path.splitext(parts[-1])[1].lower() in IMAGE_EXTENSIONS)
    return (*decode_labelled(items, _folder_labeller(CIFAR10_CLASSES, archive), f"cifar10 {split} ({archive})"),
            CIFAR10_CLASSES)
