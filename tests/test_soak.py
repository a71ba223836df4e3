"""Soak: the nightly job, night after night, with new rows each night (`make soak`).

Each night a day of orders lands in the parquet source; the `<dataset>_nightly_schedule`
is evaluated for that night's 02:00 tick and the new-data sensor with the cursor carried
over from the night before; the nightly job (from `build_definitions`) then runs in
process on one persistent Dagster instance (the repository's dagster.yaml: sqlite
storage, pools) with the tags of the night's run request. One night in the middle gets
no new rows: the sensor must stay quiet and the schedule still runs the job. Before
night ROLLBACK_NIGHT an operator rolls `champion` back to night 0's sage (as one would in
the MLflow UI); retention has deleted its checkpoint and graph by then, so the gate and
the predictions must score it from the registry's copy, on a graph rebuilt at its fit
cutoff, and retention must still hold afterwards.

To keep 20 nights affordable on 2 cores the run selects what the nightly job does for
two models (sage and lightgbm_flat): extract, task labels, graph, the two models,
evaluation, champion and predictions, with tiny training configs.

After every night: the warehouse (counts, dense ids, windows that move with the data,
predictions for every live entity), the results, the Dagster storage (every run
SUCCESS with its request's tags, the latest materializations from the last run, no pool
slot left claimed), the MLflow registry (two new versions a night, each from a finished
run; `champion` points at a version whose logged model still exists; the gate re-scored
the champion; the predictions came from the champion) and retention (newest 3 graphs and 3 checkpoint versions per
model) must hold, and the disk use of graphs + checkpoints + predictions must level off.
MLflow keeps everything (design.md), so its growth is reported, not bounded.

RELGRAPH_SOAK_NIGHTS (default 20) sets the number of nights; RELGRAPH_SOAK_REPORT, when
set, is a file to write the per-night sizes and times to (JSON). Run with -s to see them.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import time
from pathlib import Path

import dagster as dg
import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from shop import shop_spec

from assets.definitions import build_definitions
from pipeline.training.experiment import load_results
from pipeline.paths import DataPaths
from pipeline.serving.registry import CHALLENGER, CHAMPION, registered_name, version_uri
from pipeline.data.spec import load_spec
from pipeline.training.tracking import Tracker

pytestmark = pytest.mark.soak

REPO = Path(__file__).resolve().parents[1]
NIGHTS = int(os.environ.get("RELGRAPH_SOAK_NIGHTS", "20"))
CHURN = """SELECT c.customer_id, t.cutoff, (COUNT(o.order_id) = 0)::INTEGER AS label
FROM cutoffs t JOIN customers c ON TRUE
LEFT JOIN orders o ON o.customer_id = c.customer_id
     AND o.ordered_at > t.cutoff AND o.ordered_at <= t.window_end
WHERE EXISTS (SELECT 1 FROM orders p WHERE p.customer_id = c.customer_id
              AND p.ordered_at <= t.cutoff AND p.ordered_at > t.cutoff - INTERVAL 90 DAY)
GROUP BY ALL"""
MODELS = ("sage", "lightgbm_flat")
START = np.datetime64("2024-01-01T00:00:00", "s")
HISTORY_DAYS = 300
QUIET_NIGHT = NIGHTS // 2 if NIGHTS >= 3 else -1  # no rows land that day
WARM_UP = 4  # nights before the retained sets are full
ROLLBACK_NIGHT = WARM_UP + 1  # the champion is rolled back to night 0's sage before this run


def _orders(first_id: int, n: int, day0: int, days: int, rng) -> pa.Table:
    seconds = np.sort(rng.integers(day0 * 86_400, (day0 + days) * 86_400, n))
    return pa.table({"order_id": np.arange(first_id, first_id + n),
                     "customer_id": rng.integers(1, 201, n),
                     "ordered_at": START + seconds.astype("timedelta64[s]"),
                     "amount": np.round(rng.gamma(2.0, 20.0, n), 2)})


def _setup(root: Path) -> Path:
    rng = np.random.default_rng(0)
    src = root / "src"
    (src / "orders").mkdir(parents=True)
    pq.write_table(pa.table({"customer_id": np.arange(1, 201),
                             "country": rng.choice(["DE", "FR", "US"], 200)}),
                   src / "customers.parquet")
    pq.write_table(_orders(0, 2000, 0, HISTORY_DAYS, rng), src / "orders" / "part-000.parquet")
    spec = shop_spec("soak", src, CHURN)
    path = root / "soak.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _disk(*paths: Path) -> int:
    return sum(f.stat().st_size for p in paths for f in p.rglob("*") if f.is_file())


def _tick(night: int) -> dt.datetime:
    """02:00 UTC after the day whose orders landed on `night`."""
    day = START + np.timedelta64(HISTORY_DAYS + night, "D")
    return dt.datetime.fromisoformat(str(day)).replace(hour=2, tzinfo=dt.timezone.utc)


def _check_warehouse(paths: DataPaths, orders: int, night: int) -> tuple[str, str]:
    """Counts, ids, moving windows and predictions; returns the predictions' model version
    and model."""
    with duckdb.connect(str(paths.warehouse), read_only=True) as con:
        for table, rows in (("customers", 200), ("orders", orders)):
            raw, clean, rejected = (con.execute(f"SELECT count(*) FROM {rel}").fetchall()[0][0]
                                    for rel in (f"raw.{table}", table, f"rejected_{table}"))
            assert (raw, clean, rejected) == (rows, rows, 0), (night, table)
            assert con.execute(f"SELECT max(__id) + 1 = count(DISTINCT __id) FROM {table}"
                               ).fetchall() == [(True,)], (night, table)
        latest = con.execute("SELECT max(ordered_at) FROM orders").fetchall()[0][0]
        test_cutoff = con.execute("SELECT max(cutoff) FROM task_churn").fetchall()[0][0]
        assert (latest - test_cutoff).days == 30, night  # the windows move with the data
        live = con.execute("SELECT count(*) FROM task_churn_live").fetchall()[0][0]
        preds = con.execute("SELECT count(*), count(DISTINCT customer_id), count(score), "
                            "count(DISTINCT (model_version, model)), any_value(model_version), "
                            "any_value(model) FROM predictions_churn").fetchall()[0]
    assert live > 0 and preds[:3] == (live, live, live), (night, live, preds)
    assert preds[3] == 1, (night, preds)  # one model version scored every row
    return preds[4], preds[5]


def _check_registry(tracker: Tracker, run_id: str, night: int, predicted_by: tuple[str, str],
                    champion_meta: dict) -> dict:
    """The registry after a night; returns counts for the report."""
    client = tracker.client
    name = registered_name("soak", "churn")
    versions = list(client.search_model_versions(f"name = '{name}'"))
    assert len(versions) == len(MODELS) * (night + 1), (night, len(versions))
    tonight = [v for v in versions if v.tags.get("dagster_run_id") == run_id]
    assert sorted(v.tags["model"] for v in tonight) == sorted(MODELS), night
    for v in tonight:
        assert v.status == "READY", (night, v.version, v.status)
        run = client.get_run(v.run_id)
        assert run.info.status == "FINISHED", (night, v.version, run.info.status)
        assert run.data.tags["dagster_run_id"] == run_id and run.data.params["model"] == v.tags["model"]
    # the gate decided on tonight's best model: it is champion, or challenger
    gated = [v for v in tonight if "gate" in v.tags]
    assert len(gated) == 1 and gated[0].tags["gate"] in (CHAMPION, CHALLENGER), night
    # a champion that fails to score is replaced without a comparison: that must not happen
    assert "cannot score" not in gated[0].tags["gate_reason"], (night, gated[0].tags["gate_reason"])

    champion = tracker.alias_version(name, CHAMPION)
    assert champion is not None, night
    run = client.get_run(champion.run_id)
    assert run.info.status == "FINISHED", (night, champion.version)
    # the champion may be from an older night whose checkpoints retention has deleted:
    # the registry holds its own copy, which must still be there
    # (the sqlite registry returns no model_id on versions; the source names the model)
    logged = client.get_logged_model(champion.source.removeprefix("models:/"))
    assert logged.status == "READY" and logged.source_run_id == champion.run_id, night
    artifacts = Path(logged.artifact_location.removeprefix("file://"))
    packed = {p.name for p in (artifacts / "artifacts").iterdir()}
    assert (artifacts / "MLmodel").exists() and {"spec.yaml", "relgraph.json"} < packed, \
        (night, champion.version, artifacts, packed)
    if gated[0].tags["gate"] == CHAMPION:
        assert champion.version == gated[0].version, night
    else:
        assert tracker.alias_version(name, CHALLENGER).version == gated[0].version, night
    # Dagster's record of the gate and the predictions agree with the registry
    assert str(champion_meta["champion_version"].value) == str(champion.version), night
    assert predicted_by == (version_uri(name, str(champion.version)), champion.tags["model"]), \
        (night, predicted_by, champion.version)
    return {"versions": len(versions), "champion": f"v{champion.version} {champion.tags['model']}",
            "promoted": gated[0].tags["gate"] == CHAMPION}


def test_nightly_job_with_schedule_and_sensor_stays_consistent_and_disk_levels_off(
        tmp_path, monkeypatch):
    torch.set_num_threads(1)
    data, home = tmp_path / "data", tmp_path / "data" / "dagster"
    home.mkdir(parents=True)
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    # what `relgraph ui` / the daemon would see: everything under one data directory
    monkeypatch.setenv("RELGRAPH_DATA", str(data))
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RELGRAPH_CRON", raising=False)
    monkeypatch.delenv("RELGRAPH_TIMEZONE", raising=False)
    spec = load_spec(_setup(tmp_path))
    paths, tracker = DataPaths(data), Tracker.default(DataPaths(data))

    defs = build_definitions([spec])
    job = defs.resolve_job_def("soak_nightly")
    schedule = defs.resolve_schedule_def("soak_nightly_schedule")
    sensor = defs.resolve_sensor_def("soak_new_data")
    assert schedule.job_name == sensor.job_name == job.name
    keys = [dg.AssetKey(k) for k in (["soak", "customers"], ["soak", "orders"], ["soak", "churn"],
                                     ["soak", "graph"], *(["soak", "churn", m] for m in MODELS),
                                     ["soak", "churn", "evaluation"], ["soak", "churn", "champion"],
                                     ["soak", "churn", "predictions"])]
    assert set(keys) <= set(job.asset_layer.executable_asset_keys)
    small = {"epochs": 2, "hidden": 8, "layers": 1, "fanouts": [4], "batch_size": 128,
             "max_steps_per_epoch": 2}
    run_config = {"ops": {f"soak__churn__{m}": {"config": small} for m in MODELS}}

    rng = np.random.default_rng(1)
    orders, cursor, run_ids, run_keys, report = 2000, None, [], set(), []
    name, first_sage = registered_name("soak", "churn"), None
    with dg.DagsterInstance.from_config(str(home)) as instance:
        for night in range(NIGHTS):
            t0 = time.perf_counter()
            if night and night != QUIET_NIGHT:  # a new day of orders lands in the source
                pq.write_table(_orders(orders, 10, HISTORY_DAYS + night - 1, 1, rng),
                               spec.source.path / "orders" / f"part-{night:03d}.parquet")
                orders += 10

            with dg.build_schedule_context(instance=instance,
                                           scheduled_execution_time=_tick(night)) as ctx:
                scheduled = schedule.evaluate_tick(ctx).run_requests
            assert len(scheduled) == 1, night
            first = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, cursor=cursor))
            if night == QUIET_NIGHT:
                assert not first.run_requests and first.skip_message, night
            else:
                assert len(first.run_requests) == 1, night
                changed = first.run_requests[0].tags["relgraph/changed_tables"]
                assert changed == ("customers,orders" if night == 0 else "orders"), (night, changed)
                # a daemon drops a request whose run_key it has seen: every night needs a new one
                assert first.run_requests[0].run_key not in run_keys, night
                run_keys.add(first.run_requests[0].run_key)
            cursor = first.cursor
            # the schedule and the sensor take turns launching the night's run
            request = first.run_requests[0] if night % 2 and first.run_requests else scheduled[0]
            assert request.job_name in (None, job.name)
            if night == ROLLBACK_NIGHT:
                assert not Path(first_sage["checkpoint"]).exists(), "retention kept night 0's sage"
                tracker.client.set_registered_model_alias(name, CHAMPION, first_sage["version"])

            result = job.execute_in_process(instance=instance, run_config=run_config,
                                            tags=request.tags, asset_selection=keys)
            assert result.success, f"night {night}"
            run_ids.append(result.run_id)
            again = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, cursor=cursor))
            assert not again.run_requests and again.skip_message, f"night {night}: nothing changed"
            cursor = again.cursor

            # Dagster storage: every night's run, with its request's tags, and nothing held
            runs = instance.get_runs()
            assert sorted(r.run_id for r in runs) == sorted(run_ids), night
            assert all(r.status == dg.DagsterRunStatus.SUCCESS and r.job_name == job.name
                       for r in runs), night
            tags = instance.get_run_by_id(result.run_id).tags
            assert all(tags.get(k) == v for k, v in request.tags.items()), (night, tags)
            for key in keys:
                assert instance.get_latest_materialization_event(key).run_id == result.run_id, \
                    (night, key)
            for pool in ("warehouse", "gpu"):
                info = instance.event_log_storage.get_concurrency_info(pool)
                assert not info.claimed_slots and not info.pending_steps, (night, pool, info)

            predicted_by = _check_warehouse(paths, orders, night)
            results = load_results(paths, "soak", "churn", result.run_id)
            assert set(results) == set(MODELS), night
            for model, res in results.items():
                assert Path(res["runs"][0]["checkpoint"]).exists(), (night, model)
            champion_meta = instance.get_latest_materialization_event(
                dg.AssetKey(["soak", "churn", "champion"])).asset_materialization.metadata
            registry = _check_registry(tracker, result.run_id, night, predicted_by, champion_meta)
            tonight = {v.tags["model"]: v for v in tracker.client.search_model_versions(
                f"name = '{name}'") if v.tags["dagster_run_id"] == result.run_id}
            if night == 0:
                first_sage = {"version": tonight["sage"].version,
                              "checkpoint": results["sage"]["runs"][0]["checkpoint"]}
            if night == ROLLBACK_NIGHT:  # the gate compared tonight's best with the old sage
                reason = next(v.tags["gate_reason"] for v in tonight.values() if "gate" in v.tags)
                assert f"champion v{first_sage['version']} (sage)" in reason, reason

            graphs = sorted(p.name for p in (paths.graphs / "soak").iterdir())
            assert len(graphs) <= 3, f"night {night}: {len(graphs)} graphs kept, not the newest 3: {graphs}"
            for model in MODELS:
                versions = list((paths.checkpoints / "soak" / "churn" / model).iterdir())
                assert len(versions) <= 3, (night, model, versions)
            report.append({
                "night": night, "seconds": round(time.perf_counter() - t0, 1),
                "launched_by": "sensor" if "dagster/sensor_name" in request.tags else "schedule",
                "graphs": len(graphs),
                "kept_bytes": _disk(paths.graphs, paths.checkpoints, paths.predictions),
                "mlflow_bytes": _disk(paths.mlflow), "dagster_bytes": _disk(home),
                "warehouse_bytes": paths.warehouse.stat().st_size, **registry})
            print(json.dumps(report[-1]), flush=True)

    # the storage as the next process finds it
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert sorted(r.run_id for r in instance.get_runs()) == sorted(run_ids)
    if os.environ.get("RELGRAPH_SOAK_REPORT"):
        Path(os.environ["RELGRAPH_SOAK_REPORT"]).write_text(json.dumps(report, indent=1))

    # disk use levels off: once the retained sets are full, it grows no more than the rows do
    if NIGHTS >= 2 * WARM_UP:
        settled = [r["kept_bytes"] for r in report[WARM_UP:]]
        assert max(settled) <= 1.2 * min(settled), [r["kept_bytes"] for r in report]
