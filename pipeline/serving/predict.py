"""Batch predictions: score every entity live at the newest timestamp with a trained model.

The graph models score on the graph of every row (no truncation: the newest cutoff is
the scoring time); the LightGBM baselines rebuild their features as of that cutoff.
The result is `predictions_<task>` in the warehouse and a parquet copy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, ContextManager

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.data.spec import DatasetSpec, TaskSpec
from pipeline.data.sqlutil import q, q_list
from pipeline.training.prepare import PreparedTask
from pipeline.training.zoo import model_entry

TOP_K = 10


def model_scores(prep: PreparedTask, model: str, checkpoint: str | Path,
                 device: str = "auto") -> np.ndarray:
    """Raw scores of `model` (from its checkpoint) for the task's live entities, by entity
    id (`task_<task>_live`)."""
    entry = model_entry(model)
    return entry.family.score_live(entry, prep, checkpoint, device)


def predictions_table(con: duckdb.DuckDBPyConnection, spec: DatasetSpec, task: TaskSpec,
                      model: str, scores: np.ndarray, model_version: str) -> pa.Table:
    """The live entities' keys and cutoff with their score, as an Arrow table."""
    keys = list(spec.tables[task.entity_table].primary_key)
    base = con.sql(f"SELECT {q_list(keys)}, cutoff FROM {q(f'task_{task.name}_live')} "
                   "ORDER BY __entity_id").to_arrow_table()
    if len(scores) != base.num_rows:
        raise ValueError(f"task {task.name}: {len(scores)} scores for {base.num_rows} live entities")
    target_keys = None
    if task.kind.ranks_targets:
        target = spec.tables[task.target_table]
        target_keys = con.sql(f"SELECT {q(target.primary_key[0])} FROM {q(target.name)} "
                              "ORDER BY __id").to_arrow_table().column(0)
    out = base
    for name, column in task.kind.prediction_columns(scores, target_keys, TOP_K):
        out = out.append_column(name, column)
    out = out.append_column("model", pa.array([model] * out.num_rows, pa.string()))
    return out.append_column("model_version", pa.array([model_version] * out.num_rows, pa.string()))


def write_predictions(connect: Callable[[], ContextManager[duckdb.DuckDBPyConnection]],
                      task: TaskSpec, table: pa.Table, parquet_dir: Path) -> Path:
    """Replace `predictions_<task>` in one statement and write the parquet copy."""
    name = f"predictions_{task.name}"
    with connect() as con:
        con.register("_predictions_in", table)
        try:
            con.execute(f"CREATE OR REPLACE TABLE {q(name)} AS SELECT * FROM _predictions_in")
        finally:
            con.unregister("_predictions_in")
    parquet_dir.mkdir(parents=True, exist_ok=True)
    path = parquet_dir / f"{name}.parquet"
    tmp = path.with_suffix(".tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)
    return path
