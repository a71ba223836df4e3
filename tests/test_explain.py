"""Explanations name the planted signal: the synthetic shop's churn turns on defective
products, which show in returns (pipeline/data/sources/synthetic.py); both families'
explanations must rank the returns table ahead of columns that carry no signal."""

import time

import numpy as np
import polars as pl
import pytest

from pipeline.serving.explain import (describe, explain_rows, global_importance, importance_sample,
                                      neighbours, plot_importance, reasons)
from pipeline.training.gbdt_attribution import feature_origin
from shop import synthetic_prep

# Columns the generator draws without any effect on leaving.
NOISE = ("customers.country", "customers.marketing_opt_in", "orders.channel",
         "orders.payment_method", "products.weight_kg", "products.is_eco")


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    root = tmp_path_factory.mktemp("explain")
    return root, synthetic_prep(root, "customer_churn", scale=5000)


def _fit(shop, model: str):
    from pipeline.models.gbdt import GBDTConfig
    from pipeline.training.trainer import TrainConfig
    from pipeline.training.zoo import model_entry

    root, prep = shop
    entry = model_entry(model)
    config = TrainConfig(model=model, epochs=5, batch_size=256, device="cpu") \
        if entry.family.needs_graph else GBDTConfig(num_threads=2)
    out = entry.family.fit(entry, config, prep, root / "checkpoints" / model, progress=False,
                           log=lambda _: None)
    return out.checkpoint


@pytest.mark.parametrize("model", ["lightgbm", "sage"])
def test_an_explanation_names_the_planted_signal_ahead_of_noise(shop, model, tmp_path):
    root, prep = shop
    checkpoint = _fit(shop, model)
    entity, cutoff = importance_sample(prep, "test", 200)
    start = time.perf_counter()
    attr = explain_rows(prep, model, checkpoint, entity, cutoff)
    seconds = time.perf_counter() - start
    assert seconds < 60

    # additive: the base plus the contributions give the score (exactly for TreeSHAP,
    # up to the integral's midpoint error for integrated gradients)
    total = attr.frame.group_by("row").agg(pl.col("value").sum()).sort("row")["value"].to_numpy()
    err = np.abs(attr.base + total - attr.scores)
    assert err.max() < (1e-6 if model == "lightgbm" else 0.1 * np.abs(attr.scores - attr.base).max())

    tables = dict(global_importance(attr, "table").iter_rows())
    columns = dict(global_importance(attr, "column").iter_rows())
    noise = {c: columns.get(c, 0.0) for c in NOISE}
    print(model, {k: round(v, 4) for k, v in tables.items()},
          {k: round(v, 4) for k, v in noise.items()})
    assert tables["returns"] > max(noise.values()), (tables, noise)

    why = reasons(attr, prep.task.entity_table, top=5)
    assert set(why["row"].to_list()) == set(range(len(entity)))
    assert any("returns" in r for r in why["reason"].to_list())
    if model == "sage":  # neighbouring rows are a graph model's
        assert len(neighbours(attr, top=3)) > 0
    png = plot_importance(attr, f"{model} on customer_churn", tmp_path / "importance.png")
    assert png.stat().st_size > 1000


def test_features_and_inputs_are_named_in_the_users_terms(shop):
    _, prep = shop
    spec = prep.spec
    origin = feature_origin(spec, "customers", "orders.customer_id / returns.order_id: count_30d")
    assert origin == {"path": "orders / returns", "table": "returns", "column": "(rows)",
                      "aggregate": "count", "window_days": 30}
    assert feature_origin(spec, "customers", "customers.country")["column"] == "country"
    assert feature_origin(spec, "customers", "orders.customer_id: sum(total_amount)")["aggregate"] == "sum"
    assert describe("customers", "orders / order_items / products / returns", "returns", "(rows)") \
        == "number of returns of the products of the order items of the orders"
    assert describe("customers", "orders", "orders", "(rows)", "count", 30) \
        == "number of orders in the last 30 days"
    assert describe("customers", "orders", "orders", "total_amount", "sum") \
        == "sum of orders.total_amount over the orders"
