"""torch's float32 ``log2`` against :func:`mixkit.functional.fastmath.log2_` (NumPy's SIMD kernel)
and ``power_``, on the CPU, interleaved call by call.

Usage:
    python bench/fastmath.py                      # bench/results/fastmath.json
    python bench/fastmath.py --sizes 196608 --zeros 0 0.1 --calls 300

Each case times, on the same values (uniform in (0, 1], a share ``--zeros`` of them set to 0,
at random places), a fresh copy into a work tensor followed by the operation; the copy alone
is timed too, and subtracted. Medians of ``--calls`` calls, one torch thread.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
from mixkit.functional.fastmath import log2_, power_  # noqa: E402

CASES = {
    "copy": lambda t: t,
    "torch log2": lambda t: t.log2_(),
    "fastmath.log2_": log2_,
    "torch cube root (log2, mul, exp2)": lambda t: t.log2_().mul_(1 / 3).exp2_(),
    "fastmath.power_ (cube root)": lambda t: power_(t, 1 / 3),
}


def run(size: int, zeros: float, calls: int) -> dict[str, float]:
    g = torch.Generator().manual_seed(0)
    values = torch.rand(size, generator=g).clamp_min_(1e-6)
    values[torch.rand(size, generator=g) < zeros] = 0.0
    work = torch.empty_like(values)
    times: dict[str, list[float]] = {name: [] for name in CASES}
    for i in range(calls + 10):
        for name, op in CASES.items():
            start = time.perf_counter()
            op(work.copy_(values))
            if i >= 10:
                times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(ts) * 1e6 for name, ts in times.items()}
    return {name: (us if name == "copy" else us - medians["copy"]) for name, us in medians.items()}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[49152, 196608, 1 << 20])
    ap.add_argument("--zeros", type=float, nargs="+", default=[0.0, 0.02, 0.1, 0.5])
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "fastmath.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for size in args.sizes:
        for zeros in args.zeros:
            us = run(size, zeros, args.calls)
            rows.append({"size": size, "zeros": zeros, "us": us})
            print(f"{size:>8} values, {zeros:4.0%} zeros: " + ", ".join(f"{k} {v:.1f}" for k, v in us.items()) + " (us)")
    result = {"command": "python bench/fastmath.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": platform.platform(),
              "processor": platform.processor(), "torch": torch.__version__, "numpy": np.__version__,
              "threads": 1, "calls": args.calls, "note": "microseconds per call, the copy's time subtracted",
              "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
