"""Column typing and encoders on small warehouses written directly in the contract layout."""

import hashlib
import json
import math
from datetime import datetime

import duckdb
import numpy as np
import pytest
import torch

from pipeline.graph.features import (
    Encoders, FeatureConfig, _hash_text, encode_table, feature_meta, fit_encoders, infer_types,
    text_hash_sql,
)
from pipeline.data.spec import parse_spec

CUTOFF = datetime(2024, 1, 20)


def make_spec(tables: dict):
    return parse_spec({"name": "t", "source": {"kind": "synthetic"}, "tables": tables})


def shop(rows: int = 40):
    """customers (static) and events (one per day from 2024-01-01, customer = i % 7)."""
    con = duckdb.connect()
    con.execute("""
        CREATE TABLE customers AS SELECT range AS __id, 'c' || range AS customer_id,
            ['gold', 'silver', 'bronze', 'gold', 'gold'][1 + range % 5] AS tier
        FROM range(7)""")
    con.execute(f"""
        CREATE TABLE events AS SELECT range AS __id, range AS event_id,
            'c' || (range % 7) AS customer_id, range % 7 AS __fk_customer_id,
            TIMESTAMP '2024-01-01' + to_days(CAST(range AS INTEGER)) AS at,
            CAST(range * 3 % 17 AS DOUBLE) AS amount,
            CASE WHEN range % 4 = 0 THEN NULL ELSE range % 5 END AS qty,
            range % 2 = 0 AS paid,
            range % 3 AS is_gift,
            ['web', 'app', 'store', 'phone'][1 + range % 4] AS channel,
            'item number ' || (range % 3) || ' was great' AS comment,
            TIMESTAMP '2023-06-01' + to_days(CAST(range % 10 AS INTEGER)) AS shipped_at,
            'same' AS constant, NULL::INTEGER AS empty, [range] AS tags
        FROM range({rows})""")
    spec = make_spec({
        "customers": {"primary_key": "customer_id"},
        "events": {"primary_key": "event_id", "time_column": "at",
                   "foreign_keys": {"customer_id": "customers"}},
    })
    return con, spec


def test_infer_types_from_statistics():
    con, spec = shop()
    types = infer_types(con, spec.tables["events"], CUTOFF, FeatureConfig())
    kinds = {c: t.kind for c, t in types.items()}
    assert kinds == {
        "amount": "numeric", "qty": "numeric", "paid": "boolean", "is_gift": "numeric",
        "channel": "categorical", "comment": "text", "shipped_at": "timestamp",
        "constant": "dropped", "empty": "dropped", "tags": "dropped",
    }
    assert "constant" in types["constant"].reason and "all null" in types["empty"].reason
    assert "unsupported" in types["tags"].reason


def test_integer_zero_one_is_boolean_and_unique_strings_are_ids():
    con = duckdb.connect()
    con.execute("""CREATE TABLE t AS SELECT range AS __id, range AS k, range % 2 AS flag,
                   md5(range::VARCHAR) AS token FROM range(50)""")
    spec = make_spec({"t": {"primary_key": "k"}})
    types = infer_types(con, spec.tables["t"], CUTOFF, FeatureConfig(id_min_rows=20))
    assert types["flag"].kind == "boolean"
    assert types["token"].kind == "id"
    assert infer_types(con, spec.tables["t"], CUTOFF, FeatureConfig())["token"].kind == "categorical"


def test_override_wins_and_keys_time_ignored_never_features():
    con, spec = shop()
    raw = {"customers": {"primary_key": "customer_id"},
           "events": {"primary_key": "event_id", "time_column": "at",
                      "foreign_keys": {"customer_id": "customers"},
                      "ignore_columns": ["amount"],
                      "column_types": {"is_gift": "categorical", "channel": "text", "qty": "id"}}}
    types = infer_types(con, make_spec(raw).tables["events"], CUTOFF, FeatureConfig())
    assert types["is_gift"].kind == "categorical" and "override" in types["is_gift"].reason
    assert types["channel"].kind == "text"
    assert types["qty"].kind == "id"
    assert not {"amount", "event_id", "customer_id", "at", "__id", "__fk_customer_id"} & set(types)


def test_numeric_robust_scaling_clip_and_missing_indicator():
    con = duckdb.connect()
    con.execute("""CREATE TABLE t AS SELECT range AS __id, range AS k,
                   CASE WHEN range = 0 THEN NULL WHEN range = 1 THEN 1000.0 ELSE range END AS x
                   FROM range(11)""")
    spec = make_spec({"t": {"primary_key": "k"}})
    enc = fit_encoders(con, spec, CUTOFF, FeatureConfig(clip=3.0))
    col = enc.tables["t"].columns[0]
    # finite values 2..10 and 1000: quartiles 4.25, 6.5, 8.75 (linear interpolation)
    assert (col.center, col.scale, col.nan_indicator) == (6.5, 4.5, True)
    x = encode_table(con, spec, "t", enc)["x_num"]
    assert x.dtype == torch.float32 and x.shape == (11, 2)
    expected = np.array([0.0, 3.0] + [(v - 6.5) / 4.5 for v in range(2, 11)], np.float32)
    np.testing.assert_array_equal(x[:, 0].numpy(), expected)
    np.testing.assert_array_equal(x[:, 1].numpy(), [1.0] + [0.0] * 10)


def test_categorical_vocabulary_frequency_top_k_and_oov():
    con = duckdb.connect()
    # a x6, b x6, c x5, d x2 up to the cutoff; 'z' x9 only after it
    values = ["a"] * 6 + ["b"] * 6 + ["c"] * 5 + ["d"] * 2 + [None] + ["z"] * 9 + ["a"]
    con.execute('CREATE TABLE t (__id BIGINT, k BIGINT, "at" TIMESTAMP, v VARCHAR)')
    con.executemany("INSERT INTO t VALUES (?, ?, ?, ?)",
                    [(i, i, datetime(2024, 1, 1 + i), v) for i, v in enumerate(values)])
    spec = make_spec({"t": {"primary_key": "k", "time_column": "at"}})
    enc = fit_encoders(con, spec, CUTOFF, FeatureConfig(max_categories=2, min_frequency=5))
    col = enc.tables["t"].columns[0]
    assert col.vocabulary == ["a", "b"]  # c qualifies but K = 2; ties broken by value
    assert "top 2 kept" in col.note
    codes = encode_table(con, spec, "t", enc)["x_cat"][:, 0].tolist()
    assert codes == [1] * 6 + [2] * 6 + [0] * 5 + [0] * 2 + [0] + [0] * 9 + [1]
    assert feature_meta(enc)["t"]["cat"] == [3]


def test_categorical_without_frequent_value_is_dropped_with_reason():
    con = duckdb.connect()
    con.execute("CREATE TABLE t AS SELECT range AS __id, range AS k, 'v' || (range % 200) AS v FROM range(600)")
    enc = fit_encoders(con, make_spec({"t": {"primary_key": "k"}}), CUTOFF, FeatureConfig(min_frequency=5))
    assert enc.tables["t"].columns == []
    assert "no value occurs 5 times" in enc.tables["t"].dropped["v"]


def test_small_lookup_tables_keep_values_seen_twice():
    con = duckdb.connect()
    con.execute("""CREATE TABLE t AS SELECT range AS __id, range AS k, 'd' || (range % 6) AS dept,
                   'name' || range AS name FROM range(24)""")
    enc = fit_encoders(con, make_spec({"t": {"primary_key": "k"}}), CUTOFF, FeatureConfig(min_frequency=5))
    assert [c.name for c in enc.tables["t"].columns] == ["dept"]
    assert len(enc.tables["t"].columns[0].vocabulary) == 6
    assert "no value occurs 2 times" in enc.tables["t"].dropped["name"]


def test_quantiles_of_large_tables_come_from_every_kth_row():
    con = duckdb.connect()
    # x = id squared: the median of every 4th row (ids 0, 4, ..., 96) differs from the full one
    con.execute("CREATE TABLE t AS SELECT range AS __id, range AS k, CAST(range * range AS DOUBLE) AS x FROM range(100)")
    spec = make_spec({"t": {"primary_key": "k"}})
    full = fit_encoders(con, spec, CUTOFF, FeatureConfig()).tables["t"].columns[0]
    sampled = fit_encoders(con, spec, CUTOFF, FeatureConfig(quantile_rows=25)).tables["t"].columns[0]
    every4 = np.arange(0, 100, 4.0) ** 2
    assert full.center == np.median(np.arange(100.0) ** 2)
    assert sampled.center == np.median(every4)
    assert sampled.scale == np.percentile(every4, 75) - np.percentile(every4, 25)


def _expected_text_vector(text: str, dim: int) -> np.ndarray:
    """Independent reference: words, bigrams, bucket = (md5 digest read as a little-endian
    128-bit integer) >> 64, mod dim; value log(1 + count)."""
    words = [w for w in "".join(ch if ch.isalnum() else " " for ch in text.lower()).split()]
    grams = words + [f"{a} {b}" for a, b in zip(words, words[1:])]
    counts = np.zeros(dim)
    for g in grams:
        counts[(int.from_bytes(hashlib.md5(g.encode()).digest(), "little") >> 64) % dim] += 1
    return np.log1p(counts).astype(np.float32)


def test_text_hashing_matches_reference_and_is_deterministic():
    texts = ["Fast shipping, GREAT price!", "great price great price", None, "Ünïcode wörds ok"]
    con = duckdb.connect()
    con.execute("CREATE TABLE t (__id BIGINT, k BIGINT, review VARCHAR)")
    con.executemany("INSERT INTO t VALUES (?, ?, ?)", [(i, i, s) for i, s in enumerate(texts)])
    spec = make_spec({"t": {"primary_key": "k", "column_types": {"review": "text"}}})
    enc = fit_encoders(con, spec, CUTOFF, FeatureConfig(text_dim=16))
    x = encode_table(con, spec, "t", enc)["x_text"]
    assert x.shape == (4, 16)
    for i, s in enumerate(texts):
        expected = _expected_text_vector(s, 16) if s else np.zeros(16, np.float32)
        np.testing.assert_allclose(x[i].numpy(), expected, rtol=1e-6)
    other = duckdb.connect()
    other.execute("CREATE TABLE t (__id BIGINT, k BIGINT, review VARCHAR)")
    other.executemany("INSERT INTO t VALUES (?, ?, ?)", [(i, i, s) for i, s in reversed(list(enumerate(texts)))])
    assert torch.equal(encode_table(other, spec, "t", enc)["x_text"], x)


def test_text_of_repeated_values_is_hashed_once_per_value_with_the_same_result():
    con = duckdb.connect()
    con.execute("""CREATE TABLE t AS SELECT range AS __id, range AS k,
                   CASE WHEN range % 5 = 0 THEN NULL ELSE 'great item number ' || (range % 7) END AS s
                   FROM range(300)""")
    spec = make_spec({"t": {"primary_key": "k", "column_types": {"s": "text"}}})
    enc = fit_encoders(con, spec, CUTOFF, FeatureConfig(text_dim=32))
    col = enc.tables["t"].columns[0]
    per_row, per_value = np.zeros((300, 32), np.float32), np.zeros((300, 32), np.float32)
    _hash_text(con, "t", col, (1, 2), per_row, dedupe=False)
    _hash_text(con, "t", col, (1, 2), per_value, dedupe=True)
    np.testing.assert_array_equal(per_value, per_row)
    assert (per_row[::5] == 0).all() and (per_row[1] > 0).sum() >= 3
    np.testing.assert_array_equal(encode_table(con, spec, "t", enc)["x_text"].numpy(), per_row)


def test_text_trigrams_follow_ngram_range():
    con = duckdb.connect()
    con.execute("CREATE TABLE t AS SELECT * FROM (VALUES (0, 'a b c'), (1, 'd')) v(__id, s)")
    spec = make_spec({"t": {"column_types": {"s": "text"}}})
    enc = fit_encoders(con, spec, CUTOFF, FeatureConfig(ngram_range=(1, 3), text_dim=1))
    # one bucket: 3 unigrams + 2 bigrams + 1 trigram = 6 n-grams in row 0, one in row 1
    x = encode_table(con, spec, "t", enc)["x_text"]
    np.testing.assert_allclose(x[:, 0].numpy(), [math.log(7), math.log(2)], rtol=1e-6)
    sql = text_hash_sql("t", "__id", "s", 1, (2, 2))
    assert con.execute(sql).fetchall() == [(0, 0, pytest.approx(math.log(3)))]


def test_encoders_ignore_rows_after_fit_cutoff_and_see_rows_before():
    def encoded(change_sql: str | None):
        con, spec = shop()
        if change_sql:
            con.execute(change_sql)
        enc = fit_encoders(con, spec, CUTOFF, FeatureConfig(min_frequency=2))
        return enc, encode_table(con, spec, "events", enc)

    base_enc, base = encoded(None)
    # 2024-01-25 is after the cutoff: a huge amount, a new channel, another comment
    late_enc, late = encoded("UPDATE events SET amount = 1e9, channel = 'fax', qty = NULL, "
                             "comment = 'x y z w' WHERE \"at\" = TIMESTAMP '2024-01-25'")
    assert late_enc.to_dict() == base_enc.to_dict()
    early = 20  # rows 0..19 are on or before 2024-01-20
    for key in ("x_num", "x_cat", "x_text", "x_ts"):
        assert torch.equal(late[key][:early], base[key][:early]), key
    assert not torch.equal(late["x_num"], base["x_num"])  # the late row itself did change

    moved_enc, _ = encoded("UPDATE events SET amount = 1e9 WHERE \"at\" = TIMESTAMP '2024-01-05'")
    assert moved_enc.to_dict() != base_enc.to_dict()


def test_encoders_round_trip_through_json():
    con, spec = shop()
    enc = fit_encoders(con, spec, CUTOFF, FeatureConfig(min_frequency=2))
    back = Encoders.from_dict(json.loads(json.dumps(enc.to_dict())))
    assert back == enc
    a, b = encode_table(con, spec, "events", enc), encode_table(con, spec, "events", back)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_encoded_blocks_have_contract_shapes_and_dtypes():
    con, spec = shop()
    enc = fit_encoders(con, spec, CUTOFF, FeatureConfig(min_frequency=2, text_dim=8))
    out = encode_table(con, spec, "events", enc)
    meta = feature_meta(enc)["events"]
    assert out["x_num"].dtype == torch.float32 and out["x_num"].shape == (40, meta["num"])
    assert out["x_cat"].dtype == torch.int64 and out["x_cat"].shape == (40, len(meta["cat"]))
    assert out["x_text"].dtype == torch.float32 and out["x_text"].shape == (40, 8)
    assert out["x_ts"].dtype == torch.float64 and out["x_ts"].shape == (40, 1)
    assert meta["names"]["num"] == ["amount", "qty", "qty__is_missing", "paid", "is_gift"]
    assert meta["temporal"] and not feature_meta(enc)["customers"]["temporal"]
    assert not torch.isnan(out["x_num"]).any()
    assert out["x_ts"][0, 0].item() == (datetime(2023, 6, 1) - datetime(1970, 1, 1)).total_seconds()
    assert int(out["x_cat"].max()) < max(meta["cat"])

