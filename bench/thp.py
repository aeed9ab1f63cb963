"""Fresh large tensors with and without huge pages: none, mixkit's own, PyTorch's (``THP_MEM_ALLOC_ENABLE``).

Usage:
    python bench/thp.py                    # writes bench/results/thp.json
    python bench/thp.py --repeats 5 --size 64 --no-step   # a quick look

Three settings, each in a process of its own: ``off`` (``MIXKIT_HUGE_PAGES=0``: every tensor
from torch's allocator, 4 KiB pages), ``mixkit`` (the default: mixkit's own outputs above 32
MiB on transparent huge pages, freed blocks kept for the next output of their size,
:mod:`mixkit.functional.alloc`) and ``on``
(``THP_MEM_ALLOC_ENABLE=1``: PyTorch's CPU allocator asks for huge pages for every tensor of 2
MiB or more; torch reads the variable once, at its first allocation). Each process
times, on one thread with the process's CPU clock, the median of ``--repeats`` calls of:
``x.clone()`` of a ``(128, 3, S, S)`` float32 batch, mixkit's ``MixUp`` and ``CutMix`` on it
(out of place, with their targets), and a ResNet-20 training step at 32x32 (``--no-step`` to
skip). Writes both settings' figures and the machine to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

#: each setting's environment (besides the caller's, without these two variables)
SETTINGS = {"off": {"MIXKIT_HUGE_PAGES": "0"}, "mixkit": {}, "on": {"THP_MEM_ALLOC_ENABLE": "1"}}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=224, help="side of the (128, 3, S, S) batch")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--step", action=argparse.BooleanOptionalAction, default=True,
                    help="also time a ResNet-20 training step at 32x32")
    ap.add_argument("--out", default="bench/results/thp.json")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def _median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.process_time()
        result = fn()
        times.append((time.process_time() - start) * 1000)
        del result
    return sorted(times)[len(times) // 2]


def measure(args: argparse.Namespace) -> dict[str, float]:
    """The figures of this process (its ``THP_MEM_ALLOC_ENABLE`` as it started)."""
    import torch

    import mixkit

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(128, 3, args.size, args.size, generator=g)
    y = torch.randint(0, 1000, (128,), generator=g)
    mixup, cutmix = mixkit.MixUp(num_classes=1000), mixkit.CutMix(num_classes=1000)
    out = {
        "clone_ms": _median_ms(lambda: x.clone(), args.repeats),
        "mixup_ms": _median_ms(lambda: mixup(x, y, generator=g).x, args.repeats),
        "cutmix_ms": _median_ms(lambda: cutmix(x, y, generator=g).x, args.repeats),
    }
    if args.step:
        out["resnet20_step_ms"] = _median_ms(resnet20_step(g), max(3, args.repeats // 3))
    return out


def resnet20_step(g: object) -> Callable[[], None]:
    """One SGD step of ResNet-20 (channels_last) on a random ``(128, 3, 32, 32)`` batch drawn
    from generator ``g`` (also used by ``bench/malloc.py``)."""
    import torch
    import torch.nn.functional as F

    from mixkit.models import create_model

    model = create_model("resnet20", num_classes=10).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    xs = torch.randn(128, 3, 32, 32, generator=g).contiguous(memory_format=torch.channels_last)
    ys = torch.randint(0, 10, (128,), generator=g)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(xs), ys).backward()
        opt.step()
    return step


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(measure(args)))
        return {}
    flags = [f"--size={args.size}", f"--repeats={args.repeats}", "--step" if args.step else "--no-step", "--child"]
    result: dict = {"command": "python " + " ".join([sys.argv[0]] + (argv if argv is not None else sys.argv[1:])),
                    "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                                "thp": _thp_mode()},
                    "batch": [128, 3, args.size, args.size], "clock": "process CPU time, 1 thread", "settings": {}}
    for name, extra in SETTINGS.items():
        env = {k: v for k, v in os.environ.items() if k not in ("THP_MEM_ALLOC_ENABLE", "MIXKIT_HUGE_PAGES")}
        env.update(extra)
        print(f"{name} ({' '.join(f'{k}={v}' for k, v in extra.items()) or 'defaults'}): measuring...", flush=True)
        done = subprocess.run([sys.executable, __file__, *flags], env=env, capture_output=True, text=True, check=True)
        result["settings"][name] = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"  {result['settings'][name]}", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return result


def _thp_mode() -> str | None:
    """The kernel's transparent-huge-page mode (the bracketed word), if it says."""
    try:
        text = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return None
    return text[text.find("[") + 1 : text.find("]")] if "[" in text else text.strip()


if __name__ == "__main__":
    main()
