"""The warehouse as one heterogeneous graph: a node per row, an edge per foreign key.

`build_graph` reads the clean warehouse tables (`main."T"` with `__id` and `__fk_<fk>`)
straight from DuckDB, through Arrow, into torch tensors, and returns the HeteroData of
the graph contract:

- node type T = table T, node i = the row with `__id` = i; `time` (int64 epoch seconds)
  only for tables with a time column; x_num / x_cat / x_text / x_ts from
  `pipeline.graph.features`.
- edge types (C, fk, P) and (P, "rev_" + fk, C) for each foreign key of child C into
  parent P; rows whose foreign key is NULL have no edge.
- every edge type is sorted by destination, then by the source's time (ids follow time
  within a table, so by source id): the neighbours of a node are one contiguous run,
  oldest first. `GraphArtifact.csc_ptr[et]` [N_dst + 1] gives where each run starts
  (computed on first use, not stored: it costs about as much as writing 20% more graph).

Node times are ceil(time in seconds), so for a whole-second cutoff c:
time <= c exactly when the row's true time <= c (a row at 10.5 s is not visible at 10 s).
Rows with a NULL time get the table's earliest time: they are always visible (the
warehouse puts them first in the id order).

Graphs are cached under `cache_dir/<hash>/` (part-NNNN.pt, one per table: plain tensors
and dicts, loadable with `torch.load(weights_only=True)`; meta.json: counts, feature
metadata, encoders, timings, the part list). The hash covers a content fingerprint of every table, the spec's tables
section, the encoder settings and fit_cutoff, so an unchanged input is never rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from functools import cached_property
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import numpy as np
import torch
from torch_geometric.data import HeteroData

from pipeline.graph.features import (
    BATCH_ROWS, Encoders, FeatureConfig, duckdb_threads, encode_table, feature_meta,
    fit_encoders, row_index, table_columns, table_size, utc_naive,
)
from pipeline.paths import DataPaths
from pipeline.data.spec import DatasetSpec, TableSpec
from pipeline.data.sqlutil import q as quote

# Bump when the stored layout or any encoding changes, so old cache entries are not reused.
GRAPH_FORMAT = 1
EdgeType = tuple[str, str, str]


class GraphError(ValueError):
    """The warehouse does not satisfy the graph contract; the message names table and column."""


@dataclass
class GraphArtifact:
    """A built (or cached) graph and everything needed to use and describe it.

    `stats`: {"nodes": {T: N}, "edges": {"C--fk->P": E}, "feature_dims": {T: {...}},
    "build_seconds": float, "bytes": int}.
    """

    data: HeteroData
    feature_meta: dict
    encoders: Encoders
    hash: str
    path: Path
    stats: dict
    cache_hit: bool

    @cached_property
    def csc_ptr(self) -> dict[EdgeType, torch.Tensor]:
        """See `csc_pointers`."""
        return csc_pointers(self.data)

    def truncate(self, as_of: datetime) -> HeteroData:
        """The graph restricted to rows with time <= as_of (static tables keep every row).

        Node ids follow time, so each temporal table keeps a prefix of its ids and every
        kept id is unchanged; features are views of that prefix; edges touching a removed
        node are dropped, and the remaining ones keep their (dst, src time) order. as_of
        is rounded down to a whole second, so nothing later than as_of survives.
        """
        return truncate(self.data, as_of)


def epoch_seconds(moment: datetime) -> int:
    """Whole epoch seconds of a (naive = UTC) datetime, rounded down."""
    delta = utc_naive(moment) - datetime(1970, 1, 1)
    return delta.days * 86_400 + delta.seconds


def truncate(data: HeteroData, as_of: datetime) -> HeteroData:
    """See `GraphArtifact.truncate`."""
    limit = epoch_seconds(as_of)
    keep: dict[str, int] = {}
    out = HeteroData()
    for node_type in data.node_types:
        store = data[node_type]
        n = store.num_nodes
        if "time" in store:
            # time is non-decreasing along the ids (checked at build), so a binary search finds the prefix.
            n = int(torch.searchsorted(store.time, torch.tensor([limit]), right=True)[0])
        keep[node_type] = n
        for key, value in store.items():
            if isinstance(value, torch.Tensor):
                out[node_type][key] = value[:n]
        out[node_type].num_nodes = n
    for edge_type in data.edge_types:
        src, _, dst = edge_type
        ei = data[edge_type].edge_index
        if keep[src] < data[src].num_nodes or keep[dst] < data[dst].num_nodes:
            ei = ei[:, (ei[0] < keep[src]) & (ei[1] < keep[dst])]
        out[edge_type].edge_index = ei
    return out


def csc_pointers(data: HeteroData) -> dict[EdgeType, torch.Tensor]:
    """ptr[et] int64 [N_dst + 1]: the edges into node v are ptr[v]:ptr[v + 1] of the sorted list.

    Works on any graph whose edge types are sorted by destination (a built or truncated one).
    """
    out = {}
    for edge_type in data.edge_types:
        dst = data[edge_type].edge_index[1]
        counts = torch.bincount(dst, minlength=data[edge_type[2]].num_nodes)
        out[edge_type] = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(counts, 0)])
    return out


def table_fingerprint(con: duckdb.DuckDBPyConnection, table: str) -> str:
    """Schema, row count and the sum of every row's hash (the row as one struct value):
    changes when a column or any value of any row does. One parallel scan, no sort."""
    schema = hashlib.sha256(json.dumps(table_columns(con, table)).encode()).hexdigest()[:12]
    # the alias is a name the warehouse reserves, so no user column can shadow the row
    n, total = con.execute(f"SELECT count(*), sum(hash(__relgraph_row)::HUGEINT) "
                           f"FROM main.{quote(table)} AS __relgraph_row").fetchall()[0]
    return f"{schema}:{n}:{total}"


def content_hash(spec: DatasetSpec, fingerprints: dict[str, str], config: FeatureConfig,
                 fit_cutoff: datetime) -> str:
    """The cache key: everything the graph's bytes depend on."""
    key = {
        "format": GRAPH_FORMAT,
        "tables": {name: asdict(t) for name, t in spec.tables.items()},
        "fingerprints": fingerprints,
        "features": config.output_settings(),
        "fit_cutoff": utc_naive(fit_cutoff).isoformat(),
    }
    text = json.dumps(key, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _read_keys(con: duckdb.DuckDBPyConnection, table: TableSpec, n: int
               ) -> tuple[np.ndarray | None, dict[str, np.ndarray]]:
    """The table's node times (ceil seconds, or None for static) and each foreign key's
    parent ids (-1 for NULL), indexed by __id."""
    select = ["__id"]
    if table.time_column:
        t = quote(table.time_column)
        stamp = f"CAST(ceil(epoch_us({t}) / 1000000.0) AS BIGINT)"
        first = f"(SELECT min({stamp}) FROM main.{quote(table.name)})"
        select.append(f"coalesce({stamp}, {first}, 0)")
    select += [f"coalesce({quote('__fk_' + fk.name)}, -1)" for fk in table.foreign_keys]
    times = np.empty(n, np.int64) if table.time_column else None
    fks = {fk.name: np.empty(n, np.int64) for fk in table.foreign_keys}
    columns = ([times] if times is not None else []) + list(fks.values())
    if not columns:
        return None, {}
    start = 0
    query = f"SELECT {', '.join(select)} FROM main.{quote(table.name)}"
    for batch in con.sql(query).to_arrow_reader(BATCH_ROWS):
        rows = row_index(batch.column(0).to_numpy(), start)
        for j, array in enumerate(columns):
            array[rows] = batch.column(1 + j).to_numpy()
        start += batch.num_rows
    if times is not None and n > 1 and bool((times[1:] < times[:-1]).any()):
        raise GraphError(f"{table.name}: __id does not follow {table.time_column} (row "
                         f"{int(np.argmax(times[1:] < times[:-1])) + 1} is older than the one before); "
                         "the warehouse must number rows by time, rebuild it")
    return times, fks


def _edges(child: str, fk: str, parents: np.ndarray, n_parent: int, parent: str
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """(C, fk, P) and (P, rev_fk, C) edge_index [2, E], both sorted by (dst, src id).

    Source ids of the reverse direction are already ascending (one scan of C), so only the
    forward direction may need a stable sort by parent id, and not even that when the
    child rows already come in parent order (order lines numbered like their orders).
    """
    has = parents >= 0
    complete = bool(has.all())
    reverse = torch.empty((2, len(parents) if complete else int(has.sum())), dtype=torch.int64)
    targets, children = reverse[0], reverse[1]
    if complete:  # no NULL key: skip the masks
        targets.numpy()[:] = parents
        torch.arange(len(parents), out=children)
    else:
        np.compress(has, parents, out=targets.numpy())
        children.numpy()[:] = np.flatnonzero(has)
    del has
    if targets.numel() and int(targets.max()) >= n_parent:
        bad = targets[targets >= n_parent][:5].tolist()
        raise GraphError(f"{child}.__fk_{fk}: {int((targets >= n_parent).sum())} rows point past the "
                         f"{n_parent} rows of {parent} (first: {bad}); rebuild the warehouse")
    if bool((targets[1:] >= targets[:-1]).all()):
        return reverse.flip(0).contiguous(), reverse
    order = _stable_order(targets, n_parent)
    forward = torch.empty_like(reverse)
    if complete:  # children are 0..E-1, so the permutation is the sorted source list
        forward[0] = order
    else:
        torch.index_select(children, 0, order, out=forward[0])
    if n_parent <= targets.numel():
        # sorted destinations from the counts: sequential writes instead of a random gather
        counts = torch.bincount(targets, minlength=n_parent)
        forward[1] = torch.repeat_interleave(torch.arange(n_parent), counts, output_size=targets.numel())
    else:  # few edges into a big table: the counts would cost more than the gather
        torch.index_select(targets, 0, order, out=forward[1])
    return forward, reverse


def _stable_order(keys: torch.Tensor, bound: int) -> torch.Tensor:
    """The stable sort permutation of int64 `keys` in [0, bound), by the cheapest route:
    a one-pass radix sort (numpy, 16-bit keys) for small bounds, else torch's sort of
    32-bit keys (about twice as fast as 64-bit)."""
    if bound <= 2**16:
        return torch.from_numpy(np.argsort(keys.numpy().astype(np.uint16), kind="stable"))
    if bound <= 2**31:
        return torch.sort(keys.to(torch.int32), stable=True).indices
    return torch.sort(keys, stable=True).indices


def build_graph(con: duckdb.DuckDBPyConnection, spec: DatasetSpec, fit_cutoff: datetime,
                config: FeatureConfig = FeatureConfig(), cache_dir: Path | None = None
                ) -> GraphArtifact:
    """Build the graph of `spec`'s warehouse tables, or load it from the cache.

    Encoders are fitted on rows with time <= fit_cutoff (see `pipeline.graph.features`).
    `cache_dir` defaults to the data directory's graphs/ ($RELGRAPH_DATA/graphs).
    Each table's tensors are written to the cache on a background thread while the next
    table is encoded, so the disk mostly works while DuckDB does.
    """
    started = time.perf_counter()
    cache_dir = Path(cache_dir) if cache_dir is not None else DataPaths.from_env().graphs
    with duckdb_threads(con, config.threads):
        fingerprints = {name: table_fingerprint(con, name) for name in spec.tables}
        key = content_hash(spec, fingerprints, config, fit_cutoff)
        path = cache_dir / key
        if (path / "meta.json").exists():
            os.utime(path / "meta.json")  # a graph in use counts as new for prune_cache
            return load_graph(path)

        encoders = fit_encoders(con, spec, fit_cutoff, config)
        sizes = {name: table_size(con, name) for name in spec.tables}
        nodes: dict[str, dict] = {}
        edges: dict[EdgeType, torch.Tensor] = {}
        with _CacheWriter(path) as writer:
            for name, tspec in spec.tables.items():
                tensors = encode_table(con, spec, name, encoders)
                times, fks = _read_keys(con, tspec, sizes[name])
                nodes[name] = {"num_nodes": sizes[name], **tensors}
                if times is not None:
                    nodes[name]["time"] = torch.from_numpy(times)
                own = {}
                for fk in tspec.foreign_keys:
                    forward, reverse = _edges(name, fk.name, fks[fk.name], sizes[fk.references], fk.references)
                    own[(name, fk.name, fk.references)] = forward
                    own[(fk.references, "rev_" + fk.name, name)] = reverse
                del fks
                edges.update(own)
                writer.add({name: nodes[name]}, own)

            data = _hetero_data(nodes, edges)
            fmeta = feature_meta(encoders)
            meta = {
                "hash": key,
                "format": GRAPH_FORMAT,
                "created": datetime.now(timezone.utc).isoformat(),
                "fit_cutoff": utc_naive(fit_cutoff).isoformat(),
                "fingerprints": fingerprints,
                "feature_meta": fmeta,
                "encoders": encoders.to_dict(),
                "stats": _stats(data, fmeta),
            }
            writer.commit(meta, started)
    return GraphArtifact(data=data, feature_meta=fmeta, encoders=encoders, hash=key, path=path,
                         stats=meta["stats"], cache_hit=False)


def _hetero_data(nodes: dict[str, dict], edges: dict[EdgeType, torch.Tensor]) -> HeteroData:
    data = HeteroData()
    for name, attrs in nodes.items():
        for attr, value in attrs.items():
            data[name][attr] = value
    for edge_type, edge_index in edges.items():
        data[edge_type].edge_index = edge_index
    return data


def _stats(data: HeteroData, meta: dict) -> dict:
    tensors = [v for store in data.stores for v in store.values() if isinstance(v, torch.Tensor)]
    return {
        "nodes": {t: int(data[t].num_nodes) for t in data.node_types},
        "edges": {f"{s}--{r}->{d}": int(data[(s, r, d)].edge_index.size(1)) for s, r, d in data.edge_types},
        "feature_dims": {t: {"num": m["num"], "cat": len(m["cat"]), "text": m["text"], "ts": m["ts"]}
                         for t, m in meta.items()},
        "bytes": sum(t.nbytes for t in tensors),
    }


class _CacheWriter:
    """Writes a graph entry into a private temporary folder, one part file per table on a
    background thread, then renames the folder into place.

    Readers see a complete entry or none. If another process finished the same graph
    first, its entry is kept (same hash, same content) and ours is discarded. Parts are
    plain dicts of tensors: {"format", "nodes": {T: {attr: tensor | int}},
    "edges": [{"type": [src, rel, dst], "edge_index": tensor}]}.
    """

    def __init__(self, path: Path):
        self.path = path
        self.tmp = path.parent / f".tmp-{path.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.parts: list[str] = []
        self.pending: list[Future] = []
        self.pool = ThreadPoolExecutor(max_workers=1)

    def __enter__(self) -> _CacheWriter:
        self.tmp.mkdir(parents=True)
        return self

    def add(self, nodes: dict[str, dict], edges: dict[EdgeType, torch.Tensor]) -> None:
        name = f"part-{len(self.parts):04d}.pt"
        payload = {"format": GRAPH_FORMAT, "nodes": nodes,
                   "edges": [{"type": list(et), "edge_index": ei} for et, ei in edges.items()]}
        self.parts.append(name)
        self.pending.append(self.pool.submit(torch.save, payload, self.tmp / name))

    def commit(self, meta: dict, started: float) -> None:
        """Wait for the parts, write meta.json (with the build's seconds), rename into place."""
        for future in self.pending:
            future.result()
        meta["parts"] = self.parts
        meta["stats"]["build_seconds"] = round(time.perf_counter() - started, 3)
        (self.tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        try:
            os.rename(self.tmp, self.path)
        except OSError:
            if (self.path / "meta.json").exists():
                return  # another process wrote the same graph first
            shutil.rmtree(self.path)  # an unfinished entry left by hand: replace it
            os.rename(self.tmp, self.path)

    def __exit__(self, *exc) -> None:
        self.pool.shutdown(wait=True)
        if self.tmp.exists():
            shutil.rmtree(self.tmp)


def load_graph(path: Path) -> GraphArtifact:
    """Load a cached graph; tensors are memory-mapped from the part files, not read up front."""
    path = Path(path)
    if not (path / "meta.json").exists():
        raise FileNotFoundError(f"{path}: no graph here (meta.json is missing)")
    meta = json.loads((path / "meta.json").read_text())
    if meta.get("format") != GRAPH_FORMAT:
        raise GraphError(f"{path}: graph format {meta.get('format')} is not {GRAPH_FORMAT}; rebuild it")
    nodes: dict[str, dict] = {}
    edges: dict[EdgeType, torch.Tensor] = {}
    for part in meta["parts"]:
        payload = torch.load(path / part, weights_only=True, mmap=True)
        nodes.update(payload["nodes"])
        edges.update({tuple(e["type"]): e["edge_index"] for e in payload["edges"]})
    return GraphArtifact(data=_hetero_data(nodes, edges), feature_meta=meta["feature_meta"],
                         encoders=Encoders.from_dict(meta["encoders"]), hash=meta["hash"], path=path,
                         stats=meta["stats"], cache_hit=True)


# Graphs kept per dataset (design.md's retention rule, K = 3).
KEEP_GRAPHS = 3


def prune_cache(cache_dir: Path, keep: int = KEEP_GRAPHS) -> list[Path]:
    """Delete all but the `keep` most recently built or used graphs; returns what was deleted.

    Only complete entries (with meta.json) count; another process's unfinished temporary
    folder is left alone.
    """
    cache_dir = Path(cache_dir)
    if not cache_dir.is_dir():
        return []
    entries = [p for p in cache_dir.iterdir() if p.is_dir() and (p / "meta.json").exists()]
    entries.sort(key=lambda p: (p / "meta.json").stat().st_mtime_ns, reverse=True)
    removed = entries[max(keep, 0):]
    for p in removed:
        shutil.rmtree(p)
    return removed
