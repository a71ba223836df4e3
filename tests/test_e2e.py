"""End to end through the real CLI: synthetic source -> DuckDB -> graph -> models -> MLflow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

REPO = Path(__file__).resolve().parent.parent
SCALE = 1500


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    data = tmp_path_factory.mktemp("e2e") / "data"
    # a system-metrics sample every second, so that even a short training run has some
    env = {**os.environ, "RELGRAPH_DATA": str(data), "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "1"}
    env.pop("DAGSTER_HOME", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run(
        [sys.executable, "-m", "assets.cli", "run", "--scale", str(SCALE),
         "--models", "sage,lightgbm,lightgbm_flat", "--epochs", "2"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return data, proc.stdout, proc.stderr


def test_summary_table_lists_every_model(run_dir):
    _, out, _ = run_dir
    assert "MLflow experiment: relgraph/ecommerce/customer_churn" in out
    for model in ("sage", "lightgbm", "lightgbm_flat"):
        line = next(l for l in out.splitlines() if l.startswith(f"| {model} |"))
        val, test = (float(c.split("±")[0]) for c in line.split("|")[2:4])
        assert 0.5 < val <= 1.0 and 0.5 < test <= 1.0, line


def test_the_terminal_shows_a_line_per_stage_and_epoch_and_no_engine_noise(run_dir):
    _, out, err = run_dir
    lines = out.splitlines()
    assert err == "", err[-2000:]  # no warning, no library INFO line, no progress bar
    assert not [line for line in lines if "DEBUG" in line or "arning" in line]
    stages = ["ecommerce/" + t for t in ("categories", "customers", "products", "orders",
                                        "reviews", "order_items", "returns", "customer_churn",
                                        "graph")]
    stages += [f"ecommerce/customer_churn/{s}" for s in ("sage", "lightgbm", "lightgbm_flat",
                                                          "evaluation", "champion", "predictions")]
    for stage in stages:
        assert lines.count(f"{stage} ...") == 1, stage
        assert sum(line.startswith(f"{stage} done (") for line in lines) == 1, stage
    for epoch in (1, 2):
        assert sum(line.strip().startswith(f"sage epoch {epoch}: train_loss=") for line in lines) == 1
    # two screens: the stages, their messages, the table and where to look next
    assert len(lines) <= 80, len(lines)


def test_warehouse_holds_every_table_with_the_generated_counts(run_dir):
    data, _, _ = run_dir
    from pipeline.data.spec import load_spec

    spec = load_spec(REPO / "datasets" / "ecommerce.yaml")
    marker = json.loads(next((data / "raw").glob("*/.complete.json")).read_text())
    assert marker["config"]["scale"] == SCALE
    counts = marker["rows"]  # what the generator wrote at this scale
    assert counts["customers"] == SCALE
    con = duckdb.connect(str(data / "warehouse.duckdb"), read_only=True)
    for table in spec.tables:
        n = con.execute(f'SELECT COUNT(*) FROM "{table}"').fetchall()[0][0]
        assert n == counts[table], table
        assert con.execute(f'SELECT COUNT(*) FROM "rejected_{table}"').fetchall()[0][0] == 0
    live = con.execute("SELECT COUNT(*) FROM task_customer_churn_live").fetchall()[0][0]
    preds = con.execute("SELECT COUNT(*), COUNT(DISTINCT customer_id), MIN(score) >= 0, MAX(score) <= 1 "
                        "FROM predictions_customer_churn").fetchall()[0]
    assert preds == (live, live, True, True)


def test_mlflow_has_a_parent_and_one_nested_run_per_model(run_dir):
    data, _, _ = run_dir
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{data / 'mlflow' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("relgraph/ecommerce/customer_churn")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("relgraph_role") == "parent"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert len(parents) == 1
    assert sorted(r.data.params["model"] for r in children) == ["lightgbm", "lightgbm_flat", "sage"]
    for r in children:
        assert 0.5 < r.data.metrics["test_auroc"] <= 1.0
        assert r.data.tags["dataset"] == "ecommerce" and r.data.tags["task"] == "customer_churn"
        assert r.data.tags["dagster_run_id"] == parents[0].data.tags["dagster_run_id"]
    sage = next(r for r in children if r.data.params["model"] == "sage")
    history = client.get_metric_history(sage.info.run_id, "val_auroc")
    assert sorted({m.step for m in history}) == [1, 2]
    assert sage.data.metrics["val_auroc"] == max(m.value for m in history)
    # the training run's system metrics (MLflow's "System metrics" tab), sampled while it ran
    cpu = client.get_metric_history(sage.info.run_id, "system/cpu_utilization_percentage")
    memory = client.get_metric_history(sage.info.run_id, "system/system_memory_usage_megabytes")
    assert cpu and memory and all(m.value > 0 for m in memory)


def test_run_trains_the_default_four_all_or_the_named_models():
    from assets.cli import run_models
    from pipeline.training.zoo import ALL_MODELS

    assert run_models(None) == ["lightgbm_flat", "lightgbm", "sage", "hgt"]
    assert run_models("all") == list(ALL_MODELS) and len(ALL_MODELS) == 8
    assert run_models("gat, lightgbm") == ["gat", "lightgbm"]
    with pytest.raises(SystemExit, match="unknown model.*sagee"):
        run_models("sage,sagee")
