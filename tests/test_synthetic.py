"""The synthetic e-commerce generator: determinism, integrity, and the planted signal."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from pipeline.data.sources.synthetic import DEFAULT_SCALE, TABLES, SyntheticConfig, generate

SPEC = yaml.safe_load((Path(__file__).parents[1] / "datasets" / "ecommerce.yaml").read_text())
SMALL = SyntheticConfig(scale=2_000, seed=0)
CHUNKED = SyntheticConfig(scale=SMALL.scale, seed=SMALL.seed, chunk_customers=700)
# big enough that the AUROC lift below is stable across seeds, small enough for ~2 s
SIGNAL = SyntheticConfig(scale=6_000, seed=0)


def _read(out: Path, table: str):
    return pq.read_table(out / table)


def _connect(out: Path) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    for table in TABLES:
        con.execute(f"CREATE VIEW {table} AS SELECT * FROM read_parquet('{out / table}/*.parquet')")
    return con


def _one(con: duckdb.DuckDBPyConnection, sql: str):
    return con.execute(sql).fetchall()[0][0]


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> tuple[Path, dict[str, int]]:
    out = tmp_path_factory.mktemp("small")
    return out, generate(out, SMALL)


@pytest.fixture(scope="module")
def chunked(tmp_path_factory) -> tuple[Path, dict[str, int]]:
    out = tmp_path_factory.mktemp("chunked")
    return out, generate(out, CHUNKED)


def test_same_seed_gives_identical_files(small, tmp_path):
    out, counts = small
    assert generate(tmp_path, SMALL) == counts
    for table in TABLES:
        assert _read(tmp_path, table).equals(_read(out, table)), table
        for part in (out / table).iterdir():
            assert (tmp_path / table / part.name).read_bytes() == part.read_bytes(), part


def test_different_seed_differs(small, tmp_path):
    out, _ = small
    generate(tmp_path, SyntheticConfig(scale=SMALL.scale, seed=1))
    for table in ("customers", "products", "orders", "order_items"):
        assert not _read(tmp_path, table).equals(_read(out, table)), table


def test_chunked_run_is_deterministic(chunked, tmp_path):
    out, counts = chunked
    assert generate(tmp_path, CHUNKED) == counts
    for table in ("orders", "order_items", "returns"):
        assert _read(tmp_path, table).equals(_read(out, table)), table


@pytest.mark.parametrize("which", ["small", "chunked"])
def test_counts_match_files_and_layout(which, request):
    out, counts = request.getfixturevalue(which)
    assert set(counts) == set(TABLES)
    n_chunks = 1 if which == "small" else 3
    for table in TABLES:
        parts = sorted(p.name for p in (out / table).iterdir())
        expected = 1 if table in ("categories", "products") else n_chunks
        assert parts == [f"part-{i:05d}.parquet" for i in range(expected)], table
        assert _read(out, table).num_rows == counts[table], table
    assert counts["customers"] == SMALL.scale
    assert counts["products"] == SMALL.n_products
    assert counts["orders"] > 3 * SMALL.scale and counts["order_items"] > counts["orders"]
    assert 0 < counts["returns"] < counts["order_items"] and 0 < counts["reviews"] < counts["order_items"]


def test_chunking_keeps_volumes(small, chunked):
    for table in ("orders", "order_items", "returns", "reviews"):
        a, b = small[1][table], chunked[1][table]
        assert abs(a - b) < 0.15 * a, (table, a, b)


@pytest.mark.parametrize("which", ["small", "chunked"])
def test_keys_unique_and_foreign_keys_resolve(which, request):
    out, _ = request.getfixturevalue(which)
    con = _connect(out)
    for name, table in SPEC["tables"].items():
        if "primary_key" in table:
            key = table["primary_key"]
            total, distinct, nulls = con.execute(
                f"SELECT count(*), count(DISTINCT {key}), count(*) - count({key}) FROM {name}").fetchall()[0]
            assert total == distinct and nulls == 0, (
                f"{name}.{key}: {total - distinct} duplicates, {nulls} nulls")
        for column, ref in (table.get("foreign_keys") or {}).items():
            ref_key = SPEC["tables"][ref]["primary_key"]
            orphans = _one(con, f"SELECT count(*) FROM {name} x ANTI JOIN {ref} r "
                                f"ON x.{column} = r.{ref_key}")
            assert orphans == 0, f"{name}.{column}: {orphans} rows reference missing {ref}"


def test_timestamps_inside_history(small):
    out, _ = small
    con = _connect(out)
    start, end = SMALL.start, SMALL.end
    for table in TABLES:
        for field in _read(out, table).schema:
            if str(field.type).startswith("timestamp"):
                col = field.name
                lo, hi = con.execute(f"SELECT min({col}), max({col}) FROM {table}").fetchall()[0]
                assert start <= lo and hi <= end, (
                    f"{table}.{col}: [{lo}, {hi}] outside [{start}, {end}]")
    # the history really spans the two years rather than a corner of them
    lo, hi = con.execute("SELECT min(ordered_at), max(ordered_at) FROM orders").fetchall()[0]
    assert lo - start < timedelta(days=7) and end - hi < timedelta(days=1)


@pytest.mark.parametrize("which", ["small", "chunked"])
def test_causal_order_of_events(which, request):
    out, _ = request.getfixturevalue(which)
    con = _connect(out)
    checks = {  # what must never happen: rows it selects
        "order before its customer's signup":
            "orders o JOIN customers c USING (customer_id) WHERE o.ordered_at < c.signup_at",
        "item of a product not yet created":
            "order_items i JOIN products p USING (product_id) WHERE i.ordered_at < p.created_at",
        "item time differs from its order's":
            "order_items i JOIN orders o USING (order_id) WHERE i.ordered_at <> o.ordered_at",
        "return before its order":
            "returns r JOIN orders o USING (order_id) WHERE r.returned_at <= o.ordered_at",
        "return by someone else than the buyer":
            "returns r JOIN orders o USING (order_id) WHERE r.customer_id <> o.customer_id",
        "return of a product not in the order":
            "returns r ANTI JOIN order_items i USING (order_id, product_id)",
        "review without an earlier purchase":
            "reviews v WHERE NOT EXISTS (SELECT 1 FROM order_items i JOIN orders o USING (order_id) "
            "WHERE o.customer_id = v.customer_id AND i.product_id = v.product_id "
            "AND i.ordered_at < v.reviewed_at)",
    }
    for what, where in checks.items():
        bad = _one(con, f"SELECT count(*) FROM {where}")
        assert bad == 0, f"{bad} rows: {what}"
    totals = _one(con, """SELECT count(*) FROM orders o JOIN (SELECT order_id, sum(quantity * unit_price) s
                          FROM order_items GROUP BY 1) i USING (order_id)
                          WHERE abs(o.total_amount - o.shipping_cost - i.s) > 0.011""")
    assert totals == 0, f"{totals} orders whose total_amount is not items + shipping"


def test_column_kinds(small):
    out, _ = small
    kinds = {
        ("customers", "marketing_opt_in"): "bool", ("orders", "coupon_used"): "bool",
        ("products", "title"): "string", ("customers", "segment"): "string",
        ("products", "price"): "double", ("order_items", "quantity"): "int64",
        ("reviews", "rating"): "int64", ("orders", "ordered_at"): "timestamp[us]",
    }
    for (table, column), kind in kinds.items():
        assert str(_read(out, table).schema.field(column).type) == kind, (table, column)
    titles = _read(out, "products").column("title").to_pylist()
    assert all(1 <= len(t.split()) <= 5 for t in titles) and len(set(titles)) > 100


def test_custom_end_and_length(tmp_path):
    config = SyntheticConfig(scale=1_000, seed=3, end=datetime(2024, 6, 30, 12), weeks=26)
    counts = generate(tmp_path, config)
    con = _connect(tmp_path)
    lo, hi = con.execute("SELECT min(ordered_at), max(ordered_at) FROM orders").fetchall()[0]
    assert config.start <= lo and hi <= config.end and counts["orders"] > config.scale
    assert _one(con, "SELECT min(signup_at) FROM customers") >= config.start


def test_config_is_validated():
    with pytest.raises(ValueError, match="scale"):
        SyntheticConfig(scale=10)
    with pytest.raises(ValueError, match="chunk_customers"):
        SyntheticConfig(chunk_customers=0)
    with pytest.raises(ValueError, match="UTC-naive"):
        SyntheticConfig(end=datetime(2025, 1, 1, tzinfo=timezone.utc))


def test_spec_matches_generator():
    assert SPEC["source"] == {"kind": "synthetic", "scale": DEFAULT_SCALE, "seed": 0}
    assert set(SPEC["tables"]) == set(TABLES)
    assert "primary_key" not in SPEC["tables"]["order_items"]


# --- planted signal -----------------------------------------------------------------

_FEATURES_SQL = """
WITH buys AS (  -- every purchase line up to each cutoff
    SELECT t.cutoff, o.customer_id, i.product_id, o.ordered_at
    FROM cutoffs t JOIN orders o ON o.ordered_at <= t.cutoff JOIN order_items i USING (order_id)
),
product_buys AS (SELECT cutoff, product_id, customer_id, count(*) AS n FROM buys GROUP BY ALL),
product_returns AS (
    SELECT t.cutoff, r.product_id, r.customer_id, count(*) AS n
    FROM cutoffs t JOIN returns r ON r.returned_at <= t.cutoff GROUP BY ALL
),
-- return rate of each bought product among the OTHER customers who bought it (every
-- return up to a cutoff belongs to a purchase up to it, so the left join sees them all)
others_rate AS (
    SELECT b.cutoff, b.product_id, b.customer_id,
           (sum(coalesce(r.n, 0)) OVER w - coalesce(r.n, 0))
           / greatest(sum(b.n) OVER w - b.n, 1) AS rate
    FROM product_buys b
    LEFT JOIN product_returns r USING (cutoff, product_id, customer_id)
    WINDOW w AS (PARTITION BY b.cutoff, b.product_id)
),
defects AS (
    SELECT b.customer_id, b.cutoff, avg(x.rate) AS rate_avg, sum(x.rate) AS rate_sum
    FROM buys b JOIN others_rate x USING (cutoff, product_id, customer_id)
    WHERE b.ordered_at > b.cutoff - INTERVAL 90 DAY
    GROUP BY ALL
),
rf AS (
    SELECT l.customer_id, l.cutoff, any_value(l.label) AS label, max(o.ordered_at) AS last_at,
           count(*) FILTER (WHERE o.ordered_at > l.cutoff - INTERVAL 90 DAY) AS orders_90d,
           count(*) AS orders_all
    FROM labels l JOIN orders o ON o.customer_id = l.customer_id AND o.ordered_at <= l.cutoff
    GROUP BY ALL
)
SELECT epoch(rf.cutoff) AS cutoff, rf.label,
       ln(1 + date_diff('second', rf.last_at, rf.cutoff) / 86400.0) AS log_recency,
       ln(1 + rf.orders_90d) AS log_orders_90d, ln(1 + rf.orders_all) AS log_orders_all,
       coalesce(d.rate_avg, 0) AS rate_avg, coalesce(d.rate_sum, 0) AS rate_sum
FROM rf LEFT JOIN defects d USING (customer_id, cutoff)
ORDER BY rf.cutoff, rf.customer_id
"""


def churn_aurocs(out: Path, n_cutoffs: int = 12, n_test: int = 4) -> dict[str, float]:
    """Test AUROC of logistic regressions on SQL features at monthly cutoffs.

    Labels come from the spec's ``customer_churn`` label_sql. Features use rows up to each
    cutoff only: recency and frequency (one hop), and the return rate of the products the
    customer bought in the last 90 days as returned by other customers (several hops).
    Fitted on the earliest ``n_cutoffs - n_test`` cutoffs, scored on the latest ``n_test``.
    """
    con = _connect(out)
    latest = _one(con, "SELECT max(t) FROM (SELECT max(ordered_at) t FROM orders UNION ALL SELECT "
                       "max(returned_at) FROM returns UNION ALL SELECT max(reviewed_at) FROM reviews)")
    con.execute(f"""CREATE TABLE cutoffs AS
        SELECT TIMESTAMP '{latest}' - to_days(30 * k::INTEGER) AS cutoff,
               TIMESTAMP '{latest}' - to_days(30 * k::INTEGER) + INTERVAL 30 DAY AS window_end
        FROM range(1, {n_cutoffs + 1}) r(k)""")
    con.execute(f"CREATE TABLE labels AS {SPEC['tasks']['customer_churn']['label_sql']}")
    result = con.execute(_FEATURES_SQL)
    cols = [d[0] for d in result.description]
    data = dict(zip(cols, np.array(result.fetchall(), dtype=np.float64).T))
    cutoffs = np.unique(data["cutoff"])
    train = data["cutoff"] < cutoffs[-n_test]
    y = data["label"].astype(int)
    feature_sets = {
        "rf": ["log_recency", "log_orders_90d", "log_orders_all"],
        "rf+defects": ["log_recency", "log_orders_90d", "log_orders_all", "rate_avg", "rate_sum"],
    }
    aucs = {}
    for name, features in feature_sets.items():
        x = np.column_stack([data[f] for f in features])
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(x[train], y[train])
        aucs[name] = roc_auc_score(y[~train], model.predict_proba(x[~train])[:, 1])
    aucs["test_positives"] = int(y[~train].sum())
    return aucs


def test_churn_needs_the_multi_hop_defect_signal(tmp_path):
    generate(tmp_path, SIGNAL)
    auc = churn_aurocs(tmp_path)
    assert auc["test_positives"] > 1_000, auc
    # recency and frequency carry real but incomplete signal ...
    assert 0.62 < auc["rf"] < 0.82, auc
    # ... and other customers' returns of the same products add a clear lift
    assert auc["rf+defects"] - auc["rf"] >= 0.03, auc
