"""The ``mixkit`` command line: ``list``, ``info`` and ``demo``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

import torch

from mixkit.registry import FAMILIES, list_methods, method_info

__all__ = ["main"]


def _cmd_list(args: argparse.Namespace) -> int:
    names = list_methods(args.pattern, family=args.family)
    if args.json:
        print(json.dumps([method_info(n).to_dict() for n in names], indent=2, default=str))
        return 0
    if args.markdown:
        print(methods_markdown(names), end="")
        return 0
    rows = [(n, method_info(n).family, str(method_info(n).year), method_info(n).paper) for n in names]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(("name", "family", "year", "paper"))]
    for row in [("name", "family", "year", "paper")] + rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    return 0


def methods_markdown(names: Sequence[str]) -> str:
    """The methods table of ``docs/methods.md``, read from the registry."""
    lines = [
        "# Methods",
        "",
        "Generated from the registry by `mixkit list --markdown` (`make docs`); do not edit by hand.",
        "Lambda is always the weight of the original sample. `needs` is what the method needs",
        "besides the batch; `sources` is how many labels a mixed label combines.",
        "",
        "| name | family | paper | needs | sources | paper defaults | reference code |",
        "|---|---|---|---|---|---|---|",
    ]
    for n in names:
        info = method_info(n)
        defaults = ", ".join(f"`{k}={v!r}`" for k, v in info.defaults.items())
        needs = ", ".join(info.needs) or "nothing"
        paper = f"{info.paper} ({info.authors}, {info.venue})"
        lines.append(f"| `{n}` | {info.family} | {paper} | {needs} | {info.sources} | {defaults} | {info.code} |")
    return "\n".join(lines) + "\n"


def _cmd_info(args: argparse.Namespace) -> int:
    print(json.dumps(method_info(args.name).to_dict(), indent=2, default=str))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from mixkit.data import FASHION_MNIST_CLASSES, load_fashion_mnist
    from mixkit.viz import method_gallery

    images, labels = load_fashion_mnist("test", args.data_dir)
    pick = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(args.seed))[: args.columns]
    x = images[pick].float() / 255.0
    out = method_gallery(
        x, labels[pick], args.out, methods=args.methods or None, class_names=FASHION_MNIST_CLASSES, seed=args.seed
    )
    print(f"mixkit: wrote {out.resolve()}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mixkit", description="Mixed-sample data augmentation for PyTorch.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="list registered methods")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style name pattern (default: *)")
    p.add_argument("--family", choices=FAMILIES, help="only this family")
    p.add_argument("--json", action="store_true", help="print every method's metadata as JSON")
    p.add_argument("--markdown", action="store_true", help="print the docs/methods.md table")
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("info", help="print one method's metadata as JSON")
    p.add_argument("name")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("demo", help="picture of every method on real Fashion-MNIST images")
    p.add_argument("--out", default="out/methods.png", help="image file to write (default: out/methods.png)")
    p.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST .gz files")
    p.add_argument("--columns", type=int, default=8, help="images per row (default: 8)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--methods", nargs="*", help="registry names (default: all)")
    p.set_defaults(func=_cmd_demo)

    from mixkit.cli_train import add_train_commands

    add_train_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        if args.command in ("train", "bench"):
            print("mixkit: interrupted; run the same command again (train: with --resume) to continue "
                  "from the last finished epoch", file=sys.stderr)
        return 130
    except (ImportError, OSError, LookupError, ValueError) as err:
        print(f"mixkit: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
