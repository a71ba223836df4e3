"""Hostile names and secrets.

- Table and column names with quotes, spaces, semicolons, dots, SQL keywords and unicode go
  through extract, task SQL, the graph, LightGBM features and training as plain names.
- Label and entity SQL run only as one SELECT.
- A PostgreSQL password comes from the environment and is written nowhere: not in the data
  directory, the Dagster storage, MLflow, or the logs.
- torch.load never unpickles arbitrary objects; local servers bind 127.0.0.1.
"""

from __future__ import annotations

import ast
import os
import secrets
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from pipeline.graph.features import FeatureConfig
from pipeline.training.prepare import task_graph
from pipeline.training.zoo import GRAPH_MODELS
from pipeline.models.gbdt import GBDTConfig, train_gbdt
from pipeline.data.sources import open_source
from pipeline.data.spec import parse_spec
from pipeline.data.sqlutil import q
from pipeline.data.tasks import TaskError, build_task_table, load_examples
from pipeline.training.trainer import TrainConfig
from pipeline.training.zoo import make_trainer
from pipeline.data.warehouse import extract_table

REPO = Path(__file__).resolve().parents[1]
INJECTION = 'x"; DROP TABLE customers; --'
ORDERS = 'sales.örders; DROP TABLE "customers"; --'   # a table name
PK, FK, WHEN, OID = "select", 'c"id', "wh en", 'order"id'
CATEGORY, FLAG, DOTTED = "ünï cödé", "from", "a.b"


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _hostile_source(root: Path, customers: int = 150, orders: int = 1200) -> Path:
    rng = np.random.default_rng(1)
    src = root / "src"
    src.mkdir(parents=True)
    pq.write_table(pa.table({
        PK: np.arange(customers),
        INJECTION: rng.normal(size=customers),
        CATEGORY: rng.choice(["ä", "b", "c'; --"], customers),
        FLAG: rng.random(customers) < 0.5,
    }), src / "customers.parquet")
    start = np.datetime64("2024-01-01T00:00:00", "s")
    pq.write_table(pa.table({
        OID: np.arange(orders),
        FK: rng.integers(0, customers, orders),
        WHEN: start + np.sort(rng.integers(0, 365 * 86_400, orders)).astype("timedelta64[s]"),
        "group": rng.gamma(2.0, 10.0, orders),
        DOTTED: rng.choice(["web", "app"], orders),
    }), src / f"{ORDERS}.parquet")
    return src


def _label_sql() -> str:
    o, c = q(ORDERS), "customers"
    return (f"SELECT c.{q(PK)}, t.cutoff, (COUNT(o.{q(OID)}) = 0)::INTEGER AS label "
            f"FROM cutoffs t JOIN {c} c ON TRUE LEFT JOIN {o} o ON o.{q(FK)} = c.{q(PK)} "
            f"AND o.{q(WHEN)} > t.cutoff AND o.{q(WHEN)} <= t.window_end "
            f"WHERE EXISTS (SELECT 1 FROM {o} p WHERE p.{q(FK)} = c.{q(PK)} AND p.{q(WHEN)} <= t.cutoff) "
            "GROUP BY ALL")


def test_hostile_names_go_through_the_whole_pipeline(tmp_path):
    src = _hostile_source(tmp_path)
    spec = parse_spec({
        "name": "hostile", "source": {"kind": "parquet", "path": str(src)},
        "tables": {"customers": {"primary_key": PK},
                   ORDERS: {"primary_key": OID, "time_column": WHEN,
                            "foreign_keys": {FK: "customers"}}},
        "tasks": {"churn": {"type": "binary_classification", "entity_table": "customers",
                            "label_sql": _label_sql(), "horizon": "30d",
                            "val_cutoff": "latest - 60d", "test_cutoff": "latest - 30d",
                            "num_train_cutoffs": 3}},
    })
    task = spec.tasks["churn"]
    source = open_source(spec, tmp_path)
    con = duckdb.connect(str(tmp_path / "warehouse.duckdb"))
    for name in spec.extract_order():
        extract_table(con, spec, name, source.read(name), source.fingerprint(name))
    build_task_table(con, spec, task)
    graph = task_graph(con, spec, FeatureConfig(), tmp_path / "graphs")
    gbdt = train_gbdt(con, spec, task, False, GBDTConfig(n_estimators=20, num_threads=1))
    splits = {s: load_examples(con, task, s) for s in ("train", "val", "test")}

    # every table is intact: the names were data, never SQL
    tables = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables() "
                                        "WHERE schema_name = 'main'").fetchall()}
    assert {"customers", ORDERS, "task_churn"} <= tables
    assert con.execute("SELECT count(*) FROM customers").fetchall() == [(150,)]
    assert con.execute(f"SELECT count(*), count({q('__fk_' + FK)}) FROM {q(ORDERS)}").fetchall() == [
        (1200, 1200)]
    # ... and each hostile column is an ordinary feature
    names = graph.feature_meta["customers"]["names"]
    assert INJECTION in names["num"] and CATEGORY in names["cat"] and FLAG in names["num"]
    assert DOTTED in graph.feature_meta[ORDERS]["names"]["cat"]
    assert (ORDERS, FK, "customers") in graph.data.edge_types
    x = graph.data["customers"].x_num[:, names["num"].index(INJECTION)]
    assert x.std() > 0.1
    assert f"customers.{INJECTION}" in gbdt.feature_names
    assert any(n.startswith(f"{ORDERS}.{FK}: sum(group)") for n in gbdt.feature_names)
    con.close()

    for model in GRAPH_MODELS:  # node and edge types name modules: a dot in a name must not break them
        cfg = TrainConfig(model=model, hidden=8, layers=2, fanouts=(4, 2), heads=2, epochs=1,
                          batch_size=128, max_steps_per_epoch=1)
        result = make_trainer(graph.data, graph.feature_meta, task, splits, cfg, tmp_path / "ckpt",
                         progress=False).fit()
        assert np.isfinite(result.test_metrics["auroc"]), model


@pytest.mark.parametrize("sql", [
    "INSERT INTO customers SELECT * FROM customers",
    "CREATE TABLE stolen AS SELECT * FROM customers",
    "UPDATE customers SET customer_id = 0",
    "COPY customers TO '/tmp/relgraph_stolen.csv'",
    "ATTACH ':memory:' AS other",
    "PRAGMA enable_profiling",
    "SET threads = 1",
    "CALL pragma_version()",
    "SELECT 1; SELECT 2",
    "SELECT 1 AS customer_id, NULL AS cutoff, 0 AS label; DELETE FROM customers",
])
@pytest.mark.parametrize("field", ["label_sql", "entity_sql"])
def test_task_sql_runs_only_as_one_select(sql, field):
    ok = ("SELECT c.customer_id, t.cutoff, (c.customer_id % 2)::INTEGER AS label "
          "FROM cutoffs t JOIN customers c ON TRUE")
    sqls = {"label_sql": ok, field: sql}
    spec = parse_spec({
        "name": "t", "source": {"kind": "duckdb", "path": "x"},
        "tables": {"customers": {"primary_key": "customer_id"},
                   "orders": {"primary_key": "order_id", "time_column": "at"}},
        "tasks": {"t": {"type": "binary_classification", "entity_table": "customers",
                        "horizon": "1d", "val_cutoff": "latest - 2d", "test_cutoff": "latest - 1d",
                        "num_train_cutoffs": 1, **sqls}}})
    con = duckdb.connect()
    con.execute("CREATE TABLE customers AS SELECT range AS customer_id, range AS __id FROM range(6)")
    con.execute("CREATE TABLE orders AS SELECT range AS order_id, TIMESTAMP '2024-01-01' "
                "+ to_days(CAST(range AS INTEGER)) AS at FROM range(10)")
    tables = "SELECT table_name FROM duckdb_tables() WHERE NOT temporary ORDER BY 1"
    before = con.execute(tables).fetchall()
    with pytest.raises(TaskError, match=f"task t.{field}: must be exactly one SELECT statement"):
        build_task_table(con, spec, spec.tasks["t"])
    assert con.execute("SELECT sum(customer_id), count(*) FROM customers").fetchall() == [(15, 6)]
    # only the label table may be new (entity_sql runs after it is written)
    assert [r for r in con.execute(tables).fetchall() if r != ("task_t",)] == before
    assert con.execute("SELECT count(*) FROM duckdb_databases() WHERE NOT internal").fetchall() == [(1,)]
    assert not Path("/tmp/relgraph_stolen.csv").exists()


# ---------------------------------------------------------------------------------------
# Secrets


def _grep_tree(root: Path, needle: bytes) -> list[str]:
    hits = []
    for path in root.rglob("*"):
        if path.is_file() and needle in path.read_bytes():
            hits.append(str(path.relative_to(root)))
    return hits


def test_postgres_password_never_leaves_the_environment(pg_database, tmp_path, monkeypatch, capfd):
    import dagster as dg
    from dagster_duckdb import DuckDBResource

    from assets.definitions import dataset_assets
    from assets.resources import ComputeResource, MLflowResource, PathsResource

    admin, schema = pg_database.connection, pg_database.name
    role, password = f"relgraph_t_{uuid.uuid4().hex[:8]}", "pw-" + secrets.token_hex(12)
    admin.execute(f'CREATE ROLE "{role}" LOGIN PASSWORD \'{password}\'')
    try:
        admin.execute(f'CREATE TABLE "{schema}".customers (customer_id int PRIMARY KEY, country text)')
        admin.execute(f'CREATE TABLE "{schema}".orders (order_id int PRIMARY KEY, customer_id int, '
                      "ordered_at timestamp, amount double precision)")
        rng = np.random.default_rng(0)
        admin.execute(f'INSERT INTO "{schema}".customers SELECT g, (ARRAY[\'DE\',\'FR\'])[1 + g % 2] '
                      "FROM generate_series(1, 80) g")
        start = datetime(2024, 1, 1)
        with admin.cursor() as cur:
            cur.executemany(f'INSERT INTO "{schema}".orders VALUES (%s, %s, %s, %s)', [
                (i, int(c), start + timedelta(seconds=int(s)), float(a)) for i, (c, s, a) in enumerate(zip(
                    rng.integers(1, 81, 700), np.sort(rng.integers(0, 300 * 86_400, 700)),
                    rng.gamma(2.0, 10.0, 700)))])
        admin.execute(f'GRANT USAGE ON SCHEMA "{schema}" TO "{role}"')
        admin.execute(f'GRANT SELECT ON ALL TABLES IN SCHEMA "{schema}" TO "{role}"')

        host = pg_database.uri.split("@", 1)[1]
        churn = ("SELECT c.customer_id, t.cutoff, (COUNT(o.order_id) = 0)::INTEGER AS label "
                 "FROM cutoffs t JOIN customers c ON TRUE LEFT JOIN orders o ON "
                 "o.customer_id = c.customer_id AND o.ordered_at > t.cutoff AND "
                 "o.ordered_at <= t.window_end WHERE EXISTS (SELECT 1 FROM orders p WHERE "
                 "p.customer_id = c.customer_id AND p.ordered_at <= t.cutoff) GROUP BY ALL")
        spec = parse_spec({
            "name": "pgshop",
            "source": {"kind": "postgres", "uri": f"postgresql://{role}@{host}", "schema": schema,
                       "password_env": "RELGRAPH_TEST_SECRET"},
            "tables": {"customers": {"primary_key": "customer_id"},
                       "orders": {"primary_key": "order_id", "time_column": "ordered_at",
                                  "foreign_keys": {"customer_id": "customers"}}},
            "tasks": {"churn": {"type": "binary_classification", "entity_table": "customers",
                                "label_sql": churn, "horizon": "30d", "val_cutoff": "latest - 60d",
                                "test_cutoff": "latest - 30d", "num_train_cutoffs": 3}}})
        monkeypatch.setenv("RELGRAPH_TEST_SECRET", password)
        data, home = tmp_path / "data", tmp_path / "dagster"
        data.mkdir()
        home.mkdir()
        resources = {"paths": PathsResource(data_dir=str(data)),
                     "duckdb": DuckDBResource(database=str(data / "warehouse.duckdb")),
                     "mlflow": MLflowResource(tracking_uri=f"sqlite:///{data / 'mlflow' / 'mlflow.db'}"),
                     "compute": ComputeResource(device="cpu")}
        keys = [["pgshop", "customers"], ["pgshop", "orders"], ["pgshop", "churn"],
                ["pgshop", "graph"], ["pgshop", "churn", "lightgbm_flat"]]
        with dg.instance_for_test(temp_dir=str(home)) as instance:
            result = dg.materialize(dataset_assets(spec), selection=[dg.AssetKey(k) for k in keys],
                                    resources=resources, instance=instance,
                                    run_config={"ops": {"pgshop__churn__lightgbm_flat": {
                                        "config": {"gbdt_num_leaves": 7}}}})
            assert result.success
            events = instance.all_logs(result.run_id)
            assert any(e.dagster_event and e.dagster_event.event_type_value == "ASSET_MATERIALIZATION"
                       for e in events)
            stored = "\n".join(repr(e) for e in events)
        with duckdb.connect(str(data / "warehouse.duckdb"), read_only=True) as con:
            assert con.execute("SELECT count(*) FROM orders").fetchall() == [(700,)]
        assert (data / "mlflow" / "mlflow.db").exists()

        needle = password.encode()
        assert password not in stored, "a Dagster event holds the password"
        assert _grep_tree(data, needle) == [], "the data directory holds the password"
        assert _grep_tree(home, needle) == [], "the Dagster storage holds the password"
        out, err = capfd.readouterr()
        assert password not in out and password not in err, "the logs hold the password"
    finally:
        admin.execute(f'DROP OWNED BY "{role}"')
        admin.execute(f'DROP ROLE "{role}"')


# ---------------------------------------------------------------------------------------
# Code-base properties


def _project_files() -> list[Path]:
    return [p for d in ("pipeline", "assets", "bench", "deploy") for p in (REPO / d).rglob("*.py")]


def test_every_torch_load_uses_weights_only():
    calls, bad = 0, []
    for path in _project_files():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "load" and isinstance(node.func.value, ast.Name)
                    and node.func.value.id == "torch"):
                calls += 1
                safe = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant)
                           and k.value.value is True for k in node.keywords)
                if not safe:
                    bad.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert calls >= 3, "the scan found no torch.load at all; is it looking in the right place?"
    assert bad == [], f"torch.load without weights_only=True (unpickles arbitrary code): {bad}"



def test_registered_models_pickle_nothing_and_load_without_unpickling(tmp_path, monkeypatch):
    """The registry path: register_model logs a model from code (no python_model.pkl, no
    CloudPickle in its MLmodel), with no warning but the listed third-party ones (MLflow's
    CloudPickle and predict-type-hint warnings among what would fail), and loading it
    unpickles nothing (pickle.load and cloudpickle.load refuse)."""
    import json
    import pickle
    import warnings

    import cloudpickle
    import mlflow
    import yaml

    from pipeline.paths import DataPaths
    from pipeline.data.spec import load_spec
    from pipeline.serving.registry import RelgraphModel, load_version, register_model
    from pipeline.third_party_warnings import ignore_third_party_warnings
    from pipeline.training.tracking import Tracker, mlflow_uri

    spec = load_spec(REPO / "datasets" / "ecommerce.yaml")
    task = spec.task("customer_churn")
    paths = DataPaths(tmp_path / "data")
    tracker = Tracker(paths.mlflow_uri())
    run_id = tracker.client.create_run(tracker.experiment(spec.name, task.name)).info.run_id
    checkpoint = tmp_path / "lightgbm"
    checkpoint.mkdir()
    (checkpoint / "model.txt").write_text("tree\n")
    graph = paths.graphs / spec.name / "g1"
    graph.mkdir(parents=True)
    (graph / "meta.json").write_text(json.dumps({"hash": "g1", "fit_cutoff": "2025-01-01T00:00:00",
                                                 "feature_meta": {}, "encoders": {}}))
    result = {"model": "lightgbm", "graph_hash": "g1", "dagster_run_id": "d1",
              "runs": [{"metrics": {"val_auroc": 0.7}, "mlflow_run_id": run_id,
                        "checkpoint": str(checkpoint)}]}
    # the validation rows the model's signature and input example are read from
    with duckdb.connect(str(paths.warehouse)) as con:
        con.execute("""CREATE TABLE task_customer_churn AS SELECT 7::BIGINT AS customer_id,
                       0::BIGINT AS __entity_id, TIMESTAMP '2025-01-01' AS cutoff,
                       'val' AS split, 1 AS label""")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ignore_third_party_warnings()
        version = register_model(tracker, paths, spec, task, result)
    with mlflow_uri(tracker.tracking_uri):
        local = Path(mlflow.artifacts.download_artifacts(f"models:/relgraph-ecommerce-customer_churn/{version}"))
    flavor = yaml.safe_load((local / "MLmodel").read_text())["flavors"]["python_function"]
    assert "model_code_path" in flavor and "python_model" not in flavor, flavor
    assert not [p for p in local.rglob("*") if p.suffix in (".pkl", ".pickle")]

    def refuse(*args, **kwargs):
        raise AssertionError("loading a registered model unpickled something")

    for module in (pickle, cloudpickle):
        monkeypatch.setattr(module, "load", refuse)
        monkeypatch.setattr(module, "loads", refuse)
    model = load_version(tracker, "relgraph-ecommerce-customer_churn", version, paths.root)
    assert isinstance(model.unwrap_python_model(), RelgraphModel)
    assert model.unwrap_python_model().bundle.model == "lightgbm"

def test_local_servers_bind_loopback(monkeypatch):
    import assets.cli as cli

    started = []

    class Exited:
        pid = 2 ** 22 + 12_345  # no such process group: stopping it is a no-op

        def __init__(self, args, **kwargs):
            started.append(list(args))

        def poll(self):
            return 0

    monkeypatch.setattr(cli.subprocess, "Popen", Exited)
    monkeypatch.setenv("RELGRAPH_DATA", str(Path(os.environ.get("TMPDIR", "/tmp")) / "relgraph-ui-test"))
    assert cli.main(["ui"]) == 0
    dagster, mlflow = started
    assert dagster[dagster.index("-h") + 1] == "127.0.0.1"
    assert mlflow[mlflow.index("--host") + 1] == "127.0.0.1"
    for path in [*(REPO / d for d in ("pipeline", "assets")), REPO / "Makefile", REPO / "dagster.yaml"]:
        for f in ([path] if path.is_file() else path.rglob("*.py")):
            assert "0.0.0.0" not in f.read_text(), f"{f} binds every interface"
