"""RelBench 3 dataset folders for the tests, written to a temporary directory.

A RelBench 3 folder is `manifest.yaml` (tables with `pkey`, `time_col`, `fkeys`; the
dataset's `val_timestamp` and `test_timestamp`), `db/<table>.parquet`, and
`tasks/<task>/manifest.yaml` (`kind: forecast`, `task_type`, entity or src/dst columns,
`timedelta`, `num_eval_timestamps`, `eval_k`, `remove_columns`, and DuckDB `sql` over
`timestamps(timestamp)` with `{timedelta}` substituted), optionally with hosted labels in
`tasks/<task>/{train,val,test}.parquet`. relbench 3.0.2 reads these with
`relbench.load_dataset(DIR)`; relgraph must reproduce its label tables row for row.

Each folder is small (a few thousand rows, relbench processes it in about a second) and is
built so that every split rule of RelBench matters on it, i.e. getting one rule wrong
changes the label tables:

* `write_racing_folder`: a seasonal results database (drivers, circuits, races, results).
  Races run March to November and a 10-month gap splits two seasons, so many 30- and
  60-day windows hold no events. Tasks with `num_eval_timestamps: 40` whose window count
  is capped by the test timestamp (validation), by 40 (30-day test) and by the newest row
  of any table, a driver signed after the last race (60-day test). `drivers` is timed and
  has rows created after `test_timestamp` that race in the test windows (the dangling-entity
  rule drops them), results recorded before their driver's signing date (foreign keys that
  the cut at `test_timestamp` turns into NULL), examples of drivers at cutoffs before they
  were signed (`driver-dnf-count` picks drivers with any result after the cutoff), and task
  SQL whose entity filter is an unbounded subquery over `results`, so that running
  train/val SQL on the full database instead of the cut one gives extra rows (drivers on a
  break who come back after `test_timestamp`, drivers signed before it who first race
  after it).
* `write_shop_folder`: a shop (customers, products, transactions) with a recommendation
  task whose destination table (`products`) and source table (`customers`) both have rows
  created after `test_timestamp`, bought in the test window: their ids are pruned from
  the destination lists, rows left with an empty list and rows of new customers dropped.
* `write_clinic_folder`: a clinic (patients, visits) whose two tasks ship hosted
  `{train,val,test}.parquet` labels and `remove_columns`. The hosted labels deliberately
  differ from what the task SQL regenerates (rows left out, labels shifted), so a test can
  tell which one a reader used. One task's SQL reads its own removed column: relbench
  regenerates labels on the database with the removed columns dropped, so that task has
  labels only through its hosted files. The manifests carry keys relbench ignores (a
  legacy `metrics` list, an unknown dataset key). Optionally the folder also holds an
  `autocomplete` and an `external` task (kinds relgraph does not train).

Two relbench behaviours these folders expose (relbench/base/dataset.py:52-60,
task_base.py:13-51 and 246-251): the cut at `test_timestamp` turns foreign
keys into removed rows into NULL (float64), so `driver-position`, which groups by
`results.driver_id`, has train/val rows whose entity is NULL, and relbench keeps them (its
dangling filter compares `NaN >= n`); and relbench raises a TypeError on a split whose
label table is empty (pandas 3), so every split of every task here has rows.

Generation is vectorised numpy/pandas with fixed seeds: the same call writes the same bytes.
Keys follow RelBench's contract: every timed table is sorted by time, primary keys are
0..n-1 in row order, foreign keys hold those indices.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import yaml

__all__ = [
    "RACING", "SHOP", "CLINIC",
    "write_racing_folder", "write_shop_folder", "write_clinic_folder",
    "relbench_tables", "split_timestamps",
]

# What each folder holds, for tests that need names without reading the manifests.
RACING = {
    "name": "rel-racing",
    "val_timestamp": pd.Timestamp("2010-01-01"),
    "test_timestamp": pd.Timestamp("2011-01-01"),
    "tasks": {"driver-podium": "binary_classification",
              "driver-position": "regression",
              "driver-dnf-count": "multiclass_classification"},
}
SHOP = {
    "name": "rel-shop",
    "val_timestamp": pd.Timestamp("2021-03-01"),
    "test_timestamp": pd.Timestamp("2021-03-15"),
    "tasks": {"customer-item-purchase": "recommendation",
              "customer-churn": "binary_classification"},
}
CLINIC = {
    "name": "rel-clinic",
    "val_timestamp": pd.Timestamp("2022-07-01"),
    "test_timestamp": pd.Timestamp("2022-10-01"),
    "tasks": {"patient-emergency": "binary_classification",
              "patient-cost": "regression"},
    "unsupported_tasks": {"patient-age": "autocomplete", "patient-flagged": "external"},
}


# --------------------------------------------------------------------------- helpers
class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the SQL) as block scalars, as relbench writes manifests."""


_Dumper.add_representer(str, lambda d, s: d.represent_scalar(
    "tag:yaml.org,2002:str", s, style="|" if "\n" in s else None))


def _dump(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.dump(data, Dumper=_Dumper, sort_keys=False, width=4096))


def _write_tables(root: Path, tables: dict[str, pd.DataFrame]) -> None:
    (root / "db").mkdir(parents=True, exist_ok=True)
    for name, df in tables.items():
        df.to_parquet(root / "db" / f"{name}.parquet", index=False)


def _write_manifest(root: Path, name: str, val: pd.Timestamp, test: pd.Timestamp,
                    tables: dict[str, dict], extra: dict | None = None) -> None:
    manifest = {"name": name, "manifest_version": 1,
                "description": f"{name}: a RelBench 3 test folder written by tests/relbench_folders.py",
                "val_timestamp": val.strftime("%Y-%m-%d"),
                "test_timestamp": test.strftime("%Y-%m-%d"),
                "tables": {t: {"pkey": s.get("pkey"), "time_col": s.get("time_col"),
                               "fkeys": dict(s.get("fkeys", {}))} for t, s in tables.items()}}
    manifest.update(extra or {})
    _dump(root / "manifest.yaml", manifest)


def _write_task(root: Path, task: dict) -> Path:
    task = {"kind": "forecast", **task, "manifest_version": 1}
    if "sql" in task:  # last, as a block scalar
        task["sql"] = task.pop("sql").strip() + "\n"
    path = root / "tasks" / task["name"] / "manifest.yaml"
    _dump(path, task)
    return path.parent


def split_timestamps(val: pd.Timestamp, test: pd.Timestamp, delta: pd.Timedelta,
                     num_eval: int, min_ts: pd.Timestamp, max_ts: pd.Timestamp
                     ) -> dict[str, pd.DatetimeIndex]:
    """RelBench 3.0.2's seed timestamps per split (relbench/base/task_base.py:194-244):
    train steps back by `delta` from `val - delta` while >= the earliest row of the cut
    database; val starts at `val`, at most `num_eval`, the last <= `test - delta`; test
    starts at `test`, at most `num_eval`, the last <= newest row of the full database -
    `delta`. (`min_ts` is the cut database's earliest row, `max_ts` the full database's
    newest; the cut's earliest is the full's unless every table's first row is later than
    `test`.)"""
    return {
        "train": pd.date_range(start=val - delta, end=min_ts, freq=-delta),
        "val": pd.date_range(start=val, end=min(val + delta * (num_eval - 1), test - delta),
                             freq=delta),
        "test": pd.date_range(start=test, end=min(test + delta * (num_eval - 1), max_ts - delta),
                              freq=delta),
    }


def relbench_tables(folder: Path, task: str, *, regenerate: bool = False
                    ) -> dict[str, pd.DataFrame]:
    """relbench's own train/val/test label tables of `task` in `folder`:
    `get_table(split, mask_input_cols=False)` with no `db=` argument, the path relbench's
    evaluator takes. (Passing `db=task.get_db(upto_test_timestamp=False)` is faster but
    not equivalent: train/val then run on `db.upto(test_timestamp)`, whose foreign keys
    into removed rows are NOT nulled, so e.g. `driver-position` loses the rows whose
    `driver_id` is NULL in the cut database.)"""
    import relbench

    t = relbench.load_dataset(folder).load_task(task, regenerate=regenerate)
    return {split: t.get_table(split, mask_input_cols=False).df
            for split in ("train", "val", "test")}


# --------------------------------------------------------------------------- racing
RACING_PODIUM_SQL = """
SELECT t.timestamp AS date, d.driver_id,
       CAST(COALESCE(MAX(CASE WHEN r.position <= 3 THEN 1 ELSE 0 END), 0) AS INTEGER) AS podium
FROM timestamps t
CROSS JOIN drivers d
LEFT JOIN results r ON r.driver_id = d.driver_id
     AND r.date > t.timestamp AND r.date <= t.timestamp + INTERVAL '{timedelta}'
WHERE d.driver_id IN (SELECT driver_id FROM results
                      WHERE results.date > t.timestamp - INTERVAL '365 days')
GROUP BY t.timestamp, d.driver_id
"""

RACING_POSITION_SQL = """
SELECT t.timestamp AS date, r.driver_id, AVG(r.position) AS position
FROM timestamps t
JOIN results r ON r.date > t.timestamp AND r.date <= t.timestamp + INTERVAL '{timedelta}'
WHERE r.position IS NOT NULL
GROUP BY t.timestamp, r.driver_id
"""

RACING_DNF_SQL = """
SELECT t.timestamp AS date, d.driver_id,
       CAST(LEAST(COUNT(r.result_id), 2) AS INTEGER) AS dnf_count
FROM timestamps t
CROSS JOIN drivers d
LEFT JOIN results r ON r.driver_id = d.driver_id AND r.status <> 'Finished'
     AND r.date > t.timestamp AND r.date <= t.timestamp + INTERVAL '{timedelta}'
WHERE EXISTS (SELECT 1 FROM results f WHERE f.driver_id = d.driver_id AND f.date > t.timestamp)
GROUP BY t.timestamp, d.driver_id
"""


def _racing_calendar(rng: np.random.Generator) -> pd.DataFrame:
    """Races: March to November, one every 14 days, 2004-2014, with the 2008 season
    stopped after July and the 2009 season started in June (a 10-month gap)."""
    seasons = np.arange(2004, 2015)
    n_races = rng.integers(14, 18, size=len(seasons))
    first = pd.to_datetime([f"{y}-03-{d:02d}" for y, d in
                            zip(seasons, rng.integers(8, 22, size=len(seasons)))])
    first = first.where(seasons != 2009, pd.Timestamp("2009-06-07"))
    n_races = np.where(seasons == 2008, 9, np.where(seasons == 2009, 10, n_races))
    season = np.repeat(seasons, n_races)
    rnd = np.concatenate([np.arange(1, n + 1) for n in n_races])
    date = np.repeat(first.values, n_races) + (rnd - 1) * np.timedelta64(14, "D")
    races = pd.DataFrame({"year": season, "round": rnd, "date": date})
    races["circuit_id"] = (rnd - 1 + season) % 12
    races = races.sort_values("date", kind="stable").reset_index(drop=True)
    races.insert(0, "race_id", np.arange(len(races), dtype=np.int64))
    races["name"] = races["year"].astype(str) + " round " + races["round"].astype(str)
    return races[["race_id", "circuit_id", "year", "round", "name", "date"]]


def _racing_drivers(rng: np.random.Generator) -> pd.DataFrame:
    """Drivers with a signing date (`joined`, the time column) and a racing career.

    kinds: veterans signed before the first race; regulars; comebacks (a break from
    mid-2008 that ends after `test_timestamp`); waiting (signed in 2010, first race in
    2011); debutants (signed after `test_timestamp`); early (races from 2010, but its
    signing is recorded in 2012: results before their entity's row); late (signed after
    the last race, no results: it is the newest row of the database)."""
    ts = pd.Timestamp
    groups = [  # (kind, count, joined lo, joined hi, career start offset days, career years)
        ("veteran", 8, ts("2003-11-15"), ts("2004-02-20"), 90, (4, 11)),
        ("regular", 14, ts("2004-03-01"), ts("2009-12-01"), 0, (3, 8)),
        ("comeback", 4, ts("2004-01-10"), ts("2006-06-01"), 60, (11, 11)),
        ("waiting", 3, ts("2010-03-01"), ts("2010-10-01"), 0, (5, 5)),
        ("debutant", 5, ts("2011-02-01"), ts("2013-06-01"), 20, (2, 4)),
        ("early", 1, ts("2012-01-15"), ts("2012-01-15"), 0, (5, 5)),
        ("late", 1, ts("2014-12-20"), ts("2014-12-20"), 0, (0, 0)),
    ]
    kind = np.concatenate([[k] * n for k, n, *_ in groups])
    lo = np.concatenate([[a.value] * n for _, n, a, *_ in groups])
    hi = np.concatenate([[b.value] * n for _, n, _, b, *_ in groups])
    joined = pd.to_datetime(lo + (rng.random(len(kind)) * (hi - lo)).astype(np.int64)).floor("D")
    offset = np.concatenate([[o] * n for _, n, _, _, o, _ in groups])
    years = np.concatenate([rng.integers(a, b + 1, size=n) for _, n, *_, (a, b) in groups])
    start = joined + pd.to_timedelta(offset, unit="D")
    start = start.where(kind != "waiting", pd.Timestamp("2011-03-01"))
    start = start.where(kind != "early", pd.Timestamp("2010-05-01"))
    end = start + pd.to_timedelta(years * 365, unit="D")
    brk_start = pd.Series(pd.Timestamp("2100-01-01"), index=range(len(kind)))
    brk_end = brk_start.copy()
    brk_start[kind == "comeback"] = pd.Timestamp("2008-06-01")
    brk_end[kind == "comeback"] = pd.Timestamp("2011-03-01")
    drivers = pd.DataFrame({"kind": kind, "joined": joined, "start": start, "end": end,
                            "brk_start": brk_start.values, "brk_end": brk_end.values,
                            "skill": rng.normal(size=len(kind))})
    drivers = drivers.sort_values("joined", kind="stable").reset_index(drop=True)
    drivers.insert(0, "driver_id", np.arange(len(drivers), dtype=np.int64))
    drivers["code"] = [f"D{i:03d}" for i in range(len(drivers))]
    drivers["nationality"] = np.array(["GBR", "GER", "ITA", "FRA", "BRA", "ESP", "FIN"])[
        rng.integers(0, 7, size=len(drivers))]
    return drivers


def write_racing_folder(root: Path, name: str = RACING["name"], seed: int = 16) -> Path:
    """A seasonal results database (drivers, circuits, races, results) under root/name, with
    three tasks, all `num_eval_timestamps: 40`:

    * `driver-podium` (binary_classification, 30 days): a podium in the window, for every
      driver with a result in the last 365 days (`IN (subquery)` without an upper bound);
    * `driver-position` (regression, 60 days): mean finishing position in the window, for
      drivers who finished a race in it (so a window in the off-season has no rows);
    * `driver-dnf-count` (multiclass_classification, 60 days): retirements in the window
      capped at 2, for every driver who has any result after the cutoff (`EXISTS`, no
      upper bound).

    Returns the folder."""
    rng = np.random.default_rng(seed)
    out = Path(root) / name
    races = _racing_calendar(rng)
    drivers = _racing_drivers(rng)

    # who races where: active in career, not on a break, 80% turnout
    rd = races["date"].to_numpy()[:, None]
    active = ((rd >= drivers["start"].to_numpy()[None]) & (rd <= drivers["end"].to_numpy()[None])
              & ~((rd >= drivers["brk_start"].to_numpy()[None])
                  & (rd < drivers["brk_end"].to_numpy()[None])))
    race_ix, driver_ix = np.nonzero(active & (rng.random(active.shape) < 0.8))
    results = pd.DataFrame({"race_id": races["race_id"].to_numpy()[race_ix],
                            "driver_id": drivers["driver_id"].to_numpy()[driver_ix],
                            "date": races["date"].to_numpy()[race_ix]})
    results["grid"] = (results.groupby("race_id")["driver_id"]
                       .rank(method="first").astype(np.int64))
    dnf = rng.random(len(results)) < 0.14
    results["status"] = np.where(dnf, np.where(rng.random(len(results)) < 0.5,
                                               "Accident", "Engine"), "Finished")
    score = drivers["skill"].to_numpy()[driver_ix] + rng.normal(scale=1.0, size=len(results))
    results["score"] = np.where(dnf, np.nan, score)
    results["position"] = results.groupby("race_id")["score"].rank(ascending=False,
                                                                   method="first")
    points = np.array([25, 18, 15, 12, 10, 8, 6, 4, 2, 1] + [0] * 40, dtype=np.float64)
    pos = results["position"].fillna(0).to_numpy(dtype=np.int64)
    results["points"] = np.where(pos > 0, points[np.maximum(pos - 1, 0)], 0.0)
    results = results.sort_values(["date", "race_id", "driver_id"], kind="stable")
    results = results.reset_index(drop=True).drop(columns="score")
    results.insert(0, "result_id", np.arange(len(results), dtype=np.int64))

    circuits = pd.DataFrame({"circuit_id": np.arange(12, dtype=np.int64),
                             "name": [f"Circuit {c}" for c in "ABCDEFGHIJKL"],
                             "country": ["GBR", "ITA", "MON", "BEL", "JPN", "BRA",
                                         "AUS", "CAN", "HUN", "ESP", "GER", "USA"]})
    tables = {
        "circuits": circuits,
        "drivers": drivers[["driver_id", "code", "nationality", "joined"]],
        "races": races,
        "results": results[["result_id", "race_id", "driver_id", "date", "grid", "position",
                            "points", "status"]],
    }
    for df in tables.values():  # nanosecond timestamps, as older hosted parquet files have
        for c in df.columns:
            if pd.api.types.is_datetime64_any_dtype(df[c]):
                df[c] = df[c].astype("datetime64[ns]")
    _write_tables(out, tables)
    _write_manifest(out, name, RACING["val_timestamp"], RACING["test_timestamp"], {
        "circuits": {"pkey": "circuit_id"},
        "drivers": {"pkey": "driver_id", "time_col": "joined"},
        "races": {"pkey": "race_id", "time_col": "date", "fkeys": {"circuit_id": "circuits"}},
        "results": {"pkey": "result_id", "time_col": "date",
                    "fkeys": {"race_id": "races", "driver_id": "drivers"}},
    })
    common = {"entity_table": "drivers", "entity_col": "driver_id", "time_col": "date",
              "num_eval_timestamps": 40}
    _write_task(out, {"name": "driver-podium", "task_type": "binary_classification",
                      "description": "Will the driver finish on the podium in the next 30 days?",
                      **common, "target_col": "podium", "timedelta": "30 days",
                      "sql": RACING_PODIUM_SQL})
    _write_task(out, {"name": "driver-position", "task_type": "regression",
                      "description": "The driver's mean finishing position in the next 60 days.",
                      **common, "target_col": "position", "timedelta": "60 days",
                      "sql": RACING_POSITION_SQL})
    _write_task(out, {"name": "driver-dnf-count", "task_type": "multiclass_classification",
                      "description": "Retirements in the next 60 days: 0, 1, 2 or more.",
                      **common, "target_col": "dnf_count", "timedelta": "60 days",
                      "sql": RACING_DNF_SQL})
    return out


# --------------------------------------------------------------------------- shop
SHOP_PURCHASE_SQL = """
SELECT t.timestamp, tr.customer_id, LIST(DISTINCT tr.product_id) AS product_id
FROM timestamps t
JOIN transactions tr ON tr.t_dat > t.timestamp
     AND tr.t_dat <= t.timestamp + INTERVAL '{timedelta}'
GROUP BY t.timestamp, tr.customer_id
"""

SHOP_CHURN_SQL = """
SELECT t.timestamp, c.customer_id,
       CAST(NOT EXISTS (SELECT 1 FROM transactions f WHERE f.customer_id = c.customer_id
            AND f.t_dat > t.timestamp
            AND f.t_dat <= t.timestamp + INTERVAL '{timedelta}') AS INTEGER) AS churn
FROM timestamps t
JOIN customers c ON EXISTS (SELECT 1 FROM transactions p WHERE p.customer_id = c.customer_id
     AND p.t_dat <= t.timestamp AND p.t_dat > t.timestamp - INTERVAL '28 days')
"""


def write_shop_folder(root: Path, name: str = SHOP["name"], seed: int = 17,
                      link_task_type: str = "recommendation") -> Path:
    """A shop (customers, products, transactions) under root/name with

    * `customer-item-purchase` (recommendation, 7 days, eval_k 10): the distinct products a
      customer buys in the window. ~15% of the products and ~10% of the customers are
      created after `test_timestamp` and the new products sell well in the test window, so
      relbench prunes their ids from the lists, drops rows left empty and rows of new
      customers;
    * `customer-churn` (binary_classification, 7 days, num_eval_timestamps 2): no purchase
      in the window, for customers who bought in the last 28 days.

    `link_task_type="link_prediction"` writes the recommendation task with the spelling
    of older hosted manifests (relbench 3.0.2 itself refuses it). Returns the folder."""
    rng = np.random.default_rng(seed)
    out = Path(root) / name
    test = SHOP["test_timestamp"]
    start, end = pd.Timestamp("2020-09-01"), pd.Timestamp("2021-04-05")

    def times(n, lo=start, hi=end):
        return pd.to_datetime(lo.value + (rng.random(n) * (hi - lo).value).astype(np.int64)
                              ).floor("min")

    n_cust, n_new_cust, n_prod, n_new_prod = 300, 30, 120, 20
    signup = np.concatenate([times(n_cust, start - pd.Timedelta(days=200), test),
                             times(n_new_cust, test + pd.Timedelta(hours=1), test + pd.Timedelta(days=14))])
    customers = pd.DataFrame({"signup": signup,
                              "age": rng.integers(18, 80, size=len(signup))})
    customers = customers.sort_values("signup", kind="stable").reset_index(drop=True)
    customers.insert(0, "customer_id", np.arange(len(customers), dtype=np.int64))
    added = np.concatenate([times(n_prod, start - pd.Timedelta(days=100), start + pd.Timedelta(days=150)),
                            times(n_new_prod, test + pd.Timedelta(minutes=1), test + pd.Timedelta(days=3))])
    products = pd.DataFrame({"added": added,
                             "category": np.array(["shoes", "shirts", "hats", "bags"])[
                                 rng.integers(0, 4, size=len(added))],
                             "price": np.round(rng.gamma(2.0, 15.0, size=len(added)), 2)})
    products = products.sort_values("added", kind="stable").reset_index(drop=True)
    products.insert(0, "product_id", np.arange(len(products), dtype=np.int64))

    n_txn = 3200
    cust = rng.choice(len(customers), size=n_txn, p=rng.dirichlet(np.ones(len(customers)) * 0.7))
    lo = np.maximum(customers["signup"].to_numpy()[cust].astype("datetime64[ns]").astype(np.int64),
                    start.value)
    t_dat = pd.to_datetime(lo + (rng.random(n_txn) * (end.value - lo)).astype(np.int64)
                           ).floor("min")
    # a product already on sale at the purchase: popular ones more often, new ones very often
    p_added = products["added"].to_numpy()
    weight = rng.pareto(1.5, size=len(products)) + 0.1
    weight[p_added > np.datetime64(test)] *= 12.0
    u = rng.random((len(cust), len(products)))  # exponential race: P(product) ~ weight
    score = np.where(p_added[None, :] <= t_dat.to_numpy()[:, None], np.log(u) / weight[None, :],
                     -np.inf)
    prod = np.argmax(score, axis=1)
    transactions = pd.DataFrame({"customer_id": customers["customer_id"].to_numpy()[cust],
                                 "product_id": products["product_id"].to_numpy()[prod],
                                 "t_dat": t_dat,
                                 "price": products["price"].to_numpy()[prod]})
    transactions = transactions.sort_values("t_dat", kind="stable").reset_index(drop=True)
    transactions.insert(0, "transaction_id", np.arange(len(transactions), dtype=np.int64))

    _write_tables(out, {"customers": customers, "products": products,
                        "transactions": transactions})
    _write_manifest(out, name, SHOP["val_timestamp"], test, {
        "customers": {"pkey": "customer_id", "time_col": "signup"},
        "products": {"pkey": "product_id", "time_col": "added"},
        "transactions": {"pkey": "transaction_id", "time_col": "t_dat",
                         "fkeys": {"customer_id": "customers", "product_id": "products"}},
    })
    _write_task(out, {"name": "customer-item-purchase", "task_type": link_task_type,
                      "description": "Which products will the customer buy in the next 7 days?",
                      "src_entity_table": "customers", "src_entity_col": "customer_id",
                      "dst_entity_table": "products", "dst_entity_col": "product_id",
                      "time_col": "timestamp", "eval_k": 10, "timedelta": "7 days",
                      "sql": SHOP_PURCHASE_SQL})
    _write_task(out, {"name": "customer-churn", "task_type": "binary_classification",
                      "description": "Will an active customer buy nothing in the next 7 days?",
                      "entity_table": "customers", "entity_col": "customer_id",
                      "target_col": "churn", "time_col": "timestamp", "timedelta": "7 days",
                      "num_eval_timestamps": 2, "sql": SHOP_CHURN_SQL})
    return out


# --------------------------------------------------------------------------- clinic
CLINIC_EMERGENCY_SQL = """
SELECT t.timestamp AS date, p.patient_id,
       CAST(COALESCE(MAX(v.emergency), 0) AS INTEGER) AS emergency
FROM timestamps t
JOIN patients p ON EXISTS (SELECT 1 FROM visits h WHERE h.patient_id = p.patient_id
     AND h.visit_at <= t.timestamp AND h.visit_at > t.timestamp - INTERVAL '180 days')
LEFT JOIN visits v ON v.patient_id = p.patient_id
     AND v.visit_at > t.timestamp AND v.visit_at <= t.timestamp + INTERVAL '{timedelta}'
GROUP BY t.timestamp, p.patient_id
"""

CLINIC_COST_SQL = """
SELECT t.timestamp AS date, v.patient_id, SUM(v.cost) AS cost
FROM timestamps t
JOIN visits v ON v.visit_at > t.timestamp AND v.visit_at <= t.timestamp + INTERVAL '{timedelta}'
GROUP BY t.timestamp, v.patient_id
"""


def _hosted_labels(full: dict[str, pd.DataFrame], cut: dict[str, pd.DataFrame],
                   entity_table: str, sql: str, stamps: dict, delta: str, entity_col: str,
                   target_col: str, time_col: str) -> dict[str, pd.DataFrame]:
    """Label tables as a hosted folder ships them, built here without relbench: the SQL
    run at each split's timestamps on the database cut at `test_timestamp` (train, val) or
    on the full one (test), entities not in the cut entity table dropped, then every 9th
    row left out and the labels shifted (binary labels of every 5th row flipped,
    regression labels +1.5), so that they differ from what relbench regenerates. Written
    in RelBench's canonical order (time, entity)."""
    out = {}
    for split, ts in stamps.items():
        con = duckdb.connect()
        try:
            for name, df in (full if split == "test" else cut).items():
                con.register(name, df)
            con.register("timestamps", pd.DataFrame({"timestamp": ts}))
            df = con.sql(sql.replace("{timedelta}", str(pd.Timedelta(delta)))).df()
        finally:
            con.close()
        df = df[df[entity_col] < len(cut[entity_table])]
        df = df.sort_values([time_col, entity_col], kind="stable").reset_index(drop=True)
        df = df[np.arange(len(df)) % 9 != 4].reset_index(drop=True)
        if df[target_col].dtype.kind in "iu":
            flip = np.arange(len(df)) % 5 == 0
            df[target_col] = np.where(flip, 1 - df[target_col], df[target_col]).astype(
                df[target_col].dtype)
        else:
            df[target_col] = df[target_col] + 1.5
        out[split] = df
    return out


def write_clinic_folder(root: Path, name: str = CLINIC["name"], seed: int = 18,
                        unsupported_kinds: bool = False) -> Path:
    """A clinic (patients, visits) under root/name whose tasks ship hosted labels:

    * `patient-emergency` (binary_classification, 30 days, num_eval_timestamps 3): an
      emergency visit in the window, for patients seen in the last 180 days;
      `remove_columns: [[visits, emergency]]`, the column its SQL reads (so relbench can
      only serve the hosted labels); its manifest also carries a legacy `metrics:` key
      (relbench ignores unknown task keys);
    * `patient-cost` (regression, 30 days, num_eval_timestamps 3): the cost of the
      patient's visits in the window; `remove_columns: [[patients, risk_score]]`.

    Both have `{train,val,test}.parquet` that differ from what their SQL regenerates (see
    `_hosted_labels`), and the dataset manifest an unknown key (`homepage`).
    `unsupported_kinds=True` adds `patient-age` (kind autocomplete, regression on
    `patients.age`) and `patient-flagged` (kind external, hosted labels only). Returns the
    folder."""
    rng = np.random.default_rng(seed)
    out = Path(root) / name
    val, test = CLINIC["val_timestamp"], CLINIC["test_timestamp"]
    start, end = pd.Timestamp("2021-01-01"), pd.Timestamp("2023-01-20")

    n_pat = 260
    first, last = start - pd.Timedelta(days=90), end - pd.Timedelta(days=30)
    registered = pd.to_datetime(first.value + (rng.random(n_pat) * (last - first).value
                                               ).astype(np.int64)).floor("h")
    patients = pd.DataFrame({"registered": registered, "age": rng.integers(1, 95, size=n_pat),
                             "region": np.array(["north", "south", "east", "west"])[
                                 rng.integers(0, 4, size=n_pat)]})
    patients = patients.sort_values("registered", kind="stable").reset_index(drop=True)
    patients.insert(0, "patient_id", np.arange(n_pat, dtype=np.int64))
    frailty = rng.gamma(1.5, 1.0, size=n_pat)
    patients["risk_score"] = np.round(frailty * 10 + rng.normal(size=n_pat), 3)

    n_visit = 2600
    pat = rng.choice(n_pat, size=n_visit, p=frailty / frailty.sum())
    reg = patients["registered"].to_numpy()[pat].astype("datetime64[ns]").astype(np.int64)
    lo = np.maximum(reg, start.value)
    visit_at = pd.to_datetime(lo + (rng.random(n_visit) * (end.value - lo)).astype(np.int64)
                              ).floor("h")
    visits = pd.DataFrame({"patient_id": pat.astype(np.int64), "visit_at": visit_at,
                           "emergency": (rng.random(n_visit) < 0.08 + 0.05 * frailty[pat]
                                         ).astype(np.int64),
                           "cost": np.round(rng.gamma(2.0, 60.0, size=n_visit)
                                            * (1 + frailty[pat]), 2)})
    visits = visits.sort_values("visit_at", kind="stable").reset_index(drop=True)
    visits.insert(0, "visit_id", np.arange(n_visit, dtype=np.int64))

    tables = {"patients": patients, "visits": visits}
    _write_tables(out, tables)
    _write_manifest(out, name, val, test, {
        "patients": {"pkey": "patient_id", "time_col": "registered"},
        "visits": {"pkey": "visit_id", "time_col": "visit_at",
                   "fkeys": {"patient_id": "patients"}},
    }, extra={"homepage": "https://example.invalid/rel-clinic"})

    # the database cut at test_timestamp (no visit precedes its patient: no FK to null)
    cut = {"patients": patients[patients["registered"] <= test],
           "visits": visits[visits["visit_at"] <= test]}
    assert (cut["visits"]["patient_id"] < len(cut["patients"])).all()
    min_ts = min(patients["registered"].min(), visits["visit_at"].min())
    max_ts = max(patients["registered"].max(), visits["visit_at"].max())
    stamps = split_timestamps(val, test, pd.Timedelta("30 days"), 3, min_ts, max_ts)
    common = {"entity_table": "patients", "entity_col": "patient_id", "time_col": "date",
              "timedelta": "30 days", "num_eval_timestamps": 3}
    specs = [
        {"name": "patient-emergency", "task_type": "binary_classification",
         "description": "Will the patient have an emergency visit in the next 30 days?",
         **common, "target_col": "emergency", "remove_columns": [["visits", "emergency"]],
         "metrics": ["roc_auc"], "sql": CLINIC_EMERGENCY_SQL},
        {"name": "patient-cost", "task_type": "regression",
         "description": "The cost of the patient's visits in the next 30 days.",
         **common, "target_col": "cost", "remove_columns": [["patients", "risk_score"]],
         "sql": CLINIC_COST_SQL},
    ]
    hosted = {}
    for spec in specs:
        task_dir = _write_task(out, spec)
        hosted[spec["name"]] = _hosted_labels(tables, cut, "patients", spec["sql"], stamps,
                                              spec["timedelta"], "patient_id",
                                              spec["target_col"], "date")
        for split, df in hosted[spec["name"]].items():
            df.to_parquet(task_dir / f"{split}.parquet", index=False)

    if unsupported_kinds:
        _write_task(out, {"name": "patient-age", "kind": "autocomplete",
                          "task_type": "regression", "entity_table": "patients",
                          "target_col": "age", "sql": "-- autocomplete: no SQL"})
        ext = {"name": "patient-flagged", "kind": "external",
               "task_type": "binary_classification", "entity_table": "patients",
               "entity_col": "patient_id", "target_col": "emergency", "time_col": "date",
               "timedelta": "30 days", "num_eval_timestamps": 3,
               "sql": "-- external: labels are hosted"}
        task_dir = _write_task(out, ext)
        for split, df in hosted["patient-emergency"].items():
            df.to_parquet(task_dir / f"{split}.parquet", index=False)
    return out
