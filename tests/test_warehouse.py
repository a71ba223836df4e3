"""Warehouse: loads, policies, time parsing, atomicity, quoting, bookkeeping."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from datetime import date, datetime, timezone
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from pipeline.data.spec import SpecError, parse_spec
from pipeline.data.warehouse import (
    WarehouseError,
    check_raw,
    extract_table,
    is_unchanged,
    q,
    warehouse_summary,
)

REPO = Path(__file__).resolve().parents[1]
NOW = datetime(2024, 6, 1)


def make_spec(tables: dict, **top):
    return parse_spec({"name": "shop", "source": {"kind": "synthetic"}, "tables": tables, **top})


def reader(columns: dict, schema: pa.Schema | None = None) -> pa.RecordBatchReader:
    """Small batches, so that source order spans several batches."""
    table = pa.table(columns, schema=schema)
    return pa.RecordBatchReader.from_batches(table.schema, table.to_batches(max_chunksize=2))


def rows(con, sql: str) -> list[tuple]:
    return con.execute(sql).fetchall()


def load(con, spec, table, columns, **kw):
    report = extract_table(con, spec, table, reader(columns), now=NOW, **kw)
    assert report.rows_in == report.rows_out + report.rows_rejected
    return report


def kinds(report_or_problems) -> dict[str, int]:
    problems = getattr(report_or_problems, "problems", report_or_problems)
    return {p.kind: p.count for p in problems}


@pytest.fixture
def con(tmp_path):
    c = duckdb.connect(str(tmp_path / "warehouse.duckdb"))
    yield c
    c.close()


SHOP = {
    "customers": {"primary_key": "customer_id"},
    "orders": {"primary_key": "order_id", "time_column": "ordered_at",
               "foreign_keys": {"customer_id": "customers"}},
}
CUSTOMERS = {"customer_id": [30, 10, 20], "name": ["c", "a", "b"]}


def snapshot(con, table: str) -> dict:
    """Everything the warehouse holds about `table`, to compare before and after a failure."""
    out = {}
    for rel in (f'raw."{table}"', f'main."{table}"', f'main."rejected_{table}"',
                'main."_relgraph_extracts"'):
        out[rel] = sorted(rows(con, f"SELECT * FROM {rel}"), key=repr)
    return out


# ---------------------------------------------------------------------------------------
# Clean loads


def test_quote_doubles_embedded_quotes():
    assert q('a"b') == '"a""b"'
    assert q("select") == '"select"'


def test_clean_load_ids_and_foreign_keys(con):
    spec = make_spec(SHOP)
    rep = load(con, spec, "customers", CUSTOMERS)
    assert (rep.rows_in, rep.rows_out, rep.rows_rejected) == (3, 3, 0)
    # no time column: __id follows the primary key
    assert rows(con, "SELECT customer_id, __id FROM customers ORDER BY __id") == [
        (10, 0), (20, 1), (30, 2)]
    rep = load(con, spec, "orders", {
        "order_id": [1, 2, 3, 4],
        "customer_id": [30, 10, None, 30],
        "ordered_at": [datetime(2024, 1, 3), datetime(2024, 1, 1), datetime(2024, 1, 2),
                       datetime(2024, 1, 1)],
    })
    assert rep.problems == []
    # ordered by time, ties by primary key; __fk is the customer's __id, NULL for a null key
    assert rows(con, "SELECT order_id, __id, __fk_customer_id FROM orders ORDER BY __id") == [
        (2, 0, 0), (4, 1, 2), (3, 2, None), (1, 3, 2)]
    assert rep.columns["__id"] == "BIGINT" and rep.columns["ordered_at"] == "TIMESTAMP"
    assert rep.time_range == (datetime(2024, 1, 1), datetime(2024, 1, 3))
    assert rows(con, "SELECT count(*) FROM rejected_orders") == [(0,)]
    assert rows(con, "SELECT count(*) FROM raw.orders") == [(4,)]
    assert warehouse_summary(con, spec)["orders"]["clean"] == 4


def test_composite_keys_and_table_without_primary_key(con):
    spec = make_spec({
        "weather": {"primary_key": ["origin", "hour"]},
        "flights": {"time_column": "departed_at", "foreign_keys": [
            {"columns": ["origin", "hour"], "references": "weather"}]},
    })
    load(con, spec, "weather", {"origin": ["JFK", "JFK", "LAX"], "hour": [2, 1, 1],
                                "wind": [5.0, 7.0, 1.0]})
    assert rows(con, "SELECT origin, hour, __id FROM weather ORDER BY __id") == [
        ("JFK", 1, 0), ("JFK", 2, 1), ("LAX", 1, 2)]
    rep = load(con, spec, "flights", {
        "origin": ["LAX", "JFK", "JFK", "SFO"], "hour": [1, 2, 1, 1],
        "departed_at": ["2024-01-01 10:00", "2024-01-01 09:00", "2024-01-01 09:00",
                        "2024-01-01 08:00"],
        "delay": [3, 2, 1, 0],
    })
    # no primary key: time, then every column breaks ties; (SFO, 1) matches no weather row
    assert rows(con, "SELECT origin, hour, __id, __fk_origin__hour FROM flights ORDER BY __id") == [
        ("SFO", 1, 0, None), ("JFK", 1, 1, 0), ("JFK", 2, 2, 1), ("LAX", 1, 3, 2)]
    assert kinds(rep) == {"orphan": 1}
    assert rep.problems[0].examples == [("SFO", 1)]
    assert rep.problems[0].message.startswith("flights.origin, hour: 1 row references weather")


def test_keys_of_different_types_still_join(con):
    spec = make_spec(SHOP)
    load(con, spec, "customers", CUSTOMERS)
    rep = load(con, spec, "orders", {"order_id": [1, 2], "customer_id": ["20", "x"],
                                     "ordered_at": ["2024-01-01", "2024-01-02"]})
    assert rows(con, "SELECT customer_id, __fk_customer_id FROM orders ORDER BY __id") == [
        ("20", 1), ("x", None)]
    assert [(p.kind, p.examples) for p in rep.problems] == [("mixed_types", ["x"]),
                                                            ("orphan", ["x"])]


def test_self_reference_resolves_within_the_table(con):
    spec = make_spec({"staff": {"primary_key": "id", "foreign_keys": {"boss": "staff"}}})
    load(con, spec, "staff", {"id": [3, 1, 2], "boss": [2, None, 1]})
    assert rows(con, "SELECT id, __id, __fk_boss FROM staff ORDER BY __id") == [
        (1, 0, None), (2, 1, 0), (3, 2, 1)]


def test_self_reference_drop_follows_the_chain(con):
    spec = make_spec({"staff": {"primary_key": "id", "foreign_keys": {"boss": "staff"},
                                "on_orphan": "drop"}})
    rep = load(con, spec, "staff", {"id": [1, 2, 3, 4, 5], "boss": [None, 1, 9, 3, 4]})
    # 3's boss does not exist; 4 and 5 hang below 3, so they go too
    assert rows(con, "SELECT id, __fk_boss FROM staff ORDER BY __id") == [(1, None), (2, 0)]
    assert rows(con, "SELECT id, __reason FROM rejected_staff") == [
        (3, "orphan boss -> staff"),
        (4, "orphan boss -> staff (its row was rejected)"),
        (5, "orphan boss -> staff (its row was rejected)")]
    assert rep.rows_rejected == 3


# ---------------------------------------------------------------------------------------
# Policies


ORDERS_WITH_DUPLICATES = {
    "order_id": [1, 2, 1, 3, 2, None],
    "customer_id": [10, 10, 20, 30, 30, 10],
    "ordered_at": [f"2024-01-0{d}" for d in range(1, 7)],
}


@pytest.mark.parametrize("policy, kept", [
    ("keep_first", [(1, 10), (2, 10), (3, 30)]),
    ("keep_last", [(1, 20), (3, 30), (2, 30)]),
])
def test_duplicate_keys_repaired_by_source_order(con, policy, kept):
    spec = make_spec(SHOP, on_duplicate_key=policy)
    load(con, spec, "customers", CUSTOMERS)
    rep = load(con, spec, "orders", ORDERS_WITH_DUPLICATES)
    assert rows(con, "SELECT order_id, customer_id FROM orders ORDER BY __id") == kept
    rejected = rows(con, "SELECT order_id, __reason FROM rejected_orders "
                         "ORDER BY order_id NULLS FIRST")
    assert rejected == [(None, "null primary key"), (1, "duplicate primary key"),
                        (2, "duplicate primary key")]
    assert (rep.rows_out, rep.rows_rejected) == (3, 3)
    assert kinds(rep) == {"null_key": 1, "duplicate_key": 2}
    assert all(p.severity == "warn" for p in rep.problems)


def test_duplicate_keys_fail_names_table_column_count(con):
    spec = make_spec(SHOP)
    load(con, spec, "customers", CUSTOMERS)
    with pytest.raises(WarehouseError) as err:
        load(con, spec, "orders", ORDERS_WITH_DUPLICATES)
    msg = str(err.value)
    assert "orders.order_id: 2 rows repeat the primary key" in msg and "(first: 1, 2)" in msg
    assert "orders.order_id: 1 row has no primary key value" in msg
    assert {p.kind for p in err.value.problems} == {"duplicate_key", "null_key"}
    assert all(p.severity == "error" for p in err.value.problems)
    # nothing of orders was written, not even raw
    tables = {r[0] for r in rows(con, "SELECT table_name FROM duckdb_tables()")}
    assert "orders" not in tables and "rejected_orders" not in tables


ORDERS_WITH_ORPHANS = {
    "order_id": [1, 2, 3, 4, 5],
    "customer_id": [10, 99, 20, 98, None],
    "ordered_at": ["2024-01-01", "2024-01-02", "2024-01-03", "2024-01-04", "2024-01-05"],
}


def test_orphans_null_policy_keeps_rows_without_link(con):
    spec = make_spec(SHOP)
    load(con, spec, "customers", CUSTOMERS)
    rep = load(con, spec, "orders", ORDERS_WITH_ORPHANS)
    got = rows(con, "SELECT order_id, customer_id, __fk_customer_id FROM orders ORDER BY __id")
    assert got == [
        (1, 10, 0), (2, 99, None), (3, 20, 1), (4, 98, None), (5, None, None)]
    (p,) = rep.problems
    assert (p.kind, p.column, p.count, p.examples, p.severity) == (
        "orphan", "customer_id", 2, [99, 98], "warn")
    assert rep.rows_rejected == 0


def test_orphans_drop_policy_rejects_with_reason(con):
    spec = make_spec(SHOP, on_orphan="drop")
    load(con, spec, "customers", CUSTOMERS)
    rep = load(con, spec, "orders", ORDERS_WITH_ORPHANS)
    assert rows(con, "SELECT order_id FROM orders ORDER BY __id") == [(1,), (3,), (5,)]
    assert rows(con, "SELECT * FROM rejected_orders") == [
        (2, 99, "2024-01-02", "orphan customer_id -> customers"),
        (4, 98, "2024-01-04", "orphan customer_id -> customers")]
    assert (rep.rows_in, rep.rows_out, rep.rows_rejected) == (5, 3, 2)


def test_orphans_fail_policy_stops_with_examples(con):
    spec = make_spec(SHOP, on_orphan="fail")
    load(con, spec, "customers", CUSTOMERS)
    with pytest.raises(WarehouseError,
                       match=r"orders\.customer_id: 2 rows reference customers that do not exist "
                             r"\(first: 99, 98\)"):
        load(con, spec, "orders", ORDERS_WITH_ORPHANS)


def test_missing_column_is_named_with_suggestion(con):
    spec = make_spec({"customers": {"primary_key": "custmer_id"}})
    with pytest.raises(SpecError, match="customers.custmer_id: no such column; did you mean "
                                        "customer_id"):
        load(con, spec, "customers", CUSTOMERS)


def test_referenced_table_must_be_extracted_first(con):
    with pytest.raises(WarehouseError, match="references customers, which is not extracted"):
        load(con, make_spec(SHOP), "orders", ORDERS_WITH_ORPHANS)


# ---------------------------------------------------------------------------------------
# Times and column checks


def test_mixed_time_strings_epochs_and_junk(con):
    spec = make_spec({"events": {"primary_key": "id", "time_column": "at"}})
    rep = load(con, spec, "events", {
        "id": list(range(8)),
        "at": ["2024-01-01T12:00:00+02:00",   # aware: 10:00 UTC
               "2024-01-01 10:00:00",         # naive: taken as UTC
               "2024-01-01T10:00:00Z",
               "1704103200",                  # epoch seconds
               "1704103200000",               # epoch milliseconds
               "01.01.2024",
               "not a time", None],
    })
    ten = datetime(2024, 1, 1, 10)
    assert rows(con, 'SELECT id, "at" FROM events ORDER BY id') == [
        (0, ten), (1, ten), (2, ten), (3, ten), (4, ten), (5, datetime(2024, 1, 1))]
    assert rows(con, 'SELECT id, "at", __reason FROM rejected_events ORDER BY id') == [
        (6, "not a time", "unparsable at"), (7, None, "null at")]
    assert kinds(rep) == {"unparsable_time": 1, "null_time": 1, "mixed_time_zones": 2}
    assert [p.examples for p in rep.problems if p.kind == "unparsable_time"] == [["not a time"]]
    # two zone-less values (ids 1 and 5) next to two zoned ones (ids 0 and 2)
    mixed, = [p for p in rep.problems if p.kind == "mixed_time_zones"]
    assert (mixed.table, mixed.column, mixed.severity) == ("events", "at", "warn")
    assert mixed.examples == ["2024-01-01 10:00:00", "01.01.2024",
                              "2024-01-01T12:00:00+02:00", "2024-01-01T10:00:00Z"]
    assert "2 values without a time zone next to 2 with one" in mixed.detail


def test_times_all_with_or_all_without_a_zone_are_not_mixed(con):
    spec = make_spec({"events": {"primary_key": "id", "time_column": "at"}})
    for at in (["2024-01-01T12:00:00+02:00", "2024-01-02T00:00:00Z", "1704103200"],
               ["2024-01-01 10:00:00", "02.01.2024", "1704103200"]):
        rep = load(con, spec, "events", {"id": [0, 1, 2], "at": at})
        assert "mixed_time_zones" not in kinds(rep), at


def test_typed_times_epoch_numbers_and_timezones(con):
    spec = make_spec({"events": {"primary_key": "id", "time_column": "at",
                                 "column_types": {"ms": "timestamp"}}})
    schema = pa.schema([("id", pa.int64()), ("at", pa.timestamp("us", tz="Europe/Berlin")),
                        ("ms", pa.int64()), ("day", pa.date32()), ("stamp", pa.string())])
    berlin_noon = datetime(2024, 1, 1, 11, tzinfo=timezone.utc)  # 12:00 in Berlin
    rep = extract_table(con, spec, "events", reader({
        "id": [1, 2], "at": [berlin_noon, berlin_noon],
        "ms": [1704103200000, 1704103200],                 # milliseconds, then seconds
        "day": [date(2024, 1, 2), date(2024, 1, 3)],
        "stamp": ["2024-02-01T00:00:00", "2024-02-02"],    # ISO strings: detected as times
    }, schema), now=NOW)
    assert {c: rep.columns[c] for c in ("at", "ms", "day", "stamp")} == {
        c: "TIMESTAMP" for c in ("at", "ms", "day", "stamp")}
    assert rows(con, 'SELECT "at", ms, day, stamp FROM events ORDER BY id') == [
        (datetime(2024, 1, 1, 11), datetime(2024, 1, 1, 10), datetime(2024, 1, 2),
         datetime(2024, 2, 1)),
        (datetime(2024, 1, 1, 11), datetime(2024, 1, 1, 10), datetime(2024, 1, 3),
         datetime(2024, 2, 2))]


def test_future_mixed_empty_null_and_constant_columns_reported(con):
    spec = make_spec({"events": {"primary_key": "id", "time_column": "at"}})
    rep = load(con, spec, "events", {
        "id": [1, 2, 3, 4],
        "at": ["2024-05-01", "2024-06-01 12:00", "2024-06-10", "2030-01-01"],
        "amount": ["1.5", "2", "n/a", "4"],
        "empty": pa.nulls(4, pa.string()),
        "same": [7, 7, 7, 7],
    })
    got = {p.kind: p for p in rep.problems}
    assert set(got) == {"future_time", "mixed_types", "all_null_column", "constant_column"}
    assert got["future_time"].count == 2        # NOW + 1 day is the limit
    assert got["future_time"].examples == [datetime(2024, 6, 10), datetime(2030, 1, 1)]
    assert (got["mixed_types"].column, got["mixed_types"].count,
            got["mixed_types"].examples) == ("amount", 1, ["n/a"])
    assert got["all_null_column"].column == "empty"
    assert "7" in got["constant_column"].message
    assert rep.rows_out == 4                    # reported, not dropped

    rep = load(con, spec, "events", {"id": pa.array([], pa.int64()),
                                     "at": pa.array([], pa.string())})
    assert kinds(rep) == {"empty_table": 0}
    assert rows(con, "SELECT count(*) FROM events") == [(0,)]


def test_check_raw_recomputes_problems_without_writing(con):
    spec = make_spec(SHOP)
    load(con, spec, "customers", CUSTOMERS)
    load(con, spec, "orders", ORDERS_WITH_ORPHANS)
    before = snapshot(con, "orders")
    problems = check_raw(con, spec, "orders")
    assert [(p.kind, p.count, p.severity) for p in problems] == [("orphan", 2, "warn")]
    assert snapshot(con, "orders") == before
    # under a fail policy the same data is an error
    problems = check_raw(con, make_spec(SHOP, on_orphan="fail"), "orders")
    assert [(p.kind, p.severity) for p in problems] == [("orphan", "error")]


def test_hostile_column_name_is_a_plain_column(con):
    bad = 'x"; DROP TABLE customers; --'
    spec = make_spec({
        "customers": {"primary_key": "customer_id"},
        "wëird table": {"primary_key": bad, "time_column": "select",
                        "foreign_keys": {"customer_id": "customers"}},
    })
    load(con, spec, "customers", CUSTOMERS)
    rep = load(con, spec, "wëird table", {bad: [2, 1], "select": ["2024-01-02", "2024-01-01"],
                                          "customer_id": [10, 30]})
    assert bad in rep.columns
    assert rows(con, "SELECT count(*) FROM customers") == [(3,)]
    assert rows(con, f'SELECT {q(bad)}, __fk_customer_id FROM "wëird table" ORDER BY __id') == [
        (1, 2), (2, 0)]


# ---------------------------------------------------------------------------------------
# Atomicity and bookkeeping


def test_failed_policy_leaves_previous_snapshot(con):
    spec = make_spec(SHOP)
    load(con, spec, "customers", CUSTOMERS)
    load(con, make_spec(SHOP, on_duplicate_key="keep_first"), "orders", ORDERS_WITH_DUPLICATES)
    before = snapshot(con, "orders")
    with pytest.raises(WarehouseError):
        load(con, spec, "orders", {**ORDERS_WITH_DUPLICATES, "customer_id": [20] * 6})
    assert snapshot(con, "orders") == before
    rep = load(con, spec, "orders", ORDERS_WITH_ORPHANS)   # the next run goes through
    assert rep.rows_out == 5


def test_error_after_clean_write_rolls_everything_back(con, monkeypatch):
    import pipeline.data.warehouse as wh

    spec = make_spec(SHOP)
    load(con, spec, "customers", CUSTOMERS)
    load(con, spec, "orders", ORDERS_WITH_ORPHANS)
    before = snapshot(con, "orders")

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(wh, "_report", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        load(con, spec, "orders", {**ORDERS_WITH_ORPHANS, "order_id": [6, 7, 8, 9, 10]})
    assert snapshot(con, "orders") == before
    monkeypatch.undo()
    assert load(con, spec, "orders", ORDERS_WITH_ORPHANS).rows_out == 5


CHILD = textwrap.dedent("""
    import sys, time
    import duckdb, numpy as np, pyarrow as pa
    sys.path.insert(0, {repo!r})
    import pipeline.data.warehouse as wh
    from pipeline.data.spec import parse_spec

    spec = parse_spec({{"name": "shop", "source": {{"kind": "synthetic"}},
                       "tables": {{"customers": {{"primary_key": "customer_id"}}}}}})
    schema = pa.schema([("customer_id", pa.int64()), ("name", pa.string())])
    phase = {phase!r}

    def stall(*args):
        print("writing", flush=True)
        time.sleep(60)  # until the parent kills us

    def batches():
        for i in range(10_000 if phase == "streaming" else 12):
            if i == 12:
                stall()
            ids = np.arange(i * 65_536, (i + 1) * 65_536)
            yield pa.record_batch([pa.array(ids), pa.array(ids.astype(str))], schema=schema)

    if phase == "after_raw":
        wh._write = stall  # raw is written inside the open transaction, the clean table not yet
    con = duckdb.connect({db!r})
    wh.extract_table(con, spec, "customers", pa.RecordBatchReader.from_batches(schema, batches()))
    print("finished", flush=True)
""")


@pytest.mark.parametrize("phase", ["streaming", "after_raw"])
def test_killed_process_mid_write_leaves_previous_snapshot(tmp_path, phase):
    db = str(tmp_path / "warehouse.duckdb")
    con = duckdb.connect(db)
    spec = make_spec({"customers": {"primary_key": "customer_id",
                                    "on_duplicate_key": "keep_first"}})
    load(con, spec, "customers", {"customer_id": [30, 10, 10], "name": ["c", "a", "x"]})
    before = snapshot(con, "customers")
    con.close()

    script = tmp_path / "child.py"
    script.write_text(CHILD.format(repo=str(REPO), db=db, phase=phase))
    child = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "writing"
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(timeout=20)
    assert child.returncode == -signal.SIGKILL

    con = duckdb.connect(db)
    assert snapshot(con, "customers") == before
    assert load(con, spec, "customers", CUSTOMERS).rows_out == 3   # the next run succeeds
    con.close()


def test_unchanged_fingerprint_is_a_noop(con):
    spec = make_spec(SHOP)
    load(con, spec, "customers", CUSTOMERS, fingerprint="c1")
    load(con, spec, "orders", ORDERS_WITH_ORPHANS, fingerprint="o1")
    assert is_unchanged(con, "orders", "o1", spec)
    assert not is_unchanged(con, "orders", "o2", spec)

    def untouched():
        raise AssertionError("an unchanged table must not be read")
        yield

    never_read = pa.RecordBatchReader.from_batches(pa.schema([("order_id", pa.int64())]),
                                                   untouched())
    rep = extract_table(con, spec, "orders", never_read, fingerprint="o1", now=NOW)
    assert rep.skipped and rep.rows_out == 5 and "unchanged" in rep.message
    assert kinds(rep) == {"orphan": 2}
    assert rows(con, "SELECT count(*) FROM _relgraph_extracts") == [(2,)]

    # customers extracted again: orders' __fk values may be stale, so orders is not unchanged
    load(con, spec, "customers", CUSTOMERS, fingerprint="c2")
    assert not is_unchanged(con, "orders", "o1", spec)
    # a changed spec for the table also invalidates it
    load(con, spec, "orders", ORDERS_WITH_ORPHANS, fingerprint="o1")
    assert is_unchanged(con, "orders", "o1", spec)
    assert not is_unchanged(con, "orders", "o1", make_spec(SHOP, on_orphan="drop"))
