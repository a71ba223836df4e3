"""Comparing the models of one run: a markdown table, a plot, and the best by validation.

On a RelBench task the table also has RelBench's own test metric (`test roc_auc
(RelBench)`, nmae or map) and the run's test context; `submissions` is the folder of the
models' RelBench prediction files."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from pipeline.evaluate import plot_model_comparison
from pipeline.training.experiment import load_results
from pipeline.paths import DataPaths
from pipeline.data.spec import DatasetSpec, TaskSpec
from pipeline.training.tracking import Tracker


@dataclass
class Comparison:
    rows: list[dict]
    markdown: str
    best: str | None
    best_val: float
    plot: Path | None
    submissions: Path | None = None


def _fmt(s: dict) -> str:
    if s is None or math.isnan(s["mean"]):
        return "n/a"
    return f"{s['mean']:.4f} ± {s['std']:.4f}" if s["std"] else f"{s['mean']:.4f}"


def comparison(paths: DataPaths, spec: DatasetSpec, task: TaskSpec, run_id: str | None = None,
               tracker: Tracker | None = None) -> Comparison:
    """Collect the models' results (of one Dagster run when run_id is given)."""
    results = load_results(paths, spec.name, task.name, run_id)
    m = task.metric
    rows = []
    for model, res in results.items():
        s = res["summary"]
        rb = res.get("relbench_metric")
        rows.append({"model": model, "val": s.get(f"val_{m}"), "test": s.get(f"test_{m}"),
                     "seeds": len(res["runs"]), "seconds": sum(r["seconds"] for r in res["runs"]),
                     "parent": res.get("mlflow_parent_run_id"), "relbench_metric": rb,
                     "relbench": s.get(f"test_relbench_{rb}") if rb else None,
                     "context": res.get("test_context"),
                     "submission": (res["runs"][0].get("submission") if res["runs"] else None)})
    sign = 1 if task.lower_is_better else -1
    rows.sort(key=lambda r: sign * r["val"]["mean"] if not math.isnan(r["val"]["mean"]) else math.inf)
    rb = next((r["relbench_metric"] for r in rows if r["relbench_metric"]), None)
    if rb:  # a RelBench task: its own metric, and which test context the numbers are in
        lines = [f"| model | val {m} | test {m} | test {rb} (RelBench) | test context | seeds "
                 "| seconds |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['model']} | {_fmt(r['val'])} | {_fmt(r['test'])} | "
                  f"{_fmt(r['relbench'])} | {r['context']} | {r['seeds']} | {r['seconds']:.0f} |"
                  for r in rows]
    else:
        lines = [f"| model | val {m} | test {m} | seeds | seconds |", "|---|---|---|---|---|"]
        lines += [f"| {r['model']} | {_fmt(r['val'])} | {_fmt(r['test'])} | {r['seeds']} | "
                  f"{r['seconds']:.0f} |" for r in rows]
    best = rows[0]["model"] if rows else None
    best_val = rows[0]["val"]["mean"] if rows else float("nan")
    plot = None
    if rows:
        plot = plot_model_comparison({r["model"]: {"val": r["val"], "test": r["test"]} for r in rows},
                                     m, paths.results / spec.name / task.name / "comparison.png",
                                     task.lower_is_better)
        plot = Path(plot)
        parent = rows[0]["parent"]
        if tracker is not None and parent:
            tracker.log_parent(parent, {f"best_val_{m}": best_val}, [plot], finish=True)
    files = [Path(r["submission"]) for r in rows if r.get("submission")]
    submissions = files[0].parent.parent if files else None
    return Comparison(rows, "\n".join(lines), best, best_val, plot, submissions)
