"""Reading image archives safely, decoding images, and the helpers the loaders share.

Archives are read member by member in memory after refusing any member that is a link, a
special file, or has an absolute path or ``..``; :func:`safe_extract` unpacks an archive to
disk under the same rules (tarfile's ``data`` filter where Python has it).
"""

from __future__ import annotations

import hashlib
import io
import os
import sys
import tarfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path, PurePosixPath, PureWindowsPath
from types import ModuleType

import numpy as np

from mixkit.errors import MixkitError, ShapeError

__all__ = [
    "IMAGE_EXTENSIONS",
    "UnsafeArchiveError",
    "archive_files",
    "decode_labelled",
    "file_stat",
    "safe_extract",
    "verify_checksum",
]

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff", ".webp"})
_GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "F"})
_PROGRESS_EVERY = 5000
_HAS_DATA_FILTER = hasattr(tarfile, "data_filter")


class UnsafeArchiveError(MixkitError, ValueError):
    """An archive holds a link, a special file, or a path that would leave the destination."""



def _check_member(archive: Path, member: tarfile.TarInfo) -> None:
    name = member.name
    if name.startswith(("/", "\\")) or PureWindowsPath(name).drive or ".." in name.replace("\\", "/").split("/"):
        raise UnsafeArchiveError(f"{archive}: member {name!r} has an absolute path or '..'; refusing the archive")
    if not (member.isfile() or member.isdir()):
        raise UnsafeArchiveError(f"{archive}: member {name!r} is a link or special file; refusing the archive")


def safe_extract(archive: str | os.PathLike[str], dest: str | os.PathLike[str]) -> Path:
    """Unpack a tar archive (any compression) into ``dest``, refusing unsafe archives.

    Every member is checked before anything is written: links, devices and paths that are
    absolute or contain ``..`` raise :class:`UnsafeArchiveError`. The extraction itself uses
    tarfile's ``filter="data"`` where the Python has it, else writes regular files itself.

    Returns:
        ``dest`` as a :class:`~pathlib.Path`.
    """
    archive, dest = Path(archive), Path(dest)
    with tarfile.open(archive, "r:*") as tar:
        members = tar.getmembers()
        for member in members:
            _check_member(archive, member)
        dest.mkdir(parents=True, exist_ok=True)
        if _HAS_DATA_FILTER:
            tar.extractall(dest, members=members, filter="data")
            return dest
        top = dest.resolve()
        for member in members:
            target = dest.joinpath(*PurePosixPath(member.name).parts)
            if top not in (target.resolve(), *target.resolve().parents):
                raise UnsafeArchiveError(f"{archive}: member {member.name!r} would leave {dest}")
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with tar.extractfile(member) as src, open(target, "wb") as out:  # type: ignore[union-attr]
                out.write(src.read())
    return dest


def archive_files(archive: Path) -> Iterator[tuple[tuple[str, ...], bytes]]:
    """Path parts and content of each regular file, read in memory; unsafe members raise."""
    with tarfile.open(archive, "r:*") as tar:
        for member in tar:
            _check_member(archive, member)
            if member.isfile():
                with tar.extractfile(member) as f:  # type: ignore[union-attr]
                    yield PurePosixPath(member.name).parts, f.read()


def verify_checksum(archive: Path) -> None:
    """Compare ``archive`` with its line in a ``SHA256SUMS`` file beside it, if there is one."""
    sums = archive.parent / "SHA256SUMS"
    if not sums.is_file():
        return
    expected = None
    for line in sums.read_text().splitlines():
        digest, _, file_name = line.strip().partition(" ")
        if file_name.strip().lstrip("*") == archive.name:
            expected = digest.lower()
    if expected is None:
        return
    digest = hashlib.sha256()
    with open(archive, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    if digest.hexdigest() != expected:
        raise OSError(f"{archive}: SHA-256 is {digest.hexdigest()} but {sums} lists {expected}; "
                      "the file is corrupt or was replaced, fetch it again")


def _pil_image() -> ModuleType:
    """The ``PIL.Image`` module, imported on first use."""
    try:
        from PIL import Image
    except ImportError as err:
        raise ImportError("decoding JPEG/PNG images needs Pillow: pip install pillow "
                          "(or pip install 'mixkit[data]')") from err
    return Image


def _decode_image(data: bytes) -> np.ndarray:
    """Decode one encoded image to ``(H, W)`` uint8 (greyscale) or ``(H, W, 3)`` (colour)."""
    with _pil_image().open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("L" if img.mode in _GREY_MODES else "RGB"))


def _stack(names: list[str], arrays: list[np.ndarray]) -> np.ndarray:
    """``(N, C, H, W)`` from decoded arrays; greyscale ones gain 3 channels among colour ones."""
    sizes = [a.shape[:2] for a in arrays]
    odd = next((i for i, s in enumerate(sizes) if s != sizes[0]), None)
    if odd is not None:
        raise ShapeError(f"images differ in size: {names[0]} is {sizes[0][1]}x{sizes[0][0]}, {names[odd]} is "
                         f"{sizes[odd][1]}x{sizes[odd][0]} (width x height); resize them to one size first")
    if all(a.ndim == 2 for a in arrays):
        return np.stack(arrays)[:, None]
    arrays = [np.repeat(a[:, :, None], 3, axis=2) if a.ndim == 2 else a for a in arrays]
    return np.ascontiguousarray(np.stack(arrays).transpose(0, 3, 1, 2))


def decode_labelled(
    items: Iterable[tuple[str, bytes]], label_of: Callable[[str], int], desc: str
) -> tuple[np.ndarray, np.ndarray]:
    """Decode ``(name, bytes)`` items; return images and labels ordered by (label, name)."""
    names, labels, arrays = [], [], []
    for name, data in items:
        labels.append(label_of(name))
        try:
            arrays.append(_decode_image(data))
        except OSError as err:
            raise OSError(f"{desc}: cannot decode {name}: {err}") from err
        names.append(name)
        if len(names) % _PROGRESS_EVERY == 0:
            print(f"mixkit: decoding {desc}: {len(names)} images", file=sys.stderr, flush=True)
    if not names:
        raise FileNotFoundError(f"{desc}: no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) found")
    print(f"mixkit: decoded {desc}: {len(names)} images", file=sys.stderr, flush=True)
    order = sorted(range(len(names)), key=lambda i: (labels[i], names[i]))
    images = _stack([names[i] for i in order], [arrays[i] for i in order])
    return images, np.asarray(labels, dtype=np.int64)[order]


def file_stat(path: Path) -> list:
    st = path.stat()
    return [str(path.resolve()), st.st_size, st.st_mtime_ns]
