"""The deployment's services on this machine's PostgreSQL (RELGRAPH_TEST_PG_URI, default
postgresql://postgres@127.0.0.1:5432/test; skipped without a server, failed under CI=true):

- deploy/dagster.yaml as the instance, the run launcher swapped for the local one: a job
  launched the way the UI launches it waits in the run queue, the daemon's queue
  iteration starts it, its two steps of the pool `warehouse` take turns, and their
  output is kept by the instance's compute log manager;
- TLS to PostgreSQL follows PGSSLMODE (the image sets `require`; this server has no TLS,
  so the other tests set `disable`);
- deploy/mlflow-server.sh serves its health endpoint, refuses unknown Host headers and
  proxies artifacts to a local artifact root.
"""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import dagster as dg
import psutil
import pytest
import yaml

from test_deploy import pg_server_database  # noqa: F401  (the fixture pg builds on)

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
LOCAL_LAUNCHER = {"module": "dagster.core.launcher", "class": "DefaultRunLauncher"}


@pytest.fixture
def pg(pg_server_database, monkeypatch):
    """A fresh database on the test server (dropped after); DAGSTER_PG_* point at it."""
    server = pg_server_database
    db = {"host": server.host, "port": str(server.port), "user": server.user,
          "password": server.password, "name": server.name}
    for key, value in {"DAGSTER_PG_HOST": db["host"], "DAGSTER_PG_PORT": db["port"],
                       "DAGSTER_PG_USERNAME": db["user"], "DAGSTER_PG_PASSWORD": db["password"],
                       "DAGSTER_PG_DB": db["name"], "PGSSLMODE": "disable"}.items():
        monkeypatch.setenv(key, value)
    return db


def _home(tmp_path: Path) -> Path:
    """A DAGSTER_HOME with deploy/dagster.yaml, its run launcher the local one (which cannot
    resume a lost run worker, so run monitoring resumes none)."""
    pytest.importorskip("dagster_postgres", reason="dagster-postgres is not installed")
    config = yaml.safe_load((DEPLOY / "dagster.yaml").read_text())
    config["run_launcher"] = LOCAL_LAUNCHER
    config["run_monitoring"]["max_resume_run_attempts"] = 0
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    return home


SMALL_JOB = '''
import json, time
from pathlib import Path
import dagster as dg

OUT = Path({out!r})

def step(name):
    @dg.asset(name=name, pool="warehouse")
    def _step():
        start = time.time()
        print(f"{{name}} writes the warehouse", flush=True)
        time.sleep(0.5)
        (OUT / f"{{name}}.json").write_text(json.dumps([start, time.time()]))
    return _step

defs = dg.Definitions(assets=[step("first"), step("second")],
                      jobs=[dg.define_asset_job("small", selection="*")])
'''

LAUNCH = """
mutation($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId status } }
    ... on PythonError { message }
  }
}"""


def test_queued_run_on_the_deploy_instance_and_postgres(pg, tmp_path, monkeypatch):
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import PythonFileTarget
    from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import (
        QueuedRunCoordinatorDaemon)
    from dagster_graphql.test.utils import execute_dagster_graphql

    logs, out = tmp_path / "compute-logs", tmp_path / "out"
    out.mkdir()
    monkeypatch.setenv("DAGSTER_COMPUTE_LOG_DIR", str(logs))
    code = tmp_path / "small.py"
    code.write_text(SMALL_JOB.format(out=str(out)))
    instance = dg.DagsterInstance.from_config(str(_home(tmp_path)))
    try:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        target = PythonFileTarget(python_file=str(code), attribute=None,
                                  working_directory=str(tmp_path), location_name="small")
        with WorkspaceProcessContext(instance, target) as workspace:
            launched = execute_dagster_graphql(workspace.create_request_context(), LAUNCH, {
                "params": {"selector": {"repositoryLocationName": "small",
                                        "repositoryName": "__repository__", "jobName": "small"},
                           "runConfigData": {}}}).data["launchRun"]
            assert launched["__typename"] == "LaunchRunSuccess", launched
            run_id = launched["run"]["runId"]
            assert launched["run"]["status"] == "QUEUED"  # the run queue holds it ...
            list(QueuedRunCoordinatorDaemon(interval_seconds=1).run_iteration(workspace))
            deadline = time.monotonic() + 120
            while not instance.get_run_by_id(run_id).is_finished:  # ... the daemon starts it
                assert time.monotonic() < deadline, "the run did not finish in 120 s"
                time.sleep(0.5)
            servers = [p for p in psutil.Process().children(recursive=True)
                       if str(code) in " ".join(p.cmdline())]
        # The code server leaves once it has seen its run's process end (which it checks in
        # the database): wait for it while the database is still there.
        _, alive = psutil.wait_procs(servers, timeout=30)
        for server in alive:
            server.kill()
        run = instance.get_run_by_id(run_id)
        assert run.status == dg.DagsterRunStatus.SUCCESS
        runs = [e.dagster_event.event_type_value for e in instance.all_logs(run_id)
                if e.dagster_event and e.dagster_event.event_type_value.startswith("PIPELINE_")]
        assert runs == ["PIPELINE_ENQUEUED", "PIPELINE_STARTING", "PIPELINE_START",
                        "PIPELINE_SUCCESS"], runs
        # The pool `warehouse` (default limit 1) made the two independent steps take turns.
        (a0, a1), (b0, b1) = sorted(json.loads((out / f"{s}.json").read_text())
                                    for s in ("first", "second"))
        assert a1 <= b0, "two steps of the pool warehouse ran at once"
        assert instance.event_log_storage.get_concurrency_info("warehouse").slot_count == 1
        # Step output, where the UI reads it.
        captured = [p.read_text() for p in logs.rglob("*.out")]
        assert any("first writes the warehouse" in text for text in captured), captured
    finally:
        instance.dispose()


def test_postgres_tls_follows_pgsslmode(pg, tmp_path, monkeypatch):
    """The URL Dagster builds from deploy/dagster.yaml leaves TLS to PGSSLMODE."""
    import sqlalchemy
    from dagster._config import process_config
    from dagster_postgres import DagsterPostgresStorage
    from dagster_postgres.utils import pg_url_from_config

    monkeypatch.setenv("DAGSTER_COMPUTE_LOG_DIR", str(tmp_path / "logs"))
    storage = yaml.safe_load((DEPLOY / "dagster.yaml").read_text())["storage"]["postgres"]
    engine = sqlalchemy.create_engine(pg_url_from_config(
        process_config(DagsterPostgresStorage.config_type(), storage).value))
    try:
        monkeypatch.setenv("PGSSLMODE", "require")  # the image's default
        with pytest.raises(sqlalchemy.exc.OperationalError,
                           match="server does not support SSL, but SSL was required"):
            engine.connect()
        monkeypatch.setenv("PGSSLMODE", "disable")
        with engine.connect() as con:
            assert con.execute(sqlalchemy.text("SELECT 1")).scalar() == 1
    finally:
        engine.dispose()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, host: str | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_mlflow_server_script_on_postgres(pg, tmp_path):
    port = _free_port()
    allowed = f"mlflow.relgraph.svc:{port}"  # the Service name clients use, and this test's
    artifacts = tmp_path / "artifacts"
    env = {**os.environ, "MLFLOW_DB_HOST": pg["host"], "MLFLOW_DB_PORT": pg["port"],
           "MLFLOW_DB_USER": pg["user"], "MLFLOW_DB_PASSWORD": pg["password"] or "unused",
           "MLFLOW_DB_NAME": pg["name"], "MLFLOW_ARTIFACTS_DESTINATION": artifacts.as_uri(),
           "MLFLOW_PORT": str(port), "MLFLOW_WORKERS": "1",
           "MLFLOW_ALLOWED_HOSTS": f"{allowed},127.0.0.1:{port}",
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    server = subprocess.Popen([str(DEPLOY / "mlflow-server.sh")], env=env, cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert server.poll() is None, server.stdout.read()[-3000:]
            assert time.monotonic() < deadline, "mlflow-server.sh did not answer in 90 s"
            try:
                if _get(f"{base}/health") == (200, "OK"):
                    break
            except OSError:
                pass
            time.sleep(0.5)
        search = f"{base}/api/2.0/mlflow/experiments/search?max_results=5"
        assert _get(search, host=allowed)[0] == 200
        status, body = _get(search, host="attacker.example.com")
        assert status == 403 and "Invalid Host header" in body

        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=base)
        experiment = client.create_experiment("relgraph/shop/churn")
        assert client.get_experiment(experiment).artifact_location.startswith("mlflow-artifacts:")
        run = client.create_run(experiment)
        note = tmp_path / "note.txt"
        note.write_text("served")
        client.log_artifact(run.info.run_id, str(note))
        [stored] = list(artifacts.rglob("note.txt"))
        assert stored.read_text() == "served"
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
