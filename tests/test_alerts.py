"""Alerts: the run-failure sensor posts to a webhook; freshness checks on sources and champions."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import dagster as dg
import pytest

from assets.checks import FreshnessConfig, freshness_checks
from assets.sensors import run_failure_alert
from pipeline.data.spec import load_spec, parse_spec

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


def _freshness(specs, config):
    checks = freshness_checks(specs, config)
    return {key.asset_key.to_user_string(): (check, key) for check in checks for key in check.check_keys}


def test_freshness_checks_cover_sources_and_champions_with_their_lags(monkeypatch):
    spec = load_spec(REPO / "datasets" / "ecommerce.yaml")
    monkeypatch.setenv("RELGRAPH_SOURCE_MAX_LAG_HOURS", "5")
    monkeypatch.setenv("RELGRAPH_CHAMPION_MAX_LAG_HOURS", "72")
    config = FreshnessConfig.from_env()
    assert (config.source_max_lag_hours, config.champion_max_lag_hours) == (5.0, 72.0)
    checks = _freshness([spec], config)
    expected = {f"ecommerce/{t}" for t in spec.tables} | {f"ecommerce/{t}/champion" for t in spec.tasks}
    assert set(checks) == expected
    def lag_seconds(key: str) -> float:
        check, check_key = checks[key]
        (meta,) = [s.metadata for s in check.check_specs if s.key == check_key]
        return next(v.data["lower_bound_delta_seconds"] for v in meta.values()
                    if isinstance(v, dg.JsonMetadataValue))

    assert lag_seconds("ecommerce/orders") == 5 * 3600
    assert lag_seconds("ecommerce/customer_churn/champion") == 72 * 3600


def test_bad_lag_setting_is_named(monkeypatch):
    monkeypatch.setenv("RELGRAPH_SOURCE_MAX_LAG_HOURS", "soon")
    with pytest.raises(ValueError, match="RELGRAPH_SOURCE_MAX_LAG_HOURS must be a number of hours"):
        FreshnessConfig.from_env()


def test_freshness_fails_until_the_asset_is_materialized(tmp_path):
    spec = parse_spec({"name": "shop", "source": {"kind": "parquet", "path": str(tmp_path)},
                       "tables": {"customers": {"primary_key": "customer_id"}}})

    @dg.asset(key=["shop", "customers"])
    def customers():
        return 1

    checks = freshness_checks([spec], FreshnessConfig(source_max_lag_hours=1))
    selection = [k for c in checks for k in c.check_keys]
    assert [k.asset_key.to_user_string() for k in selection] == ["shop/customers"]
    with dg.instance_for_test() as instance:
        only_checks = dg.AssetSelection.checks(*selection)
        before = dg.materialize([customers, *checks], instance=instance, selection=only_checks)
        (stale,) = before.get_asset_check_evaluations()
        assert not stale.passed and stale.severity == dg.AssetCheckSeverity.WARN
        dg.materialize([customers], instance=instance)
        after = dg.materialize([customers, *checks], instance=instance, selection=only_checks)
        (fresh,) = after.get_asset_check_evaluations()
        assert fresh.passed
