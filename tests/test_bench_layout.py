"""bench/layout.py times copy_ against copy_into between layouts and writes each case."""

from __future__ import annotations

import json

from conftest import load_bench


def test_layout_benchmark_tiny_run(tmp_path):
    bench = load_bench("layout")
    out = tmp_path / "layout.json"
    result = bench.main(["--sizes", "8", "--batch", "4", "--dtypes", "float32", "bfloat16", "--calls", "3",
                         "--cold", "--out", str(out)])
    assert json.loads(out.read_text()) == result
    assert [(r["dtype"], r["direction"]) for r in result["rows"]] == [
        (dt, d) for dt in ("float32", "bfloat16") for d in bench.DIRECTIONS]
    for row in result["rows"]:
        assert row["cold"] and row["us"]["copy_"] > 0 and row["us"]["copy_into"] > 0
        assert row["ratio"] == row["us"]["copy_into"] / row["us"]["copy_"]
