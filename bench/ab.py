"""Old code against new, in one process: the before/after of a speed change, drift-proof.

Usage:
    python bench/ab.py --ref f77bc2c --methods mixup:batch cutmix:elem --size 224
    python bench/ab.py --ref HEAD~3 --methods gmix:elem --size 224 --rounds 20 --channels-last
    python bench/ab.py --ref HEAD --methods cutmix:batch --size 32 --dtype bfloat16 --backward
    python bench/ab.py --ref HEAD~1 --methods augmix:batch --size 32 --channels-last --normalize
    python bench/ab.py --ref HEAD~1 --methods cutmix:batch mixup:batch --size 32 --inplace
    python bench/ab.py --ref HEAD~1 --methods augmix:batch --size 32 --normalize --channels-last --evict
    python bench/ab.py --ref HEAD~1 --methods pixmix:batch --data fashion_mnist --normalize --channels-last

This machine's speed drifts by up to 2x within minutes, so timings from two processes (or two
runs) of the same code can differ more than a change does. This script extracts ``src/mixkit``
at ``--ref`` with ``git archive``, renames the package to ``mixkit_ref`` (every ``mixkit``
word in its sources), imports it beside the working tree's ``mixkit``, and times each
``name:mode`` call of both interleaved round by round (the order alternating), on one thread
with the process's CPU clock. It reports each side's median, the paired per-round ratio
new / ref with its 95% interval (``ops_stats.paired_ratio``), and whether both sides give the
same output (``torch.equal`` on the mixed batch and the target weights, same seeds), with
the median page faults per call of each side (``ru_minflt``: a fresh large tensor faults
each 4 KiB page in when first written).
``--backward`` times the forward and ``out.x.sum().backward()`` (as ``bench/ops.py``'s
fwd+bwd), and the output check also compares the input gradients. ``--inplace`` builds the
methods with ``inplace=True``: each side mixes a tensor of its own, overwritten at every call,
and the timed call includes ``out.target.soft()`` (``bench/ops.py``'s in-place columns); the
output check compares the first call's results.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import resource
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT / "src"))
import ops_stats  # noqa: E402

import mixkit  # noqa: E402
from mixkit.data import dataset_stats, load_dataset  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ref", required=True, help="git revision of the old code (e.g. a commit, HEAD~2)")
    ap.add_argument("--methods", nargs="+", required=True, help="name:mode pairs (mode batch or elem)")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16", "float64", "uint8"),
                    help="uint8: 8-bit pixels (methods that take integer images; not with --normalize)")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--backward", action="store_true", help="time forward + out.x.sum().backward()")
    ap.add_argument("--inplace", action="store_true",
                    help="build the methods with inplace=True (Mixup, CutMix): each side mixes a tensor of its own, "
                         "overwritten at every call, and the call includes the dense target (.soft()), as "
                         "bench/ops.py's in-place columns")
    ap.add_argument("--normalize", action="store_true",
                    help="give both sides an input normalisation (set_input_normalization), as the training engine and "
                         "bench/overhead.py do: CIFAR-10's, the batch staying torch.rand; with --data, that data set's")
    ap.add_argument("--data", default=None, choices=("fashion_mnist", "cifar10"),
                    help="mix real images instead of torch.rand: --batch test images evenly spaced through the "
                         "split, at their own size (--size is ignored), with their labels; with --normalize, "
                         "normalised by that data set's statistics, which both sides are given")
    ap.add_argument("--evict", action="store_true",
                    help="copy 32 MiB into another 32 MiB before each timed call (not timed), so that every call starts with the "
                         "caches cold, as after a training step (bench/overhead.py's rounds)")
    ap.add_argument("--out", default=None, help="also write the results to this JSON file")
    return ap.parse_args(argv)


def evictor(on: bool) -> object:
    """A call that pushes the last-level cache out: a 32 MiB copy, 64 MiB touched (this machine's L3 is 32 MiB)."""
    if not on:
        return lambda: None
    src, dst = torch.ones(8 << 20, dtype=torch.float32), torch.empty(8 << 20, dtype=torch.float32)
    return lambda: dst.copy_(src)


def load_ref(ref: str, into: Path) -> object:
    """``src/mixkit`` at ``ref``, imported as the package ``mixkit_ref``."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "src/mixkit"], check=True,
                             capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    package = into / "mixkit_ref"
    (into / "src" / "mixkit").rename(package)
    for path in package.rglob("*.py"):
        path.write_text(re.sub(r"\bmixkit\b", "mixkit_ref", path.read_text()))
    for loaded in [m for m in sys.modules if m == "mixkit_ref" or m.startswith("mixkit_ref.")]:
        del sys.modules[loaded]  # an earlier call's revision
    sys.path.insert(0, str(into))
    try:
        import mixkit_ref
    finally:
        sys.path.remove(str(into))
    return mixkit_ref


def make_batch(args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor, object]:
    """The batch, its labels and the normalisation the methods get (``--normalize``):
    ``torch.rand`` with CIFAR-10's statistics, or ``--data``'s test images (normalised by its own)."""
    dtype = getattr(torch, args.dtype)
    if dtype == torch.uint8 and args.normalize:
        raise SystemExit("--dtype uint8 holds pixels: it cannot be combined with --normalize")
    if args.data is None:
        g = torch.Generator().manual_seed(0)
        x = torch.rand(args.batch, 3, args.size, args.size, generator=g)
        x = x.mul_(255).round_().to(dtype) if dtype == torch.uint8 else x.to(dtype)
        y = torch.randint(0, 10, (args.batch,), generator=g)
        stats = dataset_stats("cifar10")
    else:
        data = load_dataset(args.data, split="test")
        if len(data) < args.batch:
            raise SystemExit(f"--data {args.data}: {len(data)} test images, fewer than --batch {args.batch}")
        rows = torch.arange(args.batch) * (len(data) // args.batch)  # evenly spaced: every class
        x, y = data.images[rows].float().div_(255), data.labels[rows]
        if dtype == torch.uint8:
            x = data.images[rows].clone()
        stats = dataset_stats(args.data)
        if args.normalize:
            mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in stats)
            x = x.sub_(mean).div_(std)
        x = x.to(dtype)
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y, stats


def compare(name: str, mode: str, ref: object, args: argparse.Namespace) -> dict:
    x, y, stats = make_batch(args)
    opts = {"mode": mode} if "mode" in mixkit.method_info(name).defaults else {}
    if args.inplace:
        if "inplace" not in mixkit.method_info(name).defaults:
            raise SystemExit(f"--inplace: {name} has no inplace option")
        if args.backward:
            raise SystemExit("--inplace and --backward exclude each other (an in-place mix is not differentiable)")
        opts.update(inplace=True, num_classes=10)
    sides = {"ref": ref.create(name, **opts), "new": mixkit.create(name, **opts)}  # type: ignore[attr-defined]
    if args.normalize:
        for method in sides.values():
            method.set_input_normalization(*stats)
    leaves = {k: x.detach().clone().requires_grad_() for k in sides} if args.backward else {k: x for k in sides}
    if args.inplace:  # a tensor of its own per side, mixed again at every call
        leaves = {k: x.clone() for k in sides}

    def call(k: str, generator: torch.Generator) -> object:
        out = sides[k](leaves[k], y, generator=generator)
        if args.inplace:
            out.target.soft()
        if args.backward:
            leaves[k].grad = None
            out.x.sum().backward()
        return out

    outs = {k: call(k, torch.Generator().manual_seed(1)) for k in sides}
    same = torch.equal(outs["ref"].x, outs["new"].x) and torch.equal(outs["ref"].target.weight, outs["new"].target.weight)
    if args.backward:
        same = same and torch.equal(leaves["ref"].grad, leaves["new"].grad)
    gens = {k: torch.Generator().manual_seed(2) for k in sides}
    times: dict[str, list[float]] = {k: [] for k in sides}
    faults: dict[str, list[int]] = {k: [] for k in sides}
    evict = evictor(args.evict)
    for r in range(args.rounds):
        for k in ("ref", "new") if r % 2 else ("new", "ref"):
            evict()
            start, flt = time.process_time(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            call(k, gens[k])
            times[k].append((time.process_time() - start) * 1000)
            faults[k].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - flt)
    paired = ops_stats.paired_ratio(times["new"], times["ref"])
    return {"method": name, "mode": mode, "ref_ms": statistics.median(times["ref"]),
            "new_ms": statistics.median(times["new"]), "new_over_ref": paired, "verdict": ops_stats.verdict(paired),
            "same_output": same, "ref_faults": statistics.median(faults["ref"]),
            "new_faults": statistics.median(faults["new"])}


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ref = load_ref(args.ref, Path(tmp))
        for spec in args.methods:
            name, _, mode = spec.partition(":")
            row = compare(name, mode or "batch", ref, args)
            rows.append(row)
            p = row["new_over_ref"]
            interval = f" [{p['ci_lo']:.2f}, {p['ci_hi']:.2f}]" if p else ""
            print(f"{spec:24s} ref {row['ref_ms']:9.2f} ms  new {row['new_ms']:9.2f} ms  new/ref "
                  f"{p['median'] if p else float('nan'):.3f}{interval} {row['verdict']}  same output: {row['same_output']}"
                  f"  page faults/call ref {row['ref_faults']:.0f} new {row['new_faults']:.0f}", flush=True)
    if args.out:
        result = {"command": "python bench/ab.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                  "ref": args.ref, "input": [args.batch, 3, args.size, args.size] if args.data is None else args.data,
                  "dtype": args.dtype,
                  "channels_last": args.channels_last, "backward": args.backward, "inplace": args.inplace,
                  "evict": args.evict,
                  "clock": "process CPU time, 1 thread", "rows": rows}
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return rows


if __name__ == "__main__":
    main()
