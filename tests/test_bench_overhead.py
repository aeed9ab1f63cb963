"""bench/overhead.py runs end to end on two methods (one round, no PreAct step) and writes its
JSON and its section of the page."""

from __future__ import annotations

import json

from conftest import load_bench


def test_overhead_benchmark_tiny_run(tmp_path):
    out, md = tmp_path / "overhead.json", tmp_path / "overhead.md"
    load_bench("overhead").main(["--methods", "mixup", "augmix", "--warmup", "0", "--repeats", "1",
                                 "--step-repeats", "1", "--no-preact", "--threads", "1",
                                 "--out", str(out), "--md", str(md)])
    result = json.loads(out.read_text())
    assert result["command"].startswith("python bench/overhead.py --methods mixup augmix")
    rows = result["mixing"]["rows"]
    assert {(r["method"], r["mode"]) for r in rows} == {(m, mode) for m in ("mixup", "augmix") for mode in ("batch", "elem")}
    assert all(r["mixing_ms"] > 0 and r["pass_2pct"] == (r["share_resnet20_pct"] < 2.0) for r in rows)
    assert [r["method"] for r in result["train_step"]["rows"]] == ["augmix"]  # the one with its own train_step
    page = md.read_text()
    assert "<!-- mixing:start -->" in page and "| mixup | batch |" in page
