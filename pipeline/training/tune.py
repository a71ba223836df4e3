"""Hyper-parameter search on the validation split: what `relgraph tune` runs.

One search is one model on one task: `trials` trials proposed by Optuna's TPE sampler
(seeded, so a seed gives the same proposals), each a training run on split `train` that
early-stops on, and is scored by, the task's metric on split `val`. Trial 0 is the
configuration the pipeline ships (TrainConfig / GBDTConfig defaults), so the winner is
the best on val of the shipped defaults and `trials - 1` proposals, and every model, graph
model or LightGBM, gets the same number of trials (and the same timeout): no comparison
is won by tuning one side only.

The test split is never scored: graph models are given the train and val examples only
(the Trainer's epoch loop runs here without `fit`'s final test evaluation), and LightGBM
reads a temporary view of the task table without its test rows.

MLflow (experiment `relgraph/<dataset>/<task>`): one parent run per search (tag and
param `search=true`, tag `relgraph_role=search`, params `model`, `trials`, `seed`, the
search space) and one nested run per trial (tag `relgraph_role=trial`) with the trial's
params, its val metrics and its per-epoch curve. The result, best params included, is
written to `results/<dataset>/<task>/tune_<model>.json`.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Callable

import duckdb
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, IntDistribution

from pipeline.data.spec import DatasetSpec, TaskSpec
from pipeline.paths import DataPaths
from pipeline.training.tracking import Tracker, git_commit
from pipeline.training.prepare import PreparedTask, prepare_task
from pipeline.training.zoo import model_entry


def search_space(model: str) -> dict[str, BaseDistribution]:
    """The default search space of `model` (its family's space and the entry's own)."""
    entry = model_entry(model)
    return entry.family.search_space(entry)


def default_config(model: str):
    """The configuration `relgraph run` trains `model` with."""
    return model_entry(model).default_config()


def trial_config(model: str, base, params: dict):
    """`base` with the searched `params` set."""
    entry = model_entry(model)
    return entry.family.trial_config(entry, base, params)


def base_params(model: str, base, space: dict[str, BaseDistribution]) -> dict:
    """The point of `space` that is `base` (trial 0); a clear error when there is none."""
    entry = model_entry(model)
    params = entry.family.base_params(entry, base, space)
    outside = [f"{n}={v!r} (space: {space[n]})" for n, v in params.items()
               if not _contains(space[n], v)]
    if outside:
        raise ValueError(f"{model}: the base configuration lies outside the search space: "
                         f"{'; '.join(outside)}; widen the space or change the base")
    return params


def _contains(dist: BaseDistribution, value) -> bool:
    if isinstance(dist, CategoricalDistribution):
        return value in dist.choices
    return dist.low <= value <= dist.high


def _suggest(trial: optuna.Trial, name: str, dist: BaseDistribution):
    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(name, dist.choices)
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
    return trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)


def tune(prep: PreparedTask, model: str, trials: int, *, paths: DataPaths,
         tracker: Tracker | None = None, seed: int = 0, timeout_s: float | None = None,
         base=None, space: dict[str, BaseDistribution] | None = None,
         log: Callable[[str], None] = print) -> dict:
    """Search `model`'s hyper-parameters on val; write and return the result dict.

    `prep` is the prepared task (its warehouse connection may be read-only; graph models
    need its graph). `base` (default: the shipped configuration) fixes every field that
    is not searched (epochs, patience, batch size, the training seed, ...) and is trial 0;
    `space` defaults to `search_space(model)`. `seed` seeds the sampler. The search stops
    after `trials` trials or, when `timeout_s` is given, at the first trial that ends
    after it.
    """
    if trials < 1:
        raise ValueError(f"trials must be at least 1, got {trials}")
    entry = model_entry(model)
    spec, task = prep.spec, prep.task
    space = search_space(model) if space is None else space
    base = default_config(model) if base is None else base
    first = base_params(model, base, space)
    metric = task.metric
    experiment_id = parent_id = None
    graph_hash = prep.graph.hash if prep.graph is not None else ""
    tags = {"dataset": spec.name, "task": task.name, "search": "true",
            **({"graph_hash": graph_hash} if graph_hash else {})}
    if tracker is not None:
        tracker.check()
        experiment_id = tracker.experiment(spec.name, task.name)
        parent_id = _start_search_run(tracker, experiment_id, model, tags, {
            "search": "true", "model": model, "trials": trials, "seed": seed,
            "timeout_s": timeout_s or "", "sampler": "TPESampler", "metric": metric,
            "space": json.dumps({k: repr(v) for k, v in space.items()}),
            "git_commit": git_commit() or ""})

    def objective(trial: optuna.Trial) -> float:
        params = {name: _suggest(trial, name, dist) for name, dist in space.items()}
        cfg = trial_config(model, base, params)
        t0 = time.perf_counter()
        # A trial may want a scratch directory; it keeps nothing there.
        with tempfile.TemporaryDirectory() as workdir:
            out = entry.family.trial(entry, cfg, prep, Path(workdir))
        seconds = time.perf_counter() - t0
        value = out.val_metrics.get(metric, math.nan)
        trial.set_user_attr("val_metrics", out.val_metrics)
        trial.set_user_attr("best_epoch", out.best_epoch)
        trial.set_user_attr("seconds", seconds)
        if tracker is not None:
            run_id = tracker.log_model_run(
                experiment_id, parent_id, model=model,
                params={**entry.family.log_params(cfg), **params, "trial": trial.number},
                history=out.history,
                metrics={**{f"val_{k}": v for k, v in out.val_metrics.items()},
                         "best_epoch": out.best_epoch, "train_seconds": seconds},
                tags={**tags, "trial": str(trial.number)})
            _mark_trial(tracker, run_id, model, trial.number)
            trial.set_user_attr("mlflow_run_id", run_id)
        log(f"{model} trial {trial.number}: val_{metric}={value:.4f} ({seconds:.1f}s) "
            + " ".join(f"{k}={_fmt(v)}" for k, v in params.items()))
        return value  # NaN: Optuna records the trial as failed and goes on

    started = time.perf_counter()
    direction = "minimize" if task.lower_is_better else "maximize"
    study = optuna.create_study(direction=direction, sampler=optuna.samplers.TPESampler(seed=seed))
    study.enqueue_trial(first)
    try:
        study.optimize(objective, n_trials=trials, timeout=timeout_s)
        result = _result(study, spec, task, model, metric, trials, seed, timeout_s, space, base,
                         graph_hash, parent_id, time.perf_counter() - started)
    except BaseException:
        if tracker is not None:
            tracker.client.set_terminated(parent_id, "FAILED")
        raise
    path = paths.results / spec.name / task.name / f"tune_{model}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=float))
    result["path"] = str(path)
    if tracker is not None:
        tracker.client.set_tag(parent_id, "best_trial", str(result["best"]["trial"]))
        tracker.log_parent(parent_id, {
            f"best_val_{metric}": result["best"]["value"],
            f"defaults_val_{metric}": result["defaults"]["value"],
            "trials_completed": result["trials_completed"]}, artifacts=[path], finish=True)
    return result


def _start_search_run(tracker: Tracker, experiment_id: str, model: str, tags: dict,
                      params: dict) -> str:
    from mlflow.entities import Param

    client = tracker.client
    run = client.create_run(experiment_id, run_name=f"tune {model}",
                            tags={**tags, "model": model, "relgraph_role": "search"})
    client.log_batch(run.info.run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])
    return run.info.run_id


def _mark_trial(tracker: Tracker, run_id: str, model: str, number: int) -> None:
    """A trial is not a model run of the pipeline: its role and name say so (the Tracker
    logs every nested run as role `model`)."""
    from mlflow.entities import RunTag

    tracker.client.log_batch(run_id, tags=[RunTag("relgraph_role", "trial"),
                                           RunTag("mlflow.runName", f"{model} trial {number}")])


def _result(study: optuna.Study, spec: DatasetSpec, task: TaskSpec, model: str, metric: str,
            trials: int, seed: int, timeout_s: float | None, space: dict, base, graph_hash: str,
            parent_id: str | None, seconds: float) -> dict:
    rows = [{"trial": t.number, "state": t.state.name,
             "value": t.value if t.value is not None else math.nan, "params": t.params,
             **{k: t.user_attrs.get(k) for k in ("best_epoch", "seconds", "val_metrics",
                                                 "mlflow_run_id")}}
            for t in study.trials]
    done = [r for r in rows if r["state"] == "COMPLETE"]
    if not rows:
        raise ValueError(f"{spec.name}/{task.name}/{model}: timeout_s={timeout_s} ended the "
                         "search before its first trial")
    if not done:
        raise ValueError(f"{spec.name}/{task.name}/{model}: no trial gave a finite val_{metric} "
                         f"({len(rows)} trials); look at the val split's labels")
    best = study.best_trial
    defaults = rows[0]
    gain = best.value - defaults["value"]
    return {
        "dataset": spec.name, "task": task.name, "model": model, "metric": metric,
        "direction": study.direction.name.lower(), "seed": seed, "sampler": "TPESampler",
        "trials_requested": trials, "trials_completed": len(done), "timeout_s": timeout_s,
        "seconds": seconds, "graph_hash": graph_hash,
        "experiment": f"relgraph/{spec.name}/{task.name}", "mlflow_parent_run_id": parent_id,
        "space": {k: repr(v) for k, v in space.items()},
        "defaults": {"trial": 0, "params": defaults["params"], "value": defaults["value"]},
        "best": {"trial": best.number, "params": best.params, "value": best.value,
                 "best_epoch": best.user_attrs["best_epoch"],
                 "config": asdict(trial_config(model, base, best.params))},
        # positive: the best trial beats the shipped defaults on val (in the metric's direction)
        "improvement": -gain if task.lower_is_better else gain,
        "trials": rows,
    }


def summary(result: dict) -> str:
    """The best params and how they compare with the shipped defaults on val, in words."""
    m, best, dflt = result["metric"], result["best"], result["defaults"]
    head = (f"{result['dataset']} / {result['task']} / {result['model']}: "
            f"{result['trials_completed']} of {result['trials_requested']} trials, "
            f"TPE seed {result['seed']}, {result['seconds']:.0f}s; scored on val only")
    params = "best params: " + " ".join(f"{k}={_fmt(v)}" for k, v in best["params"].items())
    if best["trial"] == dflt["trial"]:
        line = f"the shipped defaults won: val_{m}={best['value']:.4f} (trial 0); no trial beat them"
    else:
        line = (f"best val_{m}={best['value']:.4f} (trial {best['trial']}) vs shipped defaults "
                f"{dflt['value']:.4f} (trial 0): {result['improvement']:+.4f}"
                f"{'' if result['improvement'] >= 0 else ' (worse)'}")
    return "\n".join([head, params, line, f"written to {result['path']}",
                      f"MLflow experiment: {result['experiment']} (parent run "
                      f"{result['mlflow_parent_run_id']})"])


def _fmt(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def tune_dataset(spec: DatasetSpec, task: TaskSpec, model: str, trials: int, *, seed: int = 0,
                 timeout_s: float | None = None, epochs: int | None = None,
                 paths: DataPaths | None = None, log: Callable[[str], None] = print) -> dict:
    """`tune` on a data directory whose warehouse, task table and graph are built (what
    `relgraph tune` runs after materializing them); `epochs` is the epoch budget of
    models whose configuration has one."""
    paths = paths or DataPaths.from_env()

    @contextmanager
    def connect():
        con = duckdb.connect(str(paths.warehouse), read_only=True)
        try:
            yield con
        finally:
            con.close()

    entry = model_entry(model)
    base = default_config(model)
    if epochs and "epochs" in {f.name for f in fields(base)}:
        base = replace(base, epochs=epochs)
    # the cached graph the training assets use
    prep = prepare_task(connect, spec, task,
                        graphs_dir=paths.graphs / spec.name if entry.family.needs_graph else None)
    return tune(prep, model, trials, paths=paths, tracker=Tracker.default(paths), seed=seed,
                timeout_s=timeout_s, base=base, log=log)
