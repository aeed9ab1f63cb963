"""Where AugMix's time goes: each kernel's share of a call, on the overhead view's batch.

Usage:
    python bench/augmix_parts.py                       # 100 calls, cold caches before each
    python bench/augmix_parts.py --calls 20 --after-step   # a ResNet-20 training step before each call
    python bench/augmix_parts.py --out bench/results/augmix_parts.json

AugMix (the overhead view's largest hand-crafted share after the superpixel methods and
PaNI) runs every chain operation of a batch through a few batched kernels
(:mod:`mixkit.functional.augment_dispatch`). This script wraps those kernels with timers and
calls ``AugMix`` on a normalised ``(128, 3, 32, 32)`` float32 channels_last batch (as
``bench/overhead.py``), with the caches made cold before each call (a 32 MiB copy) or, with
``--after-step``, after a ResNet-20 training step. It prints the median call and each part's
mean time per call (parts nest: ``run_kernels`` holds the kernels below it, ``warp`` holds
``grid_sample``); wall clock, one thread. The wrappers add a few microseconds per kernel call.
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import overhead  # noqa: E402  (bench/ is not a package)

from mixkit.functional import augment_chains, augment_dispatch, augment_geometry, augment_values  # noqa: E402


def _timed(acc: dict[str, float], key: str, fn: Callable) -> Callable:
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            acc[key] += time.perf_counter() - start
    return wrapper


class _Namespace:
    """A module's attributes with some replaced (the kernels' modules call ``torch.x`` and ``F.x``)."""

    def __init__(self, module: object, **replaced: Callable) -> None:
        self._module, self._replaced = module, replaced

    def __getattr__(self, name: str) -> object:
        return self._replaced[name] if name in self._replaced else getattr(self._module, name)


def instrument(acc: dict[str, float]) -> Callable[[], None]:
    """Wrap the kernels with timers adding into ``acc``; returns the undo."""
    saved: list[tuple[object, str, object]] = []

    def patch(owner: object, name: str, new: object) -> None:
        saved.append((owner, name, getattr(owner, name)))
        setattr(owner, name, new)

    patch(augment_chains, "run_kernels", _timed(acc, "run_kernels", augment_chains.run_kernels))
    patch(augment_chains, "weighted_rows", _timed(acc, "mixture", augment_chains.weighted_rows))
    for name, key in (("_sort", "sort"), ("affine_matrices", "affine"), ("warp", "warp"),
                      ("translate", "translate")):
        patch(augment_dispatch, name, _timed(acc, key, getattr(augment_dispatch, name)))
    patch(augment_dispatch, "torch", _Namespace(torch, index_select=_timed(acc, "index_select", torch.index_select)))
    patch(augment_geometry, "F", _Namespace(F, grid_sample=_timed(acc, "grid_sample", F.grid_sample)))
    ops = dict(augment_values.VALUE_OPS)
    for name, fn in ops.items():
        augment_values.VALUE_OPS[name] = _timed(acc, name, fn)

    def undo() -> None:
        for owner, name, old in reversed(saved):
            setattr(owner, name, old)
        augment_values.VALUE_OPS.update(ops)
    return undo


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--after-step", action="store_true", help="a ResNet-20 training step before each call")
    ap.add_argument("--out", default=None, help="also write the figures to this JSON file")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    x, y, mean, std = overhead.make_batch(args.batch, gen)
    call = overhead.mixing_call(overhead.create_method("augmix", None, mean, std), x, y, gen)
    if args.after_step:
        model, opt = overhead.make_model("resnet20")
        before = overhead.plain_step(model, opt, x, y)
    else:
        src, dst = torch.ones(8 << 20), torch.empty(8 << 20)
        before = lambda: dst.copy_(src)  # noqa: E731  (32 MiB: this machine's L3)
    for _ in range(args.warmup):
        call()
    acc: dict[str, float] = collections.defaultdict(float)
    undo = instrument(acc)
    times = []
    try:
        for _ in range(args.calls):
            before()
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
    finally:
        undo()
    parts = {k: v / args.calls * 1e3 for k, v in sorted(acc.items(), key=lambda kv: -kv[1])}
    result = {"command": "python bench/augmix_parts.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "batch": [args.batch, 3, 32, 32], "before_each_call": "training step" if args.after_step else "cache eviction",
              "calls": args.calls, "median_call_ms": statistics.median(times) * 1e3, "mean_per_call_ms": parts}
    print(f"AugMix call: median {result['median_call_ms']:.2f} ms over {args.calls} calls "
          f"({result['before_each_call']} before each)")
    for k, v in parts.items():
        print(f"  {k:15s} {v:6.2f} ms")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
