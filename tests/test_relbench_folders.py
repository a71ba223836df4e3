"""The RelBench 3 folders of tests/relbench_folders.py are valid for relbench 3.0.2 itself,
every split rule of RelBench changes their label tables, and relbench's leaderboard
evaluator scores a prediction CSV written in its format (which pins that format down)."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pytest

relbench = pytest.importorskip("relbench")
from relbench.submit import evaluate_task, write_prediction_table  # noqa: E402
from relbench_folders import (  # noqa: E402
    CLINIC, RACING, SHOP, split_timestamps, relbench_tables,
    write_clinic_folder, write_racing_folder, write_shop_folder,
)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("relbench")
    return {"racing": write_racing_folder(root), "shop": write_shop_folder(root),
            "clinic": write_clinic_folder(root, unsupported_kinds=True)}


@pytest.fixture(scope="module")
def racing(folders):
    return {t: relbench_tables(folders["racing"], t) for t in RACING["tasks"]}


def _windows(table: pd.DataFrame, col: str) -> pd.DatetimeIndex:
    return pd.DatetimeIndex(sorted(pd.to_datetime(table[col]).unique())).as_unit("ns")


def _ns(index) -> pd.DatetimeIndex:
    return pd.DatetimeIndex(index).as_unit("ns")


TASKS = ([("racing", t) for t in RACING["tasks"]] + [("shop", t) for t in SHOP["tasks"]]
         + [("clinic", t) for t in [*CLINIC["tasks"], *CLINIC["unsupported_tasks"]]])


@pytest.mark.parametrize("folder,task", TASKS)
def test_relbench_loads_every_task_with_nonempty_splits(folders, folder, task):
    ds = relbench.load_dataset(folders[folder])
    assert task in ds.get_task_names()
    tables = relbench_tables(folders[folder], task)
    assert all(len(df) > 0 for df in tables.values()), {s: len(df) for s, df in tables.items()}


def test_writers_are_deterministic(tmp_path):
    def digest(folder):
        return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(folder.rglob("*")) if p.is_file()}
    for write in (write_racing_folder, write_shop_folder, write_clinic_folder):
        assert digest(write(tmp_path / "a")) == digest(write(tmp_path / "b"))


def test_racing_windows_follow_relbench_split_rules(folders, racing):
    """Window counts are capped by `test - timedelta` (val), by 40 (30-day test) and by the
    newest row of any table, a driver signed after the last race (60-day test); training
    steps back to the earliest row of any table, a signing before the first race."""
    db = relbench.load_dataset(folders["racing"]).get_db(upto_test_timestamp=False)
    val, test = RACING["val_timestamp"], RACING["test_timestamp"]
    last_race = db.table_dict["races"].df["date"].max()
    first_race = db.table_dict["races"].df["date"].min()
    assert db.max_timestamp > last_race and db.min_timestamp < first_race
    for task, days in [("driver-podium", 30), ("driver-dnf-count", 60)]:
        delta = pd.Timedelta(days=days)
        stamps = split_timestamps(val, test, delta, 40, db.min_timestamp, db.max_timestamp)
        for split in ("train", "val", "test"):
            windows = set(_windows(racing[task][split], "date"))
            if task == "driver-podium":  # a 365-day look-back: rows in every window
                assert windows == set(_ns(stamps[split])), split
            else:  # "has a result after the cutoff": none after the 2010 season in the cut
                assert windows <= set(_ns(stamps[split])), split
        assert stamps["train"].min() < first_race
        assert len(stamps["val"]) < 40 and stamps["val"][-1] <= test - delta
    podium = split_timestamps(val, test, pd.Timedelta(days=30), 40, db.min_timestamp,
                              db.max_timestamp)
    assert len(podium["test"]) == 40 and podium["test"][-1] < db.max_timestamp - pd.Timedelta(days=30)
    with_late = split_timestamps(val, test, pd.Timedelta(days=60), 40, db.min_timestamp,
                                 db.max_timestamp)["test"]
    without_late = split_timestamps(val, test, pd.Timedelta(days=60), 40, db.min_timestamp,
                                    last_race)["test"]
    assert len(without_late) < len(with_late) < 40


def test_racing_gaps_leave_windows_without_labels(racing):
    """The off-seasons and the 2008-2009 gap: some 60-day windows hold no finisher at all,
    so driver-position has fewer windows with rows than driver-dnf-count in every split."""
    for split in ("train", "val", "test"):
        position = set(_windows(racing["driver-position"][split], "date"))
        every = set(_windows(racing["driver-dnf-count"][split], "date"))
        assert position < every, split


def test_racing_split_sql_runs_on_cut_database(folders, racing):
    """Train/val SQL on the full database instead of the one cut at test_timestamp gives
    extra rows (the entity filters are unbounded subqueries over results)."""
    ds = relbench.load_dataset(folders["racing"])
    for name in ("driver-podium", "driver-dnf-count"):
        task = ds.load_task(name)
        full = task.get_db(upto_test_timestamp=False)
        n_cut = len(task.get_db().table_dict["drivers"])
        for split in ("train", "val"):
            ours = racing[name][split]
            stamps = pd.DatetimeIndex(sorted(ours["date"].unique()))
            wrong = task.make_table(full, stamps).df
            wrong = wrong[wrong["driver_id"] < n_cut]
            assert len(wrong) > len(ours), (name, split)


def test_racing_dangling_entities_and_nulled_foreign_keys(folders, racing):
    ds = relbench.load_dataset(folders["racing"])
    task = ds.load_task("driver-position")
    cut, full = task.get_db(), task.get_db(upto_test_timestamp=False)
    n_cut = len(cut.table_dict["drivers"])
    assert n_cut < len(full.table_dict["drivers"])
    # drivers signed after test_timestamp race in the test windows; relbench drops them
    stamps = pd.DatetimeIndex(sorted(racing["driver-position"]["test"]["date"].unique()))
    raw = task.make_table(full, stamps).df
    assert (raw["driver_id"] >= n_cut).any()
    assert (racing["driver-position"]["test"]["driver_id"] < n_cut).all()
    # results recorded before their driver's signing: the cut nulls their driver_id, and
    # driver-position (grouped by results.driver_id) then has rows with a NULL entity
    assert cut.table_dict["results"].df["driver_id"].isna().any()
    assert racing["driver-position"]["val"]["driver_id"].isna().any()
    assert racing["driver-position"]["test"]["driver_id"].notna().all()


def test_racing_has_examples_of_entities_created_after_their_cutoff(folders, racing):
    drivers = pd.read_parquet(folders["racing"] / "db" / "drivers.parquet")
    train = racing["driver-dnf-count"]["train"].merge(drivers, on="driver_id")
    assert (train["joined"] > train["date"]).any()
    assert set(racing["driver-dnf-count"]["train"]["dnf_count"]) == {0, 1, 2}


def test_shop_recommendation_prunes_destinations_created_after_test(folders):
    ds = relbench.load_dataset(folders["shop"])
    task = ds.load_task("customer-item-purchase")
    assert task.num_eval_timestamps == 1 and task.eval_k == 10
    cut, full = task.get_db(), task.get_db(upto_test_timestamp=False)
    n_prod, n_cust = len(cut.table_dict["products"]), len(cut.table_dict["customers"])
    assert n_prod < len(full.table_dict["products"])
    test = relbench_tables(folders["shop"], "customer-item-purchase")["test"]
    raw = task.make_table(full, pd.DatetimeIndex([SHOP["test_timestamp"]])).df
    raw_lists = raw["product_id"].map(list)
    assert raw_lists.map(lambda ids: any(i >= n_prod for i in ids)).sum() > 5
    assert raw_lists.map(lambda ids: all(i >= n_prod for i in ids)).any()  # rows emptied
    assert (raw["customer_id"] >= n_cust).any()  # new customers
    assert test["product_id"].map(lambda ids: all(i < n_prod for i in ids) and len(ids) > 0).all()
    assert (test["customer_id"] < n_cust).all()
    old = raw[(raw["customer_id"] < n_cust)
              & raw_lists.map(lambda ids: any(i < n_prod for i in ids))]
    assert len(test) == len(old)


def test_link_prediction_spelling_is_refused_by_relbench(tmp_path):
    folder = write_shop_folder(tmp_path, link_task_type="link_prediction")
    with pytest.raises(ValueError, match="task_type must be one of"):
        relbench.load_dataset(folder).load_task("customer-item-purchase")


def test_clinic_hosted_labels_and_removed_columns(folders):
    ds = relbench.load_dataset(folders["clinic"])
    for name, (table, column) in [("patient-emergency", ("visits", "emergency")),
                                  ("patient-cost", ("patients", "risk_score"))]:
        task_dir = folders["clinic"] / "tasks" / name
        hosted = relbench_tables(folders["clinic"], name)
        for split in ("train", "val", "test"):
            on_disk = pd.read_parquet(task_dir / f"{split}.parquet")
            pd.testing.assert_frame_equal(hosted[split], on_disk)
        if name == "patient-emergency":
            # relbench regenerates labels on task.get_db(), i.e. with the task's
            # remove_columns dropped: SQL that reads a removed column cannot run
            with pytest.raises(Exception, match='"emergency"'):
                relbench_tables(folders["clinic"], name, regenerate=True)
        else:
            regenerated = relbench_tables(folders["clinic"], name, regenerate=True)
            for split in ("train", "val", "test"):
                assert len(regenerated[split]) > len(hosted[split])
        task = ds.load_task(name)
        assert column not in task.get_db().table_dict[table].df.columns
        assert column in ds.get_db().table_dict[table].df.columns
    cost = ds.load_task("patient-cost")
    hosted_std = pd.read_parquet(folders["clinic"] / "tasks" / "patient-cost" / "train.parquet"
                                 )["cost"].std(ddof=1)
    assert cost.nmae_std == pytest.approx(hosted_std, rel=1e-12)


# ------------------------------------------------------------------ the evaluator
def _expected_map(truth: list, pred: np.ndarray, k: int) -> float:
    aps = []
    for true_ids, ids in zip(truth, pred):
        hits = np.isin(ids, np.asarray(true_ids))
        precision = np.cumsum(hits) / np.arange(1, k + 1)
        aps.append((precision * hits).sum() / min(len(true_ids), k))
    return float(np.mean(aps))


SCORED = [("racing", "driver-podium"), ("racing", "driver-position"),
          ("shop", "customer-churn"), ("shop", "customer-item-purchase"),
          ("clinic", "patient-emergency"), ("clinic", "patient-cost")]


@pytest.mark.parametrize("folder,name", SCORED)
def test_evaluate_task_scores_a_prediction_csv(folders, folder, name, tmp_path):
    """A CSV of relbench's test keys plus a prediction column, rows in any order, is scored
    by `evaluate_task("<dataset>/<task>", csv, dataset=DIR)` to the metric computed here."""
    path = folders[folder]
    dataset_name = relbench.load_dataset(path).manifest.name
    task = relbench.load_dataset(path).load_task(name)
    tables = relbench_tables(path, name)
    test, train = tables["test"], tables["train"]
    rng = np.random.default_rng(0)
    csv = tmp_path / f"{dataset_name}__{name}.csv"
    if task.task_type.value == "recommendation":
        popular = pd.Series(np.concatenate(train[task.dst_entity_col].map(list).to_list())
                            ).value_counts().index.to_numpy()[:40]
        pred = np.stack([rng.permutation(popular)[: task.eval_k] for _ in range(len(test))])
        out = test[[task.src_entity_col, task.time_col]].copy()
        out[task.dst_entity_col] = [json.dumps([int(i) for i in row]) for row in pred]
        expected = {"map": _expected_map(test[task.dst_entity_col].to_list(), pred, task.eval_k)}
    else:
        y = test[task.target_col].to_numpy(dtype=float)
        if task.task_type.value == "binary_classification":
            pred = np.clip(0.3 * y + rng.random(len(y)) * 0.7, 0, 1)
            from sklearn.metrics import roc_auc_score
            expected = {"roc_auc": roc_auc_score(y, pred)}
        else:
            pred = train[task.target_col].mean() + rng.normal(size=len(y))
            std = train[task.target_col].std(ddof=1)
            expected = {"nmae": float(np.abs(y - pred).mean() / std)}
        out = test[[task.entity_col, task.time_col]].copy()
        out[task.target_col] = pred
    out.iloc[rng.permutation(len(out))].to_csv(csv, index=False)

    got = evaluate_task(f"{dataset_name}/{name}", csv, dataset=str(path))
    assert got.keys() == expected.keys()
    assert got == pytest.approx(expected, rel=1e-9, abs=1e-12)
    # a local folder as the dataset part of the name needs no `dataset=`
    assert evaluate_task(f"{path}/{name}", csv) == got
    # the same CSV as relbench's own writer makes, but for row order
    if task.task_type.value != "recommendation":
        mine = pd.read_csv(csv).sort_values([task.time_col, task.entity_col]).reset_index(drop=True)
        theirs = write_prediction_table(task, pred, tmp_path / "theirs.csv")
        theirs = pd.read_csv(theirs).sort_values([task.time_col, task.entity_col]
                                                 ).reset_index(drop=True)
        pd.testing.assert_frame_equal(mine, theirs)


def test_evaluate_task_refuses_multiclass_and_bad_keys(folders, tmp_path):
    path = folders["racing"]
    test = relbench_tables(path, "driver-dnf-count")["test"]
    csv = tmp_path / "dnf.csv"
    test.to_csv(csv, index=False)
    with pytest.raises(NotImplementedError, match="binary_classification, regression"):
        evaluate_task(f"{RACING['name']}/driver-dnf-count", csv, dataset=str(path))
    podium = relbench_tables(path, "driver-podium")["test"]
    podium.iloc[1:].assign(podium=0.5).to_csv(csv, index=False)  # one row missing
    with pytest.raises(ValueError, match="1 missing"):
        evaluate_task(f"{RACING['name']}/driver-podium", csv, dataset=str(path))
    out = podium.assign(podium=0.5)
    out["date"] = pd.to_datetime(out["date"]).dt.strftime("%Y-%m-%dT%H:%M:%S")  # ISO with T
    out.to_csv(csv, index=False)
    with pytest.raises(ValueError, match="do not match"):
        evaluate_task(f"{RACING['name']}/driver-podium", csv, dataset=str(path))
