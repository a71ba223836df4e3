"""Alerts: the run-failure sensor posts to a webhook; freshness policies on sources and champions."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import dagster as dg
import pytest

from assets.freshness import FreshnessConfig
from assets.sensors import run_failure_alert
from pipeline.data.spec import load_spec

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def receiver():
    """A webhook on 127.0.0.1 that records every JSON body POSTed to it."""
    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/hook", received
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@dg.op
def extract_orders():
    raise RuntimeError("orders.customer_id: 12 rows reference customers that do not exist")


@dg.job
def broken_job():
    extract_orders()


def _failure_context(instance: dg.DagsterInstance):
    result = broken_job.execute_in_process(instance=instance, raise_on_error=False)
    assert not result.success
    run = instance.get_run_by_id(result.run_id)
    (failure,) = [e for e in instance.all_logs(result.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)]
    return dg.build_run_status_sensor_context(
        sensor_name=run_failure_alert.name, dagster_event=failure.dagster_event,
        dagster_instance=instance, dagster_run=run).for_run_failure(), result.run_id


def test_failed_run_is_posted_and_recorded(receiver, monkeypatch, tmp_path):
    url, received = receiver
    monkeypatch.setenv("RELGRAPH_ALERT_WEBHOOK", url)
    monkeypatch.setenv("RELGRAPH_DATA", str(tmp_path))
    with dg.instance_for_test() as instance:
        context, run_id = _failure_context(instance)
        run_failure_alert(context)
    assert len(received) == 1
    alert = received[0]
    assert alert["run_id"] == run_id and alert["job"] == "broken_job"
    assert "extract_orders" in alert["reason"]
    lines = (tmp_path / "alerts.jsonl").read_text().splitlines()
    assert [json.loads(line)["run_id"] for line in lines] == [run_id]


def test_unreachable_webhook_still_records_and_does_not_raise(receiver, monkeypatch, tmp_path):
    url, received = receiver
    monkeypatch.setenv("RELGRAPH_ALERT_WEBHOOK", "http://127.0.0.1:9/nobody-listens")
    monkeypatch.setenv("RELGRAPH_DATA", str(tmp_path))
    with dg.instance_for_test() as instance:
        context, run_id = _failure_context(instance)
        run_failure_alert(context)
    assert not received
    assert json.loads((tmp_path / "alerts.jsonl").read_text())["run_id"] == run_id


_FRESH_DEFS = """
import dagster as dg
from assets.freshness import FreshnessConfig, with_freshness
from pipeline.data.spec import parse_spec

spec = parse_spec({"name": "shop", "source": {"kind": "parquet", "path": "."},
                   "tables": {"customers": {"primary_key": "customer_id"}}})

@dg.asset(key=["shop", "customers"])
def customers():
    return 1

defs = dg.Definitions(assets=with_freshness(spec, [customers], FreshnessConfig(source_max_lag_hours=1)))
"""


def test_freshness_policies_cover_sources_and_champions_with_their_lags(monkeypatch):
    from datetime import timedelta

    from assets.definitions import build_definitions

    spec = load_spec(REPO / "datasets" / "ecommerce.yaml")
    monkeypatch.setenv("RELGRAPH_SOURCE_MAX_LAG_HOURS", "5")
    monkeypatch.setenv("RELGRAPH_CHAMPION_MAX_LAG_HOURS", "72")
    config = FreshnessConfig.from_env()
    assert (config.source_max_lag_hours, config.champion_max_lag_hours) == (5.0, 72.0)
    graph = build_definitions([spec], executor=None).resolve_asset_graph()
    policies = {n.key.to_user_string(): n.freshness_policy for n in graph.asset_nodes
                if n.freshness_policy is not None}
    expected = {f"ecommerce/{t}" for t in spec.tables} | {f"ecommerce/{t}/champion" for t in spec.tasks}
    assert set(policies) == expected
    orders, churn = policies["ecommerce/orders"], policies["ecommerce/customer_churn/champion"]
    assert orders.fail_window.to_timedelta() == timedelta(hours=5)
    assert orders.warn_window.to_timedelta() == timedelta(hours=2.5)
    assert churn.fail_window.to_timedelta() == timedelta(hours=72)


def test_bad_lag_setting_is_named(monkeypatch):
    monkeypatch.setenv("RELGRAPH_SOURCE_MAX_LAG_HOURS", "soon")
    with pytest.raises(ValueError, match="RELGRAPH_SOURCE_MAX_LAG_HOURS must be a number of hours"):
        FreshnessConfig.from_env()


def test_freshness_is_unknown_then_pass_then_fail_in_the_daemon(tmp_path):
    """The daemon's own evaluation (what the UI shows): UNKNOWN before the first
    materialization, PASS after it, WARN past half the lag, FAIL past the lag."""
    import time

    from dagster._core.definitions.freshness import FreshnessState
    from dagster._core.remote_origin import InProcessCodeLocationOrigin
    from dagster._core.test_utils import create_test_daemon_workspace_context, freeze_time
    from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
    from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget
    from dagster._daemon.freshness import FreshnessDaemon

    (tmp_path / "fresh_defs.py").write_text(_FRESH_DEFS)
    origin = InProcessCodeLocationOrigin(LoadableTargetOrigin(
        python_file=str(tmp_path / "fresh_defs.py"), attribute="defs", working_directory=str(REPO)))
    key = dg.AssetKey(["shop", "customers"])
    with dg.instance_for_test() as instance, create_test_daemon_workspace_context(
            InProcessWorkspaceLoadTarget(origin), instance) as workspace:
        def state(at: float) -> FreshnessState:
            with freeze_time(at):
                list(FreshnessDaemon().run_iteration(workspace))
            return instance.get_freshness_state_records([key])[key].freshness_state

        now = time.time()
        assert state(now) == FreshnessState.UNKNOWN
        instance.report_runless_asset_event(dg.AssetMaterialization(key))
        assert state(now + 60) == FreshnessState.PASS
        assert state(now + 45 * 60) == FreshnessState.WARN
        assert state(now + 2 * 3600) == FreshnessState.FAIL
