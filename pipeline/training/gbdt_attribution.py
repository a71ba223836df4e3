"""LightGBM's own feature contributions (`pred_contrib`, TreeSHAP), grouped back to table
and column.

A feature's name says where it comes from (pipeline/models/gbdt.py): the entity's own
columns are `<entity>.<column>` and `<entity>: age_days`; every other feature is
`<path>: <aggregate>`, the path being foreign-key steps from the entity joined by " / "
(`orders.customer_id` goes down to the orders of the customer, `customer_id->customers`
up to the row an order names) and the aggregate one of count, distinct, count_<N>d,
days_since_last, sum(c), mean(c), max(c), distinct(c), or, on a path that only goes up,
the reached row's column itself (and its age_days).
"""

from __future__ import annotations

import re

import numpy as np
import polars as pl

from pipeline.data.spec import DatasetSpec
from pipeline.training.family import Attributions

_FUNC = re.compile(r"^(sum|mean|max|distinct)\((.*)\)$")
_WINDOW = re.compile(r"^count_(\d+)d$")


def _step_table(spec: DatasetSpec, step: str) -> tuple[str, bool]:
    """(table a path step arrives at, whether it goes up to a referenced row)."""
    if "->" in step:
        fk, table = step.split("->", 1)
        if table in spec.tables:
            return table, True
    for name, table in spec.tables.items():
        if step.startswith(name + ".") and any(fk.name == step[len(name) + 1:]
                                               for fk in table.foreign_keys):
            return name, False
    raise ValueError(f"feature path step {step!r} names no foreign key of the dataset")


def feature_origin(spec: DatasetSpec, entity: str, name: str) -> dict:
    """Where a LightGBM feature comes from: path, table, column, aggregate, window_days."""
    if ": " not in name:
        if not name.startswith(entity + "."):
            raise ValueError(f"feature {name!r} is neither the entity's nor a path's")
        return {"path": "", "table": entity, "column": name[len(entity) + 1:],
                "aggregate": "value", "window_days": None}
    label, agg = name.split(": ", 1)
    if label == entity:  # the entity row's age
        return {"path": "", "table": entity, "column": "(age)", "aggregate": "value",
                "window_days": None}
    steps = [_step_table(spec, s) for s in label.split(" / ")]
    path, table = " / ".join(t for t, _ in steps), steps[-1][0]
    out = {"path": path, "table": table, "window_days": None}
    if all(up for _, up in steps):  # a lookup of one row: its columns as they are
        return {**out, "column": "(age)" if agg == "age_days" else agg, "aggregate": "value"}
    if agg in ("count", "distinct"):
        return {**out, "column": "(rows)", "aggregate": agg}
    if m := _WINDOW.match(agg):
        return {**out, "column": "(rows)", "aggregate": "count", "window_days": int(m.group(1))}
    if agg == "days_since_last":
        return {**out, "column": "(recency)", "aggregate": "value"}
    if m := _FUNC.match(agg):
        return {**out, "column": m.group(2), "aggregate": m.group(1)}
    raise ValueError(f"feature {name!r}: unknown aggregate {agg!r}")


def contributions(spec: DatasetSpec, entity: str, model, x: np.ndarray) -> Attributions:
    """TreeSHAP contributions of `model` (a `GBDTModel`) for the rows of `x` (in the
    model's feature order), one entry per (row, feature), in raw-score units."""
    names = model.feature_names
    n, f = x.shape
    contrib = np.asarray(model.booster.predict(x, num_iteration=model.best_iteration,
                                               pred_contrib=True))
    if contrib.shape[1] != f + 1:  # several outputs per row (multiclass): the predicted one
        k = contrib.shape[1] // (f + 1)
        per_class = contrib.reshape(n, k, f + 1)
        pick = per_class.sum(2).argmax(1)
        contrib = per_class[np.arange(n), pick]
    origins = pl.DataFrame([feature_origin(spec, entity, nm) for nm in names],
                           schema={"path": pl.Utf8, "table": pl.Utf8, "column": pl.Utf8,
                                   "aggregate": pl.Utf8, "window_days": pl.Int64})
    feature = np.tile(np.arange(f), n)
    frame = origins[feature].with_columns(
        pl.Series("row", np.repeat(np.arange(n), f).astype(np.int64)),
        pl.Series("value", contrib[:, :f].reshape(-1).astype(np.float64)),
        pl.lit(None, pl.Utf8).alias("node_table"), pl.lit(None, pl.Int64).alias("node"),
        pl.Series("feature", np.array(names, dtype=object)[feature].astype(str)))
    frame = frame.select("row", "path", "table", "column", "aggregate", "window_days",
                         "node_table", "node", "value", "feature")
    base = contrib[:, f]
    return Attributions(frame, base + contrib[:, :f].sum(1), base,
                        "LightGBM pred_contrib (TreeSHAP)")
