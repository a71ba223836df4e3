"""The warehouse: load each table into DuckDB atomically, validate it, apply the spec's policies.

For a table T (extracted in `spec.extract_order()`, so that every referenced table is clean
before the tables that point at it) one DuckDB transaction writes:

- `raw."T"`: the data exactly as extracted, plus `__row` BIGINT, the row's 0-based position
  in the source (what `keep_first` / `keep_last` mean by "first" and "last").
- `main."T"`: the user's columns, the time column and timestamp-like columns parsed to
  TIMESTAMP (naive UTC), `__id` BIGINT dense 0..N-1 ordered by
  (time column NULLS FIRST, primary key columns | all columns when there is no primary key),
  and `__fk_<name>` BIGINT per foreign key = the referenced row's `__id` (NULL when the key
  is null or has no match).
- `main."rejected_T"`: every row a policy dropped, as extracted, plus `__reason` VARCHAR.
- one row in `main."_relgraph_extracts"`: what was loaded, when, from which fingerprint.

A policy that says `fail` raises `WarehouseError` and rolls the transaction back, so the
previous raw, clean and rejected tables stay as they were; so does a killed process, since
DuckDB never makes an uncommitted transaction durable. All the work is SQL run by DuckDB;
Python only builds statements and reads a handful of example values.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import duckdb
import numpy as np
import pyarrow as pa

from pipeline.data.spec import DatasetSpec, ForeignKey, TableSpec
from pipeline.data.sqlutil import q

ROW = "__row"
ID = "__id"
REASON = "__reason"
FK_PREFIX = "__fk_"
EXTRACTS = "_relgraph_extracts"
EXAMPLES = 5
FUTURE_SLACK = timedelta(days=1)
# A VARCHAR column whose non-null values are at least this share numbers (or times) but not
# all of them is reported as mixed: most likely a numeric column with junk in it.
MIXED_SHARE = 0.5

_SOURCE_VIEW = "__relgraph_source"

_TIMESTAMP_TYPES = {"TIMESTAMP", "TIMESTAMP_S", "TIMESTAMP_MS", "TIMESTAMP_NS", "DATE"}
_TIMESTAMPTZ = "TIMESTAMP WITH TIME ZONE"
_NUMERIC_TYPES = {
    "TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT",
    "UINTEGER", "UBIGINT", "UHUGEINT", "FLOAT", "DOUBLE",
}
_NUMBER_RE = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"
# A clock time followed by an explicit zone: Z, an offset, or a zone name (UTC, Europe/Berlin).
_ZONED_RE = r"(?i)\d:\d{2}(:\d{2}(\.\d*)?)?\s*(z|[+-]\d{1,2}(:?\d{2})?|[a-z_]+(/[a-z_+-]+)*)$"
_ISO_DATE_RE = r"^\s*\d{4}-\d{1,2}-\d{1,2}"
# Formats DuckDB's cast does not read and that are not ambiguous (no month/day guessing).
_EXTRA_FORMATS = ("%d.%m.%Y %H:%M:%S", "%d.%m.%Y %H:%M", "%d.%m.%Y", "%Y%m%dT%H%M%S")


class WarehouseError(ValueError):
    """A table that cannot be loaded as the spec asks; `problems` holds what stopped it."""

    def __init__(self, message: str, problems: list[Problem] | None = None):
        super().__init__(message)
        self.problems = list(problems or [])


# Scratch tables live in the connection's temp schema and are dropped before COMMIT.
_TEMPS = {"staged": "__relgraph_staged", "rejects": "__relgraph_rejects",
          "scratch": "__relgraph_scratch"}
_STAGED, _REJECTS, _SCRATCH = (f"temp.main.{q(n)}" for n in _TEMPS.values())


def _rel(schema: str, table: str) -> str:
    return f"{q(schema)}.{q(table)}"


def rejected_name(table: str) -> str:
    return f"rejected_{table}"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a table's data and what the spec's policy did about it.

    `detail` is the sentence with the count ("12 rows reference customers that do not
    exist"); `severity` is "warn" when the policy repaired it and "error" when it stopped
    the load.
    """

    kind: str
    table: str
    column: str | None
    count: int
    examples: list
    severity: str
    action: str
    detail: str = ""

    @property
    def message(self) -> str:
        where = f"{self.table}.{self.column}" if self.column else self.table
        shown = ", ".join(_show(v) for v in self.examples)
        more = ", ..." if self.count > len(self.examples) else ""
        first = f" (first: {shown}{more})" if self.examples else ""
        return f"{where}: {self.detail}{first}; {self.action}"


@dataclass
class ExtractReport:
    """What one extract loaded, rejected and found; `skipped` when the data was unchanged."""

    table: str
    rows_in: int
    rows_out: int
    rows_rejected: int
    columns: dict[str, str]
    time_range: tuple[datetime, datetime] | None
    problems: list[Problem] = field(default_factory=list)
    skipped: bool = False

    @property
    def message(self) -> str:
        if self.skipped:
            head = f"{self.table}: unchanged since the last extract ({self.rows_out} rows), skipped"
        else:
            head = (f"{self.table}: {self.rows_in} rows in, {self.rows_out} loaded, "
                    f"{self.rows_rejected} rejected")
        return "\n  ".join([head] + [p.message for p in self.problems])


def _show(value) -> str:
    if isinstance(value, tuple):
        return "(" + ", ".join(_show(v) for v in value) + ")"
    if isinstance(value, str):
        return repr(value)
    return str(value)


def _rows(n: int, singular_verb: str = "", plural_verb: str = "") -> str:
    """'1 row references' / '12 rows reference'."""
    verb = singular_verb if n == 1 else plural_verb
    return f"{n} row{'' if n == 1 else 's'}" + (f" {verb}" if verb else "")


# ---------------------------------------------------------------------------------------
# Parsing times in SQL


def _epoch_sql(v: str) -> str:
    """Epoch number -> TIMESTAMP; the unit is read from the magnitude.

    |v| < 1e11 is seconds (up to year 5138), < 1e14 milliseconds, < 1e17 microseconds,
    else nanoseconds; NaN and infinities give NULL.
    """
    scale = (f"CASE WHEN abs({v}) < 1e11 THEN 1e6 WHEN abs({v}) < 1e14 THEN 1e3 "
             f"WHEN abs({v}) < 1e17 THEN 1.0 ELSE 1e-3 END")
    return (f"CASE WHEN isfinite({v}) AND abs({v}) < 1e20 "
            f"THEN make_timestamp(CAST(round({v} * {scale}) AS BIGINT)) END")


def _string_time_sql(x: str) -> str:
    """VARCHAR -> TIMESTAMP (naive UTC), NULL when it cannot be read.

    Numbers are epochs; strings with an explicit zone are converted to UTC (a plain cast to
    TIMESTAMP would drop the offset); naive strings are taken as UTC.
    """
    s = f"trim({x})"
    formats = ", ".join(f"'{f}'" for f in _EXTRA_FORMATS)
    return (f"CASE WHEN regexp_full_match({s}, '{_NUMBER_RE}') "
            f"THEN {_epoch_sql(f'TRY_CAST({s} AS DOUBLE)')} "
            f"WHEN regexp_matches({s}, '{_ZONED_RE}') "
            f"THEN timezone('UTC', TRY_CAST({s} AS TIMESTAMPTZ)) "
            f"ELSE coalesce(TRY_CAST({s} AS TIMESTAMP), try_strptime({s}, [{formats}])) END")


def _time_sql(x: str, dtype: str) -> str | None:
    """SQL reading column expression `x` of DuckDB type `dtype` as a naive UTC TIMESTAMP."""
    if dtype in _TIMESTAMP_TYPES:
        return f"CAST({x} AS TIMESTAMP)"
    if dtype == _TIMESTAMPTZ:
        return f"timezone('UTC', {x})"
    if dtype in _NUMERIC_TYPES or dtype.startswith("DECIMAL"):
        return _epoch_sql(f"CAST({x} AS DOUBLE)")
    if dtype == "VARCHAR":
        return _string_time_sql(x)
    return None


def _is_nested(dtype: str) -> bool:
    return dtype.endswith("]") or dtype.startswith(("STRUCT", "MAP", "UNION"))


# ---------------------------------------------------------------------------------------
# Catalog helpers


def _describe(con: duckdb.DuckDBPyConnection, relation: str) -> list[tuple[str, str]]:
    return [(r[0], r[1]) for r in con.execute(f"DESCRIBE SELECT * FROM {relation}").fetchall()]


def _exists(con: duckdb.DuckDBPyConnection, schema: str, table: str) -> bool:
    return bool(con.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE database_name = current_database() "
        "AND schema_name = ? AND table_name = ?", [schema, table]).fetchall()[0][0])


def _count(con: duckdb.DuckDBPyConnection, relation: str) -> int:
    return con.execute(f"SELECT count(*) FROM {relation}").fetchall()[0][0]


def _examples(con: duckdb.DuckDBPyConnection, relation: str, cols: list[str], where: str,
              params: list | None = None) -> list:
    """The first distinct values of `cols` (by source order) among rows matching `where`."""
    sel = ", ".join(q(c) for c in cols)
    rows = con.execute(f"SELECT {sel} FROM {relation} WHERE {where} GROUP BY ALL "
                       f"ORDER BY min({q(ROW)}) LIMIT {EXAMPLES}", params or []).fetchall()
    return [r[0] if len(cols) == 1 else tuple(r) for r in rows]


def _match(child: str, child_cols, child_types: dict[str, str],
           parent: str, parent_cols, parent_types: dict[str, str]) -> str:
    """Join condition child.fk = parent.pk, casting the child side when the types differ."""
    parts = []
    for c, p in zip(child_cols, parent_cols):
        ct, pt = child_types[c], parent_types[p]
        left = f"{child}.{q(c)}"
        both_numeric = ct in _NUMERIC_TYPES and pt in _NUMERIC_TYPES
        if ct != pt and not both_numeric:
            left = f"TRY_CAST({left} AS {pt})"
        parts.append(f"{left} = {parent}.{q(p)}")
    return " AND ".join(parts)


def _all_set(alias: str, cols) -> str:
    return " AND ".join(f"{alias}.{q(c)} IS NOT NULL" for c in cols)


def _any_null(alias: str, cols) -> str:
    return "(" + " OR ".join(f"{alias}.{q(c)} IS NULL" for c in cols) + ")"


def _alive(alias: str) -> str:
    """Condition: the staged row `alias` has not been rejected (yet)."""
    return f"NOT EXISTS (SELECT 1 FROM {_REJECTS} j WHERE j.{q(ROW)} = {alias}.{q(ROW)})"


_ALIVE = _alive("s")


# ---------------------------------------------------------------------------------------
# Analysis: stage the parsed table, decide which rows to reject, report problems


class _Analysis:
    """Runs the checks and policies for one table on `raw."T"`.

    Leaves two temp tables for the writer: `_STAGED` (__row + user columns, times parsed)
    and `_REJECTS` (__row, __reason). Nothing outside the temp schema is touched.
    """

    def __init__(self, con: duckdb.DuckDBPyConnection, spec: DatasetSpec, table: str,
                 now: datetime):
        self.con, self.spec, self.t = con, spec, spec.table(table)
        self.now = now
        self.raw = _rel("raw", table)
        self.raw_types = {c: ty for c, ty in _describe(con, self.raw) if c != ROW}
        self.columns = list(self.raw_types)
        self.problems: list[Problem] = []
        self.time_sql: dict[str, str] = {}

    def problem(self, kind: str, column: str | None, count: int, examples: list,
                detail: str, action: str, error: bool = False) -> None:
        self.problems.append(Problem(kind, self.t.name, column, int(count), list(examples),
                                     "error" if error else "warn", action, detail))

    def run(self) -> list[Problem]:
        self.rows_in = _count(self.con, self.raw)
        if self.rows_in == 0:
            self.problem("empty_table", None, 0, [], "the table has no rows",
                         "loaded an empty table")
        self.profile()
        self.report_mixed_zones()
        self.stage()
        self.reject_bad_times()
        if self.t.primary_key:
            self.apply_key_policy()
        self.report_future()
        self.apply_orphan_policy()
        return self.problems

    # -- columns ------------------------------------------------------------------------

    def profile(self) -> None:
        """One pass over raw: null, constant and mixed-type columns; which are timestamps."""
        t = self.t
        for col in [t.time_column] + [c for c, s in t.column_types.items() if s == "timestamp"]:
            if col and col not in self.time_sql:
                sql = _time_sql(q(col), self.raw_types[col])
                if sql is None:
                    raise WarehouseError(f"{t.name}.{col}: a {self.raw_types[col]} column "
                                         "cannot be read as a time")
                self.time_sql[col] = sql
        # Typed times (dates, other precisions, zoned) become naive UTC TIMESTAMP everywhere,
        # so that every time in the warehouse compares with every other.
        for col, dtype in self.raw_types.items():
            typed = dtype in _TIMESTAMP_TYPES or dtype == _TIMESTAMPTZ
            if typed and col not in t.column_types and col not in self.time_sql:
                self.time_sql[col] = _time_sql(q(col), dtype)
        aggs, keys = [], []
        for col, dtype in self.raw_types.items():
            aggs.append(f"count({q(col)})")
            keys.append((col, "n"))
            if not _is_nested(dtype) and dtype != '"NULL"':
                aggs.append(f"min({q(col)}) = max({q(col)})")
                keys.append((col, "constant"))
            if dtype == "VARCHAR" and col not in self.time_sql:
                aggs.append(f"count(*) FILTER (WHERE TRY_CAST({q(col)} AS DOUBLE) IS NOT NULL)")
                keys.append((col, "numbers"))
                aggs.append(f"count(*) FILTER (WHERE regexp_matches({q(col)}, '{_ISO_DATE_RE}') "
                            f"AND ({_string_time_sql(q(col))}) IS NOT NULL)")
                keys.append((col, "times"))
        stats: dict[str, dict] = {c: {} for c in self.columns}
        for (col, key), value in zip(keys, self.con.execute(
                f"SELECT {', '.join(aggs)} FROM {self.raw}").fetchall()[0]):
            stats[col][key] = value
        for col, st in stats.items():
            n = st["n"]
            if self.rows_in and n == 0:
                self.problem("all_null_column", col, self.rows_in, [],
                             "every value is NULL", "kept the column; it carries no information")
                continue
            if self.rows_in > 1 and n == self.rows_in and st.get("constant"):
                value = self.con.execute(f"SELECT {q(col)} FROM {self.raw} LIMIT 1").fetchall()
                self.problem("constant_column", col, self.rows_in, [],
                             f"every row holds the same value, {_show(value[0][0])}",
                             "kept the column; it carries no information")
            if "numbers" not in st or n == 0:
                continue
            if st["times"] == n and col not in self.t.column_types:
                self.time_sql[col] = _string_time_sql(q(col))
            elif MIXED_SHARE * n <= st["numbers"] < n:
                bad = n - st["numbers"]
                self.problem("mixed_types", col, bad,
                             _examples(self.con, self.raw, [col], f"{q(col)} IS NOT NULL AND "
                                       f"TRY_CAST({q(col)} AS DOUBLE) IS NULL"),
                             f"{bad} of {n} values are not numbers",
                             "kept the column as text; clean the source or set column_types")
            elif MIXED_SHARE * n <= st["times"] < n:
                bad = n - st["times"]
                self.problem("mixed_types", col, bad,
                             _examples(self.con, self.raw, [col], f"{q(col)} IS NOT NULL AND NOT "
                                       f"coalesce(regexp_matches({q(col)}, '{_ISO_DATE_RE}') AND "
                                       f"({_string_time_sql(q(col))}) IS NOT NULL, false)"),
                             f"{bad} of {n} values are not times",
                             "kept the column as text; clean the source or set column_types")

    def report_mixed_zones(self) -> None:
        """Text time columns where some values name a zone and others do not.

        Both kinds load (zoned values converted to UTC, the others read as UTC), but if the
        zone-less ones were local times they are now off by the offset, so it is reported.
        """
        cols = [c for c in self.time_sql if self.raw_types[c] == "VARCHAR"]
        if not cols:
            return
        zoned = {c: f"regexp_matches(trim({q(c)}), '{_ZONED_RE}') AND NOT "
                    f"regexp_full_match(trim({q(c)}), '{_NUMBER_RE}')" for c in cols}
        # zone-less: read as a time, but neither zoned nor an epoch number
        naive = {c: f"NOT ({zoned[c]}) AND NOT regexp_full_match(trim({q(c)}), '{_NUMBER_RE}') "
                    f"AND ({_string_time_sql(q(c))}) IS NOT NULL" for c in cols}
        aggs = [f"count(*) FILTER (WHERE {w[c]})" for c in cols for w in (zoned, naive)]
        counts = self.con.execute(f"SELECT {', '.join(aggs)} FROM {self.raw}").fetchall()[0]
        for i, col in enumerate(cols):
            n_zoned, n_naive = counts[2 * i], counts[2 * i + 1]
            if not (n_zoned and n_naive):
                continue
            examples = (_examples(self.con, self.raw, [col], naive[col])[:2]
                        + _examples(self.con, self.raw, [col], zoned[col])[:2])
            self.problem("mixed_time_zones", col, n_naive, examples,
                         f"{n_naive} value{'s' if n_naive != 1 else ''} without a time zone "
                         f"next to {n_zoned} with one",
                         "converted the zoned values to UTC and read the others as UTC; "
                         "give every value a zone in the source if they are local times")

    def stage(self) -> None:
        """Parse times and resolve the other tables' foreign keys in one pass over raw.

        `_STAGED` holds __row, the user's columns (times parsed), a flag `__relgraph_bad<j>`
        per parsed time column (the raw value was there but could not be read) and
        `__fk_<name>` for every foreign key into another table (the parent's `__id`).
        """
        parsed = list(self.time_sql)
        self.bad = {c: f"__relgraph_bad{j}" for j, c in enumerate(parsed)}
        raw_of = {c: f"__relgraph_raw{j}" for j, c in enumerate(parsed)}
        inner = ", ".join([q(ROW)] + [f"{self.time_sql[c]} AS {q(c)}" if c in self.time_sql
                                      else q(c) for c in self.columns]
                          + [f"{q(c)} AS {q(raw_of[c])}" for c in parsed])
        self.staged_types = {c: "TIMESTAMP" if c in self.time_sql else ty
                             for c, ty in self.raw_types.items()}
        outer = [f"s.{q(c)}" for c in [ROW] + self.columns]
        outer += [f"(s.{q(raw_of[c])} IS NOT NULL AND s.{q(c)} IS NULL) AS {q(self.bad[c])}"
                  for c in parsed]
        joins = []
        for i, fk in enumerate(self.t.foreign_keys):
            if fk.references == self.t.name:
                continue
            if not _exists(self.con, "main", fk.references):
                raise WarehouseError(
                    f"{self.t.name}.{fk.name}: references {fk.references}, which is not "
                    "extracted yet (extract tables in spec.extract_order())")
            rel = _rel("main", fk.references)
            match = _match("s", fk.columns, self.staged_types, f"f{i}",
                           self.spec.table(fk.references).primary_key,
                           dict(_describe(self.con, rel)))
            joins.append(f"LEFT JOIN {rel} f{i} ON {match}")
            outer.append(f"f{i}.{q(ID)} AS {q(FK_PREFIX + fk.name)}")
        self.con.execute(f"CREATE OR REPLACE TEMP TABLE {q(_TEMPS['staged'])} AS "
                         f"SELECT {', '.join(outer)} FROM (SELECT {inner} FROM {self.raw}) s "
                         + " ".join(joins))
        self.con.execute(f"CREATE OR REPLACE TEMP TABLE {q(_TEMPS['rejects'])} "
                         f"({q(ROW)} BIGINT, {q(REASON)} VARCHAR)")

    def reject(self, where: str, reason: str, params: list | None = None) -> int:
        """Move the live staged rows matching `where` (alias s) to the rejects."""
        return self.con.execute(
            f"INSERT INTO {_REJECTS} SELECT s.{q(ROW)}, ? FROM {_STAGED} s "
            f"WHERE {_ALIVE} AND ({where})", [reason] + (params or [])).fetchall()[0][0]

    # -- times --------------------------------------------------------------------------

    def reject_bad_times(self) -> None:
        """Times that cannot be read; rows without a usable time column value are rejected."""
        for col, flag in self.bad.items():
            bad = self.con.execute(f"SELECT count(*) FILTER (WHERE {q(flag)}) "
                                   f"FROM {_STAGED}").fetchall()[0][0]
            is_time = col == self.t.time_column
            if bad:
                flagged = f"{q(ROW)} IN (SELECT {q(ROW)} FROM {_STAGED} WHERE {q(flag)})"
                self.problem("unparsable_time", col, bad,
                             _examples(self.con, self.raw, [col], flagged),
                             f"{bad} value{'s' if bad != 1 else ''} cannot be read as a time",
                             "rejected the rows: they cannot be placed in time" if is_time
                             else "set the values to NULL")
            if not is_time:
                continue
            self.con.execute(
                f"INSERT INTO {_REJECTS} SELECT {q(ROW)}, CASE WHEN {q(flag)} THEN ? ELSE ? END "
                f"FROM {_STAGED} WHERE {q(col)} IS NULL", [f"unparsable {col}", f"null {col}"])
            nulls = self.con.execute(f"SELECT count(*) FROM {_REJECTS} WHERE {q(REASON)} = ?",
                                     [f"null {col}"]).fetchall()[0][0]
            if nulls:
                self.problem("null_time", col, nulls, [], _rows(nulls, "has", "have") + " no time",
                             "rejected the rows: they cannot be placed in time")

    def report_future(self) -> None:
        col = self.t.time_column
        if not col:
            return
        limit = self.now + FUTURE_SLACK
        where = f"s.{q(col)} > ? AND {_ALIVE}"
        n = self.con.execute(f"SELECT count(*) FROM {_STAGED} s WHERE {where}",
                             [limit]).fetchall()[0][0]
        if n:
            self.problem("future_time", col, n,
                         _examples(self.con, f"{_STAGED} s", [col], where, [limit]),
                         _rows(n, "lies", "lie")
                         + f" more than a day after {self.now:%Y-%m-%d %H:%M}",
                         "kept the rows; they lie after every cutoff")

    # -- primary key --------------------------------------------------------------------

    def apply_key_policy(self) -> None:
        t, pk = self.t, list(self.t.primary_key)
        policy = t.on_duplicate_key
        fail = policy == "fail"
        key_name = ", ".join(pk)
        null_key = _any_null("s", pk)
        if fail:
            nulls = self.con.execute(f"SELECT count(*) FROM {_STAGED} s WHERE {_ALIVE} "
                                     f"AND {null_key}").fetchall()[0][0]
        else:
            nulls = self.reject(null_key, "null primary key")
        if nulls:
            self.problem("null_key", key_name, nulls, [], _rows(nulls, "has", "have") +
                         " no primary key value",
                         "stopped: on_duplicate_key is fail (rows need a key; use keep_first "
                         "or keep_last to reject them)" if fail else
                         f"rejected the rows to {rejected_name(t.name)}", error=fail)

        parts = ", ".join(f"s.{q(c)}" for c in pk)
        direction = "DESC" if policy == "keep_last" else "ASC"
        self.con.execute(
            f"CREATE OR REPLACE TEMP TABLE {q(_TEMPS['scratch'])} AS "
            f"SELECT s.{q(ROW)} FROM (SELECT s.{q(ROW)}, row_number() OVER (PARTITION BY {parts} "
            f"ORDER BY s.{q(ROW)} {direction}) AS k FROM {_STAGED} s "
            f"WHERE {_ALIVE} AND NOT {null_key}) s WHERE k > 1")
        dups = _count(self.con, _SCRATCH)
        if not dups:
            return
        in_dups = f"s.{q(ROW)} IN (SELECT {q(ROW)} FROM {_SCRATCH})"
        examples = _examples(self.con, f"{_STAGED} s", pk, in_dups)
        if fail:
            self.problem("duplicate_key", key_name, dups, examples,
                         _rows(dups, "repeats", "repeat") + " the primary key of another row",
                         "stopped: on_duplicate_key is fail (use keep_first or keep_last to keep "
                         "one row per key)", error=True)
            return
        self.reject(in_dups, "duplicate primary key")
        which = "first" if policy == "keep_first" else "last"
        self.problem("duplicate_key", key_name, dups, examples,
                     _rows(dups, "repeats", "repeat") + " the primary key of another row",
                     f"kept the {which} row of each key by source order, rejected the others "
                     f"to {rejected_name(t.name)}")

    # -- foreign keys -------------------------------------------------------------------

    def orphan_where(self, fk: ForeignKey) -> str:
        """Condition on staged row s: its key for `fk` is set but matches no parent row.

        Other tables were joined while staging; a self-reference looks for a live row of
        this table.
        """
        cond = _all_set("s", fk.columns)
        if fk.references != self.t.name:
            return f"{cond} AND s.{q(FK_PREFIX + fk.name)} IS NULL"
        match = _match("s", fk.columns, self.staged_types, "p", self.t.primary_key,
                       self.staged_types)
        return f"{cond} AND NOT EXISTS (SELECT 1 FROM {_STAGED} p WHERE {_alive('p')} AND {match})"

    def apply_orphan_policy(self) -> None:
        """Find every foreign key's orphans among the rows the key policy kept, then act.

        Counts are per foreign key over the same rows, so a row orphaned twice counts twice
        but is rejected once (for its first foreign key). Under `drop`, a row whose
        self-referenced parent was dropped is an orphan too: that is followed to a fixpoint.
        """
        t, policy = self.t, self.t.on_orphan
        found = []
        for fk in t.foreign_keys:
            where = self.orphan_where(fk)
            n = self.con.execute(f"SELECT count(*) FROM {_STAGED} s WHERE {_ALIVE} AND "
                                 f"{where}").fetchall()[0][0]
            if n:
                found.append((fk, where, n))
        for fk, where, n in found:
            examples = _examples(self.con, f"{_STAGED} s", list(fk.columns),
                                 f"{_ALIVE} AND {where}")
            action = {
                "fail": "stopped: on_orphan is fail (use null or drop to repair)",
                "null": f"kept the rows without this link ({FK_PREFIX}{fk.name} is NULL)",
                "drop": f"rejected the rows to {rejected_name(t.name)}",
            }[policy]
            self.problem("orphan", ", ".join(fk.columns), n, examples,
                         _rows(n, "references", "reference") + f" {fk.references} that do not "
                         "exist", action, error=policy == "fail")
        if policy != "drop" or not found:
            return
        for fk, where, _ in found:
            self.reject(where, f"orphan {fk.name} -> {fk.references}")
        self_fks = [fk for fk in t.foreign_keys if fk.references == t.name]
        while self_fks:
            moved = sum(self.reject(self.orphan_where(fk),
                                    f"orphan {fk.name} -> {fk.references} (its row was rejected)")
                        for fk in self_fks)
            if not moved:
                break


# ---------------------------------------------------------------------------------------
# Writing


def _order_by(t: TableSpec, columns: list[str]) -> str:
    keys = list(t.primary_key) or [c for c in columns if c != t.time_column]
    parts = ([f"{q(t.time_column)} NULLS FIRST"] if t.time_column else [])
    return ", ".join(parts + [q(c) for c in keys])


def _write(con: duckdb.DuckDBPyConnection, a: _Analysis) -> None:
    """raw is already written; write the clean and rejected tables from the analysis."""
    t = a.t
    others = [fk for fk in t.foreign_keys if fk.references != t.name]
    carried = a.columns + [FK_PREFIX + fk.name for fk in others]
    kept = (f"SELECT {', '.join(f's.{q(c)}' for c in carried)}, row_number() OVER (ORDER BY "
            f"{_order_by(t, a.columns)}) - 1 AS {q(ID)} FROM {_STAGED} s WHERE {_ALIVE}")
    select = [f"k.{q(c)}" for c in a.columns + [ID]]
    joins = []
    for i, fk in enumerate(t.foreign_keys):
        name = q(FK_PREFIX + fk.name)
        if fk.references != t.name:
            select.append(f"k.{name}")
            continue
        joins.append(f"LEFT JOIN kept f{i} ON " + _match(
            "k", fk.columns, a.staged_types, f"f{i}", t.primary_key, a.staged_types))
        select.append(f"f{i}.{q(ID)} AS {name}")
    con.execute(f"CREATE OR REPLACE TABLE {_rel('main', t.name)} AS WITH kept AS ({kept}) "
                f"SELECT {', '.join(select)} FROM kept k {' '.join(joins)} ORDER BY k.{q(ID)}")
    con.execute(f"CREATE OR REPLACE TABLE {_rel('main', rejected_name(t.name))} AS "
                f"SELECT r.* EXCLUDE ({q(ROW)}), j.{q(REASON)} FROM {a.raw} r "
                f"JOIN {_REJECTS} j ON j.{q(ROW)} = r.{q(ROW)} ORDER BY r.{q(ROW)}")


def _numbered(reader: pa.RecordBatchReader) -> pa.RecordBatchReader:
    """The same stream with `__row` (source position) appended; one step per batch."""
    schema = reader.schema.append(pa.field(ROW, pa.int64()))

    def batches():
        offset = 0
        for batch in reader:
            rows = pa.array(np.arange(offset, offset + batch.num_rows, dtype=np.int64))
            yield pa.RecordBatch.from_arrays([*batch.columns, rows], schema=schema)
            offset += batch.num_rows

    return pa.RecordBatchReader.from_batches(schema, batches())


def _check_names(spec: DatasetSpec, t: TableSpec, names: list[str]) -> None:
    dataclasses.replace(spec, tables={t.name: t}).check_columns({t.name: names})
    reserved = {ROW, ID, REASON} | {FK_PREFIX + fk.name for fk in t.foreign_keys}
    clash = sorted(n for n in names if n in reserved or n.startswith("__relgraph"))
    if clash:
        raise WarehouseError(f"{t.name}.{clash[0]}: the name is reserved for the warehouse's own "
                             "bookkeeping; rename the column in the source")


def _drop_temps(con: duckdb.DuckDBPyConnection) -> None:
    for rel in (_STAGED, _REJECTS, _SCRATCH):
        con.execute(f"DROP TABLE IF EXISTS {rel}")


# ---------------------------------------------------------------------------------------
# Bookkeeping


def _spec_hash(t: TableSpec) -> str:
    return hashlib.sha256(repr(t).encode()).hexdigest()[:16]


def _ensure_extracts(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(f"CREATE TABLE IF NOT EXISTS {_rel('main', EXTRACTS)} ("
                '"table" VARCHAR, fingerprint VARCHAR, rows BIGINT, extracted_at TIMESTAMP, '
                "seq BIGINT, spec_hash VARCHAR, report VARCHAR)")


def _latest(con: duckdb.DuckDBPyConnection, table: str):
    if not _exists(con, "main", EXTRACTS):
        return None
    rows = con.execute(f"SELECT fingerprint, seq, spec_hash, report FROM {_rel('main', EXTRACTS)} "
                       'WHERE "table" = ? ORDER BY seq DESC LIMIT 1', [table]).fetchall()
    return rows[0] if rows else None


def is_unchanged(con: duckdb.DuckDBPyConnection, table: str, fingerprint: str | None,
                 spec: DatasetSpec | None = None) -> bool:
    """Whether `table` was last extracted from data with this fingerprint.

    With `spec`, also that the table's spec is the same and no table it references was
    extracted again since (its `__id`s, which our `__fk_*` columns hold, may have moved).
    """
    last = _latest(con, table)
    if fingerprint is None or last is None or last[0] != fingerprint:
        return False
    if not _exists(con, "main", table):
        return False
    if spec is None:
        return True
    t = spec.table(table)
    if last[2] != _spec_hash(t):
        return False
    for fk in t.foreign_keys:
        ref = _latest(con, fk.references)
        if fk.references != table and (ref is None or ref[1] > last[1]):
            return False
    return True


def _report_json(r: ExtractReport) -> str:
    d = dataclasses.asdict(r)
    d["time_range"] = [v.isoformat() for v in r.time_range] if r.time_range else None
    return json.dumps(d, default=str)


def _report_from_json(text: str) -> ExtractReport:
    d = json.loads(text)
    tr = d["time_range"]
    return ExtractReport(
        table=d["table"], rows_in=d["rows_in"], rows_out=d["rows_out"],
        rows_rejected=d["rows_rejected"], columns=d["columns"],
        time_range=tuple(datetime.fromisoformat(v) for v in tr) if tr else None,
        problems=[Problem(**p) for p in d["problems"]], skipped=True)


# ---------------------------------------------------------------------------------------
# Public API


def utc_now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def extract_table(con: duckdb.DuckDBPyConnection, spec: DatasetSpec, table: str,
                  reader: pa.RecordBatchReader, fingerprint: str | None = None, *,
                  now: datetime | None = None) -> ExtractReport:
    """Load one table from `reader` into the warehouse, in one transaction.

    Tables must be extracted in `spec.extract_order()`. When `fingerprint` matches the last
    extract (see `is_unchanged`) nothing is read and the stored report comes back with
    `skipped=True`. `now` (naive UTC, default the clock) decides what is "in the future".

    Raises `SpecError` when a column the spec names is missing and `WarehouseError` when a
    `fail` policy stops the load; either way the warehouse is left as it was.
    """
    t = spec.table(table)
    if fingerprint is not None and is_unchanged(con, table, fingerprint, spec):
        return _report_from_json(_latest(con, table)[3])
    _check_names(spec, t, list(reader.schema.names))
    now = now or utc_now()
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute("CREATE SCHEMA IF NOT EXISTS raw")
        con.register(_SOURCE_VIEW, _numbered(reader))
        # No `finally`: after a failed load the transaction is aborted, and unregistering
        # then would raise "transaction is aborted" and hide the source's own error.
        con.execute(f"CREATE OR REPLACE TABLE {_rel('raw', t.name)} AS "
                    f"SELECT * FROM {q(_SOURCE_VIEW)}")
        con.unregister(_SOURCE_VIEW)
        analysis = _Analysis(con, spec, table, now)
        problems = analysis.run()
        errors = [p for p in problems if p.severity == "error"]
        if errors:
            raise WarehouseError("\n".join(p.message for p in errors), errors)
        _write(con, analysis)
        report = _report(con, t, analysis.rows_in, problems)
        _ensure_extracts(con)
        con.execute(f"INSERT INTO {_rel('main', EXTRACTS)} SELECT ?, ?, ?, ?, "
                    f"coalesce((SELECT max(seq) FROM {_rel('main', EXTRACTS)}), 0) + 1, ?, ?",
                    [table, fingerprint, report.rows_out, now, _spec_hash(t), _report_json(report)])
        _drop_temps(con)
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return report


def _report(con: duckdb.DuckDBPyConnection, t: TableSpec, rows_in: int,
            problems: list[Problem]) -> ExtractReport:
    clean = _rel("main", t.name)
    columns = dict(_describe(con, clean))
    time_range = None
    if t.time_column:
        lo, hi = con.execute(f"SELECT min({q(t.time_column)}), max({q(t.time_column)}) "
                             f"FROM {clean}").fetchall()[0]
        time_range = (lo, hi) if lo is not None else None
    return ExtractReport(table=t.name, rows_in=rows_in, rows_out=_count(con, clean),
                         rows_rejected=_count(con, _REJECTS), columns=columns,
                         time_range=time_range, problems=problems)


def check_raw(con: duckdb.DuckDBPyConnection, spec: DatasetSpec, table: str,
              now: datetime | None = None) -> list[Problem]:
    """Recompute the checks on `raw."T"` as extracted, against the clean referenced tables.

    Problems a `fail` policy would stop on come back with severity "error"; nothing is
    written (the work happens in a transaction that is rolled back).
    """
    if not _exists(con, "raw", table):
        raise WarehouseError(f"{table}: not extracted yet (no raw.{table} in the warehouse)")
    con.execute("BEGIN TRANSACTION")
    try:
        return _Analysis(con, spec, table, now or utc_now()).run()
    finally:
        con.execute("ROLLBACK")


def warehouse_summary(con: duckdb.DuckDBPyConnection, spec: DatasetSpec) -> dict:
    """{table: {"raw": rows, "clean": rows, "rejected": rows, "extracted_at": time}}.

    Counts are None for tables not extracted yet.
    """
    out = {}
    for name in spec.extract_order():
        counts = {}
        for key, schema, rel in (("raw", "raw", name), ("clean", "main", name),
                                 ("rejected", "main", rejected_name(name))):
            counts[key] = _count(con, _rel(schema, rel)) if _exists(con, schema, rel) else None
        at = None
        if _exists(con, "main", EXTRACTS):
            rows = con.execute(f"SELECT max(extracted_at) FROM {_rel('main', EXTRACTS)} "
                               'WHERE "table" = ?', [name]).fetchall()
            at = rows[0][0]
        out[name] = {**counts, "extracted_at": at}
    return out
