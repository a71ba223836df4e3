"""Bad input: each case ends in a clear message naming table, column and count, or is
repaired and reported; through `relgraph` it is one `relgraph: ...` line and exit 2.

Already covered elsewhere (not repeated): malformed YAML, a reference to a missing table,
a foreign key to a table without a primary key (tests/test_spec.py); a missing column,
duplicate and null keys, orphans, unparsable, null and future times, all-null and constant
columns, an empty table (tests/test_warehouse.py); a missing source table
(tests/test_sources.py); label SQL that does not parse or lacks columns and a split without
positives (tests/test_tasks.py).
"""

from __future__ import annotations

import os
import re
import resource
import sqlite3
import subprocess
from datetime import datetime
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from pipeline.graph.features import FeatureConfig
from pipeline.graph.build import build_graph
from pipeline.models.gbdt import GBDTConfig, build_features
from pipeline.data.sources import SourceError, open_source
from pipeline.data.spec import parse_spec
from pipeline.data.warehouse import extract_table
from shop import CHURN, RELGRAPH



def _shop(root: Path, customers: dict | None = None, label_sql: str = CHURN,
          spec_text: str | None = None) -> Path:
    """A 100-customer shop as parquet and its spec; `customers` overrides columns."""
    rng = np.random.default_rng(0)
    src = root / "src"
    src.mkdir(parents=True)
    cust = {"customer_id": np.arange(1, 101), "country": rng.choice(["DE", "FR"], 100)}
    cust.update(customers or {})
    pq.write_table(pa.table(cust), src / "customers.parquet")
    start = np.datetime64("2024-01-01T00:00:00", "s")
    pq.write_table(pa.table({
        "order_id": np.arange(800), "customer_id": rng.integers(1, 101, 800),
        "ordered_at": start + np.sort(rng.integers(0, 300 * 86_400, 800)).astype("timedelta64[s]"),
        "amount": rng.gamma(2.0, 10.0, 800)}), src / "orders.parquet")
    spec = {"name": "shop", "source": {"kind": "parquet", "path": str(src)},
            "tables": {"customers": {"primary_key": "customer_id", "column_types": {"tier": "numeric"}},
                       "orders": {"primary_key": "order_id", "time_column": "ordered_at",
                                  "foreign_keys": {"customer_id": "customers"}}},
            "tasks": {"churn": {"type": "binary_classification", "entity_table": "customers",
                                "label_sql": label_sql, "horizon": "30d",
                                "val_cutoff": "latest - 60d", "test_cutoff": "latest - 30d",
                                "num_train_cutoffs": 3}}}
    path = root / "shop.yaml"
    path.write_text(spec_text if spec_text is not None else yaml.safe_dump(spec, sort_keys=False))
    return path


# ---------------------------------------------------------------------------------------
# Through the command line: one line, exit 2, no Python traceback


@pytest.mark.parametrize("case, expected", [
    ("malformed_yaml", r"shop.yaml: not valid YAML \(line 4, column 7\): expected ','"),
    ("missing_column", "customers.tier: no such column"),
    ("duplicate_key", r"customers.customer_id: 1 row repeats the primary key of another row "
                      r"\(first: 7\); stopped: on_duplicate_key is fail"),
    ("no_positives", "task churn: the train split has 0 positive labels out of"),
])
def test_cli_reports_bad_input_in_one_line(tmp_path, case, expected):
    kw = {}
    if case == "malformed_yaml":
        kw["spec_text"] = "name: shop\nsource:\n  kind: [parquet\ntables: {}\n"
    elif case == "missing_column":
        kw["customers"] = {}  # the spec names customers.tier, which the source lacks
    elif case == "duplicate_key":
        kw["customers"] = {"customer_id": np.r_[np.arange(1, 100), 7], "tier": np.ones(100)}
    else:
        kw["customers"] = {"tier": np.ones(100)}
        kw["label_sql"] = CHURN.replace("(COUNT(o.order_id) = 0)::INTEGER", "0")
    spec = _shop(tmp_path, **kw)
    env = {**os.environ, "RELGRAPH_DATA": str(tmp_path / "data"), "OMP_NUM_THREADS": "1"}
    env.pop("DAGSTER_HOME", None)
    done = subprocess.run([RELGRAPH, "graph", "--dataset", str(spec)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 2, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("relgraph: ") and re.search(expected, last), last
    assert "Traceback (most recent call last)" not in done.stderr


# ---------------------------------------------------------------------------------------
# Text that is not UTF-8


def _latin1_spec(kind: str, path: Path):
    return parse_spec({"name": "s", "source": {"kind": kind, "path": str(path)},
                       "tables": {"customers": {"primary_key": "customer_id"}}})


def test_csv_with_latin1_bytes_names_table_column_count_and_line(tmp_path):
    (tmp_path / "customers.csv").write_bytes(
        "customer_id,name,city\n1,José,Köln\n2,plain,Paris\n3,Müller,Wien\n".encode("latin-1"))
    source = open_source(_latin1_spec("csv", tmp_path), tmp_path)
    with pytest.raises(SourceError) as err:
        source.read("customers").read_all()
    msg = str(err.value)
    assert "table 'customers' has text that is not UTF-8" in msg
    assert "customers.name: 2 rows (first: line 2 of customers.csv)" in msg
    assert "customers.city: 1 row (first: line 2 of customers.csv)" in msg
    assert "\n" not in msg


def test_sqlite_with_latin1_bytes_names_table_column_and_count(tmp_path):
    db = tmp_path / "shop.sqlite"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE customers (customer_id INTEGER PRIMARY KEY, name TEXT, city TEXT)")
    con.execute("INSERT INTO customers VALUES (1, CAST(X'4A6F73E9' AS TEXT), 'Paris'), "
                "(2, 'plain', 'Rome'), (3, CAST(X'4DFC6C6C6572' AS TEXT), 'Wien')")
    con.commit()
    con.close()
    source = open_source(_latin1_spec("sqlite", db), tmp_path)
    with pytest.raises(SourceError) as err:
        source.read("customers").read_all()
    msg = str(err.value)
    assert "table 'customers' has text that is not UTF-8" in msg
    assert "customers.name: 2 rows (first: b'Jos\\xe9')" in msg
    assert "city" not in msg


# ---------------------------------------------------------------------------------------
# Degenerate columns and tables reach the graph and LightGBM without breaking them


def _load(tmp_path: Path, tables: dict[str, pa.Table], spec_tables: dict, tasks: dict | None = None):
    src = tmp_path / "src"
    src.mkdir()
    for name, table in tables.items():
        pq.write_table(table, src / f"{name}.parquet")
    spec = parse_spec({"name": "d", "source": {"kind": "parquet", "path": str(src)},
                       "tables": spec_tables, "tasks": tasks or {}})
    source = open_source(spec, tmp_path)
    con = duckdb.connect(str(tmp_path / "warehouse.duckdb"))
    reports = {t: extract_table(con, spec, t, source.read(t), now=datetime(2025, 1, 1))
               for t in spec.extract_order()}
    return spec, con, reports


def test_all_null_single_value_and_empty_inputs_are_dropped_with_reasons(tmp_path):
    n = 300
    rng = np.random.default_rng(0)
    customers = pa.table({"customer_id": np.arange(n), "nothing": pa.nulls(n, pa.float64()),
                          "nothing_text": pa.nulls(n, pa.string()), "same": np.full(n, 4),
                          "plan": np.full(n, "basic"), "spend": rng.normal(size=n)})
    visits = pa.table({"visit_id": pa.array([], pa.int64()), "customer_id": pa.array([], pa.int64()),
                       "at": pa.array([], pa.timestamp("s")), "page": pa.array([], pa.string())})
    spec, con, reports = _load(tmp_path, {"customers": customers, "visits": visits}, {
        "customers": {"primary_key": "customer_id"},
        "visits": {"primary_key": "visit_id", "time_column": "at",
                   "foreign_keys": {"customer_id": "customers"}}})
    found = {(p.kind, p.column) for r in reports.values() for p in r.problems}
    assert {("all_null_column", "nothing"), ("constant_column", "same"),
            ("constant_column", "plan"), ("empty_table", None)} <= found

    graph = build_graph(con, spec, datetime(2024, 6, 1), FeatureConfig(), tmp_path / "graphs")
    enc = graph.encoders.tables["customers"]
    assert [c.name for c in enc.columns] == ["spend"]
    assert set(enc.dropped) == {"nothing", "nothing_text", "same", "plan"}
    assert "constant" in enc.dropped["same"] and "all null" in enc.dropped["nothing_text"]
    assert graph.data["visits"].num_nodes == 0
    assert graph.data["visits", "customer_id", "customers"].edge_index.shape == (2, 0)

    con.execute("CREATE TABLE task_t AS SELECT customer_id, __id AS __entity_id, "
                "TIMESTAMP '2024-06-01' AS cutoff, 'train' AS split, 1 AS label FROM customers")
    task = parse_spec({"name": "d", "source": {"kind": "synthetic"}, "tables": {
        "customers": {"primary_key": "customer_id"},
        "visits": {"primary_key": "visit_id", "time_column": "at",
                   "foreign_keys": {"customer_id": "customers"}}},
        "tasks": {"t": {"type": "binary_classification", "entity_table": "customers",
                        "label_sql": "SELECT 1", "horizon": "1d", "val_cutoff": "2024-06-01",
                        "test_cutoff": "2024-06-02"}}}).tasks["t"]
    frame, feats = build_features(con, spec, task, "task_t", flat=False)
    counts = frame["visits.customer_id: count"].to_list()
    assert counts == [0] * n  # an empty child table is "no events", not an error
    assert frame.height == n


def test_a_categorical_with_200k_distinct_values_becomes_top_k_in_bounded_memory(tmp_path):
    rows, distinct = 400_000, 200_000
    rng = np.random.default_rng(0)
    # half the rows share 50 frequent values, the other half are 199,950 rare ones
    frequent = rng.integers(0, 50, rows // 2)
    rare = 50 + rng.permutation(distinct - 50)
    rare = np.concatenate([rare, rng.integers(50, distinct, rows // 2 - len(rare))])
    values = np.char.add("v", np.concatenate([frequent, rare]).astype(str))
    events = pa.table({"event_id": np.arange(rows), "sku": values})
    spec, con, _ = _load(tmp_path, {"events": events}, {
        "events": {"primary_key": "event_id", "column_types": {"sku": "categorical"}}})
    assert con.execute("SELECT count(DISTINCT sku) FROM events").fetchall() == [(distinct,)]

    config = FeatureConfig(max_categories=100)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    graph = build_graph(con, spec, datetime(2025, 1, 1), config, tmp_path / "graphs")
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    (sku,) = graph.encoders.tables["events"].columns
    assert len(sku.vocabulary) == 50                  # only values seen min_frequency times
    assert "200000 distinct values: top 50 kept" in sku.note
    assert graph.feature_meta["events"]["cat"] == [51]
    codes = graph.data["events"].x_cat[:, 0]
    assert int(codes.max()) == 50 and int((codes == 0).sum()) == rows // 2
    assert grown_mb < 400, f"peak memory grew by {grown_mb:.0f} MB"

    cfg = GBDTConfig(max_categories=100)
    con.execute("CREATE TABLE task_t AS SELECT event_id, __id AS __entity_id, "
                "TIMESTAMP '2025-01-01' AS cutoff, 'train' AS split, 1 AS label FROM events")
    task = parse_spec({"name": "d", "source": {"kind": "synthetic"},
                       "tables": {"events": {"primary_key": "event_id"}},
                       "tasks": {"t": {"type": "binary_classification", "entity_table": "events",
                                       "label_sql": "SELECT 1", "horizon": "1d",
                                       "val_cutoff": "2025-01-01",
                                       "test_cutoff": "2025-01-02"}}}).tasks["t"]
    frame, _ = build_features(con, spec, task, "task_t", flat=True, config=cfg)
    gbdt_codes = frame["events.sku"]
    assert gbdt_codes.max() == cfg.max_categories - 1   # later values share "missing"
    kept = np.isin(values, np.unique(values)[:cfg.max_categories]).sum()
    assert frame.height == rows and gbdt_codes.null_count() == rows - kept
