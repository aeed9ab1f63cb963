"""Render ``docs/benchmarks/method_times.md`` from the JSON files of ``bench/method_times.py``.

Usage:
    python bench/method_times_md.py [--big bench/results/method_times.json]
        [--small bench/results/method_times_32.json] [--out docs/benchmarks/method_times.md]

One row per method and mode with the 224x224 and the 32x32 medians side by side; each figure
carries the threads it ran with and, where recorded, the machine's 1-minute load average at
the time, so that figures taken on a busy machine are visibly so.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _cell(row: dict | None) -> tuple[str, str]:
    if row is None:
        return "-", "-"
    load = row.get("loadavg_1min")
    where = f"{row.get('threads', '?')} thr" + (f", load {load:.1f}" if load is not None else "")
    return f"{row['median_ms']:.1f} ({row['q1_ms']:.1f}-{row['q3_ms']:.1f})", where


def render(big: dict, small: dict) -> str:
    rows_big = {(r["method"], r["mode"]): r for r in big["rows"]}
    rows_small = {(r["method"], r["mode"]): r for r in small["rows"]}
    keys = sorted(set(rows_big) | set(rows_small))
    lines = [
        "# Method times",
        "",
        "Sampling plus mixing of one float32 batch of 128 on the CPU, forward only: median and",
        "interquartile range in milliseconds over up to 15 runs after up to 3 warm-up runs (fewer",
        "for methods slower than a second; see `repeats` in the JSON files). Feature-level methods are",
        "timed mixing the input tensor itself (their hook does the same blend). Label policies mix as",
        "the method they wrap, and the learnable mixers draw their masks from a mixer network on the",
        "model's features: neither is listed (their cost is in the training step; see",
        "`docs/benchmarks/overhead.md`).",
        f"torch {big.get('torch', '?')}, {big.get('machine', {}).get('platform', '?')}.",
        "",
        "Figures taken while other work ran on the machine's 2 cores (a load above 2) are inflated;",
        "the load column says which. This page came from (on an idle machine):",
        "`python bench/method_times.py --threads 1 --budget 10` (224x224, `bench/results/method_times.json`)",
        "and `python bench/method_times.py --threads 1 --budget 10 --size 32 --out bench/results/method_times_32.json`,",
        "then `python bench/method_times_md.py` (`make bench-times` runs them with the defaults: all threads,",
        "a 30 s budget per row).",
        "",
        "| method | mode | 224x224: median (IQR) ms | measured with | 32x32: median (IQR) ms | measured with |",
        "|---|---|---|---|---|---|",
    ]
    for key in keys:
        b, b_where = _cell(rows_big.get(key))
        s, s_where = _cell(rows_small.get(key))
        lines.append(f"| `{key[0]}` | {key[1]} | {b} | {b_where} | {s} | {s_where} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--big", default="bench/results/method_times.json")
    ap.add_argument("--small", default="bench/results/method_times_32.json")
    ap.add_argument("--out", default="docs/benchmarks/method_times.md")
    args = ap.parse_args()
    big, small = (json.loads(Path(p).read_text()) for p in (args.big, args.small))
    for data in (big, small):  # rows of older files carry the file's thread count
        for r in data["rows"]:
            r.setdefault("threads", data.get("threads"))
    Path(args.out).write_text(render(big, small))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
