"""Side-by-side operation benchmark: mixkit against timm, kornia and the PyPI ``mixup`` package.

Usage (the peers live in the benchmark environment only; ``make bench-ops`` builds it):
    sh scripts/bench-env.sh && .bench-venv/bin/python bench/ops.py
    python bench/ops.py --sizes 32 --repeats 5 --ops mixup cutmix --libs mixkit timm
    python bench/ops.py --ops mosaic --merge      # re-time one op, keep the other rows

Every row is one operation at one input size, dtype, mode ("batch": one lambda for the batch;
"elem": per sample), pass ("fwd"; "fwd+bwd": ``x.requires_grad_()``, ``out.sum().backward()``)
and device. Inputs are identical for every library of a row: ``torch.rand(B, 3, S, S)`` (seed
0) and integer labels; each library mixes the images AND the labels (mixkit builds dense soft
targets with ``MixTarget.soft()``, like timm and the ``mixup`` package). The libraries of a
row are interleaved (round-robin over repeats, rotating the order), so drift of the machine's
speed cancels in the ratios. After ``--warmup`` calls each library gets up to ``--repeats``
timed calls, fewer (at least 3; 1 for a call slower than the budget) so that a row stays within
``--budget`` seconds; median and interquartile range in milliseconds. timm works in place, so
its timed call includes ``x.clone()``; the clone alone is timed as the ``clone`` column.

After the compared operations it times every other registered mixkit method (family not
``label``) alone (``--others-dtypes``, ``--others-passes``), so the page is the one table of
op costs. A peer that cannot be imported is skipped with the reason printed and recorded.
Results: a JSON file (``--out``) and the Markdown page (``--md``, rendered by ``ops_md.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ops_md  # noqa: E402
import ops_peers  # noqa: E402
import ops_stats  # noqa: E402

import mixkit  # noqa: E402
from mixkit.functional.alloc import fresh_copy  # noqa: E402

#: the operations some peer also offers, in table order.
COMPARED = ("mixup", "cutmix", "resizemix", "fmix", "saliencymix", "puzzlemix", "mosaic")
#: mixkit options that make an operation like-for-like with the peers' (kornia's Mosaic is the
#: detection mosaic: an H x W window of the 2H x 2W grid of four whole images).
MIXKIT_OPTIONS = {"mosaic": {"placement": "corner"}}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
ALL_LIBS = ("mixkit", "timm", "kornia", "mixup")
ROW_KEYS = ("op", "size", "dtype", "mode", "pass", "device")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 224])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=sorted(DTYPES))
    ap.add_argument("--modes", nargs="+", default=["batch", "elem"], choices=["batch", "elem"])
    ap.add_argument("--passes", nargs="+", default=["fwd", "fwd+bwd"], choices=["fwd", "fwd+bwd"])
    ap.add_argument("--ops", nargs="+", default=None, help="operations / mixkit methods (default: all)")
    ap.add_argument("--libs", nargs="+", default=list(ALL_LIBS), choices=ALL_LIBS)
    ap.add_argument("--others", action=argparse.BooleanOptionalAction, default=True,
                    help="also time the mixkit methods no peer offers (default: yes)")
    ap.add_argument("--others-dtypes", nargs="+", default=["float32"], choices=sorted(DTYPES))
    ap.add_argument("--others-passes", nargs="+", default=["fwd"], choices=["fwd", "fwd+bwd"])
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--budget", type=float, default=10.0, help="seconds per row, roughly")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="cpu: the process's CPU time, robust on a busy machine; needs --threads 1 (CUDA: wall)")
    ap.add_argument("--devices", nargs="+", default=None, help="default: cpu, and cuda when available")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="bench/results/ops.json")
    ap.add_argument("--md", default="docs/benchmarks/ops.md", help="Markdown page to render ('' for none)")
    ap.add_argument("--merge", action="store_true", help="keep the rows of --out that this run does not re-time")
    return ap.parse_args(argv)


# ------------------------------------------------------------------------------- environment
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(peers: ops_peers.Peers) -> dict:
    import numpy

    versions = {"torch": torch.__version__, "numpy": numpy.__version__, "mixkit": ops_peers._version("mixkit"),
                "kornia_rs": ops_peers._version("kornia_rs")}
    versions.update(peers.versions or {})
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "gpu": gpu, "platform": platform.platform(),
            "python": platform.python_version(), "threads": torch.get_num_threads(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "thp_mem_alloc_enable": os.environ.get("THP_MEM_ALLOC_ENABLE"), "versions": versions}


# ---------------------------------------------------------------------------------- mixkit
def mixkit_call(name: str, mode: str, y: torch.Tensor, num_classes: int, g: torch.Generator,
                inplace: bool = False) -> Callable:
    """``call(x)``: mixkit's ``method(x, y)`` and its dense soft target (or, for feature-level
    methods that need a model, ``sample`` then ``apply`` on ``x`` itself). ``inplace``: the
    method built with ``inplace=True``, mixing a tensor of its own again at every call."""
    info = mixkit.method_info(name)
    options = dict(MIXKIT_OPTIONS.get(name, {}))
    if "mode" in info.defaults:
        options["mode"] = mode
    if "num_classes" in info.defaults:
        options["num_classes"] = num_classes
    if inplace:
        options["inplace"] = True
    method = mixkit.create(name, **options)
    if "model" in info.needs:
        return lambda x: method.apply(x, method.sample(x, y, generator=g))
    dense = [True]
    own: list[torch.Tensor] = []

    def call(x: torch.Tensor) -> torch.Tensor:
        if inplace:
            if not own:
                own.append(x.detach().clone())
            x = own[0]
        out = method(x, y, generator=g)
        if dense[0]:
            try:
                out.target.soft(num_classes)
            except Exception:  # noqa: BLE001 - a target without a dense form: time the mix alone
                dense[0] = False
        return out.x

    return call


def mixkit_modes(name: str) -> tuple[str, ...]:
    return ("batch", "elem") if "mode" in mixkit.method_info(name).defaults else ("batch",)


# ----------------------------------------------------------------------------------- timing
def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _runner(call: Callable, x: torch.Tensor, pass_: str, device: str, fwd_only: bool) -> Callable[[], tuple]:
    """A function that runs ``call`` once in ``pass_`` and returns its ``(wall, cpu)`` seconds
    (cpu: the process's CPU time, a contention-proof clock when torch runs on one thread)."""
    leaf = None if pass_ == "fwd" or fwd_only else x.detach().clone().requires_grad_()

    def run() -> tuple[float, float]:
        if leaf is not None:
            leaf.grad = None
        _sync(device)
        wall, cpu = time.perf_counter(), time.process_time()
        out = call(x if leaf is None else leaf)
        if leaf is not None:
            if not out.requires_grad:
                raise TypeError("output does not require grad: not differentiable")
            out.sum().backward()
        _sync(device)
        return time.perf_counter() - wall, time.process_time() - cpu
    return run


def time_row(runners: dict[str, Callable[[], tuple]], warmup: int, repeats: int, budget: float) -> dict[str, dict]:
    """Warm each library up, then time them round-robin with a rotating order;
    ``{lib: {"wall": [ms...], "cpu": [ms...]} or {"error": reason}}``."""
    results: dict[str, dict] = {}
    first: dict[str, float] = {}
    for lib, run in runners.items():
        try:
            first[lib] = run()[0]
            for _ in range(warmup - 1 if first[lib] < 1.0 else 0):
                run()
            results[lib] = {"wall": [], "cpu": []}
        except Exception as exc:  # noqa: BLE001 - a library that fails on this row is reported
            results[lib] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"}
    live = [lib for lib in runners if "error" not in results[lib]]
    share = budget / max(len(live), 1)
    wanted = {lib: 1 if first[lib] > share else max(min(3, repeats), min(repeats, int(share / max(first[lib], 1e-9))))
              for lib in live}
    for r in range(max(wanted.values(), default=0)):
        order = live[r % len(live):] + live[:r % len(live)]
        for lib in order:
            if r < wanted[lib]:
                wall, cpu = runners[lib]()
                results[lib]["wall"].append(wall * 1000)
                results[lib]["cpu"].append(cpu * 1000)
    return results


def summarise(times: list[float]) -> dict:
    med = statistics.median(times)
    q1, q3 = (statistics.quantiles(times, n=4)[::2] if len(times) >= 2 else (med, med))
    return {"median_ms": med, "q1_ms": q1, "q3_ms": q3, "repeats": len(times)}


# ------------------------------------------------------------------------------------- rows
def make_input(size: int, dtype: str, device: str, batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 3, size, size, generator=g).to(device=device, dtype=DTYPES[dtype])
    y = torch.randint(0, 10 if size <= 64 else 1000, (batch,), generator=g).to(device)
    return x, y


def row_calls(key: dict, y: torch.Tensor, num_classes: int, libs: list[str], peers: ops_peers.Peers,
              g: torch.Generator) -> tuple[dict[str, Callable], dict[str, str]]:
    """The calls of every library offering the row's op in its mode, and the n/a reasons."""
    op, mode, compared = key["op"], key["mode"], key["group"] == "compared"
    calls, missing = {}, {}
    if "mixkit" in libs:
        if op in mixkit.list_methods() and "mixer" in mixkit.method_info(op).needs:
            missing["mixkit"] = "needs its model and mixer network: its cost is in the training step"
        elif op in mixkit.list_methods() and mode in mixkit_modes(op):
            calls["mixkit"] = mixkit_call(op, mode, y, num_classes, g)
        else:
            missing["mixkit"] = "not in mixkit" if op not in mixkit.list_methods() else f"no {mode} mode"
    if compared:
        for lib in ops_peers.PEER_LIBS:
            if lib.split("_")[0] in libs:
                call = ops_peers.build_peer(peers, lib, op, mode, y, num_classes)
                too_slow = ops_peers.backward_too_slow(lib, op, key["size"]) if key["pass"] != "fwd" else None
                if call is not None and too_slow:
                    missing[lib] = too_slow
                elif call is not None:
                    calls[lib] = call
        if any(lib.startswith("timm") for lib in calls):
            calls["clone"] = lambda x: x.detach().clone()
            calls["fresh"] = lambda x: fresh_copy(x.detach())  # mixkit's cheapest fresh copy of the batch
        if key["pass"] == "fwd" and "mixkit" in calls and "inplace" in mixkit.method_info(op).defaults:
            calls["mixkit_inplace"] = mixkit_call(op, mode, y, num_classes, g, inplace=True)
            if "timm" in libs and (call := ops_peers.timm_inplace(peers, op, mode, y, num_classes)) is not None:
                calls["timm_inplace"] = call
                calls["copy"] = copy_call()
    return calls, missing


def copy_call() -> Callable:
    """``own.copy_(x)`` into a tensor kept across calls: one read and one write of the batch,
    the least an in-place mix can cost (the ``copy`` column)."""
    own: list[torch.Tensor] = []

    def call(x: torch.Tensor) -> torch.Tensor:
        if not own:
            own.append(torch.empty_like(x))
        return own[0].copy_(x)
    return call


def run_row(key: dict, calls: dict[str, Callable], args: argparse.Namespace, x: torch.Tensor) -> list[dict]:
    runners = {lib: _runner(c, x, key["pass"], key["device"], fwd_only=(lib in ("clone", "fresh", "copy"))) for lib, c in calls.items()}
    results = time_row(runners, args.warmup, args.repeats, args.budget)
    clock = "wall" if key["device"] != "cpu" else args.clock
    stamp = {"measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "loadavg_1min": os.getloadavg()[0],
             "threads": torch.get_num_threads()}
    rows = []
    for lib, res in results.items():
        if "error" in res:
            status = "n/a" if "not differentiable" in res["error"] else "error"
            rows.append({**key, "lib": lib, "status": status, "reason": res["error"], **stamp})
        else:
            wall = statistics.median(res["wall"])
            rows.append({**key, "lib": lib, "status": "ok", **summarise(res[clock]), "clock": clock,
                         "wall_median_ms": wall, **stamp, **paired(lib, results, clock)})
    return rows


#: whom each mixkit call is paired with, round by round (:mod:`ops_stats`)
PAIRED_WITH = {"mixkit": ops_peers.PEER_LIBS, "mixkit_inplace": ("timm_inplace",)}


def paired(lib: str, results: dict[str, dict], clock: str) -> dict:
    """``{"paired": {peer: ops_stats.paired_ratio(...)}}`` for a mixkit call (mine / theirs per
    round, interval of the median), ``{}`` for the others."""
    mine = results[lib][clock]
    out = {peer: ops_stats.paired_ratio(mine, results[peer][clock]) for peer in PAIRED_WITH.get(lib, ())
           if peer in results and "error" not in results[peer]}
    out = {peer: p for peer, p in out.items() if p is not None}
    return {"paired": out} if out else {}


def plan(args: argparse.Namespace) -> list[tuple[str, bool]]:
    """``(op, compared)`` pairs to time, in order."""
    others = [n for n in mixkit.list_methods() if mixkit.method_info(n).family != "label" and n not in COMPARED]
    wanted = set(args.ops) if args.ops else None
    if wanted:
        unknown = wanted - set(COMPARED) - set(others)
        if unknown:
            raise SystemExit(f"unknown ops {sorted(unknown)}; choose from {list(COMPARED) + others}")
    ops = [(op, True) for op in COMPARED if wanted is None or op in wanted]
    if args.others and "mixkit" in args.libs:
        ops += [(op, False) for op in others if wanted is None or op in wanted]
    return ops


def print_row(key: dict, rows: list[dict]) -> None:
    cells = [f"{r['lib']} {r['median_ms']:.2f}" if r["status"] == "ok" else f"{r['lib']} {r['status']}" for r in rows]
    print(f"{key['op']:14s} {key['size']:4d} {key['dtype']:8s} {key['mode']:5s} {key['pass']:7s} {key['device']:4s} | "
          + " | ".join(cells), flush=True)


def save(args: argparse.Namespace, argv: list[str] | None, peers: ops_peers.Peers, rows: list[dict],
         kept: list[dict], load_before: tuple, start: float, complete: bool) -> dict:
    """Write the JSON file (after every row, so that an interrupted run keeps its rows)."""
    command = "python bench/ops.py " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    earlier = []
    if args.merge and kept and Path(args.out).exists():
        old = json.loads(Path(args.out).read_text())
        earlier = [c for c in old.get("commands", [old.get("command")]) if c and c != command]
    result = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "complete": complete,
        "command": command,
        "commands": earlier + [command],
        "machine": environment(peers),
        "loadavg_before": list(load_before), "loadavg_after": list(os.getloadavg()),
        "duration_s": round(time.perf_counter() - start, 1),
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "md", "merge")},
        "skipped_peers": peers.reasons, "notes": ops_peers.NOTES, "mixkit_options": MIXKIT_OPTIONS,
        "rows": kept + rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    return result


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.clock == "cpu" and torch.get_num_threads() != 1:
        raise SystemExit("--clock cpu measures one thread's work: use it with --threads 1")
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    peers = ops_peers.load_peers([lib for lib in args.libs if lib != "mixkit"])
    for lib, reason in (peers.reasons or {}).items():
        print(f"skipping {lib}: {reason}", flush=True)
    ops_peers.seed_peers(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    load_before, start = os.getloadavg(), time.perf_counter()
    rows: list[dict] = []
    kept = json.loads(Path(args.out).read_text())["rows"] if args.merge and Path(args.out).exists() else []
    todo = set()
    for device in devices:
        for size in args.sizes:
            num_classes = 10 if size <= 64 else 1000
            for op, compared in plan(args):
                dtypes = args.dtypes if compared else args.others_dtypes
                passes = args.passes if compared else args.others_passes
                for dtype in dtypes:
                    x, y = make_input(size, dtype, device, args.batch, args.seed)
                    for mode in args.modes:
                        for pass_ in passes:
                            key = {"op": op, "size": size, "dtype": dtype, "mode": mode, "pass": pass_,
                                   "device": device, "group": "compared" if compared else "mixkit-only"}
                            calls, missing = row_calls(key, y, num_classes, args.libs, peers, g)
                            mixer_na = not compared and "mixer" in missing.get("mixkit", "")
                            if not calls and not mixer_na and set(missing) <= {"mixkit"}:
                                continue
                            row = [{**key, "lib": lib, "status": "n/a", "reason": why} for lib, why in missing.items()]
                            row += run_row(key, calls, args, x)
                            print_row(key, row)
                            rows += row
                            todo.add(tuple(key[k] for k in ROW_KEYS))
                            kept = [r for r in kept if tuple(r[k] for k in ROW_KEYS) not in todo]
                            save(args, argv, peers, rows, kept, load_before, start, complete=False)
    result = save(args, argv, peers, rows, kept, load_before, start, complete=True)
    print(f"wrote {args.out} ({result['duration_s']} s)")
    if args.md:
        Path(args.md).parent.mkdir(parents=True, exist_ok=True)
        Path(args.md).write_text(ops_md.render(result))
        print(f"wrote {args.md}")
    return result


if __name__ == "__main__":
    main()
