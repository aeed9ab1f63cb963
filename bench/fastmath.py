"""torch's float32 ``log2`` against :func:`mixkit.functional.fastmath.log2_` (NumPy's SIMD kernel)
and ``power_``, on the CPU, interleaved call by call.

Usage:
    python bench/fastmath.py                      # bench/results/fastmath.json
    python bench/fastmath.py --sizes 196608 --zeros 0 0.1 --calls 300
    python bench/fastmath.py --survey             # also torch against NumPy on other kernels

Each case times, on the same values (uniform in (0, 1], a share ``--zeros`` of them set to 0,
at random places), a fresh copy into a work tensor followed by the operation; the copy alone
is timed too, and subtracted. Medians of ``--calls`` calls, one torch thread.

``--survey`` also times torch's and NumPy's float32 kernels of the same operation on 122,880
values in (0, 1] (out= variants, no allocation in either; the sorts and ``bincount`` allocate in
both), the leads for more of :mod:`mixkit.functional.fastmath`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
from mixkit.functional.fastmath import log2_, power_  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
import microbench  # noqa: E402

CASES = {
    "copy": lambda t: t,
    "torch log2": lambda t: t.log2_(),
    "fastmath.log2_": log2_,
    "torch cube root (log2, mul, exp2)": lambda t: t.log2_().mul_(1 / 3).exp2_(),
    "fastmath.power_ (cube root)": lambda t: power_(t, 1 / 3),
}


def _survey_cases(n: int) -> dict[str, tuple]:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(n, generator=g).clamp_min_(1e-6)
    out = torch.empty_like(x)
    xn, on = x.numpy(), out.numpy()
    codes = torch.randint(0, 30720, (n,), generator=g)
    cn = codes.numpy()
    return {
        "exp": (lambda: torch.exp(x, out=out), lambda: np.exp(xn, out=on)),
        "exp2": (lambda: torch.exp2(x, out=out), lambda: np.exp2(xn, out=on)),
        "log": (lambda: torch.log(x, out=out), lambda: np.log(xn, out=on)),
        "log2": (lambda: torch.log2(x, out=out), lambda: np.log2(xn, out=on)),
        "sqrt": (lambda: torch.sqrt(x, out=out), lambda: np.sqrt(xn, out=on)),
        "pow 2.4": (lambda: torch.pow(x, 2.4, out=out), lambda: np.power(xn, np.float32(2.4), out=on)),
        "sin": (lambda: torch.sin(x, out=out), lambda: np.sin(xn, out=on)),
        "tanh": (lambda: torch.tanh(x, out=out), lambda: np.tanh(xn, out=on)),
        "atan2": (lambda: torch.atan2(x, x, out=out), lambda: np.arctan2(xn, xn, out=on)),
        "floor": (lambda: torch.floor(x, out=out), lambda: np.floor(xn, out=on)),
        "cumsum": (lambda: torch.cumsum(x, 0, out=out), lambda: np.cumsum(xn, out=on)),
        "sort (1-D)": (lambda: torch.sort(x), lambda: np.sort(xn)),
        "bincount": (lambda: torch.bincount(codes, minlength=30720), lambda: np.bincount(cn, minlength=30720)),
    }


def survey(calls: int, n: int = 122880) -> dict[str, dict[str, float]]:
    """torch's and NumPy's time (us) for each kernel of :func:`_survey_cases`, interleaved."""
    cases = _survey_cases(n)
    times: dict[str, list[list[float]]] = {name: [[], []] for name in cases}
    for i in range(calls + 3):
        for name, pair in cases.items():
            for side, op in enumerate(pair):
                start = time.perf_counter()
                op()
                if i >= 3:
                    times[name][side].append(time.perf_counter() - start)
    return {name: {"torch": statistics.median(t) * 1e6, "numpy": statistics.median(np_t) * 1e6}
            for name, (t, np_t) in times.items()}


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
    ap.add_argument("--survey", action="store_true", help="also torch against NumPy on other float32 kernels")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "fastmath.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for size in args.sizes:
        for zeros in args.zeros:
            us = run(size, zeros, args.calls)
            rows.append({"size": size, "zeros": zeros, "us": us})
            print(f"{size:>8} values, {zeros:4.0%} zeros: " + ", ".join(f"{k} {v:.1f}" for k, v in us.items()) + " (us)")
    result = microbench.header("fastmath.py", argv, numpy=np.__version__, calls=args.calls,
                               note="microseconds per call, the copy's time subtracted", rows=rows)
    if args.survey:
        result["survey"] = {"values": 122880, "us": survey(max(3, args.calls // 4))}
        for name, us in result["survey"]["us"].items():
            print(f"{name:>12}: torch {us['torch']:8.1f} us, numpy {us['numpy']:8.1f} us")
    return microbench.write(args.out, result)


if __name__ == "__main__":
    main()
