import math
from datetime import datetime

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa
import pytest

from pipeline.evaluate import MetricWarning
from pipeline.models.gbdt import (
    GBDTConfig,
    GBDTModel,
    _Builder,
    _paths,
    build_features,
    predict_gbdt,
    q,
    train_gbdt,
)
from pipeline.data.spec import parse_spec

FAST = GBDTConfig(n_estimators=200, early_stopping_rounds=20, num_threads=1,
                  min_child_samples=5, learning_rate=0.1)


def _spec(tables: dict, tasks: dict):
    return parse_spec({"name": "shop", "source": {"kind": "synthetic"},
                       "tables": tables, "tasks": tasks})


SHOP_TABLES = {
    "customers": {"primary_key": "customer_id", "time_column": "signup_at"},
    "products": {"primary_key": "product_id"},
    "orders": {"primary_key": "order_id", "time_column": "ordered_at",
               "foreign_keys": {"customer_id": "customers"}},
    "order_items": {"primary_key": "item_id",
                    "foreign_keys": {"order_id": "orders", "product_id": "products"}},
}


def _task(kind: str, **extra):
    return {"type": kind, "entity_table": "customers", "label_sql": "SELECT 1", "horizon": "30d",
            "val_cutoff": "2021-10-01", "test_cutoff": "2021-11-01", **extra}


SHOP = _spec(SHOP_TABLES, {
    "churn": _task("binary_classification"),
    "spend": _task("regression", metric="mae"),
    "bucket": _task("multiclass_classification", num_classes=3),
    "next_products": _task("link_prediction", target_table="products", metric="map_at_10"),
})


def finish_warehouse(con, spec):
    """Turn the tables of schema `src` into the warehouse layout: `__id` dense in
    (time, primary key) order and one `__fk_<fk>` per foreign key."""
    for name in spec.extract_order():
        t = spec.tables[name]
        order = ([f"s.{q(t.time_column)} NULLS FIRST"] if t.time_column else [])
        order += [f"s.{q(c)}" for c in t.primary_key]
        cols, joins = [], []
        for i, fk in enumerate(t.foreign_keys):
            ref = spec.tables[fk.references]
            on = " AND ".join(f"r{i}.{q(rc)} = s.{q(c)}"
                              for c, rc in zip(fk.columns, ref.primary_key))
            joins.append(f"LEFT JOIN main.{q(fk.references)} AS r{i} ON {on}")
            cols.append(f", r{i}.__id AS {q('__fk_' + fk.name)}")
        con.execute(f"CREATE TABLE main.{q(name)} AS SELECT s.*, "
                    f"row_number() OVER (ORDER BY {', '.join(order)}) - 1 AS __id {''.join(cols)} "
                    f"FROM src.{q(name)} AS s {' '.join(joins)}")


def _load(con, name, frame: pl.DataFrame):
    con.register("frame_in", frame.to_arrow())
    con.execute(f"CREATE TABLE src.{q(name)} AS SELECT * FROM frame_in")
    con.unregister("frame_in")


def small_shop():
    """Hand-checkable: 2 customers, 4 orders, 4 items, 2 products."""
    con = duckdb.connect()
    con.execute("CREATE SCHEMA src")
    d = datetime
    _load(con, "customers", pl.DataFrame({
        "customer_id": [1, 2], "segment": ["a", "b"],
        "signup_at": [d(2020, 1, 1), d(2020, 1, 1)]}))
    _load(con, "orders", pl.DataFrame({
        "order_id": [11, 12, 13, 14], "customer_id": [1, 1, 2, 1],
        "ordered_at": [d(2020, 1, 10), d(2020, 2, 5), d(2020, 2, 20), d(2020, 3, 10)],
        "amount": [10.0, 20.0, 5.0, 100.0]}))
    _load(con, "order_items", pl.DataFrame({
        "item_id": [21, 22, 23, 24], "order_id": [11, 12, 12, 14], "product_id": [31, 31, 32, 32],
        "quantity": [2, 1, 3, 7]}))
    _load(con, "products", pl.DataFrame({
        "product_id": [31, 32], "price": [3.0, 5.0], "category": ["x", "y"]}))
    finish_warehouse(con, SHOP)
    con.execute("""CREATE TABLE task_churn AS SELECT c.customer_id, c.__id AS __entity_id,
        t.cutoff, t.split, t.label FROM customers c JOIN (VALUES
        (1, TIMESTAMP '2020-02-01', 'train', 0), (1, TIMESTAMP '2020-03-01', 'val', 1),
        (2, TIMESTAMP '2020-03-01', 'val', 0)) t(customer_id, cutoff, split, label)
        USING (customer_id)""")
    return con


def _row(frame, customer, cutoff):
    return frame.filter((pl.col("__entity_id") == customer)
                        & (pl.col("cutoff") == cutoff)).row(0, named=True)


def test_paths_skip_backtracking():
    labels = [" / ".join(s.label for s in p) for p in _paths(SHOP, "customers", 2)]
    assert labels == ["orders.customer_id", "orders.customer_id / order_items.order_id"]
    labels = [" / ".join(s.label for s in p) for p in _paths(SHOP, "orders", 2)]
    assert labels == ["order_items.order_id", "customer_id->customers",
                      "order_items.order_id / product_id->products",
                      "customer_id->customers / orders.customer_id"]


def test_aggregates_by_hand():
    con = small_shop()
    cfg = GBDTConfig(max_hops=3)
    frame, names = build_features(con, SHOP, "churn", "task_churn", flat=False, config=cfg)
    assert frame["cutoff"].to_list() == sorted(frame["cutoff"].to_list())
    assert frame["split"].to_list() == ["train", "val", "val"]
    c1 = _row(frame, 0, datetime(2020, 3, 1))  # customer 1 (__id 0) on 2020-03-01
    o, oi = "orders.customer_id: ", "orders.customer_id / order_items.order_id: "
    p = "orders.customer_id / order_items.order_id / product_id->products: "
    # Order 14 (2020-03-10) and its item are after the cutoff: invisible.
    assert c1[o + "count"] == 2 and c1[o + "count_30d"] == 1 and c1[o + "count_90d"] == 2
    assert c1[o + "days_since_last"] == pytest.approx(25.0)  # 2020-02-05 -> 2020-03-01
    assert (c1[o + "sum(amount)"], c1[o + "mean(amount)"], c1[o + "max(amount)"]) == (30, 15, 20)
    # Items of orders 11 and 12; they happen when their order does.
    assert c1[oi + "count"] == 3 and c1[oi + "count_30d"] == 2
    assert c1[oi + "sum(quantity)"] == 6 and c1[oi + "mean(quantity)"] == 2
    assert c1[oi + "max(quantity)"] == 3
    # Products of those items: 31, 31, 32.
    assert c1[p + "count"] == 3 and c1[p + "distinct"] == 2 and c1[p + "distinct(category)"] == 2
    assert c1[p + "mean(price)"] == pytest.approx(11 / 3) and c1[p + "max(price)"] == 5.0
    assert c1["customers: age_days"] == pytest.approx(60.0)
    c2 = _row(frame, 1, datetime(2020, 3, 1))
    assert (c1["customers.segment"], c2["customers.segment"]) == (0, 1)
    assert c2[o + "count"] == 1 and c2[oi + "count"] == 0 and c2[oi + "sum(quantity)"] == 0
    assert c2[oi + "mean(quantity)"] is None and c2[oi + "days_since_last"] is None
    early = _row(frame, 0, datetime(2020, 2, 1))
    assert early[o + "count"] == 1 and early[o + "sum(amount)"] == 10.0
    assert frame.schema["customers.segment"] == pl.Int64
    assert frame.schema[o + "count"] == pl.Float64


def test_sibling_and_parent_paths_by_hand():
    con = small_shop()
    spec = _spec(SHOP_TABLES, {"big": {
        "type": "regression", "entity_table": "orders", "label_sql": "SELECT 1",
        "horizon": "30d", "val_cutoff": "2020-03-01", "test_cutoff": "2020-04-01"}})
    con.execute("""CREATE TABLE task_big AS SELECT order_id, __id AS __entity_id,
        TIMESTAMP '2020-03-01' AS cutoff, 'val' AS split, 1.0 AS label FROM orders
        WHERE ordered_at <= TIMESTAMP '2020-03-01'""")
    frame, _ = build_features(con, spec, "big", "task_big", flat=False)
    first = frame.row(0, named=True)  # order 11 of customer 1
    sib = "customer_id->customers / orders.customer_id: "
    assert first[sib + "count"] == 2 and first[sib + "sum(amount)"] == 30.0
    assert first["customer_id->customers: segment"] == 0
    assert first["customer_id->customers: age_days"] == pytest.approx(60.0)
    assert first["order_items.order_id / product_id->products: distinct"] == 1


def test_flat_sees_only_the_entity_row():
    con = small_shop()
    frame, names = build_features(con, SHOP, "churn", "task_churn", flat=True)
    assert names == ["customers.segment", "customers: age_days"]
    assert frame.columns == ["split", "cutoff", "__entity_id", "label"] + names


def test_hostile_names():
    weird_c, weird_o = 'cu"st omers', "ördérs; DROP"
    spec = _spec({weird_c: {"primary_key": 'i"d', "time_column": "t t"},
                  weird_o: {"primary_key": "oid", "time_column": 'wh"en',
                            "foreign_keys": {'c"id': weird_c}}},
                 {"x": {"type": "binary_classification", "entity_table": weird_c,
                        "label_sql": "SELECT 1", "horizon": "1d", "val_cutoff": "2020-01-05",
                        "test_cutoff": "2020-01-06"}})
    con = duckdb.connect()
    con.execute("CREATE SCHEMA src")
    _load(con, weird_c, pl.DataFrame({'i"d': [1], "t t": [datetime(2020, 1, 1)],
                                      'v"al': ["p"]}))
    _load(con, weird_o, pl.DataFrame({"oid": [1, 2], 'c"id': [1, 1],
                                      'wh"en': [datetime(2020, 1, 2), datetime(2020, 1, 9)],
                                      "amt'": [1.5, 2.0]}))
    finish_warehouse(con, spec)
    con.execute(f"CREATE TABLE {q('task x')} AS SELECT __id AS __entity_id, "
                "TIMESTAMP '2020-01-05' AS cutoff, 'val' AS split, 1 AS label FROM " + q(weird_c))
    frame, names = build_features(con, spec, "x", "task x", flat=False)
    row = frame.row(0, named=True)
    assert row[f'{weird_o}.c"id: count'] == 1
    assert row[f"{weird_o}.c\"id: sum(amt')"] == 1.5
    assert row[f'{weird_c}.v"al'] == 0


# ---------------------------------------------------------------------------- generated shop

START = datetime(2021, 1, 1)
TRAIN_CUTOFFS = ["2021-06-01", "2021-07-01", "2021-08-01", "2021-09-01"]


def generated_shop(n_customers=300, n_products=40, seed=0):
    """Customers are either frequent or rare buyers (a latent rate that the segment does not
    reveal); each re-buys mostly from 3 favourite products."""
    rng = np.random.default_rng(seed)
    con = duckdb.connect()
    con.execute("CREATE SCHEMA src")
    ids = np.arange(n_customers)
    signup = rng.integers(0, 120, n_customers)
    _load(con, "customers", pl.DataFrame({
        "customer_id": ids, "segment": rng.choice(["a", "b", "c"], n_customers),
        "signup_at": (np.datetime64("2021-01-01") + signup.astype("timedelta64[D]"))
        .astype("datetime64[us]")}))
    rate = np.where(rng.random(n_customers) < 0.5, 0.01, 0.2)  # orders per day
    span = 365 - signup
    counts = rng.poisson(rate * span)
    cust = np.repeat(ids, counts)
    days = signup[cust] + rng.random(len(cust)) * span[cust]
    n_orders = len(cust)
    _load(con, "orders", pl.DataFrame({
        "order_id": np.arange(n_orders), "customer_id": cust,
        "ordered_at": (np.datetime64("2021-01-01T00:00:00") +
                       (days * 86400).astype("timedelta64[s]")).astype("datetime64[us]"),
        "amount": rng.gamma(2.0, 20.0, n_orders)}))
    favourites = rng.integers(0, n_products, (n_customers, 3))
    per_order = rng.integers(1, 3, n_orders)
    item_order = np.repeat(np.arange(n_orders), per_order)
    fav = favourites[cust[item_order], rng.integers(0, 3, len(item_order))]
    product = np.where(rng.random(len(item_order)) < 0.8, fav,
                       rng.integers(0, n_products, len(item_order)))
    _load(con, "order_items", pl.DataFrame({
        "item_id": np.arange(len(item_order)), "order_id": item_order, "product_id": product,
        "quantity": rng.integers(1, 4, len(item_order))}))
    _load(con, "products", pl.DataFrame({
        "product_id": np.arange(n_products), "price": rng.gamma(2.0, 5.0, n_products),
        "category": rng.choice(["x", "y", "z"], n_products)}))
    finish_warehouse(con, SHOP)
    _make_tasks(con)
    return con


def _make_tasks(con):
    splits = [(c, "train") for c in TRAIN_CUTOFFS] + [("2021-10-01", "val"), ("2021-11-01", "test")]
    values = ", ".join(f"(TIMESTAMP '{c}', '{s}')" for c, s in splits)
    con.execute(f"CREATE TABLE cutoffs AS SELECT * FROM (VALUES {values}) t(cutoff, split)")
    entities = """SELECT c.customer_id, c.__id AS __entity_id, t.cutoff, t.split
        FROM cutoffs t JOIN customers c ON c.signup_at <= t.cutoff"""
    future = """(SELECT COUNT(*) FROM orders o WHERE o.__fk_customer_id = e.__entity_id
        AND o.ordered_at > e.cutoff AND o.ordered_at <= e.cutoff + INTERVAL 30 DAY)"""
    spend = """(SELECT COALESCE(SUM(o.amount), 0) FROM orders o WHERE o.__fk_customer_id =
        e.__entity_id AND o.ordered_at > e.cutoff AND o.ordered_at <= e.cutoff + INTERVAL 30 DAY)"""
    con.execute(f"CREATE TABLE task_churn AS SELECT e.*, ({future} = 0)::INTEGER AS label "
                f"FROM ({entities}) e")
    con.execute(f"CREATE TABLE task_spend AS SELECT e.*, {spend}::DOUBLE AS label "
                f"FROM ({entities}) e")
    con.execute(f"CREATE TABLE task_bucket AS SELECT e.*, LEAST({future}, 2)::INTEGER AS label "
                f"FROM ({entities}) e")
    con.execute("""CREATE TABLE task_next_products AS SELECT DISTINCT c.customer_id,
        c.__id AS __entity_id, t.cutoff, t.split, i.__fk_product_id AS __target_id
        FROM cutoffs t JOIN orders o ON o.ordered_at > t.cutoff
          AND o.ordered_at <= t.cutoff + INTERVAL 30 DAY
        JOIN customers c ON c.__id = o.__fk_customer_id
        JOIN order_items i ON i.__fk_order_id = o.__id""")
    for live in ("task_churn_live", "task_next_products_live"):
        con.execute(f"""CREATE TABLE {live} AS SELECT customer_id, __id AS __entity_id,
            TIMESTAMP '2021-12-31' AS cutoff FROM customers""")


@pytest.fixture(scope="module")
def shop():
    return generated_shop()


def _change_rows_after(con, cutoff: str):
    """Rewrite every non-key column of every row after `cutoff`, and add rows after it."""
    ts = f"TIMESTAMP '{cutoff}'"
    con.execute(f"UPDATE orders SET amount = amount * 7 + 1 WHERE ordered_at > {ts}")
    con.execute(f"""UPDATE order_items SET quantity = quantity + 5 WHERE __fk_order_id IN
        (SELECT __id FROM orders WHERE ordered_at > {ts})""")
    con.execute(f"UPDATE customers SET segment = 'zz' WHERE signup_at > {ts}")
    n_c = con.execute("SELECT COUNT(*) FROM customers").fetchall()[0][0]
    n_o = con.execute("SELECT COUNT(*) FROM orders").fetchall()[0][0]
    # A new customer whose category sorts before every existing one, and new orders of an
    # existing customer, all after the cutoff.
    con.execute(f"""INSERT INTO customers (customer_id, segment, signup_at, __id)
        VALUES (100000, 'AAA', {ts} + INTERVAL 1 DAY, {n_c})""")
    con.execute(f"""INSERT INTO orders (order_id, customer_id, ordered_at, amount, __id,
        __fk_customer_id) SELECT 900000 + i, 0, {ts} + INTERVAL 1 HOUR * (i + 1), 50.0,
        {n_o} + i, 0 FROM range(5) r(i)""")


def _features_at(con, task, table, cutoff, flat=False):
    frame, names = build_features(con, SHOP, task, table, flat=flat, config=FAST)
    return frame.filter(pl.col("cutoff") <= datetime.fromisoformat(cutoff)), names


def test_rows_after_a_cutoff_change_no_feature_at_it():
    cutoff = "2021-08-01"
    con = generated_shop(n_customers=120)
    before, names = _features_at(con, "churn", "task_churn", cutoff)
    _change_rows_after(con, cutoff)
    after, names_after = _features_at(con, "churn", "task_churn", cutoff)
    assert names == names_after and len(before) > 100
    assert before.equals(after)  # bit-identical, NaN for NaN
    # Positive control: one order before the cutoff changes the features at it.
    con.execute(f"""UPDATE orders SET amount = amount + 1000 WHERE order_id =
        (SELECT MIN(order_id) FROM orders WHERE ordered_at <= TIMESTAMP '{cutoff}')""")
    changed, _ = _features_at(con, "churn", "task_churn", cutoff)
    assert not before.equals(changed)
    diff = [n for n in names if not before[n].equals(changed[n])]
    assert diff and all("amount" in n for n in diff)


def test_link_features_ignore_rows_after_the_cutoff():
    cutoff = "2021-08-01"
    con = generated_shop(n_customers=80)
    before, _ = _features_at(con, "next_products", "task_next_products", cutoff)
    _change_rows_after(con, cutoff)
    con.execute("""INSERT INTO order_items (item_id, order_id, product_id, quantity, __id,
        __fk_order_id, __fk_product_id) SELECT 900000 + i, 900000 + i, 3, 1,
        (SELECT COUNT(*) FROM order_items) + i, o.__id, 3 FROM range(5) r(i)
        JOIN orders o ON o.order_id = 900000 + i""")
    after, _ = _features_at(con, "next_products", "task_next_products", cutoff)
    assert len(before) > 100 and before.equals(after)
    con.execute(f"""UPDATE order_items SET __fk_product_id = (__fk_product_id + 1) % 40
        WHERE __fk_order_id IN (SELECT __id FROM orders WHERE ordered_at <= TIMESTAMP '{cutoff}'
        AND ordered_at > TIMESTAMP '{cutoff}' - INTERVAL 20 DAY)""")
    changed, _ = _features_at(con, "next_products", "task_next_products", cutoff)
    assert not before.equals(changed)


def test_predictions_ignore_rows_after_the_test_cutoff():
    con = generated_shop(n_customers=150)
    first = train_gbdt(con, SHOP, "churn", flat=False, config=FAST)
    _change_rows_after(con, "2021-11-01")
    second = train_gbdt(con, SHOP, "churn", flat=False, config=FAST)
    assert np.array_equal(first.test_pred, second.test_pred)
    assert np.array_equal(first.val_pred, second.val_pred)
    assert first.test_metrics == second.test_metrics
    con.execute("""UPDATE orders SET amount = amount * 3 WHERE ordered_at
        BETWEEN TIMESTAMP '2021-10-01' AND TIMESTAMP '2021-11-01'""")
    third = train_gbdt(con, SHOP, "churn", flat=False, config=FAST)
    assert not np.array_equal(first.test_pred, third.test_pred)


def test_neighbourhood_beats_flat_on_churn(shop):
    flat = train_gbdt(shop, SHOP, "churn", flat=True, config=FAST)
    full = train_gbdt(shop, SHOP, "churn", flat=False, config=FAST)
    # The label depends on each customer's hidden order rate, visible only through orders.
    assert full.val_metrics["auroc"] > 0.8
    assert full.val_metrics["auroc"] > flat.val_metrics["auroc"] + 0.15
    assert full.test_metrics["auroc"] > flat.test_metrics["auroc"] + 0.15
    assert full.history and "val_auroc" in full.history[0]
    top = next(iter(full.importances))
    assert top.startswith("orders.customer_id"), top
    assert set(full.val_true.tolist()) == {0, 1} and len(full.val_pred) == len(full.val_true)


def test_same_seed_same_model(shop):
    a = train_gbdt(shop, SHOP, "churn", flat=False, config=FAST)
    b = train_gbdt(shop, SHOP, "churn", flat=False, config=FAST)
    assert np.array_equal(a.test_pred, b.test_pred)


def test_regression_and_multiclass(shop):
    spend = train_gbdt(shop, SHOP, "spend", flat=False, config=FAST)
    assert spend.model.booster.params["objective"] == "regression_l1"
    assert spend.val_metrics["mae"] < np.abs(spend.val_true - np.median(spend.val_true)).mean()
    bucket = train_gbdt(shop, SHOP, "bucket", flat=False, config=FAST)
    assert bucket.val_pred.shape == (len(bucket.val_true), 3)
    assert np.allclose(bucket.val_pred.sum(axis=1), 1.0)
    majority = np.bincount(bucket.val_true).max() / len(bucket.val_true)
    assert bucket.val_metrics["accuracy"] > majority


def test_link_prediction_ranks_past_purchases(shop):
    flat = train_gbdt(shop, SHOP, "next_products", flat=True, config=FAST)
    full = train_gbdt(shop, SHOP, "next_products", flat=False, config=FAST)
    n_val = shop.execute("""SELECT COUNT(DISTINCT (__entity_id, cutoff)) FROM task_next_products
        WHERE split = 'val'""").fetchall()[0][0]
    assert full.val_pred.shape == (n_val, 10) and full.val_pred.dtype == np.int64
    assert full.val_pred.max() < 40 and isinstance(full.val_true, pa.ChunkedArray | pa.Array)
    # Customers re-buy favourites, which only the purchase history reveals.
    assert full.val_metrics["map_at_10"] > 0.3
    assert full.val_metrics["map_at_10"] > flat.val_metrics["map_at_10"] + 0.1
    assert not math.isnan(full.test_metrics["recall_at_10"])
    live = predict_gbdt(shop, SHOP, "next_products", full.model, "task_next_products_live")
    n_live = shop.execute("SELECT COUNT(*) FROM task_next_products_live").fetchall()[0][0]
    assert live.shape == (n_live, 10) and (live[:, 0] >= 0).all()


def test_predict_live_rows(shop):
    result = train_gbdt(shop, SHOP, "churn", flat=False, config=FAST)
    scores = predict_gbdt(shop, SHOP, "churn", result.model, "task_churn_live")
    n = shop.execute("SELECT COUNT(*) FROM task_churn_live").fetchall()[0][0]
    assert scores.shape == (n,) and np.all((scores >= 0) & (scores <= 1))
    assert isinstance(result.model, GBDTModel)
    flat = train_gbdt(shop, SHOP, "churn", flat=True, config=FAST)
    with pytest.raises(ValueError, match="features differ"):
        predict_gbdt(shop, SHOP, "churn",
                     GBDTModel(flat.model.booster, "binary_classification", False, FAST,
                               flat.feature_names, [], 1), "task_churn_live")


def test_missing_split_is_a_clear_error():
    con = small_shop()
    con.execute("DELETE FROM task_churn WHERE split = 'train'")
    with pytest.raises(ValueError, match="no 'train' rows"):
        train_gbdt(con, SHOP, "churn", flat=True, config=FAST)


def test_undefined_val_metric_falls_back_to_the_loss():
    con = generated_shop(n_customers=80)
    con.execute("UPDATE task_churn SET label = 0 WHERE split = 'val'")
    with pytest.warns(MetricWarning) as caught:
        result = train_gbdt(con, SHOP, "churn", flat=False, config=FAST)
    messages = " ".join(str(w.message) for w in caught)
    assert "auroc is undefined on val (80 rows); early stopping on binary_logloss" in messages
    assert "val: 80 examples and 0 positives" in messages
    first = result.history[0]
    assert first["val_binary_logloss"] > 0 and math.isnan(first["val_auroc"])
    assert math.isnan(result.val_metrics["auroc"]) and not math.isnan(result.test_metrics["auroc"])


def test_null_labels_are_a_clear_error():
    con = small_shop()
    con.execute("UPDATE task_churn SET label = NULL WHERE split = 'val'")
    with pytest.raises(ValueError, match="2 of 3 rows of main.\"task_churn\" have a NULL label"):
        train_gbdt(con, SHOP, "churn", flat=True, config=FAST)


def test_every_timed_path_to_the_target_is_an_interaction_kind():
    tables = {**SHOP_TABLES,
              "reviews": {"primary_key": "review_id", "time_column": "at",
                          "foreign_keys": {"customer_id": "customers", "product_id": "products"}},
              "wishlist": {"primary_key": "wish_id",
                           "foreign_keys": {"customer_id": "customers", "product_id": "products"}}}
    spec = _spec(tables, {"next": _task("link_prediction", target_table="products")})
    _, labels = _Builder(None, spec, GBDTConfig()).events_sql(spec.task("next"))
    # The wishlist has no time column anywhere on its path: it cannot be placed in time.
    assert labels == ["reviews.customer_id / product_id->products",
                      "orders.customer_id / order_items.order_id / product_id->products"]
    short = _Builder(None, spec, GBDTConfig(link_path_hops=1))
    with pytest.raises(ValueError, match="no foreign-key path of at most 1 steps"):
        short.events_sql(spec.task("next"))
