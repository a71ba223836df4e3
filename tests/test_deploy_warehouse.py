"""Warehouse access that many pods can share (assets/resources.py, deploy/warehouse.py).

Steps outside the pool `warehouse` open the warehouse read-only. On one file DuckDB still
refuses a reading process beside a writing one: the single-file layout's reader waits and
then fails with a clear error, and the published-snapshot layout of deploy/ lets a reader
and a writer work at once. The writing "pod" is a second process holding DuckDB's write lock.
"""


import os
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import duckdb
from duckdb import Error as DuckDBError
import pytest

from assets.resources import WarehouseResource

REPO = Path(__file__).resolve().parent.parent


def _published():
    """deploy/warehouse.py (deploy/ is not an installed package)."""
    sys.path.insert(0, str(REPO))
    import deploy.warehouse

    return deploy.warehouse


@dg.asset(pool="warehouse")
def write_orders(duckdb: WarehouseResource) -> None:
    with duckdb.get_connection() as con:
        n = con.execute("CREATE TABLE IF NOT EXISTS orders (n INTEGER); "
                        "SELECT count(*) FROM orders").fetchone()[0]
        con.execute("INSERT INTO orders VALUES (?)", [n + 1])


@dg.asset(pool="warehouse")
def look_only(duckdb: WarehouseResource) -> None:
    with duckdb.get_connection() as con:
        con.execute("SELECT count(*) FROM orders").fetchone()


@dg.asset(pool="gpu")
def read_orders(context: dg.AssetExecutionContext, duckdb: WarehouseResource) -> None:
    with duckdb.get_connection() as con:
        readonly = con.execute("SELECT readonly FROM duckdb_databases() "
                               "WHERE database_name = current_database()").fetchone()[0]
        rows = [r[0] for r in con.execute("SELECT n FROM orders ORDER BY n").fetchall()]
        con.execute("CREATE TEMP TABLE scratch AS SELECT 1 AS x")  # temp tables still work
        try:
            con.execute("CREATE TABLE sneaky AS SELECT 1 AS x")
            wrote = True
        except DuckDBError:
            wrote = False
    context.add_output_metadata({"readonly": readonly, "rows": str(rows), "wrote": wrote})


def _run(asset, warehouse) -> dict:
    result = dg.materialize([asset], resources={"duckdb": warehouse}, raise_on_error=False)
    if not result.success:
        failure = next(e for e in result.all_events if e.is_step_failure)
        raise AssertionError(failure.step_failure_data.error.message)
    [mat] = result.asset_materializations_for_node(asset.op.name)
    return {k: v.value for k, v in mat.metadata.items()}


class Writer:
    """Another process holding `path` open read-write (a writing pod) for `hold_s` seconds."""

    def __init__(self, path: Path, hold_s: float):
        code = ("import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); "
                "print('locked', flush=True); time.sleep(float(sys.argv[2]))")
        self.proc = subprocess.Popen([sys.executable, "-c", code, str(path), str(hold_s)],
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "locked"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.proc.kill()
        self.proc.wait()


def test_a_reading_step_opens_the_warehouse_read_only(tmp_path):
    warehouse = WarehouseResource(database=str(tmp_path / "data" / "warehouse.duckdb"))
    _run(write_orders, warehouse)
    _run(write_orders, warehouse)
    meta = _run(read_orders, warehouse)
    assert meta == {"readonly": True, "rows": "[1, 2]", "wrote": False}
    # Outside a step (the relgraph command, a notebook) it writes, as before.
    with warehouse.get_connection() as con:
        con.execute("CREATE TABLE notebook AS SELECT 1 AS x")


def test_single_file_layout_reader_waits_for_the_writer_then_fails_clearly(tmp_path):
    path = tmp_path / "warehouse.duckdb"
    _run(write_orders, WarehouseResource(database=str(path)))
    # The writer lets go within the reader's wait: the reader retries and gets in.
    with Writer(path, hold_s=1.5):
        t0 = time.monotonic()
        meta = _run(read_orders, WarehouseResource(database=str(path), lock_wait_s=30))
        waited = time.monotonic() - t0
    assert meta["rows"] == "[1]" and waited > 1.0
    # The writer holds on: after lock_wait_s the step fails, saying why.
    with Writer(path, hold_s=30):
        with pytest.raises(AssertionError) as failed:
            _run(read_orders, WarehouseResource(database=str(path), lock_wait_s=1))
    message = str(failed.value)
    assert "stayed locked by a writing process for 1 s" in message
    assert "Conflicting lock is held" in message


def test_published_layout_reads_while_a_writer_writes(tmp_path):
    PublishedWarehouse, SNAPSHOT_DIR = _published().PublishedWarehouse, _published().SNAPSHOT_DIR
    data = tmp_path / "data"
    warehouse = PublishedWarehouse(database=str(data / "warehouse.duckdb"))
    _run(write_orders, warehouse)
    link = data / "warehouse.duckdb"
    assert link.is_symlink() and link.resolve().parent.name == SNAPSHOT_DIR
    first = link.resolve()

    # A writing pod holds the working copy: a reading step is not held up at all.
    with Writer(warehouse.working_database, hold_s=30):
        t0 = time.monotonic()
        meta = _run(read_orders, PublishedWarehouse(database=warehouse.database, lock_wait_s=0))
        assert time.monotonic() - t0 < 10
        # ... nor is pipeline code that opens the warehouse by its path (the champion's model)
        with duckdb.connect(str(link), read_only=True) as con:
            assert con.execute("SELECT count(*) FROM orders").fetchone() == (1,)
    assert meta == {"readonly": True, "rows": "[1]", "wrote": False}

    # A reader that opened the old snapshot keeps it while a writer publishes a new one.
    old = duckdb.connect(str(link), read_only=True)
    _run(write_orders, warehouse)
    assert old.execute("SELECT count(*) FROM orders").fetchone() == (1,)
    old.close()
    assert link.resolve() != first and first.exists()
    assert _run(read_orders, warehouse)["rows"] == "[1, 2]"
    # A step of the pool that wrote nothing publishes nothing.
    snapshots = sorted((data / SNAPSHOT_DIR).iterdir())
    _run(look_only, warehouse)
    assert sorted((data / SNAPSHOT_DIR).iterdir()) == snapshots


def test_snapshots_are_pruned_only_when_superseded_long_ago_and_not_among_the_newest(tmp_path):
    prune, SNAPSHOT_DIR = _published().prune, _published().SNAPSHOT_DIR
    snaps = tmp_path / SNAPSHOT_DIR
    snaps.mkdir()
    hour = 3600
    # made 30, 20, 10 and 5 hours ago, and a second ago (the current one)
    for i, age in enumerate([30 * hour, 20 * hour, 10 * hour, 5 * hour, 1]):
        f = snaps / f"2026010{i}T000000Z-x.duckdb"
        f.write_bytes(b"")
        os.utime(f, (time.time() - age, time.time() - age))
    gone = prune(snaps, current="20260104T000000Z-x.duckdb", keep=2, keep_hours=6)
    # 0 and 1 were superseded 20 and 10 hours ago; 2 only 5 hours ago (a reader may hold
    # it yet); 3 and 4 are the newest two
    assert gone == ["20260100T000000Z-x.duckdb", "20260101T000000Z-x.duckdb"]
    assert sorted(p.name[:9] for p in snaps.iterdir()) == ["20260102T", "20260103T", "20260104T"]


def test_a_data_directory_of_the_single_file_layout_becomes_a_published_one(tmp_path):
    data = tmp_path / "data"
    _run(write_orders, WarehouseResource(database=str(data / "warehouse.duckdb")))
    warehouse = _published().PublishedWarehouse(database=str(data / "warehouse.duckdb"))
    _run(write_orders, warehouse)  # the working copy starts from the old file
    assert (data / "warehouse.duckdb").is_symlink()
    assert _run(read_orders, warehouse)["rows"] == "[1, 2]"
