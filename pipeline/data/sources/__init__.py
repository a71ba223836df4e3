"""Source kinds: where a dataset's tables come from.

Every kind streams a table as Arrow record batches of at most `batch_size` rows, so a
table larger than memory never has to fit in memory. `open_source` picks the kind named
by the spec's `source.kind`:

    parquet, csv   a directory with `<table>.parquet` / `<table>.csv`, or `<table>/` of files
    sqlite         a SQLite file (standard library sqlite3)
    duckdb         a DuckDB database file, opened read-only
    postgres       a live PostgreSQL database (`uri`, password from `password_env`)
    mysql          a live MySQL / MariaDB database (`uri`, password from `password_env`)
    relbench       RelBench's on-disk layout: `<dir>[/db]/<table>.parquet` with key metadata
    synthetic      the built-in e-commerce generator, written once as parquet and read so

Sources take the spec's table names; a table's `source_table` says what the source
calls it. Relative paths are resolved against the current directory.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import shutil
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Protocol, runtime_checkable
from urllib.parse import urlsplit, urlunsplit

import pyarrow as pa

from pipeline.data.spec import DatasetSpec, TableSpec

DEFAULT_BATCH_SIZE = 65_536
SYNTHETIC_MARKER = ".complete.json"


class SourceError(RuntimeError):
    """A source that cannot be read; the message says which table or server and why."""


@runtime_checkable
class Source(Protocol):
    def source_tables(self) -> list[str]:
        """The tables (and views) the source has, by their names in the source."""

    def columns(self, table: str) -> list[str]:
        """Column names of a table (spec name), in the source's order."""

    def read(self, table: str, batch_size: int = DEFAULT_BATCH_SIZE) -> pa.RecordBatchReader:
        """Stream the table in batches of at most `batch_size` rows."""

    def fingerprint(self, table: str) -> str:
        """A string that changes when the table's data changes (for the new-data sensor)."""


class TableNames(ABC):
    """Maps spec table names to source names, and says clearly when one is missing.

    Subclasses implement `source_tables()`; `where` starts every error message.
    """

    def __init__(self, where: str, tables: Mapping[str, TableSpec] | None = None):
        self.where = where
        self.table_specs = dict(tables or {})

    @abstractmethod
    def source_tables(self) -> list[str]:
        """The tables the source has, by their names in the source."""

    def source_name(self, table: str) -> str:
        """The source's name for spec table `table`; SourceError when the source lacks it."""
        spec = self.table_specs.get(table)
        name = spec.source_name if spec else table
        have = self.source_tables()
        if name not in have:
            raise missing_table_error(self.where, name, have, spec_name=table)
        return name

    def time_column(self, table: str) -> str | None:
        spec = self.table_specs.get(table)
        return spec.time_column if spec else None


def missing_table_error(where: str, name: str, have: list[str], spec_name: str | None = None) -> SourceError:
    alias = f" (spec table '{spec_name}')" if spec_name and spec_name != name else ""
    shown = ", ".join(sorted(have)[:20]) + (f", ... ({len(have) - 20} more)" if len(have) > 20 else "")
    return SourceError(f"{where}: no table '{name}'{alias} in the source{suggest(name, have)} "
                       f"(it has: {shown or 'no tables'})")


def suggest(name: str, choices: Iterable[str]) -> str:
    """'; did you mean X?' for the closest choice (case-insensitive match first), or ''."""
    choices = list(choices)
    for choice in choices:
        if choice.lower() == name.lower():
            return f"; did you mean '{choice}'?"
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def quote_ident(name: str, quote: str = '"') -> str:
    """Quote an identifier for SQL (`"` for SQLite, DuckDB, PostgreSQL; "`" for MySQL)."""
    return quote + name.replace(quote, quote * 2) + quote


def sliced(batches: Iterable[pa.RecordBatch], batch_size: int) -> Iterator[pa.RecordBatch]:
    """Re-cut batches so none has more than `batch_size` rows (zero-copy slices)."""
    for batch in batches:
        for start in range(0, batch.num_rows, batch_size):
            yield batch.slice(start, batch_size)


def check_batch_size(batch_size: int) -> int:
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    return int(batch_size)


def digest(parts: Iterable[object]) -> str:
    """A short stable hash of `parts` (their reprs, in order)."""
    h = hashlib.sha256()
    for part in parts:
        h.update(repr(part).encode())
        h.update(b"\0")
    return h.hexdigest()[:32]


def redact_uri(uri: str) -> str:
    """The URI with any password (in the user-info or a `password=` query item) replaced by ***."""
    parts = urlsplit(uri)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user, sep, _ = userinfo.partition(":")
        netloc = f"{user}:***@{hostport}" if sep else netloc
    query = "&".join(
        f"{k}=***" if k.lower() in ("password", "pwd", "passwd") else item
        for item in parts.query.split("&") if item
        for k in [item.partition("=")[0]]
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def host_port(uri: str, default_port: int) -> str:
    parts = urlsplit(uri)
    try:
        port = parts.port or default_port
    except ValueError:
        port = default_port
    return f"{parts.hostname or 'localhost'}:{port}"


def scrub(text: str, secret: str | None) -> str:
    """`text` with every occurrence of `secret` replaced by ***."""
    return text.replace(secret, "***") if secret else text


def uri_env_name(spec: DatasetSpec) -> str:
    """The environment variable that overrides a server source's `uri`: RELGRAPH_<NAME>_URI
    (the name upper-cased, characters outside [A-Za-z0-9_] as `_`)."""
    from pipeline.data.spec import safe_name

    return f"RELGRAPH_{safe_name(spec.name).upper()}_URI"


def server_password(spec: DatasetSpec) -> str | None:
    """The password from the variable named by `source.password_env` (None when not set up)."""
    var = spec.source.password_env
    if not var:
        return None
    if var not in os.environ:
        raise SourceError(f"{spec.where()}: source.password_env names the environment variable "
                          f"{var}, which is not set; export {var}=<password> before running")
    return os.environ[var]


def open_source(spec: DatasetSpec, data_dir: Path) -> Source:
    """The source a dataset spec describes; nothing is read until a method is called
    (except for `synthetic`, which generates its parquet here when not already there)."""
    src = spec.source
    where = f"{spec.where()} ({src.kind} source)"
    tables = spec.tables
    if src.kind in ("postgres", "mysql"):
        env = uri_env_name(spec)
        uri = os.environ.get(env) or src.uri
        hint = f"set source.uri in {spec.where()} or the environment variable {env} to use another server"
        password = server_password(spec)
        if src.kind == "postgres":
            from pipeline.data.sources.postgres import PostgresSource
            return PostgresSource(uri, password=password, schema=src.schema, tables=tables,
                                  where=where, hint=hint)
        from pipeline.data.sources.mysql import MySQLSource
        return MySQLSource(uri, password=password, database=src.schema, tables=tables,
                           where=where, hint=hint)
    if src.kind == "synthetic":
        from pipeline.data.sources.files import FileSource
        return FileSource(synthetic_dir(spec, Path(data_dir)), "parquet", tables=tables, where=where)

    path = Path(src.path).expanduser()
    if not path.exists():
        raise SourceError(f"{where}: source.path '{path}' does not exist "
                          f"(relative paths are read from {Path.cwd()})")
    if src.kind in ("parquet", "csv"):
        from pipeline.data.sources.files import FileSource
        return FileSource(path, src.kind, tables=tables, where=where)
    if src.kind == "sqlite":
        from pipeline.data.sources.sqlite import SQLiteSource
        return SQLiteSource(path, tables=tables, where=where)
    if src.kind == "duckdb":
        from pipeline.data.sources.duckdb_file import DuckDBSource
        return DuckDBSource(path, schema=src.schema or "main", tables=tables, where=where)
    if src.kind == "relbench":
        from pipeline.data.sources.relbench import RelBenchSource
        return RelBenchSource(path, tables=tables, where=where)
    raise SourceError(f"{where}: unknown source kind '{src.kind}'")


def synthetic_dir(spec: DatasetSpec, data_dir: Path) -> Path:
    """Generate the synthetic dataset into `data_dir/raw/<name>-<scale>-<seed>/` unless a
    completed generation with the same config is there; return that directory.

    The marker file is written last, so an interrupted generation is redone.
    """
    from pipeline.data.sources.synthetic import SyntheticConfig, generate

    src = spec.source
    settings = dict(src.options)
    settings["seed"] = src.seed
    if src.scale is not None:
        settings["scale"] = src.scale
    try:
        config = SyntheticConfig(**settings)
    except (TypeError, ValueError, AttributeError) as exc:  # unknown or mistyped options
        raise SourceError(f"{spec.where()}: synthetic source: {exc}") from None
    out = data_dir / "raw" / f"{spec.name}-{config.scale}-{config.seed}"
    marker = out / SYNTHETIC_MARKER
    wanted = json.loads(json.dumps(asdict(config), default=str))
    if marker.exists() and json.loads(marker.read_text()).get("config") == wanted:
        return out
    if out.exists():
        shutil.rmtree(out)
    counts = generate(out, config)
    marker.write_text(json.dumps({"config": wanted, "rows": counts}, indent=1))
    return out
