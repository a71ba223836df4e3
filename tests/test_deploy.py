"""Deployment (deploy/): the Kubernetes instance and code location validate with Dagster's own
config machinery, and the Dagster instance and MLflow run on a real PostgreSQL server.
(test_deploy_k8s.py: the Helm values rendered and the step pods built; test_deploy_services.py:
the run queue, TLS and the MLflow server; test_deploy_image.py: the images;
test_deploy_warehouse.py: warehouse access.)

The Kubernetes tests need dagster-k8s and dagster-postgres and are skipped without them.
The PostgreSQL tests create a database of their own on the server of
RELGRAPH_TEST_PG_URI (default postgresql://postgres@127.0.0.1:5432/test) and drop it
afterwards; with no server they are skipped, under CI=true they fail.
"""

from __future__ import annotations

import os
import runpy
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit

import dagster as dg
import pytest
import yaml

from conftest import PG_URI_DEFAULT, PG_URI_ENV, _no_server
from assets.definitions import dataset_assets
from pipeline.data.spec import load_spec
from pipeline.training.tracking import Tracker
from test_dagster import _resources, _write_shop

from pipeline.training.zoo import GRAPH_MODELS

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"


@dataclass
class PgDatabase:
    host: str
    port: int
    user: str
    password: str
    name: str

    def env(self) -> dict[str, str]:
        """The variables deploy/dagster.yaml reads its storage from."""
        return {"DAGSTER_PG_HOST": self.host, "DAGSTER_PG_PORT": str(self.port),
                "DAGSTER_PG_USERNAME": self.user, "DAGSTER_PG_PASSWORD": self.password,
                "DAGSTER_PG_DB": self.name}

    def uri(self, scheme: str = "postgresql") -> str:
        auth = quote(self.user, safe="") + (f":{quote(self.password, safe='')}" if self.password else "")
        return f"{scheme}://{auth}@{self.host}:{self.port}/{self.name}"


@pytest.fixture
def pg_server_database():
    """A fresh database on the test PostgreSQL server, dropped (with its connections) after."""
    psycopg = pytest.importorskip("psycopg")
    uri = os.environ.get(PG_URI_ENV, PG_URI_DEFAULT)
    try:
        admin = psycopg.connect(uri, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        _no_server("PostgreSQL", PG_URI_ENV, uri, str(exc).strip().splitlines()[0])
    parts = urlsplit(uri)
    db = PgDatabase(host=parts.hostname or "127.0.0.1", port=parts.port or 5432,
                    user=parts.username or "postgres", password=parts.password or "",
                    name=f"relgraph_test_{uuid.uuid4().hex[:12]}")
    admin.execute(f'CREATE DATABASE "{db.name}"')
    try:
        yield db
    finally:
        admin.execute(f'DROP DATABASE "{db.name}" WITH (FORCE)')
        admin.close()


def _query(db: PgDatabase, sql: str, params=()) -> list[tuple]:
    import psycopg

    with psycopg.connect(db.uri(), autocommit=True) as con:
        return con.execute(sql, params).fetchall()


def _deploy_instance_yaml() -> dict:
    return yaml.safe_load((DEPLOY / "dagster.yaml").read_text())


# ---------------------------------------------------------------------------------------
# Kubernetes configuration


def test_kubernetes_instance_config_validates(tmp_path, monkeypatch):
    pytest.importorskip("dagster_k8s", reason="dagster-k8s is not installed")
    pytest.importorskip("dagster_postgres", reason="dagster-postgres is not installed")
    from dagster._config import process_config
    from dagster._core.instance.config import dagster_instance_config
    from dagster_k8s import K8sRunLauncher
    from dagster_postgres import DagsterPostgresStorage
    from dagster_postgres.utils import pg_url_from_config

    env = PgDatabase("pg.internal", 6543, "dagster", "p@ss word", "dagster").env()
    for key, value in {**env, "DAGSTER_K8S_NAMESPACE": "relgraph"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("DAGSTER_COMPUTE_LOG_DIR", str(tmp_path / "compute-logs"))
    shutil.copy(DEPLOY / "dagster.yaml", tmp_path / "dagster.yaml")
    config, custom_class = dagster_instance_config(str(tmp_path))
    assert custom_class is None
    assert config["concurrency"]["pools"]["default_limit"] == 1
    assert config["run_monitoring"]["enabled"] and config["run_retries"]["max_retries"] == 1

    launcher = config["run_launcher"]
    assert (launcher["module"], launcher["class"]) == ("dagster_k8s", "K8sRunLauncher")
    resolved = process_config(K8sRunLauncher.config_type(), launcher["config"])
    assert resolved.success, resolved.errors
    assert resolved.value["job_namespace"] == "relgraph"
    assert resolved.value["volume_mounts"] == [{"name": "relgraph-data", "mount_path": "/data"}]
    assert "RELGRAPH_DATA=/data" in resolved.value["env_vars"]

    storage = process_config(DagsterPostgresStorage.config_type(), config["storage"]["postgres"])
    assert storage.success, storage.errors
    # no sslmode in the URL: libpq takes it from PGSSLMODE (the image sets require)
    assert pg_url_from_config(storage.value) == \
        "postgresql+psycopg2://dagster:p%40ss%20word@pg.internal:6543/dagster"

    # The validation is real: a misspelt key is refused.
    typo = {**launcher["config"], "job_namspace": "x"}
    assert not process_config(K8sRunLauncher.config_type(), typo).success


def test_k8s_code_location_puts_graph_models_on_gpus(monkeypatch):
    pytest.importorskip("dagster_k8s", reason="dagster-k8s is not installed")
    from dagster._config import process_config
    from dagster_k8s import k8s_job_executor

    monkeypatch.setenv("RELGRAPH_DATASETS", str(REPO / "datasets" / "ecommerce.yaml"))
    monkeypatch.syspath_prepend(str(REPO))  # deploy.warehouse
    location = runpy.run_path(str(DEPLOY / "k8s_definitions.py"))
    defs: dg.Definitions = location["defs"]
    job = defs.resolve_job_def("ecommerce_nightly")
    assert job.executor_def.name == "relgraph_k8s"
    config = location["executor_config"](defs)
    resolved = process_config(k8s_job_executor.config_schema.config_type, config)
    assert resolved.success, resolved.errors
    spec = load_spec(REPO / "datasets" / "ecommerce.yaml")
    want = {f"ecommerce__{task}__{model}" for task in spec.tasks for model in GRAPH_MODELS}
    gpu_steps = resolved.value["per_step_k8s_config"]
    assert set(gpu_steps) == want  # no LightGBM, extract, graph or evaluation step
    limits = gpu_steps["ecommerce__customer_churn__sage"]["container_config"]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == 1


# ---------------------------------------------------------------------------------------
# The real PostgreSQL server


def test_dagster_instance_runs_on_postgres(pg_server_database, tmp_path, monkeypatch):
    """deploy/dagster.yaml's storage (run launcher aside: it needs a cluster) on a real server:
    a run of the extract assets leaves its run, events and asset records there."""
    pytest.importorskip("dagster_postgres", reason="dagster-postgres is not installed")
    db = pg_server_database
    for key, value in db.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("DAGSTER_COMPUTE_LOG_DIR", str(tmp_path / "compute-logs"))
    config = {k: v for k, v in _deploy_instance_yaml().items() if k != "run_launcher"}
    # Only the K8sRunLauncher can resume a run whose worker died; the default one cannot.
    config["run_monitoring"]["max_resume_run_attempts"] = 0
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    spec = load_spec(_write_shop(tmp_path))
    (tmp_path / "data").mkdir()
    instance = dg.DagsterInstance.from_config(str(home))
    try:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        result = dg.materialize(dataset_assets(spec), instance=instance, resources=_resources(tmp_path),
                                selection=[dg.AssetKey([spec.name, t]) for t in spec.tables])
        assert result.success
    finally:
        instance.dispose()

    run_id = result.run_id
    assert _query(db, "SELECT status FROM runs WHERE run_id = %s", (run_id,)) == [("SUCCESS",)]
    events = dict(_query(db, "SELECT dagster_event_type, count(*) FROM event_logs WHERE run_id = %s "
                             "GROUP BY 1", (run_id,)))
    # PIPELINE_SUCCESS is the stored name of RUN_SUCCESS.
    assert events["ASSET_MATERIALIZATION"] == 2 and events["PIPELINE_SUCCESS"] == 1
    assert events["ASSET_CHECK_EVALUATION"] == 6  # customers: 2 checks, orders: 4
    # The pool "warehouse" took its default limit (1) and its slot is free again.
    assert _query(db, 'SELECT concurrency_key, "limit" FROM concurrency_limits') == [("warehouse", 1)]
    assert _query(db, "SELECT count(*) FILTER (WHERE run_id IS NULL), count(*) FROM concurrency_slots "
                      "WHERE concurrency_key = 'warehouse'") == [(1, 1)]
    keys = {r[0] for r in _query(db, "SELECT asset_key FROM asset_keys")}
    assert {'["shop", "customers"]', '["shop", "orders"]'} <= keys
    # A second instance on the same database (another pod) sees the same history.
    again = dg.DagsterInstance.from_config(str(home))
    try:
        record = again.get_latest_materialization_event(dg.AssetKey(["shop", "orders"]))
        assert record is not None and record.run_id == run_id
        assert record.asset_materialization.metadata["rows"].value == 5
    finally:
        again.dispose()


def test_mlflow_tracks_into_postgres(pg_server_database, tmp_path):
    """The tracking store of deploy/mlflow-server.sh (psycopg 3 dialect) with our Tracker."""
    db = pg_server_database
    uri = db.uri("postgresql+psycopg")
    tracker = Tracker(uri, artifact_root=tmp_path / "artifacts")
    tracker.check()
    experiment = tracker.experiment("shop", "churn")
    parent = tracker.parent_run(experiment, "run-1234", {"dataset": "shop", "task": "churn"})
    plot = tmp_path / "curves.txt"
    plot.write_text("epoch,loss\n0,0.9\n1,0.7\n")
    child = tracker.log_model_run(
        experiment, parent, model="sage", params={"hidden": 64, "lr": 0.001},
        history=[{"epoch": 0, "train_loss": 0.9, "val_auroc": 0.61},
                 {"epoch": 1, "train_loss": 0.7, "val_auroc": 0.66}],
        metrics={"val_auroc": 0.66, "test_auroc": 0.64}, tags={"dataset": "shop"}, artifacts=[plot])
    assert tracker.parent_run(experiment, "run-1234", {}) == parent  # found again, not new

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(child)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"model": "sage", "hidden": "64", "lr": "0.001"}
    assert run.data.metrics["test_auroc"] == 0.64 and run.data.tags["mlflow.parentRunId"] == parent
    history = client.get_metric_history(child, "train_loss")
    assert [(m.step, m.value) for m in history] == [(0, 0.9), (1, 0.7)]
    assert [a.path for a in client.list_artifacts(child)] == ["curves.txt"]
    assert client.get_experiment(experiment).name == "relgraph/shop/churn"
    # ... and the rows are in PostgreSQL.
    assert _query(db, "SELECT count(*) FROM runs WHERE experiment_id = %s", (int(experiment),)) == [(2,)]
    assert _query(db, "SELECT value FROM params WHERE run_uuid = %s AND key = 'model'", (child,)) == \
        [("sage",)]
