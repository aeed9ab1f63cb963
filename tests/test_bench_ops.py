"""bench/ops.py runs end to end on a tiny input (mixkit only, one repeat) and writes its JSON
rows and Markdown page."""

from __future__ import annotations

import json

from conftest import load_bench


def test_ops_benchmark_tiny_run(tmp_path):
    ops = load_bench("ops")
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


def test_summary_counts_targets_and_bounds_out_of_place_elem_rows():
    def row(size, lib, ms, mode="elem"):
        return {"op": "mixup", "size": size, "dtype": "float32", "mode": mode, "pass": "fwd", "device": "cpu",
                "group": "compared", "lib": lib, "status": "ok", "median_ms": ms}

    rows = [row(32, "mixkit", 1.0), row(32, "timm", 8.0), row(32, "clone", 0.2),  # 8x; 40 clones: reachable
            row(224, "mixkit", 70.0), row(224, "timm", 160.0), row(224, "clone", 60.0),  # 2.3x; 2.7 clones
            row(32, "mixkit", 0.5, "batch"), row(32, "timm", 0.4, "batch")]
    lines = load_bench("ops_md").summary(rows)
    assert "**2 of 3** rows" in lines[0] and "mixup 32 batch fwd (1.25)" in lines[0].replace(" float32", "")
    assert "**0 of 2** rows at least 10 times faster" in lines[1]
    assert len(lines) == 3 and "mixup 224 float32 elem fwd 2.7x" in lines[2] and " 32 " not in lines[2]
    # the cheaper fresh copy, where recorded, bounds it instead of the clone
    lines = load_bench("ops_md").summary(rows + [row(224, "fresh", 20.0)])
    assert "mixup 224 float32 elem fwd 8.0x" in lines[2]
    # a fresh copy under a tenth of timm's time: reachable (160 / 15 = 10.7x), not listed as out of reach
    lines = load_bench("ops_md").summary(rows + [row(224, "fresh", 15.0), row(224, "copy", 8.0)])
    assert len(lines) == 2 and "mixup 224 float32 elem fwd (2.3x)" in lines[1]


def test_summary_in_place_elem_rows_and_the_copy_bound():
    def row(op, size, lib, ms):
        return {"op": op, "size": size, "dtype": "float32", "mode": "elem", "pass": "fwd", "device": "cpu",
                "group": "compared", "lib": lib, "status": "ok", "median_ms": ms}

    rows = [row("mixup", 224, lib, ms) for lib, ms in
            (("mixkit", 70.0), ("timm", 160.0), ("mixkit_inplace", 20.0), ("timm_inplace", 100.0), ("copy", 12.5))]
    rows += [row("cutmix", 224, lib, ms) for lib, ms in
             (("mixkit", 80.0), ("timm", 140.0), ("mixkit_inplace", 26.0), ("timm_inplace", 84.0), ("copy", 12.0))]
    lines = load_bench("ops_md").summary(rows)
    line = next(s for s in lines if s.startswith("- Per-sample mode in place"))
    assert "**0 of 2**" in line and "mixup 224 float32 elem fwd 5.0x" in line
    # a copy bounds the blend (100 / 12.5 = 8.0x), not CutMix, which need not rewrite the whole batch
    assert "(timm in place / copy: mixup 224 float32 elem fwd 8.0x)" in line and "cutmix 224 float32 elem fwd 7.0x" not in line


def test_median_interval_is_the_order_statistic_interval():
    stats = load_bench("ops_stats")
    lo, hi, coverage = stats.median_interval([float(v) for v in range(10, 0, -1)])
    assert (lo, hi) == (2.0, 9.0) and abs(coverage - (1 - 2 * 11 / 1024)) < 1e-12  # n = 10: x(2), x(9), 97.9%
    assert stats.median_interval([float(v) for v in range(1, 52)])[:2] == (19.0, 33.0)  # n = 51
    assert stats.median_interval([3.0, 1.0, 2.0]) == (1.0, 3.0, 0.75)  # too few for 95%: the range


def test_paired_ratio_pairs_rounds_and_gives_a_verdict():
    stats = load_bench("ops_stats")
    drift = [1.0, 3.0, 1.5, 2.5, 1.2, 2.8, 1.1, 2.0, 1.4, 2.2]  # the machine's speed, round by round
    slower = stats.paired_ratio([1.1 * d for d in drift], drift + [9.0])  # the extra round has no partner
    assert slower["rounds"] == 10 and abs(slower["median"] - 1.1) < 1e-12 and stats.verdict(slower) == "slower"
    noisy = stats.paired_ratio([d * f for d, f in zip(drift, [0.9, 1.1] * 5)], drift)
    assert noisy["ci_lo"] < 1 < noisy["ci_hi"] and stats.verdict(noisy) == "within noise"
    assert stats.verdict(stats.paired_ratio([0.5 * d for d in drift], drift)) == "faster"
    assert stats.paired_ratio([], drift) is None and stats.verdict(None) == ""
    assert stats.verdict(stats.paired_ratio([0.5, 0.5, 0.5], [1.0, 1.0, 1.0])) == "few rounds"  # 75% coverage


def test_summary_and_table_show_the_paired_interval():
    def row(lib, ms, pairs=None):
        r = {"op": "cutmix", "size": 32, "dtype": "float32", "mode": "batch", "pass": "fwd", "device": "cpu",
             "group": "compared", "lib": lib, "status": "ok", "median_ms": ms}
        return {**r, "paired": pairs} if pairs else r

    within = {"median": 1.05, "ci_lo": 0.97, "ci_hi": 1.12, "coverage": 0.95, "rounds": 51}
    rows = [row("mixkit", 0.68, {"timm": within, "mixup": {**within, "ci_lo": 0.7, "ci_hi": 0.8}}),
            row("timm", 0.63), row("mixup", 0.82)]
    md = load_bench("ops_md")
    lines = md.summary(rows)
    # paired with the fastest peer (timm), not with the PyPI mixup
    assert "cutmix 32 float32 batch fwd (1.08; paired [0.97, 1.12]: within noise)" in lines[0]
    assert "within noise in 1, slower beyond noise in 0 of 1 rows." in lines[1]
    assert "| **1.08** [0.97, 1.12] |" in "\n".join(md.compared_table(rows))
