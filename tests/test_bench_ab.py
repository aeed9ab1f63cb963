"""bench/ab.py loads the code of a git revision beside the working tree and compares them."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from conftest import load_bench

ROOT = Path(__file__).resolve().parents[1]


def _in_git() -> bool:
    if shutil.which("git") is None:
        return False
    done = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True)
    return done.returncode == 0


@pytest.mark.skipif(not _in_git(), reason="needs the git repository")
def test_ab_benchmark_tiny_run(tmp_path):
    ab = load_bench("ab")
    out = tmp_path / "ab.json"
    rows = ab.main(["--ref", "HEAD", "--methods", "mixup:batch", "cutmix:elem", "erm", "--size", "8", "--batch", "4",
                    "--rounds", "2", "--out", str(out)])
    assert [(r["method"], r["mode"]) for r in rows] == [("mixup", "batch"), ("cutmix", "elem"), ("erm", "batch")]
    assert all(r["same_output"] and r["ref_ms"] > 0 and r["new_ms"] > 0 for r in rows)  # HEAD's code: the same mixes
    assert all(r["ref_faults"] >= 0 and r["new_faults"] >= 0 for r in rows)
    assert json.loads(out.read_text())["rows"] == rows


@pytest.mark.skipif(not _in_git(), reason="needs the git repository")
def test_ab_benchmark_with_backward_compares_gradients(tmp_path):
    ab = load_bench("ab")
    rows = ab.main(["--ref", "HEAD", "--methods", "cutmix:batch", "mixup:elem", "--size", "8", "--batch", "4",
                    "--rounds", "2", "--backward", "--out", str(tmp_path / "ab.json")])
    assert all(r["same_output"] for r in rows)  # outputs, targets and input gradients of HEAD's code
    assert json.loads((tmp_path / "ab.json").read_text())["backward"] is True


@pytest.mark.skipif(not _in_git(), reason="needs the git repository")
def test_ab_benchmark_in_place(tmp_path):
    ab = load_bench("ab")
    rows = ab.main(["--ref", "HEAD", "--methods", "cutmix:batch", "mixup:elem", "--size", "8", "--batch", "4",
                    "--rounds", "2", "--inplace", "--out", str(tmp_path / "ab.json")])
    assert all(r["same_output"] and r["new_ms"] > 0 for r in rows)
    assert json.loads((tmp_path / "ab.json").read_text())["inplace"] is True
    with pytest.raises(SystemExit, match="no inplace option"):
        ab.main(["--ref", "HEAD", "--methods", "fmix:batch", "--size", "8", "--batch", "4", "--rounds", "1", "--inplace"])


@pytest.mark.skipif(not _in_git(), reason="needs the git repository")
def test_ab_benchmark_with_cold_caches(tmp_path):
    ab = load_bench("ab")
    out = tmp_path / "ab.json"
    rows = ab.main(["--ref", "HEAD", "--methods", "augmix:batch", "--size", "8", "--batch", "4", "--rounds", "2",
                    "--evict", "--normalize", "--channels-last", "--out", str(out)])
    assert rows[0]["same_output"] and rows[0]["new_ms"] > 0
    assert json.loads(out.read_text())["evict"] is True
    moved = ab.evictor(True)()  # the eviction itself: a 32 MiB copy, 64 MiB touched
    assert moved.numel() * moved.element_size() == 32 << 20 and bool((moved == 1).all())


def test_ab_batch_of_real_images():
    ab = load_bench("ab")
    from mixkit.data import load_dataset

    try:
        data = load_dataset("fashion_mnist", split="test")
    except (FileNotFoundError, OSError) as err:  # no Debian package, cache or network
        pytest.skip(f"Fashion-MNIST not available: {err}")
    args = ab.parse_args(["--ref", "HEAD", "--methods", "pixmix", "--data", "fashion_mnist", "--normalize",
                          "--batch", "20", "--channels-last"])
    x, y, stats = ab.make_batch(args)
    rows = torch.arange(20) * (len(data) // 20)
    want = (data.images[rows].float() / 255 - stats[0][0]) / stats[1][0]
    assert stats == ((0.286,), (0.353,)) and x.shape == (20, 1, 28, 28)
    assert x.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(x, want)
    assert torch.equal(y, data.labels[rows]) and len(set(y.tolist())) == 10  # every class
    x, y, stats = ab.make_batch(ab.parse_args(["--ref", "HEAD", "--methods", "mixup", "--size", "8", "--batch", "4"]))
    g = torch.Generator().manual_seed(0)
    assert torch.equal(x, torch.rand(4, 3, 8, 8, generator=g)) and stats[0] == (0.4914, 0.4822, 0.4465)


def test_ab_batch_of_uint8_pixels():
    ab = load_bench("ab")
    x, _, _ = ab.make_batch(ab.parse_args(["--ref", "HEAD", "--methods", "fmix", "--size", "8", "--batch", "4",
                                           "--dtype", "uint8", "--channels-last"]))
    g = torch.Generator().manual_seed(0)
    assert x.dtype == torch.uint8 and x.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(x, torch.rand(4, 3, 8, 8, generator=g).mul_(255).round_().to(torch.uint8))
    with pytest.raises(SystemExit, match="uint8"):
        ab.make_batch(ab.parse_args(["--ref", "HEAD", "--methods", "fmix", "--dtype", "uint8", "--normalize"]))
