"""An existing DuckDB database file, opened read-only; one schema (default `main`).

DuckDB's own Arrow export keeps every type; TIMESTAMPTZ columns come out in UTC.
A file that another process holds open for writing cannot be opened (DuckDB allows one
writer or many readers); the error says so.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import duckdb
import pyarrow as pa

from pipeline.data.sources import (
    DEFAULT_BATCH_SIZE, SourceError, TableNames, check_batch_size, quote_ident, sliced,
)
from pipeline.data.spec import TableSpec


class DuckDBSource(TableNames):
    """Tables and views in one schema of a DuckDB database file."""

    def __init__(self, path: Path, *, schema: str = "main",
                 tables: Mapping[str, TableSpec] | None = None, where: str | None = None):
        self.path = Path(path)
        self.schema = schema
        super().__init__(where or f"duckdb source {self.path}", tables)
        if not self.path.is_file():
            raise SourceError(f"{self.where}: no DuckDB file at '{self.path}'")

    def _connect(self) -> duckdb.DuckDBPyConnection:
        try:
            con = duckdb.connect(str(self.path), read_only=True)
        except duckdb.Error as exc:
            raise SourceError(f"{self.where}: cannot open '{self.path}' read-only ({exc}); if "
                              "another process is writing to it, wait for it to finish") from None
        con.execute("SET TimeZone = 'UTC'")
        return con

    def _qualified(self, name: str) -> str:
        return f"{quote_ident(self.schema)}.{quote_ident(name)}"

    def source_tables(self) -> list[str]:
        with self._connect() as con:
            rows = con.execute(
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_catalog = current_database() AND table_schema = ? ORDER BY table_name",
                [self.schema]).fetchall()
        return [r[0] for r in rows]

    def columns(self, table: str) -> list[str]:
        name = self.source_name(table)
        with self._connect() as con:
            rows = con.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_catalog = "
                "current_database() AND table_schema = ? AND table_name = ? ORDER BY ordinal_position",
                [self.schema, name]).fetchall()
        return [r[0] for r in rows]

    def read(self, table: str, batch_size: int = DEFAULT_BATCH_SIZE) -> pa.RecordBatchReader:
        batch_size = check_batch_size(batch_size)
        name = self.source_name(table)
        con = self._connect()
        try:
            inner = con.sql(f"SELECT * FROM {self._qualified(name)}").to_arrow_reader(batch_size)
        except duckdb.Error as exc:
            con.close()
            raise SourceError(f"{self.where}: cannot read {self.schema}.{name}: {exc}") from None

        def batches():
            # Holding `con` until the last batch keeps the stream's connection open.
            with con:
                yield from sliced(inner, batch_size)

        return pa.RecordBatchReader.from_batches(inner.schema, batches())

    def fingerprint(self, table: str) -> str:
        name = self.source_name(table)
        time_col = self.time_column(table)
        latest = f", max({quote_ident(time_col)})::VARCHAR" if time_col else ""
        with self._connect() as con:
            row = con.execute(f"SELECT count(*){latest} FROM {self._qualified(name)}").fetchall()[0]
        return f"rows={row[0]}" + (f" max({time_col})={row[1]}" if time_col else "")
