"""The data layer: loaders on tiny synthetic files, the decoded-array cache, archive safety,
per-class subsets, and the batched crop/flip and normalisation."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from mixkit.data import (
    CIFAR10_CLASSES,
    DATASET_STATS,
    CropFlipParams,
    ImageData,
    UnsafeArchiveError,
    compute_stats,
    crop_flip,
    dataset_stats,
    load_dataset,
    normalize,
    random_crop_flip,
    safe_extract,
    sample_crop_flip,
    subset_per_class,
)
from mixkit.data import archives, cifar
from mixkit.errors import HyperParameterError, LabelError, ShapeError

Image = pytest.importorskip("PIL.Image")
REAL_CIFAR = Path("/work/shared/data/cifar10-jpeg")


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def encode(array: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt)
    return buf.getvalue()


def pixels(seed: int, shape=(6, 5, 3)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def write_tar(path: Path, files: dict[str, bytes], extra: list[tarfile.TarInfo] = ()) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info in extra:
            tar.addfile(info, io.BytesIO(b"x" * info.size) if info.isfile() else None)
    return path


# ---------------------------------------------------------------- CIFAR, python format


def cifar_batch(labels: list[int], key: bytes = b"labels", seed: int = 0, protocol: int = 4) -> bytes:
    data = np.random.default_rng(seed).integers(0, 256, size=(len(labels), 3072), dtype=np.uint8)
    batch = {b"batch_label": b"x", key: labels, b"data": data, b"filenames": [b"a.png"] * len(labels)}
    return pickle.dumps(batch, protocol=protocol)


def cifar10_files() -> dict[str, bytes]:
    files = {f"data_batch_{i}": cifar_batch([i % 10, (i + 3) % 10], seed=i) for i in range(1, 6)}
    files["test_batch"] = cifar_batch([9, 0, 1], seed=9)
    files["batches.meta"] = pickle.dumps({b"label_names": [c.encode() for c in CIFAR10_CLASSES]})
    return files


def test_cifar10_python_folder(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name, data in cifar10_files().items():
        (folder / name).write_bytes(data)
    train = load_dataset("cifar10", root=tmp_path, split="train", cache_dir=tmp_path / "cache")
    assert train.images.shape == (10, 3, 32, 32) and train.images.dtype == torch.uint8
    assert train.labels.tolist() == [1, 4, 2, 5, 3, 6, 4, 7, 5, 8] and train.classes == CIFAR10_CLASSES
    first = pickle.loads(cifar10_files()["data_batch_1"])[b"data"][0]
    assert torch.equal(train.images[0], torch.from_numpy(first).view(3, 32, 32))
    test = load_dataset("cifar10", root=folder, split="test", cache_dir=tmp_path / "cache")
    assert test.labels.tolist() == [9, 0, 1] and len(test) == 3
    assert not (tmp_path / "cache").exists()  # python-format folders are read directly


def test_cifar100_archive_is_cached(tmp_path, monkeypatch):
    files = {"cifar-100-python/train": cifar_batch([0, 2, 1, 2], b"fine_labels", protocol=2),
             "cifar-100-python/test": cifar_batch([1], b"fine_labels", seed=3),
             "cifar-100-python/meta": pickle.dumps({b"fine_label_names": [b"apple", b"bee", b"cup"]})}
    write_tar(tmp_path / "cifar-100-python.tar.gz", files)
    data = load_dataset("cifar100", root=tmp_path, cache_dir=tmp_path / "cache")
    assert data.labels.tolist() == [0, 2, 1, 2] and data.classes == ("apple", "bee", "cup")
    monkeypatch.setattr(cifar, "archive_files", lambda *a: pytest.fail("archive read again"))
    again = load_dataset("cifar100", root=tmp_path, cache_dir=tmp_path / "cache")
    assert torch.equal(again.images, data.images) and again.classes == data.classes


def test_cifar_pickle_cannot_run_code(tmp_path):
    class Payload:
        def __reduce__(self):
            return (os.getcwd, ())

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name, data in cifar10_files().items():
        (folder / name).write_bytes(data)
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": Payload()}))
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        load_dataset("cifar10", root=tmp_path)


# ---------------------------------------------------------------- CIFAR-10 JPEG archives, cache


def jpeg_archive(root: Path, split: str = "train", per_class: int = 2) -> dict[str, np.ndarray]:
    """A CIFAR-10-style archive of PNGs (lossless, so pixels can be compared exactly)."""
    arrays = {f"{split}/{c}/{i:04d}.png": pixels(10 * k + i) for k, c in enumerate(CIFAR10_CLASSES)
              for i in reversed(range(per_class))}
    write_tar(root / f"cifar10-{split}-jpeg.tar.gz", {n: encode(a) for n, a in arrays.items()})
    return arrays


def test_cifar10_jpeg_archive_order_and_pixels(tmp_path):
    arrays = jpeg_archive(tmp_path)
    data = load_dataset("cifar10", root=tmp_path, cache_dir=tmp_path / "cache")
    assert data.images.shape == (20, 3, 6, 5) and data.classes == CIFAR10_CLASSES
    assert data.labels.tolist() == [k for k in range(10) for _ in range(2)]
    expected = np.stack([arrays[n] for n in sorted(arrays, key=lambda n: (CIFAR10_CLASSES.index(n.split("/")[1]), n))])
    assert torch.equal(data.images, torch.from_numpy(expected).permute(0, 3, 1, 2))
    assert data.images.is_contiguous() and data.source.endswith("cifar10-train-jpeg.tar.gz")
    assert not (tmp_path / "train").exists()  # nothing unpacked next to the data


def test_cache_skips_decoding_and_notices_changes(tmp_path, monkeypatch, capfd):
    jpeg_archive(tmp_path)
    first = load_dataset("cifar10", root=tmp_path, cache_dir=tmp_path / "cache")
    assert "decoded cifar10 train" in capfd.readouterr().err
    assert [p.suffix for p in (tmp_path / "cache").iterdir()] == [".npz"]  # no temp files left
    monkeypatch.setattr(archives, "_decode_image", lambda data: pytest.fail("decoded again"))
    second = load_dataset("cifar10", root=tmp_path, cache_dir=tmp_path / "cache")
    assert torch.equal(first.images, second.images) and torch.equal(first.labels, second.labels)
    archive = tmp_path / "cifar10-train-jpeg.tar.gz"
    os.utime(archive, ns=(time.time_ns(), archive.stat().st_mtime_ns + 10**9))
    with pytest.raises(pytest.fail.Exception, match="decoded again"):
        load_dataset("cifar10", root=tmp_path, cache_dir=tmp_path / "cache")


def test_default_cache_dir_is_mixkit_cache(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    jpeg_archive(tmp_path / "data", split="test", per_class=1)
    monkeypatch.setenv("MIXKIT_CACHE", str(tmp_path / "env-cache"))
    load_dataset("cifar10", root=tmp_path / "data", split="test")
    assert len(list((tmp_path / "env-cache").glob("cifar10-test-*.npz"))) == 1


def test_checksum_file_is_checked(tmp_path):
    jpeg_archive(tmp_path)
    digest = hashlib.sha256((tmp_path / "cifar10-train-jpeg.tar.gz").read_bytes()).hexdigest()
    (tmp_path / "SHA256SUMS").write_text(f"{digest}  cifar10-train-jpeg.tar.gz\n{'0' * 64}  other.tar.gz\n")
    assert len(load_dataset("cifar10", root=tmp_path, cache_dir=tmp_path / "c1")) == 20
    (tmp_path / "SHA256SUMS").write_text(f"{'0' * 64}  cifar10-train-jpeg.tar.gz\n")
    with pytest.raises(OSError, match="SHA-256"):
        load_dataset("cifar10", root=tmp_path, cache_dir=tmp_path / "c2")


def test_missing_cifar_says_where_and_what(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar-10-python.tar.gz") as info:
        load_dataset("cifar10", root=tmp_path, split="test")
    assert str(tmp_path) in str(info.value) and "root=" in str(info.value)


# ---------------------------------------------------------------- unsafe archives


def unsafe_member(kind: str, tmp_path: Path) -> tarfile.TarInfo:
    if kind == "symlink":
        info = tarfile.TarInfo("train/cat/link.png")
        info.type, info.linkname = tarfile.SYMTYPE, str(tmp_path / "target.png")
        return info
    info = tarfile.TarInfo("train/../../evil.png" if kind == "dotdot" else str(tmp_path / "evil.png"))
    info.size = 4
    return info


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink"])
@pytest.mark.parametrize("data_filter", [True, False])
def test_unsafe_archives_are_refused(tmp_path, monkeypatch, kind, data_filter):
    monkeypatch.setattr(archives, "_HAS_DATA_FILTER", data_filter)
    member = unsafe_member(kind, tmp_path)
    archive = write_tar(tmp_path / "cifar10-train-jpeg.tar.gz", {"train/cat/0001.png": encode(pixels(0))}, [member])
    dest = tmp_path / "out" / "dest"
    with pytest.raises(UnsafeArchiveError, match="refusing"):
        safe_extract(archive, dest)
    with pytest.raises(UnsafeArchiveError):
        load_dataset("cifar10", root=tmp_path, cache_dir=tmp_path / "cache")
    assert not dest.exists() and not (tmp_path / "evil.png").exists() and not (tmp_path / "out" / "evil.png").exists()


@pytest.mark.parametrize("data_filter", [True, False])
def test_safe_extract_unpacks_plain_archives(tmp_path, monkeypatch, data_filter):
    monkeypatch.setattr(archives, "_HAS_DATA_FILTER", data_filter)
    archive = write_tar(tmp_path / "a.tar.gz", {"top/a/1.bin": b"one", "./top/b.bin": b"two"})
    dest = safe_extract(archive, tmp_path / "out")
    assert (dest / "top" / "a" / "1.bin").read_bytes() == b"one" and (dest / "top" / "b.bin").read_bytes() == b"two"


# ---------------------------------------------------------------- ImageFolder, Tiny-ImageNet, Fashion-MNIST


def write_image(path: Path, array: np.ndarray, fmt: str = "PNG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode(array, fmt))


def test_imagefolder_splits_classes_and_formats(tmp_path):
    write_image(tmp_path / "train" / "dog" / "b.png", pixels(1))
    flat = np.broadcast_to(np.array([200, 30, 90], dtype=np.uint8), (6, 5, 3)).copy()
    write_image(tmp_path / "train" / "dog" / "a.jpg", flat, "JPEG")  # flat colour: JPEG is near-exact
    write_image(tmp_path / "train" / "cat" / "x.png", pixels(3)[:, :, 0])  # greyscale among colour
    write_image(tmp_path / "test" / "cat" / "y.png", pixels(4))
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    data = load_dataset("imagefolder", root=tmp_path, cache_dir=tmp_path / "cache")
    assert data.classes == ("cat", "dog") and data.labels.tolist() == [0, 1, 1]
    assert data.images.shape == (3, 3, 6, 5)
    assert torch.equal(data.images[0], torch.from_numpy(pixels(3)[:, :, 0]).expand(3, 6, 5))
    assert torch.equal(data.images[2], torch.from_numpy(pixels(1)).permute(2, 0, 1))
    assert (data.images[1].int() - torch.from_numpy(flat).permute(2, 0, 1).int()).abs().max() <= 4
    assert len(load_dataset("imagefolder", root=tmp_path, split="test", cache_dir=tmp_path / "cache")) == 1
    with pytest.raises(FileNotFoundError, match="'val'.*test.*train"):
        load_dataset("imagefolder", root=tmp_path, split="val", cache_dir=tmp_path / "cache")


def test_imagefolder_flat_grey_and_errors(tmp_path, monkeypatch):
    for k, c in enumerate(("b", "a")):
        write_image(tmp_path / "flat" / c / "0.png", pixels(k)[:, :, 0])
    data = load_dataset("imagefolder", root=tmp_path / "flat", cache_dir=tmp_path / "cache")
    assert data.images.shape == (2, 1, 6, 5) and data.classes == ("a", "b")
    write_image(tmp_path / "flat" / "a" / "1.png", pixels(5, (7, 5, 3)))
    with pytest.raises(ShapeError, match="differ in size"):
        load_dataset("imagefolder", root=tmp_path / "flat", cache_dir=tmp_path / "cache")
    with pytest.raises(FileNotFoundError, match="root="):
        load_dataset("imagefolder")
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(ImportError, match="pip install pillow"):
        load_dataset("imagefolder", root=tmp_path / "flat", cache_dir=tmp_path / "other-cache")


def test_tiny_imagenet_layout(tmp_path):
    base = tmp_path / "tiny-imagenet-200"
    base.mkdir()
    (base / "wnids.txt").write_text("n02\nn01\n")
    (base / "words.txt").write_text("n01\tgoldfish, Carassius auratus\nn02\tbee\nn03\tunused\n")
    for k, w in enumerate(("n01", "n02")):
        for i in range(2):
            write_image(base / "train" / w / "images" / f"{w}_{i}.JPEG", pixels(k * 2 + i, (8, 8, 3)), "JPEG")
        (base / "train" / w / f"{w}_boxes.txt").write_text("")
    rows = [("val_0.JPEG", "n02"), ("val_1.JPEG", "n01"), ("val_2.JPEG", "n02")]
    for i, (f, _) in enumerate(rows):
        write_image(base / "val" / "images" / f, pixels(10 + i, (8, 8)), "JPEG")
    (base / "val" / "val_annotations.txt").write_text("".join(f"{f}\t{w}\t0\t0\t8\t8\n" for f, w in rows))
    train = load_dataset("tiny_imagenet", root=tmp_path, cache_dir=tmp_path / "cache")
    assert train.classes == ("goldfish", "bee") and train.labels.tolist() == [0, 0, 1, 1]
    assert train.images.shape == (4, 3, 8, 8)
    val = load_dataset("tiny_imagenet", root=base, split="test", cache_dir=tmp_path / "cache")
    assert val.split == "val" and val.labels.tolist() == [0, 1, 1] and val.images.shape == (3, 1, 8, 8)


def test_fashion_mnist_through_load_dataset(tmp_path):
    def idx(array: np.ndarray) -> bytes:
        header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
        return gzip.compress(header + array.tobytes())

    images = pixels(0, (3, 28, 28))
    for prefix in ("train", "t10k"):
        (tmp_path / f"{prefix}-images-idx3-ubyte.gz").write_bytes(idx(images))
        (tmp_path / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(idx(np.array([9, 0, 3], dtype=np.uint8)))
    data = load_dataset("fashion_mnist", root=tmp_path, split="test")
    assert data.images.shape == (3, 1, 28, 28) and data.labels.tolist() == [9, 0, 3]
    assert data.classes[9] == "Ankle boot" and torch.equal(data.images[:, 0], torch.from_numpy(images))


def test_bad_names_and_splits():
    with pytest.raises(ValueError, match="valid names: fashion_mnist.*Did you mean 'cifar10'"):
        load_dataset("cifar-10")
    with pytest.raises(ValueError, match=r"\['train', 'test'\]"):
        load_dataset("cifar10", split="validation")
    with pytest.raises(ValueError, match="folder name"):
        load_dataset("imagefolder", root=".", split="../x")


def test_image_data_validates():
    with pytest.raises(LabelError):
        ImageData(torch.zeros(2, 1, 2, 2, dtype=torch.uint8), torch.tensor([0, 3]), ("a", "b"), "toy")
    with pytest.raises(ShapeError):
        ImageData(torch.zeros(2, 2, 2, dtype=torch.uint8), torch.tensor([0, 1]), ("a", "b"), "toy")


# ---------------------------------------------------------------- subsets


def test_subset_per_class_counts_and_reproducibility():
    labels = torch.arange(5).repeat_interleave(torch.tensor([7, 9, 5, 12, 6]))
    idx = subset_per_class(labels, 5, seed=3)
    assert idx.dtype == torch.int64 and torch.equal(idx, idx.sort().values)
    assert labels[idx].bincount().tolist() == [5] * 5 and idx.unique().numel() == 25
    assert torch.equal(idx, subset_per_class(labels, 5, seed=3))
    assert not torch.equal(idx, subset_per_class(labels, 5, seed=4))
    assert set(subset_per_class(labels, 3, seed=3).tolist()) <= set(idx.tolist())  # nested
    with pytest.raises(HyperParameterError, match="class 2 has 5"):
        subset_per_class(labels, 6)
    with pytest.raises(HyperParameterError, match="class 5 has 0"):
        subset_per_class(labels, 2, num_classes=6)


def test_subset_offset_gives_the_next_ranks_disjoint():
    labels = torch.arange(3).repeat_interleave(10)
    first, second = subset_per_class(labels, 4, seed=1), subset_per_class(labels, 4, seed=1, offset=4)
    assert not set(first.tolist()) & set(second.tolist())
    assert labels[second].bincount().tolist() == [4, 4, 4]
    assert set(first.tolist()) | set(second.tolist()) == set(subset_per_class(labels, 8, seed=1).tolist())
    with pytest.raises(HyperParameterError, match="offset"):
        subset_per_class(labels, 4, offset=7)
    with pytest.raises(HyperParameterError, match="offset must be >= 0"):
        subset_per_class(labels, 4, offset=-1)


# ---------------------------------------------------------------- crop and flip


def test_crop_without_padding_or_flip_is_identity():
    x = torch.randint(0, 256, (5, 3, 7, 6), dtype=torch.uint8)
    assert torch.equal(random_crop_flip(x, padding=0, flip=False, generator=gen(0)), x)


def test_flip_only_mirrors_some_samples():
    x = torch.randn(64, 2, 4, 5, dtype=torch.float64)
    y = random_crop_flip(x, padding=0, generator=gen(1))
    same = (y == x).flatten(1).all(1)
    mirrored = (y == x.flip(-1)).flatten(1).all(1)
    assert bool((same | mirrored).all()) and 0 < int(same.sum()) < 64


def test_crops_are_windows_of_the_padded_image():
    x = (torch.arange(2 * 3 * 4, dtype=torch.float32) + 1).view(1, 2, 3, 4).repeat(40, 1, 1, 1)
    padded = torch.nn.functional.pad(x[0], (2, 2, 2, 2))
    windows = {(t, s, f): padded[:, t:t + 3, s:s + 4].flip(-1) if f else padded[:, t:t + 3, s:s + 4]
               for t in range(5) for s in range(5) for f in (False, True)}
    params = sample_crop_flip(40, padding=2, generator=gen(2))
    y = crop_flip(x, params)
    for b in range(40):
        key = (int(params.top[b]), int(params.left[b]), bool(params.flip[b]))
        assert torch.equal(y[b], windows[key])
    assert len(set(zip(params.top.tolist(), params.left.tolist()))) > 10


def test_hand_built_params():
    x = torch.tensor([[[[1, 2], [3, 4]]]], dtype=torch.uint8)
    corner = CropFlipParams(torch.tensor([0]), torch.tensor([0]), torch.tensor([False]), padding=1)
    assert crop_flip(x, corner).tolist() == [[[[0, 0], [0, 1]]]]
    flipped = CropFlipParams(torch.tensor([2]), torch.tensor([1]), torch.tensor([True]), padding=1)
    assert crop_flip(x, flipped).tolist() == [[[[4, 3], [0, 0]]]]
    with pytest.raises(ShapeError):
        crop_flip(x.repeat(2, 1, 1, 1), corner)


def test_crop_flip_keeps_format_and_input_and_is_seeded():
    x = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8).contiguous(memory_format=torch.channels_last)
    before = x.clone()
    y = random_crop_flip(x, generator=gen(5))
    assert y.dtype == x.dtype and y.shape == x.shape and y.device == x.device
    assert y.is_contiguous(memory_format=torch.channels_last) and torch.equal(x, before)
    assert random_crop_flip(x[:, :1].contiguous(), generator=gen(5)).is_contiguous()
    assert torch.equal(y, random_crop_flip(x, generator=gen(5)))
    assert not torch.equal(y, random_crop_flip(x, generator=gen(6)))
    with pytest.raises(HyperParameterError):
        random_crop_flip(x, padding=-1)


# ---------------------------------------------------------------- normalisation and statistics


def test_normalize_numbers_and_layout():
    x = torch.tensor([0, 255, 51], dtype=torch.uint8).view(1, 1, 1, 3).repeat(1, 2, 1, 1)
    y = normalize(x, [0.5, 0.2], [0.25, 0.5])
    expected = torch.tensor([[[[-2.0, 2.0, -1.2]], [[-0.4, 1.6, 0.0]]]])
    assert y.dtype == torch.float32 and torch.allclose(y, expected, atol=1e-6)
    assert normalize(x, [0.5, 0.2], [0.25, 0.5], dtype=torch.float64).dtype == torch.float64
    cl = torch.randint(0, 256, (2, 3, 4, 5), dtype=torch.uint8).contiguous(memory_format=torch.channels_last)
    mean, std = DATASET_STATS["cifar10"]
    out = normalize(cl, mean, std)
    assert out.is_contiguous(memory_format=torch.channels_last)
    reference = (cl.double() / 255 - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    assert torch.allclose(out.double(), reference, atol=1e-5)
    with pytest.raises(TypeError):
        normalize(cl.float(), mean, std)
    with pytest.raises(ValueError):
        normalize(cl, mean[:2], std[:2])


def test_stats():
    images = torch.randint(0, 256, (50, 3, 4, 4), dtype=torch.uint8)
    mean, std = compute_stats(images, chunk_size=7)
    values = images.double().div(255).transpose(0, 1).flatten(1)
    assert np.allclose(mean, values.mean(1)) and np.allclose(std, values.std(1, correction=0))
    assert dataset_stats("cifar100") == DATASET_STATS["cifar100"]
    assert dataset_stats("imagefolder") == DATASET_STATS["imagenet"]
    assert dataset_stats("imagefolder", images) == (mean, std)
    assert all(len(m) == len(s) for m, s in DATASET_STATS.values())


# ---------------------------------------------------------------- the real CIFAR-10 JPEG test split


@pytest.mark.skipif(not (REAL_CIFAR / "cifar10-test-jpeg.tar.gz").is_file(), reason="no CIFAR-10 JPEG archives")
def test_real_cifar10_jpeg_test_split(tmp_path):
    data = load_dataset("cifar10", root=REAL_CIFAR, split="test", cache_dir=tmp_path)
    assert data.images.shape == (10_000, 3, 32, 32) and data.images.dtype == torch.uint8
    assert data.labels.bincount().tolist() == [1000] * 10 and data.classes == CIFAR10_CLASSES
    mean, _ = compute_stats(data.images)
    assert np.allclose(mean, DATASET_STATS["cifar10"][0], atol=0.02)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32, torch.bfloat16, torch.int64])
@pytest.mark.parametrize("padding", [0, 1, 4])
def test_crop_flip_padded_path_equals_the_pixel_gather(dtype, padding):
    """Contiguous batches with sampled crops take the padded row/column gathers: every value
    the same as the pixel gather, including the crops at both extremes and flips."""
    from mixkit.data.augment import _crop_flip_gather

    x = torch.randint(1, 250, (9, 3, 6, 7), generator=gen(7)).to(dtype)
    b = x.shape[0]
    extremes = torch.tensor([0, 2 * padding] * 4 + [padding])
    params = [sample_crop_flip(b, padding=padding, generator=gen(s)) for s in range(4)]
    params.append(CropFlipParams(extremes, extremes.flip(0), torch.arange(b) % 2 == 0, padding=padding))
    for p in params:
        y = crop_flip(x, p)
        assert torch.equal(y, _crop_flip_gather(x, p)) and y.is_contiguous() and y.dtype == dtype
    # crops reaching past the padding take the pixel gather (zeros outside)
    far = CropFlipParams(torch.full((b,), 2 * padding + 3), torch.zeros(b, dtype=torch.long), torch.zeros(b, dtype=torch.bool),
                         padding=padding)
    assert torch.equal(crop_flip(x, far), _crop_flip_gather(x, far))
