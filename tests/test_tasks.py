"""Label tables on a hand-built 10-row warehouse, checked against values worked out by hand."""

from datetime import datetime, timedelta

import duckdb
import pytest

from pipeline.data.spec import parse_spec
from pipeline.data.tasks import TaskError, build_task_table, load_examples, task_cutoffs

SPEND = """SELECT c.customer_id, t.cutoff, COALESCE(SUM(o.amount), 0) AS label
  FROM cutoffs t JOIN customers c ON TRUE
  LEFT JOIN orders o ON o.customer_id = c.customer_id
       AND o.ordered_at > t.cutoff AND o.ordered_at <= t.window_end
  GROUP BY ALL"""
ANY = SPEND.replace("COALESCE(SUM(o.amount), 0)", "(COUNT(o.order_id) > 0)::INTEGER")
COUNT = SPEND.replace("COALESCE(SUM(o.amount), 0)", "LEAST(COUNT(o.order_id), 2)")
PRODUCTS = """SELECT o.customer_id, t.cutoff, o.product_id FROM cutoffs t
  JOIN orders o ON o.ordered_at > t.cutoff AND o.ordered_at <= t.window_end GROUP BY ALL"""


def _task(ttype, sql, **extra):
    return {"type": ttype, "entity_table": "customers", "label_sql": sql, "horizon": "30d",
            "val_cutoff": "latest - 60d", "test_cutoff": "latest - 30d", "num_train_cutoffs": 2,
            **extra}


SPEC = parse_spec({
    "name": "tiny", "source": {"kind": "duckdb", "path": "x.duckdb"},
    "tables": {
        "customers": {"primary_key": "customer_id"},
        "products": {"primary_key": "product_id"},
        "orders": {"primary_key": "order_id", "time_column": "ordered_at",
                   "foreign_keys": {"customer_id": "customers", "product_id": "products"}},
    },
    "tasks": {
        "active": _task("binary_classification", ANY),
        "spend": _task("regression", SPEND, metric="mae"),
        "orders_bucket": _task("multiclass_classification", COUNT, metric="accuracy"),
        "next_products": _task("link_prediction", PRODUCTS, target_table="products",
                               metric="map_at_10"),
    },
})

ORDERS = [  # order_id, customer, product, time, amount
    ("o0", "c3", "p1", "2024-10-01", 3), ("o1", "c1", "p1", "2024-11-15", 10),
    ("o2", "c1", "p2", "2024-12-10", 20), ("o3", "c2", "p1", "2024-12-20", 5),
    ("o4", "c1", "p3", "2025-01-05", 7), ("o5", "c3", "p2", "2025-02-10", 8),
    ("o6", "c2", "p3", "2025-03-10", 9), ("o7", "c1", "p2", "2025-03-31", 4),
]


@pytest.fixture
def con():
    con = duckdb.connect()
    con.execute("CREATE TABLE customers AS SELECT * FROM (VALUES ('c1', 0), ('c2', 1), ('c3', 2)) t(customer_id, __id)")
    con.execute("CREATE TABLE products AS SELECT * FROM (VALUES ('p1', 0), ('p2', 1), ('p3', 2)) t(product_id, __id)")
    con.execute("CREATE TABLE orders (order_id VARCHAR, customer_id VARCHAR, product_id VARCHAR, "
                "ordered_at TIMESTAMP, amount DOUBLE)")
    con.executemany("INSERT INTO orders VALUES (?, ?, ?, ?, ?)", ORDERS)
    yield con
    con.close()


def _labels(con, task, split):
    return dict(con.execute(f"SELECT customer_id || '@' || strftime(cutoff, '%Y-%m-%d'), label "
                            f"FROM task_{task} WHERE split = ? ORDER BY 1", [split]).fetchall())


def test_cutoffs_follow_the_rules_of_time(con):
    cuts = task_cutoffs(con, SPEC, SPEC.tasks["spend"])
    assert cuts.latest == datetime(2025, 3, 31)
    assert cuts.test == datetime(2025, 3, 1)
    assert cuts.val == datetime(2025, 1, 30)
    assert cuts.train == [datetime(2024, 12, 1), datetime(2024, 12, 31)]
    horizon = timedelta(days=30)
    assert all(c + horizon <= cuts.val for c in cuts.train), "a train window reaches validation"
    assert cuts.val + horizon <= cuts.test


def test_regression_labels_by_hand(con):
    build_task_table(con, SPEC, SPEC.tasks["spend"])
    assert _labels(con, "spend", "train") == {
        "c1@2024-12-01": 20.0, "c2@2024-12-01": 5.0, "c3@2024-12-01": 0.0,
        "c1@2024-12-31": 7.0, "c2@2024-12-31": 0.0, "c3@2024-12-31": 0.0}
    assert _labels(con, "spend", "val") == {"c1@2025-01-30": 0.0, "c2@2025-01-30": 0.0, "c3@2025-01-30": 8.0}
    assert _labels(con, "spend", "test") == {"c1@2025-03-01": 4.0, "c2@2025-03-01": 9.0, "c3@2025-03-01": 0.0}


def test_binary_and_multiclass_labels_by_hand(con):
    summary = build_task_table(con, SPEC, SPEC.tasks["active"])
    assert _labels(con, "active", "test") == {"c1@2025-03-01": 1, "c2@2025-03-01": 1, "c3@2025-03-01": 0}
    assert summary["splits"]["train"]["examples"] == 6
    assert summary["splits"]["train"]["positive_rate"] == pytest.approx(3 / 6)
    assert summary["splits"]["test"]["entities"] == 3
    assert summary["live_entities"] == 3
    build_task_table(con, SPEC, SPEC.tasks["orders_bucket"])
    assert _labels(con, "orders_bucket", "train")["c1@2024-12-01"] == 1
    ex = load_examples(con, SPEC.tasks["orders_bucket"], "test")
    assert ex.label.dtype.is_floating_point is False and ex.label.tolist() == [1, 1, 0]


def test_link_prediction_targets_by_hand(con):
    build_task_table(con, SPEC, SPEC.tasks["next_products"])
    rows = con.execute("SELECT customer_id, strftime(cutoff, '%Y-%m-%d'), product_id, __entity_id, __target_id "
                       "FROM task_next_products ORDER BY ALL").fetchall()
    assert rows == [("c1", "2024-12-01", "p2", 0, 1), ("c1", "2024-12-31", "p3", 0, 2),
                    ("c1", "2025-03-01", "p2", 0, 1), ("c2", "2024-12-01", "p1", 1, 0),
                    ("c2", "2025-03-01", "p3", 1, 2), ("c3", "2025-01-30", "p2", 2, 1)]
    ex = load_examples(con, SPEC.tasks["next_products"], "train")
    assert ex.entity.tolist() == [0, 1, 0]
    assert ex.target_ptr.tolist() == [0, 1, 2, 3]
    assert ex.target_ids.tolist() == [1, 0, 2]
    assert ex.cutoff.tolist()[0] == int(datetime(2024, 12, 1).timestamp() - datetime(1970, 1, 1).timestamp())


def _broken(sql):
    return parse_spec({"name": "tiny", "source": {"kind": "duckdb", "path": "x"},
                       "tables": {"customers": {"primary_key": "customer_id"},
                                  "orders": {"primary_key": "order_id", "time_column": "ordered_at"}},
                       "tasks": {"t": _task("binary_classification", sql)}}).tasks["t"]


@pytest.mark.parametrize("sql, message", [
    ("SELEC nonsense", "does not parse"),
    ("SELECT customer_id, cutoff FROM cutoffs, customers", r"'label' missing"),
    ("SELECT customer_id, cutoff, 1 AS lable FROM cutoffs, customers", "'label' missing; is it lable"),
    ("SELECT * FROM no_such_table", "no_such_table"),
    ("DROP TABLE customers", "exactly one SELECT"),
    ("SELECT 1; DROP TABLE customers", "exactly one SELECT"),
])
def test_bad_label_sql_is_reported(con, sql, message):
    with pytest.raises(TaskError, match=message):
        build_task_table(con, SPEC, _broken(sql))
    assert con.execute("SELECT COUNT(*) FROM customers").fetchall() == [(3,)]


def test_split_without_positives_is_reported(con):
    never = ANY.replace("(COUNT(o.order_id) > 0)::INTEGER", "0")
    with pytest.raises(TaskError, match=r"split has 0 positive labels out of \d+"):
        build_task_table(con, SPEC, _broken(never))


def test_examples_of_entities_created_after_their_cutoff_are_refused(con):
    """With a time column on customers, c3 (signed up 2025-02-01) cannot be an example at
    the earlier cutoffs; label SQL that forgets to say so is refused with the count."""
    con.execute("ALTER TABLE customers ADD COLUMN signup_at TIMESTAMP")
    con.execute("UPDATE customers SET signup_at = CASE customer_id WHEN 'c3' THEN TIMESTAMP '2025-02-01' "
                "ELSE TIMESTAMP '2024-01-01' END")
    spec = parse_spec({
        "name": "tiny", "source": {"kind": "duckdb", "path": "x.duckdb"},
        "tables": {"customers": {"primary_key": "customer_id", "time_column": "signup_at"},
                   "products": {"primary_key": "product_id"},
                   "orders": {"primary_key": "order_id", "time_column": "ordered_at",
                              "foreign_keys": {"customer_id": "customers", "product_id": "products"}}},
        "tasks": {"spend": _task("regression", SPEND, metric="mae"),
                  "spend_existing": _task("regression", SPEND.replace(
                      "GROUP BY ALL", "WHERE c.signup_at <= t.cutoff GROUP BY ALL"), metric="mae")}})
    with pytest.raises(TaskError, match=r"spend.label_sql: 3 rows name customers rows whose "
                                        r"signup_at is after the row's cutoff"):
        build_task_table(con, spec, spec.tasks["spend"])
    assert not con.execute("SELECT * FROM duckdb_tables() WHERE table_name = 'task_spend'").fetchall()
    build_task_table(con, spec, spec.tasks["spend_existing"])
