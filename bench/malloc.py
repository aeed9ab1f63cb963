"""Mixing with glibc's default allocation and with :func:`mixkit.functional.alloc.keep_freed_memory`.

Usage:
    python bench/malloc.py                         # writes bench/results/malloc.json
    python bench/malloc.py --size 64 --repeats 3 --methods hmix:elem mosaic:elem --no-step

Two settings, each in a process of its own (the setting is process-wide and cannot be undone):
``default`` (glibc maps every block above 32 MiB afresh and trims its heap) and
``keep_freed`` (``keep_freed_memory()`` called first: every block from the heap, never
trimmed). Each process times, on one thread with the process's CPU clock, the median of
``--repeats`` calls of each ``name:mode`` method (``name:-`` for a method without modes) on a
``(128, 3, S, S)`` float32 batch, with the page faults per call (``ru_minflt``), and a
ResNet-20 training step at 32x32 (``--no-step`` to skip). Writes both settings and the
machine to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

#: the methods whose per-call page faults at 224x224 were the most (see the README's Speed section)
METHODS = ("hmix:elem", "stackmix:batch", "yoco:elem", "recursivemix:elem", "mosaic:elem", "k_mixup:batch",
           "ricap:elem", "dcutmix:elem", "pixmix:-", "mixup:batch", "cutmix:elem")
SETTINGS = ("default", "keep_freed")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=224, help="side of the (128, 3, S, S) batch")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), help="name:mode (name:- without modes)")
    ap.add_argument("--step", action=argparse.BooleanOptionalAction, default=True,
                    help="also time a ResNet-20 training step at 32x32")
    ap.add_argument("--out", default="bench/results/malloc.json")
    ap.add_argument("--child", choices=SETTINGS, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def _faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _timed(fn, repeats: int) -> dict[str, float]:
    """Median CPU ms and page faults per call of ``fn`` after two warm-up calls."""
    fn()
    fn()
    times, start_faults = [], _faults()
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append((time.process_time() - start) * 1000)
    return {"ms": sorted(times)[len(times) // 2], "faults_per_call": (_faults() - start_faults) / repeats}


def measure(args: argparse.Namespace) -> dict:
    """The figures of this process, in setting ``args.child``."""
    import torch

    import mixkit
    from mixkit.functional.alloc import keep_freed_memory

    applied = keep_freed_memory() if args.child == "keep_freed" else None
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(128, 3, args.size, args.size, generator=g)
    y = torch.randint(0, 1000, (128,), generator=g)
    out: dict = {"applied": applied, "methods": {}}
    for spec in args.methods:
        name, _, mode = spec.partition(":")
        info = mixkit.method_info(name)
        options = {"num_classes": 1000} if "num_classes" in info.defaults else {}
        if mode not in ("", "-"):
            options["mode"] = mode
        method = mixkit.create(name, **options)
        out["methods"][spec] = _timed(lambda m=method: m(x, y, generator=g), args.repeats)
    if args.step:
        from thp import resnet20_step  # bench/thp.py, beside this script

        out["resnet20_step"] = _timed(resnet20_step(g), max(3, args.repeats))
    return out


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(measure(args)))
        return {}
    flags = [f"--size={args.size}", f"--repeats={args.repeats}", "--step" if args.step else "--no-step",
             "--methods", *args.methods]
    result: dict = {"command": "python " + " ".join([sys.argv[0]] + (argv if argv is not None else sys.argv[1:])),
                    "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
                    "batch": [128, 3, args.size, args.size], "clock": "process CPU time, 1 thread", "settings": {}}
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    for name in SETTINGS:
        print(f"{name}: measuring...", flush=True)
        done = subprocess.run([sys.executable, __file__, *flags, f"--child={name}"], env=env, capture_output=True,
                              text=True, check=True)
        result["settings"][name] = json.loads(done.stdout.strip().splitlines()[-1])
        for spec, figures in result["settings"][name]["methods"].items():
            print(f"  {spec:22s} {figures['ms']:8.1f} ms  {figures['faults_per_call']:9.0f} faults/call", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
