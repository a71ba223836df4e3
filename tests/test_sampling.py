"""Temporal sampler: exact counts, the rule of time, `last`, determinism, leakage.

Every property is checked on batches from ``make_loader`` (PyG's NodeLoader), the path
training uses, against a brute-force reference computed from the full graph.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch_geometric.data import HeteroData
from torch_geometric.sampler import NodeSamplerInput

from pipeline.graph.sampling import TemporalSampler, make_loader

PROPERTY = settings(max_examples=20, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


# -- graphs ----------------------------------------------------------------------------
@dataclass
class Tables:
    """Raw rows of a small shop: times (None = static table) and foreign keys."""

    n_customers: int
    customers_time: torch.Tensor | None
    n_products: int
    n_tags: int
    orders_time: torch.Tensor
    orders_customer: torch.Tensor
    items_time: torch.Tensor
    items_order: torch.Tensor
    items_product: torch.Tensor
    items_product_edge_order: torch.Tensor  # column order of the product_id edges
    events_time: torch.Tensor
    events_customer: torch.Tensor


def random_tables(seed: int, n_customers: int, n_orders: int, n_products: int,
                  temporal_customers: bool, horizon: int = 30) -> Tables:
    """Degrees well above small fanouts (about n_orders / n_customers orders each,
    many items per product) and many ties (times in [0, horizon))."""
    g = torch.Generator().manual_seed(seed)
    orders_time = torch.randint(0, horizon, (n_orders,), generator=g).sort().values
    items_order = torch.randint(0, n_orders, (3 * n_orders,), generator=g).sort().values
    return Tables(
        n_customers=n_customers,
        customers_time=(torch.randint(0, horizon, (n_customers,), generator=g).sort().values
                        if temporal_customers else None),
        n_products=n_products,
        n_tags=3,
        orders_time=orders_time,
        orders_customer=torch.randint(0, n_customers, (n_orders,), generator=g),
        items_time=orders_time[items_order],
        items_order=items_order,
        items_product=torch.randint(0, n_products, (3 * n_orders,), generator=g),
        # Edge ids unlike source ids, so that the tie rule (time, edge id) is exercised.
        items_product_edge_order=torch.randperm(3 * n_orders, generator=g),
        events_time=torch.randint(0, horizon, (2 * n_customers,), generator=g),
        events_customer=torch.randint(0, n_customers, (2 * n_customers,), generator=g),
    )


def to_graph(t: Tables) -> HeteroData:
    """Contract-shaped graph; features are functions of (type, id) so appended rows leave
    the features of existing rows unchanged."""
    d = HeteroData()
    sizes = {"customers": t.n_customers, "orders": t.orders_time.numel(),
             "items": t.items_time.numel(), "products": t.n_products,
             "events": t.events_time.numel(), "tags": t.n_tags}
    for i, (name, n) in enumerate(sizes.items()):
        ids = torch.arange(n, dtype=torch.float32)
        d[name].num_nodes = n
        d[name].x_num = torch.stack([ids, ids * 0.5 + i], dim=1)
        d[name].x_cat = (torch.arange(n) % 3).view(-1, 1)
        d[name].x_text = torch.zeros(n, 0)
        d[name].x_ts = torch.zeros(n, 0, dtype=torch.float64)
    if t.customers_time is not None:
        d["customers"].time = t.customers_time
    d["orders"].time = t.orders_time
    d["items"].time = t.items_time
    d["events"].time = t.events_time

    def fk(child: str, col: str, parent: str, ref: torch.Tensor, reverse: bool = True,
           order: torch.Tensor | None = None):
        child_ids = torch.arange(ref.numel()) if order is None else order
        ei = torch.stack([child_ids, ref[child_ids]])
        d[child, col, parent].edge_index = ei
        if reverse:
            d[parent, "rev_" + col, child].edge_index = ei.flip(0)

    fk("orders", "customer_id", "customers", t.orders_customer)
    fk("items", "order_id", "orders", t.items_order)
    fk("items", "product_id", "products", t.items_product, order=t.items_product_edge_order)
    # events only point at customers: nothing flows into events (no incoming edges).
    fk("events", "customer_id", "customers", t.events_customer, reverse=False)
    return d


def with_future(t: Tables, after: int, seed: int, n_new: int = 40) -> Tables:
    """``t`` plus orders and items whose times are all > ``after``, appended with larger
    ids and pointing at existing customers, orders and products."""
    g = torch.Generator().manual_seed(seed)
    n_c, n_o = t.n_customers, t.orders_time.numel()
    new_time = after + 1 + torch.randint(0, 5, (n_new,), generator=g)
    new_cust = torch.randint(0, n_c, (n_new,), generator=g)
    # New items go to new orders and to existing ones (a later item of an old order).
    new_item_order = torch.cat([n_o + torch.arange(n_new),
                                torch.randint(0, n_o, (n_new,), generator=g)])
    new_item_time = torch.cat([new_time, after + 1 + torch.randint(0, 5, (n_new,), generator=g)])
    return Tables(
        n_customers=n_c, customers_time=t.customers_time, n_products=t.n_products,
        n_tags=t.n_tags,
        orders_time=torch.cat([t.orders_time, new_time]),
        orders_customer=torch.cat([t.orders_customer, new_cust]),
        items_time=torch.cat([t.items_time, new_item_time]),
        items_order=torch.cat([t.items_order, new_item_order]),
        items_product=torch.cat([t.items_product,
                                 torch.randint(0, t.n_products, (2 * n_new,), generator=g)]),
        items_product_edge_order=torch.cat([t.items_product_edge_order,
                                            t.items_time.numel() + torch.arange(2 * n_new)]),
        events_time=t.events_time, events_customer=t.events_customer,
    )


# -- reference check -------------------------------------------------------------------
def hops_of(counts: list[int]) -> torch.Tensor:
    return torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))


def check_batch(data: HeteroData, batch: HeteroData, entity: str, seeds: torch.Tensor,
                cutoffs: torch.Tensor, fanouts: list[int], strategy: str) -> None:
    """Assert every contract property of one batch against the full graph."""
    n_hops = len(fanouts)
    bsz = batch[entity].batch_size
    assert torch.equal(batch[entity].n_id[:bsz], seeds)
    assert torch.equal(batch[entity].batch[:bsz], torch.arange(bsz))
    assert torch.equal(batch[entity].seed_time, cutoffs)
    seed_time = batch[entity].seed_time

    hop = {}
    for t in data.node_types:
        counts = batch[t].num_sampled_nodes
        assert len(counts) == n_hops + 1 and sum(counts) == batch[t].num_nodes
        assert counts[0] == (bsz if t == entity else 0)
        hop[t] = hops_of(counts)
        if "time" in data[t]:
            later = hop[t] > 0
            node_time = data[t].time[batch[t].n_id[later]]
            assert bool((node_time <= seed_time[batch[t].batch[later]]).all()), t
        expected = data[t].x_num[batch[t].n_id].clone()
        if t == entity and "time" in data[t]:
            # a seed created after its cutoff is withheld: no columns, its cutoff as its time
            late = data[t].time[seeds] > cutoffs
            expected[:len(seeds)][late] = 0.0
            assert torch.equal(batch[t].time[:len(seeds)][late], cutoffs[late])
        assert torch.equal(batch[t].x_num, expected)

    parents_seen = {t: torch.zeros(batch[t].num_nodes, dtype=torch.long) for t in data.node_types}
    for et in data.edge_types:
        s, _, d = et
        row, col = batch[et].edge_index
        e_id = batch[et].e_id
        assert bool((row < batch[s].num_nodes).all()) and bool((col < batch[d].num_nodes).all())
        full = data[et].edge_index
        assert torch.equal(batch[s].n_id[row], full[0, e_id])
        assert torch.equal(batch[d].n_id[col], full[1, e_id])
        assert torch.equal(batch[s].batch[row], batch[d].batch[col])
        assert torch.equal(hop[s][row], hop[d][col] + 1)
        assert torch.equal(hop[d][col], hops_of(batch[et].num_sampled_edges))
        parents_seen[s].index_add_(0, row, torch.ones_like(row))

        # Exact count, eligibility and (for `last`) identity per frontier node.
        src_time = data[s].time if "time" in data[s] else None
        k = [g for g in data.edge_types if g[2] == d].index(et)
        assert batch[d].degree.shape == (batch[d].num_nodes, sum(g[2] == d for g in data.edge_types))
        for v in range(batch[d].num_nodes):
            h = int(hop[d][v])
            cut = int(seed_time[batch[d].batch[v]])
            into = (full[1] == batch[d].n_id[v]).nonzero().view(-1)
            if src_time is not None:
                into = into[src_time[full[0, into]] <= cut]
            # every node, the last hop's too, knows its degree as of its seed's cutoff
            assert int(batch[d].degree[v, k]) == into.numel(), (et, v)
            if h >= n_hops:
                continue
            got = e_id[col == v]
            assert got.numel() == min(fanouts[h], into.numel()), (et, v)
            assert got.unique().numel() == got.numel()
            assert bool(torch.isin(got, into).all())
            if strategy == "last":
                # Tie rule: order by (time, edge id); `into` is in edge-id order.
                if src_time is not None:
                    into = into[torch.sort(src_time[full[0, into]], stable=True).indices]
                tail = into[into.numel() - got.numel():]
                assert torch.equal(got.sort().values, tail.sort().values), (et, v)
    for t in data.node_types:
        # Tree: every non-seed node hangs off exactly one parent edge.
        assert torch.equal(parents_seen[t], (hop[t] > 0).long()), t


graph_params = st.fixed_dictionaries({
    "seed": st.integers(0, 10_000),
    "n_customers": st.integers(3, 8),
    "n_orders": st.integers(30, 120),
    "n_products": st.integers(2, 6),
    "temporal_customers": st.booleans(),
})
fanouts_st = st.lists(st.integers(1, 4), min_size=1, max_size=2)


def seeds_for(data: HeteroData, entity: str, n: int, seed: int, lo: int = -1, hi: int = 31):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, data[entity].num_nodes, (n,), generator=g)
    return ids, torch.randint(lo, hi, (n,), generator=g)


# -- properties ------------------------------------------------------------------------
@PROPERTY
@given(params=graph_params, fanouts=fanouts_st, strategy=st.sampled_from(["uniform", "last"]),
       entity=st.sampled_from(["customers", "products", "orders"]))
def test_exact_counts_time_rule_and_edges(params, fanouts, strategy, entity):
    data = to_graph(random_tables(**params))
    seeds, cutoffs = seeds_for(data, entity, 6, params["seed"])
    loader = make_loader(data, entity, seeds, cutoffs, fanouts, batch_size=4,
                         strategy=strategy, seed=params["seed"])
    for i, batch in enumerate(loader):
        sl = slice(4 * i, 4 * i + batch[entity].batch_size)
        check_batch(data, batch, entity, seeds[sl], cutoffs[sl], fanouts, strategy)


def test_three_hops_with_hubs_and_ties():
    # From products (about 90 items each, > 8 x fanout 2: the duplicate-redraw path) via
    # items to orders (about 3 items each, > 2: the random-key path) and back to products.
    data = to_graph(random_tables(7, n_customers=6, n_orders=120, n_products=4,
                                  temporal_customers=False))
    seeds, cutoffs = seeds_for(data, "products", 5, 3, lo=20)
    for strategy in ("uniform", "last"):
        batch = next(iter(make_loader(data, "products", seeds, cutoffs, [2, 3, 2],
                                      batch_size=5, strategy=strategy)))
        assert batch["items", "product_id", "products"].num_sampled_edges == [10, 0, 20]
        check_batch(data, batch, "products", seeds, cutoffs, [2, 3, 2], strategy)


@PROPERTY
@given(params=graph_params, fanouts=fanouts_st, strategy=st.sampled_from(["uniform", "last"]))
def test_future_rows_leave_the_batch_bit_identical(params, fanouts, strategy):
    tables = random_tables(**params)
    seeds, cutoffs = seeds_for(to_graph(tables), "customers", 8, params["seed"])
    before = to_graph(tables)
    after = to_graph(with_future(tables, after=int(cutoffs.max()), seed=params["seed"] + 1))
    assert after["orders"].num_nodes > before["orders"].num_nodes

    def batches(data):
        return list(make_loader(data, "customers", seeds, cutoffs, fanouts, batch_size=5,
                                strategy=strategy, seed=params["seed"]))

    for a, b in zip(batches(before), batches(after), strict=True):
        for key in [*before.node_types, *before.edge_types]:
            assert set(a[key].keys()) == set(b[key].keys())
            for name, value in a[key].items():
                other = b[key][name]
                assert (torch.equal(value, other) if isinstance(value, torch.Tensor)
                        else value == other), (key, name)


def seed_subgraph(batch: HeteroData, slot: int) -> dict:
    """One seed's nodes (global ids, in order) and edges (global endpoints and e_id)."""
    out = {}
    for t in batch.node_types:
        out[t] = batch[t].n_id[batch[t].batch == slot]
    for et in batch.edge_types:
        row, col = batch[et].edge_index
        mine = batch[et[2]].batch[col] == slot
        out[et] = torch.stack([batch[et[0]].n_id[row[mine]], batch[et[2]].n_id[col[mine]],
                               batch[et].e_id[mine]])
    return out


@settings(max_examples=10, deadline=None)
@given(params=graph_params, strategy=st.sampled_from(["uniform", "last"]))
def test_seed_sample_ignores_rows_eligible_only_for_other_seeds(params, strategy):
    # Seed 0 cuts at 10, seed 1 at 25; new rows at 11..15 are visible to seed 1 only.
    tables = random_tables(**params)
    seeds = torch.tensor([0, 1])
    cutoffs = torch.tensor([10, 25])
    before, after = to_graph(tables), to_graph(with_future(tables, after=10, seed=1))
    a, b = (next(iter(make_loader(d, "customers", seeds, cutoffs, [4, 3], batch_size=2,
                                  strategy=strategy, seed=5))) for d in (before, after))
    sub_a, sub_b = seed_subgraph(a, 0), seed_subgraph(b, 0)
    for key, value in sub_a.items():
        assert torch.equal(value, sub_b[key]), key


def test_same_seed_same_sample_and_other_seed_differs():
    data = to_graph(random_tables(3, n_customers=6, n_orders=120, n_products=4,
                                  temporal_customers=True))
    seeds, cutoffs = seeds_for(data, "customers", 20, 0, lo=20)

    def edges(seed):
        batch = next(iter(make_loader(data, "customers", seeds, cutoffs, [3, 2],
                                      batch_size=20, seed=seed)))
        return torch.cat([batch[et].e_id for et in batch.edge_types])

    assert torch.equal(edges(11), edges(11))
    assert not torch.equal(edges(11), edges(12))


def test_static_neighbours_are_eligible_before_every_time():
    data = to_graph(random_tables(5, n_customers=5, n_orders=60, n_products=3,
                                  temporal_customers=False))
    # Items are temporal, products static: an item seed cut before all times still
    # reaches its product; the order (temporal) only when its time is <= the cutoff.
    seeds = torch.arange(10)
    cutoffs = torch.full((10,), -5)
    batch = next(iter(make_loader(data, "items", seeds, cutoffs, [2], batch_size=10)))
    assert batch["products"].num_sampled_nodes == [0, 10]
    assert batch["orders"].num_sampled_nodes == [0, 0]
    check_batch(data, batch, "items", seeds, cutoffs, [2], "uniform")


def test_entity_without_incoming_edges_yields_only_seeds():
    data = to_graph(random_tables(1, n_customers=4, n_orders=40, n_products=3,
                                  temporal_customers=False))
    seeds = torch.tensor([3, 0, 5])
    batch = next(iter(make_loader(data, "events", seeds, torch.full((3,), 100), [4, 4])))
    assert torch.equal(batch["events"].n_id, seeds)
    assert batch["events"].num_sampled_nodes == [3, 0, 0]
    assert sum(batch[et].edge_index.size(1) for et in batch.edge_types) == 0
    assert batch["tags"].num_nodes == 0


def star(n_leaves: list[int]) -> HeteroData:
    """Hubs 0..len-1 of type `hub`, hub i with n_leaves[i] leaves, all at time 0."""
    d = HeteroData()
    owner = torch.repeat_interleave(torch.arange(len(n_leaves)), torch.tensor(n_leaves))
    d["hub"].num_nodes = len(n_leaves)
    d["leaf"].num_nodes = owner.numel()
    d["leaf"].time = torch.zeros(owner.numel(), dtype=torch.long)
    d["leaf", "hub_id", "hub"].edge_index = torch.stack([torch.arange(owner.numel()), owner])
    return d


def subsets(n_leaves: list[int], hub: int, reps: int, fanout: int) -> torch.Tensor:
    """[reps, fanout] sorted leaf offsets of one call with the hub repeated reps times."""
    data = star(n_leaves)
    sampler = TemporalSampler(data, [fanout], seed=0)
    out = sampler.sample_from_nodes(NodeSamplerInput(
        input_id=torch.arange(reps), node=torch.full((reps,), hub),
        time=torch.zeros(reps, dtype=torch.long), input_type="hub"))
    et = ("leaf", "hub_id", "hub")
    leaf = out.node["leaf"][out.row[et]]
    order = torch.argsort(out.col[et], stable=True)
    return (leaf[order] - sum(n_leaves[:hub])).view(reps, fanout).sort(dim=1).values


@pytest.mark.parametrize("n, fanout, reps", [(5, 2, 4000), (17, 2, 30000)])
def test_uniform_draws_every_subset_equally_often(n, fanout, reps):
    # (5, 2): random-key path; (17, 2): 17 > 8 * 2 takes the duplicate-redraw path.
    picks = subsets([3, n], 1, reps, fanout)
    assert bool((picks[:, 1] > picks[:, 0]).all())  # without replacement
    code = picks[:, 0] * n + picks[:, 1]
    freq = torch.bincount(code, minlength=n * n).double()
    pairs = torch.triu_indices(n, n, offset=1)
    observed = freq[pairs[0] * n + pairs[1]]
    expected = reps / observed.numel()
    chi2 = float(((observed - expected) ** 2 / expected).sum())
    dof = observed.numel() - 1
    assert observed.sum() == reps
    assert chi2 < dof + 6 * (2 * dof) ** 0.5, chi2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_graph_samples_on_the_gpu_and_matches_cpu():
    # Counter-based draws make the sample a function of the data, not of the device.
    data = to_graph(random_tables(4, n_customers=6, n_orders=120, n_products=4,
                                  temporal_customers=True))
    seeds, cutoffs = seeds_for(data, "customers", 12, 4)
    cpu = next(iter(make_loader(data, "customers", seeds, cutoffs, [3, 2], batch_size=12)))
    gpu = next(iter(make_loader(data.to("cuda"), "customers", seeds, cutoffs, [3, 2],
                                batch_size=12)))
    assert gpu["customers"].n_id.is_cuda
    for et in data.edge_types:
        assert torch.equal(cpu[et].edge_index, gpu[et].edge_index.cpu())
        assert torch.equal(cpu[et].e_id, gpu[et].e_id.cpu())
    for t in data.node_types:
        assert torch.equal(cpu[t].n_id, gpu[t].n_id.cpu())


def test_pyg_lib_backend_matches_the_same_properties():
    import torch_geometric.typing as pyg_typing

    if not pyg_typing.WITH_PYG_LIB:
        pytest.skip("pyg-lib is not installed, so backend='pyg_lib' cannot run here")
    data = to_graph(random_tables(2, n_customers=6, n_orders=100, n_products=4,
                                  temporal_customers=True))
    seeds, cutoffs = seeds_for(data, "customers", 6, 2)
    for backend in ("torch", "pyg_lib"):
        batch = next(iter(make_loader(data, "customers", seeds, cutoffs, [3, 2], batch_size=6,
                                      backend=backend)))
        check_batch(data, batch, "customers", seeds, cutoffs, [3, 2], "uniform")


def test_clear_errors():
    data = to_graph(random_tables(0, n_customers=3, n_orders=30, n_products=2,
                                  temporal_customers=False))
    with pytest.raises(ValueError, match="strategy"):
        TemporalSampler(data, [2], strategy="newest")
    with pytest.raises(ValueError, match="fanouts"):
        TemporalSampler(data, [2, 0])
    with pytest.raises(ValueError, match="customers: 1 seed ids outside 0..2"):
        make_loader(data, "customers", torch.tensor([0, 3]), torch.tensor([1, 1]), [2])
    with pytest.raises(ValueError, match="int64"):
        make_loader(data, "customers", torch.tensor([0]), torch.tensor([1.5]), [2])
    bad = to_graph(random_tables(0, n_customers=3, n_orders=30, n_products=2,
                                 temporal_customers=False))
    bad["orders", "customer_id", "customers"].edge_index[1, :2] = 9
    with pytest.raises(ValueError, match=r"\(orders, customer_id, customers\): 2 edges"):
        TemporalSampler(bad, [2])
