"""Disjoint temporal neighbour sampling on relational graphs, in vectorized torch.

A seed is a pair (entity node, cutoff seconds). From each seed the sampler grows its own
tree, hop by hop: at hop ``h`` every frontier node ``v`` of type ``D`` and every edge
type ``et = (S, rel, D)`` contribute exactly ``min(fanouts[h], n_eligible(v, et))`` new
nodes of type ``S``, where the eligible neighbours are the sources of ``et``-edges into
``v`` whose node time is ``<= the seed's cutoff`` (rows of static tables, which have no
``time``, are always eligible).

Conventions:

* Disjoint trees, no deduplication: a node reached twice, from two seeds or twice from
  one seed, appears once per path. ``batch[T].batch`` names each node's seed.
* Nodes are appended hop by hop: per type, ``num_sampled_nodes[h]`` nodes of hop ``h``
  (hop 0: the seeds, first and in input order); per edge type, ``num_sampled_edges[h]``
  edges into hop-``h`` frontier nodes. Every sampled node is the source of exactly one
  sampled edge, which points at its parent.
* Neighbours of ``(v, et)`` are ordered by ``(time, edge id)``, edge id being the
  column in ``data[et].edge_index``; ``strategy="last"`` takes the tail of the eligible
  prefix (the most recent ones; among equal times the larger edge id counts as more
  recent). ``"uniform"`` takes a uniformly random subset without replacement.
* Randomness is counter based: a seed's draws are a hash of (batch key, its ``input_id``,
  its path in the tree, the draw's index). The batch key is drawn from a
  ``torch.Generator`` seeded with ``seed``, one per call. Therefore a seed's sample
  depends only on the batch key, its ``input_id`` and its *eligible* neighbourhood: data
  after its cutoff, or other seeds in the batch, cannot change it.
* Seeds are taken as given (a seed whose own time is after its cutoff is still a seed);
  the loader then withholds such a seed's own columns and time from the batch
  (`pipeline.graph.views.withhold_seeds`).
* Every sampled node also carries ``batch[T].degree``, int ``[N_T, k_T]``: its number of
  eligible neighbours per incoming edge type (the edge types ending at ``T``, in
  ``data.edge_types`` order), i.e. its true degree as of its seed's cutoff, however
  few of them the fanout kept. The sampling itself computes these counts.

The graph is indexed once (and cached per ``HeteroData`` object) into one CSC over all
edge types: a segment per (destination node, incoming edge type), time-sorted inside
(:class:`TemporalIndex`). A hop looks up the segments of every frontier node and edge
type at once, and finds the eligible prefix of the few segments that end after the
cutoff by a vectorized binary search. Nothing loops over node or edge types.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
from torch import Tensor
from torch_geometric.data import HeteroData
from torch_geometric.loader import NodeLoader
from torch_geometric.sampler import (
    BaseSampler,
    EdgeSamplerInput,
    HeteroSamplerOutput,
    NodeSamplerInput,
)
from torch_geometric.typing import EdgeType

from pipeline.graph.views import withhold_seeds

STRATEGIES = ("uniform", "last")
BACKENDS = ("torch", "pyg_lib")

# Rows with more eligible neighbours than this multiple of the fanout draw with
# replacement and redraw duplicates (few rounds when n >> fanout); rows between fanout
# and this bound rank random keys over all their eligible neighbours instead.
_HUB_FACTOR = 8


def _s64(x: int) -> int:
    """The signed int64 with the bits of the unsigned 64-bit ``x``."""
    x %= 1 << 64
    return x - (1 << 64) if x >= 1 << 63 else x


# splitmix64 (Steele et al., 2014) multipliers and odd "stream" constants that keep the
# hash inputs of seeds, rows, draws, redraw rounds and children apart.
_MIX1, _MIX2 = _s64(0xBF58476D1CE4E5B9), _s64(0x94D049BB133111EB)
_SEED_C, _ROW_C = _s64(0x9E3779B97F4A7C15), _s64(0xD1B54A32D192ED03)
_DRAW_C, _ROUND_C = _s64(0xABC98388FB8FAC03), 0x8CB92BA72F3D8DD7
_CHILD_C = _s64(0xDB4F0B9175AE2165)


def _shr(z: Tensor, s: int) -> Tensor:
    """Logical right shift of int64 bits (torch's ``>>`` is arithmetic)."""
    return (z >> s) & ((1 << (64 - s)) - 1)


def _mix(z: Tensor) -> Tensor:
    """splitmix64 finalizer: a bijection of int64 whose outputs look independent."""
    z = z ^ _shr(z, 30)
    z *= _MIX1
    z ^= _shr(z, 27)
    z *= _MIX2
    z ^= _shr(z, 31)
    return z


def _randbelow(x: Tensor, n: Tensor) -> Tensor:
    """Pseudo-random integers in ``[0, n)`` from hash inputs ``x`` (bias <= n / 2^63)."""
    return _shr(_mix(x), 1) % n


@dataclass(frozen=True)
class TemporalIndex:
    """The graph as one CSC over all edge types, time-sorted inside every segment.

    A segment is a (destination node, incoming edge type) pair: segment
    ``seg_base[t] + v * n_in[t] + k`` holds the edges of the ``k``-th edge type into node
    ``v`` of type ``t``, ordered by (source time, edge id); static sources have time
    ``INT64_MIN``. So the eligible neighbours for a cutoff are a prefix of the segment.

    Attributes:
        node_types / edge_types: the graph's types; ``g`` indexes ``edge_types``.
        into: per node type, the ``g`` of its incoming edge types (``k`` indexes these).
        src_of: per edge type, the index of its source node type.
        k_max: the most edge types into one node type.
        n_in: int64 [T], edge types into each node type.
        seg_base: int64 [T], first segment of each node type.
        ptr: [S + 1] segment offsets into the edge arrays.
        time: int64 [E] source node time of each sorted edge.
        src: [E] source node id (within its type) of each sorted edge.
        eid: [E] the edge's column in its edge type's ``edge_index``.
        (``ptr``, ``src`` and ``eid`` are int32 when the counts fit: half the memory.)
    """

    node_types: tuple[str, ...]
    edge_types: tuple[EdgeType, ...]
    into: tuple[tuple[int, ...], ...]
    src_of: tuple[int, ...]
    k_max: int
    n_in: Tensor
    seg_base: Tensor
    ptr: Tensor
    time: Tensor
    src: Tensor
    eid: Tensor


def _device_of(data: HeteroData) -> torch.device:
    for store in [*data.edge_stores, *data.node_stores]:
        for value in store.values():
            if isinstance(value, Tensor):
                return value.device
    return torch.device("cpu")


def build_index(data: HeteroData) -> TemporalIndex:
    """Index ``data`` for temporal sampling, on the device its tensors are on.

    Cost: two stable sorts of all ``E`` edges. Memory: 16 bytes per edge plus 4 per
    (node, incoming edge type) pair (more past 2^31 edges).
    """
    device = _device_of(data)
    node_types = tuple(data.node_types)
    edge_types = tuple(data.edge_types)
    t_of = {t: i for i, t in enumerate(node_types)}
    sizes = [int(data[t].num_nodes or 0) for t in node_types]

    into = [[g for g, et in enumerate(edge_types) if et[2] == t] for t in node_types]
    n_in = [len(gs) for gs in into]
    k_max = max(n_in, default=0)
    seg_base = [0]
    for size, k in zip(sizes, n_in):
        seg_base.append(seg_base[-1] + size * k)

    for t, n in zip(node_types, sizes):
        if "time" in data[t]:
            time = data[t].time
            if time.dtype != torch.long or tuple(time.shape) != (n,):
                raise ValueError(f"{t}.time must be int64 [{n}] epoch seconds, "
                                 f"got {time.dtype} {tuple(time.shape)}")

    segs, times, srcs, eids = [], [], [], []
    for g, (s, rel, d) in enumerate(edge_types):
        ei = data[s, rel, d].edge_index
        for row, t in ((0, s), (1, d)):
            n = sizes[t_of[t]]
            bad = (ei[row] < 0) | (ei[row] >= n)
            if ei.numel() and bool(bad.any()):
                raise ValueError(f"edge type ({s}, {rel}, {d}): {int(bad.sum())} edges point "
                                 f"at {t} nodes outside 0..{n - 1} "
                                 f"(first: {ei[row][bad][:5].tolist()})")
        td = t_of[d]
        segs.append(seg_base[td] + ei[1] * n_in[td] + into[td].index(g))
        times.append(data[s].time[ei[0]] if "time" in data[s]
                     else torch.full_like(ei[0], torch.iinfo(torch.long).min))
        srcs.append(ei[0])
        eids.append(torch.arange(ei.size(1), device=device))
    empty = torch.empty(0, dtype=torch.long, device=device)
    seg, time, src, eid = (torch.cat(x) if x else empty for x in (segs, times, srcs, eids))

    # Stable sorts: by time, then by segment; equal times keep edge-id order.
    perm = torch.sort(time, stable=True).indices
    perm = perm.gather(0, torch.sort(seg.gather(0, perm), stable=True).indices)
    counts = torch.bincount(seg, minlength=seg_base[-1])
    ptr = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
    small = torch.int32 if max(eid.numel(), max(sizes, default=0)) < 2**31 else torch.long

    def table(values: list[int]) -> Tensor:
        return torch.tensor(values, dtype=torch.long, device=device)

    return TemporalIndex(
        node_types=node_types, edge_types=edge_types, into=tuple(map(tuple, into)),
        src_of=tuple(t_of[et[0]] for et in edge_types), k_max=k_max, n_in=table(n_in),
        seg_base=table(seg_base[:-1]), ptr=ptr.to(small),
        time=time.gather(0, perm), src=src.gather(0, perm).to(small),
        eid=eid.gather(0, perm).to(small))


# Indexes by HeteroData object: a training run builds one loader per epoch over the same
# graph, and the index costs seconds on large graphs. The fingerprint catches replaced
# tensors; tensors changed in place are not detected (build a new HeteroData instead).
_INDEX_CACHE: dict[int, tuple[weakref.ref, tuple, TemporalIndex]] = {}


def _fingerprint(data: HeteroData) -> tuple:
    nodes = tuple((t, data[t].num_nodes, data[t].time.data_ptr() if "time" in data[t] else 0)
                  for t in data.node_types)
    edges = tuple((et, data[et].edge_index.data_ptr(), tuple(data[et].edge_index.shape))
                  for et in data.edge_types)
    return nodes + edges


def cached_index(data: HeteroData) -> TemporalIndex:
    """``build_index(data)``, memoized while ``data`` lives and its tensors are the same."""
    key, fp = id(data), _fingerprint(data)
    hit = _INDEX_CACHE.get(key)
    if hit is not None and hit[0]() is data and hit[1] == fp:
        return hit[2]
    index = build_index(data)
    _INDEX_CACHE[key] = (weakref.ref(data, lambda _: _INDEX_CACHE.pop(key, None)), fp, index)
    return index


_Block = tuple[int, int, int]  # (edge type g, first child, number of children)


@dataclass
class _Nodes:
    """Nodes of one hop, grouped into runs of one node type each."""

    node: Tensor    # [n] node id within its type
    ntype: Tensor   # [n] node type index
    slot: Tensor    # [n] seed slot (index into the batch's seeds)
    local: Tensor   # [n] index among the batch's nodes of its type
    hash: Tensor    # [n] path hash (uniform strategy, before the last hop), else empty
    runs: list[tuple[int, int]]  # (node type, count), in order


@dataclass
class _Hop:
    """The children of one hop: one node and one edge (child -> parent) each."""

    nodes: _Nodes
    parent: Tensor  # [n] local id of the parent
    eid: Tensor     # [n] edge id within its edge type
    blocks: list[_Block]  # the children in runs of one edge type


def _block_index(blocks: list[tuple[int, int]], total: int, device: torch.device) -> Tensor | None:
    """Index that concatenates the slices ``[start, start + count)`` in the given order
    (``None`` when that is the identity)."""
    shift, counts, at = [], [], 0
    for start, count in blocks:
        shift.append(start - at)
        counts.append(count)
        at += count
    if not any(shift):
        return None
    return torch.arange(total, device=device) + torch.repeat_interleave(
        torch.tensor(shift, dtype=torch.long, device=device),
        torch.tensor(counts, dtype=torch.long, device=device), output_size=total)


def _runs_tensor(runs: list[tuple[int, int]], values: list[int], total: int,
                 device: torch.device) -> Tensor:
    """[total] tensor holding ``values[i]`` over the ``i``-th run."""
    return torch.repeat_interleave(torch.tensor(values, dtype=torch.long, device=device),
                                   torch.tensor([c for _, c in runs], dtype=torch.long,
                                                device=device),
                                   output_size=total)


class TemporalSampler(BaseSampler):
    """Disjoint temporal neighbour sampler for :class:`torch_geometric.loader.NodeLoader`.

    Args:
        data: the full graph (contract: ``time`` int64 on temporal node types only).
        fanouts: neighbours per (node, edge type) at each hop, e.g. ``[32, 16]``.
        strategy: ``"uniform"`` (random without replacement) or ``"last"`` (most recent).
            (default: ``"uniform"``)
        seed: seeds the ``torch.Generator`` that draws one key per batch. (default: ``0``)
        backend: ``"torch"`` (this module) or ``"pyg_lib"`` (PyG's ``NeighborSampler``
            with node-level temporal sampling; needs pyg-lib). (default: ``"torch"``)

    Output (``sample_from_nodes``): a :class:`HeteroSamplerOutput` with every node and
    edge type present, local ``row``/``col``, ``edge`` ids, ``batch``,
    ``num_sampled_nodes`` (H + 1 per type) and ``num_sampled_edges`` (H per edge type),
    on the device of the graph's tensors.
    """

    def __init__(self, data: HeteroData, fanouts: list[int], strategy: str = "uniform",
                 seed: int = 0, backend: str = "torch") -> None:
        fanouts = [int(f) for f in fanouts]
        if not fanouts or min(fanouts) < 1:
            raise ValueError(f"fanouts must be a non-empty list of positive ints, got {fanouts}")
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if not isinstance(data, HeteroData):
            raise TypeError(f"TemporalSampler needs a HeteroData graph, got {type(data).__name__}")
        self.fanouts, self.strategy, self.seed, self.backend = fanouts, strategy, seed, backend
        self.generator = torch.Generator().manual_seed(seed)
        if backend == "pyg_lib":
            self._pyg = _pyg_lib_sampler(data, fanouts, strategy)
            return
        self.index = cached_index(data)
        self.device = self.index.time.device

    # -- BaseSampler ---------------------------------------------------------------
    def sample_from_nodes(self, inputs: NodeSamplerInput, **kwargs) -> HeteroSamplerOutput:
        if inputs.time is None:
            raise ValueError("temporal sampling needs a cutoff per seed (NodeLoader input_time)")
        if inputs.input_type is None:
            raise ValueError("temporal sampling needs (node_type, ids) seeds on a HeteroData")
        key = int(torch.randint(-2**63, 2**63 - 1, (1,), generator=self.generator))
        if self.backend == "pyg_lib":
            # pyg-lib draws from torch's default CPU generator: seed it from our key,
            # without disturbing the caller's random state.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(key & (2**63 - 1))
                return self._pyg.sample_from_nodes(inputs)
        input_id = inputs.input_id
        if input_id is None:
            input_id = torch.arange(inputs.node.numel())
        out = self._sample(inputs.input_type, inputs.node, inputs.time, input_id, key)
        out.metadata = (inputs.input_id, inputs.time, out.metadata)
        return out

    def sample_from_edges(self, inputs: EdgeSamplerInput, neg_sampling=None):
        raise NotImplementedError("TemporalSampler samples from (entity, cutoff) seeds only; "
                                  "use NodeLoader (pipeline.graph.sampling.make_loader)")

    # -- sampling ------------------------------------------------------------------
    def _sample(self, entity: str, seeds: Tensor, cutoffs: Tensor, input_id: Tensor,
                key: int) -> HeteroSamplerOutput:
        ix, dev = self.index, self.device
        if entity not in ix.node_types:
            raise ValueError(f"unknown entity node type {entity!r}; the graph has {ix.node_types}")
        e = ix.node_types.index(entity)
        seeds = seeds.to(dev, torch.long)
        cutoffs = cutoffs.to(dev, torch.long)
        batch_size = seeds.numel()
        uniform = self.strategy == "uniform"
        slot = torch.arange(batch_size, device=dev)
        frontier = _Nodes(
            node=seeds, ntype=torch.full_like(slot, e), slot=slot, local=slot,
            hash=_mix(input_id.to(dev, torch.long) * _SEED_C ^ key) if uniform else slot[:0],
            runs=[(e, batch_size)])
        seen = [0] * len(ix.node_types)
        seen[e] = batch_size
        hops: list[_Hop] = []
        counts: list[Tensor] = []  # per hop: eligible neighbours [k_max, n] of its nodes
        for h, fanout in enumerate(self.fanouts):
            need_hash = uniform and h + 1 < len(self.fanouts)
            hop, count = self._expand(frontier, cutoffs, fanout, need_hash, seen)
            hops.append(hop)
            counts.append(count)
            frontier = hop.nodes
        counts.append(self._eligible(frontier, cutoffs)[1])
        return self._assemble(e, seeds, hops, counts)

    def _expand(self, fr: _Nodes, cutoffs: Tensor, fanout: int, need_hash: bool,
                seen: list[int]) -> tuple[_Hop, Tensor]:
        """One hop for the whole frontier, and the frontier's eligible counts per row.

        Rows are (k, frontier node) pairs in k-major order, [k_max * n]: as the frontier
        comes in runs of one node type, the children of consecutive rows come in blocks
        of one edge type, which are then ordered by source node type. ``seen`` (nodes per
        type so far) gives the children their local ids and is updated.
        """
        ix, dev = self.index, self.device
        uniform = self.strategy == "uniform"
        n = fr.node.numel()
        start, count = self._eligible(fr, cutoffs)
        take = count.clamp(max=fanout)
        csum = torch.cat([take.new_zeros(1), take.cumsum(0)])

        row_blocks = []  # (g, first row, end row) of one edge type
        for k in range(ix.k_max):
            at = k * n
            for t, size in fr.runs:
                if k < len(ix.into[t]) and size:
                    row_blocks.append((ix.into[t][k], at, at + size))
                at += size
        bounds = torch.tensor([r for _, a, b in row_blocks for r in (a, b)] + [n * ix.k_max],
                              dtype=torch.long, device=dev)
        if uniform:
            mid = (count > fanout) & (count <= _HUB_FACTOR * fanout)
            hub = count > _HUB_FACTOR * fanout
            extra = torch.stack([mid.sum(), torch.where(mid, count, 0).sum(), hub.sum()])
        else:
            extra = csum.new_zeros(3)
        # One host transfer for the block sizes, the total and the sizes of the draws.
        *at_bounds, total, n_mid, mid_elems, n_hub = torch.cat(
            [csum.index_select(0, bounds), extra]).tolist()

        row = torch.repeat_interleave(take, output_size=total)
        first = csum[:-1]
        off = torch.arange(total, device=dev) - first.index_select(0, row)
        row_hash = None
        if uniform and (n_mid or n_hub or need_hash):
            ks = torch.arange(ix.k_max, device=dev).unsqueeze(1)
            row_hash = _mix((fr.hash.unsqueeze(0) + (ks + 1) * _ROW_C).view(-1))
        if not uniform:
            off += (count - take).index_select(0, row)
        # Rows with more eligible neighbours than the fanout fill their `fanout` slots
        # with a random subset.
        if n_mid:
            rows = mid.nonzero().view(-1)
            slots = (first[rows].unsqueeze(1) + torch.arange(fanout, device=dev)).view(-1)
            off[slots] = self._choose_by_keys(count[rows], row_hash[rows], fanout, mid_elems)
        if n_hub:
            rows = hub.nonzero().view(-1)
            slots = (first[rows].unsqueeze(1) + torch.arange(fanout, device=dev)).view(-1)
            off[slots] = self._choose_by_rejection(count[rows], row_hash[rows], fanout).view(-1)

        blocks = [(g, at_bounds[2 * i], at_bounds[2 * i + 1] - at_bounds[2 * i])
                  for i, (g, _, _) in enumerate(row_blocks)]
        blocks, runs, perm = self._group_by_source(blocks, total)
        if perm is not None:
            row, off = row.index_select(0, perm), off.index_select(0, perm)
        shift, at = [], 0
        for t, size in runs:
            shift.append(seen[t] - at)
            at += size
            seen[t] += size

        i = row - torch.div(row, n, rounding_mode="floor") * n if n else row
        pos = start.index_select(0, row) + off
        child_hash = off[:0]
        if need_hash:
            child_hash = row_hash.index_select(0, row) + (off + 1) * _CHILD_C
        nodes = _Nodes(node=ix.src.index_select(0, pos).long(),
                       ntype=_runs_tensor(runs, [t for t, _ in runs], total, dev),
                       slot=fr.slot.index_select(0, i),
                       local=torch.arange(total, device=dev)
                       + _runs_tensor(runs, shift, total, dev),
                       hash=child_hash, runs=runs)
        return _Hop(nodes=nodes, parent=fr.local.index_select(0, i),
                    eid=ix.eid.index_select(0, pos), blocks=blocks), count

    def _eligible(self, fr: _Nodes, cutoffs: Tensor) -> tuple[Tensor, Tensor]:
        """Per row (k-major (k, frontier node)): segment start and eligible count."""
        ix, dev, k_max = self.index, self.device, self.index.k_max
        ks = torch.arange(k_max, device=dev).unsqueeze(1)
        n_in = ix.n_in.index_select(0, fr.ntype)
        valid = (ks < n_in).view(-1)
        seg = (ix.seg_base.index_select(0, fr.ntype) + fr.node * n_in + ks).view(-1)
        seg.masked_fill_(~valid, 0)
        bounds = ix.ptr.index_select(0, torch.cat([seg, seg + 1])).long()
        start = bounds[:seg.numel()]
        stop = torch.where(valid, bounds[seg.numel():], start)
        cut = cutoffs.index_select(0, fr.slot).unsqueeze(0).expand(k_max, -1).reshape(-1)
        # Eligible = the prefix with time <= cut. Most segments are eligible whole; the
        # others take a binary search.
        end = stop.clone()
        last = ix.time.index_select(0, (stop - 1).clamp_(min=0))
        partial = ((last > cut) & (stop > start)).nonzero().view(-1)
        if partial.numel():
            end[partial] = self._first_after(start[partial], stop[partial] - 1, cut[partial])
        return start, end - start

    def _group_by_source(self, blocks: list[_Block], total: int
                         ) -> tuple[list[_Block], list[tuple[int, int]], Tensor | None]:
        """Order edge-type blocks (g, start, count) by source node type, stably.

        Returns the non-empty blocks at their new positions, the runs (node type, count)
        and the permutation of children that realises the order (``None``: identity).
        """
        src_of = self.index.src_of
        blocks = sorted((b for b in blocks if b[2]), key=lambda b: src_of[b[0]])
        perm = _block_index([b[1:] for b in blocks], total, self.device)
        moved, runs, at = [], [], 0
        for g, _, size in blocks:
            moved.append((g, at, size))
            at += size
            if runs and runs[-1][0] == src_of[g]:
                runs[-1] = (src_of[g], runs[-1][1] + size)
            else:
                runs.append((src_of[g], size))
        return moved, runs, perm

    def _first_after(self, lo: Tensor, hi: Tensor, cut: Tensor) -> Tensor:
        """Per row, the first edge position in ``[lo, hi]`` with time > ``cut``, given
        ``time[hi] > cut`` (vectorized lower bound: log2 of the longest range steps)."""
        time = self.index.time
        for _ in range(int((hi - lo).max()).bit_length()):
            mid = (lo + hi) >> 1
            right = time.index_select(0, mid) <= cut
            lo = torch.where(right, mid + 1, lo)
            hi = torch.where(right, hi, mid)
        return lo

    def _choose_by_keys(self, count: Tensor, row_hash: Tensor, fanout: int,
                        n_elems: int) -> Tensor:
        """``fanout`` of ``count[r]`` offsets per row: those with the smallest random keys.

        Returns int64 [m * fanout], row-major. Every subset is equally likely.
        """
        dev = self.device
        m = count.numel()
        elem_row = torch.repeat_interleave(torch.arange(m, device=dev), count,
                                           output_size=n_elems)
        first = count.cumsum(0) - count
        elem = torch.arange(n_elems, device=dev) - first.index_select(0, elem_row)
        rand = _shr(_mix(row_hash.index_select(0, elem_row) + (elem + 1) * _DRAW_C), 1)
        # Sort by key inside rows (two stable sorts: exact, whatever the number of rows).
        # Rows keep their blocks in place, so sorted position i still belongs to
        # elem_row[i] and has rank elem[i] inside its row.
        order = torch.sort(rand, stable=True).indices
        order = order.index_select(
            0, torch.sort(elem_row.index_select(0, order), stable=True).indices)
        return elem.index_select(0, order[elem < fanout])

    def _choose_by_rejection(self, count: Tensor, row_hash: Tensor, fanout: int) -> Tensor:
        """``fanout`` distinct offsets in ``[0, count[r])`` per row, for ``count >> fanout``.

        Draw with replacement, then redraw every later duplicate until none is left. The
        procedure treats all values alike (it only compares them), so the resulting set
        is invariant under any relabelling of ``[0, count)``: uniform over subsets.
        Returns int64 [h, fanout].
        """
        cols = torch.arange(fanout, device=self.device)
        base = row_hash.unsqueeze(1) + (cols + 1) * _DRAW_C
        out = _randbelow(base, count.unsqueeze(1))
        rounds = 0
        while True:
            values, where = torch.sort(out, dim=1, stable=True)
            r, c = (values[:, 1:] == values[:, :-1]).nonzero(as_tuple=True)
            if r.numel() == 0:
                return out
            rounds += 1
            c = where[r, c + 1]
            out[r, c] = _randbelow(base[r, c] + _s64(rounds * _ROUND_C), count[r])

    def _assemble(self, e: int, seeds: Tensor, hops: list[_Hop],
                  counts: list[Tensor]) -> HeteroSamplerOutput:
        """Hop-major runs -> per-type tensors: nodes by (type, hop), edges by (type, hop).

        ``counts[h]``: eligible neighbours of hop h's nodes, k-major ``[k_max * n_h]``;
        they become the per-type ``degree`` tensors, passed on as the output's metadata."""
        ix, dev = self.index, self.device
        n_types, n_et = len(ix.node_types), len(ix.edge_types)
        batch_size = seeds.numel()
        per_node = [[0] * n_types for _ in range(len(hops) + 1)]
        per_node[0][e] = batch_size
        node_blocks: list[list[tuple[int, int]]] = [[] for _ in range(n_types)]
        node_blocks[e].append((0, batch_size))
        at = batch_size
        for h, hop in enumerate(hops, 1):
            for t, size in hop.nodes.runs:
                node_blocks[t].append((at, size))
                per_node[h][t] += size
                at += size
        node = torch.cat([seeds] + [hop.nodes.node for hop in hops])
        slot = torch.cat([torch.arange(batch_size, device=dev)] + [hop.nodes.slot for hop in hops])
        k_max = ix.k_max
        degree = torch.cat([c.view(k_max, -1).t() for c in counts]) if k_max else node.new_zeros(at, 0)
        index = _block_index([b for bs in node_blocks for b in bs], at, dev)
        if index is not None:
            node, slot, degree = (x.index_select(0, index) for x in (node, slot, degree))
        type_sizes = [sum(size for _, size in bs) for bs in node_blocks]

        per_edge = [[0] * n_et for _ in hops]
        edge_blocks: list[list[tuple[int, int]]] = [[] for _ in range(n_et)]
        at = 0
        for h, hop in enumerate(hops):
            for g, start, size in hop.blocks:
                edge_blocks[g].append((at + start, size))
                per_edge[h][g] += size
            at += hop.eid.numel()
        row = torch.cat([hop.nodes.local for hop in hops])
        col = torch.cat([hop.parent for hop in hops])
        eid = torch.cat([hop.eid for hop in hops])
        index = _block_index([b for bs in edge_blocks for b in bs], at, dev)
        if index is not None:
            row, col, eid = (x.index_select(0, index) for x in (row, col, eid))
        et_sizes = [sum(size for _, size in bs) for bs in edge_blocks]

        nt, et = ix.node_types, ix.edge_types
        # column k of a type's degrees: its k-th incoming edge type (ix.into order)
        degrees = {t: d[:, : len(ix.into[i])] for i, (t, d) in enumerate(zip(nt, degree.split(type_sizes)))}
        return HeteroSamplerOutput(
            metadata=degrees,
            node=dict(zip(nt, node.split(type_sizes))),
            row=dict(zip(et, row.split(et_sizes))),
            col=dict(zip(et, col.split(et_sizes))),
            edge=dict(zip(et, eid.long().split(et_sizes))),
            batch=dict(zip(nt, slot.split(type_sizes))),
            num_sampled_nodes={t: [c[i] for c in per_node] for i, t in enumerate(nt)},
            num_sampled_edges={g: [c[i] for c in per_edge] for i, g in enumerate(et)},
        )


def _pyg_lib_sampler(data: HeteroData, fanouts: list[int], strategy: str) -> BaseSampler:
    """PyG's own temporal NeighborSampler (disjoint, node-level ``time``)."""
    import torch_geometric.typing as pyg_typing

    if not pyg_typing.WITH_PYG_LIB:
        raise ImportError("backend='pyg_lib' needs the pyg-lib package, which is not "
                          "installed; use backend='torch'")
    from torch_geometric.sampler import NeighborSampler

    return NeighborSampler(data, num_neighbors=list(fanouts), time_attr="time",
                           temporal_strategy=strategy, disjoint=True)


def make_loader(data: HeteroData, entity_type: str, node_ids: Tensor, cutoffs: Tensor,
                fanouts: list[int], batch_size: int = 512, shuffle: bool = False,
                strategy: str = "uniform", seed: int = 0, num_workers: int = 0,
                backend: str = "torch", **kw) -> NodeLoader:
    """A ``NodeLoader`` over (entity, cutoff) seeds with :class:`TemporalSampler`.

    Args:
        data: the full graph.
        entity_type: node type of the seeds.
        node_ids: int64 [N] seed node ids of ``entity_type`` (any device).
        cutoffs: int64 [N] cutoff epoch seconds, one per seed.
        fanouts: neighbours per (node, edge type) at each hop.
        batch_size / shuffle / num_workers / ``**kw``: passed to ``NodeLoader``.
        strategy, seed, backend: see :class:`TemporalSampler`.
    """
    node_ids = torch.as_tensor(node_ids).cpu()
    cutoffs = torch.as_tensor(cutoffs).cpu()
    if node_ids.dim() != 1 or node_ids.shape != cutoffs.shape:
        raise ValueError(f"node_ids and cutoffs must be 1-D of equal length, got "
                         f"{tuple(node_ids.shape)} and {tuple(cutoffs.shape)}")
    if cutoffs.dtype != torch.long:
        raise ValueError(f"cutoffs must be int64 epoch seconds, got {cutoffs.dtype}")
    n = int(data[entity_type].num_nodes or 0)
    bad = (node_ids < 0) | (node_ids >= n)
    if bool(bad.any()):
        raise ValueError(f"{entity_type}: {int(bad.sum())} seed ids outside 0..{n - 1} "
                         f"(first: {node_ids[bad][:5].tolist()})")
    sampler = TemporalSampler(data, fanouts, strategy=strategy, seed=seed, backend=backend)
    return TemporalNodeLoader(data, node_sampler=sampler, input_nodes=(entity_type, node_ids.long()),
                              input_time=cutoffs, batch_size=batch_size, shuffle=shuffle,
                              num_workers=num_workers, **kw)


class TemporalNodeLoader(NodeLoader):
    """``NodeLoader`` that also puts the sampler's ``degree`` on each node type and
    withholds the columns of seeds created after their cutoff (`withhold_seeds`)."""

    def filter_fn(self, out):
        data = super().filter_fn(out)
        if len(out.metadata) > 2:  # the torch backend's degrees (pyg-lib gives none)
            for t, d in out.metadata[2].items():
                data[t].degree = d
        return withhold_seeds(data, self.input_data.input_type)
