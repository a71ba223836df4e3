"""Source kinds: one small database, written into each of the seven kinds, reads back the same.

Normalization before comparing (the minimal one): every table is cast in DuckDB to the
test's generic column types (BIGINT, DOUBLE, VARCHAR, BOOLEAN, DATE, TIMESTAMP) and
sorted; so an INTEGER that PostgreSQL returns as int32 and SQLite as int64 compare equal.
Each kind must still give every column the right family of Arrow type (integer, floating,
string, boolean, date, timestamp); no value is converted to text to make it compare.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Callable

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.data.sources import SYNTHETIC_MARKER, Source, SourceError, open_source, redact_uri
from pipeline.data.sources.relbench import spec_from_relbench
from pipeline.data.spec import parse_spec

# ---------------------------------------------------------------------------------------
# The test database: four tables, a composite foreign key (orders -> stores), a table
# without a primary key (events, with duplicate rows), timestamps with microseconds,
# nulls in every type, unicode, quotes, commas, tabs and newlines in text, a column name
# with a space, and an empty string next to NULL.

COLUMNS = {
    "customers": {"customer_id": "int", "name": "text", "signup_at": "ts", "score": "float",
                  "active": "bool"},
    "stores": {"region": "text", "store_no": "int", "opened_on": "date"},
    "orders": {"order_id": "int", "customer_id": "int", "region": "text", "store_no": "int",
               "ordered_at": "ts", "unit price": "float", "note": "text"},
    "events": {"customer_id": "int", "happened_at": "ts", "kind": "text"},
}
ARROW = {"int": pa.int64(), "float": pa.float64(), "text": pa.string(), "bool": pa.bool_(),
         "date": pa.date32(), "ts": pa.timestamp("us")}
SQL = {"int": "BIGINT", "float": "DOUBLE", "text": "VARCHAR", "bool": "BOOLEAN", "date": "DATE",
       "ts": "TIMESTAMP"}
FAMILY = {"int": pa.types.is_integer, "float": pa.types.is_floating,
          "text": lambda t: pa.types.is_string(t) or pa.types.is_large_string(t),
          "bool": pa.types.is_boolean, "date": pa.types.is_date, "ts": pa.types.is_timestamp}
SQLITE = {"int": "INTEGER", "float": "REAL", "text": "TEXT", "bool": "BOOLEAN", "date": "DATE",
          "ts": "TIMESTAMP"}
POSTGRES = {"int": "integer", "float": "double precision", "text": "text", "bool": "boolean",
            "date": "date", "ts": "timestamp"}
MYSQL = {"int": "INT", "float": "DOUBLE", "text": "VARCHAR(200)", "bool": "BOOLEAN", "date": "DATE",
         "ts": "DATETIME(6)"}

_BASE = datetime(2024, 1, 1)
_PAIRS = range(50)
DATA = {
    "customers": {
        "customer_id": [1, 2, 3, 4, 5],
        "name": ["Zoë", "日本語の名前", "party 🎉", 'O\'Brien, "the" one\nsecond line', ""],
        "signup_at": [datetime(2024, 1, 1, 9, 30), datetime(2024, 2, 29, 23, 59, 59, 123456), None,
                      datetime(2023, 12, 31), datetime(2024, 3, 1, 0, 0, 0, 1)],
        "score": [1.5, None, 0.1, -2.25, 1e10],
        "active": [True, False, None, True, False],
    },
    "stores": {
        "region": ["north", "north", "south", "süd"],
        "store_no": [1, 2, 1, 1],
        "opened_on": [date(2020, 1, 1), None, date(2021, 6, 30), date(1999, 12, 31)],
    },
    "orders": {
        "order_id": [1, 2, 3, 4, 5, 6, 7, 8],
        "customer_id": [1, 1, 2, 3, None, 5, 4, 2],
        "region": ["north", "north", "south", "süd", "north", None, "south", "north"],
        "store_no": [1, 2, 1, 1, 2, None, 1, 1],
        "ordered_at": [_BASE + timedelta(days=d, seconds=s) for d, s in
                       [(1, 0), (2, 61), (2, 62), (5, 3600), (9, 1), (12, 0), (30, 7), (31, 59)]],
        "unit price": [9.99, 0.5, None, 100.0, 3.25, 7.0, 12.125, 1.0],
        "note": [None, "gift 🎁", "", "Ünïcødé", None, "a,b", 'say "hi"', "tab\tsep"],
    },
    "events": {  # 100 rows, every row twice, every fifth pair with no customer
        "customer_id": [None if p % 5 == 4 else p % 5 + 1 for p in _PAIRS for _ in range(2)],
        "happened_at": [_BASE + timedelta(hours=6 * p) for p in _PAIRS for _ in range(2)],
        "kind": [("view", "click", "buy")[p % 3] for p in _PAIRS for _ in range(2)],
    },
}


def reference(table: str) -> pa.Table:
    return pa.table({c: pa.array(DATA[table][c], ARROW[g]) for c, g in COLUMNS[table].items()})


def spec_dict(source: dict) -> dict:
    return {"name": "shop", "source": source, "tables": {
        "customers": {"primary_key": "customer_id", "time_column": "signup_at"},
        "stores": {"primary_key": ["region", "store_no"]},
        "orders": {"primary_key": "order_id", "time_column": "ordered_at", "foreign_keys": [
            {"columns": ["customer_id"], "references": "customers"},
            {"columns": ["region", "store_no"], "references": "stores"}]},
        "events": {"time_column": "happened_at", "foreign_keys": {"customer_id": "customers"}},
    }}


def normalized(data: pa.Table, table: str) -> list[tuple]:
    """Rows cast to the generic SQL types, sorted: the form every kind must agree on."""
    con = duckdb.connect()
    con.register("t", data)
    cols = ", ".join(f'CAST("{c}" AS {SQL[g]})' for c, g in COLUMNS[table].items())
    return con.execute(f"SELECT {cols} FROM t ORDER BY ALL").fetchall()


def q(name: str, quote: str = '"') -> str:
    return quote + name.replace(quote, quote * 2) + quote


# ---------------------------------------------------------------------------------------
# Writers: each puts the database into one kind and can append a row to a table later.

@dataclass
class Written:
    raw: dict  # the dataset spec, as parsed YAML
    append: Callable[[str, dict], None]
    tables: dict[str, pa.Table] = field(default_factory=dict)

    @property
    def spec(self):
        return parse_spec(self.raw)


def _with_row(data: pa.Table, row: dict) -> pa.Table:
    return pa.concat_tables([data, pa.Table.from_pylist([row], schema=data.schema)])


def _write_files(root: Path, tables: dict[str, pa.Table], fmt: str, table: str | None = None) -> None:
    """Every table as one file, but orders as a directory of two files."""
    for name, data in tables.items():
        if table is not None and name != table:
            continue
        parts = [(root / name / "part-0", data.slice(0, 4)), (root / name / "part-1", data.slice(4))] \
            if name == "orders" else [(root / name, data)]
        for stem, part in parts:
            stem.parent.mkdir(parents=True, exist_ok=True)
            if fmt == "parquet":
                pq.write_table(part, f"{stem}.parquet")
            else:
                con = duckdb.connect()
                con.register("t", part)
                con.execute(f"COPY t TO '{stem}.csv' (HEADER)")
                con.close()


def _file_kind(fmt: str):
    def write(tmp_path: Path, request) -> Written:
        root = tmp_path / fmt
        written = Written(raw=spec_dict({"kind": fmt, "path": str(root)}), append=None,
                          tables={t: reference(t) for t in COLUMNS})

        def append(table: str, row: dict) -> None:
            written.tables[table] = _with_row(written.tables[table], row)
            _write_files(root, written.tables, fmt, table)

        _write_files(root, written.tables, fmt)
        written.append = append
        return written
    return write


def _relbench(tmp_path: Path, request) -> Written:
    # Table.save's format: JSON-encoded pkey_col, time_col, fkey_col_to_pkey_table in the
    # parquet schema metadata. RelBench has no composite keys: stores gets no pkey, and
    # orders' composite foreign key is not recorded.
    meta = {"customers": ("customer_id", "signup_at", {}), "stores": (None, None, {}),
            "orders": ("order_id", "ordered_at", {"customer_id": "customers"}),
            "events": (None, "happened_at", {"customer_id": "customers"})}
    root = tmp_path / "rel-shop"
    tables = {t: reference(t) for t in COLUMNS}

    def save(table: str) -> None:
        pkey, time_col, fkeys = meta[table]
        data = tables[table].replace_schema_metadata({
            "pkey_col": json.dumps(pkey), "time_col": json.dumps(time_col),
            "fkey_col_to_pkey_table": json.dumps(fkeys)})
        (root / "db").mkdir(parents=True, exist_ok=True)
        pq.write_table(data, root / "db" / f"{table}.parquet")

    def append(table: str, row: dict) -> None:
        tables[table] = _with_row(tables[table], row)
        save(table)

    for t in COLUMNS:
        save(t)
    return Written(raw=spec_dict({"kind": "relbench", "path": str(root)}), append=append, tables=tables)


def _insert_sql(table: str, quote: str, mark: str, schema: str | None = None) -> str:
    cols = list(COLUMNS[table])
    target = f"{q(schema, quote)}.{q(table, quote)}" if schema else q(table, quote)
    return (f"INSERT INTO {target} ({', '.join(q(c, quote) for c in cols)}) "
            f"VALUES ({', '.join([mark] * len(cols))})")


def _sqlite_value(v):
    if isinstance(v, datetime):
        return v.isoformat(sep=" ")
    if isinstance(v, date):
        return v.isoformat()
    return int(v) if isinstance(v, bool) else v


def _sqlite(tmp_path: Path, request) -> Written:
    path = tmp_path / "shop.sqlite"

    def append(table: str, row: dict) -> None:
        with sqlite3.connect(path) as con:
            con.execute(_insert_sql(table, '"', "?"), [_sqlite_value(row[c]) for c in COLUMNS[table]])
        con.close()

    with sqlite3.connect(path) as con:
        for t, cols in COLUMNS.items():
            con.execute(f"CREATE TABLE {q(t)} ({', '.join(f'{q(c)} {SQLITE[g]}' for c, g in cols.items())})")
            con.executemany(_insert_sql(t, '"', "?"),
                            [[_sqlite_value(v) for v in row.values()] for row in reference(t).to_pylist()])
    con.close()
    return Written(raw=spec_dict({"kind": "sqlite", "path": str(path)}), append=append)


def _duckdb(tmp_path: Path, request) -> Written:
    path = tmp_path / "shop.duckdb"

    def append(table: str, row: dict) -> None:
        with duckdb.connect(str(path)) as con:
            con.execute(_insert_sql(table, '"', "?"), [row[c] for c in COLUMNS[table]])

    with duckdb.connect(str(path)) as con:
        for t in COLUMNS:
            con.register("data", reference(t))
            con.execute(f"CREATE TABLE {q(t)} AS SELECT * FROM data")
            con.unregister("data")
    return Written(raw=spec_dict({"kind": "duckdb", "path": str(path)}), append=append)


def _server_source(db, kind: str, monkeypatch) -> dict:
    monkeypatch.delenv("RELGRAPH_SHOP_URI", raising=False)
    source = {"kind": kind, "uri": db.uri}
    if kind == "postgres":
        source["schema"] = db.name
    if db.password:
        monkeypatch.setenv("RELGRAPH_TEST_SOURCE_PASSWORD", db.password)
        source["password_env"] = "RELGRAPH_TEST_SOURCE_PASSWORD"
    return source


def _postgres(tmp_path: Path, request) -> Written:
    db = request.getfixturevalue("pg_database")
    con = db.connection

    def append(table: str, row: dict) -> None:
        con.execute(_insert_sql(table, '"', "%s", db.name), [row[c] for c in COLUMNS[table]])

    for t, cols in COLUMNS.items():
        con.execute(f"CREATE TABLE {q(db.name)}.{q(t)} "
                    f"({', '.join(f'{q(c)} {POSTGRES[g]}' for c, g in cols.items())})")
        with con.cursor() as cur:
            cur.executemany(_insert_sql(t, '"', "%s", db.name),
                            [list(r.values()) for r in reference(t).to_pylist()])
    source = _server_source(db, "postgres", request.getfixturevalue("monkeypatch"))
    return Written(raw=spec_dict(source), append=append)


def _mysql(tmp_path: Path, request) -> Written:
    db = request.getfixturevalue("mysql_database")
    con = db.connection

    def append(table: str, row: dict) -> None:
        with con.cursor() as cur:
            cur.execute(_insert_sql(table, "`", "%s"), [row[c] for c in COLUMNS[table]])

    with con.cursor() as cur:
        for t, cols in COLUMNS.items():
            defs = ", ".join(f"{q(c, '`')} {MYSQL[g]}" for c, g in cols.items())
            cur.execute(f"CREATE TABLE {q(t, '`')} ({defs})")
            cur.executemany(_insert_sql(t, "`", "%s"), [list(r.values()) for r in reference(t).to_pylist()])
    source = _server_source(db, "mysql", request.getfixturevalue("monkeypatch"))
    return Written(raw=spec_dict(source), append=append)


WRITERS = {"parquet": _file_kind("parquet"), "csv": _file_kind("csv"), "sqlite": _sqlite,
           "duckdb": _duckdb, "postgres": _postgres, "mysql": _mysql, "relbench": _relbench}


@pytest.fixture(params=list(WRITERS))
def written(request, tmp_path) -> Written:
    return WRITERS[request.param](tmp_path, request)


# ---------------------------------------------------------------------------------------
# Every kind

def test_every_kind_reads_back_the_same_database(written, tmp_path):
    source = open_source(written.spec, tmp_path)
    assert isinstance(source, Source)
    for table, cols in COLUMNS.items():
        assert source.columns(table) == list(cols)
        reader = source.read(table, batch_size=3)
        assert isinstance(reader, pa.RecordBatchReader)
        data = reader.read_all()
        for name, generic in cols.items():
            typ = data.schema.field(name).type
            assert FAMILY[generic](typ), f"{table}.{name}: {typ} is not a {generic} type"
        assert normalized(data, table) == normalized(reference(table), table), table


def test_reads_stream_in_batches(written, tmp_path):
    reader = open_source(written.spec, tmp_path).read("events", batch_size=10)
    sizes = [batch.num_rows for batch in reader]
    assert sum(sizes) == 100
    assert max(sizes) <= 10
    assert len(sizes) >= 10


def test_fingerprint_changes_with_the_data_and_only_then(written, tmp_path):
    source = open_source(written.spec, tmp_path)
    before = source.fingerprint("events")
    source.read("events").read_all()
    assert source.fingerprint("events") == before
    written.append("customers", {"customer_id": 6, "name": "new", "signup_at": datetime(2024, 4, 1),
                                 "score": 1.0, "active": True})
    assert source.fingerprint("events") == before
    written.append("events", {"customer_id": 1, "happened_at": datetime(2024, 5, 1), "kind": "buy"})
    after = source.fingerprint("events")
    assert after != before
    assert source.fingerprint("events") == after


@pytest.mark.parametrize("kind", ["parquet", "sqlite", "duckdb", "postgres", "mysql"])
def test_missing_table_names_it_and_suggests_the_closest(kind, request, tmp_path):
    raw = WRITERS[kind](tmp_path, request).raw
    raw["tables"]["customers"]["source_table"] = "customer"
    source = open_source(parse_spec(raw), tmp_path)
    with pytest.raises(SourceError) as err:
        source.read("customers")
    message = str(err.value)
    assert "'customer'" in message and "did you mean 'customers'" in message
    assert "events" in message and "orders" in message  # what the source has


# ---------------------------------------------------------------------------------------
# Parquet and CSV specifics

def test_csv_types_are_inferred_over_every_file(tmp_path):
    (tmp_path / "shop" / "ticks").mkdir(parents=True)
    # The first file alone looks like integers and an all-empty column; the second says
    # the first column is DOUBLE and the second a timestamp.
    (tmp_path / "shop" / "ticks" / "a.csv").write_text("x,at\n" + "".join(f"{i},\n" for i in range(50)))
    (tmp_path / "shop" / "ticks" / "b.csv").write_text("x,at\n2.5,2024-01-02 03:04:05\n")
    spec = parse_spec({"name": "shop", "source": {"kind": "csv", "path": str(tmp_path / "shop")},
                       "tables": {"ticks": {}}})
    reader = open_source(spec, tmp_path).read("ticks", batch_size=7)
    batches = list(reader)
    assert {b.schema for b in batches} == {reader.schema}
    assert reader.schema.field("x").type == pa.float64()
    assert pa.types.is_timestamp(reader.schema.field("at").type)
    data = pa.Table.from_batches(batches)
    assert data.num_rows == 51
    assert data.column("at").null_count == 50


def test_parquet_files_with_different_int_widths_unify(tmp_path):
    (tmp_path / "d" / "t").mkdir(parents=True)
    pq.write_table(pa.table({"x": pa.array([1, 2], pa.int32())}), tmp_path / "d" / "t" / "a.parquet")
    pq.write_table(pa.table({"x": pa.array([2 ** 40], pa.int64())}), tmp_path / "d" / "t" / "b.parquet")
    spec = parse_spec({"name": "d", "source": {"kind": "parquet", "path": str(tmp_path / "d")},
                       "tables": {"t": {}}})
    data = open_source(spec, tmp_path).read("t").read_all()
    assert data.schema.field("x").type == pa.int64()
    assert sorted(data.column("x").to_pylist()) == [1, 2, 2 ** 40]


def test_parquet_files_with_conflicting_types_name_the_files(tmp_path):
    (tmp_path / "d" / "t").mkdir(parents=True)
    pq.write_table(pa.table({"x": [1]}), tmp_path / "d" / "t" / "a.parquet")
    pq.write_table(pa.table({"x": ["one"]}), tmp_path / "d" / "t" / "b.parquet")
    spec = parse_spec({"name": "d", "source": {"kind": "parquet", "path": str(tmp_path / "d")},
                       "tables": {"t": {}}})
    with pytest.raises(SourceError, match=r"column 'x' is int64 in a.parquet, string in b.parquet"):
        open_source(spec, tmp_path).read("t")


# ---------------------------------------------------------------------------------------
# SQLite specifics

def _sqlite_spec(path: Path, tables: dict) -> object:
    return parse_spec({"name": "lite", "source": {"kind": "sqlite", "path": str(path)}, "tables": tables})


def test_sqlite_mixed_values_are_reported_with_counts_and_an_example(tmp_path):
    path = tmp_path / "mixed.sqlite"
    with sqlite3.connect(path) as con:
        con.execute("CREATE TABLE t (id INTEGER, code INTEGER)")
        con.executemany("INSERT INTO t VALUES (?, ?)", [(1, 10), (2, "A-7"), (3, 30), (4, None)])
    con.close()
    source = open_source(_sqlite_spec(path, {"t": {}}), tmp_path)
    with pytest.raises(SourceError) as err:
        source.read("t")
    assert "t.code (declared INTEGER) holds 2 integer, 1 text values (first text: 'A-7')" in str(err.value)
    assert "column_types" in str(err.value)
    relaxed = open_source(_sqlite_spec(path, {"t": {"column_types": {"code": "categorical"}}}), tmp_path)
    data = relaxed.read("t").read_all()
    assert data.schema.field("code").type == pa.string()
    assert data.column("code").to_pylist() == ["10", "A-7", "30", None]


def test_sqlite_times_with_offsets_or_epoch_numbers_become_utc(tmp_path):
    path = tmp_path / "times.sqlite"
    with sqlite3.connect(path) as con:
        con.execute("CREATE TABLE t (a DATETIME, b TIMESTAMP, c, d NUMERIC)")
        con.executemany("INSERT INTO t VALUES (?, ?, ?, ?)", [
            ("2024-01-01T10:00:00+02:00", 1704067200, 1, 1.5),
            ("2024-01-01 10:00:00", 1704067200.5, 2, 2),
            ("2024-01-01 10:00:00Z", None, None, None),
            ("2024-01-01", None, 3, 4)])
    con.close()
    data = open_source(_sqlite_spec(path, {"t": {}}), tmp_path).read("t", batch_size=2).read_all()
    assert data.column("a").to_pylist() == [datetime(2024, 1, 1, 8), datetime(2024, 1, 1, 10),
                                            datetime(2024, 1, 1, 10), datetime(2024, 1, 1)]
    assert data.column("b").to_pylist() == [datetime(2024, 1, 1), datetime(2024, 1, 1, 0, 0, 0, 500000),
                                            None, None]
    assert data.schema.field("c").type == pa.int64()  # no declared type: all integers
    assert data.schema.field("d").type == pa.float64()  # NUMERIC holding reals and integers


def test_sqlite_unparseable_time_names_the_column(tmp_path):
    path = tmp_path / "bad.sqlite"
    with sqlite3.connect(path) as con:
        con.execute("CREATE TABLE t (at TIMESTAMP)")
        con.executemany("INSERT INTO t VALUES (?)", [("2024-01-01",), ("next tuesday",)])
    con.close()
    with pytest.raises(SourceError, match=r"t\.at: .*next tuesday"):
        open_source(_sqlite_spec(path, {"t": {}}), tmp_path).read("t").read_all()


# ---------------------------------------------------------------------------------------
# Server specifics: type mapping, passwords, unreachable servers

def test_postgres_missing_schema_is_named(pg_database, monkeypatch, tmp_path):
    source = _server_source(pg_database, "postgres", monkeypatch)
    source["schema"] = pg_database.name + "x"
    spec = parse_spec({"name": "shop", "source": source, "tables": {"t": {}}})
    with pytest.raises(SourceError, match=f"no schema '{pg_database.name}x'; did you mean '{pg_database.name}'"):
        open_source(spec, tmp_path).columns("t")


def test_postgres_types_map_to_arrow(pg_database, monkeypatch, tmp_path):
    con = pg_database.connection
    con.execute(f'CREATE TABLE "{pg_database.name}".t (i2 smallint, i8 bigint, r real, n numeric(12,3), '
                "tz timestamptz, u uuid, j jsonb, arr integer[], s varchar(5))")
    con.execute(f'INSERT INTO "{pg_database.name}".t VALUES (1, 9007199254740993, 1.5, 12345.678, '
                "'2024-01-01 12:00:00+05', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{\"k\": [1, \"é\"]}', "
                "'{1,2}', ''), (NULL, NULL, 'NaN', NULL, NULL, NULL, NULL, NULL, NULL)")
    source = _server_source(pg_database, "postgres", monkeypatch)
    spec = parse_spec({"name": "shop", "source": source, "tables": {"t": {}}})
    data = open_source(spec, tmp_path).read("t").read_all()
    types = {f.name: f.type for f in data.schema}
    assert types == {"i2": pa.int16(), "i8": pa.int64(), "r": pa.float32(), "n": pa.float64(),
                     "tz": pa.timestamp("us", tz="UTC"), "u": pa.string(), "j": pa.string(),
                     "arr": pa.string(), "s": pa.string()}
    first = data.slice(0, 1).to_pylist()[0]
    assert first["i8"] == 9007199254740993 and first["n"] == 12345.678
    assert first["tz"].replace(tzinfo=None) == datetime(2024, 1, 1, 7)
    assert first["j"] == '{"k": [1, "é"]}' and first["arr"] == "{1,2}" and first["s"] == ""
    assert data.column("s").to_pylist() == ["", None]


def test_mysql_types_map_to_arrow(mysql_database, monkeypatch, tmp_path):
    with mysql_database.connection.cursor() as cur:
        cur.execute("CREATE TABLE t (ub BIGINT UNSIGNED, flag TINYINT(1), small SMALLINT, d DECIMAL(10,2), "
                    "f FLOAT, ts TIMESTAMP NULL, dt DATETIME, day DATE, b BIT(5), bin VARBINARY(4), "
                    "e ENUM('x','y'), txt TEXT)")
        cur.execute("SET time_zone = '+02:00'")
        cur.execute("INSERT INTO t VALUES (18446744073709551615, 1, -3, 12.34, 0.5, '2024-01-01 12:00:00', "
                    "'0000-00-00 00:00:00', '0000-00-00', b'10101', x'00ff', 'y', 'ünï'), "
                    "(NULL, 0, NULL, NULL, NULL, NULL, '2024-02-03 04:05:06', '2024-02-03', NULL, NULL, "
                    "NULL, NULL)")
    source = _server_source(mysql_database, "mysql", monkeypatch)
    spec = parse_spec({"name": "shop", "source": source, "tables": {"t": {}}})
    data = open_source(spec, tmp_path).read("t").read_all()
    assert {f.name: f.type for f in data.schema} == {
        "ub": pa.uint64(), "flag": pa.bool_(), "small": pa.int16(), "d": pa.float64(),
        "f": pa.float32(), "ts": pa.timestamp("us", tz="UTC"), "dt": pa.timestamp("us"),
        "day": pa.date32(), "b": pa.uint64(), "bin": pa.binary(), "e": pa.string(), "txt": pa.string()}
    first, second = data.to_pylist()
    assert first["ub"] == 2 ** 64 - 1 and first["flag"] is True and second["flag"] is False
    assert first["d"] == 12.34 and first["b"] == 21 and first["bin"] == b"\x00\xff"
    assert first["ts"].replace(tzinfo=None) == datetime(2024, 1, 1, 10)  # written at +02:00
    assert first["dt"] is None and first["day"] is None  # zero dates
    assert second["dt"] == datetime(2024, 2, 3, 4, 5, 6) and second["day"] == date(2024, 2, 3)
    assert first["e"] == "y" and first["txt"] == "ünï"


SECRET = "s3cr3t-Pa55"


@pytest.mark.parametrize("kind,scheme", [("postgres", "postgresql"), ("mysql", "mysql")])
def test_unreachable_server_error_names_host_port_and_never_the_password(kind, scheme, monkeypatch,
                                                                         tmp_path):
    monkeypatch.setenv("SHOP_DB_PASSWORD", SECRET)
    monkeypatch.delenv("RELGRAPH_SHOP_URI", raising=False)
    spec = parse_spec({"name": "shop", "tables": {"t": {}}, "source": {
        "kind": kind, "uri": f"{scheme}://alice@127.0.0.1:1/db", "password_env": "SHOP_DB_PASSWORD"}})
    with pytest.raises(SourceError) as err:
        open_source(spec, tmp_path).read("t")
    message = str(err.value)
    assert "127.0.0.1:1" in message and "RELGRAPH_SHOP_URI" in message
    assert SECRET not in message and SECRET not in repr(err.value.__cause__)
    # A password that reached the URI anyway (here through the override variable) is redacted.
    monkeypatch.setenv("RELGRAPH_SHOP_URI", f"{scheme}://alice:{SECRET}@127.0.0.1:1/db")
    with pytest.raises(SourceError) as err:
        open_source(spec, tmp_path).columns("t")
    assert SECRET not in str(err.value) and "alice:***@127.0.0.1:1" in str(err.value)


def test_missing_password_variable_is_named(monkeypatch, tmp_path):
    monkeypatch.delenv("SHOP_DB_PASSWORD", raising=False)
    spec = parse_spec({"name": "shop", "tables": {"t": {}}, "source": {
        "kind": "postgres", "uri": "postgresql://alice@127.0.0.1:1/db", "password_env": "SHOP_DB_PASSWORD"}})
    with pytest.raises(SourceError, match="SHOP_DB_PASSWORD, which is not set"):
        open_source(spec, tmp_path)


def test_redact_uri_hides_passwords_in_userinfo_and_query():
    assert redact_uri("postgresql://u:pw@h:5432/db?sslmode=require&password=pw") == \
        "postgresql://u:***@h:5432/db?sslmode=require&password=***"
    assert redact_uri("mysql://root@127.0.0.1:3306/test") == "mysql://root@127.0.0.1:3306/test"


# ---------------------------------------------------------------------------------------
# RelBench and synthetic

def test_relbench_metadata_becomes_a_spec(tmp_path, request):
    written = _relbench(tmp_path, request)
    raw = spec_from_relbench(tmp_path / "rel-shop")
    assert raw["name"] == "rel_shop"
    assert raw["tables"] == {
        "customers": {"primary_key": "customer_id", "time_column": "signup_at"},
        "stores": {},
        "orders": {"primary_key": "order_id", "time_column": "ordered_at",
                   "foreign_keys": {"customer_id": "customers"}},
        "events": {"time_column": "happened_at", "foreign_keys": {"customer_id": "customers"}},
    }
    spec = parse_spec(raw)
    assert spec.tables["orders"].foreign_keys[0].references == "customers"
    assert spec.extract_order().index("customers") < spec.extract_order().index("orders")
    data = open_source(spec, tmp_path).read("orders").read_all()
    assert normalized(data, "orders") == normalized(written.tables["orders"], "orders")
    assert spec_from_relbench(tmp_path / "rel-shop" / "db")["name"] == "rel_shop"


def test_relbench_foreign_key_to_a_missing_table_is_reported(tmp_path):
    data = pa.table({"id": [1]}).replace_schema_metadata({
        "pkey_col": json.dumps("id"), "time_col": json.dumps(None),
        "fkey_col_to_pkey_table": json.dumps({"id": "ghosts"})})
    pq.write_table(data, tmp_path / "things.parquet")
    with pytest.raises(SourceError, match="things.id references table 'ghosts'"):
        spec_from_relbench(tmp_path)


def test_synthetic_generates_once_and_redoes_an_interrupted_run(tmp_path, monkeypatch):
    import pipeline.data.sources.synthetic as synthetic

    calls = []

    def fake_generate(out_dir, config, progress=False):
        calls.append(config)
        (out_dir / "customers").mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"customer_id": list(range(5))}), out_dir / "customers" / "part-00000.parquet")
        return {"customers": 5}

    monkeypatch.setattr(synthetic, "generate", fake_generate)
    spec = parse_spec({"name": "ecommerce", "source": {"kind": "synthetic", "scale": 1000, "seed": 3},
                       "tables": {"customers": {"primary_key": "customer_id"}}})
    source = open_source(spec, tmp_path)
    assert source.read("customers").read_all().num_rows == 5
    out = tmp_path / "raw" / "ecommerce-1000-3"
    assert json.loads((out / SYNTHETIC_MARKER).read_text())["rows"] == {"customers": 5}
    open_source(spec, tmp_path)
    assert len(calls) == 1  # complete: not generated again
    (out / SYNTHETIC_MARKER).unlink()  # as if the first run had been interrupted
    open_source(spec, tmp_path)
    assert len(calls) == 2 and calls[1].scale == 1000 and calls[1].seed == 3
