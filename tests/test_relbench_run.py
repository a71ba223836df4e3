"""RelBench folders through the Dagster layer, the `relgraph` command and MLflow.

Names outside `[A-Za-z0-9_]` (RelBench's `rel-shop`, `customer-churn`) become Dagster's
safe form in asset keys, ops, groups and jobs only; the folder's own names stay in
everything the user reads. The task asset's repairs are WARN checks.
"""

from __future__ import annotations

import dataclasses

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


def test_odd_names_are_safe_asset_keys_one_to_one(shop):
    spec = load_dataset(shop)
    defs = build_definitions([spec], executor=None)
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
