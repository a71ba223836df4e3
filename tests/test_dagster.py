"""The Dagster layer: definitions, extract assets and their checks, schedule and sensors."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from assets.definitions import build_definitions, dataset_assets
from assets.jobs import nightly_job
from assets.resources import ComputeResource, MLflowResource, PathsResource
from assets.schedules import nightly_schedule
from assets.sensors import new_data_sensor
from dagster_duckdb import DuckDBResource
from pipeline.data.spec import load_spec

REPO = Path(__file__).resolve().parent.parent


def _write_shop(root: Path, duplicate_pk: bool = False, orphan: bool = False) -> Path:
    src = root / "src"
    src.mkdir(parents=True)
    customers = {"customer_id": [1, 2, 3, 4], "country": ["DE", "FR", "DE", "US"]}
    if duplicate_pk:
        customers = {"customer_id": [1, 2, 3, 3], "country": ["DE", "FR", "DE", "US"]}
    orders = {"order_id": [10, 11, 12, 13, 14],
              "customer_id": [1, 2, 2, 99 if orphan else 3, 4],
              "ordered_at": ["2025-01-02 00:00:00", "2025-01-05 00:00:00", "2025-02-01 00:00:00",
               "2025-02-03 00:00:00", "2025-03-01 00:00:00"],
              "amount": [5.0, 7.5, 1.0, 3.0, 9.0]}
    pq.write_table(pa.table(customers), src / "customers.parquet")
    pq.write_table(pa.table(orders), src / "orders.parquet")
    spec = {"name": "shop", "source": {"kind": "parquet", "path": str(src)},
            "tables": {"customers": {"primary_key": "customer_id"},
                       "orders": {"primary_key": "order_id", "time_column": "ordered_at",
                                  "foreign_keys": {"customer_id": "customers"}}}}
    path = root / "shop.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _resources(root: Path) -> dict:
    return {"paths": PathsResource(data_dir=str(root / "data")),
            "duckdb": DuckDBResource(database=str(root / "data" / "warehouse.duckdb")),
            "mlflow": MLflowResource(tracking_uri=f"sqlite:///{root / 'mlflow.db'}"),
            "compute": ComputeResource()}


def _extract(root: Path, spec, raise_on_error: bool = True):
    (root / "data").mkdir(exist_ok=True)
    keys = [dg.AssetKey([spec.name, t]) for t in spec.tables]
    return dg.materialize(dataset_assets(spec), selection=keys, resources=_resources(root),
                          instance=dg.DagsterInstance.ephemeral(), raise_on_error=raise_on_error)


def _checks(result) -> dict[tuple[str, str], dg.AssetCheckEvaluation]:
    return {(e.asset_key.path[-1], e.check_name): e for e in result.get_asset_check_evaluations()}


def test_definitions_cover_every_stage():
    defs = build_definitions([load_spec(REPO / "datasets" / "ecommerce.yaml")])
    keys = {"/".join(k.path) for k in defs.resolve_asset_graph().get_all_asset_keys()}
    for key in ("ecommerce/customers", "ecommerce/orders", "ecommerce/order_items", "ecommerce/graph",
                "ecommerce/customer_churn", "ecommerce/customer_churn/sage",
                "ecommerce/customer_churn/lightgbm", "ecommerce/customer_churn/evaluation"):
        assert key in keys, key
    graph = defs.resolve_asset_graph()
    assert graph.get(dg.AssetKey(["ecommerce", "orders"])).pools == {"warehouse"}
    assert graph.get(dg.AssetKey(["ecommerce", "customer_churn", "gat"])).pools == {"gpu"}
    assert dg.AssetKey(["ecommerce", "customers"]) in graph.get(dg.AssetKey(["ecommerce", "orders"])).parent_keys
    # UI and scheduled runs fork their steps from a preloaded forkserver (the browser test
    # launches one); materialize() in the CLI and the tests runs in process regardless.
    assert defs.resolve_job_def("ecommerce_nightly").executor_def.name == "relgraph_local"


def test_checks_pass_on_clean_data(tmp_path):
    spec = load_spec(_write_shop(tmp_path))
    result = _extract(tmp_path, spec)
    checks = _checks(result)
    assert checks and all(c.passed for c in checks.values()), {k: c.description for k, c in checks.items()}
    con = duckdb.connect(str(tmp_path / "data" / "warehouse.duckdb"), read_only=True)
    assert con.execute("SELECT COUNT(*), MAX(__fk_customer_id) FROM orders").fetchall() == [(5, 3)]
    mats = result.asset_materializations_for_node("shop__orders")
    assert mats[-1].metadata["rows"].value == 5


def test_orphan_is_a_warn_check_and_the_row_is_kept(tmp_path):
    spec = load_spec(_write_shop(tmp_path, orphan=True))
    checks = _checks(_extract(tmp_path, spec))
    fk = checks[("orders", "foreign_keys")]
    assert not fk.passed and fk.severity == dg.AssetCheckSeverity.WARN
    assert "orders.customer_id" in fk.description and "1 row" in fk.description
    assert fk.metadata["rows_affected"].value == 1


def test_duplicate_key_is_an_error_check_and_stops(tmp_path):
    spec = load_spec(_write_shop(tmp_path, duplicate_pk=True))
    result = _extract(tmp_path, spec, raise_on_error=False)
    assert not result.success
    pk = _checks(result)[("customers", "primary_key")]
    assert not pk.passed and pk.severity == dg.AssetCheckSeverity.ERROR
    assert "customers.customer_id" in pk.description and "1 row repeats" in pk.description


def test_schedule_and_sensor_request_the_nightly_job(tmp_path, monkeypatch):
    monkeypatch.setenv("RELGRAPH_DATA", str(tmp_path / "data"))
    spec = load_spec(_write_shop(tmp_path))
    job = nightly_job(spec)
    schedule = nightly_schedule(job)
    assert schedule.cron_schedule == "0 2 * * *"
    defs = dg.Definitions(assets=dataset_assets(spec), jobs=[job], schedules=[schedule],
                          resources=_resources(tmp_path))
    with dg.build_schedule_context(scheduled_execution_time=None) as ctx:
        request = schedule.evaluate_tick(ctx).run_requests[0]
    # a schedule's request names no job when it is for the schedule's own job
    assert schedule.job_name == "shop_nightly" and request.job_name in (None, "shop_nightly")
    assert defs.resolve_job_def("shop_nightly") is not None

    sensor = new_data_sensor(spec, job)
    assert sensor.job_name == "shop_nightly"
    first = sensor.evaluate_tick(dg.build_sensor_context(cursor=None))
    assert len(first.run_requests) == 1
    cursor = first.cursor
    again = sensor.evaluate_tick(dg.build_sensor_context(cursor=cursor))
    assert not again.run_requests, "unchanged data must not request a run"
    orders = tmp_path / "src" / "orders.parquet"
    table = pq.read_table(orders)
    pq.write_table(pa.concat_tables([table, table.slice(0, 1)]), orders)
    changed = sensor.evaluate_tick(dg.build_sensor_context(cursor=cursor))
    assert len(changed.run_requests) == 1
    assert "orders" in changed.run_requests[0].tags["relgraph/changed_tables"]


def _dagster_cli(root: Path, spec_path: Path, select: str) -> tuple[subprocess.CompletedProcess, Path]:
    """`dagster asset materialize -m assets.definitions --select ...` as the README gives it,
    with its own DAGSTER_HOME and data directory; (the finished process, DAGSTER_HOME)."""
    home = root / "dagster"
    home.mkdir(parents=True)
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    env = {**os.environ, "DAGSTER_HOME": str(home), "RELGRAPH_DATA": str(root / "data"),
           "RELGRAPH_DATASETS": str(spec_path), "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}"}
    dagster = Path(sys.executable).parent / "dagster"
    proc = subprocess.run([str(dagster), "asset", "materialize", "-m", "assets.definitions",
                           "--select", select], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    return proc, home


def test_dagster_cli_materializes_the_synthetic_extracts_and_their_checks_pass(tmp_path, monkeypatch):
    """The README's `dagster asset materialize -m assets.definitions --select '*'`, on the
    synthetic database (small, without tasks so that '*' is the extracts and the graph)."""
    raw = yaml.safe_load((REPO / "datasets" / "ecommerce.yaml").read_text())
    raw["source"]["scale"] = 1_000
    raw.pop("tasks")
    spec_path = tmp_path / "ecommerce.yaml"
    spec_path.write_text(yaml.safe_dump(raw))
    proc, home = _dagster_cli(tmp_path, spec_path, "*")
    assert proc.returncode == 0, proc.stderr[-3000:]
    spec = load_spec(spec_path)
    with duckdb.connect(str(tmp_path / "data" / "warehouse.duckdb"), read_only=True) as con:
        for table in spec.tables:
            n = con.execute(f'SELECT count(*) FROM "{table}"').fetchall()[0][0]
            assert n > 0, f"{table} is empty"
        assert con.execute("SELECT count(*) FROM customers").fetchall() == [(1_000,)]
    monkeypatch.setenv("DAGSTER_HOME", str(home))  # the instance's dagster.yaml reads it
    with dg.DagsterInstance.from_config(str(home)) as instance:
        run, = instance.get_runs()
        assert run.status == dg.DagsterRunStatus.SUCCESS
        checks = [e.dagster_event.event_specific_data for e in instance.all_logs(
            run.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)]
    checked = {c.asset_key.path[-1] for c in checks}
    assert checked == set(spec.tables), checked
    assert all(c.passed for c in checks), [(c.asset_key, c.check_name, c.description)
                                           for c in checks if not c.passed]


def test_dagster_cli_stops_on_a_duplicated_key_and_names_it(tmp_path):
    proc, _ = _dagster_cli(tmp_path, _write_shop(tmp_path, duplicate_pk=True), "*")
    assert proc.returncode != 0
    assert "customers.customer_id" in proc.stdout + proc.stderr
    assert "1 row repeats" in proc.stdout + proc.stderr
