"""RelBench prediction files, scored by relbench's own evaluator to relgraph's metric.

Every model trained on a RelBench task writes its test predictions where `python -m
relbench.submit` expects them, in relbench 3.0.2's format, and logs RelBench's metric of
them; `relbench.submit.evaluate_task` reads the file and must give that number to 1e-9:
binary (roc_auc), regression (nmae, whose train labels include the rows relbench keeps
without an entity) and link prediction (map at eval_k), for a graph model and LightGBM.
Multiclass tasks, which the leaderboard does not score, write none.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import duckdb
import pandas as pd
import pytest

pytest.importorskip("relbench")
from relbench.submit import evaluate_task  # noqa: E402

from pipeline.data.datasets import load_dataset  # noqa: E402
from pipeline.data.sources import open_source  # noqa: E402
from pipeline.data.tasks import build_task_table  # noqa: E402
from pipeline.data.warehouse import extract_table  # noqa: E402
from pipeline.graph.features import FeatureConfig  # noqa: E402
from pipeline.models.gbdt import GBDTConfig  # noqa: E402
from pipeline.paths import DataPaths  # noqa: E402
from pipeline.training.experiment import RunContext, run_model  # noqa: E402
from pipeline.training.prepare import prepare_task, task_graph  # noqa: E402
from pipeline.training.trainer import TrainConfig  # noqa: E402
from tests.relbench_folders import RACING, write_racing_folder, write_shop_folder  # noqa: E402

SAGE = TrainConfig(model="sage", hidden=16, layers=2, fanouts=(4, 2), epochs=1, batch_size=256,
                   max_steps_per_epoch=2, seed=0, device="cpu")
LGBM = GBDTConfig(n_estimators=20, early_stopping_rounds=5, num_threads=1, seed=0,
                  num_leaves=15, min_child_samples=5)



def _dataset(folder: Path, work: Path, tasks):
    spec = load_dataset(folder)
    work.mkdir(parents=True)
    db = work / "warehouse.duckdb"
    with duckdb.connect(str(db)) as con:
        source = open_source(spec, work)
        for name in spec.extract_order():
            extract_table(con, spec, name, source.read(name), source.fingerprint(name))
        for task in tasks:
            build_task_table(con, spec, spec.tasks[task])
        graph = task_graph(con, spec, FeatureConfig(), work / "graphs")
    return spec, db, graph


def _results_of_a_late_driver(folder: Path) -> None:
    """Give a few 2009 results to a driver signed after test_timestamp: the cut at
    test_timestamp turns their driver_id NULL, so relbench's driver-position train table
    gets rows without an entity (which its nmae counts and relgraph cannot train on)."""
    drivers = pd.read_parquet(folder / "db" / "drivers.parquet")
    late = drivers.loc[drivers["joined"] > RACING["test_timestamp"], "driver_id"].iloc[0]
    results = pd.read_parquet(folder / "db" / "results.parquet")
    early = results.index[(results["date"] < "2009-10-01") & results["position"].notna()][:8]
    results.loc[early, "driver_id"] = late
    results.to_parquet(folder / "db" / "results.parquet", index=False)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("submission")
    racing, shop = write_racing_folder(root / "folders"), write_shop_folder(root / "folders")
    _results_of_a_late_driver(racing)
    return {
        "rel-racing": (racing, *_dataset(racing, root / "racing",
                                         ["driver-position", "driver-dnf-count"])),
        "rel-shop": (shop, *_dataset(shop, root / "shop",
                                     ["customer-churn", "customer-item-purchase"])),
        "root": root,
    }


def _run(data, dataset, task, model, config, seeds=1, context=None):
    folder, spec, db, graph = data[dataset]
    t = spec.tasks[task]
    if context:
        t = dataclasses.replace(t, test_context=context)
    prep = prepare_task(lambda: duckdb.connect(str(db)), spec, t, graph=graph)
    ctx = RunContext(paths=DataPaths(data["root"] / "out"), tracker=None, progress=False,
                     log=lambda msg: None)
    return folder, run_model(prep, model, config, ctx, seeds=seeds)


@pytest.mark.parametrize("dataset,task,metric", [
    ("rel-shop", "customer-churn", "roc_auc"),
    ("rel-racing", "driver-position", "nmae"),
    ("rel-shop", "customer-item-purchase", "map"),
])
@pytest.mark.parametrize("model", ["sage", "lightgbm"])
def test_relbench_scores_the_files_to_our_metric(data, dataset, task, metric, model):
    folder, result = _run(data, dataset, task, model, SAGE if model == "sage" else LGBM)
    run = result["runs"][0]
    path = Path(run["submission"])
    assert path == data["root"] / "out" / "results" / "relbench-submission" / model / \
        f"{dataset}__{task}.csv"
    ours = run["metrics"][f"test_relbench_{metric}"]
    theirs = evaluate_task(f"{dataset}/{task}", path, dataset=folder)
    assert set(theirs) == {metric}
    assert abs(theirs[metric] - ours) < 1e-9, (theirs, ours)
    frame = pd.read_csv(path)
    if metric == "nmae":  # relbench's train labels hold rows relgraph has no entity for
        _, spec, db, _ = data[dataset]
        with duckdb.connect(str(db)) as con:
            unkeyed = con.sql('SELECT count(*) FROM "task_driver-position_unkeyed" '
                              "WHERE split = 'train'").fetchall()[0][0]
        assert unkeyed > 0
    if metric == "map":  # JSON lists of at most eval_k of the folder's own product ids
        lists = frame["product_id"].map(json.loads)
        assert lists.map(len).max() <= 10 and lists.map(len).min() >= 1
        products = pd.read_parquet(folder / "db" / "products.parquet")["product_id"]
        assert set(lists.explode().astype(int)) <= set(products)
    else:
        assert frame.columns[:2].tolist() in (["customer_id", "timestamp"], ["driver_id", "date"])


def test_multiclass_writes_no_file_and_seeds_and_rolling_have_their_folders(data):
    _, result = _run(data, "rel-racing", "driver-dnf-count", "lightgbm", LGBM)
    assert result["runs"][0]["submission"] is None
    assert not any(k.startswith("test_relbench_") for k in result["runs"][0]["metrics"])
    _, result = _run(data, "rel-shop", "customer-churn", "lightgbm", LGBM, seeds=2,
                     context="rolling")
    paths = [Path(r["submission"]).parent.name for r in result["runs"]]
    assert paths == ["lightgbm-rolling", "lightgbm-rolling-seed1"]


def test_link_predictions_take_the_target_keys_as_a_query_gives_them():
    """`predictions_<task>` of a link task: the target keys come as a chunked Arrow
    column (a DuckDB query's), which the top-k lists are built from."""
    import numpy as np
    import pyarrow as pa

    from pipeline.task_kinds import TASK_KINDS

    keys = pa.chunked_array([pa.array([10, 11, 12]), pa.array([13, 14])])
    ((name, column),) = TASK_KINDS["link_prediction"].prediction_columns(
        np.array([[4, 0, -1]]), keys, 10)
    assert name == "top_targets" and column.to_pylist() == [[14, 10, None]]
