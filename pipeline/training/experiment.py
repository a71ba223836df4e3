"""One model on one task, end to end: train any row of the model table on a prepared
task for one or more seeds, write plots and a result file, log to MLflow.

The result file (`results/<dataset>/<task>/<model>.json`) is what the evaluation step
and `relgraph run`'s summary read; MLflow gets the same numbers. On a RelBench task each
seed also writes its test predictions as a RelBench prediction file and logs RelBench's
metric of them as `test_relbench_<metric>` (pipeline/training/submission.py).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import statistics
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Callable

from pipeline.data.spec import TaskSpec
from pipeline.paths import DataPaths
from pipeline.training.tracking import Tracker, git_commit
from pipeline.evaluate import plot_curves
from pipeline.training.prepare import PreparedTask
from pipeline.training.submission import write_submission
from pipeline.training.zoo import MODELS, model_entry

# Checkpoints of this many data versions (graph + labels) are kept per model.
KEEP_CHECKPOINTS = 3


@dataclass
class RunContext:
    """Where a model run reads and writes, and who it reports to.

    `keep_checkpoints`: checkpoints of this many data versions are kept per model.
    """

    paths: DataPaths
    tracker: Tracker | None = None
    dagster_run_id: str = "local"
    log: Callable[[str], None] = print
    progress: bool = True
    extra_tags: dict[str, str] = field(default_factory=dict)
    keep_checkpoints: int = KEEP_CHECKPOINTS


def data_key(graph_hash: str, task: TaskSpec, cutoffs) -> str:
    """A short hash of what a model learns from: the graph and the task's labels and cutoffs.

    Checkpoints live under it, so a run resumes only from a checkpoint of the same data;
    a night with new rows (or a changed schema) trains afresh instead of reloading the
    previous night's finished model.
    """
    # Fields added after keys existed are left out while they hold their defaults, so the
    # checkpoints of tasks that do not use them keep resuming.
    task_fields = {f.name: getattr(task, f.name) for f in fields(task)
                   if f.name not in LATER_TASK_FIELDS or getattr(task, f.name) != f.default}
    cuts = asdict(cutoffs)
    for name, first in (("val_windows", "val"), ("test_windows", "test")):
        if cuts.get(name) == [cuts[first]]:
            del cuts[name]
    blob = json.dumps({"graph": graph_hash, "task": asdict_values(task_fields), "cutoffs": cuts},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


LATER_TASK_FIELDS = ("num_eval_windows", "test_context", "on_future_entity", "label_database",
                     "remove_columns", "relbench", "query")


def asdict_values(values: dict) -> dict:
    """`values` with dataclass members as dicts (what `asdict` of their holder gives)."""
    return {k: asdict(v) if is_dataclass(v) else v for k, v in values.items()}


def prune_checkpoints(model_dir: Path, keep: int = KEEP_CHECKPOINTS) -> list[Path]:
    """Delete all but the `keep` most recently used data versions under `model_dir`."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return []
    entries = sorted((p for p in model_dir.iterdir() if p.is_dir()),
                     key=lambda p: p.stat().st_mtime_ns, reverse=True)
    removed = entries[max(keep, 0):]
    for p in removed:
        shutil.rmtree(p, ignore_errors=True)
    return removed


def _summary(values: list[float]) -> dict[str, float]:
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return {"mean": float("nan"), "std": float("nan")}
    return {"mean": statistics.fmean(finite),
            "std": statistics.stdev(finite) if len(finite) > 1 else 0.0}


def _plots(task: TaskSpec, out_dir: Path, history: list[dict], y_true, scores) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    if history:
        paths.append(plot_curves(history, task.metric, out_dir / "curves.png", task.lower_is_better))
    return [Path(p) for p in paths + task.kind.plots(y_true, scores, out_dir)]


def run_model(prep: PreparedTask, model: str, config, ctx: RunContext, seeds: int = 1) -> dict:
    """Train `model` (a row of the model table) with `config`, its family's config, for
    seeds config.seed .. config.seed+seeds-1; return the result dict."""
    entry = model_entry(model)
    spec, task, graph_hash = prep.spec, prep.task, prep.graph.hash if prep.graph else ""
    experiment_id = parent_id = None
    if ctx.tracker is not None:
        ctx.tracker.check()
        experiment_id = ctx.tracker.experiment(spec.name, task.name)
        parent_id = ctx.tracker.parent_run(experiment_id, ctx.dagster_run_id,
                                           {"dataset": spec.name, "task": task.name,
                                            "graph_hash": graph_hash, **ctx.extra_tags})
    model_dir = ctx.paths.checkpoints / spec.name / task.name / model
    ckpt_dir = model_dir / data_key(graph_hash, task, prep.cutoffs)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    os.utime(ckpt_dir)  # in use: the newest for prune_checkpoints
    runs = []
    for i in range(seeds):
        seed = config.seed + i
        t0 = time.perf_counter()
        out_dir = ctx.paths.results / spec.name / task.name / model / f"seed{seed}"
        tags = {"dataset": spec.name, "task": task.name, "graph_hash": graph_hash,
                "dagster_run_id": ctx.dagster_run_id, **ctx.extra_tags}
        run_id = None
        if ctx.tracker is not None:  # open while the model trains: its system metrics
            run_id = ctx.tracker.start_model_run(experiment_id, parent_id, model, tags)
        try:
            with ctx.tracker.system_metrics(run_id) if run_id else nullcontext():
                fit = entry.family.fit(entry, replace(config, seed=seed), prep, ckpt_dir,
                                       progress=ctx.progress, log=ctx.log)
        except BaseException:
            if run_id:
                ctx.tracker.client.set_terminated(run_id, "FAILED")
            raise
        val_m, test_m = fit.val_metrics, fit.test_metrics
        seconds = time.perf_counter() - t0
        plots = _plots(task, out_dir, fit.history, fit.test_true, fit.test_scores)
        metrics = {**{f"val_{k}": v for k, v in val_m.items()},
                   **{f"test_{k}": v for k, v in test_m.items()}}
        sub = write_submission(prep, model, fit.test_scores, fit.test_true, ctx.paths.results,
                               seed=None if i == 0 else seed)
        if sub is not None:
            metrics.update({f"test_relbench_{k}": v for k, v in sub.metrics.items()})
        if ctx.tracker is not None:
            ctx.tracker.log_model_run(
                experiment_id, parent_id, model=model, run_id=run_id,
                params={**fit.params, "graph_hash": graph_hash, "git_commit": git_commit() or "",
                        "seed": seed, "test_context": task.test_context},
                history=fit.history, metrics={**metrics, "train_seconds": seconds},
                tags=tags, artifacts=plots + ([sub.path] if sub is not None else []))
        ctx.log(f"{task.name}/{model} seed {seed}: val_{task.metric}={val_m.get(task.metric):.4f} "
                f"test_{task.metric}={test_m.get(task.metric):.4f} ({seconds:.1f}s)")
        runs.append({"seed": seed, "metrics": metrics, "seconds": seconds, "mlflow_run_id": run_id,
                     "submission": str(sub.path) if sub is not None else None,
                     "train_seeds_per_s": fit.train_seeds_per_s, "checkpoint": fit.checkpoint,
                     "plots": [str(p) for p in plots]})
    prune_checkpoints(model_dir, ctx.keep_checkpoints)
    keys = sorted({k for r in runs for k in r["metrics"]})
    result = {
        "dataset": spec.name, "task": task.name, "model": model, "metric": task.metric,
        "test_context": task.test_context,
        "relbench_metric": task.kind.relbench_metric if task.relbench is not None else None,
        "dagster_run_id": ctx.dagster_run_id, "graph_hash": graph_hash,
        "experiment": f"relgraph/{spec.name}/{task.name}", "mlflow_parent_run_id": parent_id,
        "runs": runs,
        "summary": {k: _summary([r["metrics"].get(k, float("nan")) for r in runs]) for k in keys},
    }
    path = ctx.paths.results / spec.name / task.name / f"{model}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=float))
    return result


def load_results(paths: DataPaths, dataset: str, task: str, run_id: str | None = None) -> dict[str, dict]:
    """The latest result per model (only those of one Dagster run when run_id is given).

    Only `<model>.json` counts: the same directory holds tuning results (`tune_<model>.json`)."""
    out = {}
    for model in MODELS:
        f = paths.results / dataset / task / f"{model}.json"
        if not f.exists():
            continue
        res = json.loads(f.read_text())
        if run_id is None or res.get("dagster_run_id") == run_id:
            out[res["model"]] = res
    return out
