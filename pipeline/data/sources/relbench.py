"""RelBench's on-disk layout: one parquet file per table, keys in the file's metadata.

RelBench's `Database.save` writes `<dir>/<table>.parquet` (a downloaded dataset keeps them
under `<dataset>/db/`), and `Table.save` stores three JSON-encoded entries in the parquet
schema metadata: `pkey_col` (a column or null), `time_col` (a column or null) and
`fkey_col_to_pkey_table` ({column: referenced table}). Keys are single columns only.

`spec_from_relbench` turns that metadata into the `tables` section of a dataset spec.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path

import pyarrow.parquet as pq

from pipeline.data.sources import SourceError
from pipeline.data.sources.files import FileSource
from pipeline.data.spec import TableSpec

METADATA_KEYS = ("fkey_col_to_pkey_table", "pkey_col", "time_col")


def relbench_tables_dir(path: Path) -> Path:
    """The directory holding the `<table>.parquet` files: `path` itself or `path/db`."""
    path = Path(path)
    if not path.is_dir():
        raise SourceError(f"relbench source: '{path}' is not a directory")
    if not any(path.glob("*.parquet")) and (path / "db").is_dir():
        return path / "db"
    return path


class RelBenchSource(FileSource):
    """Reads a RelBench database directory like a parquet directory."""

    def __init__(self, path: Path, *, tables: Mapping[str, TableSpec] | None = None,
                 where: str | None = None):
        super().__init__(relbench_tables_dir(path), "parquet", tables=tables,
                         where=where or f"relbench source {path}")


def read_relbench_metadata(path: Path) -> dict[str, dict]:
    """{table: {"pkey_col", "time_col", "fkey_col_to_pkey_table"}} from every parquet file."""
    directory = relbench_tables_dir(path)
    files = sorted(directory.glob("*.parquet"))
    if not files:
        raise SourceError(f"relbench source: no <table>.parquet files in '{directory}'")
    out = {}
    for f in files:
        raw = pq.read_schema(f).metadata or {}
        try:
            meta = {k: json.loads(raw[k.encode()]) if k.encode() in raw else None
                    for k in METADATA_KEYS}
        except json.JSONDecodeError as exc:
            raise SourceError(f"relbench source: {f}: metadata is not JSON ({exc})") from None
        if meta["fkey_col_to_pkey_table"] is None and meta["pkey_col"] is None and meta["time_col"] is None:
            raise SourceError(f"relbench source: {f} carries no RelBench metadata "
                              f"({', '.join(METADATA_KEYS)}); was it written by Table.save?")
        out[f.stem] = meta
    return out


def spec_from_relbench(path: Path, name: str | None = None) -> dict:
    """A dataset-spec dict (name, source, tables with keys and time columns) for a RelBench
    directory; add `tasks` and pass it to `pipeline.data.spec.parse_spec`, or dump it as YAML.

    `name` defaults to the directory's name (the dataset's, for a `.../<dataset>/db` path)
    with every character that is not a letter, digit or _ replaced by _.
    """
    path = Path(path)
    meta = read_relbench_metadata(path)
    tables: dict[str, dict] = {}
    for table, m in meta.items():
        entry: dict = {}
        if m["pkey_col"] is not None:
            entry["primary_key"] = m["pkey_col"]
        if m["time_col"] is not None:
            entry["time_column"] = m["time_col"]
        fkeys = m["fkey_col_to_pkey_table"] or {}
        for col, ref in fkeys.items():
            if ref not in meta:
                raise SourceError(f"relbench source: {table}.{col} references table '{ref}', "
                                  f"which has no {ref}.parquet in {relbench_tables_dir(path)}")
            if meta[ref]["pkey_col"] is None:
                raise SourceError(f"relbench source: {table}.{col} references table '{ref}', "
                                  "which has no pkey_col")
        if fkeys:
            entry["foreign_keys"] = dict(fkeys)
        tables[table] = entry
    if name is None:
        base = path.parent if path.name == "db" and relbench_tables_dir(path) == path else path
        name = re.sub(r"\W", "_", base.resolve().name, flags=re.ASCII) or "relbench"
        if name[0].isdigit():
            name = f"_{name}"
    return {"name": name, "source": {"kind": "relbench", "path": str(path)}, "tables": tables}
