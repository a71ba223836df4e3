"""Integrated gradients of a graph model over each example's sampled subgraph.

Every node encoder (`pipeline.models.encoders._TypeEncoder`) sums one `hidden`-wide
vector per input before its LayerNorm: a numeric column times its weights, a category's
embedding, a timestamp column's time features times theirs, the log-degree per incoming
edge type (how many rows of that table the node had by the cutoff), and the node's own
age. So the pre-norm vector of node v is `b_v + sum_c u_{v,c}` (b_v: biases and the
static vector). The baseline is the average row: `r_{T,c}`, the mean of u_{., c} over the
nodes of type T sampled for reference examples (a category's embedding, a count or an age
that every row has explains nothing; one that differs from the average does). The inputs
move together from the baseline, `b + sum r + alpha * sum (u - r)` for alpha along (0, 1],
and each input's attribution is `mean_alpha(grad) . (u_{v,c} - r_{T,c})` (integrated
gradients: their sum is the output minus the baseline's output, up to the midpoint
rule's error). Subgraphs are disjoint per seed, so one backward pass per alpha gives
every seed's own gradients.

Each sampled node is the source of exactly one sampled edge, to its parent; following
parents gives its path from the seed (customers <- orders <- order_items -> products <-
returns). Attributions are reported per (seed, path, column, node): `Attributions`
in `pipeline.training.family`.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import torch

from pipeline.graph.sampling import make_loader
from pipeline.models.encoders import NodeEncoder
from pipeline.training.family import Attributions

STEPS = 16


def _columns(meta: dict, names: dict, node_type: str, edge_types) -> list[tuple[str, str]]:
    """(table, column) per encoder input of `node_type`, in `_inputs` order."""
    out = []
    num = names.get("num", [])
    out += [(node_type, n.removesuffix("__is_missing")) for n in num]
    out += [(node_type, n.split("#", 1)[0]) for n in names.get("text", [])]
    out += [(node_type, n) for n in names.get("ts", [])]
    out += [(et[0], "(rows)") for et in edge_types if et[2] == node_type]
    if meta.get("temporal", False):
        out.append((node_type, "(age)"))
    out += [(node_type, n) for n in names.get("cat", [])]
    return out


def _inputs(enc, store, seed_time: torch.Tensor, time_enc) -> torch.Tensor:
    """[N, inputs, hidden]: each input's additive share of the pre-norm vector (biases
    and the static vector excluded), in `_columns` order."""
    parts = []
    if enc.num is not None:
        parts.append(store.x_num.float().unsqueeze(2) * enc.num.weight.t().unsqueeze(0))
    if enc.text is not None:
        parts.append(store.x_text.float().unsqueeze(2) * enc.text.weight.t().unsqueeze(0))
    if enc.ts is not None:
        delta = seed_time.double().unsqueeze(1) - store.x_ts.double()
        feats = enc.ts_time.features(delta)  # [N, Fts, K]
        k = feats.size(-1)
        w = enc.ts.weight.view(enc.ts.weight.size(0), enc.ts_cols, k)  # [H, Fts, K]
        parts.append(torch.einsum("nck,hck->nch", feats, w))
    if enc.degree is not None:
        deg = torch.log1p(store.degree.float()) if "degree" in store else \
            torch.zeros(store.num_nodes, enc.degree.in_features, device=seed_time.device)
        parts.append(deg.unsqueeze(2) * enc.degree.weight.t().unsqueeze(0))
    if enc.temporal:
        parts.append(time_enc.lin(time_enc.features(seed_time - store.time)).unsqueeze(1)
                     - time_enc.lin.bias)
    if enc.cat is not None:
        parts.append(enc.cat(store.x_cat + enc.cat_offsets))
    if not parts:
        return torch.zeros(store.num_nodes, 0, enc.norm.normalized_shape[0], device=seed_time.device)
    return torch.cat(parts, dim=1)


def _paths(batch, entity_type: str, edge_types) -> tuple[dict[str, np.ndarray], list[tuple]]:
    """Per node type, each node's path id; and the paths (tuples of tables after the
    entity), id 0 being the seed itself."""
    pid = {t: np.full(batch[t].num_nodes, -1, dtype=np.int64) for t in batch.node_types}
    pid[entity_type][:int(batch[entity_type].seed_time.numel())] = 0
    paths: list[tuple] = [()]
    index: dict[tuple, int] = {(): 0}
    edges = {et: batch[et].edge_index.cpu().numpy() for et in edge_types
             if et in batch.edge_types and batch[et].edge_index.numel()}
    while True:  # one round per hop
        grew = False
        for et, (src, dst) in edges.items():
            s, _, d = et
            todo = (pid[s][src] < 0) & (pid[d][dst] >= 0)
            if not todo.any():
                continue
            parents = pid[d][dst[todo]]
            new = np.empty(len(parents), dtype=np.int64)
            for p in np.unique(parents):  # one per distinct parent path, not per row
                key = paths[p] + (s,)
                if key not in index:
                    index[key] = len(paths)
                    paths.append(key)
                new[parents == p] = index[key]
            pid[s][src[todo]] = new
            grew = True
        if not grew:
            break
    return pid, paths


def _node_encoder(predictor) -> NodeEncoder:
    encoders = [m for m in predictor.modules() if isinstance(m, NodeEncoder)]
    if len(encoders) != 1:
        raise ValueError(f"explanations need one NodeEncoder in the model; found {len(encoders)}")
    return encoders[0]


def _batches(data, entity_type, entity, cutoff, config, device, batch_size):
    loader = make_loader(data, entity_type, entity.to(device), cutoff.to(device),
                         list(config.fanouts), batch_size=batch_size, shuffle=False,
                         strategy=config.strategy, seed=config.seed)
    for batch in loader:
        yield batch.to(device)


def _shares(node_encoder, batch, entity_type) -> dict[str, torch.Tensor]:
    out = {}
    with torch.no_grad():
        for t, enc in node_encoder.encoders.items():
            if t in batch.node_types and batch[t].num_nodes:
                st = batch[entity_type].seed_time[batch[t].batch]
                out[t] = _inputs(enc, batch[t], st, node_encoder.time)
    return out


@torch.no_grad()
def reference_shares(predictor, data, entity_type: str, entity: torch.Tensor,
                     cutoff: torch.Tensor, config, device,
                     batch_size: int = 64) -> dict[str, torch.Tensor]:
    """The baseline: per node type, the mean input shares [inputs, hidden] over the nodes
    sampled for the reference seeds."""
    predictor.eval()
    node_encoder = _node_encoder(predictor)
    sums, counts = {}, {}
    for batch in _batches(data.to(device), entity_type, entity, cutoff, config, device,
                          batch_size):
        for t, share in _shares(node_encoder, batch, entity_type).items():
            sums[t] = sums.get(t, 0) + share.sum(0)
            counts[t] = counts.get(t, 0) + share.size(0)
    return {t: sums[t] / counts[t] for t in sums}


def integrated_gradients(predictor, data, feature_meta: dict, entity_type: str,
                         entity: torch.Tensor, cutoff: torch.Tensor, config, device,
                         reference: dict[str, torch.Tensor] | None = None,
                         steps: int = STEPS, batch_size: int = 32) -> Attributions:
    """Attributions of `predictor` (a trained `Predictor`) for the seeds (entity ids,
    cutoffs), sampled as scoring samples them (the config's fanouts, strategy and seed),
    against the baseline `reference` (`reference_shares`; None: every input at zero)."""
    predictor.eval()
    node_encoder = _node_encoder(predictor)
    edge_types = list(data.edge_types)
    columns = {t: _columns(feature_meta[t], feature_meta[t]["names"], t, edge_types)
               for t in feature_meta}
    reference = reference or {}
    frames, scores, bases, offset = [], [], [], 0
    for batch in _batches(data.to(device), entity_type, entity, cutoff, config, device,
                          batch_size):
        n_seeds = int(batch[entity_type].seed_time.numel())
        shares, hooks, state = _shares(node_encoder, batch, entity_type), [], {"alpha": 1.0}
        shares = {t: s - reference[t] if t in reference else s for t, s in shares.items()}

        def hook(t):
            def pre(_module, args):
                x = args[0]
                total = shares[t].sum(1)
                z = (x.detach() - total + state["alpha"] * total).requires_grad_(True)
                state["z"][t] = z
                return (z,)
            return pre

        for t, enc in node_encoder.encoders.items():
            if t in shares:
                hooks.append(enc.norm.register_forward_pre_hook(hook(t)))
        grads = {t: torch.zeros(s.shape[0], s.shape[2], device=device) for t, s in shares.items()}
        pick = None
        try:
            for alpha in [0.0, *((k + 0.5) / steps for k in range(steps)), 1.0]:
                state["alpha"], state["z"] = alpha, {}
                out = predictor(batch).float()
                if out.dim() == 2:  # several outputs per row: explain the highest
                    pick = out.argmax(1, keepdim=True) if pick is None else pick
                    out = out.gather(1, pick).squeeze(1)
                if alpha == 0.0:
                    bases.append(out.detach().cpu())
                    continue
                if alpha == 1.0:
                    scores.append(out.detach().cpu())
                    continue
                zs = [state["z"][t] for t in shares]
                gs = torch.autograd.grad(out.sum(), zs, allow_unused=True)
                for t, g in zip(shares, gs):
                    if g is not None:
                        grads[t] += g / steps
        finally:
            for h in hooks:
                h.remove()
        pid, paths = _paths(batch, entity_type, edge_types)
        for t, share in shares.items():
            attr = torch.einsum("nch,nh->nc", share, grads[t]).detach().cpu().numpy()
            cols = columns[t]
            n, c = attr.shape
            if c != len(cols):
                raise ValueError(f"{t}: {c} encoder inputs but {len(cols)} named columns")
            node_path = pid[t]
            seed = batch[t].batch.cpu().numpy() + offset
            nid = batch[t].n_id.cpu().numpy()
            keep = node_path >= 0
            path_names = [" / ".join(p) for p in paths]
            tables = np.array([tc[0] for tc in cols], dtype=object)
            colnames = np.array([tc[1] for tc in cols], dtype=object)
            degree = colnames == "(rows)"
            rows = np.repeat(np.arange(n)[keep], c)
            col_idx = np.tile(np.arange(c), int(keep.sum()))
            base_path = np.array(path_names, dtype=object)[node_path[rows]]
            # a degree input counts rows one step further along the path
            path_col = np.where(degree[col_idx],
                                np.char.add(np.char.add(base_path.astype(str),
                                                        np.where(base_path == "", "", " / ")),
                                            tables[col_idx].astype(str)),
                                base_path.astype(str))
            frames.append(pl.DataFrame({
                "row": seed[rows].astype(np.int64), "path": path_col,
                "table": tables[col_idx].astype(str), "column": colnames[col_idx].astype(str),
                "aggregate": np.full(len(rows), "", dtype=object).astype(str),
                "window_days": pl.Series([None] * len(rows), dtype=pl.Int64),
                "node_table": np.full(len(rows), t).astype(str),
                "node": nid[rows].astype(np.int64), "value": attr[rows, col_idx].astype(np.float64),
            }))
        offset += n_seeds
    frame = pl.concat(frames) if frames else pl.DataFrame()
    return Attributions(frame, torch.cat(scores).numpy() if scores else np.zeros(0),
                        torch.cat(bases).numpy() if bases else np.zeros(0),
                        f"integrated gradients ({steps} steps) on the node encoders' inputs")
