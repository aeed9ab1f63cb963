"""``mixkit train``, ``mixkit bench`` and ``mixkit show``: the harness on the command line."""

from __future__ import annotations

import argparse
import json
from typing import Any

__all__ = ["add_train_commands"]

# flag -> TrainConfig field, for the options train and bench share
_CONFIG_FLAGS: list[tuple[str, str, type, str]] = [
    ("--data", "data", str, "data set: fashion_mnist, cifar10, cifar100, imagefolder, tiny_imagenet"),
    ("--data-root", "data_root", str, "folder of the data set (or of its archives)"),
    ("--model", "model", str, "model name (see mixkit.models.list_models())"),
    ("--epochs", "epochs", int, "epochs"),
    ("--batch-size", "batch_size", int, "global batch size"),
    ("--subset", "subset", int, "training images per class (same subset every run)"),
    ("--optimizer", "optimizer", str, "sgd or adamw"),
    ("--lr", "lr", float, "peak learning rate"),
    ("--momentum", "momentum", float, "SGD momentum"),
    ("--weight-decay", "weight_decay", float, "weight decay"),
    ("--schedule", "schedule", str, "onecycle or cosine"),
    ("--warmup-epochs", "warmup_epochs", float, "linear warm-up epochs (cosine)"),
    ("--loss", "loss", str, "ce (mixup cross-entropy) or bce"),
    ("--label-smoothing", "label_smoothing", float, "label smoothing"),
    ("--clip-grad", "clip_grad", float, "max gradient norm"),
    ("--subset-seed", "subset_seed", int, "seed of the subset choice"),
    ("--subset-offset", "subset_offset", int, "skip this many images per class of the subset choice (a disjoint subset)"),
    ("--eval-every", "eval_every", int, "evaluate every N epochs (and each of the last --median-last)"),
    ("--median-last", "median_last", int, "final top-1 also as the median of the last N evaluations"),
    ("--eval-batch-size", "eval_batch_size", int, "evaluation batch size"),
    ("--corruption-subset", "corruption_subset", int, "test images per class scored under corruptions"),
    ("--device", "device", str, "cpu, cuda or auto"),
    ("--threads", "threads", int, "torch CPU threads"),
    ("--cache-dir", "cache_dir", str, "cache of decoded data sets"),
]
_SWITCHES = [
    ("--amp", "amp", True, "bfloat16 autocast"),
    ("--no-channels-last", "channels_last", False, "keep the contiguous memory format"),
    ("--no-augment", "augment", False, "no random crop and flip"),
    ("--no-corruptions", "corruptions", False, "skip the corruption evaluation"),
    ("--pair-across-ranks", "pair_across_ranks", True, "pair samples across processes (torchrun)"),
    ("--nesterov", "nesterov", True, "Nesterov momentum"),
    ("--no-nesterov", "nesterov", False, "plain momentum"),
]


def _severities(text: str) -> tuple[int, ...]:
    return tuple(int(s) for s in text.split(",") if s.strip())


def _add_config_flags(p: argparse.ArgumentParser, *, seed: bool = True) -> None:
    p.add_argument("--preset", help="start from a preset (quick, cifar10-2k, openmixup-cifar100-r18)")
    for flag, dest, typ, help_ in _CONFIG_FLAGS:
        p.add_argument(flag, dest=dest, type=typ, default=None, help=help_)
    for flag, dest, value, help_ in _SWITCHES:
        p.add_argument(flag, dest=dest, action="store_const", const=value, default=None, help=help_)
    p.add_argument("--corruption-severities", dest="corruption_severities", type=_severities, default=None,
                   help="comma-separated corruption severities, e.g. 1,3,5")
    if seed:
        p.add_argument("--seed", type=int, default=None, help="seed of init, data order, augmentation and mixing")


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _method_args(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("alpha", "p", "mode"):
        if getattr(args, key, None) is not None:
            out[key] = getattr(args, key)
    out.update(_key_values(args.method_arg, "--method-arg"))
    if getattr(args, "mixer", None) is not None:  # --mixer FILE is --method-arg mixer="FILE"
        out["mixer"] = args.mixer
    return out


def _key_values(items: list[str] | None, flag: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"{flag} expects KEY=VALUE, got {item!r}")
        out[key] = _parse_value(value)
    return out


def _config(args: argparse.Namespace, **extra: Any):  # type: ignore[no-untyped-def]
    from mixkit.train.config import resolve_config

    fields = {dest: getattr(args, dest) for _, dest, _, _ in _CONFIG_FLAGS}
    fields.update({dest: getattr(args, dest) for _, dest, _, _ in _SWITCHES})
    fields["corruption_severities"] = args.corruption_severities
    fields["seed"] = getattr(args, "seed", None)
    fields.update(extra)
    return resolve_config(args.preset, **fields)


def _cmd_train(args: argparse.Namespace) -> int:
    from mixkit.registry import method_info
    from mixkit.train import distributed, train

    method_info(args.method)  # unknown names fail before any data is loaded
    if args.label_policy is not None:
        method_info(args.label_policy)
    distributed.init_from_env()
    cfg = _config(args, method=args.method, method_args=_method_args(args), out=args.out, save_mixer=args.save_mixer,
                  label_policy=args.label_policy, label_policy_args=_key_values(args.label_arg, "--label-arg"))
    metrics = train(cfg, resume=args.resume)
    if distributed.is_main():
        final = metrics["final"]
        summary = {k: round(v, 4) for k, v in final.items() if isinstance(v, float)}
        print(f"mixkit: {cfg.method} finished: {json.dumps(summary)}; files in {cfg.out}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from mixkit.registry import method_info
    from mixkit.train import distributed
    from mixkit.train.bench import run_bench

    distributed.init_from_env()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in methods:
        for part in m.split("+"):
            method_info(part)
    seeds = [int(s) for s in args.seeds.split(",")]
    cfg = _config(args, out=args.out)
    run_bench(methods, seeds, cfg, args.out, train_missing=not args.report_only, method_args=_method_args(args))
    if not distributed.is_main():
        return 0
    print((__import__("pathlib").Path(args.out) / "results.md").read_text())
    print(f"mixkit: results and plots (accuracy_curves.png, top1_bars.png, reliability.png) in {args.out}")
    return 0


def _load_snapshots(path: str, method: str) -> dict[str, Any]:
    """The mask snapshots of ``method`` in a run's checkpoint or a ``--save-mixer`` file."""
    import torch

    from mixkit.learnable import MIXER_FORMAT

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise SystemExit(f"mixkit show: no such checkpoint: {path}") from None
    if not isinstance(state, dict):
        raise SystemExit(f"mixkit show: {path} is neither a run checkpoint nor a mixer file")
    if state.get("format") == MIXER_FORMAT:  # a file written by --save-mixer
        saved, snapshots = state.get("method"), state.get("snapshots")
    elif isinstance(state.get("config"), dict) and isinstance(state.get("method"), dict):  # a run's checkpoint.pt
        saved, snapshots = state["config"].get("method"), state["method"].get("snapshots")
    else:
        raise SystemExit(f"mixkit show: {path} is neither a run checkpoint nor a mixer file")
    if saved != method:
        raise SystemExit(f"mixkit show: {path} was made by method {saved!r}, not {method!r}")
    if not snapshots:
        raise SystemExit(f"mixkit show: {path} holds no mask snapshots (made before mixkit recorded them)")
    return snapshots


def _cmd_show(args: argparse.Namespace) -> int:
    from mixkit.data import load_dataset
    from mixkit.viz import pair_grid

    if args.checkpoint is not None:
        from mixkit.viz import mask_snapshots_figure

        snapshots = _load_snapshots(args.checkpoint, args.method)
        out = mask_snapshots_figure(snapshots, args.out, title=f"{args.method}: learned masks over training ({args.checkpoint})")
        print(f"mixkit: wrote {out.resolve()}")
        return 0
    data = load_dataset(args.data, root=args.data_root, split="test", cache_dir=args.cache_dir)
    import torch

    pick = torch.randperm(data.labels.shape[0], generator=torch.Generator().manual_seed(args.seed))[: args.columns]
    out = pair_grid(
        data.images[pick].float() / 255.0, data.labels[pick], args.out, method=args.method,
        hparams=_method_args(args), class_names=data.classes, seed=args.seed,
    )
    print(f"mixkit: wrote {out.resolve()}")
    return 0


def add_train_commands(sub: Any) -> None:
    """Register ``train``, ``bench`` and ``show`` on the CLI's subparsers."""
    p = sub.add_parser("train", help="train one method on a data set and model")
    p.add_argument("--method", required=True, help="registered method name (erm: no mixing)")
    p.add_argument("--alpha", type=float, help="the method's alpha")
    p.add_argument("--p", type=float, help="probability of mixing")
    p.add_argument("--mode", choices=("batch", "elem"), help="one lambda per batch or per sample")
    p.add_argument("--method-arg", action="append", metavar="KEY=VALUE", help="any other hyper-parameter (JSON value)")
    p.add_argument("--label-policy", help="a label policy (family 'label') to train the method with")
    p.add_argument("--label-arg", action="append", metavar="KEY=VALUE", help="a label-policy hyper-parameter (JSON value)")
    p.add_argument("--out", default="runs/run", help="output directory")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--save-mixer", help="learnable methods: save the trained mixer to this file")
    p.add_argument("--mixer", help="samix_p: the Mixer file written by --save-mixer (same as --method-arg mixer=FILE)")
    _add_config_flags(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("bench", help="run a grid of methods x seeds and report")
    p.add_argument("--methods", required=True,
                   help="comma-separated method names; NAME+POLICY trains NAME under a label policy")
    p.add_argument("--seeds", default="0", help="comma-separated seeds (default: 0)")
    p.add_argument("--out", default="runs/bench", help="output directory (re-run to resume)")
    p.add_argument("--report-only", action="store_true", help="train nothing: report the finished runs")
    p.add_argument("--method-arg", action="append", metavar="KEY=VALUE",
                   help="a hyper-parameter (JSON value) for every method of the grid that has it")
    p.add_argument("--mixer", help="samix_p: the Mixer file written by --save-mixer")
    _add_config_flags(p, seed=False)
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("show", help="picture of a method's mixes: pairs and results with label weights")
    p.add_argument("--method", required=True)
    p.add_argument("--data", default="fashion_mnist")
    p.add_argument("--data-root", default=None)
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--out", default="out/show.png")
    p.add_argument("--columns", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--alpha", type=float)
    p.add_argument("--p", type=float)
    p.add_argument("--mode", choices=("batch", "elem"))
    p.add_argument("--method-arg", action="append", metavar="KEY=VALUE")
    p.add_argument("--checkpoint", help="learnable methods: a run's checkpoint.pt (or a --save-mixer file); "
                   "draws the learned masks of fixed pairs over training")
    p.set_defaults(func=_cmd_show)
