"""Step-time ratios of the learnable methods against Mixup (issue 6), with a cost breakdown.

Usage:
    python bench/learnable_step.py [--threads 1] [--rounds 30] [--clock wall|cpu] [--out bench/results/learnable_step.json]

Each method runs the harness's training step (``method.train_step`` with the harness's mixup
cross-entropy, then ``backward`` and an SGD step) on ResNet-20, batch 128, 3x32x32, channels_last,
its own model copy. The methods take turns, one step each per round, so the machine's drift
falls on all of them alike; the median over rounds after warm-up is reported, and each
learnable method's ratio to Mixup. SAMix^P reads a Mixer saved by a SAMix trained for a few
steps here (its cost does not depend on what the Mixer learned).

The breakdown times the parts a SAMix/AutoMix step is made of, on the same model:
``ce_step`` (forward + backward + SGD on one batch: what Mixup costs), ``ema_features`` (the
EMA encoder's no-grad forward to the stage), ``ema_input_grad`` (the EMA model's forward on the
mixer batch plus the backward to its input: the Mixer's path). A SAMix step is about
``2 ce_step + ema_features + ema_input_grad`` plus the Mixer itself (the classifier trains on
the mixed batch AND, as OpenMixup's ``head_one``, on the clean batch): the floor the algorithm
allows.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

import mixkit
from mixkit.learnable import MomentumEncoder
from mixkit.losses import mixup_cross_entropy
from mixkit.models import create_model

METHODS = ("mixup", "samix", "samix_p", "automix", "adautomix")


def _setup(seed: int) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = create_model("resnet20", num_classes=10, in_channels=3).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    return model, opt


def _stepper(name: str, x: torch.Tensor, y: torch.Tensor, mixer_file: str | None):
    model, opt = _setup(0)
    options = {"num_classes": 10}
    if name == "samix_p":
        options["mixer"] = mixer_file
    if "total_steps" in mixkit.method_info(name).defaults:
        options["total_steps"] = 1000
    method = mixkit.create(name, **options)
    gen = torch.Generator().manual_seed(1)

    def step() -> None:
        out = method.train_step(model, x, y, criterion=mixup_cross_entropy, generator=gen)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()

    return step, method


#: the clock of :func:`_timed`: wall time, or the process's CPU time (``--clock cpu``: time the
#: process was preempted by other work does not count; valid with one torch thread)
CLOCK = time.perf_counter


def _timed(fn) -> float:
    start = CLOCK()
    fn()
    return (CLOCK() - start) * 1000


def _breakdown(x: torch.Tensor, y: torch.Tensor, rounds: int) -> dict[str, float]:
    model, opt = _setup(0)
    encoder = MomentumEncoder(model, "layer3")
    target = mixkit.types.MixTarget.unmixed(y, 10)

    def ce_step() -> None:
        loss = mixup_cross_entropy(model(x), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def ema_features() -> None:
        with torch.no_grad():
            encoder.features(x)

    def ema_input_grad() -> None:
        xm = x.detach().clone().requires_grad_(True)
        torch.autograd.backward(encoder(xm).logsumexp(1).sum(), inputs=[xm])

    parts = {"ce_step": ce_step, "ema_features": ema_features, "ema_input_grad": ema_input_grad}
    times: dict[str, list[float]] = {k: [] for k in parts}
    for r in range(rounds + 3):
        for k, fn in parts.items():
            t = _timed(fn)
            if r >= 3:
                times[k].append(t)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--methods", nargs="*", default=list(METHODS))
    parser.add_argument("--out", default="bench/results/learnable_step.json")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="cpu: the process's CPU time, robust on a busy machine; needs --threads 1")
    args = parser.parse_args()
    if args.clock == "cpu" and args.threads != 1:
        parser.error("--clock cpu needs --threads 1 (CPU time sums over threads)")
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 3, 32, 32, generator=g).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (128,), generator=g)
    load_before = os.getloadavg()[0]

    with tempfile.TemporaryDirectory() as tmp:
        mixer_file = None
        if "samix_p" in args.methods:  # a Mixer to load: SAMix trained for a few steps
            step, samix = _stepper("samix", x, y, None)
            for _ in range(3):
                step()
            mixer_file = str(Path(tmp) / "mixer.pt")
            samix.save_mixer(mixer_file)
        steppers = {name: _stepper(name, x, y, mixer_file)[0] for name in args.methods}
        times: dict[str, list[float]] = {name: [] for name in args.methods}
        for r in range(args.warmup + args.rounds):
            for name, step in steppers.items():
                t = _timed(step)
                if r >= args.warmup:
                    times[name].append(t)
            print(f"round {r + 1}/{args.warmup + args.rounds}", flush=True)
    parts = _breakdown(x, y, max(5, args.rounds // 3))

    base = statistics.median(times["mixup"]) if "mixup" in times else None
    rows = []
    for name, t in times.items():
        q = statistics.quantiles(t, n=4)
        med = statistics.median(t)
        rows.append({"method": name, "median_ms": med, "q1_ms": q[0], "q3_ms": q[2],
                     "ratio_to_mixup": med / base if base else None})
    floor = 2 * parts["ce_step"] + parts["ema_features"] + parts["ema_input_grad"]
    result = {
        "setup": "ResNet-20, batch 128, 3x32x32 float32, channels_last, SGD; mixup cross-entropy",
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "machine": {"platform": platform.platform(), "processor": platform.processor()},
        "loadavg_1min": {"before": load_before, "after": os.getloadavg()[0]},
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "rounds": args.rounds, "warmup": args.warmup,
        "clock": args.clock,
        "rows": rows, "breakdown_ms": parts,
        "samix_floor_ms": floor, "samix_floor_ratio": floor / parts["ce_step"],
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print("\n| method | median step (ms) | IQR (ms) | ratio to mixup |\n|---|---|---|---|")
    for r in rows:
        ratio = f"{r['ratio_to_mixup']:.2f}" if r["ratio_to_mixup"] else "-"
        print(f"| {r['method']} | {r['median_ms']:.0f} | {r['q1_ms']:.0f}-{r['q3_ms']:.0f} | {ratio} |")
    print("\nbreakdown (ms): " + ", ".join(f"{k} {v:.0f}" for k, v in parts.items()))
    print(f"floor of a SAMix step, 2 ce_step + ema_features + ema_input_grad: {floor:.0f} ms "
          f"= {floor / parts['ce_step']:.2f} x ce_step")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
