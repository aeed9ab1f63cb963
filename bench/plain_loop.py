"""A bare PyTorch training loop for the ``cifar10-2k`` regime, apart from mixkit's harness.

Two uses: a cross-check of the harness's numbers (the same recipe written the plain way: if
the harness and this loop disagree beyond seed noise, one of them is wrong), and the baseline
for the harness's overhead (issue 7: ``mixkit train`` throughput against a bare loop).
Only data loading and the ResNet-20 definition come from mixkit; the augmentation, the mixing
(Zhang et al.'s ``mixup-cifar10``: one lambda per batch, a random permutation), the loss, the
optimiser and the metrics are written here by hand.

Usage:
    python bench/plain_loop.py --method mixup --seed 0 --out bench/results/plain_loop_mixup_s0.json
    python bench/plain_loop.py --method erm --epochs 2 --out /tmp/x.json   # a quick look
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mixkit.data import dataset_stats, load_dataset, subset_per_class
from mixkit.models import create_model

CIFAR_ROOT = str(Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg")


def crop_flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Pad 4, random 32x32 crop and random horizontal flip, per image (a plain loop)."""
    b, _, h, w = x.shape
    padded = F.pad(x, (4, 4, 4, 4))
    tops = torch.randint(0, 9, (b,), generator=gen).tolist()
    lefts = torch.randint(0, 9, (b,), generator=gen).tolist()
    flips = (torch.rand(b, generator=gen) < 0.5).tolist()
    out = torch.empty_like(x)
    for i in range(b):
        crop = padded[i, :, tops[i]:tops[i] + h, lefts[i]:lefts[i] + w]
        out[i] = crop.flip(-1) if flips[i] else crop
    return out


def evaluate(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, mean, std) -> dict[str, float]:
    """Top-1 (%), NLL and 15-bin ECE on the whole test set."""
    model.eval()
    logits = []
    with torch.no_grad():
        for s in range(0, images.shape[0], 500):
            x = (images[s:s + 500].float() / 255 - mean) / std
            logits.append(model(x.contiguous(memory_format=torch.channels_last)).float())
    z = torch.cat(logits)
    prob = z.softmax(1)
    conf, pred = prob.max(1)
    correct = pred.eq(labels).float()
    ece = 0.0
    edges = torch.linspace(0, 1, 16)
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            ece += float(inside.float().mean() * (conf[inside].mean() - correct[inside].mean()).abs())
    return {"top1": 100 * float(correct.mean()), "nll": float(F.cross_entropy(z, labels)), "ece": ece}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--method", choices=("erm", "mixup"), default="mixup")
    ap.add_argument("--alpha", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--subset", type=int, default=200)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--data-root", default=CIFAR_ROOT)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    train = load_dataset("cifar10", root=args.data_root, split="train")
    test = load_dataset("cifar10", root=args.data_root, split="test")
    keep = subset_per_class(train.labels, args.subset, seed=0)  # the harness's subset
    images, labels = train.images[keep], train.labels[keep]
    m, s = dataset_stats("cifar10", images)
    mean, std = torch.tensor(m).view(1, 3, 1, 1), torch.tensor(s).view(1, 3, 1, 1)

    torch.manual_seed(args.seed)
    np_rng = np.random.default_rng(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    model = create_model("resnet20", num_classes=10).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    steps = math.ceil(images.shape[0] / 128)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=args.epochs * steps)
    epoch_times = []
    for epoch in range(args.epochs):
        model.train()
        start = time.perf_counter()
        order = torch.randperm(images.shape[0], generator=gen)
        for k in range(steps):
            idx = order[k * 128:(k + 1) * 128]
            x = crop_flip(images[idx].float() / 255, gen)
            x = ((x - mean) / std).contiguous(memory_format=torch.channels_last)
            y = labels[idx]
            if args.method == "mixup":
                lam = float(np_rng.beta(args.alpha, args.alpha))
                perm = torch.randperm(x.shape[0], generator=gen)
                out = model(lam * x + (1 - lam) * x[perm])
                loss = lam * F.cross_entropy(out, y) + (1 - lam) * F.cross_entropy(out, y[perm])
            else:
                loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        epoch_times.append(time.perf_counter() - start)
        print(f"epoch {epoch + 1}/{args.epochs} loss {float(loss):.3f} {epoch_times[-1]:.1f}s", flush=True)
    result = {
        "method": args.method, "alpha": args.alpha, "seed": args.seed, "epochs": args.epochs, "subset": args.subset,
        "threads": torch.get_num_threads(), "median_epoch_time_s": float(np.median(epoch_times)),
        "images_per_s": images.shape[0] / float(np.median(epoch_times)),
        **evaluate(model, test.images, test.labels, mean, std),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
