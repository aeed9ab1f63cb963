"""bench/fastmath.py times torch's log2 against fastmath's and writes each case."""

from __future__ import annotations

import json

from conftest import load_bench


def test_fastmath_benchmark_tiny_run(tmp_path):
    bench = load_bench("fastmath")
    out = tmp_path / "fastmath.json"
    result = bench.main(["--sizes", "1000", "--zeros", "0", "0.5", "--calls", "3", "--out", str(out)])
    assert json.loads(out.read_text()) == result
    assert [(r["size"], r["zeros"]) for r in result["rows"]] == [(1000, 0.0), (1000, 0.5)]
    for row in result["rows"]:
        assert set(row["us"]) == set(bench.CASES)
        assert row["us"]["copy"] > 0


def test_fastmath_survey_times_both_sides():
    bench = load_bench("fastmath")
    us = bench.survey(1, n=1000)
    assert {"exp", "log2", "tanh", "sort (1-D)", "bincount"} <= set(us)
    assert all(v["torch"] > 0 and v["numpy"] > 0 for v in us.values())
