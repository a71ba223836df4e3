"""Soak: the nightly refresh, night after night, with new rows each night (`make soak`).

Each night appends a day of orders to the parquet source and materializes, in process and
on one persistent Dagster instance, what the nightly job runs for one task: extract, task
labels, graph, a graph model and a LightGBM baseline. After every night the warehouse, the
results and the Dagster storage must be consistent, and the disk use must level off
(the newest 3 graphs and checkpoint versions are kept).

RELGRAPH_SOAK_NIGHTS (default 20) sets the number of nights.
"""

from __future__ import annotations

import os
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
from dagster_duckdb import DuckDBResource

from assets.definitions import dataset_assets
from assets.resources import ComputeResource, MLflowResource, PathsResource
from pipeline.experiment import load_results
from pipeline.paths import DataPaths
from pipeline.spec import load_spec

pytestmark = pytest.mark.soak

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
    pq.write_table(_orders(0, 2000, 0, 300, rng), src / "orders" / "part-000.parquet")
    spec = shop_spec("soak", src, CHURN)
    path = root / "soak.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _disk(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def test_nightly_refresh_stays_consistent_and_disk_levels_off(tmp_path):
    torch.set_num_threads(1)
    spec = load_spec(_setup(tmp_path))
    data = tmp_path / "data"
    data.mkdir()
    paths = DataPaths(data)
    resources = {"paths": PathsResource(data_dir=str(data)),
                 "duckdb": DuckDBResource(database=str(paths.warehouse)),
                 "mlflow": MLflowResource(tracking_uri=paths.mlflow_uri()),
                 "compute": ComputeResource(device="cpu")}
    keys = [["soak", "customers"], ["soak", "orders"], ["soak", "churn"], ["soak", "graph"]]
    keys += [["soak", "churn", m] for m in MODELS]
    small = {"epochs": 2, "hidden": 8, "layers": 1, "fanouts": [4], "batch_size": 128,
             "max_steps_per_epoch": 2}
    run_config = {"ops": {f"soak__churn__{m}": {"config": small} for m in MODELS}}
    rng = np.random.default_rng(1)
    next_id, sizes, run_ids = 2000, [], []
    (tmp_path / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
        for night in range(NIGHTS):
            if night:  # a new day of orders lands in the source
                pq.write_table(_orders(next_id, 10, 300 + night - 1, 1, rng),
                               spec.source.path / "orders" / f"part-{night:03d}.parquet")
                next_id += 10
            result = dg.materialize(dataset_assets(spec), selection=[dg.AssetKey(k) for k in keys],
                                    resources=resources, instance=instance, run_config=run_config)
            assert result.success, f"night {night}"
            run_ids.append(result.run_id)

            with duckdb.connect(str(paths.warehouse), read_only=True) as con:
                for table, rows in (("customers", 200), ("orders", next_id)):
                    raw, clean, rejected = (con.execute(f"SELECT count(*) FROM {rel}").fetchall()[0][0]
                                            for rel in (f"raw.{table}", table, f"rejected_{table}"))
                    assert (raw, clean, rejected) == (rows, rows, 0), (night, table)
                    assert con.execute(f"SELECT max(__id) + 1 = count(DISTINCT __id) FROM {table}"
                                       ).fetchall() == [(True,)]
                latest = con.execute("SELECT max(ordered_at) FROM orders").fetchall()[0][0]
                test_cutoff = con.execute("SELECT max(cutoff) FROM task_churn").fetchall()[0][0]
                assert (latest - test_cutoff).days == 30, night  # the windows move with the data
            results = load_results(paths, "soak", "churn", result.run_id)
            assert set(results) == set(MODELS), night
            for model, res in results.items():
                assert Path(res["runs"][0]["checkpoint"]).exists(), (night, model)
            assert len(list((data / "graphs" / "soak").iterdir())) <= 3
            for model in MODELS:
                assert len(list((paths.checkpoints / "soak" / "churn" / model).iterdir())) <= 3
            sizes.append(_disk(data / "graphs") + _disk(paths.checkpoints))

        runs = instance.get_runs()
        assert {r.run_id for r in runs} == set(run_ids)
        assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
        for model in MODELS:
            key = dg.AssetKey(["soak", "churn", model])
            assert instance.get_latest_materialization_event(key).run_id == run_ids[-1]

    # disk use levels off: after the first few nights it grows by no more than the new rows do
    if NIGHTS >= 8:
        settled = sizes[4:]
        assert max(settled) <= 1.2 * min(settled), sizes
