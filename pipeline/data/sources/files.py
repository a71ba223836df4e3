"""Parquet and CSV directories: one `<table>.<ext>` file or one `<table>/` directory per table.

Parquet is scanned with pyarrow.dataset, whose schema is the union of every file's schema
(an int32 column in one file and int64 in another reads as int64). CSV is scanned by DuckDB
with `union_by_name` and `sample_size=-1`: each file is sniffed in full, so a column's type
is the same in every batch and every file (a column that is integer in one file and has a
decimal point in another is DOUBLE everywhere), instead of being guessed from the first
block. An unquoted empty CSV field is NULL; a quoted one ("") is the empty string.
Timestamps with a UTC offset come out as UTC.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from pipeline.data.sources import (
    DEFAULT_BATCH_SIZE, SourceError, TableNames, check_batch_size, digest, sliced,
)
from pipeline.data.spec import TableSpec

FORMATS = ("parquet", "csv")


def _visible(name: str) -> bool:
    # _SUCCESS, .crc and our own .complete.json markers are not data.
    return not name.startswith((".", "_"))


class FileSource(TableNames):
    """Tables stored as files under one directory."""

    def __init__(self, path: Path, fmt: str, *, tables: Mapping[str, TableSpec] | None = None,
                 where: str | None = None):
        if fmt not in FORMATS:
            raise ValueError(f"file format must be one of {FORMATS}, got '{fmt}'")
        self.path = Path(path)
        self.fmt = fmt
        super().__init__(where or f"{fmt} source {self.path}", tables)
        if not self.path.is_dir():
            raise SourceError(f"{self.where}: '{self.path}' is not a directory "
                              f"(expected one <table>.{fmt} file or <table>/ directory per table)")

    def source_tables(self) -> list[str]:
        names = []
        for entry in sorted(self.path.iterdir()):
            if not _visible(entry.name):
                continue
            if entry.is_file() and entry.suffix == f".{self.fmt}":
                names.append(entry.stem)
            elif entry.is_dir() and self._data_files(entry):
                names.append(entry.name)
        return names

    def _data_files(self, directory: Path) -> list[Path]:
        return sorted(p for p in directory.rglob(f"*.{self.fmt}")
                      if p.is_file() and all(_visible(q) for q in p.relative_to(directory).parts))

    def files(self, table: str) -> list[Path]:
        """The files holding `table`, in a stable order."""
        name = self.source_name(table)
        single, directory = self.path / f"{name}.{self.fmt}", self.path / name
        if single.is_file() and directory.is_dir() and self._data_files(directory):
            raise SourceError(f"{self.where}: table '{name}' is both {single} and the directory "
                              f"{directory}; keep one of them")
        return [single] if single.is_file() else self._data_files(directory)

    def columns(self, table: str) -> list[str]:
        if self.fmt == "parquet":
            return self.schema(table).names
        con, rel = self._csv(table, self.files(table), full_sniff=False)
        with con:
            return rel.columns

    def schema(self, table: str) -> pa.Schema:
        """The Arrow schema `read` yields (for CSV this sniffs every file in full)."""
        files = self.files(table)
        if self.fmt == "parquet":
            return self._parquet_schema(table, files)
        con, rel = self._csv(table, files, full_sniff=True)
        with con:
            return rel.limit(0).to_arrow_table().schema

    def read(self, table: str, batch_size: int = DEFAULT_BATCH_SIZE) -> pa.RecordBatchReader:
        batch_size = check_batch_size(batch_size)
        files = self.files(table)
        if self.fmt == "parquet":
            schema = self._parquet_schema(table, files)
            dataset = ds.dataset([str(f) for f in files], schema=schema, format="parquet")
            return ds.Scanner.from_dataset(dataset, batch_size=batch_size).to_reader()
        con, rel = self._csv(table, files, full_sniff=True)
        try:
            inner = rel.to_arrow_reader(batch_size)
        except duckdb.Error as exc:
            con.close()
            raise self._csv_error(table, files, exc) from None

        def batches():
            # The reader must not outlive the connection it streams from; holding `con`
            # here keeps it open until the last batch has been consumed.
            with con:
                try:
                    yield from sliced(inner, batch_size)
                except duckdb.Error as exc:
                    raise self._csv_error(table, files, exc) from None

        return pa.RecordBatchReader.from_batches(inner.schema, batches())

    def fingerprint(self, table: str) -> str:
        files = self.files(table)
        stats = [(str(f.relative_to(self.path)), st.st_size, st.st_mtime_ns)
                 for f in files for st in [f.stat()]]
        return f"{len(files)} files, {sum(s[1] for s in stats)} bytes, {digest(stats)}"

    def _parquet_schema(self, table: str, files: list[Path]) -> pa.Schema:
        schemas = []
        for f in files:
            try:
                schemas.append(pq.read_schema(f))
            except (OSError, pa.ArrowInvalid) as exc:
                raise SourceError(f"{self.where}: table '{table}': {f} is not a readable "
                                  f"parquet file ({exc})") from None
        try:
            return pa.unify_schemas(schemas, promote_options="permissive").remove_metadata()
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            raise SourceError(f"{self.where}: the files of table '{table}' disagree on column "
                              f"types: {_type_conflicts(files, schemas)}") from None

    def _csv(self, table: str, files: list[Path], full_sniff: bool):
        """(connection, relation) scanning the CSV files of `table`; the caller closes it.

        `full_sniff` reads every row to settle the types; the column names need only the
        header, so `columns` skips it.
        """
        con = duckdb.connect()
        con.execute("SET TimeZone = 'UTC'")
        sample = ", sample_size = -1" if full_sniff else ""
        try:
            rel = con.sql("SELECT * FROM read_csv($files, header = true, union_by_name = true, "
                          f"allow_quoted_nulls = false{sample})",
                          params={"files": [str(f) for f in files]})
        except duckdb.Error as exc:
            con.close()
            raise self._csv_error(table, files, exc) from None
        return con, rel

    def _csv_error(self, table: str, files: list[Path], exc: duckdb.Error) -> SourceError:
        """The error for CSV files DuckDB cannot read; text that is not UTF-8 is counted
        per column (DuckDB's message names neither the column nor how many rows)."""
        if "unicode" not in str(exc).lower():
            return SourceError(f"{self.where}: cannot read table '{table}' from "
                               f"{', '.join(map(str, files))}: {exc}")
        found = []
        with duckdb.connect() as con:
            for f in files:  # rejects tables do not combine with union_by_name: one file at a time
                con.execute("CREATE OR REPLACE TEMP TABLE probe AS SELECT * FROM read_csv(?, "
                            "header = true, all_varchar = true, store_rejects = true, "
                            "sample_size = -1)", [str(f)])
            found = con.execute(
                "SELECT e.column_name, count(*), min(e.line), arg_min(s.file_path, e.line) "
                "FROM reject_errors e JOIN reject_scans s USING (scan_id, file_id) "
                "WHERE e.error_type = 'INVALID ENCODING' GROUP BY 1 ORDER BY 1").fetchall()
        where = "; ".join(f"{table}.{col}: {n} row{'s' if n != 1 else ''} (first: line {line} "
                          f"of {Path(path).name})" for col, n, line, path in found)
        return SourceError(f"{self.where}: table '{table}' has text that is not UTF-8 "
                           f"({where or ', '.join(map(str, files))}); save the file as UTF-8")


def _type_conflicts(files: list[Path], schemas: list[pa.Schema]) -> str:
    seen: dict[str, dict[str, str]] = {}
    for f, schema in zip(files, schemas):
        for fld in schema:
            seen.setdefault(fld.name, {}).setdefault(str(fld.type), f.name)
    return "; ".join(
        f"column '{col}' is " + ", ".join(f"{t} in {f}" for t, f in types.items())
        for col, types in seen.items() if len(types) > 1
    )
