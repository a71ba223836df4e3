"""Predictive tasks: label tables computed in DuckDB from the spec's SQL at cutoffs.

A training example is (entity, cutoff, label). Cutoffs follow the rules of time:

    test  = resolve(test_cutoff)        labels from (test, test + horizon]
    val   = resolve(val_cutoff)         labels from (val,  val  + horizon], val + horizon <= test
    train = val - k * horizon, k = 1..num_train_cutoffs   (no train window reaches val)

With `num_eval_windows: N` validation has up to N windows val + i * horizon (the last
starting no later than test - horizon) and test up to N windows test + i * horizon (the
last ending at or before the newest row); `num_train_cutoffs: all` steps back while the
cutoff is at or after the earliest row (RelBench's rules, pipeline/data/spec.py).

The label SQL runs over all cutoffs of a database at once (a `cutoffs(cutoff, window_end)`
table; RelBench-form SQL sees `timestamps(timestamp)`), and its result is joined to the
entity table's surrogate ids. Under `label_database: full` (relgraph's default) one run
on the warehouse covers every split; under `per_split` (RelBench's rule) train and
validation run on the warehouse cut at test_cutoff and test on the full one, each through
temporary views named like the tables (see `_database`). Link prediction tasks produce one
row per (entity, cutoff, target) with the target's surrogate id.

What the rules repaired (examples dropped or kept under a policy) comes back in the build
summary's `repairs`, each with a count and a few example keys, for an asset check to WARN.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

import duckdb
import numpy as np
import torch

from pipeline.data.schema import suggest
from pipeline.data.spec import DatasetSpec, SpecError, TaskSpec, resolve_time
from pipeline.data.sqlutil import literal, q, q_list

SPLITS = ("train", "val", "test")
MIN_RELBENCH_TRAIN_CUTOFFS = 3  # relbench refuses a task with fewer (task_base.py:240-244)
EXAMPLES = 5


class TaskError(ValueError):
    """A task whose SQL or labels cannot be used; the message names the task."""


@dataclass(frozen=True)
class TaskCutoffs:
    """A task's cutoffs. `val` and `test` are the first validation and test cutoffs
    (val_cutoff and test_cutoff as resolved); `val_windows` and `test_windows` list every
    window's cutoff, ascending, starting with them (one each unless num_eval_windows > 1).
    `train` is ascending. `latest` and `earliest` bound every time column of the warehouse."""

    train: list[datetime]
    val: datetime
    test: datetime
    latest: datetime
    earliest: datetime
    val_windows: list[datetime] = field(default_factory=list)
    test_windows: list[datetime] = field(default_factory=list)

    def __post_init__(self):
        if not self.val_windows:
            object.__setattr__(self, "val_windows", [self.val])
        if not self.test_windows:
            object.__setattr__(self, "test_windows", [self.test])

    def of(self, split: str) -> list[datetime]:
        """The cutoffs of one split."""
        return {"train": self.train, "val": self.val_windows, "test": self.test_windows}[split]


def time_bounds(con: duckdb.DuckDBPyConnection, spec: DatasetSpec,
                upto: datetime | None = None) -> tuple[datetime, datetime]:
    """Earliest and newest timestamp over every time column of the warehouse (only rows
    at or before `upto` when given)."""
    cond = "" if upto is None else " WHERE {c} <= ?"
    parts = [f"SELECT MIN({q(t.time_column)}) AS lo, MAX({q(t.time_column)}) AS hi FROM {q(t.name)}"
             + cond.format(c=q(t.time_column)) for t in spec.tables.values() if t.time_column]
    if not parts:
        raise SpecError(f"{spec.where()}: no table has a time_column, so no cutoff can be placed")
    lo, hi = con.execute(f"SELECT MIN(lo), MAX(hi) FROM ({' UNION ALL '.join(parts)})",
                         [upto] * len(parts) if upto is not None else None).fetchall()[0]
    if hi is None:
        raise SpecError(f"{spec.where()}: every time column is empty"
                        + (f" up to {upto}" if upto is not None else ""))
    return lo, hi


def _where(spec: DatasetSpec, task: TaskSpec) -> str:
    if task.relbench is not None and task.relbench.manifest:
        return task.relbench.manifest
    return f"{spec.where()}: task {task.name}"


def task_cutoffs(con: duckdb.DuckDBPyConnection, spec: DatasetSpec, task: TaskSpec) -> TaskCutoffs:
    earliest, latest = time_bounds(con, spec)
    where = f"{spec.where()}: task {task.name}"
    val = resolve_time(task.val_cutoff, latest, f"{where}.val_cutoff")
    test = resolve_time(task.test_cutoff, latest, f"{where}.test_cutoff")
    h = task.horizon
    if val + h > test:
        raise SpecError(f"{where}: val_cutoff ({val}) + horizon ({h}) passes "
                        f"test_cutoff ({test}); the label windows would overlap")
    strict = task.relbench is not None  # RelBench refuses what relgraph would shorten
    train = []
    if task.num_train_cutoffs == "all":  # RelBench: every window back to the earliest row
        k = 1
        while val - k * h >= earliest:
            train.append(val - k * h)
            k += 1
    else:
        for k in range(1, task.num_train_cutoffs + 1):
            cutoff = val - k * h
            if cutoff < earliest + h:  # too early to have any history
                break
            train.append(cutoff)
    if not train:
        raise TaskError(f"{where}: no training cutoff fits between the earliest row ({earliest}) "
                        f"and val_cutoff ({val}); move val_cutoff later or shorten the horizon")
    if strict and len(train) < MIN_RELBENCH_TRAIN_CUTOFFS:
        raise TaskError(f"{_where(spec, task)}: only {len(train)} training cutoff(s) between the "
                        f"earliest row ({earliest}) and val_timestamp - timedelta ({val - h}); "
                        f"RelBench needs at least {MIN_RELBENCH_TRAIN_CUTOFFS}")
    n = task.num_eval_windows
    val_windows = [val + i * h for i in range(n) if val + i * h <= test - h]
    if n == 1:
        test_windows = [test]
    else:
        test_windows = [test + i * h for i in range(n) if test + (i + 1) * h <= latest] or [test]
    if strict:
        cut_latest = time_bounds(con, spec, upto=test)[1]
        if val + h > cut_latest:
            raise TaskError(f"{_where(spec, task)}: the first validation window ({val}, {val + h}] "
                            f"ends after the newest row before test_timestamp ({cut_latest})")
        if test + h > latest:
            raise TaskError(f"{_where(spec, task)}: the first test window ({test}, {test + h}] "
                            f"ends after the newest row of the database ({latest})")
    return TaskCutoffs(train=sorted(train), val=val, test=test, latest=latest, earliest=earliest,
                       val_windows=val_windows, test_windows=test_windows)


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


def _run_select(con, sql: str, where: str, required: list[str], into: str = "_task_out") -> str:
    """Run a user SELECT into a temp table and check it returns the required columns."""
    _check_select(con, sql, where)
    try:
        con.execute(f"CREATE OR REPLACE TEMP TABLE {q(into)} AS {sql.strip().rstrip(';')}")
    except duckdb.Error as exc:
        raise TaskError(f"{where}: {type(exc).__name__}: {str(exc).splitlines()[0]}") from None
    have = [r[0] for r in con.execute(f"DESCRIBE {q(into)}").fetchall()]
    missing = [c for c in required if c not in have]
    if missing:
        hints = "; ".join(f"'{m}' missing" + suggest(m, have).replace("did you mean", "is it")
                          for m in missing)
        raise TaskError(f"{where}: must return columns {', '.join(required)}; "
                        f"it returned {', '.join(have)} ({hints})")
    return into


# ---------------------------------------------------------------------------------------
# The database a split's label SQL sees


@contextmanager
def _database(con: duckdb.DuckDBPyConnection, spec: DatasetSpec, task: TaskSpec,
              upto: datetime | None):
    """Temporary views named like the warehouse tables (they shadow them for unqualified
    names) holding what RelBench's database of a split holds: the user's columns without
    the warehouse's own (`__id`, `__fk_*`) and without the task's `remove_columns`; for
    `upto`, only rows whose time is at or before it; and every foreign key NULL where the
    row it references is not in the view (relbench's `validate_and_correct_db`). The
    warehouse numbers rows by time (`__id`), so a row is in the cut view exactly when its
    `__id` is below the view's row count, as RelBench's 0..n-1 keys are."""
    from pipeline.data.warehouse import FK_PREFIX, ID

    db = con.execute("SELECT current_database()").fetchall()[0][0]
    real = {t: f"{q(db)}.main.{q(t)}" for t in spec.tables}
    removed = set(task.remove_columns)
    kept = {}
    for t in spec.tables.values():
        if t.time_column and upto is not None:
            kept[t.name] = con.execute(f"SELECT count(*) FROM {real[t.name]} WHERE "
                                       f"{q(t.time_column)} <= ?", [upto]).fetchall()[0][0]
        else:
            kept[t.name] = con.execute(f"SELECT count(*) FROM {real[t.name]}").fetchall()[0][0]
    made = []
    try:
        for t in spec.tables.values():
            internal = {ID} | {FK_PREFIX + fk.name for fk in t.foreign_keys}
            cols = [r[0] for r in con.execute(f"DESCRIBE {real[t.name]}").fetchall()
                    if r[0] not in internal and (t.name, r[0]) not in removed]
            conds: dict[str, list[str]] = {}
            for fk in t.foreign_keys:
                cond = f"{q(FK_PREFIX + fk.name)} < {int(kept[fk.references])}"
                for c in fk.columns:
                    conds.setdefault(c, []).append(cond)
            select = ", ".join(f"CASE WHEN {' AND '.join(conds[c])} THEN {q(c)} END AS {q(c)}"
                               if c in conds else q(c) for c in cols)
            where = (f" WHERE {q(t.time_column)} <= TIMESTAMP '{upto}'"
                     if t.time_column and upto is not None else "")
            con.execute(f"CREATE OR REPLACE TEMP VIEW {q(t.name)} AS SELECT {select} "
                        f"FROM {real[t.name]}{where}")
            made.append(t.name)
        yield
    finally:
        for name in made:
            con.execute(f"DROP VIEW IF EXISTS temp.main.{q(name)}")


# ---------------------------------------------------------------------------------------
# Label rows


@dataclass
class _Shape:
    """The columns of a task's label rows."""

    keys: list[str]
    out_col: str          # label, or the target table's key column (link prediction)
    link: bool


def _shape(spec: DatasetSpec, task: TaskSpec) -> _Shape:
    entity = spec.tables[task.entity_table]
    link = task.kind.ranks_targets
    out_col = spec.tables[task.target_table].primary_key[0] if link else "label"
    return _Shape(list(entity.primary_key), out_col, link)


def _normalise_relbench(con, spec: DatasetSpec, task: TaskSpec, shape: _Shape, raw: str,
                        where: str, into: str) -> None:
    """RelBench's columns (time_col, entity_col, target_col | dst list) -> relgraph's
    (entity key, cutoff, label | target key), one row per target for link prediction."""
    rb = task.relbench
    if shape.link:
        dtype = dict((r[0], r[1]) for r in con.execute(f"DESCRIBE {q(raw)}").fetchall())
        if not dtype[rb.dst_entity_col].endswith("[]"):
            raise TaskError(f"{where}: {rb.dst_entity_col} must be a LIST of "
                            f"{task.target_table} keys (it is {dtype[rb.dst_entity_col]})")
        con.execute(f"""CREATE OR REPLACE TEMP TABLE {q(into)} AS
            SELECT DISTINCT * FROM (
                SELECT {q(rb.entity_col)} AS {q(shape.keys[0])},
                       CAST({q(rb.time_col)} AS TIMESTAMP) AS cutoff,
                       UNNEST({q(rb.dst_entity_col)}) AS {q(shape.out_col)}
                FROM {q(raw)})""")
    else:
        con.execute(f"""CREATE OR REPLACE TEMP TABLE {q(into)} AS
            SELECT {q(rb.entity_col)} AS {q(shape.keys[0])},
                   CAST({q(rb.time_col)} AS TIMESTAMP) AS cutoff, {q(rb.target_col)} AS label
            FROM {q(raw)}""")


def _relbench_columns(task: TaskSpec) -> list[str]:
    rb = task.relbench
    return [rb.time_col, rb.entity_col, rb.dst_entity_col or rb.target_col]


def _run_labels(con, spec: DatasetSpec, task: TaskSpec, shape: _Shape, cutoffs: list[datetime],
                into: str) -> None:
    """The task's SQL at `cutoffs` on whatever the unqualified table names mean now."""
    where = _where(spec, task)
    _register_cutoffs(con, cutoffs, task.horizon)
    if task.relbench is None:
        _run_select(con, task.label_sql, f"task {task.name}.label_sql",
                    shape.keys + ["cutoff", shape.out_col], into=into)
        return
    # RelBench-form SQL reads the cutoffs as `timestamps(timestamp)`
    con.execute('CREATE OR REPLACE TEMP VIEW "timestamps" AS SELECT cutoff AS "timestamp" '
                "FROM temp.main.cutoffs")
    try:
        _run_select(con, task.relbench.sql(task.label_sql, task.horizon), f"{where}: sql",
                    _relbench_columns(task), into="_task_raw")
    finally:
        con.execute('DROP VIEW IF EXISTS temp.main."timestamps"')
    _normalise_relbench(con, spec, task, shape, "_task_raw", f"{where}: sql", into)
    con.execute("DROP TABLE IF EXISTS temp.main._task_raw")


def _read_label_file(con, spec: DatasetSpec, task: TaskSpec, shape: _Shape, split: str,
                     into: str) -> None:
    path = task.relbench.label_files[split]
    try:
        con.execute("CREATE OR REPLACE TEMP TABLE _task_raw AS SELECT * FROM read_parquet(?)",
                    [str(path)])
    except duckdb.Error as exc:
        raise TaskError(f"{path}: cannot read the hosted {split} labels: "
                        f"{str(exc).splitlines()[0]}") from None
    have = [r[0] for r in con.execute("DESCRIBE _task_raw").fetchall()]
    missing = [c for c in _relbench_columns(task) if c not in have]
    if missing:
        raise TaskError(f"{path}: hosted {split} labels lack column(s) {', '.join(missing)} "
                        f"(it has {', '.join(have)})")
    _normalise_relbench(con, spec, task, shape, "_task_raw", str(path), into)
    con.execute("DROP TABLE IF EXISTS temp.main._task_raw")


def _split_case(cuts: TaskCutoffs, splits) -> str:
    """The split of a row by its cutoff; a cutoff of no split counts as train (as before)."""
    parts = []
    for split in ("test", "val"):
        if split in splits:
            stamps = ", ".join(f"TIMESTAMP '{c}'" for c in cuts.of(split))
            parts.append(f"WHEN cutoff IN ({stamps}) THEN '{split}'")
    return f"CASE {' '.join(parts)} ELSE 'train' END" if parts else "'train'"


def _collect_rows(con, spec: DatasetSpec, task: TaskSpec, cuts: TaskCutoffs, shape: _Shape) -> None:
    """Every label row of every split into temp table `_task_rows`: the label columns plus
    `__split` and `__hosted` (the row came from a hosted label file)."""
    files = task.relbench.label_files if task.relbench is not None else {}
    parts = []

    def add(source: str, split_sql: str, hosted: bool) -> None:
        name = f"_task_part{len(parts)}"
        con.execute(f"CREATE OR REPLACE TEMP TABLE {q(name)} AS SELECT *, {split_sql} AS __split, "
                    f"{'TRUE' if hosted else 'FALSE'} AS __hosted FROM {q(source)}")
        parts.append(name)

    if task.label_database == "full":
        runs = [(tuple(s for s in SPLITS if s not in files), None)]
    else:
        runs = [(tuple(s for s in ("train", "val") if s not in files), cuts.test),
                (tuple(s for s in ("test",) if s not in files), None)]
    for splits, upto in runs:
        if not splits:
            continue
        cutoffs = [c for s in splits for c in cuts.of(s)]
        if task.label_database == "full":
            _run_labels(con, spec, task, shape, cutoffs, "_task_out")
        else:
            with _database(con, spec, task, upto):
                _run_labels(con, spec, task, shape, cutoffs, "_task_out")
        add("_task_out", _split_case(cuts, splits), False)
    for split in SPLITS:
        if split in files:
            _read_label_file(con, spec, task, shape, split, "_task_out")
            add("_task_out", f"'{split}'", True)
    union = " UNION ALL BY NAME ".join(f"SELECT * FROM {q(p)}" for p in parts)
    con.execute(f"CREATE OR REPLACE TEMP TABLE _task_rows AS {union}")
    for p in parts + ["_task_out"]:
        con.execute(f"DROP TABLE IF EXISTS temp.main.{q(p)}")


# ---------------------------------------------------------------------------------------
# Rules applied to the rows


def _show_key(values) -> str:
    return "(" + ", ".join(str(v) for v in values) + ")" if len(values) > 1 else str(values[0])


class _Rows:
    """The filters of the task's rules over `_task_rows` (alias o), with what they did."""

    def __init__(self, con, spec: DatasetSpec, task: TaskSpec, shape: _Shape, where: str):
        self.con, self.spec, self.task, self.shape, self.where = con, spec, task, shape, where
        self.entity = spec.tables[task.entity_table]
        self.repairs: list[dict] = []

    def count(self, cond: str) -> tuple[int, dict[str, int]]:
        rows = self.con.execute(f"SELECT __split, count(*) FROM _task_rows o WHERE {cond} "
                                "GROUP BY __split").fetchall()
        by_split = {s: int(n) for s, n in rows}
        return sum(by_split.values()), by_split

    def examples(self, cond: str, cols: list[str]) -> list[str]:
        rows = self.con.execute(
            f"SELECT DISTINCT {q_list(cols, 'o.')}, o.cutoff FROM _task_rows o WHERE {cond} "
            f"ORDER BY ALL LIMIT {EXAMPLES}").fetchall()
        return [f"{_show_key(r[:-1])} at {r[-1]}" for r in rows]

    def drop(self, cond: str) -> None:
        self.con.execute(f"DELETE FROM _task_rows o WHERE {cond}")

    def report(self, kind: str, cond: str, action: str, detail: str, cols=None,
               delete: bool = True) -> int:
        n, by_split = self.count(cond)
        if n:
            self.repairs.append({
                "kind": kind, "count": n, "by_split": by_split,
                "examples": self.examples(cond, cols or self.shape.keys),
                "action": action, "message": f"{self.where}: {n} {detail}; {action}"})
            if delete:
                self.drop(cond)
        return n


def _apply_rules(con, spec: DatasetSpec, task: TaskSpec, cuts: TaskCutoffs, shape: _Shape) -> list[dict]:
    """Apply the task's rules to `_task_rows`; return what they repaired. Raises TaskError
    for what stops the task (before anything is written)."""
    where = _where(spec, task) if task.relbench is not None else f"task {task.name}.label_sql"
    rows = _Rows(con, spec, task, shape, where)
    entity, keys = rows.entity, shape.keys
    ent = q(entity.name)
    join_e = " AND ".join(f"o.{q(k)} = e.{q(k)}" for k in keys)
    relbench_like = task.label_database == "per_split" or task.relbench is not None
    null_key = " OR ".join(f"o.{q(k)} IS NULL" for k in keys)
    if relbench_like:
        # RelBench keeps these (its cut turns a foreign key into NULL and the SQL grouped by
        # it); an example needs an entity, so relgraph drops them and says how many, and
        # keeps their labels apart (`task_<name>_unkeyed`): RelBench's NMAE divides by the
        # spread of train labels that include them.
        if not shape.link:
            con.execute(f"CREATE OR REPLACE TEMP TABLE _task_unkeyed AS SELECT o.__split AS split, "
                        f"o.cutoff, TRY_CAST(o.label AS {task.kind.label_sql_type}) AS label "
                        f"FROM _task_rows o WHERE {null_key}")
        rows.report("null_entity", null_key, "dropped (an example needs an entity)",
                    f"rows have a NULL {entity.name} key")
    missing = f"NOT EXISTS (SELECT 1 FROM {ent} e WHERE {join_e})"
    # hosted labels are taken as they are (as relbench does), but must name known entities
    hosted_missing = f"o.__hosted AND NOT ({null_key}) AND {missing}"
    n, _ = rows.count(hosted_missing)
    if n:
        raise TaskError(f"{where}: {n} rows of the hosted label files name {entity.name} keys "
                        f"that are not in the table (first: "
                        f"{', '.join(rows.examples(hosted_missing, keys))})")
    if task.label_database != "per_split":
        n, _ = rows.count(f"({null_key}) OR {missing}")
        if n:
            raise TaskError(f"{where}: {n} rows name {entity.name} keys that are not in the "
                            f"table ({', '.join(keys)})")
    else:
        # RelBench's dangling-entity rule: in every split, an example's entity must be in
        # the entity table as cut at test_cutoff (not created after it, not unknown)
        in_cut = (f"EXISTS (SELECT 1 FROM {ent} e WHERE {join_e}"
                  + (f" AND e.{q(entity.time_column)} <= TIMESTAMP '{cuts.test}'"
                     if entity.time_column else "") + ")")
        rows.report("dangling_entity", f"NOT o.__hosted AND NOT ({in_cut})",
                    "dropped (RelBench's dangling-entity rule)",
                    f"rows name {entity.name} rows that are not in the table as of "
                    f"test_cutoff ({cuts.test})")
        if shape.link:
            target = spec.tables[task.target_table]
            tk = q(shape.out_col)
            in_cut_t = (f"EXISTS (SELECT 1 FROM {q(target.name)} t WHERE t.{tk} = o.{tk}"
                        + (f" AND t.{q(target.time_column)} <= TIMESTAMP '{cuts.test}'"
                           if target.time_column else "") + ")")
            before = con.execute("SELECT count(DISTINCT (" + q_list(keys, "o.") +
                                 ", o.cutoff)) FROM _task_rows o").fetchall()[0][0]
            pruned = rows.report("pruned_target", f"NOT o.__hosted AND NOT ({in_cut_t})",
                                 "pruned from the lists (RelBench's rule)",
                                 f"targets are {target.name} rows that are not in the table "
                                 f"as of test_cutoff ({cuts.test})", cols=keys + [shape.out_col])
            if pruned:
                after = con.execute("SELECT count(DISTINCT (" + q_list(keys, "o.") +
                                    ", o.cutoff)) FROM _task_rows o").fetchall()[0][0]
                rows.repairs[-1]["examples_emptied"] = int(before - after)
    if entity.time_column:
        # An example of an entity that did not exist yet at its cutoff has nothing a model
        # may see; relgraph's own specs stop, RelBench's keep it (withhold).
        future = (f"EXISTS (SELECT 1 FROM {ent} e WHERE {join_e} "
                  f"AND e.{q(entity.time_column)} > o.cutoff)")
        policy = task.on_future_entity
        if policy == "fail":
            n, _ = rows.count(future)
            if n:
                raise TaskError(f"{where}: {n} rows name {entity.name} rows whose "
                                f"{entity.time_column} is after the row's cutoff; restrict the "
                                f"label SQL to {entity.name} that exist at the cutoff (or set "
                                "on_future_entity: drop | withhold)")
        else:
            action = ("dropped (on_future_entity: drop)" if policy == "drop" else
                      f"kept, the {entity.name} row's own columns withheld from them "
                      "(on_future_entity: withhold)")
            rows.report("future_entity", future, action,
                        f"rows name {entity.name} rows whose {entity.time_column} is after "
                        "the row's cutoff", delete=policy == "drop")
    if not shape.link:
        cast = task.kind.label_sql_type
        bad = con.execute(f"SELECT COUNT(*) FROM _task_rows WHERE TRY_CAST(label AS {cast}) IS NULL"
                          ).fetchall()[0][0]
        if bad:
            raise TaskError(f"{where}: {bad} rows have a null or non-{cast.lower()} label")
    return rows.repairs


def build_task_table(con: duckdb.DuckDBPyConnection, spec: DatasetSpec, task: TaskSpec) -> dict:
    """Write `task_<name>` and `task_<name>_live`; return a per-split summary.

    The summary holds `splits` (examples, label statistic, entities, cutoffs per split),
    `live_entities`, `cutoffs` (TaskCutoffs as strings), `repairs` (what the task's rules
    dropped or kept under a policy: kind, count, by_split, a few example keys, action,
    message) and `live_from` (how the scoring set was found)."""
    cuts = task_cutoffs(con, spec, task)
    shape = _shape(spec, task)
    entity = spec.tables[task.entity_table]
    keys = shape.keys
    link = shape.link
    try:
        _collect_rows(con, spec, task, cuts, shape)
        raw_counts = dict(con.execute("SELECT __split, count(*) FROM _task_rows GROUP BY __split"
                                      ).fetchall())
        repairs = _apply_rules(con, spec, task, cuts, shape)

        join_e = " AND ".join(f"o.{q(k)} = e.{q(k)}" for k in keys)
        if link:
            tkey = shape.out_col
            target = spec.tables[task.target_table]
            label_expr = f"o.{q(tkey)}, t.__id AS __target_id"
            join_t = f"JOIN {q(target.name)} t ON o.{q(tkey)} = t.{q(tkey)}"
        else:
            label_expr = f"CAST(o.label AS {task.kind.label_sql_type}) AS label"
            join_t = ""
        name = f"task_{task.name}"
        con.execute(f"""
            CREATE OR REPLACE TABLE {q(name)} AS
            SELECT {q_list(keys, 'o.')}, e.__id AS __entity_id, CAST(o.cutoff AS TIMESTAMP) AS cutoff,
                   o.__split AS split, {label_expr}
            FROM _task_rows o JOIN {q(entity.name)} e ON {join_e} {join_t}
            ORDER BY split, cutoff, __entity_id{', __target_id' if link else ''}""")
        live_from = _build_live(con, spec, task, cuts, shape)
        unkeyed = q(f"task_{task.name}_unkeyed")
        if _exists(con, "_task_unkeyed"):
            con.execute(f"CREATE OR REPLACE TABLE {unkeyed} AS SELECT * FROM _task_unkeyed "
                        "ORDER BY split, cutoff")
        else:
            con.execute(f"DROP TABLE IF EXISTS main.{unkeyed}")
    finally:
        for tmp in ("_task_rows", "_task_out", "_task_live", "_task_raw", "_task_unkeyed"):
            con.execute(f"DROP TABLE IF EXISTS temp.main.{q(tmp)}")
    summary = split_summary(con, task, why=_why_empty(cuts, raw_counts, repairs))
    summary["cutoffs"] = {k: (str(v) if not isinstance(v, list) else [str(x) for x in v])
                          for k, v in asdict(cuts).items()}
    summary["repairs"] = repairs
    summary["live_from"] = live_from
    if summary["live_entities"] == 0:
        summary["repairs"].append({
            "kind": "empty_live_set", "count": 0, "by_split": {}, "examples": [],
            "action": f"predictions_{task.name} will be empty",
            "message": f"{_where(spec, task)}: no {entity.name} is live at the newest "
                       f"timestamp ({cuts.latest}) ({live_from})"})
    return summary


def _exists(con, temp_table: str) -> bool:
    return bool(con.execute("SELECT count(*) FROM duckdb_tables() WHERE temporary AND table_name = ?",
                            [temp_table]).fetchall()[0][0])


def relbench_train_labels(con: duckdb.DuckDBPyConnection, task: TaskSpec) -> np.ndarray:
    """The labels of RelBench's train table of `task` (float64): relgraph's train labels
    and those of the train rows whose entity is NULL, which RelBench keeps and relgraph
    cannot train on (`task_<name>_unkeyed`). RelBench's NMAE divides by their standard
    deviation."""
    parts = [f"SELECT CAST(label AS DOUBLE) AS label FROM main.{q(f'task_{task.name}')} "
             "WHERE split = 'train'"]
    unkeyed = f"task_{task.name}_unkeyed"
    if con.execute("SELECT count(*) FROM duckdb_tables() WHERE NOT temporary AND schema_name = "
                   "'main' AND table_name = ?", [unkeyed]).fetchall()[0][0]:
        parts.append(f"SELECT CAST(label AS DOUBLE) FROM main.{q(unkeyed)} WHERE split = 'train'")
    column = con.sql(" UNION ALL ".join(parts)).to_arrow_table().column("label")
    return column.to_numpy(zero_copy_only=False).astype(np.float64)  # NULL -> NaN


def _build_live(con, spec: DatasetSpec, task: TaskSpec, cuts: TaskCutoffs, shape: _Shape) -> str:
    """`task_<name>_live`: the entities to score at the newest timestamp, from rows <= it.

    relgraph's tasks: `entity_sql`, else the entities `label_sql` returns (label ignored).
    RelBench's tasks: the SQL at the newest timestamp where it yields entities (its entity
    filter without the future window, which is empty there), else the entities of the
    last test window. Returns how the set was found."""
    entity = spec.tables[task.entity_table]
    keys = shape.keys
    where = f"task {task.name}.label_sql"
    live_from = "label_sql at the newest timestamp"
    if task.relbench is None:
        _register_cutoffs(con, [cuts.latest], task.horizon)
        if task.entity_sql:
            live = _run_select(con, task.entity_sql, f"task {task.name}.entity_sql",
                               keys + ["cutoff"], into="_task_live")
            live_from = "entity_sql at the newest timestamp"
        else:
            live = _run_select(con, task.label_sql, where, keys + ["cutoff"], into="_task_live")
    else:
        live = "_task_live"
        n = 0
        try:
            if task.label_database == "full":
                _run_labels(con, spec, task, shape, [cuts.latest], live)
            else:
                with _database(con, spec, task, None):
                    _run_labels(con, spec, task, shape, [cuts.latest], live)
            n = con.execute(f"SELECT count(*) FROM {live} WHERE "
                            + " AND ".join(f"{q(k)} IS NOT NULL" for k in keys)).fetchall()[0][0]
            live_from = "the task SQL at the newest timestamp"
        except TaskError as exc:
            live_from = f"the task SQL cannot run ({exc})"
        if not n:
            last = cuts.test_windows[-1]
            con.execute(f"""CREATE OR REPLACE TEMP TABLE _task_live AS
                SELECT DISTINCT {q_list(keys)}, TIMESTAMP '{cuts.latest}' AS cutoff
                FROM {q(f'task_{task.name}')} WHERE split = 'test' AND cutoff = (
                    SELECT max(cutoff) FROM {q(f'task_{task.name}')} WHERE split = 'test')""")
            live_from = (f"the entities of the last test window ({last}): "
                         + ("the task SQL found none at the newest timestamp"
                            if live_from.startswith("the task SQL at") else live_from))
    join_e = " AND ".join(f"o.{q(k)} = e.{q(k)}" for k in keys)
    con.execute(f"""
        CREATE OR REPLACE TABLE {q(f'task_{task.name}_live')} AS
        SELECT DISTINCT {q_list(keys, 'e.')}, e.__id AS __entity_id,
               TIMESTAMP '{cuts.latest}' AS cutoff
        FROM {live} o JOIN {q(entity.name)} e ON {join_e}
        ORDER BY __entity_id""" if task.relbench is not None else f"""
        CREATE OR REPLACE TABLE {q(f'task_{task.name}_live')} AS
        SELECT DISTINCT {q_list(keys, 'e.')}, e.__id AS __entity_id, CAST(o.cutoff AS TIMESTAMP) AS cutoff
        FROM {live} o JOIN {q(entity.name)} e ON {join_e}
        ORDER BY __entity_id""")
    return live_from


def _why_empty(cuts: TaskCutoffs, raw_counts: dict, repairs: list[dict]) -> dict[str, str]:
    """Per split, why it may be empty: its windows, and what the rules dropped."""
    out = {}
    for split in SPLITS:
        stamps = cuts.of(split)
        span = (f"{len(stamps)} window(s), cutoffs {stamps[0]} .. {stamps[-1]}" if len(stamps) > 1
                else f"cutoff {stamps[0]}")
        dropped = [f"{r['by_split'][split]} {r['kind'].replace('_', ' ')}" for r in repairs
                   if r["by_split"].get(split) and "kept" not in r["action"]]
        got = raw_counts.get(split, 0)
        out[split] = (f"{span}: the label SQL returned no rows for it" if not got else
                      f"{span}: the label SQL returned {got} rows, all dropped ({', '.join(dropped)})")
    return out


def split_summary(con: duckdb.DuckDBPyConnection, task: TaskSpec,
                  why: dict[str, str] | None = None) -> dict:
    """Examples, label statistics and distinct entities per split, plus the live count.
    `why` explains, per split, an empty one (its windows and what was dropped)."""
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
            detail = f" ({why[split]})" if why and split in why else ""
            raise TaskError(f"task {task.name}: the {split} split has no examples{detail}; "
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


def preview_task(warehouse: Path, spec: DatasetSpec, task: TaskSpec) -> dict:
    """`build_task_table`'s summary of `task` without writing the warehouse: the label
    tables are built in memory over the warehouse's tables, which are attached read-only."""
    con = duckdb.connect()
    try:
        con.execute(f"ATTACH {literal(str(warehouse))} AS warehouse (READ_ONLY)")
        for table in spec.tables:
            con.execute(f"CREATE VIEW {q(table)} AS SELECT * FROM warehouse.main.{q(table)}")
        return build_task_table(con, spec, task)
    finally:
        con.close()
