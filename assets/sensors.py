"""Sensors: new data in a source requests the nightly job; failed runs are recorded and alerted."""


import hashlib
import json
import os
import time
import urllib.request

import dagster as dg

from assets import names
from pipeline.paths import DataPaths
from pipeline.data.sources import open_source
from pipeline.data.spec import DatasetSpec


def new_data_sensor(spec: DatasetSpec, job) -> dg.SensorDefinition:
    """Compares every table's source fingerprint with the cursor; any change -> one run."""

    @dg.sensor(name=f"{names.group(spec)}_new_data", job=job, minimum_interval_seconds=300,
               default_status=dg.DefaultSensorStatus.STOPPED,
               description=f"Requests {job.name} when a table of the {spec.source.kind} source changes.")
    def _sensor(context: dg.SensorEvaluationContext):
        source = open_source(spec, DataPaths.from_env().root)
        prints = {t: source.fingerprint(t) for t in spec.tables}
        previous = json.loads(context.cursor) if context.cursor else {}
        changed = sorted(t for t, fp in prints.items() if previous.get(t) != fp)
        context.update_cursor(json.dumps(prints, sort_keys=True))
        if not changed:
            return dg.SkipReason("no table changed since the last check")
        digest = hashlib.sha256(json.dumps(prints, sort_keys=True).encode()).hexdigest()[:16]
        return dg.RunRequest(run_key=f"{spec.name}-{digest}",
                             tags={"relgraph/changed_tables": ",".join(changed)[:200]})

    return _sensor


def post_alert(url: str, payload: dict, timeout: float = 10.0) -> int:
    """POST a JSON alert; returns the HTTP status."""
    req = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return resp.status


@dg.run_failure_sensor(name="relgraph_run_failures", default_status=dg.DefaultSensorStatus.RUNNING,
                       description="Records each failed run in data/alerts.jsonl and POSTs it to "
                                   "$RELGRAPH_ALERT_WEBHOOK when set.")
def run_failure_alert(context: dg.RunFailureSensorContext):
    payload = {"run_id": context.dagster_run.run_id, "job": context.dagster_run.job_name,
               "reason": context.failure_event.message, "time": time.time()}
    log = DataPaths.from_env().root / "alerts.jsonl"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as fh:
        fh.write(json.dumps(payload) + "\n")
    url = os.environ.get("RELGRAPH_ALERT_WEBHOOK")
    if url:
        try:
            post_alert(url, payload)
        except OSError as exc:
            # The failure is already recorded; raising would fail the tick and, since the
            # cursor would not move, record and post this run again on every tick.
            context.log.error(f"alert webhook {url} did not take the alert for run "
                              f"{payload['run_id']}: {exc}")
