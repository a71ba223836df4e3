"""The graph build: counts, edges, ordering, times, cache, truncation and leakage."""

import json
from datetime import datetime

import duckdb
import pytest
import torch

from pipeline.graph.features import FeatureConfig
from pipeline.graph.build import GraphError, build_graph, csc_pointers, load_graph, prune_cache
from pipeline.data.spec import parse_spec

CUTOFF = datetime(2024, 1, 20)
CONFIG = FeatureConfig(min_frequency=2, text_dim=8)
SPEC = parse_spec({"name": "t", "source": {"kind": "synthetic"}, "tables": {
    "customers": {"primary_key": "customer_id"},
    "products": {"primary_key": "product_id"},
    "orders": {"primary_key": "order_id", "time_column": "ordered_at",
               "foreign_keys": {"customer_id": "customers"}},
    "items": {"primary_key": "item_id", "time_column": "added_at",
              "foreign_keys": {"order_id": "orders", "product_id": "products"}},
}})


def warehouse(orders: int = 60):
    """A tiny shop in the contract layout. Orders: two per day from 2024-01-01 (ties in
    time), odd ones after id 40 half a second later; customer (i * 5) % 9, NULL every 7th.
    Items: two per order at the order's time, product (i * 3) % 4."""
    con = duckdb.connect()
    con.execute("""CREATE TABLE customers AS SELECT range AS __id, range + 100 AS customer_id,
                   ['n', 's', 'e', 'w'][1 + range % 4] AS region, range * 1.5 AS age FROM range(9)""")
    con.execute("""CREATE TABLE products AS SELECT range AS __id, range AS product_id,
                   'product ' || range || ' is good' AS title FROM range(4)""")
    con.execute(f"""CREATE TABLE orders AS SELECT range AS __id, range AS order_id,
        CASE WHEN range % 7 = 3 THEN NULL ELSE (range * 5) % 9 + 100 END AS customer_id,
        CASE WHEN range % 7 = 3 THEN NULL ELSE (range * 5) % 9 END AS __fk_customer_id,
        TIMESTAMP '2024-01-01' + to_days(CAST(range // 2 AS INTEGER))
            + to_microseconds(500000 * CAST(range % 2 = 1 AND range > 40 AS BIGINT)) AS ordered_at,
        CAST(range * 7 % 23 AS DOUBLE) AS total, ['card', 'cash'][1 + range % 2] AS pay
        FROM range({orders})""")
    con.execute("""CREATE TABLE items AS SELECT range AS __id, range AS item_id,
        range // 2 AS order_id, range // 2 AS __fk_order_id,
        (range * 3) % 4 AS product_id, (range * 3) % 4 AS __fk_product_id,
        o.ordered_at AS added_at, range % 3 + 1 AS quantity
        FROM range((SELECT 2 * count(*) FROM orders)) JOIN orders o ON o.__id = range // 2
        ORDER BY range""")
    return con


@pytest.fixture
def built(tmp_path):
    con = warehouse()
    return con, build_graph(con, SPEC, CUTOFF, CONFIG, tmp_path / "graphs")


def test_node_and_edge_counts_and_edges_point_at_real_nodes(built):
    con, art = built
    data = art.data
    assert {t: data[t].num_nodes for t in data.node_types} == {
        "customers": 9, "products": 4, "orders": 60, "items": 120}
    assert set(data.edge_types) == {
        ("orders", "customer_id", "customers"), ("customers", "rev_customer_id", "orders"),
        ("items", "order_id", "orders"), ("orders", "rev_order_id", "items"),
        ("items", "product_id", "products"), ("products", "rev_product_id", "items")}
    with_customer = con.execute("SELECT count(*) FROM orders WHERE __fk_customer_id IS NOT NULL").fetchall()[0][0]
    assert data["orders", "customer_id", "customers"].edge_index.size(1) == with_customer == 51
    expected = set(con.execute("SELECT __id, __fk_customer_id FROM orders "
                               "WHERE __fk_customer_id IS NOT NULL").fetchall())
    ei = data["orders", "customer_id", "customers"].edge_index
    assert set(map(tuple, ei.t().tolist())) == expected
    rev = data["customers", "rev_customer_id", "orders"].edge_index
    assert set(map(tuple, rev.flip(0).t().tolist())) == expected
    for src, rel, dst in data.edge_types:
        ei = data[src, rel, dst].edge_index
        assert ei.dtype == torch.int64 and ei.min() >= 0
        assert ei[0].max() < data[src].num_nodes and ei[1].max() < data[dst].num_nodes
    assert art.stats["nodes"]["items"] == 120 and art.stats["edges"]["items--order_id->orders"] == 120


def test_edges_sorted_by_destination_then_source_time(built):
    _, art = built
    data = art.data
    for edge_type in data.edge_types:
        src, dst = data[edge_type].edge_index
        src_type = edge_type[0]
        src_time = data[src_type].time[src] if "time" in data[src_type] else src
        key = dst * (int(src_time.max()) + 1) + (src_time - src_time.min())
        assert bool((key[1:] >= key[:-1]).all()), edge_type
        assert bool((dst[1:] >= dst[:-1]).all()), edge_type
    # a parent's children come oldest first, ids ascending within ties
    ei = data["orders", "customer_id", "customers"].edge_index
    kids = ei[0][ei[1] == 0]
    assert kids.tolist() == sorted(kids.tolist()) and len(kids) > 3
    ptr = art.csc_ptr[("orders", "customer_id", "customers")]
    assert ptr.shape == (10,) and ptr[-1] == ei.size(1)
    assert ei[0][ptr[0]:ptr[1]].tolist() == kids.tolist()


def test_time_is_ceil_epoch_seconds_and_static_tables_have_none(built):
    con, art = built
    data = art.data
    assert "time" not in data["customers"] and "time" not in data["products"]
    assert data["orders"].time.dtype == torch.int64
    base = int((datetime(2024, 1, 1) - datetime(1970, 1, 1)).total_seconds())
    assert data["orders"].time[:4].tolist() == [base, base, base + 86400, base + 86400]
    # order 41 is at +0.5 s: its time is rounded up so a cutoff on the whole second excludes it
    assert data["orders"].time[41] == base + 20 * 86400 + 1
    assert data["items"].time.tolist() == data["orders"].time.repeat_interleave(2).tolist()


def test_feature_blocks_and_meta(built):
    _, art = built
    data, meta = art.data, art.feature_meta
    assert data["customers"].x_cat.shape == (9, 1) and meta["customers"]["cat"] == [5]
    assert data["products"].x_text.shape == (4, 8) and meta["products"]["text"] == 8
    assert data["orders"].x_num.shape == (60, meta["orders"]["num"]) and meta["orders"]["temporal"]
    assert data["orders"].x_ts.shape == (60, 0)
    saved = json.loads((art.path / "meta.json").read_text())
    assert saved["feature_meta"] == meta and saved["stats"]["nodes"]["orders"] == 60
    assert saved["encoders"]["fit_cutoff"] == "2024-01-20T00:00:00"


def test_cache_hit_then_miss_after_one_row_changes(tmp_path):
    con = warehouse()
    first = build_graph(con, SPEC, CUTOFF, CONFIG, tmp_path)
    again = build_graph(con, SPEC, CUTOFF, CONFIG, tmp_path)
    assert not first.cache_hit and again.cache_hit and again.hash == first.hash
    for t in first.data.node_types:
        for key in ("x_num", "x_cat", "x_text", "x_ts"):
            assert torch.equal(first.data[t][key], again.data[t][key])
    assert torch.equal(first.data["orders"].time, again.data["orders"].time)
    for et in first.data.edge_types:
        assert torch.equal(first.data[et].edge_index, again.data[et].edge_index)
        assert torch.equal(first.csc_ptr[et], again.csc_ptr[et])

    con.execute("UPDATE items SET quantity = 99 WHERE __id = 119")
    changed = build_graph(con, SPEC, CUTOFF, CONFIG, tmp_path)
    assert not changed.cache_hit and changed.hash != first.hash
    other_cutoff = build_graph(con, SPEC, datetime(2024, 1, 21), CONFIG, tmp_path)
    assert not other_cutoff.cache_hit and other_cutoff.hash != changed.hash
    assert len([p for p in tmp_path.iterdir() if not p.name.startswith(".")]) == 3
    con.execute('ALTER TABLE customers RENAME COLUMN age TO "age in years"')
    renamed = build_graph(con, SPEC, datetime(2024, 1, 21), CONFIG, tmp_path)
    assert not renamed.cache_hit and renamed.feature_meta["customers"]["names"]["num"] == ["age in years"]


def test_saved_graph_is_plain_tensors(built):
    _, art = built
    parts = json.loads((art.path / "meta.json").read_text())["parts"]
    assert sorted(p.name for p in art.path.iterdir()) == sorted(parts + ["meta.json"])
    payloads = [torch.load(art.path / part, weights_only=True) for part in parts]
    orders = next(p["nodes"]["orders"] for p in payloads if "orders" in p["nodes"])
    assert torch.equal(orders["x_num"], art.data["orders"].x_num)
    assert sum(len(p["edges"]) for p in payloads) == 6
    loaded = load_graph(art.path)
    assert loaded.cache_hit and loaded.encoders == art.encoders
    assert torch.equal(loaded.data["items", "order_id", "orders"].edge_index,
                       art.data["items", "order_id", "orders"].edge_index)


def test_truncate_keeps_exactly_rows_up_to_the_cutoff(built):
    con, art = built
    as_of = datetime(2024, 1, 21)  # orders 0..41 are at or before it except 41 (0.5 s later)
    small = art.truncate(as_of)
    n_orders = con.execute("SELECT count(*) FROM orders WHERE ordered_at <= ?", [as_of]).fetchall()[0][0]
    assert small["orders"].num_nodes == n_orders == 41
    assert small["items"].num_nodes == 82
    assert small["customers"].num_nodes == 9 and small["products"].num_nodes == 4
    assert torch.equal(small["orders"].x_num, art.data["orders"].x_num[:41])
    assert int(small["orders"].time.max()) <= int((as_of - datetime(1970, 1, 1)).total_seconds())
    for et in art.data.edge_types:
        full, cut = art.data[et].edge_index, small[et].edge_index
        src, _, dst = et
        keep = (full[0] < small[src].num_nodes) & (full[1] < small[dst].num_nodes)
        assert torch.equal(cut, full[:, keep]), et
    kept = con.execute("SELECT count(*) FROM orders WHERE ordered_at <= ? AND __fk_customer_id IS NOT NULL",
                       [as_of]).fetchall()[0][0]
    assert small["orders", "customer_id", "customers"].edge_index.size(1) == kept
    ptr = csc_pointers(small)[("orders", "customer_id", "customers")]
    assert ptr[-1] == kept


def test_leakage_rows_after_cutoff_never_change_earlier_features(tmp_path):
    def build(con, folder):
        return build_graph(con, SPEC, CUTOFF, CONFIG, tmp_path / folder)

    base = build(warehouse(), "a")
    con = warehouse()
    # every non-key column of every row after the cutoff changes, and rows are added after it
    con.execute("UPDATE orders SET total = total * 1000 + 7, pay = 'voucher' WHERE ordered_at > ?", [CUTOFF])
    con.execute("UPDATE items SET quantity = 50 WHERE added_at > ?", [CUTOFF])
    con.execute("""INSERT INTO orders SELECT 60 + range, 60 + range, 100, 0,
                   TIMESTAMP '2024-03-01' + to_days(CAST(range AS INTEGER)), 1e6, 'crypto' FROM range(5)""")
    leaky = build(con, "b")
    assert not leaky.cache_hit and leaky.hash != base.hash
    assert leaky.encoders.tables == base.encoders.tables
    for t in base.data.node_types:
        n = base.truncate(CUTOFF)[t].num_nodes
        for key in ("x_num", "x_cat", "x_text", "x_ts"):
            assert torch.equal(leaky.data[t][key][:n], base.data[t][key][:n]), (t, key)
    assert leaky.data["orders"].num_nodes == 65

    control = warehouse()
    control.execute("UPDATE orders SET total = total + 1000 WHERE __id < 30")
    moved = build(control, "c")
    assert moved.encoders.tables["orders"] != base.encoders.tables["orders"]
    assert not torch.equal(moved.data["orders"].x_num[:10], base.data["orders"].x_num[:10])


def test_ids_not_following_time_are_reported(tmp_path):
    con = warehouse()
    con.execute("UPDATE orders SET ordered_at = TIMESTAMP '2030-01-01' WHERE __id = 5")
    with pytest.raises(GraphError, match=r"orders: __id does not follow ordered_at \(row 6"):
        build_graph(con, SPEC, CUTOFF, CONFIG, tmp_path)


def test_dangling_foreign_key_is_reported(tmp_path):
    con = warehouse()
    con.execute("UPDATE items SET __fk_product_id = 17 WHERE __id = 8")
    with pytest.raises(GraphError, match=r"items.__fk_product_id: 1 rows point past the 4 rows of products"):
        build_graph(con, SPEC, CUTOFF, CONFIG, tmp_path)


def test_prune_cache_keeps_the_newest(tmp_path):
    con = warehouse(orders=20)
    paths = []
    for day in (10, 11, 12, 13):
        paths.append(build_graph(con, SPEC, datetime(2024, 1, day), CONFIG, tmp_path).path)
    removed = prune_cache(tmp_path, keep=2)
    assert sorted(removed) == sorted(paths[:2])
    assert sorted(p for p in tmp_path.iterdir()) == sorted(paths[2:])
    assert prune_cache(tmp_path, keep=2) == []


def test_graph_from_the_real_synthetic_warehouse(tmp_path):
    from pathlib import Path

    import yaml

    from pipeline.data.sources import open_source
    from pipeline.data.spec import parse_spec
    from pipeline.data.warehouse import extract_table

    raw = yaml.safe_load((Path(__file__).parent.parent / "datasets" / "ecommerce.yaml").read_text())
    raw["source"]["scale"] = 1000
    spec = parse_spec(raw)
    source, con = open_source(spec, tmp_path), duckdb.connect()
    for table in spec.extract_order():
        extract_table(con, spec, table, source.read(table), source.fingerprint(table))
    cutoff = con.execute("SELECT max(ordered_at) - INTERVAL 60 DAY FROM orders").fetchall()[0][0]
    art = build_graph(con, spec, cutoff, FeatureConfig(), tmp_path / "graphs")
    data = art.data
    for name, t in spec.tables.items():
        assert data[name].num_nodes == con.execute(f'SELECT count(*) FROM "{name}"').fetchall()[0][0]
        if t.time_column:
            assert bool((data[name].time[1:] >= data[name].time[:-1]).all())
        else:
            assert "time" not in data[name]
        assert not torch.isnan(data[name].x_num).any()
        for fk in t.foreign_keys:
            linked = con.execute(f'SELECT count("__fk_{fk.name}") FROM "{name}"').fetchall()[0][0]
            assert data[name, fk.name, fk.references].edge_index.size(1) == linked > 0
    enc = art.encoders.tables
    assert {c.name for c in enc["reviews"].columns if c.kind == "text"} == {"text"}
    assert "status" not in {c.name for c in enc["orders"].columns}  # ignore_columns
    assert art.feature_meta["orders"]["num"] > 0 and art.feature_meta["orders"]["cat"]
