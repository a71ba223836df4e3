"""SQLite files, read with the standard library's sqlite3 (opened read-only).

SQLite types values per row, not per column, so a column's Arrow type comes from its
declared type, by SQLite's own affinity rules plus three names SQLite lacks:

    declared type contains       Arrow type       accepts values stored as
    BOOL                         bool             integer (0 false, anything else true)
    DATETIME, TIMESTAMP, TIME    timestamp[us]    ISO-8601 text (offsets converted to UTC)
                                                  or numbers (Unix seconds), not both
    DATE (not DATETIME)          date32           ISO-8601 text
    INT                          int64            integer
    CHAR, CLOB, TEXT             string           text
    REAL, FLOA, DOUB             float64          integer, real
    BLOB                         binary           blob
    anything else (NUMERIC,      int64 when every value is an integer, float64 when all are
    DECIMAL, or no type)         numbers, string when all are text, binary when all are blobs

Before the first batch one aggregate query counts each column's storage classes, so a
column holding values its type cannot take is reported up front, with the counts and an
example. A mixed column that the spec's `column_types` marks as categorical, text or id
is read as text instead.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.data.sources import (
    DEFAULT_BATCH_SIZE, SourceError, TableNames, check_batch_size, quote_ident,
)
from pipeline.data.spec import TableSpec

STORAGE_CLASSES = ("integer", "real", "text", "blob")
TEXTUAL_SEMANTIC_TYPES = ("categorical", "text", "id")
# A time of day followed by a zone designator: such strings are converted to UTC.
_OFFSET = r"[T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]+)?)?\s*(Z|[+-][0-9]{2}(:?[0-9]{2})?)$"


def declared_kind(declared: str) -> str:
    """The Arrow kind for a declared column type (see the module docstring)."""
    d = declared.upper()
    if "BOOL" in d:
        return "bool"
    if "DATETIME" in d or "TIMESTAMP" in d or d.startswith("TIME"):
        return "timestamp"
    if "DATE" in d:
        return "date"
    if "INT" in d:
        return "int"
    if "CHAR" in d or "CLOB" in d or "TEXT" in d:
        return "text"
    if "BLOB" in d:
        return "blob"
    if "REAL" in d or "FLOA" in d or "DOUB" in d:
        return "float"
    return "any"


_ACCEPTS = {
    "bool": {"integer"},
    "int": {"integer"},
    "float": {"integer", "real"},
    "text": {"text"},
    "blob": {"blob"},
    "date": {"text"},
}
_ARROW = {
    "bool": pa.bool_(), "int": pa.int64(), "float": pa.float64(), "text": pa.string(),
    "blob": pa.binary(), "date": pa.date32(),
    "timestamp_text": pa.timestamp("us"), "timestamp_number": pa.timestamp("us"),
}


def resolve_kind(kind: str, classes: set[str]) -> str | None:
    """The reading for a column of declared `kind` holding `classes`; None if impossible."""
    if kind == "any":
        for candidate, accepted in (("int", {"integer"}), ("float", {"integer", "real"}),
                                    ("text", {"text"}), ("blob", {"blob"})):
            if classes <= accepted:
                return candidate
        return None
    if kind == "timestamp":
        if classes <= {"text"}:
            return "timestamp_text"
        if classes <= {"integer", "real"}:
            return "timestamp_number"
        return None
    return kind if classes <= _ACCEPTS[kind] else None


def parse_timestamps(text: pa.Array) -> pa.Array:
    """ISO-8601 strings -> timestamp[us], naive UTC; strings with an offset are converted.

    Shapes: (n,) string -> (n,) timestamp[us].
    """
    has_offset = pc.match_substring_regex(text, _OFFSET)
    naive = pc.cast(pc.if_else(has_offset, None, text), pa.timestamp("us"))
    aware = pc.cast(pc.if_else(has_offset, text, None), pa.timestamp("us", tz="UTC"))
    return pc.if_else(has_offset, aware.cast(pa.timestamp("us")), naive)


def _convert(values: tuple, reading: str) -> pa.Array:
    if reading == "bool":
        return pc.not_equal(pa.array(values, pa.int64()), 0)
    if reading == "timestamp_text":
        return parse_timestamps(pa.array(values, pa.string()))
    if reading == "timestamp_number":
        micros = pc.multiply(pa.array(values, pa.float64()), 1e6)
        return pc.cast(pc.round(micros), pa.int64()).cast(pa.timestamp("us"))
    if reading == "date":
        return pc.cast(parse_timestamps(pa.array(values, pa.string())), pa.date32(), safe=False)
    return pa.array(values, _ARROW[reading])


class SQLiteSource(TableNames):
    """Tables and views of one SQLite database file."""

    def __init__(self, path: Path, *, tables: Mapping[str, TableSpec] | None = None,
                 where: str | None = None):
        self.path = Path(path)
        super().__init__(where or f"sqlite source {self.path}", tables)
        if not self.path.is_file():
            raise SourceError(f"{self.where}: no SQLite file at '{self.path}'")

    def _connect(self) -> sqlite3.Connection:
        # mode=ro: extraction must never write to (or create) the user's database.
        try:
            # DuckDB pulls the Arrow stream from its own worker thread; the connection is
            # read-only and serves one reader at a time, so sharing it across threads is safe.
            con = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True,
                                  check_same_thread=False)
            con.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
        except sqlite3.DatabaseError as exc:
            raise SourceError(f"{self.where}: cannot open '{self.path}' as SQLite: {exc}") from None
        return con

    def source_tables(self) -> list[str]:
        con = self._connect()
        try:
            rows = con.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view') "
                               "AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name").fetchall()
        finally:
            con.close()
        return [r[0] for r in rows]

    def _declared(self, con: sqlite3.Connection, name: str) -> list[tuple[str, str]]:
        return con.execute("SELECT name, type FROM pragma_table_info(?) ORDER BY cid", (name,)).fetchall()

    def columns(self, table: str) -> list[str]:
        name = self.source_name(table)
        con = self._connect()
        try:
            return [c for c, _ in self._declared(con, name)]
        finally:
            con.close()

    def _readings(self, con: sqlite3.Connection, table: str, name: str) -> list[tuple[str, str, str]]:
        """(column, select expression, reading) per column, checked against the stored values."""
        declared = self._declared(con, name)
        counts_sql = ", ".join(
            f"sum(typeof({quote_ident(c)}) = '{cls}')" for c, _ in declared for cls in STORAGE_CLASSES)
        counts = con.execute(f"SELECT {counts_sql} FROM {quote_ident(name)}").fetchall()[0]
        spec = self.table_specs.get(table)
        semantic = spec.column_types if spec else {}
        out, problems = [], []
        for i, (col, decl) in enumerate(declared):
            have = {cls: counts[4 * i + j] or 0 for j, cls in enumerate(STORAGE_CLASSES)}
            classes = {cls for cls, n in have.items() if n}
            reading = resolve_kind(declared_kind(decl or ""), classes)
            expr = quote_ident(col)
            if reading is None and semantic.get(col) in TEXTUAL_SEMANTIC_TYPES and "blob" not in classes:
                reading, expr = "text", f"CAST({expr} AS TEXT)"
            if reading is None:
                problems.append(self._mixed(con, name, col, decl, have))
            out.append((col, expr, reading))
        if problems:
            raise SourceError(f"{self.where}: table '{name}' has columns whose values do not fit "
                              "their declared type:\n  " + "\n  ".join(problems))
        return out

    def _mixed(self, con: sqlite3.Connection, name: str, col: str, decl: str, have: dict) -> str:
        kind = declared_kind(decl or "")
        accepted = {"timestamp": {"text"}, "any": {"integer", "real"}}.get(kind, _ACCEPTS.get(kind, set()))
        odd = next(cls for cls in STORAGE_CLASSES if have[cls] and cls not in accepted)
        example = con.execute(f"SELECT {quote_ident(col)} FROM {quote_ident(name)} "
                              f"WHERE typeof({quote_ident(col)}) = ? LIMIT 1", (odd,)).fetchall()[0][0]
        held = ", ".join(f"{n} {cls}" for cls, n in have.items() if n)
        return (f"{name}.{col} (declared {decl or 'with no type'}) holds {held} values "
                f"(first {odd}: {example!r}); clean the column, or mark it categorical in the "
                "spec's column_types to read it as text")

    def read(self, table: str, batch_size: int = DEFAULT_BATCH_SIZE) -> pa.RecordBatchReader:
        batch_size = check_batch_size(batch_size)
        name = self.source_name(table)
        con = self._connect()
        try:
            readings = self._readings(con, table, name)
            cursor = con.execute(f"SELECT {', '.join(e for _, e, _ in readings)} FROM {quote_ident(name)}")
        except BaseException:
            con.close()
            raise
        schema = pa.schema([(col, _ARROW[reading]) for col, _, reading in readings])

        def batches():
            try:
                while rows := self._fetch(cursor, batch_size, name, readings):
                    # zip(*rows) transposes in C; each column then becomes one Arrow array.
                    columns = zip(*rows)
                    arrays = []
                    for (col, _, reading), values in zip(readings, columns):
                        try:
                            arrays.append(_convert(values, reading))
                        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
                            raise SourceError(f"{self.where}: {name}.{col}: {exc}") from None
                    yield pa.RecordBatch.from_arrays(arrays, schema=schema)
            finally:
                con.close()

        return pa.RecordBatchReader.from_batches(schema, batches())

    def _fetch(self, cursor: sqlite3.Cursor, size: int, name: str, readings) -> list:
        try:
            return cursor.fetchmany(size)
        except sqlite3.OperationalError as exc:
            if "decode" not in str(exc):
                raise
            texts = [col for col, _, reading in readings if reading == "text"]
            raise SourceError(f"{self.where}: table '{name}' has text that is not UTF-8 "
                              f"({self._undecodable(name, texts)}); convert the database to "
                              "UTF-8") from None

    def _undecodable(self, name: str, columns: list[str]) -> str:
        """'<table>.<column>: N rows (first: b'...')' for each text column holding bytes
        that are not UTF-8. sqlite3 cannot tell, so DuckDB decodes the raw bytes."""
        con = self._connect()
        con.text_factory = bytes
        found = []
        try:
            with duckdb.connect() as duck:
                for col in columns:
                    rows = con.execute(f"SELECT {quote_ident(col)} FROM {quote_ident(name)} "
                                       f"WHERE typeof({quote_ident(col)}) = 'text'").fetchall()
                    column = next(zip(*rows), ())  # transposed in C, as in read()
                    # DuckDB reads this local by its name (FROM values)
                    values = pa.table({"b": pa.array(column, pa.binary())})  # noqa: F841
                    n, first = duck.execute("SELECT count(*), first(b) FROM values WHERE "
                                            "try(decode(b)) IS NULL").fetchall()[0]
                    if n:
                        found.append(f"{name}.{col}: {n} row{'s' if n != 1 else ''} (first: {first!r})")
        finally:
            con.close()
        return "; ".join(found) or f"in one of {', '.join(columns)}"

    def fingerprint(self, table: str) -> str:
        name = self.source_name(table)
        time_col = self.time_column(table)
        latest = f", max({quote_ident(time_col)})" if time_col else ""
        con = self._connect()
        try:
            row = con.execute(f"SELECT count(*){latest} FROM {quote_ident(name)}").fetchall()[0]
        finally:
            con.close()
        return f"rows={row[0]}" + (f" max({time_col})={row[1]}" if time_col else "")
