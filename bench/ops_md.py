"""Render ``docs/benchmarks/ops.md`` from the JSON file of ``bench/ops.py``.

Usage:
    python bench/ops_md.py [--json bench/results/ops.json] [--out docs/benchmarks/ops.md]

``bench/ops.py`` calls :func:`render` itself at the end of a run; this script re-renders the
page from a JSON file (e.g. after editing the text here).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ops_stats  # noqa: E402

PEERS = ("timm", "timm_pair", "kornia", "mixup")
HEADS = {"timm": "timm", "timm_pair": "timm pair", "kornia": "kornia", "mixup": "mixup (PyPI)", "clone": "clone", "fresh": "fresh"}
KEY = ("op", "size", "dtype", "mode", "pass", "device")
CLOCKS = {
    "wall": "of wall-clock time (`time.perf_counter`; CUDA rows synchronise before and after the call).",
    "cpu": "of the process's CPU time (`time.process_time`, `--clock cpu`, one torch thread): time the process "
    "was not running (preempted by other work on a busy machine) is not counted, so the figures are close to an "
    "idle machine's one-thread wall time but leave out any waiting; the wall-clock medians are in the JSON "
    "(`wall_median_ms`). CUDA rows always use wall-clock time.",
}
LIBS_TABLE = [
    "| library | operations timed | mixes labels in the call | works in place |",
    "|---|---|---|---|",
    "| mixkit | every registered method (`method(x, y)`; mosaic with `placement=\"corner\"`) | yes: `MixTarget`, "
    "made dense with `.soft()` inside the timed call | no, unless built with `inplace=True` (Mixup, CutMix): the "
    "*mixkit in place* column, on a tensor it overwrites at every call |",
    "| timm `Mixup` | mixup, cutmix (`mixup_alpha`/`cutmix_alpha`, the other 0), modes batch, elem, pair | "
    "yes: dense `(B, K)`, `label_smoothing=0` | **yes**: every mode writes into `x` (elem/pair keep a clone as "
    "the source); timed on a fresh `x.clone()` per call, inside the timed call; the *timm in place* column: "
    "on a tensor it overwrites at every call |",
    "| kornia | `RandomMixUpV2`, `RandomCutMixV2` (`use_correct_lambda=True`), `RandomMosaic`; `p=1.0` | mixup, "
    "cutmix: yes, `(B, 3)` rows `[y, y2, lambda]`; Mosaic: no labels | no |",
    "| mixup (PyPI) | `VanillaMixUp`, `CutMix`, `ResizeMix`, `FMix`, `SaliencyMix`, `PuzzleMix` (heuristic "
    "saliency); one lambda per batch | yes: dense, from one-hot float labels | no |",
]


def _index(rows: list[dict]) -> dict[tuple, dict[str, dict]]:
    table: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        table.setdefault(tuple(r[k] for k in KEY), {})[r["lib"]] = r
    return table


def _ms(r: dict | None) -> str:
    if r is None:
        return "-"
    if r["status"] != "ok":
        return r["status"]
    m = r["median_ms"]
    return f"{m:.2f}" if m < 10 else f"{m:.1f}" if m < 1000 else f"{m:.0f}"


def fastest_peer(libs: dict[str, dict]) -> str | None:
    """The peer with the smallest median time in a row (None without one)."""
    ok = {k: v["median_ms"] for k, v in libs.items() if k in PEERS and v["status"] == "ok"}
    return min(ok, key=ok.get) if ok else None


def paired(libs: dict[str, dict], lib: str, peer: str | None) -> dict | None:
    """``lib``'s per-round ratio to ``peer`` (``bench/ops_stats.py``), if the run recorded it."""
    return (libs.get(lib) or {}).get("paired", {}).get(peer) if peer else None


def _interval(p: dict | None) -> str:
    """`` [lo, hi]``, marked ``*`` when fewer than 6 rounds make it the rounds' range."""
    if not p:
        return ""
    return f" [{p['ci_lo']:.2f}, {p['ci_hi']:.2f}]" + ("*" if p["coverage"] < 0.95 else "")


def _ratios(libs: dict[str, dict]) -> tuple[str, str]:
    """mixkit / fastest peer out of place, and mixkit / timm in place (both measured in place),
    each with the 95% interval of the paired per-round ratio when the run recorded it."""
    ok = {k: v["median_ms"] for k, v in libs.items() if v["status"] == "ok"}
    fmt = lambda r: f"**{r:.2f}**" if r > 1.0 else f"{r:.2f}"  # noqa: E731 - slower than a peer in bold
    peer = fastest_peer(libs)
    out_of_place = (fmt(ok["mixkit"] / ok[peer]) + _interval(paired(libs, "mixkit", peer))
                    if "mixkit" in ok and peer else "-")
    in_place = (fmt(ok["mixkit_inplace"] / ok["timm_inplace"]) + _interval(paired(libs, "mixkit_inplace", "timm_inplace"))
                if {"mixkit_inplace", "timm_inplace"} <= set(ok) else "-")
    return out_of_place, in_place


def noise_line(verdicts: list[tuple[str, str]], what: str) -> list[str]:
    """How many of the rows are slower, faster or within noise by the paired intervals."""
    counted = [v for v, _ in verdicts if v]
    if not counted:
        return []
    slower = [n for v, n in verdicts if v == "slower"]
    few = counted.count("few rounds")
    return [f"  - By the paired per-round ratio ({what}; 95% interval of its median, from order statistics): "
            f"faster beyond noise in {counted.count('faster')}, within noise in {counted.count('within noise')}, "
            f"slower beyond noise in {len(slower)} of {len(counted)} rows" + (f" ({', '.join(slower)})" if slower else "")
            + (f"; {few} timed in fewer than 5 rounds (the row's time budget), no verdict." if few else ".")]


def compared_table(rows: list[dict]) -> list[str]:
    lines = [
        "| operation | size | dtype | mode | pass | device | mixkit | " + " | ".join(HEADS[p] for p in PEERS)
        + " | clone | fresh | mixkit / fastest peer | mixkit in place | timm in place | in place: mixkit / timm | copy |",
        "|---" * (14 + len(PEERS)) + "|",
    ]
    table = _index([r for r in rows if r.get("group") == "compared"])
    first = {op: i for i, op in enumerate(dict.fromkeys(k[0] for k in table))}
    order = lambda k: (first[k[0]], k[1], k[2] != "float32", k[2], k[3] != "batch", k[4] != "fwd", k[5])  # noqa: E731
    for key, libs in sorted(table.items(), key=lambda item: order(item[0])):
        op, size, dtype, mode, pass_, device = key
        cells = [_ms(libs.get(lib)) for lib in ("mixkit",) + PEERS + ("clone", "fresh")]
        ratio, ratio_in_place = _ratios(libs)
        lines.append(f"| {op} | {size} | {dtype} | {mode} | {pass_} | {device} | " + " | ".join(cells)
                     + f" | {ratio} | {_ms(libs.get('mixkit_inplace'))} | {_ms(libs.get('timm_inplace'))} | {ratio_in_place}"
                     f" | {_ms(libs.get('copy'))} |")
    return lines


def summary(rows: list[dict]) -> list[str]:
    """The targets of the speed issue, counted from the rows: mixkit at most the fastest peer
    (out of place), and per-sample (``elem``) mode at least 10 times faster than timm's."""
    table = _index([r for r in rows if r.get("group") == "compared"])
    med = lambda libs, k: libs[k]["median_ms"] if k in libs and libs[k]["status"] == "ok" else None  # noqa: E731
    name = lambda key: " ".join(str(v) for v in key if v != "cpu")  # noqa: E731
    compared, losing, elem, verdicts = 0, [], [], []
    for key, libs in table.items():
        mine = med(libs, "mixkit")
        peers = [v for v in (med(libs, p) for p in PEERS) if v is not None]
        if mine is None or not peers:
            continue
        compared += 1
        pair = paired(libs, "mixkit", fastest_peer(libs))
        verdicts.append((ops_stats.verdict(pair), name(key)))
        if mine > min(peers):
            losing.append(f"{name(key)} ({mine / min(peers):.2f}" + (f"; paired{_interval(pair)}: {verdicts[-1][0]})"
                                                                      if pair else ")"))
        timm = med(libs, "timm")
        if key[3] == "elem" and timm is not None:
            least = med(libs, "fresh") or med(libs, "clone") or math.inf  # one fresh batch written
            elem.append((timm / mine, name(key), timm / least))
    if not compared:
        return []
    lines = [f"- mixkit's median is at most the fastest peer's in **{compared - len(losing)} of {compared}** rows"
             + (f"; slower in: {', '.join(losing)} (mixkit / fastest peer)." if losing else ".")]
    lines += noise_line(verdicts, "mixkit / fastest peer, round by round")
    pairs = [(med(libs, "mixkit_inplace") / med(libs, "timm_inplace"), name(key)) for key, libs in table.items()
             if med(libs, "mixkit_inplace") is not None and med(libs, "timm_inplace") is not None]
    if pairs:
        slower = sorted((r, n) for r, n in pairs if r > 1)
        lines.append(f"- In place (`inplace=True` against timm, each overwriting a tensor of its own): mixkit at most "
                     f"timm's time in **{len(pairs) - len(slower)} of {len(pairs)}** rows"
                     + (f"; slower in: {', '.join(f'{n} ({r:.2f})' for r, n in slower)}." if slower else "."))
        lines += noise_line([(ops_stats.verdict(paired(libs, "mixkit_inplace", "timm_inplace")), name(key))
                             for key, libs in table.items() if med(libs, "mixkit_inplace") is not None
                             and med(libs, "timm_inplace") is not None], "mixkit in place / timm in place")
    lines += _inplace_elem(table, med, name)
    if elem:
        short = sorted(e for e in elem if e[0] < 10)
        lines.append(f"- Per-sample mode against timm's `elem`: **{len(elem) - len(short)} of {len(elem)}** rows at "
                     f"least 10 times faster (range {min(elem)[0]:.1f}x to {max(elem)[0]:.1f}x)"
                     + (f"; under 10x: {', '.join(f'{n} ({r:.1f}x)' for r, n, _ in short)}." if short else "."))
        bound = [(c, n) for r, n, c in short if c < 10]
        if bound:
            lines.append("  - Out of reach out of place: an out-of-place call reads the batch and writes a fresh one "
                         "at least (the `fresh` column: mixkit's cheapest fresh copy; `clone` where a run did not "
                         "record it), and there timm's `elem` takes less than 10 times that, so no out-of-place "
                         "call can be 10 times faster (timm / that least cost: "
                         + ", ".join(f"{n} {c:.1f}x" for c, n in sorted(bound)) + ").")
    return lines


#: operations whose in-place call rewrites every sample (a blend): at least the bytes of a copy
#: (one read and one write of the batch); a paste rewrites only its boxes
WHOLE_BATCH_OPS = ("mixup",)


def _inplace_elem(table: dict, med: Callable, name: Callable) -> list[str]:
    """Per-sample mode in place against timm's in place, with the bound the ``copy`` column sets."""
    keys = [key for key, libs in table.items()
            if key[3] == "elem" and med(libs, "mixkit_inplace") and med(libs, "timm_inplace")]
    rows = [(med(table[key], "timm_inplace") / med(table[key], "mixkit_inplace"), name(key),
             med(table[key], "timm_inplace") / (med(table[key], "copy") or math.inf)
             if key[0] in WHOLE_BATCH_OPS else math.inf) for key in keys]
    if not rows:
        return []
    bound = sorted((c, n) for r, n, c in rows if r < 10 and c < 10)
    return [f"- Per-sample mode in place (both libraries in place): **{sum(r >= 10 for r, _, _ in rows)} of {len(rows)}**"
            " rows at least 10 times faster than timm's `elem` ("
            + ", ".join(f"{n} {r:.1f}x" for r, n, _ in sorted(rows)) + ")."
            + ("" if not bound else " A blend in place reads and rewrites every sample: at least the bytes of the "
               "`copy` column (one read and one write of the batch, into a tensor of its own), and that is less "
               "than a tenth of timm's time there (timm in place / copy: "
               + ", ".join(f"{n} {c:.1f}x" for c, n in bound) + ").")]


def others_table(rows: list[dict]) -> list[str]:
    rows = [r for r in rows if r.get("group") == "mixkit-only" and r["lib"] == "mixkit"]
    if not rows:
        return ["(none timed)"]
    columns = sorted({(r["size"], r["dtype"], r["pass"], r["device"], r["mode"]) for r in rows})
    cells = {(r["op"], (r["size"], r["dtype"], r["pass"], r["device"], r["mode"])): r for r in rows}
    heads = [f"{s} {d} {p} {dev} {m}".replace(" float32", "").replace(" fwd ", " ").replace(" cpu", "")
             for s, d, p, dev, m in columns]
    lines = ["| method | " + " | ".join(heads) + " |", "|---" * (1 + len(columns)) + "|"]
    for op in dict.fromkeys(r["op"] for r in rows):
        lines.append(f"| `{op}` | " + " | ".join(_ms(cells.get((op, c))) for c in columns) + " |")
    return lines


def problems(rows: list[dict]) -> list[str]:
    bad = [r for r in rows if r["status"] == "error"]
    return [f"- {r['op']} {r['size']} {r['dtype']} {r['mode']} {r['pass']} {r['lib']}: {r['reason']}" for r in bad]


def render(result: dict) -> str:
    m, s = result["machine"], result["settings"]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v)
    skipped = result.get("skipped_peers") or {}
    lines = [
        "# Operation times: mixkit and its peers, side by side",
        "",
        f"Measured {result['created']} on {m['cpu']} ({m['cores']} cores"
        + (f", GPU {m['gpu']}" if m.get("gpu") else "") + f"), {m['platform']}, Python {m['python']}; "
        f"torch threads {m['threads']} (OMP_NUM_THREADS={m.get('omp_num_threads')}, THP_MEM_ALLOC_ENABLE={m.get('thp_mem_alloc_enable')}). Versions: {versions}.",
        f"Load average before {result['loadavg_before'][0]:.2f}, after {result['loadavg_after'][0]:.2f} "
        f"(1 min); each row's own load is in the JSON. Run time {result['duration_s']:.0f} s.",
        "",
        "Reproduce (builds `.bench-venv` with the peers, then runs the benchmark): `make bench-ops`, i.e.",
        "`sh scripts/bench-env.sh && .bench-venv/bin/python bench/ops.py`. This page came from:",
        "; ".join(f"`{c}`" for c in result.get("commands", [result["command"]]))
        + (" (runs merged with `--merge`; the protocol figures below are the last run's, each row's repeats "
           "and time are in the JSON)." if len(result.get("commands", [])) > 1 else "."),
        "",
        f"Protocol: a batch of {s['batch']} images `torch.rand(B, 3, S, S)` (seed {s['seed']}) and integer labels "
        "(10 classes at 32x32, 1000 at 224x224), identical for every library of a row. Each call mixes the images "
        "and the labels. `batch` mode: one lambda (box, mask) per batch; `elem`: per sample. `fwd+bwd`: "
        "`x.requires_grad_()`, then `out.sum().backward()` is inside the timed call. "
        f"{s['warmup']} warm-up call(s), then up to {s['repeats']} timed calls per library (fewer, at least 3, "
        f"where a row would exceed {s['budget']:g} s; 1 for a call slower than that), the libraries of a row "
        "interleaved round-robin with a rotating order, so that drift of the machine cancels in the ratios. "
        "Where the run recorded it, a ratio cell also gives, in brackets, the 95% confidence interval of the median "
        "of the per-round ratios (each round's mixkit time over the same round's peer time; distribution-free, from "
        "order statistics): an interval that contains 1 means the difference is within this machine's run-to-run "
        "noise. It is an interval for the typical per-round ratio, which need not contain the ratio of the two "
        "medians printed before it; `*`: fewer than 6 rounds (slow calls and the row's time budget), so the "
        "interval is their range, of lower coverage. Times are medians in milliseconds (interquartile ranges in `bench/results/ops.json`), "
        + (CLOCKS[s.get("clock", "wall")]),
        "",
        "timm works in place: its timed call is `Mixup(x.clone(), y)`, the out-of-place equivalent of the "
        "others; the `clone` column is `x.clone()` alone, the `fresh` column "
        "`mixkit.functional.alloc.fresh_copy(x)`: the same copy into mixkit's own allocation (above 32 MiB, "
        "where torch's allocator maps 4 KiB pages afresh at every call: transparent huge pages, and a freed "
        "block kept for the next output of its size, so a loop's later calls fault no pages). *mixkit / fastest peer* compares with the peers as "
        "timed (out of place). The in-place columns (forward rows of Mixup and CutMix) time mixkit built with "
        "`inplace=True` and timm each on a tensor of its own that the call overwrites, again at every call "
        "(no clone); the `copy` column beside them is `own.copy_(x)` into a tensor kept across calls (one read and "
        "one write of the batch, no allocation). A ratio above 1 (bold) means mixkit is slower. `-`: the "
        "library does not offer that operation/mode; `n/a`: not in mixkit, no gradient flows "
        "(not differentiable), or a backward too slow to time (mixup's PuzzleMix above 64x64: one autograd "
        "node per swapped block, each copying the whole gradient).",
        "",
        *LIBS_TABLE,
        "",
    ]
    if skipped:
        lines += ["Peers skipped in this run: " + "; ".join(f"{k} ({v})" for k, v in skipped.items()) + ".", ""]
    lines += ["## Operations a peer also offers", "", *summary(result["rows"]), "", *compared_table(result["rows"]), "",
              "## Every other mixkit method (mixkit only)", "",
              "Each method with its default hyper-parameters; methods that need a model (feature-level, "
              "learnable) are timed as `sample` + `apply` on the input itself. Columns: size, dtype and pass "
              "when not float32 forward, mode. `n/a`: a learnable method whose mask comes from the model and its "
              "mixer network (its cost is in the training step).", "", *others_table(result["rows"]), ""]
    bad = problems(result["rows"])
    if bad:
        lines += ["## Errors", "", *bad, ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default="bench/results/ops.json")
    ap.add_argument("--out", default="docs/benchmarks/ops.md")
    args = ap.parse_args()
    Path(args.out).write_text(render(json.loads(Path(args.json).read_text())))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
