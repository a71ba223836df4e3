"""What a task's examples may see of the graph: hidden columns, the test context, withheld seeds.

The graph is built once per dataset; a task looks at it through views that share its
tensors (only what a view changes is copied):

- `hide_columns`: a task's `remove_columns` carry no information: every row holds the
  encoding of a missing value (numeric 0 and its missing indicator 0, category code 0,
  text buckets 0, timestamps NaN). The feature layout, and so every model's shape, stays
  that of the dataset's graph.
- `frozen_graph`: the graph as of the test cutoff (`test_context: frozen`): every row
  after it is gone, so an example with a later cutoff sees the rows up to the earlier of
  its own cutoff and the test cutoff, while its time features are still measured from
  its own cutoff. An entity created after the test cutoff that still has a test example
  (possible under relgraph's own rules, not RelBench's) stays a bare node: no columns,
  no edges, created at the test cutoff.
- `withhold_seeds`: in every sampled batch, a seed whose own row is created after its
  cutoff (`on_future_entity: withhold`) gets no columns and its cutoff as its time: the
  example sees that its entity exists, not what the entity's row says. Other nodes are
  never later than their seed's cutoff (the sampler's rule), so only seeds need this.
"""

from __future__ import annotations

from datetime import datetime

import torch
from torch_geometric.data import HeteroData

from pipeline.graph.build import epoch_seconds, truncate

FEATURE_BLOCKS = ("x_num", "x_cat", "x_text", "x_ts")


def _hidden_value(block: str) -> float:
    return float("nan") if block == "x_ts" else 0


def _columns_of(meta: dict, block: str, column: str) -> list[int]:
    """Positions of `column` in one feature block of a table's feature metadata."""
    kind = block[2:]
    names = meta["names"][kind]
    if kind == "num":
        return [i for i, n in enumerate(names) if n in (column, f"{column}__is_missing")]
    if kind == "text":
        return [i for i, n in enumerate(names) if n.startswith(f"{column}#")]
    return [i for i, n in enumerate(names) if n == column]


def hidden_positions(feature_meta: dict, removed) -> dict[str, dict[str, list[int]]]:
    """{table: {block: [column positions]}} of the (table, column) pairs `removed`;
    columns that are no feature (dropped by the encoders, keys) have none."""
    out: dict[str, dict[str, list[int]]] = {}
    for table, column in removed:
        meta = feature_meta.get(table)
        if meta is None:
            continue
        for block in FEATURE_BLOCKS:
            pos = _columns_of(meta, block, column)
            if pos:
                out.setdefault(table, {}).setdefault(block, []).extend(pos)
    return out


def _shallow_copy(data: HeteroData) -> HeteroData:
    out = HeteroData()
    for node_type in data.node_types:
        for key, value in data[node_type].items():
            out[node_type][key] = value
    for edge_type in data.edge_types:
        for key, value in data[edge_type].items():
            out[edge_type][key] = value
    return out


def hide_columns(data: HeteroData, feature_meta: dict, removed) -> HeteroData:
    """`data` with the (table, column) pairs `removed` set to a missing value in every
    row (the same object when nothing is removed)."""
    positions = hidden_positions(feature_meta, removed)
    if not positions:
        return data
    out = _shallow_copy(data)
    for table, blocks in positions.items():
        if table not in out.node_types:
            continue
        for block, cols in blocks.items():
            if block in out[table]:
                x = out[table][block].clone()
                x[:, cols] = _hidden_value(block)
                out[table][block] = x
    return out


def frozen_graph(data: HeteroData, as_of: datetime, entity_type: str,
                 num_entities: int = 0) -> HeteroData:
    """The graph as of `as_of` (see the module docstring), with at least `num_entities`
    nodes of `entity_type`: those created after `as_of` are bare nodes."""
    out = truncate(data, as_of)
    kept = int(out[entity_type].num_nodes or 0)
    if num_entities <= kept:
        return out
    store, full = out[entity_type], data[entity_type]
    extra = num_entities - kept
    for key, value in list(store.items()):
        if not isinstance(value, torch.Tensor) or value.dim() == 0 or value.size(0) != kept:
            continue
        if key == "time":
            fill = torch.full((extra,), epoch_seconds(as_of), dtype=value.dtype, device=value.device)
        else:
            fill = torch.full((extra, *value.shape[1:]), _hidden_value(key), dtype=value.dtype,
                              device=value.device)
        store[key] = torch.cat([value, fill])
    store.num_nodes = min(num_entities, int(full.num_nodes))
    return out


def withhold_seeds(batch: HeteroData, entity_type: str) -> HeteroData:
    """Hide, in place, the columns of every seed whose row is created after its cutoff
    and give it its cutoff as its time (see the module docstring)."""
    store = batch[entity_type]
    if "time" not in store or "seed_time" not in store:
        return batch
    n = int(store.seed_time.numel())
    late = store.time[:n] > store.seed_time
    if not bool(late.any()):
        return batch
    rows = late.nonzero().squeeze(1)
    for block in FEATURE_BLOCKS:
        if block in store and store[block].dim() > 1 and store[block].size(1):
            store[block][rows] = _hidden_value(block)
    store.time[rows] = store.seed_time[rows].to(store.time.dtype)
    return batch
