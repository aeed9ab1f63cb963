"""Copies between memory layouts: torch's ``copy_`` against :func:`mixkit.functional.layout.copy_into`.

Usage:
    python bench/layout.py                        # bench/results/layout.json
    python bench/layout.py --sizes 32 --dtypes float32 --calls 100

Each case copies a ``(--batch, 3, S, S)`` batch from contiguous to channels_last and back
into a tensor kept across calls (no allocation), with torch's ``dst.copy_(src)`` and with
``copy_into(dst, src)`` (float32 and float64 moved as same-width integers), interleaved call
by call so that the machine's drift cancels. ``--cold`` touches 32 MiB between calls (the
caches hold none of the batch, as after a training step). Medians in microseconds, one torch
thread; the ratio is copy_into / copy_.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
from mixkit.functional.layout import copy_into  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
import microbench  # noqa: E402

DIRECTIONS = {"contiguous -> channels_last": (torch.contiguous_format, torch.channels_last),
              "channels_last -> contiguous": (torch.channels_last, torch.contiguous_format)}


def run(batch: int, size: int, dtype: torch.dtype, calls: int, cold: bool) -> list[dict]:
    src0 = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0)).to(dtype)
    junk = torch.empty(8 << 20) if cold else None
    rows = []
    for name, (src_fmt, dst_fmt) in DIRECTIONS.items():
        src = src0.contiguous(memory_format=src_fmt)
        dst = torch.empty_like(src, memory_format=dst_fmt)
        sides = {"copy_": lambda: dst.copy_(src), "copy_into": lambda: copy_into(dst, src)}
        times: dict[str, list[float]] = {k: [] for k in sides}
        for i in range(calls + 3):
            for k, op in (sides.items() if i % 2 else reversed(sides.items())):
                if junk is not None:
                    junk.add_(1.0)
                start = time.perf_counter()
                op()
                if i >= 3:
                    times[k].append(time.perf_counter() - start)
        us = {k: statistics.median(v) * 1e6 for k, v in times.items()}
        assert torch.equal(dst, src)
        rows.append({"direction": name, "size": size, "dtype": str(dtype).replace("torch.", ""), "cold": cold,
                     "us": us, "ratio": us["copy_into"] / us["copy_"]})
    return rows


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 224])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--dtypes", nargs="+", default=["float32", "float64", "bfloat16"],
                    choices=["float32", "float64", "bfloat16", "float16"])
    ap.add_argument("--calls", type=int, default=60, help="timed calls per case (224 x 224: a tenth, at least 3)")
    ap.add_argument("--cold", action="store_true", help="touch 32 MiB between calls")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "layout.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for size in args.sizes:
        for dt in args.dtypes:
            calls = args.calls if size < 128 else max(3, args.calls // 10)
            for row in run(args.batch, size, getattr(torch, dt), calls, args.cold):
                rows.append(row)
                print(f"{size:>4} {dt:>8} {row['direction']:<28} copy_ {row['us']['copy_']:9.1f} us, "
                      f"copy_into {row['us']['copy_into']:9.1f} us, ratio {row['ratio']:.2f}", flush=True)
    result = microbench.header("layout.py", argv, batch=args.batch,
                               note="median microseconds per copy; ratio = copy_into / copy_", rows=rows)
    return microbench.write(args.out, result)


if __name__ == "__main__":
    main()
