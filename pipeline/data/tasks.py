"""Predictive tasks: label tables computed in DuckDB from the spec's SQL at cutoffs.

A training example is (entity, cutoff, label). Cutoffs follow the rules of time:

    test  = resolve(test_cutoff)        labels from (test, test + horizon]
    val   = resolve(val_cutoff)         labels from (val,  val  + horizon], val + horizon <= test
    train = val - k * horizon, k = 1..num_train_cutoffs   (no train window reaches val)

The label SQL runs once over all cutoffs (a `cutoffs(cutoff, window_end)` table) and its
result is joined to the entity table's surrogate ids. Link prediction tasks produce one
row per (entity, cutoff, target) with the target's surrogate id.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime

import duckdb
import numpy as np
import torch

from pipeline.data.spec import DatasetSpec, SpecError, TaskSpec, _suggest, resolve_time
from pipeline.data.sqlutil import q, q_list

SPLITS = ("train", "val", "test")


class TaskError(ValueError):
    """A task whose SQL or labels cannot be used; the message names the task."""


@dataclass(frozen=True)
class TaskCutoffs:
    train: list[datetime]
    val: datetime
    test: datetime
    latest: datetime
    earliest: datetime


def time_bounds(con: duckdb.DuckDBPyConnection, spec: DatasetSpec) -> tuple[datetime, datetime]:
    """Earliest and newest timestamp over every time column of the warehouse."""
    parts = [f"SELECT MIN({q(t.time_column)}) AS lo, MAX({q(t.time_column)}) AS hi FROM {q(t.name)}"
             for t in spec.tables.values() if t.time_column]
    if not parts:
        raise SpecError(f"{spec.where()}: no table has a time_column, so no cutoff can be placed")
    lo, hi = con.execute(f"SELECT MIN(lo), MAX(hi) FROM ({' UNION ALL '.join(parts)})").fetchall()[0]
    if hi is None:
        raise SpecError(f"{spec.where()}: every time column is empty")
    return lo, hi


def task_cutoffs(con: duckdb.DuckDBPyConnection, spec: DatasetSpec, task: TaskSpec) -> TaskCutoffs:
    earliest, latest = time_bounds(con, spec)
    where = f"{spec.where()}: task {task.name}"
    val = resolve_time(task.val_cutoff, latest, f"{where}.val_cutoff")
    test = resolve_time(task.test_cutoff, latest, f"{where}.test_cutoff")
    if val + task.horizon > test:
        raise SpecError(f"{where}: val_cutoff ({val}) + horizon ({task.horizon}) passes "
                        f"test_cutoff ({test}); the label windows would overlap")
    train = []
    for k in range(1, task.num_train_cutoffs + 1):
        cutoff = val - k * task.horizon
        if cutoff < earliest + task.horizon:  # too early to have any history
            break
        train.append(cutoff)
    if not train:
        raise TaskError(f"{where}: no training cutoff fits between the earliest row ({earliest}) "
                        f"and val_cutoff ({val}); move val_cutoff later or shorten the horizon")
    return TaskCutoffs(train=sorted(train), val=val, test=test, latest=latest, earliest=earliest)


def encoder_fit_cutoff(con: duckdb.DuckDBPyConnection, spec: DatasetSpec) -> datetime:
    """Encoders are fitted on rows up to the earliest validation cutoff of any task.

    A spec without tasks has no labels to leak, so its encoders see every row; one
    without any time column has only static rows, which every cutoff sees anyway.
    """
    if spec.tasks:
        return min(task_cutoffs(con, spec, t).val for t in spec.tasks.values())
    if not any(t.time_column for t in spec.tables.values()):
        return datetime(9999, 12, 31)
    return time_bounds(con, spec)[1]


def _register_cutoffs(con: duckdb.DuckDBPyConnection, cutoffs: list[datetime], horizon) -> None:
    con.execute("CREATE OR REPLACE TEMP TABLE cutoffs (cutoff TIMESTAMP, window_end TIMESTAMP)")
    con.executemany("INSERT INTO cutoffs VALUES (?, ?)", [(c, c + horizon) for c in cutoffs])


def _check_select(con: duckdb.DuckDBPyConnection, sql: str, where: str) -> None:
    """Only a single SELECT may run: label SQL must never write the warehouse."""
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as exc:
        raise TaskError(f"{where}: label SQL does not parse: {exc}") from None
    if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
        raise TaskError(f"{where}: must be exactly one SELECT statement "
                        f"(got {len(statements)} statement(s))")


def _run_select(con, sql: str, where: str, required: list[str]) -> str:
    """Run a user SELECT into a temp table and check it returns the required columns."""
    _check_select(con, sql, where)
    try:
        con.execute(f"CREATE OR REPLACE TEMP TABLE _task_out AS {sql.strip().rstrip(';')}")
    except duckdb.Error as exc:
        raise TaskError(f"{where}: {type(exc).__name__}: {str(exc).splitlines()[0]}") from None
    have = [r[0] for r in con.execute("DESCRIBE _task_out").fetchall()]
    missing = [c for c in required if c not in have]
    if missing:
        hints = "; ".join(f"'{m}' missing" + _suggest(m, have).replace("did you mean", "is it")
                          for m in missing)
        raise TaskError(f"{where}: must return columns {', '.join(required)}; "
                        f"it returned {', '.join(have)} ({hints})")
    return "_task_out"


def build_task_table(con: duckdb.DuckDBPyConnection, spec: DatasetSpec, task: TaskSpec) -> dict:
    """Write `task_<name>` and `task_<name>_live`; return a per-split summary."""
    cuts = task_cutoffs(con, spec, task)
    entity = spec.tables[task.entity_table]
    keys = list(entity.primary_key)
    where = f"task {task.name}.label_sql"
    link = task.kind.ranks_targets
    target = spec.tables[task.target_table] if link else None
    tkey = target.primary_key[0] if link else None
    out_col = tkey if link else "label"

    _register_cutoffs(con, cuts.train + [cuts.val, cuts.test], task.horizon)
    out = _run_select(con, task.label_sql, where, keys + ["cutoff", out_col])

    join_e = " AND ".join(f"o.{q(k)} = e.{q(k)}" for k in keys)
    unmatched = con.execute(
        f"SELECT COUNT(*) FROM {out} o ANTI JOIN {q(entity.name)} e ON {join_e}").fetchall()[0][0]
    if unmatched:
        raise TaskError(f"{where}: {unmatched} rows name {entity.name} keys that are not in the "
                        f"table ({', '.join(keys)})")
    if entity.time_column:
        # An example of an entity that did not exist yet at its cutoff has nothing a model
        # may see; it can only come from label SQL that forgot to ask for existing rows.
        early = con.execute(
            f"SELECT COUNT(*) FROM {out} o JOIN {q(entity.name)} e ON {join_e} "
            f"WHERE e.{q(entity.time_column)} > o.cutoff").fetchall()[0][0]
        if early:
            raise TaskError(f"{where}: {early} rows name {entity.name} rows whose "
                            f"{entity.time_column} is after the row's cutoff; restrict the label "
                            f"SQL to {entity.name} that exist at the cutoff")
    if link:
        label_expr = f"o.{q(tkey)}, t.__id AS __target_id"
        join_t = f"JOIN {q(target.name)} t ON o.{q(tkey)} = t.{q(tkey)}"
    else:
        cast = task.kind.label_sql_type
        bad = con.execute(f"SELECT COUNT(*) FROM {out} WHERE TRY_CAST(label AS {cast}) IS NULL"
                          ).fetchall()[0][0]
        if bad:
            raise TaskError(f"{where}: {bad} rows have a null or non-{cast.lower()} label")
        label_expr = f"CAST(o.label AS {cast}) AS label"
        join_t = ""
    split = (f"CASE WHEN o.cutoff = TIMESTAMP '{cuts.test}' THEN 'test' "
             f"WHEN o.cutoff = TIMESTAMP '{cuts.val}' THEN 'val' ELSE 'train' END")
    name = f"task_{task.name}"
    con.execute(f"""
        CREATE OR REPLACE TABLE {q(name)} AS
        SELECT {q_list(keys, 'o.')}, e.__id AS __entity_id, CAST(o.cutoff AS TIMESTAMP) AS cutoff,
               {split} AS split, {label_expr}
        FROM {out} o JOIN {q(entity.name)} e ON {join_e} {join_t}
        ORDER BY split, cutoff, __entity_id{', __target_id' if link else ''}""")

    # Scoring set: entities live at the newest timestamp, from rows <= it only.
    _register_cutoffs(con, [cuts.latest], task.horizon)
    if task.entity_sql:
        live = _run_select(con, task.entity_sql, f"task {task.name}.entity_sql", keys + ["cutoff"])
    else:
        live = _run_select(con, task.label_sql, where, keys + ["cutoff"])
    con.execute(f"""
        CREATE OR REPLACE TABLE {q(name + '_live')} AS
        SELECT DISTINCT {q_list(keys, 'e.')}, e.__id AS __entity_id, CAST(o.cutoff AS TIMESTAMP) AS cutoff
        FROM {live} o JOIN {q(entity.name)} e ON {join_e}
        ORDER BY __entity_id""")
    con.execute("DROP TABLE IF EXISTS _task_out")
    summary = split_summary(con, task)
    summary["cutoffs"] = {k: (str(v) if not isinstance(v, list) else [str(x) for x in v])
                          for k, v in asdict(cuts).items()}
    return summary


def split_summary(con: duckdb.DuckDBPyConnection, task: TaskSpec) -> dict:
    """Examples, label statistics and distinct entities per split, plus the live count."""
    name = q(f"task_{task.name}")
    if task.kind.ranks_targets:
        stat = "COUNT(*) * 1.0 / COUNT(DISTINCT (__entity_id, cutoff))"
        examples = "COUNT(DISTINCT (__entity_id, cutoff))"
    else:
        stat, examples = "AVG(label)", "COUNT(*)"
    rows = con.execute(f"""SELECT split, {examples}, {stat}, COUNT(DISTINCT __entity_id),
                           COUNT(DISTINCT cutoff) FROM {name} GROUP BY split""").fetchall()
    out = {"splits": {}}
    for split, n, s, ents, ncut in rows:
        out["splits"][split] = {"examples": int(n), task.kind.label_stat:
                                (float(s) if s is not None else None),
                                "entities": int(ents), "cutoffs": int(ncut)}
    for split in SPLITS:
        if split not in out["splits"]:
            raise TaskError(f"task {task.name}: the {split} split has no examples; "
                            "check the cutoffs and the label SQL")
    for split in SPLITS:  # train first: that is the split a user most needs to hear about
        problem = task.kind.check_split(task.name, split, out["splits"][split])
        if problem:
            raise TaskError(problem)
    out["live_entities"] = con.execute(f"SELECT COUNT(*) FROM {q(f'task_{task.name}_live')}"
                                       ).fetchall()[0][0]
    return out


@dataclass
class Examples:
    """One split's examples as tensors (link prediction: targets as CSR over examples)."""

    entity: torch.Tensor          # int64 [n] entity surrogate ids
    cutoff: torch.Tensor          # int64 [n] cutoff, epoch seconds
    label: torch.Tensor | None    # [n] float32 (binary/regression) or int64 (multiclass)
    target_ptr: torch.Tensor | None = None   # int64 [n+1]
    target_ids: torch.Tensor | None = None   # int64 [nnz]

    def __len__(self) -> int:
        return int(self.entity.numel())


def load_examples(con: duckdb.DuckDBPyConnection, task: TaskSpec, split: str) -> Examples:
    """Read one split of `task_<name>` (or `live`, the scoring set) into tensors."""
    if split == "live":
        tbl = con.sql(f"""SELECT __entity_id, epoch(cutoff)::BIGINT AS t
                          FROM {q(f'task_{task.name}_live')} ORDER BY __entity_id""").to_arrow_table()
        return Examples(_tensor(tbl, "__entity_id"), _tensor(tbl, "t"), None)
    name = q(f"task_{task.name}")
    if task.kind.ranks_targets:
        tbl = con.sql(f"""SELECT __entity_id, epoch(cutoff)::BIGINT AS t,
                                 list(__target_id ORDER BY __target_id) AS targets
                          FROM {name} WHERE split = ? GROUP BY ALL
                          ORDER BY t, __entity_id""", params=[split]).to_arrow_table()
        lists = tbl.column("targets").combine_chunks()
        ptr = torch.from_numpy(np.asarray(lists.offsets).astype(np.int64))
        ids = torch.from_numpy(np.asarray(lists.values).astype(np.int64))
        return Examples(_tensor(tbl, "__entity_id"), _tensor(tbl, "t"), None, ptr, ids)
    tbl = con.sql(f"""SELECT __entity_id, epoch(cutoff)::BIGINT AS t, label FROM {name}
                      WHERE split = ? ORDER BY t, __entity_id""", params=[split]).to_arrow_table()
    label = task.kind.label_tensor(np.array(tbl.column("label").to_numpy()))
    return Examples(_tensor(tbl, "__entity_id"), _tensor(tbl, "t"), label)


def _tensor(tbl, col: str) -> torch.Tensor:
    return torch.from_numpy(tbl.column(col).to_numpy().astype(np.int64))
