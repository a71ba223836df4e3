"""Tests for pipeline/models/transformer.py: hop recovery, structural encodings,
and the relational graph transformer's per-seed masking, ordering and token cap.

The hand-built batch helpers live in test_models.py (the sampler's format)."""

from __future__ import annotations

import math

import pytest
import torch
from test_models import (  # noqa: F401  (single_thread: an autouse fixture)
    DAY,
    ENTITY,
    FEATURE_META,
    METADATA,
    T0,
    assemble,
    fit_two_hop,
    seed_subgraph,
    single_thread,
    small_batch,
)
from torch_geometric.data import HeteroData

from pipeline.models.config import ModelConfig
from pipeline.training.zoo import build_model
from pipeline.models.transformer import RelationalGraphTransformer, log_degree_features, node_hops


def rgt(**overrides) -> RelationalGraphTransformer:
    torch.manual_seed(0)
    cfg = ModelConfig(hidden=16, heads=2, layers=2, **overrides)
    return build_model("rgt", FEATURE_META, METADATA, ENTITY, cfg).eval()


def subgraphs(sizes: tuple[int, ...], seed: int = 0) -> list[dict]:
    gen = torch.Generator().manual_seed(seed)
    return [seed_subgraph(gen, m, T0 + i * DAY) for i, m in enumerate(sizes)]


def test_node_hops_from_counts():
    data = HeteroData()
    data["orders"].num_nodes = 5
    data["orders"].batch = torch.zeros(5, dtype=torch.long)
    data["orders"].num_sampled_nodes = [0, 2, 3]
    assert node_hops(data, "orders").tolist() == [1, 1, 2, 2, 2]
    data["orders"].num_sampled_nodes = [0, 2, 2]
    with pytest.raises(ValueError, match="sums to 4 but the batch holds 5 orders"):
        node_hops(data, "orders")


def test_log_degree_features_by_hand():
    batch = small_batch(sizes=(2, 1, 3))
    node_types, edge_types = METADATA
    feats = log_degree_features(batch, node_types, edge_types)
    k_in = edge_types.index(("orders", "customer_id", "customers"))
    expected = torch.zeros(3, len(edge_types))
    expected[:, k_in] = torch.tensor([math.log(3), math.log(2), math.log(4)])
    assert torch.allclose(feats["customers"], expected)
    # every order has one customer and one product
    assert torch.allclose(feats["orders"].sum(1), torch.full((6,), 2 * math.log(2)))
    assert feats["stores"].shape == (0, len(edge_types))


def test_rgt_seed_outputs_ignore_other_seeds_and_padding():
    model = rgt()
    base = subgraphs((2, 1, 3))
    out = model(assemble(base))
    # Grow seed 1 to the longest subgraph: every other seed gets more padding, and
    # seed 1's new tokens are present in the batch alongside theirs.
    grown = list(base)
    grown[1] = subgraphs((6,), seed=5)[0]
    grown[1]["seed_time"] = base[1]["seed_time"]
    out_grown = model(assemble(grown))
    assert torch.allclose(out_grown[[0, 2]], out[[0, 2]], atol=1e-5)
    assert not torch.allclose(out_grown[1], out[1], atol=1e-3)
    # Inference without autograd takes PyTorch's fused encoder path; same masking.
    with torch.no_grad():
        assert torch.allclose(model(assemble(grown)), out_grown, atol=1e-5)


def test_rgt_permuting_seeds_permutes_outputs():
    model = rgt()
    base = subgraphs((2, 1, 3, 2))
    perm = [2, 0, 3, 1]
    out = model(assemble(base))
    out_perm = model(assemble([base[i] for i in perm]))
    assert torch.allclose(out_perm, out[perm], atol=1e-5)
    assert not torch.allclose(out_perm, out, atol=1e-3)


def test_rgt_caps_tokens_keeping_lowest_hops():
    """With 3 tokens per seed and no local message passing, a seed with >= 2 orders
    keeps itself and two orders: its products (hop 2) are cut, orders are not."""
    model = rgt(max_tokens=3, local_layers=0)
    batch = assemble(subgraphs((2, 3)))
    tok, mask = model.tokens(batch)
    assert tok.shape == (2, 3, 16) and mask.all()
    out = model(batch)
    changed_product = assemble(subgraphs((2, 3)))
    changed_product["products"].x_cat[:, 0] = (changed_product["products"].x_cat[:, 0] + 1) % 4
    assert torch.allclose(model(changed_product), out, atol=1e-6)
    changed_order = assemble(subgraphs((2, 3)))
    changed_order["orders"].x_num += 1.0
    assert not torch.allclose(model(changed_order), out, atol=1e-3)


def test_rgt_seed_is_token_zero():
    """Token 0 of every seed is its own customer: changing customer 1's features
    changes exactly token (seed 1, position 0)."""
    model = rgt(local_layers=0)
    batch = assemble(subgraphs((2, 1, 3)))
    tok, mask = model.tokens(batch)
    assert mask.sum(1).tolist() == [5, 3, 7]
    batch2 = assemble(subgraphs((2, 1, 3)))
    batch2["customers"].x_num[1] += 1.0
    tok2, _ = model.tokens(batch2)
    changed = ~torch.isclose(tok, tok2).all(-1)
    assert changed.nonzero().tolist() == [[1, 0]]


def test_rgt_learns_a_two_hop_label():
    train, held_out = fit_two_hop("rgt")
    assert train >= 0.95 and held_out >= 0.9


def test_rgt_needs_hop_counts():
    batch = small_batch()
    del batch["orders"].num_sampled_nodes
    with pytest.raises(ValueError, match="'orders'.*num_sampled_nodes"):
        rgt()(batch)


@pytest.mark.parametrize("layers", [1, 3])
def test_hgt_handles_missing_edge_types(layers):
    torch.manual_seed(0)
    model = build_model(
        "hgt", FEATURE_META, METADATA, ENTITY, ModelConfig(hidden=16, heads=2, layers=layers)
    ).eval()
    batch = small_batch()
    full = model(batch)
    del batch[("orders", "product_id", "products")]
    del batch[("products", "rev_product_id", "orders")]
    cut = model(batch)
    assert cut.shape == full.shape == (3, 16)
    # Products no longer reach the customers (with >= 2 layers they did).
    assert torch.allclose(cut, full, atol=1e-6) is (layers == 1)


@pytest.mark.parametrize("trim", [False, True])
def test_hgt_layer_matches_pyg_hgtconv_in_value_and_gradient(trim):
    """Destination-first HGT gives PyG's HGTConv's outputs and gradients: several relations
    into one type (one softmax over all of them), a relation whose source type is also a
    destination, a destination type with no edges in the batch (bias path), and, trimmed,
    only the first nodes of each type updated."""
    from torch_geometric.nn import HGTConv

    from pipeline.models.transformer import HGTLayer

    node_types = ["a", "b", "c"]
    edge_types = [("b", "r0", "a"), ("c", "r1", "a"), ("a", "r2", "b"), ("a", "r3", "c")]
    torch.manual_seed(0)
    ref = HGTConv(8, 8, (node_types, edge_types), heads=2)
    ours = HGTLayer(8, 8, (node_types, edge_types), heads=2)
    ours.load_state_dict(ref.state_dict())
    for p in ref.parameters():  # skip gates and relation priors away from their ones
        torch.nn.init.normal_(p, std=0.5)
    ours.load_state_dict(ref.state_dict())
    n = {"a": 6, "b": 9, "c": 5}
    x = {t: torch.randn(k, 8) for t, k in n.items()}
    num_dst = {"a": 4, "b": 3, "c": 5} if trim else {}
    g = torch.Generator().manual_seed(1)

    def edges(s, d, e):
        dst_n = num_dst.get(d, n[d])
        return torch.stack([torch.randint(n[s], (e,), generator=g), torch.randint(dst_n, (e,), generator=g)])

    # ("a", "r3", "c") is absent: "c" gets only the bias path
    ei = {edge_types[0]: edges("b", "a", 12), edge_types[1]: edges("c", "a", 7),
          edge_types[2]: edges("a", "b", 10)}
    xr = {t: v.clone().requires_grad_() for t, v in x.items()}
    xo = {t: v.clone().requires_grad_() for t, v in x.items()}
    a, b = ref(xr, ei), ours(xo, ei, num_dst)
    assert sorted(b) == ["a", "b", "c"]
    weights = {t: torch.randn(n[t], 8) for t in node_types}
    loss_r = sum((a[t][: num_dst.get(t, n[t])] * weights[t][: num_dst.get(t, n[t])]).sum() for t in b)
    loss_o = sum((b[t] * weights[t][: b[t].size(0)]).sum() for t in b)
    for t in b:
        torch.testing.assert_close(b[t], a[t][: num_dst.get(t, n[t])], atol=1e-5, rtol=1e-5)
    loss_r.backward()
    loss_o.backward()
    for t in node_types:
        torch.testing.assert_close(xo[t].grad, xr[t].grad, atol=1e-5, rtol=1e-5)
    for (name, pr), po in zip(ref.named_parameters(), ours.parameters()):
        torch.testing.assert_close(po.grad, pr.grad, atol=1e-5, rtol=1e-5, msg=name)


@pytest.mark.parametrize("group", [1, 2])
def test_rgt_length_groups_give_the_one_batch_result(monkeypatch, group):
    import pipeline.models.transformer as transformer

    model = rgt()
    subs = subgraphs((2, 0, 3, 1, 3, 2))
    alone = torch.cat([model(assemble([sg])) for sg in subs])  # each seed by itself
    monkeypatch.setattr(transformer, "SEEDS_PER_LENGTH_GROUP", 64)
    torch.testing.assert_close(model(assemble(subs)), alone, atol=1e-5, rtol=1e-5)
    monkeypatch.setattr(transformer, "SEEDS_PER_LENGTH_GROUP", group)
    torch.testing.assert_close(model(assemble(subs)), alone, atol=1e-5, rtol=1e-5)
