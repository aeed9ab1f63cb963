"""bench/method_times.py times every method it lists on a tiny batch and writes its rows."""

from __future__ import annotations

import json

import mixkit
from conftest import load_bench


def test_every_listed_method_runs_and_rows_are_written(tmp_path):
    bench = load_bench("method_times")
    names = bench.timed_methods()
    assert "mixup" in names and "manifold_mixup" in names
    assert not any("mixer" in mixkit.method_info(n).needs or mixkit.method_info(n).family == "label" for n in names)
    out = tmp_path / "times.json"
    bench.main(["--size", "8", "--batch", "4", "--warmup", "1", "--repeats", "1", "--budget", "0.001",
                "--out", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert {r["method"] for r in rows} == set(names)
    assert all(r["median_ms"] > 0 and r["repeats"] >= 1 for r in rows)
    # re-timing some methods keeps the other rows
    bench.main(["--size", "8", "--batch", "4", "--warmup", "1", "--repeats", "1", "--methods", "mixup",
                "--out", str(out)])
    again = json.loads(out.read_text())["rows"]
    assert {r["method"] for r in again} == set(names) and len(again) == len(rows)
