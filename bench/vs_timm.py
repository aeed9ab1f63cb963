"""mixkit against timm on one operation, call by call in one loop (a quick paired check).

``bench/ops.py`` times each library in its own rounds, with the other libraries' calls in
between (caches cold, as in a training loop); this script alternates the two libraries call
by call on warm caches and prints the median per-call time of each and the median of the
per-call ratios. Both build their dense targets, as in ``bench/ops.py``. Needs timm in the
environment (``.bench-venv``, made by ``make bench-ops``)::

    PYTHONPATH=src .bench-venv/bin/python bench/vs_timm.py --op cutmix --size 32 --dtype bfloat16
    PYTHONPATH=src .bench-venv/bin/python bench/vs_timm.py --op mixup --size 32 --inplace
    PYTHONPATH=src .bench-venv/bin/python bench/vs_timm.py --op mixup --size 32 --inplace --evict

``--evict`` copies 32 MiB before each library's call (untimed), so that both start with cold
caches, as in ``bench/ops.py``'s rounds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ops_peers  # noqa: E402  (bench/ is not a package)

import mixkit  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--op", choices=("mixup", "cutmix"), default="cutmix")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    ap.add_argument("--mode", choices=("batch", "elem"), default="batch")
    ap.add_argument("--inplace", action="store_true", help="both libraries in place, each on a tensor of its own")
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--evict", action="store_true",
                    help="copy 32 MiB before each call (not timed): every call starts with cold caches, as in "
                         "bench/ops.py's rounds and after a training step")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    peers = ops_peers.load_peers(["timm"])
    if peers.timm_mixup is None:
        raise SystemExit(f"timm is not available: {(peers.reasons or {}).get('timm')} (run make bench-ops first)")
    num_classes = 10 if args.size <= 64 else 1000
    x = torch.rand(128, 3, args.size, args.size, generator=torch.Generator().manual_seed(0)).to(getattr(torch, args.dtype))
    y = torch.randint(0, num_classes, (128,), generator=torch.Generator().manual_seed(1))
    build = ops_peers.timm_inplace if args.inplace else ops_peers._timm
    theirs = build(peers, args.op, args.mode, y, num_classes)
    method = mixkit.create(args.op, mode=args.mode, num_classes=num_classes, inplace=args.inplace)
    own = x.clone()
    g = torch.Generator().manual_seed(2)

    def mine(batch: torch.Tensor) -> None:
        method(own if args.inplace else batch, y, generator=g).target.soft()

    for _ in range(min(200, args.calls)):
        theirs(x)
        mine(x)
    t_theirs, t_mine, ratios = [], [], []
    src, dst = (torch.ones(8 << 20), torch.empty(8 << 20)) if args.evict else (None, None)
    for _ in range(args.calls):
        if dst is not None:
            dst.copy_(src)
        a = time.perf_counter()
        theirs(x)
        b = time.perf_counter()
        if dst is not None:
            dst.copy_(src)
        b0 = time.perf_counter()
        mine(x)
        c = time.perf_counter()
        t_theirs.append(b - a)
        t_mine.append(c - b0)
        ratios.append((c - b0) / (b - a))
    out = {"timm_us": statistics.median(t_theirs) * 1e6, "mixkit_us": statistics.median(t_mine) * 1e6,
           "ratio": statistics.median(ratios)}
    where = ("in place" if args.inplace else "out of place") + (", cold caches" if args.evict else "")
    print(f"{args.op} {args.size} {args.dtype} {args.mode} {where}: timm {out['timm_us']:.0f} us, "
          f"mixkit {out['mixkit_us']:.0f} us, mixkit / timm {out['ratio']:.3f} (median of {args.calls} paired calls)")
    return out


if __name__ == "__main__":
    main()
