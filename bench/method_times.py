"""Time every registered method on one batch: sampling plus mixing, forward only.

Usage:
    python bench/method_times.py [--size 224] [--batch 128] [--repeats 15] [--out bench/results/method_times.json]
    python bench/method_times.py --methods pixmix augmix   # re-time some methods, keep the other rows

Label policies (family ``label``) mix as the method they wrap, and the learnable mixers
(``needs`` a ``mixer``) draw their masks from a mixer network on the model's features, so
neither is timed here (their cost is in the training step; see ``bench/learnable_step.py``). A method whose first call takes long gets fewer
repeats (at least 3) so that each (method, mode) stays within ``--budget`` seconds. Each row
records when it was measured and the machine's load average then.

For each method and mode ("batch", "elem") it runs ``method(x, y)`` (``method.sample`` then
``method.apply``, for feature-level methods the mix of the input itself) ``--warmup`` times,
then ``--repeats`` times, and records the median and the interquartile range in
milliseconds, with the thread count, torch version and machine. Results go to a JSON file
and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

import mixkit


def time_call(fn, warmup: int, repeats: int, budget: float = 30.0) -> list[float]:
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    for _ in range(warmup - 1 if first < 1.0 else 0):
        fn()
    repeats = max(3, min(repeats, int(budget / max(first, 1e-6))))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return times


def make_call(name: str, mode: str, x: torch.Tensor, y: torch.Tensor, g: torch.Generator):
    options = {"mode": mode} if "mode" in mixkit.method_info(name).defaults else {}
    method = mixkit.create(name, **options)
    if "model" in mixkit.method_info(name).needs:  # time the feature mix itself, on x
        def call():
            params = method.sample(x, y, generator=g)
            return method.apply(x, params)
    else:
        def call():
            return method(x, y, generator=g).x
    return call


def timed_methods() -> list[str]:
    """Every registered method but the label policies and the learnable mixers."""
    return [n for n in mixkit.list_methods()
            if mixkit.method_info(n).family != "label" and "mixer" not in mixkit.method_info(n).needs]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--methods", nargs="*", default=None)
    parser.add_argument("--budget", type=float, default=30.0, help="seconds per (method, mode), roughly")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default="bench/results/method_times.json")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    g = torch.Generator().manual_seed(0)
    x = torch.rand(args.batch, 3, args.size, args.size, generator=g)
    y = torch.randint(0, 10, (args.batch,), generator=g)
    rows = []
    names = args.methods or timed_methods()
    out = Path(args.out)
    kept = []
    if args.methods and out.exists():  # keep the rows of the methods not re-timed
        kept = [r for r in json.loads(out.read_text())["rows"] if r["method"] not in set(args.methods)]
    for name in names:
        modes = ("batch", "elem") if "mode" in mixkit.method_info(name).defaults else ("batch",)
        for mode in modes:
            t = time_call(make_call(name, mode, x, y, g), args.warmup, args.repeats, args.budget)
            q = statistics.quantiles(t, n=4) if len(t) > 1 else [t[0]] * 3
            rows.append({"method": name, "mode": mode, "median_ms": statistics.median(t), "q1_ms": q[0], "q3_ms": q[2],
                         "repeats": len(t), "threads": torch.get_num_threads(),
                         "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "loadavg_1min": os.getloadavg()[0]})
            print(f"{name:16s} {mode:5s} median {rows[-1]['median_ms']:8.1f} ms  IQR [{q[0]:.1f}, {q[2]:.1f}]", flush=True)
        write(out, x, args, kept + rows)  # after every method: an interrupted run keeps its rows
    rows = write(out, x, args, kept + rows)
    print("\n| method | mode | median (ms) | IQR (ms) |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['mode']} | {r['median_ms']:.1f} | {r['q1_ms']:.1f}-{r['q3_ms']:.1f} |")
    print(f"\nwrote {out}")


def write(out: Path, x: torch.Tensor, args: argparse.Namespace, rows: list[dict]) -> list[dict]:
    """The rows (in registry order) and the settings, to ``out``; returns the rows."""
    order = {n: i for i, n in enumerate(mixkit.list_methods())}
    rows = sorted(rows, key=lambda r: (order.get(r["method"], 1 << 20), r["mode"]))
    result = {
        "input": {"shape": list(x.shape), "dtype": str(x.dtype), "device": str(x.device)},
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "python": platform.python_version()},
        "warmup": args.warmup,
        "repeats": args.repeats,
        "rows": rows,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()
