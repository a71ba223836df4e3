"""RelBench folders through the Dagster layer, the `relgraph` command and MLflow.

Names outside `[A-Za-z0-9_]` (RelBench's `rel-shop`, `customer-churn`) become Dagster's
safe form in asset keys, ops, groups and jobs only; the folder's own names stay in
everything the user reads. The task asset's repairs are WARN checks.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import dagster as dg
import pytest

from assets import names
from assets.definitions import build_definitions, dataset_assets
from assets.resources import ComputeResource, MLflowResource, PathsResource
from dagster_duckdb import DuckDBResource
from pipeline.data.datasets import load_dataset
from pipeline.data.spec import SpecError
from tests.relbench_folders import write_shop_folder


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    return write_shop_folder(tmp_path_factory.mktemp("folders"))


def _resources(root) -> dict:
    return {"paths": PathsResource(data_dir=str(root / "data")),
            "duckdb": DuckDBResource(database=str(root / "data" / "warehouse.duckdb")),
            "mlflow": MLflowResource(tracking_uri=f"sqlite:///{root / 'mlflow.db'}"),
            "compute": ComputeResource()}


def test_odd_names_are_safe_asset_keys_one_to_one(shop, monkeypatch):
    spec = load_dataset(shop)
    monkeypatch.setenv("RELGRAPH_DATASETS", str(shop))  # a folder, as the code location reads it
    defs = build_definitions(executor=None)
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert {"rel_shop/customers", "rel_shop/customer_churn", "rel_shop/customer_item_purchase",
            "rel_shop/graph", "rel_shop/customer_churn/sage",
            "rel_shop/customer_churn/predictions"} <= keys
    assert defs.resolve_job_def("rel_shop_nightly") is not None
    assert names.op_name(names.model_key(spec, "customer-churn", "sage")) == \
        "rel_shop__customer_churn__sage"
    # one-to-one: two datasets, or a table and the graph asset, that would share a key
    twin = dataclasses.replace(spec, name="rel_shop")
    with pytest.raises(SpecError, match="'rel-shop' and 'rel_shop' both become 'rel_shop'"):
        build_definitions([spec, twin], executor=None)
    graph = dataclasses.replace(spec, tables={**spec.tables, "graph": spec.tables["products"]})
    with pytest.raises(SpecError, match="graph asset"):
        dataset_assets(graph)


def test_a_folder_materializes_its_tables_task_and_graph(shop, tmp_path):
    """What failed at definition time before (RELIABILITY.md's known gap): the assets of
    a dataset whose names hold `-` build, run and report under their safe keys."""
    spec = load_dataset(shop)
    (tmp_path / "data").mkdir()
    keys = ([names.table_key(spec, t) for t in spec.tables]
            + [names.task_key(spec, t) for t in spec.tasks] + [names.graph_key(spec)])
    result = dg.materialize(dataset_assets(spec), selection=keys, resources=_resources(tmp_path),
                            instance=dg.DagsterInstance.ephemeral())
    assert result.success
    task = result.asset_materializations_for_node("rel_shop__customer_churn")[-1].metadata
    assert task["test_examples"].value > 0
    graph = result.asset_materializations_for_node("rel_shop__graph")[-1].metadata
    assert graph["num_nodes"].value > 0
    # what RelBench's rules repaired is a WARN check with counts and examples
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()
              if e.asset_key == names.task_key(spec, "customer-churn")}
    assert set(checks) == {"null_entity", "dangling_entity", "future_entity", "live_set"}
    dangling = checks["dangling_entity"]
    assert not dangling.passed and dangling.severity == dg.AssetCheckSeverity.WARN
    assert dangling.metadata["count"].value > 0 and dangling.metadata["by_split"].value["test"] > 0
    assert "RelBench's dangling-entity rule" in dangling.description
    assert "- " in dangling.metadata["examples"].value
    assert checks["live_set"].passed and checks["null_entity"].passed
    pruned = {e.check_name: e for e in result.get_asset_check_evaluations()
              if e.asset_key == names.task_key(spec, "customer-item-purchase")}["pruned_target"]
    assert not pruned.passed and pruned.metadata["count"].value > 0
    assert "pruned from the lists" in pruned.metadata["action"].value


def test_relgraph_run_on_a_folder_trains_registers_predicts_and_writes_prediction_files(
        shop, tmp_path, monkeypatch):
    """`relgraph run --dataset DIR --task T --models sage,lightgbm`: the folder's assets run
    under their safe keys, MLflow has the run under the folder's names, the champion is
    registered from the folder and scores the live set, and relbench's evaluator scores
    each model's prediction file to the metric the table prints; then `relgraph train
    --test-context rolling` writes the rolling folder."""
    import json
    import os
    import subprocess
    import sys

    import mlflow
    from relbench.submit import evaluate_task

    data = tmp_path / "data"
    env = {**os.environ, "RELGRAPH_DATA": str(data), "OMP_NUM_THREADS": "1"}
    env.pop("DAGSTER_HOME", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    repo = Path(__file__).resolve().parent.parent

    def relgraph(*args):
        proc = subprocess.run([sys.executable, "-m", "assets.cli", *args], cwd=repo, env=env,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc.stdout

    out = relgraph("run", "--dataset", str(shop), "--task", "customer-churn",
                   "--models", "sage,lightgbm", "--epochs", "1")
    assert "rel-shop / customer-churn: auroc" in out and "test context frozen" in out
    rows = {line.split("|")[1].strip(): line.split("|") for line in out.splitlines()
            if line.startswith(("| sage |", "| lightgbm |"))}
    assert set(rows) == {"sage", "lightgbm"}
    files = data / "results" / "relbench-submission"
    for model, cells in rows.items():
        printed = float(cells[4])  # test roc_auc (RelBench), to 4 places
        theirs = evaluate_task("rel-shop/customer-churn", files / model /
                               "rel-shop__customer-churn.csv", dataset=shop)["roc_auc"]
        assert abs(theirs - printed) < 5e-5, (model, theirs, printed)
        result = json.loads((data / "results" / "rel-shop" / "customer-churn" /
                             f"{model}.json").read_text())
        assert abs(theirs - result["runs"][0]["metrics"]["test_relbench_roc_auc"]) < 1e-9

    client = mlflow.MlflowClient(f"sqlite:///{data / 'mlflow' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("relgraph/rel-shop/customer-churn")
    runs = client.search_runs([exp.experiment_id], "params.model = 'lightgbm'")
    assert runs and runs[0].data.params["test_context"] == "frozen"
    assert "test_relbench_roc_auc" in runs[0].data.metrics
    assert client.get_model_version_by_alias("relgraph-rel-shop-customer-churn", "champion")
    import duckdb

    con = duckdb.connect(str(data / "warehouse.duckdb"), read_only=True)
    assert con.sql('SELECT count(*) FROM "predictions_customer-churn"').fetchall()[0][0] > 0
    con.close()
    monkeypatch.setenv("DAGSTER_HOME", str(data / "dagster"))
    with dg.DagsterInstance.from_config(str(data / "dagster")) as instance:
        for key in (["rel_shop", "customers"], ["rel_shop", "customer_churn", "sage"],
                    ["rel_shop", "customer_churn", "predictions"]):
            assert instance.get_latest_materialization_event(dg.AssetKey(key)), key

    out = relgraph("train", "--dataset", str(shop), "--task", "customer-churn",
                   "--model", "lightgbm", "--test-context", "rolling")
    assert (files / "lightgbm-rolling" / "rel-shop__customer-churn.csv").exists(), out


def test_import_relbench_prints_the_spec_and_lists_refused_tasks(tmp_path, capsys, monkeypatch):
    """`relgraph import-relbench DIR` prints a spec that loads as the same dataset, with
    the kinds relgraph refuses listed with their reason; `--task` of such a kind and a
    folder with nothing to train say the reason in one line."""
    import yaml

    from assets.cli import main
    from pipeline.data.spec import load_spec
    from tests.relbench_folders import write_clinic_folder

    folder = write_clinic_folder(tmp_path / "folders", unsupported_kinds=True)
    assert main(["import-relbench", str(folder)]) == 0
    text = capsys.readouterr().out
    assert "# task patient-age left out: autocomplete:" in text
    assert "# task patient-flagged left out: external:" in text
    (tmp_path / "spec.yaml").write_text(text)
    spec, again = load_dataset(folder), load_spec(tmp_path / "spec.yaml")
    assert again.name == spec.name == "rel-clinic" and again.tasks == spec.tasks
    assert yaml.safe_load(text)["source"] == {"kind": "relbench", "path": str(folder)}
    for var, value in (("RELGRAPH_DATA", tmp_path / "data"), ("DAGSTER_HOME", tmp_path / "dagster"),
                       ("RELGRAPH_DATASETS", "")):
        monkeypatch.setenv(var, str(value))  # what `relgraph run` sets, put back afterwards
    code = main(["run", "--dataset", str(folder), "--task", "patient-age"])
    assert code == 2
    assert "task 'patient-age' is not trained by relgraph: autocomplete" in capsys.readouterr().err
