"""No leakage per test context, per example, on a RelBench folder with many test windows.

The seasonal racing folder (tests/relbench_folders.py) has a 30-day task with up to 40 test
windows, so test examples have cutoffs well after the test cutoff. The folder is copied
with every non-key column of every row after a time T rewritten; the warehouse, labels,
graph, a small sage and LightGBM are built afresh for each copy, and their test
predictions compared example by example (training sees no row after the test cutoff, so
the models are the same):

- frozen, T = the test cutoff: no test prediction changes (every test example sees rows up
  to the earlier of its cutoff and the test cutoff);
- rolling, T = a later test window's cutoff: no prediction of an example whose cutoff is at
  or before T changes, and some later one does (it sees its own rows);
- the positive control: under rolling, T = the test cutoff changes some predictions of
  examples after it, none of those at it.

Also: a task's `remove_columns` carry no information to the graph or LightGBM.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import duckdb
import numpy as np
import pytest
import torch

from pipeline.data.datasets import load_dataset
from pipeline.data.sources import open_source
from pipeline.data.sqlutil import q
from pipeline.data.tasks import build_task_table
from pipeline.data.warehouse import extract_table
from pipeline.graph.features import FeatureConfig
from pipeline.models.gbdt import GBDTConfig, build_features
from pipeline.training.graph_family import GRAPH
from pipeline.training.gbdt_family import GBDT
from pipeline.training.prepare import prepare_task, task_graph
from pipeline.training.trainer import TrainConfig
from pipeline.training.zoo import model_entry
from tests.relbench_folders import RACING, write_clinic_folder, write_racing_folder

TASK = "driver-podium"
SAGE = TrainConfig(model="sage", hidden=16, layers=2, fanouts=(4, 2), epochs=1, batch_size=256,
                   max_steps_per_epoch=2, seed=3, device="cpu")
LGBM = GBDTConfig(n_estimators=30, early_stopping_rounds=10, num_threads=1, seed=3,
                  num_leaves=15, min_child_samples=5)


def _rewrite(src: Path, out: Path, after) -> Path:
    """A copy of the folder `src` whose rows with time > `after` have every column but
    keys and time rewritten (numbers shuffled within 1..17, so that both classes of the
    labels stay; text prefixed)."""
    import yaml

    shutil.copytree(src, out)
    manifest = yaml.safe_load((src / "manifest.yaml").read_text())
    con = duckdb.connect()
    for name, t in manifest["tables"].items():
        if not t.get("time_col"):
            continue
        path = src / "db" / f"{name}.parquet"
        keep = {t["pkey"], t["time_col"], *(t.get("fkeys") or {})}
        select = []
        for col, dtype, *_ in con.execute(f"DESCRIBE SELECT * FROM '{path}'").fetchall():
            if col in keep:
                select.append(q(col))
                continue
            changed = (f"'zz ' || {q(col)}" if dtype == "VARCHAR"
                       else f"CAST(({q(col)} * 7 + 3) % 17 + 1 AS {dtype})")
            select.append(f"CASE WHEN {q(t['time_col'])} > TIMESTAMP '{after}' THEN {changed} "
                          f"ELSE {q(col)} END AS {q(col)}")
        con.execute(f"COPY (SELECT {', '.join(select)} FROM '{path}') "
                    f"TO '{out / 'db' / f'{name}.parquet'}' (FORMAT parquet)")
    con.close()
    return out



def _predictions(folder: Path, work: Path) -> dict:
    """{context: {model: {(entity, cutoff): score}}} of the folder's test split."""
    spec = load_dataset(folder)
    work.mkdir()
    db = work / "warehouse.duckdb"
    with duckdb.connect(str(db)) as con:
        source = open_source(spec, work)
        for name in spec.extract_order():
            extract_table(con, spec, name, source.read(name), source.fingerprint(name))
        build_task_table(con, spec, spec.tasks[TASK])
        graph = task_graph(con, spec, FeatureConfig(), work / "graphs")
    out = {}
    for context in ("frozen", "rolling"):
        task = dataclasses.replace(spec.tasks[TASK], test_context=context)
        prep = prepare_task(lambda: duckdb.connect(str(db)), spec, task, graph=graph)
        ex = prep.examples(("test",))["test"]
        keys = list(zip(ex.entity.tolist(), ex.cutoff.tolist()))
        out[context] = {}
        for model, family, cfg in (("sage", GRAPH, SAGE), ("lightgbm", GBDT, LGBM)):
            # the same checkpoint directory: the second context resumes the first's model
            fit = family.fit(model_entry(model), cfg, prep, work / "ckpt" / model,
                             progress=False, log=lambda msg: None)
            out[context][model] = dict(zip(keys, np.asarray(fit.test_scores).tolist()))
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread count: bit-identical numbers
    root = tmp_path_factory.mktemp("relbench-leakage")
    base = write_racing_folder(root / "folders")
    test = RACING["test_timestamp"]
    mid = test + 4 * (RACING_DELTA := np.timedelta64(30, "D"))
    folders = {"base": base, "after_test": _rewrite(base, root / "after_test", test),
               "after_mid": _rewrite(base, root / "after_mid", mid)}
    out = {name: _predictions(f, root / f"work-{name}") for name, f in folders.items()}
    torch.set_num_threads(threads)
    out["test"], out["mid"] = test, mid
    assert RACING_DELTA
    return out


def _epoch(ts) -> int:
    return int(np.datetime64(ts, "s").astype(np.int64))


def _split(a: dict, b: dict, at: int) -> tuple[list, list]:
    """(keys with cutoff <= at whose scores differ, keys with cutoff > at whose scores differ)."""
    assert a.keys() == b.keys()
    early = [k for k in a if k[1] <= at and a[k] != b[k]]
    late = [k for k in a if k[1] > at and a[k] != b[k]]
    return early, late


def test_frozen_no_row_after_the_test_cutoff_changes_a_test_prediction(runs):
    base, leaky = runs["base"]["frozen"], runs["after_test"]["frozen"]
    test = _epoch(runs["test"])
    cutoffs = {k[1] for k in base["sage"]}
    assert len(cutoffs) > 5 and max(cutoffs) > test  # many windows after the test cutoff
    for model in ("sage", "lightgbm"):
        assert base[model] == leaky[model], model


def test_rolling_no_row_after_an_examples_cutoff_changes_it(runs):
    base, leaky = runs["base"]["rolling"], runs["after_mid"]["rolling"]
    mid = _epoch(runs["mid"])
    for model in ("sage", "lightgbm"):
        early, late = _split(base[model], leaky[model], mid)
        assert not early, (model, early[:5])
        assert any(k[1] <= mid for k in base[model])
        if model == "sage":
            assert late, "rows after the middle window never reached a later example"


def test_positive_control_rolling_sees_rows_after_the_test_cutoff(runs):
    test = _epoch(runs["test"])
    base, leaky = runs["base"]["rolling"], runs["after_test"]["rolling"]
    for model in ("sage", "lightgbm"):
        early, late = _split(base[model], leaky[model], test)
        assert not early and late, (model, len(early), len(late))
    # the contexts agree on examples at the test cutoff, and differ after it
    frozen, rolling = runs["base"]["frozen"]["sage"], runs["base"]["rolling"]["sage"]
    early, late = _split(frozen, rolling, test)
    assert not early and late


def test_removed_columns_are_no_feature(tmp_path):
    folder = write_clinic_folder(tmp_path / "folders")
    spec = load_dataset(folder)
    task = spec.tasks["patient-cost"]
    assert task.remove_columns == (("patients", "risk_score"),)
    (tmp_path / "work").mkdir()
    db = tmp_path / "work" / "warehouse.duckdb"
    with duckdb.connect(str(db)) as con:
        source = open_source(spec, tmp_path / "work")
        for name in spec.extract_order():
            extract_table(con, spec, name, source.read(name), source.fingerprint(name))
        build_task_table(con, spec, task)
        graph = task_graph(con, spec, FeatureConfig(), tmp_path / "work" / "graphs")
        _, names = build_features(con, spec, task, f"task_{task.name}", flat=True)
        other = spec.tasks["patient-emergency"]  # removes visits.emergency, not risk_score
        build_task_table(con, spec, other)
        _, other_names = build_features(con, spec, other, f"task_{other.name}", flat=True)
    assert not any("risk_score" in n for n in names)
    assert any("risk_score" in n for n in other_names)
    meta = graph.feature_meta["patients"]["names"]
    cols = [i for i, n in enumerate(meta["num"]) if n.startswith("risk_score")]
    assert cols, meta  # a feature of the dataset's graph ...
    prep = prepare_task(lambda: duckdb.connect(str(db)), spec, task, graph=graph)
    for view in (prep.training_graph(), prep.test_graph(), prep.scoring_graph()):
        x = view["patients"].x_num[:, cols]
        assert bool((x == 0).all())  # ... that this task's views hold as missing
    assert bool((graph.data["patients"].x_num[:, cols] != 0).any())  # the graph itself keeps it
