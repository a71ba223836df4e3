"""Tests for pipeline/models: encoders, message-passing layers, heads and the registry.

Batches are built by hand in the sampler's format (see the graph contract): a
customers <- orders <- products <- stores schema, one disjoint subgraph per seed,
nodes appended hop by hop, local edge indices.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch_geometric.data import HeteroData

from pipeline.models.config import ModelConfig
from pipeline.models.heads import TaskHead
from pipeline.training.zoo import GRAPH_MODELS, build_model, model_entry
from pipeline.models.encoders import NodeEncoder, RelativeTimeEncoder
from pipeline.models.mpnn import MPNN_KINDS, BipartiteGCNConv, HeteroMPLayer, hop_plan, make_conv
from pipeline.graph.sampling import make_loader

ENTITY = "customers"
FEATURE_META = {
    "customers": {"num": 2, "cat": [3], "text": 0, "ts": 1, "temporal": False},
    "orders": {"num": 1, "cat": [], "text": 3, "ts": 0, "temporal": True},
    "products": {"num": 0, "cat": [4, 5], "text": 0, "ts": 0, "temporal": False},
    "stores": {"num": 0, "cat": [], "text": 0, "ts": 0, "temporal": False},
}
EDGE_TYPES = [
    ("orders", "customer_id", "customers"),
    ("customers", "rev_customer_id", "orders"),
    ("orders", "product_id", "products"),
    ("products", "rev_product_id", "orders"),
    ("products", "store_id", "stores"),
    ("stores", "rev_store_id", "products"),
]
METADATA = (list(FEATURE_META), EDGE_TYPES)
T0 = 1_700_000_000
DAY = 86_400


@pytest.fixture(autouse=True)
def single_thread():
    """These graphs are tiny: a second OpenMP thread only adds wake-up latency,
    which turns into seconds per test when the shared cores are busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def seed_subgraph(
    gen: torch.Generator, n_orders: int, seed_time: int, product_cat: int | None = None
) -> dict:
    """One seed's subgraph: the customer (hop 0), its orders (hop 1), one product
    per order (hop 2). Features are random unless ``product_cat`` fixes the
    products' first categorical column. Edge indices are local to the subgraph."""
    m = n_orders

    def feats(t: str, n: int) -> dict:
        meta = FEATURE_META[t]
        cards = torch.tensor(meta["cat"], dtype=torch.long)
        out = {
            "x_num": torch.randn(n, meta["num"], generator=gen),
            "x_cat": (torch.rand(n, len(meta["cat"]), generator=gen) * cards).long(),
            "x_text": torch.rand(n, meta["text"], generator=gen),
            "x_ts": seed_time - torch.rand(n, meta["ts"], generator=gen, dtype=torch.float64) * 400 * DAY,
        }
        if meta["temporal"]:
            out["time"] = seed_time - (torch.rand(n, generator=gen) * 90 * DAY).long()
        return out

    nodes = {
        "customers": {"hop": torch.zeros(1, dtype=torch.long), **feats("customers", 1)},
        "orders": {"hop": torch.ones(m, dtype=torch.long), **feats("orders", m)},
        "products": {"hop": torch.full((m,), 2, dtype=torch.long), **feats("products", m)},
    }
    if product_cat is not None:
        nodes["products"]["x_cat"][:, 0] = product_cat
    to_customer = torch.stack([torch.arange(m), torch.zeros(m, dtype=torch.long)])
    to_product = torch.stack([torch.arange(m), torch.arange(m)])
    edges = {
        ("orders", "customer_id", "customers"): to_customer,
        ("customers", "rev_customer_id", "orders"): to_customer.flip(0),
        ("orders", "product_id", "products"): to_product,
        ("products", "rev_product_id", "orders"): to_product.flip(0),
    }
    return {"seed_time": seed_time, "nodes": nodes, "edges": edges}


def assemble(subgraphs: list[dict], drop_types: tuple[str, ...] = ()) -> HeteroData:
    """A disjoint sampled batch from per-seed subgraphs: per node type, nodes are
    ordered by (hop, seed), ``batch`` tags each node's seed, edges are relabelled
    to batch-local ids and ordered by their destination's hop, and ``num_sampled_nodes``
    and ``num_sampled_edges`` count nodes and edges per hop."""
    data = HeteroData()
    num_hops = 1 + max(
        max(sg["nodes"][t]["hop"].tolist(), default=0) for sg in subgraphs for t in sg["nodes"]
    )
    position = {}
    for t, meta in FEATURE_META.items():
        if t in drop_types:
            continue
        parts = [(s, sg["nodes"][t]) for s, sg in enumerate(subgraphs) if t in sg["nodes"]]
        cols = {"x_num": meta["num"], "x_cat": len(meta["cat"]), "x_text": meta["text"], "x_ts": meta["ts"]}
        dtypes = {
            "x_num": torch.float32,
            "x_cat": torch.long,
            "x_text": torch.float32,
            "x_ts": torch.float64,
        }
        seed = (
            torch.cat([torch.full((p["hop"].numel(),), s) for s, p in parts])
            if parts
            else torch.zeros(0).long()
        )
        hop = torch.cat([p["hop"] for _, p in parts]) if parts else torch.zeros(0).long()
        order = torch.sort(hop * len(subgraphs) + seed, stable=True).indices
        position[t] = torch.empty_like(order)
        position[t][order] = torch.arange(order.numel())
        offsets = torch.tensor([0] + [p["hop"].numel() for _, p in parts]).cumsum(0)
        position[t] = {s: position[t][offsets[i] : offsets[i + 1]] for i, (s, _) in enumerate(parts)}
        store = data[t]
        store.num_nodes = order.numel()
        for key, width in cols.items():
            x = torch.cat([p[key] for _, p in parts]) if parts else torch.zeros(0, width, dtype=dtypes[key])
            store[key] = x[order]
        if meta["temporal"]:
            store.time = (torch.cat([p["time"] for _, p in parts]) if parts else torch.zeros(0).long())[
                order
            ]
        store.batch = seed[order]
        store.n_id = torch.arange(order.numel())
        store.num_sampled_nodes = torch.bincount(hop, minlength=num_hops).tolist()
    for et in EDGE_TYPES:
        src_t, _, dst_t = et
        if src_t in drop_types or dst_t in drop_types:
            continue
        pieces = [
            torch.stack([position[src_t][s][e[0]], position[dst_t][s][e[1]]])
            for s, sg in enumerate(subgraphs)
            if (e := sg["edges"].get(et)) is not None
        ]
        ei = torch.cat(pieces, dim=1) if pieces else torch.zeros(2, 0, dtype=torch.long)
        # as the sampler lays them out: edges ordered by their destination's hop
        ei = ei[:, torch.argsort(ei[1], stable=True)]
        dst_hop = torch.bucketize(ei[1], torch.tensor(data[dst_t].num_sampled_nodes).cumsum(0), right=True)
        data[et].edge_index = ei
        data[et].num_sampled_edges = torch.bincount(dst_hop, minlength=num_hops - 1)[: num_hops - 1].tolist()
    data[ENTITY].seed_time = torch.tensor([sg["seed_time"] for sg in subgraphs])
    data[ENTITY].batch_size = len(subgraphs)
    data[ENTITY].input_id = torch.arange(len(subgraphs))
    return data


def small_batch(seed: int = 0, sizes: tuple[int, ...] = (2, 1, 3)) -> HeteroData:
    gen = torch.Generator().manual_seed(seed)
    return assemble([seed_subgraph(gen, m, T0 + i * DAY) for i, m in enumerate(sizes)])


def two_hop_task(n_seeds: int = 16, seed: int = 0) -> tuple[HeteroData, torch.Tensor]:
    """Label = whether the products two hops away have category 2 (or 1); the
    customer's own features are noise."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n_seeds) % 2
    subs = [
        seed_subgraph(gen, 1 + i % 3, T0 + i * DAY, product_cat=1 + int(labels[i])) for i in range(n_seeds)
    ]
    return assemble(subs), labels.float()


# -- registry and shapes --------------------------------------------------------


@pytest.mark.parametrize("name", GRAPH_MODELS)
@pytest.mark.parametrize("layers", [1, 4])
def test_every_model_returns_seed_embeddings(name, layers):
    torch.manual_seed(0)
    model = build_model(
        name, FEATURE_META, METADATA, ENTITY, ModelConfig(hidden=16, layers=layers, heads=2)
    )
    out = model(small_batch())
    assert out.shape == (3, 16)
    assert torch.isfinite(out).all()
    # Every seed sees a different subgraph, so no two embeddings coincide.
    assert torch.cdist(out, out).fill_diagonal_(1.0).min() > 1e-4


def test_unknown_model_lists_valid_names():
    with pytest.raises(ValueError, match="gcn, sage, gat, gin, hgt, rgt"):
        build_model("gnn", FEATURE_META, METADATA, ENTITY, ModelConfig())


def test_bad_config_and_entity_are_rejected():
    with pytest.raises(ValueError, match="aggr"):
        ModelConfig(aggr="max")
    with pytest.raises(ValueError, match="divisible"):
        build_model("gat", FEATURE_META, METADATA, ENTITY, ModelConfig(hidden=10, heads=4))
    with pytest.raises(ValueError, match="entity type 'users'"):
        build_model("sage", FEATURE_META, METADATA, "users", ModelConfig())


@pytest.mark.parametrize("name", GRAPH_MODELS)
def test_models_are_deterministic_for_a_fixed_seed(name):
    batch = small_batch()
    outs = []
    for _ in range(2):
        torch.manual_seed(7)
        model = build_model(name, FEATURE_META, METADATA, ENTITY, ModelConfig(hidden=16, heads=2)).eval()
        outs.append(model(batch))
    torch.manual_seed(8)
    other = build_model(name, FEATURE_META, METADATA, ENTITY, ModelConfig(hidden=16, heads=2)).eval()
    assert torch.equal(outs[0], outs[1])
    assert not torch.allclose(outs[0], other(batch))


@pytest.mark.parametrize("name", GRAPH_MODELS)
def test_zero_edge_types_and_absent_node_types(name):
    torch.manual_seed(0)
    model = build_model(name, FEATURE_META, METADATA, ENTITY, ModelConfig(hidden=16, heads=2)).eval()
    batch = small_batch()
    # 'stores' has 0 nodes and its edge types 0 edges; now drop a type and its edges.
    assert batch["stores"].num_nodes == 0
    assert model(batch).shape == (3, 16)
    gen = torch.Generator().manual_seed(0)
    no_products = assemble([seed_subgraph(gen, 2, T0)], drop_types=("products", "stores"))
    assert model(no_products).shape == (1, 16)
    lonely = seed_subgraph(gen, 0, T0)  # a customer with no orders: no edges at all
    assert torch.isfinite(model(assemble([lonely]))).all()


@pytest.mark.parametrize("name", GRAPH_MODELS)
def test_bf16_autocast(name):
    torch.manual_seed(0)
    model = build_model(name, FEATURE_META, METADATA, ENTITY, ModelConfig(hidden=16, heads=2)).eval()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = model.to(device)
    batch = small_batch().to(device)
    with torch.autocast(device, dtype=torch.bfloat16):
        out = model(batch)
    ref = model(batch)
    assert out.shape == (3, 16) and torch.isfinite(out).all()
    assert torch.allclose(out.float(), ref, atol=0.15)


# -- encoders -------------------------------------------------------------------


def test_relative_time_features_by_hand():
    enc = RelativeTimeEncoder(4, periods_days=(1.0, 7.0))
    days = 1.5
    got = enc.features(torch.tensor([days * DAY, float("nan")], dtype=torch.float64))
    expected = torch.tensor(
        [
            [
                math.log1p(1.5),
                math.sin(3 * math.pi),
                math.sin(2 * math.pi * 1.5 / 7),
                math.cos(3 * math.pi),
                math.cos(2 * math.pi * 1.5 / 7),
                0.0,
            ],
            [0.0, 0.0, 0.0, 1.0, 1.0, 1.0],
        ]
    )
    assert torch.allclose(got, expected, atol=1e-6)


def test_node_encoder_resolves_seconds_at_epoch_scale():
    """x_ts holds epoch seconds (~1.7e9) where float32 steps by 128 s; a 60 s shift
    must still change the encoding, so the difference is taken in float64."""
    torch.manual_seed(0)
    enc = NodeEncoder(FEATURE_META, 8, ENTITY).eval()
    a = small_batch()
    b = small_batch()
    a[ENTITY].x_ts[:] = float(T0)
    b[ENTITY].x_ts[:] = float(T0 + 60)
    assert torch.tensor(float(T0), dtype=torch.float32) == torch.tensor(float(T0 + 60), dtype=torch.float32)
    assert not torch.allclose(enc(a)[ENTITY], enc(b)[ENTITY], atol=1e-6)


def test_node_encoder_shapes_and_empty_types():
    torch.manual_seed(0)
    enc = NodeEncoder(FEATURE_META, 8)  # finds the seeds' type by its seed_time
    batch = small_batch()
    out = enc(batch)
    assert {t: tuple(v.shape) for t, v in out.items()} == {
        "customers": (3, 8),
        "orders": (6, 8),
        "products": (6, 8),
        "stores": (0, 8),
    }
    # An order's encoding depends on its age at its seed's cutoff.
    older = small_batch()
    older["orders"].time = older["orders"].time - 30 * DAY
    assert not torch.allclose(enc(older)["orders"], out["orders"])
    assert torch.equal(enc(older)["products"], out["products"])


@pytest.mark.parametrize("one_hot_max", [256, 0])
def test_node_encoder_is_the_documented_sum_of_its_blocks(monkeypatch, one_hot_max):
    """The fused product of the blocks equals the docstring's sum, block by block, with the
    categoricals as code counts in the product (few codes) or looked up (many)."""
    import pipeline.models.encoders as encoders

    monkeypatch.setattr(encoders, "ONE_HOT_MAX_CODES", one_hot_max)
    torch.manual_seed(0)
    enc = NodeEncoder(FEATURE_META, 8, ENTITY, edge_types=EDGE_TYPES).eval()
    batch = small_batch()
    for t, mod in enc.encoders.items():  # degrees per incoming edge type, as sampled
        if mod.degree is not None and batch[t].num_nodes:
            batch[t].degree = torch.randint(0, 6, (batch[t].num_nodes, mod.degree.in_features))
    out = enc(batch)
    for t, mod in enc.encoders.items():
        store = batch[t]
        if not store.num_nodes:
            continue
        seed_time = batch[ENTITY].seed_time[store.batch]
        total = torch.zeros(store.num_nodes, 8)
        if mod.num is not None:
            total += mod.num(store.x_num)
        if mod.cat is not None:
            total += mod.cat(store.x_cat + mod.cat_offsets).sum(1)
        if mod.text is not None:
            total += mod.text(store.x_text)
        if mod.ts is not None:
            delta = seed_time.double().unsqueeze(1) - store.x_ts.double()
            total += mod.ts(mod.ts_time.features(delta).flatten(1))
        if mod.degree is not None and "degree" in store:
            total += mod.degree(torch.log1p(store.degree.float()))
        total += enc.time(seed_time - store.time) if mod.temporal else mod.static
        torch.testing.assert_close(out[t], mod.norm(total), atol=1e-5, rtol=1e-5, msg=t)


@pytest.mark.parametrize("kind", ["sage", "gin"])
@pytest.mark.parametrize("aggr", ["sum", "mean"])
def test_hetero_layer_is_the_sum_of_its_convolutions(kind, aggr):
    """HeteroMPLayer's update is LN(h + act(AGG_r conv_r(x_src, h_dst))) with each
    relation's own PyG convolution, in value and gradient; sage's one-product form and the
    plain loop alike, trimmed to the first destinations."""
    from pipeline.models.mpnn import HeteroMPLayer

    torch.manual_seed(0)
    layer = HeteroMPLayer(kind, list(FEATURE_META), EDGE_TYPES, 8, aggr=aggr).eval()
    n = {"customers": 3, "orders": 6, "products": 5, "stores": 2}
    x = {t: torch.randn(k, 8, requires_grad=True) for t, k in n.items()}
    num_dst = {"customers": 3, "orders": 4, "products": 5, "stores": 1}
    g = torch.Generator().manual_seed(2)
    ei = {et: torch.stack([torch.randint(n[et[0]], (7,), generator=g),
                           torch.randint(num_dst[et[2]], (7,), generator=g)])
          for et in EDGE_TYPES if et[2] != "stores"}  # stores receives nothing
    out = layer(x, ei, num_dst)
    grads = torch.autograd.grad(sum((v * (i + 1)).sum() for i, v in enumerate(out.values())),
                                list(x.values()) + list(layer.parameters()), allow_unused=True)
    expected = {}
    for t, k in num_dst.items():
        h = x[t][:k]
        convs = [layer.conv.convs[et]((x[et[0]], h), e) for et, e in ei.items() if et[2] == t]
        if not convs:
            expected[t] = layer.norms[t](h)
            continue
        m = torch.stack(convs).sum(0) if aggr == "sum" else torch.stack(convs).mean(0)
        expected[t] = layer.norms[t](h + layer.act(m))
    ref = torch.autograd.grad(sum((v * (i + 1)).sum() for i, v in enumerate(expected.values())),
                              list(x.values()) + list(layer.parameters()), allow_unused=True)
    for t in num_dst:
        torch.testing.assert_close(out[t], expected[t], atol=1e-5, rtol=1e-5, msg=t)
    for a, b in zip(grads, ref):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_feature_width_mismatch_names_the_table():
    enc = NodeEncoder(FEATURE_META, 8, ENTITY)
    batch = small_batch()
    batch["orders"].x_text = batch["orders"].x_text[:, :2]
    with pytest.raises(ValueError, match="orders.x_text has 2 columns but feature_meta declares 3"):
        enc(batch)


def test_out_of_range_category_names_the_column():
    enc = NodeEncoder(FEATURE_META, 8, ENTITY)
    batch = small_batch()
    batch["products"].x_cat[0, 1] = 5
    with pytest.raises(ValueError, match="products.x_cat column 1"):
        enc(batch)


# -- layers, checked against hand-computed numbers -------------------------------
# Graph: sources o0, o1 -> destinations c0, c1 with edges o0->c0, o1->c0, o1->c1.

X_SRC = torch.tensor([[1.0, 2.0], [3.0, -1.0]])
X_DST = torch.tensor([[0.5, 0.0], [-3.0, 1.0]])
EDGES = torch.tensor([[0, 1, 1], [0, 0, 1]])


def test_gcn_layer_by_hand():
    conv = BipartiteGCNConv(2, 2)
    with torch.no_grad():
        conv.lin.weight.copy_(torch.tensor([[1.0, 0.0], [1.0, 1.0]]))  # Θx = (x0, x0 + x1)
        conv.bias.copy_(torch.tensor([0.5, -0.5]))
    out = conv((X_SRC, X_DST), EDGES)
    # deg_src(o0)=1, deg_src(o1)=2, deg_dst(c0)=2, deg_dst(c1)=1; Θo0=(1,3), Θo1=(3,2)
    s = math.sqrt
    expected = torch.tensor(
        [
            [1 / s(1 * 2) * 1 + 1 / s(2 * 2) * 3 + 0.5, 1 / s(1 * 2) * 3 + 1 / s(2 * 2) * 2 - 0.5],
            [1 / s(2 * 1) * 3 + 0.5, 1 / s(2 * 1) * 2 - 0.5],
        ]
    )
    assert torch.allclose(out, expected, atol=1e-6)


def test_sage_layer_by_hand():
    conv = make_conv("sage", 2)
    with torch.no_grad():
        conv.lin_l.weight.copy_(torch.eye(2))
        conv.lin_l.bias.copy_(torch.tensor([0.0, 1.0]))
        conv.lin_r.weight.copy_(torch.tensor([[0.0, 1.0], [1.0, 0.0]]))  # swaps the root's coordinates
    out = conv((X_SRC, X_DST), EDGES)
    # c0: mean(o0, o1) = (2, 0.5), + b = (2, 1.5), root swapped (0, 0.5) -> (2, 2)
    # c1: mean(o1) = (3, -1), + b = (3, 0), root swapped (1, -3) -> (4, -3)
    assert torch.allclose(out, torch.tensor([[2.0, 2.0], [4.0, -3.0]]))


def test_gin_layer_by_hand():
    conv = make_conv("gin", 2)
    with torch.no_grad():
        conv.eps.fill_(0.5)
        for lin in (conv.nn[0], conv.nn[2]):
            lin.weight.copy_(torch.eye(2))
            lin.bias.zero_()
    out = conv((X_SRC, X_DST), EDGES)
    # c0: 1.5*(0.5, 0) + (1, 2) + (3, -1) = (4.75, 1); c1: 1.5*(-3, 1) + (3, -1) = (-1.5, 0.5) -> ReLU
    assert torch.allclose(out, torch.tensor([[4.75, 1.0], [0.0, 0.5]]))


def test_gat_layer_by_hand():
    conv = make_conv("gat", 2, heads=1)
    with torch.no_grad():
        conv.lin_src.weight.copy_(torch.eye(2))
        conv.lin_dst.weight.copy_(torch.eye(2))
        conv.att_src.copy_(torch.tensor([[[-1.0, 0.0]]]))
        conv.att_dst.copy_(torch.tensor([[[0.0, 1.0]]]))
        conv.bias.zero_()
    out = conv((X_SRC, X_DST), EDGES)
    # e_ij = LeakyReLU_0.2(-x_j[0] + x_i[1]); c0: e = (-0.2, -0.6) -> softmax; c1: one neighbour
    a0, a1 = math.exp(-0.2), math.exp(-0.6)
    a0, a1 = a0 / (a0 + a1), a1 / (a0 + a1)
    expected = torch.tensor([[a0 * 1 + a1 * 3, a0 * 2 + a1 * -1], [3.0, -1.0]])
    assert torch.allclose(out, expected, atol=1e-6)


@pytest.mark.filterwarnings("ignore:There exist node types")
@pytest.mark.parametrize("aggr", ["sum", "mean"])
def test_hetero_layer_combines_edge_types_by_hand(aggr):
    """Two edge types into c: h' = h + ReLU(AGG(m_1, m_2)) (norm off)."""
    node_types = ["o", "p", "c"]
    edge_types = [("o", "r1", "c"), ("p", "r2", "c")]
    layer = HeteroMPLayer("gcn", node_types, edge_types, 2, aggr=aggr, norm="none", act="relu")
    with torch.no_grad():
        for conv in layer.conv.convs.values():
            conv.lin.weight.copy_(torch.eye(2))
            conv.bias.zero_()
    x = {"o": X_SRC, "p": torch.tensor([[-4.0, 2.0]]), "c": X_DST}
    ei = {("o", "r1", "c"): EDGES, ("p", "r2", "c"): torch.tensor([[0], [0]])}
    out = layer(x, ei)
    r = 1 / math.sqrt(2)
    m1 = torch.tensor([[r * 1 + 0.5 * 3, r * 2 + 0.5 * -1], [r * 3, r * -1]])
    m2 = torch.tensor([[-4.0, 2.0], [0.0, 0.0]])  # p0 -> c0 with both degrees 1
    m = m1 + m2 if aggr == "sum" else (m1 + m2) / 2
    assert torch.allclose(out["c"], X_DST + m.clamp(min=0), atol=1e-6)
    # o and p receive nothing: unchanged.
    assert torch.equal(out["o"], X_SRC)


# -- heads ----------------------------------------------------------------------


def test_task_head_shapes():
    z = torch.randn(5, 8)
    assert TaskHead("binary_classification", 8)(z).shape == (5,)
    assert TaskHead("regression", 8)(z).shape == (5,)
    assert TaskHead("multiclass_classification", 8, num_classes=3)(z).shape == (5, 3)
    assert TaskHead("link_prediction", 8, num_targets=11)(z).shape == (5, 11)
    with pytest.raises(ValueError, match="num_classes"):
        TaskHead("multiclass_classification", 8)
    with pytest.raises(ValueError, match="unknown task type"):
        TaskHead("ranking", 8)


def test_link_head_scores_are_dot_products_plus_prior():
    head = TaskHead("link_prediction", 4, num_targets=3)
    head.set_target_prior(torch.tensor([0.0, 9.0, 99.0]), examples=100)
    z = torch.randn(2, 4)
    q = head.mlp(z)
    # log-odds of 0.5/100.5, 9.5/91.5, 99.5/1.5
    expected = q @ head.target_emb.weight.t() + torch.log(torch.tensor([0.5 / 100.5, 9.5 / 91.5, 99.5 / 1.5]))
    assert torch.allclose(head(z), expected, atol=1e-5)


def test_target_history_counts_each_seeds_own_targets_per_path():
    """Seed 0 reached product 3 through two order items (10 and 40 days before its
    cutoff) and one review (untimed here); seed 1 reached product 5 through a review.
    Nothing else gets a score."""
    import math

    from torch_geometric.data import HeteroData

    from pipeline.models.heads import TargetHistory

    day = 86_400
    items, reviews = ("products", "rev_product_id", "items"), ("products", "rev_product_id", "reviews")
    batch = HeteroData()
    batch["customers"].seed_time = torch.tensor([100 * day, 200 * day])
    batch["products"].n_id = torch.tensor([3, 3, 3, 5])
    batch["products"].batch = torch.tensor([0, 0, 0, 1])
    batch["products"].num_nodes = 4
    batch["items"].time = torch.tensor([60 * day, 90 * day])
    batch["reviews"].num_nodes = 2
    # every sampled node is the source of exactly one edge, to its parent
    batch[items].edge_index = torch.tensor([[0, 1], [1, 0]])  # product 0 -> item 1 (day 90)
    batch[reviews].edge_index = torch.tensor([[2, 3], [0, 1]])
    hist = TargetHistory("products", [items, reviews], "customers")
    out = hist(batch, num_seeds=2, num_targets=6)
    assert out.shape == (2, 6)

    def f(counts, ages):  # [log1p(c_j)], [exp(-a_j/30)], [exp(-a_j/365)]
        rec = [[math.exp(-a / s) if a is not None else 0.0 for a in ages] for s in (30, 365)]
        return torch.tensor([math.log1p(c) for c in counts] + rec[0] + rec[1])

    expected = torch.zeros(2, 6)
    expected[0, 3] = hist.mlp(f([2, 1], [10, None])).squeeze()
    expected[1, 5] = hist.mlp(f([0, 1], [None, None])).squeeze()
    assert torch.allclose(out, expected, atol=1e-6)
    # gradients reach the MLP through the scores
    out.sum().backward()
    assert hist.mlp[0].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="edge types out of 'products'"):
        TargetHistory("products", [("reviews", "product_id", "products")], "customers")


# -- learning -------------------------------------------------------------------


def fit_two_hop(name: str, layers: int = 2, steps: int = 60) -> tuple[float, float]:
    """Train on one two-hop batch; accuracy there and on a fresh batch whose seeds
    have other (noise) features: only a model that reads the products two hops
    away scores well on the fresh one."""
    torch.manual_seed(0)
    batch, y = two_hop_task(seed=0)
    fresh, y_fresh = two_hop_task(seed=1)
    cfg = ModelConfig(hidden=32, layers=layers, heads=2, dropout=0.0)
    model = build_model(name, FEATURE_META, METADATA, ENTITY, cfg)
    head = TaskHead("binary_classification", cfg.hidden)
    opt = torch.optim.Adam([*model.parameters(), *head.parameters()], lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.binary_cross_entropy_with_logits(head(model(batch)), y).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        train = ((head(model(batch)) > 0).float() == y).float().mean()
        held_out = ((head(model(fresh)) > 0).float() == y_fresh).float().mean()
    return float(train), float(held_out)


def test_sage_learns_a_two_hop_label():
    train, held_out = fit_two_hop("sage")
    assert train >= 0.95 and held_out >= 0.9


def test_one_sage_layer_only_memorizes():
    """Control: one layer never reaches the products; it can memorize the noise
    but not generalize."""
    train, held_out = fit_two_hop("sage", layers=1)
    assert train >= 0.9 and held_out <= 0.75


def test_receptive_field_is_one_hop_per_layer():
    """Control for the overfit test: the label's cause sits two hops away, so one
    layer cannot see it and two can."""
    batch = two_hop_task()[0]
    flipped = two_hop_task()[0]
    flipped["products"].x_cat[:, 0] = 3 - flipped["products"].x_cat[:, 0]
    for layers, sees in ((1, False), (2, True)):
        torch.manual_seed(0)
        model = build_model(
            "sage", FEATURE_META, METADATA, ENTITY, ModelConfig(hidden=16, layers=layers)
        ).eval()
        assert torch.allclose(model(batch), model(flipped)) is not sees


@pytest.mark.parametrize("name", [*MPNN_KINDS, "hgt"])
@pytest.mark.parametrize("layers,fanouts", [(1, [4, 3]), (2, [4, 3]), (3, [4, 3]), (3, [5])])
def test_trimming_outer_hops_changes_no_seed_output(name, layers, fanouts):
    """Updating only the nodes a later layer reads gives the seeds the same embeddings."""
    from test_sampling import random_tables, seeds_for, to_graph

    data = to_graph(random_tables(0, 12, 120, 8, temporal_customers=True))
    meta = {t: {"num": 2, "cat": [3], "text": 0, "ts": 0, "temporal": "time" in data[t]}
            for t in data.node_types}
    ids, cutoffs = seeds_for(data, ENTITY, 32, 1)
    batch = next(iter(make_loader(data, ENTITY, ids, cutoffs, fanouts, batch_size=32,
                                  strategy="uniform", seed=0)))
    torch.manual_seed(0)
    model = build_model(name, meta, data.metadata(), ENTITY, ModelConfig(hidden=16, layers=layers, heads=2)).eval()
    plan = hop_plan(batch, layers, {et: batch[et].edge_index for et in batch.edge_types})
    assert plan[-1][0][ENTITY] == 32  # the last layer updates the seeds only
    assert sum(plan[0][0].values()) < sum(batch[t].num_nodes for t in batch.node_types) or layers > len(fanouts)
    with torch.no_grad():
        trimmed = model(batch)
        model.trim = False
        full = model(batch)
    torch.testing.assert_close(trimmed, full)


def test_rgt_settings_reach_the_model_and_name_their_own_checkpoints():
    """TrainConfig's rgt fields (also the Launchpad's rgt_*) build that model; keys of
    configurations that leave them at their defaults are the keys written before they
    existed (literals from that version), so those checkpoints still resume."""
    from datetime import timedelta

    from pipeline.data.spec import TaskSpec
    from pipeline.training.trainer import TrainConfig, build_predictor

    task = TaskSpec(name="churn", type="binary_classification", entity_table=ENTITY,
                    label_sql="SELECT 1", horizon=timedelta(days=30), val_cutoff="latest",
                    test_cutoff="latest", metric="auroc")
    config = TrainConfig(model="rgt", hidden=16, heads=2, max_tokens=8, global_tokens=0,
                         local_layers=2)
    model = build_predictor(model_entry(config.model).build, config, FEATURE_META, METADATA, task).encoder
    assert (model.max_tokens, model.global_tokens, len(model.local)) == (8, None, 2)
    assert TrainConfig().key() == "083c10c0c517"
    assert TrainConfig(model="rgt").key() == "2ae12acbfad9"
    assert TrainConfig(model="rgt", nproc=2).key() == "c31de3ecc910"
    assert len({TrainConfig(model="rgt", max_tokens=8).key(), TrainConfig(model="rgt").key(),
                TrainConfig(model="rgt", local_layers=0).key()}) == 3
