"""Temporal sampler throughput on an e-commerce-shaped graph.

    .venv/bin/python bench/bench_sampler.py            # about 10M rows
    .venv/bin/python bench/bench_sampler.py --quick    # about 1M rows

Reports seeds/s and sampled edges/s for fanouts [32, 16] at batch 512, for sampling
alone (``TemporalSampler.sample_from_nodes``) and for the full ``NodeLoader`` batch
(sampling plus feature gathering into ``HeteroData``), over wall time and over the
process's CPU time (the machine is shared). One torch thread is the default: the ops of
a batch are too small to gain from intra-op threads, which only add spinning.
Reference point: PyG's NeighborLoader with pyg-lib was measured at about 105,000 seeds/s
and 2.45M edges/s with feature gathering (about 4.6M edges/s sampling alone) on a
similar graph and 2-core machine.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch_geometric.data import HeteroData
from torch_geometric.sampler import NodeSamplerInput

from pipeline.graph.sampling import TemporalSampler, make_loader

DAY = 86_400
START = 1_600_000_000  # 2020-09-13
SPAN = 730 * DAY


def _sorted_times(rng: np.random.Generator, low: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Times uniform in [low, START + SPAN); returns (times ascending, order) so that ids
    follow time as the graph contract orders them."""
    t = low + (rng.random(low.size) * (START + SPAN - low)).astype(np.int64)
    order = np.argsort(t, kind="stable")
    return t[order], order


def ecommerce_graph(rows: int = 10_000_000, seed: int = 0) -> HeteroData:
    """customers, orders, order_items, products, returns with about ``rows`` rows.

    Degrees: customer activity is log-normal (sigma 1.2: most customers order a few
    times, some hundreds), product popularity Zipf(1.1) (best sellers with tens of
    thousands of items), 1 + Poisson(0.6) items per order, 10% of items returned.
    """
    rng = np.random.default_rng(seed)
    n_cust = rows // 25  # about 25 rows per customer, as in the synthetic source
    n_orders = int(rows * 0.34)
    n_prod = max(rows // 100, 100)
    signup = START + (rng.random(n_cust) * SPAN * 0.8).astype(np.int64)
    signup.sort()

    activity = rng.lognormal(0.0, 1.2, n_cust)
    cust_of_order = rng.choice(n_cust, n_orders, p=activity / activity.sum())
    order_time, order = _sorted_times(rng, signup[cust_of_order])
    cust_of_order = cust_of_order[order]

    items_per_order = 1 + rng.poisson(0.6, n_orders)
    order_of_item = np.repeat(np.arange(n_orders), items_per_order)
    pop = 1.0 / np.arange(1, n_prod + 1) ** 1.1
    by_rank = rng.choice(n_prod, order_of_item.size, p=pop / pop.sum())
    prod_of_item = rng.permutation(n_prod)[by_rank]
    item_time = order_time[order_of_item]

    returned = np.flatnonzero(rng.random(order_of_item.size) < 0.1)
    ret_time, order = _sorted_times(rng, item_time[returned])
    ret_item = returned[order]
    product_created = np.sort(START - (rng.random(n_prod) * 365 * DAY).astype(np.int64))

    data = HeteroData()
    widths = {"customers": (4, [5, 12], 0, 1), "orders": (6, [4, 3], 0, 0),
              "order_items": (3, [], 0, 0), "products": (8, [30, 200], 32, 0),
              "returns": (2, [6], 16, 0)}
    sizes = {"customers": n_cust, "orders": n_orders, "order_items": order_of_item.size,
             "products": n_prod, "returns": ret_item.size}
    times = {"customers": signup, "orders": order_time, "order_items": item_time,
             "products": product_created, "returns": ret_time}
    gen = torch.Generator().manual_seed(seed)
    for name, (n_num, cards, n_text, n_ts) in widths.items():
        n = sizes[name]
        data[name].num_nodes = n
        data[name].time = torch.from_numpy(times[name])
        data[name].x_num = torch.randn(n, n_num, generator=gen)
        cats = [torch.randint(0, c, (n,), generator=gen) for c in cards]
        data[name].x_cat = torch.stack(cats, 1) if cats else torch.zeros(n, 0, dtype=torch.long)
        data[name].x_text = torch.rand(n, n_text, generator=gen)
        data[name].x_ts = torch.zeros(n, n_ts, dtype=torch.float64)

    def fk(child: str, col: str, parent: str, ref: np.ndarray) -> None:
        ei = torch.stack([torch.arange(ref.size), torch.from_numpy(ref.astype(np.int64))])
        data[child, col, parent].edge_index = ei
        data[parent, "rev_" + col, child].edge_index = ei.flip(0).contiguous()

    fk("orders", "customer_id", "customers", cust_of_order)
    fk("order_items", "order_id", "orders", order_of_item)
    fk("order_items", "product_id", "products", prod_of_item)
    fk("returns", "order_item_id", "order_items", ret_item)
    return data


def _seeds(data: HeteroData, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Customers signed up by their cutoff, at six monthly cutoffs in the second year."""
    g = torch.Generator().manual_seed(seed)
    cutoffs = START + SPAN - DAY * 30 * torch.randint(1, 7, (n,), generator=g)
    signed = torch.searchsorted(data["customers"].time, cutoffs, right=True)
    ids = (torch.rand(n, generator=g) * signed).long()
    return ids, cutoffs


def run(rows: int = 10_000_000, batches: int = 200, batch_size: int = 512,
        fanouts: tuple[int, ...] = (32, 16), threads: int = 1,
        strategies: tuple[str, ...] = ("uniform", "last"), quick: bool = False) -> list[dict]:
    """Measure; one dict per (strategy, mode) with seeds/s and sampled edges/s.

    ``quick``: about 1M rows and 40 batches, whatever ``rows`` and ``batches`` say.
    ``index_build_s`` is the one-off index build (cached, so 0 after the first strategy).
    """
    if quick:
        rows, batches = 1_000_000, 40
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _run(rows, batches, batch_size, fanouts, strategies)
    finally:
        torch.set_num_threads(previous)


def _run(rows: int, batches: int, batch_size: int, fanouts: tuple[int, ...],
         strategies: tuple[str, ...]) -> list[dict]:
    t0 = time.perf_counter()
    data = ecommerce_graph(rows)
    build_s = time.perf_counter() - t0
    n_rows = sum(data[t].num_nodes for t in data.node_types)
    n_edges = sum(data[et].edge_index.size(1) for et in data.edge_types)
    ids, cutoffs = _seeds(data, batches * batch_size, seed=1)
    results = []
    for strategy in strategies:
        t0 = time.perf_counter()
        sampler = TemporalSampler(data, list(fanouts), strategy=strategy, seed=0)
        index_s = time.perf_counter() - t0

        # Sampling alone: NodeLoader's input objects, then sample_from_nodes.
        inputs = [NodeSamplerInput(input_id=torch.arange(i, i + batch_size),
                                   node=ids[i:i + batch_size], time=cutoffs[i:i + batch_size],
                                   input_type="customers")
                  for i in range(0, ids.numel(), batch_size)]
        sampler.sample_from_nodes(inputs[0])  # warm-up
        t0, c0 = time.perf_counter(), time.process_time()
        edges = 0
        for inp in inputs:
            out = sampler.sample_from_nodes(inp)
            edges += sum(r.numel() for r in out.row.values())
        results.append(_rates(strategy, "sample", ids.numel(), edges, t0, c0,
                              rows=n_rows, graph_edges=n_edges, graph_build_s=build_s,
                              index_build_s=index_s))

        # Full batches: NodeLoader, sampling and feature gathering.
        loader = make_loader(data, "customers", ids, cutoffs, list(fanouts),
                             batch_size=batch_size, strategy=strategy, seed=0)
        t0, c0 = time.perf_counter(), time.process_time()
        edges = 0
        for batch in loader:
            edges += sum(batch[et].edge_index.size(1) for et in batch.edge_types)
        results.append(_rates(strategy, "loader", ids.numel(), edges, t0, c0,
                              rows=n_rows, graph_edges=n_edges, graph_build_s=build_s,
                              index_build_s=0.0))
    return results


def _rates(strategy: str, mode: str, seeds: int, edges: int, t0: float, c0: float,
           **extra) -> dict:
    """Rates over wall time and over this process's CPU time: on a shared machine the
    wall clock also counts other processes' turns, the CPU time does not."""
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return dict(strategy=strategy, mode=mode, seeds_per_s=seeds / wall,
                edges_per_s=edges / wall, cpu_seeds_per_s=seeds / cpu,
                cpu_edges_per_s=edges / cpu, edges_per_seed=edges / seeds, **extra)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--quick", action="store_true", help="about 1M rows, fewer batches")
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    rows, batches = (1_000_000, 40) if args.quick else (args.rows, args.batches)
    results = run(rows=rows, batches=batches, threads=args.threads)
    first = results[0]
    print(f"graph: {first['rows']:,} rows, {first['graph_edges']:,} edges "
          f"(built in {first['graph_build_s']:.1f} s); fanouts [32, 16], batch 512, "
          f"{args.threads} threads")
    print(f"{'strategy':<9}{'mode':<8}{'seeds/s':>10}{'edges/s':>12}{'seeds/cpu-s':>13}"
          f"{'edges/cpu-s':>13}{'edges/seed':>11}{'index s':>8}")
    for r in results:
        print(f"{r['strategy']:<9}{r['mode']:<8}{r['seeds_per_s']:>10,.0f}"
              f"{r['edges_per_s']:>12,.0f}{r['cpu_seeds_per_s']:>13,.0f}"
              f"{r['cpu_edges_per_s']:>13,.0f}"
              f"{r['edges_per_seed']:>11.1f}{r['index_build_s']:>8.2f}")


if __name__ == "__main__":
    main()
