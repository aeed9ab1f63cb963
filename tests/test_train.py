"""The training harness: every method trains, runs resume exactly, the bench grid resumes."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mixkit
from mixkit.errors import HyperParameterError
from mixkit.train import TrainConfig, TrainData, train
from mixkit.train.bench import run_bench
from conftest import TinyNet

ROOT = Path(__file__).resolve().parents[1]


def tiny_data(n_train: int = 48, n_test: int = 24, classes: int = 4, size: int = 8) -> TrainData:
    g = torch.Generator().manual_seed(0)
    ytr = torch.arange(n_train) % classes
    yte = torch.arange(n_test) % classes
    # class-dependent brightness so that something is learnable
    xtr = (torch.rand(n_train, 3, size, size, generator=g) * 128 + ytr.view(-1, 1, 1, 1) * 30).to(torch.uint8)
    xte = (torch.rand(n_test, 3, size, size, generator=g) * 128 + yte.view(-1, 1, 1, 1) * 30).to(torch.uint8)
    return TrainData(xtr, ytr, xte, yte, tuple(f"c{i}" for i in range(classes)), (0.5,) * 3, (0.25,) * 3)


def tiny_config(tmp_path: Path, **kw) -> TrainConfig:
    base = dict(epochs=1, batch_size=16, lr=0.05, corruptions=False, out=str(tmp_path / "run"), median_last=2,
                eval_batch_size=16, threads=1)
    base.update(kw)
    return TrainConfig(**base)


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return TinyNet(3, 4)


@pytest.mark.parametrize("name", mixkit.list_methods())
def test_every_registered_method_trains(name, tmp_path):
    cfg = tiny_config(tmp_path, method=name)
    metrics = train(cfg, data=tiny_data(), model=tiny_model())
    out = Path(cfg.out)
    for f in ("metrics.json", "config.json", "checkpoint.pt", "log.jsonl"):
        assert (out / f).exists(), f
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["finished"] and saved["config"]["method"] == name
    assert 0 <= metrics["final"]["top1"] <= 100 and metrics["final"]["nll"] > 0
    assert len(saved["epochs"]) == 1 and saved["epochs"][0]["images_per_s"] > 0


def _strip_times(history):
    drop = {"epoch_time_s", "images_per_s"}
    return [{k: v for k, v in h.items() if k not in drop} for h in history]


def test_killed_and_resumed_run_equals_uninterrupted(tmp_path):
    data = tiny_data()
    a = tiny_config(tmp_path / "a", method="cutmix", epochs=3, method_args={"mode": "elem"})
    full = train(a, data=data, model=tiny_model())

    b = dataclasses.replace(a, out=str(tmp_path / "b"))

    def kill(epoch, step):
        if epoch == 1 and step == 1:  # during the second epoch of three
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(b, data=data, model=tiny_model(), hooks={"batch_end": kill})
    assert torch.load(Path(b.out) / "checkpoint.pt", weights_only=False)["epoch"] == 1
    resumed = train(b, resume=True, data=data, model=tiny_model())
    wa = torch.load(Path(a.out) / "checkpoint.pt", weights_only=False)["model"]
    wb = torch.load(Path(b.out) / "checkpoint.pt", weights_only=False)["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert _strip_times(full["epochs"]) == _strip_times(resumed["epochs"])
    assert full["final"] == resumed["final"]


def test_resume_refuses_other_settings(tmp_path):
    data = tiny_data()
    cfg = tiny_config(tmp_path, method="mixup")
    train(cfg, data=data, model=tiny_model())
    with pytest.raises(ValueError, match="lr"):
        train(dataclasses.replace(cfg, lr=0.2), resume=True, data=data, model=tiny_model())


def test_same_seed_same_run_other_seed_other_run(tmp_path):
    data = tiny_data()
    r1 = train(tiny_config(tmp_path / "1", method="mixup"), data=data, model=tiny_model())
    r2 = train(tiny_config(tmp_path / "2", method="mixup"), data=data, model=tiny_model())
    r3 = train(tiny_config(tmp_path / "3", method="mixup", seed=1), data=data, model=tiny_model())
    assert _strip_times(r1["epochs"]) == _strip_times(r2["epochs"])
    assert _strip_times(r1["epochs"]) != _strip_times(r3["epochs"])


def test_corruption_metrics_and_median(tmp_path):
    cfg = tiny_config(tmp_path, method="mixup", epochs=3, corruptions=True, corruption_severities=(1, 5), median_last=2)
    final = train(cfg, data=tiny_data(), model=tiny_model())["final"]
    assert set(final["corruption"]) == set(__import__("mixkit.corruptions", fromlist=["x"]).CORRUPTIONS)
    assert all(set(v) == {"1", "5"} for v in final["corruption"].values())
    assert 0 <= final["corruption_top1"] <= 100 and final["median_last_n"] == 2


def test_bench_grid_resumes_and_reports(tmp_path, monkeypatch):
    data = tiny_data()
    base = tiny_config(tmp_path, model="resnet20", epochs=1)
    rows = run_bench(["erm", "mixup"], [0, 1], base, tmp_path / "bench", data=data)
    assert [r["method"] for r in rows] == ["erm", "mixup"] and all(r["seeds"] == 2 for r in rows)
    md = (tmp_path / "bench" / "results.md").read_text()
    assert "| erm | 2 |" in md and "| mixup | 2 |" in md
    assert (tmp_path / "bench" / "results.csv").exists()
    import mixkit.train.bench as bench_mod

    monkeypatch.setattr(bench_mod, "train", lambda *a, **k: pytest.fail("a finished run was trained again"))
    run_bench(["erm", "mixup"], [0, 1], base, tmp_path / "bench", data=data)


DDP_SCRIPT = """
import sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from test_train import tiny_data, tiny_config, tiny_model
from mixkit.train import distributed, train
distributed.init_from_env()
mode, method, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
cfg = tiny_config(out, method=method, epochs=3, pair_across_ranks=(mode == "across"))

def kill(epoch, step):
    if epoch == 1 and step == 1:
        raise SystemExit(3)

train(cfg, resume=(mode == "resume"), data=tiny_data(), model=tiny_model(),
      hooks={{"batch_end": kill}} if mode == "killed" else None)
"""


def _torchrun(script, *args):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


def test_two_process_training_and_exact_resume(tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT.format(tests=str(ROOT / "tests")))
    for mode, method in (("local", "manifold_mixup"), ("across", "mixup"), ("local", "cutmix")):
        out = tmp_path / f"{mode}-{method}"
        res = _torchrun(script, mode, method, str(out))
        assert res.returncode == 0, res.stderr[-3000:]
        metrics = json.loads((out / "run" / "metrics.json").read_text())
        assert metrics["finished"] and metrics["epochs"][-1]["test"]["count"] == 24
        assert metrics["epochs"][-1]["images"] == 48  # both ranks' samples counted
    # killed during epoch 2 of 3, then resumed: the same weights as the uninterrupted run
    out = tmp_path / "killed"
    assert _torchrun(script, "killed", "cutmix", str(out)).returncode != 0
    res = _torchrun(script, "resume", "cutmix", str(out))
    assert res.returncode == 0, res.stderr[-3000:]
    wa = torch.load(tmp_path / "local-cutmix" / "run" / "checkpoint.pt", weights_only=False)["model"]
    wb = torch.load(out / "run" / "checkpoint.pt", weights_only=False)["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_fresh_run_refuses_an_existing_run(tmp_path):
    cfg = tiny_config(tmp_path, method="mixup")
    train(cfg, data=tiny_data(), model=tiny_model())
    with pytest.raises(FileExistsError, match="resume"):
        train(cfg, data=tiny_data(), model=tiny_model())


def test_bench_refuses_runs_made_with_other_settings(tmp_path):
    data = tiny_data()
    base = tiny_config(tmp_path, model="resnet20", epochs=1)
    run_bench(["erm"], [0], base, tmp_path / "bench", data=data)
    with pytest.raises(ValueError, match="epochs"):
        run_bench(["erm"], [0], dataclasses.replace(base, epochs=2), tmp_path / "bench", data=data)


def test_bench_method_args_reach_the_methods_that_have_them(tmp_path):
    data = tiny_data()
    base = tiny_config(tmp_path, model="resnet20", epochs=1)
    run_bench(["erm", "mixup", "cutmix"], [0], base, tmp_path / "bench", data=data, method_args={"alpha": 0.4})
    configs = {m: json.loads((tmp_path / "bench" / f"{m}-seed0" / "config.json").read_text()) for m in ("erm", "mixup", "cutmix")}
    assert configs["erm"]["method_args"] == {} and configs["mixup"]["method_args"] == {"alpha": 0.4}
    assert configs["cutmix"]["method_args"] == {"alpha": 0.4}
    with pytest.raises(HyperParameterError, match="no method of the grid .* mixer"):
        run_bench(["erm", "mixup"], [0], base, tmp_path / "bench", data=data, method_args={"mixer": "m.pt"})
    with pytest.raises(ValueError, match="method_args"):  # a finished run made without them is not reused
        run_bench(["mixup"], [0], base, tmp_path / "bench", data=data, method_args={"alpha": 1.0})


def test_method_args_tuples_survive_the_json_round_trip(tmp_path):
    cfg = tiny_config(tmp_path, method="manifold_mixup", method_args={"layers": ("input", "layer1")})
    train(cfg, data=tiny_data(), model=tiny_model())
    train(cfg, resume=True, data=tiny_data(), model=tiny_model())


FASHION = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")


@pytest.mark.skipif(not FASHION.exists(), reason="Debian's dataset-fashion-mnist is not installed")
def test_cli_train_on_fashion_mnist_then_resume_is_a_no_op(tmp_path, capsys):
    from mixkit import cli

    out = tmp_path / "fm"
    argv = ["train", "--data", "fashion_mnist", "--model", "resnet20", "--method", "mixup", "--alpha", "0.4",
            "--epochs", "1", "--subset", "4", "--no-corruptions", "--out", str(out), "--cache-dir", str(tmp_path / "c")]
    assert cli.main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["method_args"] == {"alpha": 0.4} and metrics["train_images"] == 40
    assert metrics["test_images"] == 10000 and (out / "curves.png").exists()
    assert "mixup finished" in capsys.readouterr().out
    assert cli.main(argv + ["--resume"]) == 0  # already finished: nothing more to train
    assert len(json.loads((out / "metrics.json").read_text())["epochs"]) == 1


def test_cli_errors_are_clear(capsys):
    from mixkit import cli

    assert cli.main(["train", "--method", "mixupp", "--out", "/tmp/never"]) == 2
    assert "Did you mean 'mixup'" in capsys.readouterr().err
    assert cli.main(["train", "--method", "mixup", "--preset", "quik", "--out", "/tmp/never"]) == 2
    assert "unknown preset" in capsys.readouterr().err


def test_cli_show_writes_a_picture(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    import gzip

    import numpy as np

    from mixkit import cli

    for prefix, n in (("train", 10), ("t10k", 10)):
        for kind, arr in (("images-idx3", np.random.default_rng(0).integers(0, 256, (n, 28, 28))),
                          ("labels-idx1", np.arange(n) % 10)):
            header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in arr.shape)
            with gzip.open(tmp_path / f"{prefix}-{kind}-ubyte.gz", "wb") as f:
                f.write(header + arr.astype(np.uint8).tobytes())
    out = tmp_path / "show.png"
    assert cli.main(["show", "--method", "resizemix", "--data", "fashion_mnist", "--data-root", str(tmp_path),
                     "--out", str(out), "--columns", "4", "--mode", "elem"]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"
