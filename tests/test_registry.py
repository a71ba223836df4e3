"""The MLflow registry: pyfunc models, the champion/challenger gate, champion predictions.

One small synthetic database (1,500 customers, churn only) is extracted once; three
Dagster runs follow on it: a deliberately weak graph model (one step of one epoch at a
tiny learning rate), then LightGBM (better: it takes the champion), then the weak model
again (worse: it stays challenger).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import duckdb
import pytest
import yaml
from dagster_duckdb import DuckDBResource

from assets.definitions import dataset_assets
from assets.resources import ComputeResource, MLflowResource, PathsResource
from pipeline.paths import DataPaths
from pipeline.serving.registry import (CHALLENGER, CHAMPION, RegistryError, beats, load_version,
                               registered_name)
from pipeline.data.spec import load_spec
from pipeline.training.tracking import Tracker, mlflow_uri

REPO = Path(__file__).resolve().parent.parent
TASK = "customer_churn"
NAME = registered_name("ecommerce", TASK)
WEAK = {"epochs": 1, "max_steps_per_epoch": 1, "lr": 1e-6, "hidden": 16, "fanouts": [4, 2]}


def _spec_file(root: Path) -> Path:
    raw = yaml.safe_load((REPO / "datasets" / "ecommerce.yaml").read_text())
    raw["source"]["scale"] = 1500
    raw["tasks"] = {TASK: raw["tasks"][TASK]}
    path = root / "ecommerce.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


class Pipeline:
    def __init__(self, root: Path):
        self.spec = load_spec(_spec_file(root))
        self.paths = DataPaths(root / "data")
        self.paths.root.mkdir(parents=True)
        self.tracker = Tracker(self.paths.mlflow_uri())
        self.resources = {"paths": PathsResource(data_dir=str(self.paths.root)),
                          "duckdb": DuckDBResource(database=str(self.paths.warehouse)),
                          "mlflow": MLflowResource(tracking_uri=self.tracker.tracking_uri),
                          "compute": ComputeResource(device="cpu")}
        self.instance = dg.DagsterInstance.ephemeral()

    def run(self, model: str, config: dict | None = None, upstream: bool = False):
        keys = []
        if upstream:
            keys += [["ecommerce", t] for t in self.spec.tables] + [["ecommerce", TASK], ["ecommerce", "graph"]]
        keys += [["ecommerce", TASK, s] for s in (model, "evaluation", "champion", "predictions")]
        run_config = {"ops": {f"ecommerce__{TASK}__{model}": {"config": config}}} if config else {}
        return dg.materialize(dataset_assets(self.spec), selection=[dg.AssetKey(k) for k in keys],
                              resources=self.resources, instance=self.instance, run_config=run_config)

    def result(self, model: str) -> dict:
        return json.loads((self.paths.results / "ecommerce" / TASK / f"{model}.json").read_text())


def _gate(result) -> dg.AssetCheckEvaluation:
    (check,) = [c for c in result.get_asset_check_evaluations() if c.check_name == "champion_gate"]
    return check


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """Three runs: weak sage (first champion), lightgbm (beats it), weak sage (challenger)."""
    p = Pipeline(tmp_path_factory.mktemp("registry"))
    runs = [p.run("sage", WEAK, upstream=True)]
    p.first_sage = p.result("sage")
    runs.append(p.run("lightgbm"))
    p.lightgbm = p.result("lightgbm")
    runs.append(p.run("sage", WEAK))
    p.runs = runs
    return p


def test_first_model_becomes_champion(pipeline):
    check = _gate(pipeline.runs[0])
    assert check.passed
    assert "there was no champion" in check.description


def test_better_model_takes_the_champion_alias(pipeline):
    check = _gate(pipeline.runs[1])
    assert check.passed, check.description
    assert "(lightgbm)" in check.description and " beats champion v1 (sage)" in check.description
    client = pipeline.tracker.client
    champion = client.get_model_version_by_alias(NAME, CHAMPION)
    assert champion.tags["model"] == "lightgbm" and str(champion.version) == "2"
    assert champion.tags["gate"] == CHAMPION
    # The champion is re-scored today; its number is the run's own validation metric.
    assert float(champion.tags["gate_val_auroc"]) == pytest.approx(
        pipeline.lightgbm["runs"][0]["metrics"]["val_auroc"], abs=1e-6)


def test_worse_model_stays_challenger_with_reason(pipeline):
    check = _gate(pipeline.runs[2])
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
    assert "does not beat champion v2 (lightgbm)" in check.description
    assert check.metadata["champion"].value == "v2"
    client = pipeline.tracker.client
    assert str(client.get_model_version_by_alias(NAME, CHAMPION).version) == "2"
    challenger = client.get_model_version_by_alias(NAME, CHALLENGER)
    assert str(challenger.version) == "3" and challenger.tags["model"] == "sage"
    assert challenger.tags["gate"] == CHALLENGER
    assert "does not beat" in challenger.tags["gate_reason"]
    assert float(challenger.tags["gate_champion_val_auroc"]) > float(challenger.tags["gate_val_auroc"])


def test_every_model_version_belongs_to_its_nested_run(pipeline):
    client = pipeline.tracker.client
    versions = client.search_model_versions(f"name = '{NAME}'")
    assert sorted(str(v.version) for v in versions) == ["1", "2", "3"]
    for v in versions:
        run = client.get_run(v.run_id)
        assert run.data.params["model"] == v.tags["model"]
        assert run.data.tags["relgraph_role"] == "model"


def test_predictions_come_from_the_champion(pipeline):
    mats = pipeline.runs[2].asset_materializations_for_node(f"ecommerce__{TASK}__predictions")
    assert mats[-1].metadata["source"].value == "champion v2"
    con = duckdb.connect(str(pipeline.paths.warehouse), read_only=True)
    try:
        live = con.execute(f"SELECT COUNT(*) FROM task_{TASK}_live").fetchall()[0][0]
        rows = con.execute(f"""SELECT COUNT(*), COUNT(DISTINCT customer_id), MIN(score), MAX(score),
                                      list(DISTINCT model), list(DISTINCT model_version)
                               FROM predictions_{TASK}""").fetchall()[0]
    finally:
        con.close()
    assert live > 100
    assert rows[0] == rows[1] == live
    assert 0.0 <= rows[2] < rows[3] <= 1.0
    assert rows[4] == ["lightgbm"] and rows[5] == [f"models:/{NAME}/2"]


_REPRODUCE = """
import json, sys
import duckdb, mlflow.pyfunc, numpy as np
from pipeline.task_kinds import compute_metrics
con = duckdb.connect(sys.argv[1], read_only=True)
frame = con.sql("SELECT customer_id, cutoff, label FROM task_customer_churn WHERE split = 'test'").df()
con.close()
frame = frame.sample(frac=1.0, random_state=7).reset_index(drop=True)  # order must not matter
out = {}
for version in sys.argv[2:]:
    model = mlflow.pyfunc.load_model(f"models:/relgraph-ecommerce-customer_churn/{version}")
    scores = model.predict(frame[["customer_id", "cutoff"]])
    out[version] = compute_metrics("binary_classification", frame["label"].to_numpy(), scores)["auroc"]
print("RESULT " + json.dumps(out))
"""


def test_pyfunc_reproduces_the_test_metric_in_a_fresh_process_on_a_copy(pipeline, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(pipeline.paths.root, copy)
    # Nothing the run computed may be reachable: no results, predictions, checkpoints or
    # cached graphs (the model rebuilds its graph from the warehouse).
    for name in ("results", "predictions", "checkpoints", "graphs", "dagster"):
        shutil.rmtree(copy / name, ignore_errors=True)
    con = duckdb.connect(str(copy / "warehouse.duckdb"))
    con.execute(f"DROP TABLE predictions_{TASK}")
    con.close()
    env = {**os.environ, "RELGRAPH_DATA": str(copy), "MLFLOW_TRACKING_URI": pipeline.tracker.tracking_uri}
    out = subprocess.run([sys.executable, "-c", _REPRODUCE, str(copy / "warehouse.duckdb"), "1", "2"],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.split("RESULT ", 1)[1])
    assert got["1"] == pipeline.first_sage["runs"][0]["metrics"]["test_auroc"]
    assert got["2"] == pipeline.lightgbm["runs"][0]["metrics"]["test_auroc"]
    assert (copy / "graphs").is_dir(), "the graph model should have rebuilt its graph in the copy"


def test_pyfunc_names_bad_input(pipeline):
    model = load_version(pipeline.tracker, NAME, "2", pipeline.paths.root)
    import pandas as pd

    with pytest.raises(RegistryError, match="lacks column"):
        model.predict(pd.DataFrame({"customer_id": [1]}))
    with pytest.raises(RegistryError, match=r"2 input rows name customers keys .*first: -5, -6"):
        model.predict(pd.DataFrame({"customer_id": [1, -5, -6],
                                    "cutoff": pd.to_datetime(["2025-01-01"] * 3)}))


def test_beats_is_strict_and_follows_the_metric_direction():
    assert beats(0.8, 0.7, lower_is_better=False) and not beats(0.7, 0.8, lower_is_better=False)
    assert beats(1.0, 2.0, lower_is_better=True) and not beats(2.0, 1.0, lower_is_better=True)
    assert not beats(0.7, 0.7, lower_is_better=False)
    assert not beats(math.nan, 0.1, lower_is_better=False) and beats(0.1, math.nan, lower_is_better=False)


def test_mlflow_uri_restores_the_environment(monkeypatch, tmp_path):
    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", "sqlite:///elsewhere.db")
    with mlflow_uri(f"sqlite:///{tmp_path / 'a.db'}"):
        assert mlflow.get_tracking_uri().endswith("a.db")
        assert os.environ["MLFLOW_TRACKING_URI"].endswith("a.db")
    assert "MLFLOW_TRACKING_URI" not in os.environ
    assert os.environ["MLFLOW_REGISTRY_URI"] == "sqlite:///elsewhere.db"


def test_mlflow_uri_leaves_no_registry_uri_pinned(monkeypatch, tmp_path):
    """After the block, a client of another store reads that store's registry: restoring
    the resolved default instead of 'not set' pinned the registry to the block's store,
    and a later test found its registered model missing."""
    from mlflow import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    with mlflow_uri(f"sqlite:///{tmp_path / 'a.db'}"):
        pass
    other = f"sqlite:///{tmp_path / 'b.db'}"
    assert MlflowClient(other)._registry_uri == other


# Last in the file: it moves the champion alias.
def test_a_champion_registered_as_a_pickle_keeps_scoring(pipeline, monkeypatch):
    """Before models from code, register_model logged `RelgraphModel()` itself, CloudPickled
    by reference to its module (`pipeline.registry` before serving/ existed). A version made
    that way here, as champion, still scores: the gate re-scores it, and the predictions
    asset uses it."""
    import mlflow.pyfunc
    import pandas as pd

    from pipeline.serving import registry

    new_v = "2"  # lightgbm, a model from code
    spec, task = pipeline.spec, pipeline.spec.task(TASK)
    real = mlflow.pyfunc.log_model
    with monkeypatch.context() as m:
        m.setattr(mlflow.pyfunc, "log_model",
                  lambda **kw: real(**{**kw, "python_model": registry.RelgraphModel()}))
        m.setattr(registry.RelgraphModel, "__module__", "pipeline.registry")
        old_v = registry.register_model(pipeline.tracker, pipeline.paths, spec, task, pipeline.lightgbm)
    client = pipeline.tracker.client
    with mlflow_uri(pipeline.tracker.tracking_uri):
        old_dir = Path(mlflow.artifacts.download_artifacts(f"models:/{NAME}/{old_v}"))
        new_dir = Path(mlflow.artifacts.download_artifacts(f"models:/{NAME}/{new_v}"))
    assert b"pipeline.registry" in (old_dir / "python_model.pkl").read_bytes()
    assert not list(new_dir.rglob("*.pkl"))

    con = duckdb.connect(str(pipeline.paths.warehouse), read_only=True)
    try:
        frame, truth = registry.split_frame(con, spec, task, "val")
    finally:
        con.close()
    old_val, new_val = (registry.split_metric(load_version(pipeline.tracker, NAME, v, pipeline.paths.root),
                                              frame, truth, task) for v in (old_v, new_v))
    assert old_val == new_val  # the same booster, loaded either way

    client.set_registered_model_alias(NAME, CHAMPION, old_v)
    decision = registry.champion_gate(pipeline.tracker, pipeline.paths, spec, task, new_v)
    assert decision.champion_val == old_val and not decision.promoted, decision.reason

    result = dg.materialize(dataset_assets(spec), selection=[dg.AssetKey(["ecommerce", TASK, "predictions"])],
                            resources=pipeline.resources, instance=pipeline.instance)
    (mat,) = result.asset_materializations_for_node(f"ecommerce__{TASK}__predictions")
    assert mat.metadata["source"].value == f"champion v{old_v}"
    preds = pd.read_parquet(mat.metadata["parquet"].value)
    assert len(preds) > 100
