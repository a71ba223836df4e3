"""`relgraph tune`: a seeded search per model, scored on val only, logged as nested MLflow runs."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from pipeline.training.experiment import load_results
from pipeline.training.prepare import prepare_task
from pipeline.training.zoo import ALL_MODELS
from pipeline.models.gbdt import GBDTConfig, train_gbdt
from pipeline.paths import DataPaths
from pipeline.data.spec import load_spec
from pipeline.training.tracking import Tracker
from pipeline.training.trainer import TrainConfig
from pipeline.training.zoo import make_trainer
from pipeline.training.tune import base_params, default_config, search_space, trial_config, tune
from shop import RELGRAPH, shop_spec

TRIALS = 3
SMALL_GBDT = GBDTConfig(n_estimators=30, early_stopping_rounds=5, num_threads=1)


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def write_shop(root: Path) -> Path:
    """120 customers with a year of random orders (both churn classes in every split)."""
    rng = np.random.default_rng(0)
    src = root / "src"
    src.mkdir(parents=True)
    start = np.datetime64("2024-01-01T00:00:00", "us")
    seconds = np.sort(rng.integers(0, 365 * 86_400, 900))
    pq.write_table(pa.table({"customer_id": np.arange(1, 121),
                             "country": rng.choice(["DE", "FR", "US"], 120),
                             "age": rng.integers(18, 80, 120)}), src / "customers.parquet")
    pq.write_table(pa.table({"order_id": np.arange(1, 901),
                             "customer_id": rng.integers(1, 121, 900),
                             "ordered_at": start + seconds.astype("timedelta64[s]"),
                             "amount": np.round(rng.gamma(2.0, 20.0, 900), 2)}),
                   src / "orders.parquet")
    path = root / "shop.yaml"
    path.write_text(yaml.safe_dump(shop_spec("shop", src), sort_keys=False))
    return path


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """`relgraph tune` of sage on a fresh data directory (it builds warehouse and graph)."""
    root = tmp_path_factory.mktemp("tune")
    spec_path, data = write_shop(root), root / "data"
    env = {**os.environ, "RELGRAPH_DATA": str(data), "OMP_NUM_THREADS": "1"}
    env.pop("DAGSTER_HOME", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run([RELGRAPH, "tune", "--dataset", str(spec_path), "--model", "sage",
                           "--trials", str(TRIALS), "--epochs", "2", "--seed", "0"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return spec_path, DataPaths(data), proc.stdout


def connector(warehouse: Path):
    @contextlib.contextmanager
    def connect():
        con = duckdb.connect(str(warehouse), read_only=True)
        try:
            yield con
        finally:
            con.close()
    return connect


def search_runs(store: Path, model: str):
    """(parent, children) of the one search of `model` in the shop's experiment."""
    client = MlflowClient(f"sqlite:///{store}")
    exp = client.get_experiment_by_name("relgraph/shop/churn")
    runs = client.search_runs([exp.experiment_id], f"tags.model = '{model}'")
    parents = [r for r in runs if r.data.tags.get("relgraph_role") == "search"]
    assert len(parents) == 1, [r.data.tags for r in runs]
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) + 1 == len(runs)
    return parent, sorted(children, key=lambda r: int(r.data.tags["trial"]))


def test_cli_writes_the_best_params_and_logs_one_nested_run_per_trial(cli_run):
    _, paths, out = cli_run
    result = json.loads((paths.results / "shop" / "churn" / "tune_sage.json").read_text())
    assert (result["model"], result["metric"], result["trials_completed"]) == ("sage", "auroc", TRIALS)
    values = [t["value"] for t in result["trials"]]
    assert [t["trial"] for t in result["trials"]] == list(range(TRIALS))
    # trial 0 is the shipped configuration, so the search is measured against it
    assert result["trials"][0]["params"] == base_params("sage", TrainConfig(), search_space("sage"))
    assert result["defaults"]["value"] == values[0]
    assert result["best"]["value"] == max(values)
    assert result["best"]["params"] == result["trials"][result["best"]["trial"]]["params"]
    assert result["improvement"] == pytest.approx(max(values) - values[0])
    best_cfg = result["best"]["config"]
    assert len(best_cfg["fanouts"]) == best_cfg["layers"] and best_cfg["epochs"] == 2
    assert "best params: hidden=" in out
    assert ("vs shipped defaults" in out) != ("the shipped defaults won" in out)
    # the search's file sits beside the model results, and is not one of them
    assert load_results(paths, "shop", "churn") == {}

    parent, children = search_runs(paths.mlflow / "mlflow.db", "sage")
    assert parent.data.tags["search"] == "true" and parent.data.params["search"] == "true"
    assert parent.data.params["trials"] == str(TRIALS) and parent.data.params["model"] == "sage"
    assert parent.info.status == "FINISHED" and result["mlflow_parent_run_id"] == parent.info.run_id
    assert parent.data.metrics["best_val_auroc"] == pytest.approx(max(values))
    assert [c.data.tags["trial"] for c in children] == [str(i) for i in range(TRIALS)]
    for child, trial in zip(children, result["trials"]):
        assert child.data.tags["relgraph_role"] == "trial"
        for name, value in trial["params"].items():
            assert child.data.params[name] == str(value)
        assert child.data.metrics["val_auroc"] == pytest.approx(trial["value"])
        assert not [m for m in child.data.metrics if m.startswith("test")], child.data.metrics
    assert not [m for m in parent.data.metrics if m.startswith("test")]


@pytest.fixture
def no_test_labels(cli_run, tmp_path):
    """A copy of the warehouse whose test labels are NULL: reading them fails loudly."""
    spec_path, paths, _ = cli_run
    copy = DataPaths(tmp_path / "data")
    copy.root.mkdir()
    shutil.copy(paths.warehouse, copy.warehouse)
    with duckdb.connect(str(copy.warehouse)) as con:
        con.execute("UPDATE task_churn SET label = NULL WHERE split = 'test'")
    return load_spec(spec_path), copy


def test_the_search_never_reads_test_labels(no_test_labels):
    spec, paths = no_test_labels
    task, connect = spec.tasks["churn"], connector(paths.warehouse)
    prep = prepare_task(connect, spec, task, graphs_dir=paths.graphs / spec.name)
    # Positive controls: the full training paths do read the test labels and fail on them.
    with connect() as con, pytest.raises(ValueError, match="NULL label"):
        train_gbdt(con, spec, task, flat=True, config=SMALL_GBDT)
    tiny = TrainConfig(epochs=1, batch_size=64)
    with pytest.raises(ValueError, match="binary labels"):
        make_trainer(prep.training_graph(), prep.graph.feature_meta, task, prep.examples(), tiny,
                     paths.checkpoints, progress=False).fit()

    tracker = Tracker(paths.mlflow_uri())
    for model, base in (("lightgbm", SMALL_GBDT), ("sage", tiny)):
        result = tune(prep, model, 2, paths=paths, tracker=tracker, base=base,
                      log=lambda msg: None)
        assert result["trials_completed"] == 2
        _, children = search_runs(paths.mlflow / "mlflow.db", model)
        assert len(children) == 2
        for child in children:
            assert 0.0 <= child.data.metrics["val_auroc"] <= 1.0
            assert not [m for m in child.data.metrics if m.startswith("test")]


def test_a_seed_gives_the_same_search(cli_run, tmp_path):
    spec_path, paths, _ = cli_run
    spec = load_spec(spec_path)
    prep = prepare_task(connector(paths.warehouse), spec, spec.tasks["churn"],
                        graphs_dir=paths.graphs / spec.name)

    def search(seed: int) -> list[dict]:
        result = tune(prep, "sage", TRIALS, paths=DataPaths(tmp_path / f"seed{seed}"), seed=seed,
                      base=TrainConfig(epochs=1), log=lambda msg: None)
        return [(t["params"], t["value"]) for t in result["trials"]]

    first, again, other = search(0), search(0), search(1)
    assert first == again
    assert first[0] == other[0]  # trial 0 is the defaults whatever the seed
    assert [p for p, _ in first[1:]] != [p for p, _ in other[1:]]


def test_a_trial_scores_what_the_pipeline_reports_on_val(cli_run, tmp_path):
    """Trial 0's value is the val metric a `relgraph run` of the same config reports."""
    spec_path, paths, _ = cli_run
    spec = load_spec(spec_path)
    task, connect = spec.tasks["churn"], connector(paths.warehouse)
    prep = prepare_task(connect, spec, task, graphs_dir=paths.graphs / spec.name)
    out = DataPaths(tmp_path)
    cfg = TrainConfig(epochs=2)
    tuned = tune(prep, "sage", 1, paths=out, base=cfg, log=lambda m: None)
    fit = make_trainer(prep.training_graph(), prep.graph.feature_meta, task, prep.examples(), cfg,
                       tmp_path / "ckpt", progress=False).fit()
    assert tuned["best"]["value"] == fit.val_metrics["auroc"]
    assert tuned["best"]["best_epoch"] == fit.best_epoch

    tuned = tune(prep, "lightgbm_flat", 1, paths=out, base=SMALL_GBDT, log=lambda m: None)
    with connect() as con:
        full = train_gbdt(con, spec, task, flat=True, config=SMALL_GBDT)
    assert tuned["best"]["value"] == full.val_metrics["auroc"]


@pytest.mark.parametrize("model", ALL_MODELS)
def test_the_shipped_defaults_are_a_point_of_every_space(model):
    base = default_config(model)
    params = base_params(model, base, search_space(model))
    assert trial_config(model, base, params) == base


def test_a_base_outside_the_space_is_refused_by_name():
    with pytest.raises(ValueError, match="hidden=8"):
        base_params("sage", TrainConfig(hidden=8), search_space("sage"))
    with pytest.raises(ValueError, match=r"fanouts \(16, 16\)"):
        base_params("sage", TrainConfig(fanouts=(16, 16)), search_space("sage"))
    with pytest.raises(ValueError, match="unknown model"):
        search_space("xgboost")
