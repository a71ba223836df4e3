"""Any relational database in: the same database, in each of the seven source kinds, goes
through the real extract (`open_source` + `extract_table` in `spec.extract_order()`) into a
DuckDB warehouse, and every warehouse holds the same clean tables (with `__id` and
`__fk_*`) and the same `rejected_*` tables.

The database is the one of tests/test_sources.py (a composite foreign key orders -> stores,
a table without a primary key, timestamps with microseconds, nulls in every type, unicode,
quotes and newlines in text), plus a few rows that the policies must act on: an orphan
customer and an orphan store (orders: `on_orphan: drop`), a repeated order key
(`on_duplicate_key: keep_first`), an event for a customer that does not exist (kept, its
link NULL) and an event without a time (rejected).

Normalization before comparing, the minimal one: the same tables and the same column names
in the same order, then every column cast in DuckDB to the type the parquet warehouse gave
it (a PostgreSQL `integer` arrives as INTEGER where parquet has BIGINT), rows sorted. No
value is turned into text to make it compare.

RelBench's metadata holds single-column keys only, so the relbench kind is compared twice:
with the user's spec (composite keys and all, as for every other kind), and with the spec
`spec_from_relbench` derives from its metadata alone (stores without a primary key, orders
without the composite foreign key), extracted from RelBench and from parquet.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import duckdb
import pytest
import yaml

from pipeline.data.sources import open_source
from pipeline.data.sources.relbench import spec_from_relbench
from pipeline.data.spec import DatasetSpec, load_spec, parse_spec
from pipeline.data.warehouse import EXTRACTS, ExtractReport, extract_table
from test_sources import WRITERS, Written

REPO = Path(__file__).resolve().parent.parent
# "now" for every extract, so that what counts as the future is the same in every run.
NOW = datetime(2025, 1, 1)
BAD_ROWS = [
    ("orders", {"order_id": 9, "customer_id": 99, "region": "north", "store_no": 1,
                "ordered_at": datetime(2024, 2, 10, 8), "unit price": 2.0, "note": "no such customer"}),
    ("orders", {"order_id": 10, "customer_id": 1, "region": "west", "store_no": 9,
                "ordered_at": datetime(2024, 2, 11), "unit price": None, "note": "no such store"}),
    ("orders", {"order_id": 3, "customer_id": 2, "region": "south", "store_no": 1,
                "ordered_at": datetime(2024, 2, 12), "unit price": 5.5, "note": "second order 3"}),
    ("events", {"customer_id": 42, "happened_at": datetime(2024, 3, 1, 12), "kind": "ghost"}),
    ("events", {"customer_id": 1, "happened_at": None, "kind": "no time"}),
]
SERVER_KINDS = ("postgres", "mysql")


def with_policies(raw: dict) -> dict:
    raw["tables"]["orders"].update(on_orphan="drop", on_duplicate_key="keep_first")
    return raw


def write(kind: str, request, tmp_path: Path) -> Written:
    """The test database with the bad rows, in source kind `kind` (servers: a fresh schema)."""
    written = WRITERS[kind](tmp_path, request)
    for table, row in BAD_ROWS:
        written.append(table, row)
    return written


def extract_all(spec: DatasetSpec, warehouse: Path, data_dir: Path) -> dict[str, ExtractReport]:
    """What the extract assets do, without Dagster: every table, in dependency order."""
    source = open_source(spec, data_dir)
    with duckdb.connect(str(warehouse)) as con:
        # A batch size below the table sizes, so that every kind streams several batches.
        return {t: extract_table(con, spec, t, source.read(t, batch_size=4),
                                 source.fingerprint(t), now=NOW)
                for t in spec.extract_order()}


def tables_of(con: duckdb.DuckDBPyConnection) -> dict[str, list[tuple[str, str]]]:
    """{table: [(column, type)]} of the warehouse's clean and rejected tables."""
    rows = con.execute("SELECT table_name, column_name, data_type FROM duckdb_columns() "
                       "WHERE database_name = current_database() AND schema_name = 'main' "
                       "AND NOT internal AND table_name <> ? "
                       "ORDER BY table_name, column_index", [EXTRACTS]).fetchall()
    out: dict[str, list[tuple[str, str]]] = {}
    for table, column, dtype in rows:
        out.setdefault(table, []).append((column, dtype))
    return out


def contents(warehouse: Path, types: dict[str, list[tuple[str, str]]]) -> dict[str, list[tuple]]:
    """Every table's rows, each column cast to the reference type in `types`, sorted.

    Raises AssertionError when the warehouse's tables or column names differ from `types`.
    """
    with duckdb.connect(str(warehouse), read_only=True) as con:
        have = tables_of(con)
        assert sorted(have) == sorted(types), f"{warehouse}: tables {sorted(have)}"
        out = {}
        for table, cols in types.items():
            names = [c for c, _ in have[table]]
            assert names == [c for c, _ in cols], f"{warehouse}: {table} has columns {names}"
            select = ", ".join(f'CAST("{c}" AS {t})' for c, t in cols)
            out[table] = con.execute(f'SELECT {select} FROM "{table}" ORDER BY ALL').fetchall()
    return out


def summary(reports: dict[str, ExtractReport]) -> dict[str, tuple]:
    """Counts and problems of each extract report (what the asset checks show)."""
    return {t: (r.rows_in, r.rows_out, r.rows_rejected,
                sorted((p.kind, p.column or "", p.count, str(p.examples), p.severity)
                       for p in r.problems))
            for t, r in reports.items()}


def reference_warehouse(request, tmp_path: Path) -> tuple[Path, dict[str, ExtractReport]]:
    written = write("parquet", request, tmp_path)
    path = tmp_path / "parquet.duckdb"
    return path, extract_all(parse_spec(with_policies(written.raw)), path, tmp_path)


# ---------------------------------------------------------------------------------------


def test_reference_warehouse_applies_the_policies(request, tmp_path):
    """The parquet warehouse the other kinds are compared with holds what the spec asks."""
    path, reports = reference_warehouse(request, tmp_path)
    con = duckdb.connect(str(path), read_only=True)
    assert sorted(tables_of(con)) == sorted(
        ["customers", "stores", "orders", "events", "rejected_customers", "rejected_stores",
         "rejected_orders", "rejected_events"])
    # Customer 3 has no signup time, so it cannot be placed in time: rejected, and its
    # order is then an orphan as well (dropped), its events keep a NULL link.
    assert con.execute("SELECT customer_id, __reason FROM rejected_customers").fetchall() == \
        [(3, "null signup_at")]
    rejected = "SELECT order_id, note, __reason FROM rejected_orders ORDER BY ALL"
    assert con.execute(rejected).fetchall() == [
        (3, "second order 3", "duplicate primary key"),
        (4, "Ünïcødé", "orphan customer_id -> customers"),
        (9, "no such customer", "orphan customer_id -> customers"),
        (10, "no such store", "orphan region__store_no -> stores"),
    ]
    assert con.execute("SELECT kind, __reason FROM rejected_events").fetchall() == \
        [("no time", "null happened_at")]
    # __id is dense and in time order; __fk_* hold the referenced rows' __id.
    assert con.execute("SELECT list(__id ORDER BY signup_at), list(customer_id ORDER BY __id) "
                       "FROM customers").fetchall() == [([0, 1, 2, 3], [4, 1, 2, 5])]
    assert con.execute(
        "SELECT count(*), count(*) FILTER (WHERE c.customer_id = o.customer_id AND "
        "s.region = o.region AND s.store_no = o.store_no) FROM orders o "
        "JOIN customers c ON c.__id = o.__fk_customer_id "
        "JOIN stores s ON s.__id = o.__fk_region__store_no").fetchall() == [(5, 5)]
    assert con.execute("SELECT list(__id ORDER BY __id) = range(101), "
                       "count(*) FILTER (WHERE customer_id IS NOT NULL AND __fk_customer_id IS NULL) "
                       "FROM events").fetchall() == [(True, 21)]  # 20 of customer 3, 1 of customer 42
    con.close()
    assert reports["orders"].rows_in == 11 and reports["orders"].rows_out == 7


@pytest.mark.parametrize("kind", ["csv", "sqlite", "duckdb", "postgres", "mysql", "relbench"])
def test_every_kind_gives_the_same_warehouse(kind, request, tmp_path):
    ref_path, ref_reports = reference_warehouse(request, tmp_path)
    with duckdb.connect(str(ref_path), read_only=True) as con:
        types = tables_of(con)
    written = write(kind, request, tmp_path)
    path = tmp_path / f"{kind}.duckdb"
    reports = extract_all(parse_spec(with_policies(written.raw)), path, tmp_path)
    expected, got = contents(ref_path, types), contents(path, types)
    for table in types:
        assert got[table] == expected[table], f"{kind}: table {table} differs from parquet's"
    assert summary(reports) == summary(ref_reports)


def test_relbench_gives_the_same_warehouse_for_its_single_column_keys(request, tmp_path):
    rel = write("relbench", request, tmp_path)
    raw = spec_from_relbench(Path(rel.raw["source"]["path"]), name="shop")
    # What RelBench's metadata holds: no composite key anywhere.
    assert "primary_key" not in raw["tables"]["stores"]
    assert raw["tables"]["orders"]["foreign_keys"] == {"customer_id": "customers"}
    with_policies(raw)
    rel_path, pq_path = tmp_path / "relbench.duckdb", tmp_path / "parquet.duckdb"
    rel_reports = extract_all(parse_spec(raw), rel_path, tmp_path)
    parquet = write("parquet", request, tmp_path)
    pq_reports = extract_all(parse_spec({**raw, "source": parquet.raw["source"]}), pq_path, tmp_path)
    with duckdb.connect(str(pq_path), read_only=True) as con:
        types = tables_of(con)
    assert "__fk_customer_id" in dict(types["orders"])
    assert "__fk_region__store_no" not in dict(types["orders"])
    expected, got = contents(pq_path, types), contents(rel_path, types)
    for table in types:
        assert got[table] == expected[table], f"relbench: table {table} differs from parquet's"
    assert summary(rel_reports) == summary(pq_reports)
    assert rel_reports["orders"].rows_rejected == 3  # order 10's store is no key here: kept


def test_documented_specs_load():
    """The README section's spec and the example specs are valid as written."""
    doc = (REPO / "README.md").read_text().split("## Use your own database", 1)[1]
    block = doc.split("```yaml\n", 1)[1].split("```", 1)[0]
    spec = parse_spec(yaml.safe_load(block))
    assert spec.source.password_env == "SHOP_DB_PASSWORD"
    assert spec.tables["orders"].foreign_keys[1].columns == ("region", "store_no")
    assert spec.tables["orders"].on_orphan == "drop" and spec.tables["customers"].on_orphan == "null"
    examples = sorted((REPO / "datasets" / "examples").glob("*.yaml"))
    assert [p.name for p in examples] == ["postgres_shop.yaml", "relbench_like.yaml"]
    for path in examples:
        spec = load_spec(path)
        assert spec.tasks, path
        # RelBench's layout has no composite keys, so neither may its example.
        if spec.source.kind == "relbench":
            assert all(len(t.primary_key) <= 1 for t in spec.tables.values())


def test_own_database_reaches_the_graph_without_python(request, tmp_path):
    """`relgraph graph --dataset my.yaml` on a SQLite file: warehouse and graph, no code."""
    written = write("sqlite", request, tmp_path)
    spec_path = tmp_path / "shop.yaml"
    spec_path.write_text(yaml.safe_dump(with_policies(written.raw), allow_unicode=True))
    env = {k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME", "RELGRAPH_DATASETS")}
    env["RELGRAPH_DATA"] = str(tmp_path / "data")
    relgraph = Path(sys.executable).with_name("relgraph")  # the console script of the venv
    done = subprocess.run([str(relgraph), "graph", "--dataset", str(spec_path)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    graph_line = [line for line in done.stdout.splitlines() if line.startswith("graph: ")]
    assert graph_line, done.stdout
    graph_dir = Path(graph_line[-1].removeprefix("graph: "))
    assert graph_dir.is_relative_to(tmp_path / "data" / "graphs")
    stats = json.loads((graph_dir / "meta.json").read_text())["stats"]
    # A node per clean row, an edge per set foreign key, in both directions.
    assert stats["nodes"] == {"customers": 4, "stores": 4, "orders": 7, "events": 101}
    assert stats["edges"] == {
        "orders--customer_id->customers": 6, "customers--rev_customer_id->orders": 6,
        "orders--region__store_no->stores": 6, "stores--rev_region__store_no->orders": 6,
        "events--customer_id->customers": 60, "customers--rev_customer_id->events": 60}
    with duckdb.connect(str(tmp_path / "data" / "warehouse.duckdb"), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM rejected_orders").fetchall() == [(4,)]
