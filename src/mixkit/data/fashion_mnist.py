"""Fashion-MNIST (Xiao, Rasul, Vollgraf 2017) from its gzipped IDX files.

Looked up, in order: the ``root`` given, the Debian package ``dataset-fashion-mnist``
(``/usr/share/datasets/fashion-mnist``), and mixkit's cache (``$MIXKIT_CACHE`` or
``~/.cache/mixkit``). If none has the files and ``download=True``, they are downloaded from
the official address into the cache; each file's decompressed content is checked against
its SHA-256 before use (downloads are written to a temporary file, then renamed).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import sys
import tempfile
import urllib.request
from pathlib import Path

import numpy as np
import torch

__all__ = ["FASHION_MNIST_CLASSES", "load_fashion_mnist", "find_fashion_mnist", "DEBIAN_DIR"]

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
# SHA-256 of the *decompressed* IDX files (gzip re-packing, as Debian's, changes the .gz bytes).
FILES = {
    "train-images-idx3-ubyte.gz": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte.gz": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte.gz": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte.gz": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}


def cache_dir() -> Path:
    """mixkit's cache directory (``$MIXKIT_CACHE`` or ``~/.cache/mixkit``)."""
    return Path(os.environ.get("MIXKIT_CACHE", Path.home() / ".cache" / "mixkit"))


def _has_all(folder: Path) -> bool:
    return all((folder / name).is_file() for name in FILES)


def find_fashion_mnist(root: str | os.PathLike[str] | None = None) -> Path | None:
    """The first folder holding all four files, or ``None``."""
    candidates = ([Path(root)] if root is not None else []) + [DEBIAN_DIR, cache_dir() / "fashion-mnist"]
    return next((c for c in candidates if _has_all(c)), None)


def _sha256_of_gzip(path: Path) -> str:
    digest = hashlib.sha256()
    with gzip.open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _download(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, sha in FILES.items():
        target = folder / name
        if target.is_file() and _sha256_of_gzip(target) == sha:
            continue
        print(f"mixkit: downloading {URL}{name}", file=sys.stderr)
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(URL + name, timeout=60) as resp:
                shutil.copyfileobj(resp, out)
            got = _sha256_of_gzip(Path(tmp))
            if got != sha:
                raise OSError(f"{name}: SHA-256 of the content is {got}, expected {sha}; download is corrupt")
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    if data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise OSError(f"{path} is not an unsigned-byte IDX file")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_fashion_mnist(
    split: str = "train", root: str | os.PathLike[str] | None = None, *, download: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``(N, 1, 28, 28)`` uint8 and labels ``(N,)`` int64 of a split.

    Args:
        split: ``"train"`` (60,000 images) or ``"test"`` (10,000).
        root: a folder holding the four ``.gz`` files (searched first).
        download: fetch the official files into the cache when no copy is found.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    folder = find_fashion_mnist(root)
    if folder is None:
        if not download:
            raise FileNotFoundError(
                "Fashion-MNIST not found: install the Debian package dataset-fashion-mnist, pass root=, "
                "or allow download=True"
            )
        folder = cache_dir() / "fashion-mnist"
        _download(folder)
    prefix = "train" if split == "train" else "t10k"
    images = _read_idx(folder / f"{prefix}-images-idx3-ubyte.gz")
    labels = _read_idx(folder / f"{prefix}-labels-idx1-ubyte.gz")
    if images.shape[0] != labels.shape[0]:
        raise OSError(f"{folder}: {images.shape[0]} images but {labels.shape[0]} labels")
    return torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))
