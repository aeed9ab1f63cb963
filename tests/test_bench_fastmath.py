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
