"""bench/ops.py runs end to end on a tiny input (mixkit only, one repeat) and writes its JSON
rows and Markdown page."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "ops.py"


def _load_ops():
    path = list(sys.path)
    try:
        spec = importlib.util.spec_from_file_location("_bench_ops", BENCH)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path[:] = path
    return module


def test_ops_benchmark_tiny_run(tmp_path):
    ops = _load_ops()
    out, md = tmp_path / "ops.json", tmp_path / "ops.md"
    result = ops.main(["--sizes", "8", "--batch", "4", "--repeats", "1", "--warmup", "1", "--libs", "mixkit",
                       "--ops", "mixup", "cutmix", "ricap", "--dtypes", "float32", "--out", str(out), "--md", str(md)])
    rows = json.loads(out.read_text())["rows"]
    assert rows == result["rows"]
    timed = [r for r in rows if r["status"] == "ok"]
    # mixup and cutmix: 2 modes x 2 passes; ricap (mixkit-only): 2 modes, forward only
    assert {(r["op"], r["mode"], r["pass"]) for r in timed} == (
        {(op, m, p) for op in ("mixup", "cutmix") for m in ("batch", "elem") for p in ("fwd", "fwd+bwd")}
        | {("ricap", m, "fwd") for m in ("batch", "elem")}
    )
    expected = {"op", "size", "dtype", "mode", "pass", "device", "group", "lib", "status",
                "median_ms", "q1_ms", "q3_ms", "repeats", "clock", "wall_median_ms", "measured_at",
                "loadavg_1min", "threads"}
    for r in timed:
        assert set(r) == expected
        assert r["lib"] in ("mixkit", "mixkit_inplace") and r["size"] == 8 and r["dtype"] == "float32"
        assert r["repeats"] == 1
        # the in-place variant: forward rows of the methods with an inplace option
        assert r["lib"] == "mixkit" or (r["op"] in ("mixup", "cutmix") and r["pass"] == "fwd")
        assert 0 < r["q1_ms"] <= r["median_ms"] <= r["q3_ms"]
    assert all(r["status"] == "ok" for r in rows)
    assert {(r["op"], r["mode"]) for r in timed if r["lib"] == "mixkit_inplace"} == {
        (op, m) for op in ("mixup", "cutmix") for m in ("batch", "elem")}
    page = md.read_text()
    assert "| mixup | 8 | float32 | batch | fwd | cpu |" in page and "`ricap`" in page
