"""Explanations in the user's terms: why a model scored a row as it did, and what a model
reads most over many rows.

A family's `explain` (pipeline/training/family.py) gives additive attributions per
(row, path, table, column, aggregate, window, neighbouring row). Here they become:

- reasons: per row, the inputs that moved the score most, each named as a person would
  say it (`number of returns of the products of the order items of the orders`,
  `sum of orders.total_amount over the orders`, `orders in the last 30 days`);
- neighbours: per row, the rows of other tables that mattered most (graph models);
- global importance: the mean absolute attribution per table and per column over many
  rows (a table's or column's attributions are summed within each row first);
- a plot of the global importance (matplotlib's Figure API, as pipeline/evaluate.py).

Attributions are in the model's raw output: log-odds for binary tasks, the predicted value
for regression.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
from matplotlib.figure import Figure

from pipeline.data.spec import DatasetSpec, TaskSpec
from pipeline.paths import DataPaths
from pipeline.training.family import Attributions
from pipeline.training.prepare import PreparedTask
from pipeline.training.zoo import model_entry

REASON_KEYS = ("path", "table", "column", "aggregate", "window_days")


def _words(table: str) -> str:
    return table.replace("_", " ")


def _chain(tables: list[str]) -> str:
    """['orders', 'order_items', 'products', 'returns'] ->
    'returns of the products of the order items of the orders'."""
    return " of the ".join(_words(t) for t in reversed(tables))


def describe(entity_table: str, path: str, table: str, column: str, aggregate: str = "",
             window_days: int | None = None) -> str:
    """One input in words (see the module docstring)."""
    tables = path.split(" / ") if path else []
    window = f" in the last {window_days} days" if window_days else ""
    if column == "(rows)":
        what = "distinct " if aggregate == "distinct" else ""
        return f"number of {what}{_chain(tables)}{window}"
    if column == "(recency)":
        return f"days since the latest of the {_chain(tables)}"
    if column == "(age)":
        return f"age of the {_chain(tables)}" if tables else f"age of the {_words(entity_table)} row"
    name = f"{table}.{column}"
    if aggregate in ("sum", "mean", "max", "distinct"):
        what = "number of distinct values of" if aggregate == "distinct" else aggregate + " of"
        return f"{what} {name} over the {_chain(tables)}{window}"
    if len(tables) > 1:
        return f"{name} in the {_chain(tables)}"
    return name


def _with_reason(frame: pl.DataFrame, entity_table: str) -> pl.DataFrame:
    keys = frame.select(REASON_KEYS).unique()
    text = [describe(entity_table, *row) for row in keys.iter_rows()]
    keys = keys.with_columns(pl.Series("reason", text, dtype=pl.Utf8))
    return frame.join(keys, on=list(REASON_KEYS), how="left", nulls_equal=True)


def reasons(attr: Attributions, entity_table: str, top: int = 10) -> pl.DataFrame:
    """Per row, the `top` reasons by absolute contribution: row, reason, value, table, column."""
    per = (attr.frame.group_by(["row", *REASON_KEYS]).agg(pl.col("value").sum())
           .pipe(_with_reason, entity_table))
    return (per.with_columns(pl.col("value").abs().alias("_abs"))
            .sort(["row", "_abs"], descending=[False, True])
            .group_by("row", maintain_order=True).head(top)
            .select("row", "reason", "value", "table", "column"))


def neighbours(attr: Attributions, top: int = 5) -> pl.DataFrame:
    """Per row, the `top` neighbouring rows (graph models) by absolute total contribution:
    row, node_table, node (`__id`), value; empty for families without rows."""
    frame = attr.frame.filter(pl.col("node").is_not_null())
    per = frame.group_by("row", "node_table", "node").agg(pl.col("value").sum())
    return (per.with_columns(pl.col("value").abs().alias("_abs"))
            .sort(["row", "_abs"], descending=[False, True])
            .group_by("row", maintain_order=True).head(top).drop("_abs"))


def global_importance(attr: Attributions, by: str = "table") -> pl.DataFrame:
    """Mean absolute attribution per `by` (table | column | reason), descending: what the
    model reads most. `column` is `table.column`, pseudo-columns included."""
    frame = attr.frame
    if by == "column":
        frame = frame.with_columns((pl.col("table") + "." + pl.col("column")).alias("column"))
    elif by == "reason":
        frame = _with_reason(frame, "entity")
    elif by != "table":
        raise ValueError(f"global importance by {by!r}: choose table, column or reason")
    rows = max(int(frame["row"].n_unique()), 1) if len(frame) else 1
    per_row = frame.group_by("row", by).agg(pl.col("value").sum())
    return (per_row.group_by(by).agg((pl.col("value").abs().sum() / rows).alias("importance"))
            .sort("importance", descending=True))


def plot_importance(attr: Attributions, title: str, path, top: int = 15) -> Path:
    """Two bar charts, by table and by column (the `top` columns), saved as PNG."""
    tables = global_importance(attr, "table")
    columns = global_importance(attr, "column").head(top)
    fig = Figure(figsize=(11, max(3.5, 0.32 * max(len(columns), len(tables)) + 1.5)))
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.6]})
    for ax, frame, key, label in ((left, tables, "table", "by table"),
                                  (right, columns, "column", f"by column (top {top})")):
        names, values = frame[key].to_list()[::-1], frame["importance"].to_list()[::-1]
        ax.barh(np.arange(len(names)), values, color="#4c72b0")
        ax.set_yticks(np.arange(len(names)), names, fontsize=8)
        ax.set(xlabel="mean |attribution|", title=label)
    fig.suptitle(f"{title}\n{attr.method}", fontsize=10)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=110, bbox_inches="tight")
    return path


def explain_rows(prep: PreparedTask, model: str, checkpoint: str | Path, entity: np.ndarray,
                 cutoff: np.ndarray, device: str = "cpu") -> Attributions:
    """The family's attributions of `model` for (entity `__id`, cutoff epoch seconds) rows."""
    entry = model_entry(model)
    return entry.family.explain(entry, prep, checkpoint, np.asarray(entity, dtype=np.int64),
                                np.asarray(cutoff, dtype=np.int64), device)


def importance_sample(prep: PreparedTask, split: str = "test", n: int = 256
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Up to `n` examples of `split`, spread over it: (entity ids, cutoffs)."""
    ex = prep.examples((split,))[split]
    pick = np.unique(np.linspace(0, max(len(ex) - 1, 0), min(n, len(ex))).astype(np.int64))
    return ex.entity.numpy()[pick], ex.cutoff.numpy()[pick]


@dataclass
class ChosenModel:
    model: str
    checkpoint: str
    why: str


def choose_model(paths: DataPaths, spec: DatasetSpec, task: TaskSpec, model: str | None = None,
                 champion: str | None = None) -> ChosenModel:
    """The model to explain: `model` if given, else `champion` (the registered champion's
    model name), else the best by validation among the latest results; its best seed's
    checkpoint from the latest results."""
    import math

    from pipeline.training.experiment import load_results

    results = load_results(paths, spec.name, task.name)
    if not results:
        raise ValueError(f"no trained model of {spec.name}/{task.name} under {paths.results}; "
                         "run `relgraph run` first")
    sign = 1 if task.lower_is_better else -1

    def val(res: dict, run: dict | None = None) -> float:
        v = (run["metrics"] if run else res["summary"].get(f"val_{task.metric}", {})).get(
            f"val_{task.metric}" if run else "mean", math.nan)
        return math.inf if v is None or math.isnan(v) else sign * v

    if model:
        why = "as asked"
    elif champion and champion in results:
        model, why = champion, "the registered champion"
    else:
        model, why = min(results, key=lambda m: val(results[m])), f"best val {task.metric}"
    if model not in results:
        raise ValueError(f"{model} has no trained result for {spec.name}/{task.name} "
                         f"(trained: {', '.join(results)})")
    run = min(results[model]["runs"], key=lambda r: val(results[model], r))
    return ChosenModel(model, run["checkpoint"], why)


def entity_id(con, spec: DatasetSpec, task: TaskSpec, key: str) -> int:
    """The `__id` of the entity row whose (single-column) key reads `key`."""
    table = spec.tables[task.entity_table]
    if len(table.primary_key) != 1:
        raise ValueError(f"{task.entity_table} has a composite key "
                         f"({', '.join(table.primary_key)}); give its parts joined by ','")
    col = table.primary_key[0]
    found = con.execute(f'SELECT __id FROM main."{table.name}" WHERE CAST("{col}" AS VARCHAR) = ?',
                        [key]).fetchall()
    if not found:
        raise ValueError(f"{task.entity_table}.{col} = {key!r}: no such row in the warehouse")
    return int(found[0][0])


def node_keys(con, spec: DatasetSpec, frame: pl.DataFrame) -> pl.DataFrame:
    """`frame` (node_table, node) with a `key` column: each row's primary key as text."""
    keys = []
    for table, node in frame.select("node_table", "node").iter_rows():
        pk = spec.tables[table].primary_key if table in spec.tables else ()
        if pk:
            cols = ", ".join(f'CAST("{c}" AS VARCHAR)' for c in pk)
            got = con.execute(f'SELECT concat_ws(\',\', {cols}) FROM main."{table}" WHERE __id = ?',
                              [int(node)]).fetchall()
            keys.append(got[0][0] if got else f"#{node}")
        else:
            keys.append(f"#{node}")
    return frame.with_columns(pl.Series("key", keys, dtype=pl.Utf8))


def importance_plots(prep: PreparedTask, results: dict[str, dict], out_dir: Path,
                     n: int = 256, device: str = "cpu") -> dict[str, Path]:
    """A global importance plot per model of `results` (`load_results`' dicts), each from
    its best seed's checkpoint over up to `n` test examples; a model that cannot be
    explained (e.g. LightGBM on link prediction) is left out."""
    import math

    task = prep.task
    sign = 1 if task.lower_is_better else -1
    entity, cutoff = importance_sample(prep, "test", n)
    out = {}
    for model, res in results.items():
        def rank(run: dict) -> float:
            v = run["metrics"].get(f"val_{task.metric}", math.nan)
            return math.inf if v is None or math.isnan(v) else sign * v

        run = min(res["runs"], key=rank)
        try:
            attr = explain_rows(prep, model, run["checkpoint"], entity, cutoff, device)
        except (ValueError, NotImplementedError):
            continue
        out[model] = plot_importance(attr, f"{model} on {task.name}: global importance",
                                     Path(out_dir) / f"importance_{model}.png")
    return out
