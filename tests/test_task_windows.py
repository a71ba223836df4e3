"""The split options of a relgraph task on a hand-built shop, checked against values worked
out by hand: many evaluation windows, all-history training, on_future_entity, RelBench's
per-split database (label_database: per_split) and the names Dagster needs.

customers c1, c2 (signed 2024-06-01), c3 (2025-02-01), c4 (2025-03-20, after test_cutoff);
orders below; latest = 2025-03-31, val_cutoff = 2025-01-30, test_cutoff = 2025-03-01.
"""

from dataclasses import asdict
from datetime import datetime, timedelta

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.data.sources import open_source
from pipeline.data.spec import SpecError, TaskSpec, check_safe_names, parse_spec, safe_name
from pipeline.data.tasks import TaskError, build_task_table, task_cutoffs
from pipeline.data.warehouse import extract_table

D = datetime.fromisoformat
CUSTOMERS = [("c1", D("2024-06-01")), ("c2", D("2024-06-01")), ("c3", D("2025-02-01")),
             ("c4", D("2025-03-20"))]
ORDERS = [  # order_id, customer, time
    ("o1", "c1", D("2024-11-15")), ("o2", "c1", D("2024-12-10")), ("o3", "c2", D("2024-12-20")),
    ("o4", "c1", D("2025-01-05")), ("o5", "c3", D("2025-02-10")),
    ("o0", "c4", D("2025-02-15")),  # recorded before its customer's signup
    ("o6", "c2", D("2025-03-10")), ("o7", "c4", D("2025-03-25")), ("o8", "c1", D("2025-03-31")),
]
IN_WINDOW = """SELECT c.customer_id, t.cutoff, COUNT(o.order_id) AS label
  FROM cutoffs t JOIN customers c ON c.signup_at <= t.cutoff
  LEFT JOIN orders o ON o.customer_id = c.customer_id
       AND o.ordered_at > t.cutoff AND o.ordered_at <= t.window_end
  GROUP BY ALL"""
EVERY_CUSTOMER = IN_WINDOW.replace("ON c.signup_at <= t.cutoff", "ON TRUE")
# unbounded: every later order, so the database the SQL sees matters
LATER = """SELECT c.customer_id, t.cutoff,
  (SELECT COUNT(*) FROM orders f WHERE f.customer_id = c.customer_id AND f.ordered_at > t.cutoff) AS label
  FROM cutoffs t JOIN customers c ON c.signup_at <= t.cutoff"""
BY_ORDER = """SELECT o.customer_id, t.cutoff, COUNT(*) AS label FROM cutoffs t
  JOIN orders o ON o.ordered_at > t.cutoff AND o.ordered_at <= t.window_end GROUP BY ALL"""


def _task(sql, **extra):
    return {"type": "regression", "entity_table": "customers", "label_sql": sql,
            "horizon": "30d", "val_cutoff": "latest - 60d", "test_cutoff": "latest - 30d",
            "num_train_cutoffs": 2, "metric": "mae", **extra}


def _spec(tasks, path="."):
    return parse_spec({
        "name": "rel-shop", "source": {"kind": "parquet", "path": str(path)},
        "tables": {"customers": {"primary_key": "customer_id", "time_column": "signup_at"},
                   "orders": {"primary_key": "order_id", "time_column": "ordered_at",
                              "foreign_keys": {"customer_id": "customers"}}},
        "tasks": tasks})


@pytest.fixture
def shop(tmp_path):
    pq.write_table(pa.table({"customer_id": [c for c, _ in CUSTOMERS],
                             "signup_at": [t for _, t in CUSTOMERS]}), tmp_path / "customers.parquet")
    pq.write_table(pa.table({"order_id": [o for o, _, _ in ORDERS],
                             "customer_id": [c for _, c, _ in ORDERS],
                             "ordered_at": [t for _, _, t in ORDERS]}), tmp_path / "orders.parquet")

    def build(**tasks):
        spec = _spec(tasks, tmp_path)
        con = duckdb.connect()
        source = open_source(spec, tmp_path)
        for table in spec.extract_order():
            extract_table(con, spec, table, source.read(table))
        return spec, con
    return build


def _labels(con, task, split):
    return dict(con.execute(f"SELECT customer_id || '@' || strftime(cutoff, '%m-%d'), label "
                            f"FROM task_{task} WHERE split = ? ORDER BY 1", [split]).fetchall())


def test_eval_windows_and_all_history(shop):
    spec, con = shop(many=_task(IN_WINDOW, horizon="10d", num_eval_windows=5, num_train_cutoffs="all"),
                     two=_task(IN_WINDOW, horizon="10d", num_eval_windows=2, num_train_cutoffs=6),
                     one=_task(IN_WINDOW, horizon="10d"))
    h = timedelta(days=10)
    many = task_cutoffs(con, spec, spec.tasks["many"])
    # validation: at most 5, the last starting no later than test - h; test: the last
    # window ending at or before the newest row
    assert many.val_windows == [D("2025-01-30"), D("2025-02-09"), D("2025-02-19")]
    assert many.test_windows == [D("2025-03-01"), D("2025-03-11"), D("2025-03-21")]
    assert (many.val, many.test) == (D("2025-01-30"), D("2025-03-01"))
    assert many.train[-1] == D("2025-01-20") and many.train[0] >= many.earliest > many.train[0] - h
    assert all(b - a == h for a, b in zip(many.train, many.train[1:])) and len(many.train) == 24
    two = task_cutoffs(con, spec, spec.tasks["two"])
    assert two.val_windows == many.val_windows[:2] and two.test_windows == many.test_windows[:2]
    assert len(two.train) == 6
    one = task_cutoffs(con, spec, spec.tasks["one"])
    assert (one.val_windows, one.test_windows) == ([one.val], [one.test])
    summary = build_task_table(con, spec, spec.tasks["many"])
    assert {s: v["cutoffs"] for s, v in summary["splits"].items()} == {"train": 24, "val": 3, "test": 3}
    assert summary["cutoffs"]["test_windows"] == [str(c) for c in many.test_windows]
    assert _labels(con, "many", "test") == {
        "c1@03-01": 0, "c2@03-01": 1, "c3@03-01": 0, "c1@03-11": 0, "c2@03-11": 0,
        "c3@03-11": 0, "c1@03-21": 1, "c2@03-21": 0, "c3@03-21": 0, "c4@03-21": 1}


def test_on_future_entity(shop):
    spec, con = shop(fail=_task(EVERY_CUSTOMER), drop=_task(EVERY_CUSTOMER, on_future_entity="drop"),
                     keep=_task(EVERY_CUSTOMER, on_future_entity="withhold"))
    with pytest.raises(TaskError, match=r"7 rows name customers rows whose signup_at is after "
                                        r"the row's cutoff.*on_future_entity"):
        build_task_table(con, spec, spec.tasks["fail"])
    # c3 at 12-01, 12-31, 01-30; c4 at every cutoff (12-01, 12-31, 01-30, 03-01)
    dropped = build_task_table(con, spec, spec.tasks["drop"])
    (rep,) = dropped["repairs"]
    assert (rep["kind"], rep["count"], rep["by_split"]) == ("future_entity", 7,
                                                            {"train": 4, "val": 2, "test": 1})
    assert rep["examples"][0] == "c3 at 2024-12-01 00:00:00" and "dropped" in rep["action"]
    assert sum(s["examples"] for s in dropped["splits"].values()) == 16 - 7
    kept = build_task_table(con, spec, spec.tasks["keep"])
    assert sum(s["examples"] for s in kept["splits"].values()) == 16
    assert kept["repairs"][0]["count"] == 7 and "withheld" in kept["repairs"][0]["action"]


def test_per_split_database(shop):
    """Train and validation labels on the tables cut at test_cutoff, test on the full ones."""
    spec, con = shop(full=_task(LATER), cut=_task(LATER, label_database="per_split"),
                     dangling=_task(EVERY_CUSTOMER, label_database="per_split",
                                    on_future_entity="withhold"),
                     nulled=_task(BY_ORDER, label_database="per_split", on_future_entity="withhold"))
    build_task_table(con, spec, spec.tasks["cut"])
    assert _labels(con, "cut", "train") == {"c1@12-01": 2, "c2@12-01": 1, "c1@12-31": 1, "c2@12-31": 0}
    assert _labels(con, "cut", "val") == {"c1@01-30": 0, "c2@01-30": 0}
    assert _labels(con, "cut", "test") == {"c1@03-01": 1, "c2@03-01": 1, "c3@03-01": 0}
    build_task_table(con, spec, spec.tasks["full"])
    assert _labels(con, "full", "val") == {"c1@01-30": 1, "c2@01-30": 1}  # sees March
    # c4 (signed after test_cutoff) is not in the cut customers that train and validation
    # see; the test SQL on the full tables finds it, and the dangling-entity rule drops it
    summary = build_task_table(con, spec, spec.tasks["dangling"])
    repairs = {r["kind"]: r for r in summary["repairs"]}
    assert repairs["dangling_entity"]["by_split"] == {"test": 1}
    assert repairs["future_entity"]["count"] == 3  # c3 before its signup, kept
    assert "c4@03-01" not in _labels(con, "dangling", "test")
    # o0 (c4, before c4's signup) has customer_id NULL in the cut database: its row is dropped
    summary = build_task_table(con, spec, spec.tasks["nulled"])
    repairs = {r["kind"]: r for r in summary["repairs"]}
    assert repairs["null_entity"]["by_split"] == {"val": 1}
    assert _labels(con, "nulled", "val") == {"c3@01-30": 1}
    # the warehouse tables are untouched by the views
    assert con.execute("SELECT count(*) FROM orders WHERE customer_id IS NULL").fetchall() == [(0,)]


def test_options_are_validated():
    for key, value, message in [
        ("num_eval_windows", 0, "num_eval_windows: expected a whole number of at least 1"),
        ("num_train_cutoffs", "most", "num_train_cutoffs: expected a whole number of at least 1 or 'all'"),
        ("test_context", "froze", "'froze' is not one of frozen, rolling; did you mean frozen"),
        ("on_future_entity", "keep", "'keep' is not one of fail, drop, withhold"),
        ("label_database", "cut", "'cut' is not one of full, per_split"),
        ("remove_columns", [["orderz", "x"]], "remove_columns: no table 'orderz'; did you mean orders"),
        ("relbench", {"time_col": "t"}, "relbench: missing required key 'entity_col'"),
    ]:
        with pytest.raises(SpecError, match=message):
            _spec({"t": _task(IN_WINDOW, **{key: value})})
    task = _spec({"t": _task(IN_WINDOW, remove_columns=[["orders", "amount"], "customers.signup_at"],
                             test_context="rolling")}).tasks["t"]
    assert task.remove_columns == (("orders", "amount"), ("customers", "signup_at"))
    assert TaskSpec(**asdict(task)) == task
    spec = _spec({"t": _task(IN_WINDOW, remove_columns=[["orders", "amont"]])})
    with pytest.raises(SpecError, match="t.remove_columns: orders.amont: no such column; did you mean amount"):
        spec.check_columns({"customers": ["customer_id", "signup_at"],
                            "orders": ["order_id", "customer_id", "ordered_at", "amount"]})


def test_safe_names_are_one_to_one():
    assert safe_name("driver-dnf") == "driver_dnf" and safe_name("rel-f1") == "rel_f1"
    with pytest.raises(SpecError, match="'driver-dnf' and 'driver_dnf' both become 'driver_dnf'"):
        safe_name("driver-dnf", others=["driver_dnf", "x"])
    with pytest.raises(SpecError, match="'a.b' and 'a-b' both become 'a_b'"):
        check_safe_names(["a.b", "c", "a-b"])
    with pytest.raises(SpecError, match="'driver-dnf' and 'driver_dnf' both become"):
        _spec({"driver-dnf": _task(IN_WINDOW), "driver_dnf": _task(IN_WINDOW)})
    with pytest.raises(SpecError, match="dataset name 'a/b'"):
        parse_spec({"name": "a/b", "source": {"kind": "synthetic"}, "tables": {"t": {}}})
