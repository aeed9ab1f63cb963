"""The registry and the command line."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
import torch

import mixkit
from mixkit import cli
from mixkit.data import fashion_mnist


def test_list_methods_pattern_and_family():
    assert {"cutmix", "fmix", "resizemix"} <= set(mixkit.list_methods("*mix"))
    assert all(n.endswith("mix") for n in mixkit.list_methods("*mix"))
    assert {"between_class", "mixup", "local_mixup", "sample_pairing", "mixed_example"} <= set(mixkit.list_methods(family="linear"))
    assert mixkit.list_methods(family="feature") == ["manifold_mixup"]
    with pytest.raises(mixkit.HyperParameterError, match="family"):
        mixkit.list_methods(family="linearr")


def test_create_with_paper_defaults():
    assert mixkit.create("mixup").alpha == 1.0
    assert mixkit.create("manifold_mixup").alpha == 2.0
    assert mixkit.create("resizemix").scale == (0.1, 0.8)
    assert mixkit.create("fmix").decay_power == 3.0
    assert mixkit.create("between_class").mode == "elem"
    assert mixkit.create("cutmix", alpha=0.5).alpha == 0.5


def test_register_rejects_duplicates_and_bad_family():
    with pytest.raises(ValueError, match="already registered"):
        mixkit.register("mixup", family="linear", paper="", authors="", venue="", year=2020, code="", sources=2,
                        summary="")(type("X", (), {}))
    with pytest.raises(ValueError, match="family"):
        mixkit.register("x", family="nope", paper="", authors="", venue="", year=2020, code="", sources=2, summary="")


def test_cli_list_json(capsys):
    assert cli.main(["list", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [d["name"] for d in data] == mixkit.list_methods()
    mm = next(d for d in data if d["name"] == "manifold_mixup")
    assert mm["needs"] == ["model", "features"] and mm["defaults"]["layers"] == ["input", "layer1", "layer2"]
    assert {"family", "paper", "year", "code", "sources", "defaults", "needs"} <= set(mm)


def test_cli_list_table_and_info(capsys):
    assert cli.main(["list", "cut*"]) == 0
    out = capsys.readouterr().out
    assert "cutmix" in out and "mixup " not in out
    assert cli.main(["info", "fmix"]) == 0
    assert json.loads(capsys.readouterr().out)["family"] == "cutting"
    assert cli.main(["info", "fmixx"]) == 2
    assert "Did you mean 'fmix'" in capsys.readouterr().err


def write_idx(path, array):
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def fake_fashion(tmp_path):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 30), ("t10k", 20)):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    return tmp_path


def test_load_fashion_mnist_from_folder(fake_fashion):
    x, y = fashion_mnist.load_fashion_mnist("test", fake_fashion, download=False)
    assert x.shape == (20, 1, 28, 28) and x.dtype == torch.uint8 and y.tolist() == [i % 10 for i in range(20)]
    with pytest.raises(ValueError, match="split"):
        fashion_mnist.load_fashion_mnist("val", fake_fashion)


def test_download_checks_sha256_and_leaves_no_partial_file(tmp_path, monkeypatch):
    import io

    monkeypatch.setattr(fashion_mnist.urllib.request, "urlopen", lambda url, timeout: io.BytesIO(gzip.compress(b"junk")))
    with pytest.raises(OSError, match="SHA-256"):
        fashion_mnist._download(tmp_path / "fm")
    assert list((tmp_path / "fm").iterdir()) == []


def test_demo_writes_a_picture(fake_fashion, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "pic" / "methods.png"
    assert cli.main(["demo", "--data-dir", str(fake_fashion), "--out", str(out), "--columns", "3"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert str(out) in capsys.readouterr().out


def test_docs_methods_table_is_current():
    from pathlib import Path

    doc = Path(__file__).resolve().parents[1] / "docs" / "methods.md"
    assert doc.read_text() == cli.methods_markdown(mixkit.list_methods()), "run `make docs`"


def test_names_moved_to_modules_of_their_own_stay_importable():
    import importlib

    moved = {
        "mixkit.methods.multi": {"CutThumbnail": "mixkit.methods.cut_thumbnail", "KMixup": "mixkit.methods.k_mixup"},
        "mixkit.methods.label_losses": dict.fromkeys(("RegMixup", "regmixup_loss"), "mixkit.methods.regmixup"),
        "mixkit.methods.cutting_masks": dict.fromkeys(("GridMix", "GridParams"), "mixkit.methods.gridmix"),
    }
    for old, names in moved.items():
        module = importlib.import_module(old)
        for name, new in names.items():
            assert getattr(module, name) is getattr(importlib.import_module(new), name)
        with pytest.raises(AttributeError, match=f"module '{old}' has no attribute 'Nope'"):
            module.Nope  # noqa: B018 - the attribute access is the test
