"""The benchmark grid: methods x seeds on one data set and model, resumable, with a report.

Each run lives in ``OUT/<method>-seed<S>/``; a finished run (its ``metrics.json`` says
``finished``) is skipped, an interrupted one resumes from its checkpoint, so re-running the
same command continues the grid. The report is ``OUT/results.md``, ``OUT/results.csv`` and
plots (accuracy curves, a bar chart with error bars, reliability diagrams).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mixkit.train.config import TrainConfig
from mixkit.train.distributed import is_main
from mixkit.train.engine import TrainData, config_differences, load_train_data, train

__all__ = ["run_bench", "summarize", "write_report"]

_METRICS = ("top1", "top1_median_last", "nll", "ece", "corruption_top1")


def _load_finished(run_dir: Path, cfg: TrainConfig) -> dict[str, Any] | None:
    """The finished run's metrics, if it was made with ``cfg``'s settings (else an error)."""
    path = run_dir / "metrics.json"
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    if not data.get("finished"):
        return None
    diff = config_differences(data["config"], cfg)
    if diff:
        raise ValueError(f"{run_dir} was made with other settings for {', '.join(diff)}; use another --out")
    return data


def run_bench(
    methods: Sequence[str],
    seeds: Sequence[int],
    base: TrainConfig,
    out: str | Path,
    *,
    data: TrainData | None = None,
    train_missing: bool = True,
    method_args: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Run (or reuse) every method x seed; return the summary rows and write the report.

    A method written ``NAME+POLICY`` (``mixup+decouplemix``) trains ``NAME`` under the label
    policy ``POLICY``. ``method_args`` go to every method of the grid that has that
    hyper-parameter (``{"mixer": FILE}`` reaches ``samix_p`` only); each must fit at least one.
    With ``train_missing=False`` nothing is trained: the report covers the finished runs.
    """
    shared = _split_method_args(methods, method_args or {})
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    for seed in seeds:
        for method in methods:
            run_dir = out / f"{method}-seed{seed}"
            name, _, policy = method.partition("+")
            cfg = dataclasses.replace(base, method=name, label_policy=policy or None, seed=seed, out=str(run_dir),
                                      method_args=shared[name], label_policy_args={})
            metrics = _load_finished(run_dir, cfg)
            if metrics is None and not train_missing:
                continue
            if metrics is None:
                data = data or load_train_data(base)
                _say(f"bench: {method} seed {seed} -> {run_dir}")
                metrics = train(cfg, resume=True, data=data)
            else:
                _say(f"bench: {method} seed {seed} already finished, reusing {run_dir}")
            results[method].append(metrics)
    rows = summarize(results)
    if is_main():
        write_report(rows, results, out, base)
    return rows


def _split_method_args(methods: Sequence[str], args: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each method name's share of ``args``: the keys among its hyper-parameters."""
    from mixkit.errors import HyperParameterError
    from mixkit.registry import method_info

    names = {m.partition("+")[0] for m in methods}
    shared = {n: {k: v for k, v in args.items() if k in method_info(n).defaults} for n in names}
    unused = sorted(k for k in args if not any(k in share for share in shared.values()))
    if unused:
        raise HyperParameterError(f"no method of the grid ({', '.join(sorted(names))}) has the hyper-parameter(s) "
                                  f"{', '.join(unused)}")
    return shared


def _say(text: str) -> None:
    if is_main():
        print(text, flush=True)


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _epoch_time(run: dict[str, Any]) -> float:
    """A run's median epoch time (robust to a machine that was busy for part of the run)."""
    times = [e["epoch_time_s"] for e in run.get("epochs", []) if "epoch_time_s" in e]
    return statistics.median(times) if times else run["train_time_per_epoch_s"]


def summarize(results: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per method: mean and std over seeds of each metric, time per epoch, relative cost."""
    rows = []
    for method, runs in results.items():
        if not runs:
            continue
        row: dict[str, Any] = {"method": method, "seeds": len(runs)}
        for key in _METRICS:
            vals = [r["final"][key] for r in runs if key in r["final"]]
            row[f"{key}_mean"], row[f"{key}_std"] = _mean_std(vals)
        row["epoch_time_s"] = statistics.fmean(_epoch_time(r) for r in runs)
        rows.append(row)
    base_time = next((r["epoch_time_s"] for r in rows if r["method"] == "erm"), rows[0]["epoch_time_s"] if rows else 1.0)
    for r in rows:
        r["relative_cost"] = r["epoch_time_s"] / base_time
    return rows


def _fmt(row: dict[str, Any], key: str, scale: float = 1.0, digits: int = 2) -> str:
    m, s = row[f"{key}_mean"] * scale, row[f"{key}_std"] * scale
    return f"{m:.{digits}f} ± {s:.{digits}f}" if row["seeds"] > 1 else f"{m:.{digits}f}"


def _cost_base(rows: list[dict[str, Any]]) -> str:
    """The method the cost column is relative to (ERM if in the grid, else the first)."""
    names = [r["method"] for r in rows]
    return "ERM" if "erm" in names or not names else f"{names[0]} (no ERM in this grid)"


def write_report(rows: list[dict[str, Any]], results: dict[str, list[dict[str, Any]]], out: Path, base: TrainConfig) -> None:
    """``results.md``, ``results.csv`` and the plots."""
    lines = [
        f"# Benchmark: {base.data} ({base.subset or 'all'} images per class), {base.model}, {base.epochs} epochs",
        "",
        "Mean ± standard deviation over seeds (n = seeds). top-1 last: the last epoch's test top-1;",
        f"top-1 median: the median of the last {base.median_last} evaluations; ECE with 15 bins;",
        "corruption: mean top-1 over the corruptions and severities; s / epoch: the median training time",
        f"of an epoch; cost: s / epoch relative to {_cost_base(rows)}; epoch times also depend on what",
        "else the machine ran meanwhile.",
        "",
        "| method | n | top-1 last (%) | top-1 median (%) | NLL | ECE | corruption top-1 (%) | s / epoch | cost |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['seeds']} | {_fmt(r, 'top1')} | {_fmt(r, 'top1_median_last')} | {_fmt(r, 'nll', digits=3)} "
            f"| {_fmt(r, 'ece', digits=3)} | {_fmt(r, 'corruption_top1')} | {r['epoch_time_s']:.1f} | {r['relative_cost']:.2f} |"
        )
    (out / "results.md").write_text("\n".join(lines) + "\n")
    with (out / "results.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["method"])
        writer.writeheader()
        writer.writerows(rows)
    try:
        from mixkit.train.plots import plot_accuracy_curves, plot_bars, plot_reliability
    except ImportError:
        return
    if not rows:
        return
    plot_accuracy_curves({m: [r["epochs"] for r in runs] for m, runs in results.items() if runs}, out / "accuracy_curves.png")
    plot_bars(rows, out / "top1_bars.png")
    rel = {m: _last_reliability(runs[0]) for m, runs in results.items() if runs and _last_reliability(runs[0])}
    if rel:
        plot_reliability(rel, out / "reliability.png")


def _last_reliability(metrics: dict[str, Any]) -> dict[str, Any] | None:
    evals = [h for h in metrics["epochs"] if "test" in h]
    return evals[-1]["test"].get("reliability") if evals else None
