"""The harness's own overhead (issue 7): ``mixkit train`` against a bare PyTorch loop.

Usage:
    python bench/harness_overhead.py                       # 3 pairs of 4-epoch runs
    python bench/harness_overhead.py --pairs 1 --epochs 2  # a quick look

Both sides train the same recipe (the ``cifar10-2k`` preset: ResNet-20, the same 2,000
CIFAR-10 training images, batch 128, SGD with Nesterov momentum, one-cycle lr 0.1, weight
decay 5e-4, crop and flip, Mixup with alpha 1, one lambda per batch, channels_last) with the
same thread count, in separate processes run alternately (A B A B ...) so that the machine's
drift hits both alike:

- A, the harness: ``python -m mixkit train --preset cifar10-2k --method mixup ...``, with
  one test-set evaluation at the end (``--eval-every EPOCHS --median-last 1``) and no
  corruption pass; it still writes its checkpoint every epoch, its log, metrics and plot.
- B, the bare loop: ``bench/plain_loop.py --method mixup`` (evaluates once at the end).

Compared: training throughput, images per second of the median epoch, where an epoch is the
loop over the training batches only (data order, crop and flip, normalisation, mixing,
forward, loss, backward, optimiser and scheduler step, and whatever bookkeeping each side
does per step); evaluation is outside the timed epoch on both sides. The whole process's CPU
and wall time (start-up, data loading, per-epoch checkpoints, the one evaluation, the
harness's run files) are recorded too. Overhead = B's images/s over A's, minus 1, the median
over pairs of adjacent runs. By default (``--clock cpu``) both sides' epoch timers count the
process's CPU time (a launcher replaces ``time.perf_counter`` with ``time.process_time``
before running either side unchanged): on a shared machine wall time mostly measures the
other work. The per-batch cost of the parts the two sides write differently (input
preparation, mixing and loss) is also timed in-process.

Writes ``--out`` (JSON) and the ``harness`` section of ``--md`` (``docs/benchmarks/overhead.md``).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from overhead import command_line, machine_info, write_section  # noqa: E402

HERE = Path(__file__).resolve().parent
CLOCK_NOTE = {
    "cpu": "Clock: both sides' epoch timers count the CPU time of their process (`time.perf_counter` replaced by "
           "`time.process_time` through a launcher, nothing else changed), so other work on a shared machine does "
           "not enter the figures; with one thread this is the wall time of an idle machine.",
    "wall": "Clock: wall time (`time.perf_counter`); meaningful on an idle machine.",
}
TARGET_PCT = 5.0


#: runs a module or script with ``time.perf_counter`` replaced by ``time.process_time``, so that
#: both sides' epoch timers count the CPU time of the process (``--clock cpu``)
CPU_CLOCK_LAUNCHER = """import runpy, sys, time
time.perf_counter = time.process_time
kind, target = sys.argv[1], sys.argv[2]
sys.argv = [target] + sys.argv[3:]
if kind == "module":
    runpy.run_module(target, run_name="__main__", alter_sys=True)
else:
    runpy.run_path(target, run_name="__main__")
"""


def launch(args: argparse.Namespace, kind: str, target: str) -> list[str]:
    """The start of a command line running ``target`` (a module or a script) with the chosen clock."""
    if args.clock == "cpu":
        return [sys.executable, "-c", CPU_CLOCK_LAUNCHER, kind, target]
    return [sys.executable, "-m", target] if kind == "module" else [sys.executable, target]


def harness_cmd(args: argparse.Namespace, out: Path) -> list[str]:
    return [*launch(args, "module", "mixkit"), "train", "--preset", "cifar10-2k", "--data-root", args.data_root,
            "--method", "mixup", "--alpha", "1.0", "--seed", str(args.seed), "--epochs", str(args.epochs),
            "--subset", str(args.subset), "--threads", str(args.threads), "--eval-every", str(args.epochs),
            "--median-last", "1", "--no-corruptions", "--out", str(out)]


def plain_cmd(args: argparse.Namespace, out: Path) -> list[str]:
    return [*launch(args, "path", str(HERE / "plain_loop.py")), "--method", "mixup", "--alpha", "1.0", "--seed", str(args.seed),
            "--epochs", str(args.epochs), "--subset", str(args.subset), "--threads", str(args.threads),
            "--data-root", args.data_root, "--out", str(out)]


def run(cmd: list[str]) -> tuple[float, float]:
    """Run ``cmd`` to completion; its wall time and its CPU time (user + system), in seconds."""
    start, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd[-20:])} failed:\n{proc.stderr[-3000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.perf_counter() - start, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


def run_harness(args: argparse.Namespace, work: Path, i: int) -> dict:
    out = work / f"harness{i}"
    wall, cpu = run(harness_cmd(args, out))
    metrics = json.loads((out / "metrics.json").read_text())
    epochs = metrics["epochs"]
    times = [e["epoch_time_s"] for e in epochs]
    images = epochs[0]["images"]
    return {"side": "harness", "wall_s": wall, "process_cpu_s": cpu, "epoch_times_s": times, "images_per_epoch": images,
            "median_epoch_time_s": statistics.median(times), "images_per_s": images / statistics.median(times),
            "top1": metrics["final"]["top1"], "threads": metrics["versions"]["threads"]}


def run_plain(args: argparse.Namespace, work: Path, i: int) -> dict:
    out = work / f"plain{i}.json"
    wall, cpu = run(plain_cmd(args, out))
    res = json.loads(out.read_text())
    return {"side": "plain", "wall_s": wall, "process_cpu_s": cpu, "images_per_epoch": round(res["images_per_s"] * res["median_epoch_time_s"]),
            "median_epoch_time_s": res["median_epoch_time_s"], "images_per_s": res["images_per_s"],
            "top1": res["top1"], "threads": res["threads"]}


def component_times(repeats: int, clock: str, seed: int = 0) -> dict:
    """Per-batch cost (ms, median of interleaved repeats) of the parts the two sides write
    differently: input preparation (crop, flip, normalise) and mixing plus loss and bookkeeping."""
    import numpy as np
    import torch.nn.functional as F

    import mixkit
    from mixkit.data import dataset_stats, normalize
    from mixkit.losses import mixup_cross_entropy
    from mixkit.train.engine import _mixed_accuracy, _prepare_batch
    from plain_loop import crop_flip

    gen = torch.Generator().manual_seed(seed)
    np_rng = np.random.default_rng(seed)
    images = torch.randint(0, 256, (128, 3, 32, 32), dtype=torch.uint8, generator=gen)
    y = torch.randint(0, 10, (128,), generator=gen)
    logits = torch.randn(128, 10, generator=gen)
    m, s = dataset_stats("cifar10")
    mean, std = torch.tensor(m).view(1, 3, 1, 1), torch.tensor(s).view(1, 3, 1, 1)
    method = mixkit.create("mixup", alpha=1.0)
    x = normalize(images, m, s).contiguous(memory_format=torch.channels_last)

    def plain_prepare():
        return ((crop_flip(images.float() / 255, gen) - mean) / std).contiguous(memory_format=torch.channels_last)

    # the engine's own input preparation (crop and flip, normalise, channels_last), called as
    # the training loop calls it, so that changes there show here
    data = types.SimpleNamespace(mean=m, std=s)
    cfg = types.SimpleNamespace(augment=True, channels_last=True)
    cpu = torch.device("cpu")

    def harness_prepare():
        return _prepare_batch(images, data, cfg, gen, cpu)

    def plain_mix():
        lam = float(np_rng.beta(1.0, 1.0))
        perm = torch.randperm(128, generator=gen)
        _ = lam * x + (1 - lam) * x[perm]
        return float(lam * F.cross_entropy(logits, y) + (1 - lam) * F.cross_entropy(logits, y[perm]))

    def harness_mix():
        out = method(x, y, generator=gen)
        loss = mixup_cross_entropy(logits, out.target)
        return float(loss.detach()), _mixed_accuracy(logits, out.target)

    fns = {"prepare_plain": plain_prepare, "prepare_harness": harness_prepare,
           "mix_loss_plain": plain_mix, "mix_loss_harness": harness_mix}
    now = time.process_time if clock == "cpu" else time.perf_counter
    times: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(repeats + 2):
        for k, fn in fns.items():
            start = now()
            fn()
            if r >= 2:
                times[k].append(1000 * (now() - start))
    return {k: statistics.median(t) for k, t in times.items()}


def markdown(result: dict) -> str:
    m, s = result["machine"], result["summary"]
    lines = [
        "## The harness's own overhead: `mixkit train` against a bare loop",
        "",
        f"Machine: {m['platform']}, {m['processor']}, {m['cpus']} CPUs (1-min load average {m['loadavg_1min']:.1f} "
        f"at the start); torch {m['torch']}, {result['threads']} thread(s); {m['date']}.",
        f"Command: `{result['command']}`",
        "",
        f"Same recipe both ways: `cifar10-2k` (ResNet-20, {result['subset']} images per class, batch 128, SGD Nesterov, "
        f"one-cycle, crop and flip), Mixup alpha 1, {result['epochs']} epochs, seed {result['seed']}. "
        "A: `python -m mixkit train --preset cifar10-2k --method mixup --eval-every E --median-last 1 --no-corruptions`; "
        "B: `bench/plain_loop.py --method mixup` (only data loading and the ResNet-20 definition from mixkit). "
        f"Runs alternate A B A B ({result['pairs']} pairs). Throughput = training images per second of the median epoch; "
        "an epoch is the loop over the training batches, evaluation excluded on both sides. Wall time is the whole "
        "process (start-up, data loading, checkpoints, one test evaluation, run files).",
        "",
        CLOCK_NOTE[result["clock"]],
        "",
        "| pair | harness img/s | bare loop img/s | harness overhead (%) | harness process CPU / wall (s) | "
        "bare loop process CPU / wall (s) |",
        "|---|---|---|---|---|---|",
    ]
    for i, (a, b) in enumerate(zip(result["harness"], result["plain"])):
        lines.append(f"| {i + 1} | {a['images_per_s']:.1f} | {b['images_per_s']:.1f} | "
                     f"{100 * (b['images_per_s'] / a['images_per_s'] - 1):+.1f} | {a['process_cpu_s']:.0f} / "
                     f"{a['wall_s']:.0f} | {b['process_cpu_s']:.0f} / {b['wall_s']:.0f} |")
    verdict = "pass" if s["overhead_pct"] < TARGET_PCT else "FAIL"
    lines += ["", f"**Harness overhead (median over pairs): {s['overhead_pct']:+.1f}% in training throughput** "
              f"(target under {TARGET_PCT:.0f}%: {verdict}); whole process: {s['process_cpu_overhead_pct']:+.1f}% in CPU "
              f"time, {s['wall_overhead_pct']:+.1f}% in wall time (start-up, data loading, per-epoch checkpoints, "
              "the one evaluation, the harness's run files and plot included). A negative figure means the harness "
              "is faster than the bare loop."]
    c = result.get("components_ms")
    if c:
        lines += ["", "Where the two sides differ, per batch of 128 (median ms of interleaved in-process repeats): "
                  f"input preparation {c['prepare_harness']:.1f} (harness: the engine's crop and flip, row and column gathers on uint8, then "
                  f"normalise) against {c['prepare_plain']:.1f} (bare loop: a Python loop over the images); mixing, "
                  f"loss and bookkeeping {c['mix_loss_harness']:.1f} (harness: Mixup, mixed cross-entropy, the "
                  f"loss and train-accuracy read-outs) against {c['mix_loss_plain']:.1f} (bare loop). Model step: "
                  "identical code (torch) on both sides."]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=3, help="number of (harness, bare loop) run pairs")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--subset", type=int, default=200, help="training images per class")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                    help="cpu: epoch timers count process CPU time (default; right on a shared machine with "
                         "1 thread); wall: wall time")
    ap.add_argument("--component-repeats", type=int, default=20, help="repeats of the per-batch component timing")
    ap.add_argument("--data-root", default=str(HERE.parents[1] / "shared" / "data" / "cifar10-jpeg"))
    ap.add_argument("--out", default="bench/results/harness_overhead.json")
    ap.add_argument("--md", default="docs/benchmarks/overhead.md")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    result = {"command": command_line("harness_overhead.py"), "machine": machine_info(), "threads": args.threads, "epochs": args.epochs,
              "subset": args.subset, "seed": args.seed, "pairs": args.pairs, "clock": args.clock, "timed": "training epochs, evaluation excluded",
              "harness_command": " ".join(harness_cmd(args, Path("OUT"))[1:]),
              "plain_command": " ".join(plain_cmd(args, Path("OUT.json"))[1:]), "harness": [], "plain": []}
    start = time.perf_counter()
    result["components_ms"] = component_times(args.component_repeats, args.clock, args.seed)
    print(f"components (ms per batch): {json.dumps({k: round(v, 2) for k, v in result['components_ms'].items()})}",
          flush=True)
    work = Path(tempfile.mkdtemp(prefix="mixkit-harness-overhead-"))
    try:
        for i in range(args.pairs):
            result["harness"].append(run_harness(args, work, i))
            result["plain"].append(run_plain(args, work, i))
            a, b = result["harness"][-1], result["plain"][-1]
            print(f"pair {i + 1}/{args.pairs}: harness {a['images_per_s']:.1f} img/s ({a['wall_s']:.0f} s), "
                  f"bare loop {b['images_per_s']:.1f} img/s ({b['wall_s']:.0f} s)", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    pairs = list(zip(result["harness"], result["plain"]))
    result["summary"] = {
        "overhead_pct": 100 * statistics.median(b["images_per_s"] / a["images_per_s"] - 1 for a, b in pairs),
        "wall_overhead_pct": 100 * statistics.median(a["wall_s"] / b["wall_s"] - 1 for a, b in pairs),
        "process_cpu_overhead_pct": 100 * statistics.median(a["process_cpu_s"] / b["process_cpu_s"] - 1 for a, b in pairs),
        "harness_images_per_s": statistics.median(a["images_per_s"] for a, _ in pairs),
        "plain_images_per_s": statistics.median(b["images_per_s"] for _, b in pairs),
        "target_pct": TARGET_PCT,
    }
    result["summary"]["pass"] = result["summary"]["overhead_pct"] < TARGET_PCT
    result["duration_s"] = time.perf_counter() - start
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    text = markdown(result)
    write_section(Path(args.md), "harness", "Overhead of mixing and of the training harness", text)
    print(text)
    print(f"\nwrote {out} and {args.md} in {result['duration_s']:.0f} s")


if __name__ == "__main__":
    main()
