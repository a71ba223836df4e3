"""RelBench's leaderboard: a trained model's test predictions as a prediction file, and
RelBench's own metric of them.

For a task of a RelBench folder (`task.relbench`) whose kind RelBench scores (binary
classification: roc_auc; regression: nmae; link prediction: map at eval_k; multiclass:
none), every model a run trains writes its test predictions to

    <RELGRAPH_DATA>/results/relbench-submission/<model>[-rolling][-seed<k>]/<dataset>__<task>.csv

(`-rolling` under `test_context: rolling`; `-seed<k>` for every seed after a run's
first), the flat folder per model that `python -m relbench.submit` scores, in relbench
3.0.2's prediction-table format: the key columns `[entity_col, time_col]` and the
prediction in `target_col` (a probability for binary classification, a value on the
label's scale for regression), or for link prediction `[src_entity_col, time_col]` and
`dst_entity_col`, a JSON list of at most `eval_k` destination ids, best first. Ids are
the folder's own key values; times are written as pandas writes them (what relbench's
evaluator compares the keys with, as text).

The metric is computed as relbench computes it (`TaskKind.relbench_score`), so that
`relbench.submit.evaluate_task(f"{dataset}/{task}", csv, dataset=DIR)` gives the same
number: nmae divides by the spread of RelBench's own train labels, which include the
rows relgraph drops for having no entity (`relbench_train_labels`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline.data.sqlutil import q, q_list
from pipeline.data.tasks import relbench_train_labels
from pipeline.training.prepare import PreparedTask

FOLDER = "relbench-submission"


@dataclass
class Submission:
    """One model's prediction file and RelBench's metric of it ({"roc_auc": x}, ...)."""

    path: Path
    metrics: dict[str, float]


def submission_dir(results: Path, model: str, test_context: str, seed: int | None = None) -> Path:
    """`results/relbench-submission/<model>[-rolling][-seed<k>]` (seed None: a run's first)."""
    name = model + ("-rolling" if test_context == "rolling" else "")
    return Path(results) / FOLDER / (name + (f"-seed{seed}" if seed is not None else ""))


def write_submission(prep: PreparedTask, model: str, test_scores, test_true, results: Path,
                     seed: int | None = None) -> Submission | None:
    """Write `model`'s test predictions of a RelBench task as its prediction file and
    score them as relbench does; None for a task RelBench does not score. `test_scores`
    are in the order of the task's test examples (cutoff, then entity), as every family
    returns them, and so is `test_true` (link prediction's true targets; other kinds'
    labels are read again from the task table); `seed` None is a run's first seed."""
    task, spec = prep.task, prep.spec
    rb, kind = task.relbench, task.kind
    if rb is None or kind.relbench_metric is None:
        return None
    k = rb.eval_k or 10
    predictions = kind.relbench_predictions(test_scores, k)
    keys = list(spec.tables[task.entity_table].primary_key)
    table = q(f"task_{task.name}")
    with prep.connect() as con:
        label = "" if kind.ranks_targets else ", CAST(label AS DOUBLE) AS label"
        frame = con.sql(f"SELECT DISTINCT {q_list(keys)}, __entity_id, cutoff{label} FROM {table} "
                        "WHERE split = 'test' ORDER BY cutoff, __entity_id").df()
        train_std = None
        if not kind.ranks_targets:
            # the labels as the warehouse holds them (the trainers' copies may be float32)
            test_true = frame["label"].to_numpy()
            labels = relbench_train_labels(con, task)
            train_std = float(np.nanstd(labels, ddof=1)) if len(labels) > 1 else float("nan")
        if kind.ranks_targets:
            target = spec.tables[task.target_table]
            target_keys = con.sql(f"SELECT {q(target.primary_key[0])} FROM {q(target.name)} "
                                  "ORDER BY __id").to_arrow_table().column(0).combine_chunks()
    if len(frame) != len(predictions):
        raise ValueError(f"{model} on {task.name}: {len(predictions)} test predictions for "
                         f"{len(frame)} test examples")
    out = frame[keys].rename(columns={keys[0]: rb.entity_col})
    out[rb.time_col] = frame["cutoff"]
    if kind.ranks_targets:
        out[rb.dst_entity_col] = _json_lists(predictions, target_keys)
    else:
        out[rb.target_col] = predictions
    metrics = kind.relbench_score(test_true, predictions, train_std)
    path = submission_dir(results, model, task.test_context, seed) / \
        f"{rb.dataset or spec.name}__{task.name}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    out.to_csv(tmp, index=False)
    tmp.replace(path)
    return Submission(path, metrics)


def _json_lists(ids: np.ndarray, target_keys: pa.Array) -> list[str]:
    """Each row's target ids (-1: none) as a JSON list of the target table's keys."""
    import duckdb

    valid = ids >= 0
    offsets = np.concatenate([[0], np.cumsum(valid.sum(axis=1))]).astype(np.int32)
    values = target_keys.take(pa.array(ids[valid]))
    lists = pa.table({"l": pa.ListArray.from_arrays(pa.array(offsets), values)})
    con = duckdb.connect()
    try:
        con.register("_lists", lists)
        # DuckDB writes the JSON in bulk; the row order is the table's
        return con.sql("SELECT CAST(to_json(l) AS VARCHAR) AS j FROM _lists").df()["j"].tolist()
    finally:
        con.close()
