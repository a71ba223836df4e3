"""Graph transformers over the sampled heterogeneous subgraph: HGT and RGT.

``HGT`` attends along edges (one hop per layer, attention weights per relation).
``RelationalGraphTransformer`` instead lets each seed attend directly to every
node of its sampled subgraph, which sidesteps the over-smoothing and
over-squashing that limit message passing to a few hops.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch_geometric.data import HeteroData
# PyG's ModuleDict accepts any table name as a key (torch's rejects names with a dot).
from torch_geometric.nn.module_dict import ModuleDict
from torch_geometric.nn import HGTConv
from torch_geometric.utils import degree, softmax, to_dense_batch

from pipeline.models.config import ModelConfig
from pipeline.models.encoders import NodeEncoder, NodeTypeEmbedding
from pipeline.models.mpnn import HeteroMPLayer, edge_index_dict, hop_plan, num_seeds


def node_hops(batch: HeteroData, node_type: str) -> Tensor:
    """Hop distance of every node of ``node_type`` from its seed.

    The sampler appends nodes hop by hop, so ``num_sampled_nodes = [n_0, n_1, ...]``
    means the first n_0 nodes are at hop 0, the next n_1 at hop 1, and so on.

    Returns:
        int64 [N_T]
    """
    store = batch[node_type]
    if "num_sampled_nodes" not in store:
        raise ValueError(
            f"batch[{node_type!r}] has no 'num_sampled_nodes'; hop distances need the "
            "per-hop node counts that the sampler records"
        )
    counts = torch.as_tensor(store.num_sampled_nodes, dtype=torch.long).cpu()
    if int(counts.sum()) != store.num_nodes:
        raise ValueError(
            f"batch[{node_type!r}].num_sampled_nodes sums to {int(counts.sum())} "
            f"but the batch holds {store.num_nodes} {node_type} nodes"
        )
    hops = torch.repeat_interleave(torch.arange(counts.numel()), counts)
    return hops.to(store.batch.device)


def log_degree_features(
    batch: HeteroData, node_types: list[str], edge_types: list[tuple[str, str, str]]
) -> dict[str, Tensor]:
    r"""Structural encoding: :math:`\log(1 + \text{in-degree})` of every node per edge type.

    Every foreign key has a reverse edge type, so the in-degrees over all edge types
    count a row's neighbours in both directions (its parents and its children), as
    far as the sampler reached them.

    Returns:
        ``dict[T, float32 [N_T, len(edge_types)]]``; column k is 0 unless edge type
        k ends at T.
    """
    out = {}
    for t in node_types:
        n = batch[t].num_nodes if t in batch.node_types else 0
        device = batch[t].batch.device if n else None
        out[t] = torch.zeros(n, len(edge_types), device=device)
    present = set(batch.edge_types)
    for k, et in enumerate(edge_types):
        dst = et[2]
        if et in present and out[dst].size(0):
            out[dst][:, k] = torch.log1p(degree(batch[et].edge_index[1], out[dst].size(0)))
    return out


class HGTLayer(HGTConv):
    r"""PyG's ``HGTConv`` (same parameters, same result), computed destination-first.

    For destination :math:`i` of type :math:`T`, relation :math:`r = (S, \cdot, T)`,
    head :math:`h` and source :math:`j` (``D = hidden / heads``):

    .. math::
        s_{ij}^h = \frac{\mu_r^h}{\sqrt{D}}\, \mathbf{q}_i^h \cdot
            (\mathbf{k}_j^h W^{K}_{r,h}), \qquad
        \alpha_{ij}^h = \mathrm{softmax}_{j \in \mathcal{N}(i)} s_{ij}^h, \qquad
        \mathbf{m}_i^h = \sum_r \Big(\sum_{j \in \mathcal{N}_r(i)} \alpha_{ij}^h
            \mathbf{v}_j^h\Big) W^{V}_{r,h}

    (the softmax runs over every relation into :math:`i`), then
    :math:`\mathbf{h}'_i = \sigma(\beta_T)\, W^{out}_T \mathrm{GELU}(\mathbf{m}_i)
    + (1 - \sigma(\beta_T))\, \mathbf{h}_i`.

    PyG applies :math:`W^K_{r,h}` and :math:`W^V_{r,h}` to every source node of every
    relation, after copying each source type's keys and values once per relation. Here
    the query takes :math:`W^K` instead (:math:`\mathbf{q} \cdot \mathbf{k} W =
    \mathbf{q} W^\top \cdot \mathbf{k}`) and :math:`W^V` is applied after the sum,
    so both act on destinations only, which the hop plan makes the fewest nodes; queries
    are computed for destinations only too.

    Shapes:
        - **input:** ``dict[T, [N_T, hidden]]``, ``dict[edge type, [2, E]]``, and
          optionally ``num_dst[T]``: only the first ``num_dst[T]`` nodes of T are updated
          (every edge ends among them)
        - **output:** ``dict[T, [num_dst[T], hidden]]`` for every type that is the
          destination of some relation of the metadata
    """

    def forward(self, x_dict: dict[str, Tensor], edge_index_dict: dict,
                num_dst: dict[str, int] | None = None) -> dict[str, Tensor]:
        num_dst = num_dst or {}
        F, H = self.out_channels, self.heads
        D = F // H
        kv, q = {}, {}
        for t, x in x_dict.items():
            lin = self.kqv_lin.lins[t]
            w, b = lin.weight, lin.bias  # rows: keys, queries, values
            kv[t] = torch.nn.functional.linear(
                x, torch.cat([w[:F], w[2 * F:]]), torch.cat([b[:F], b[2 * F:]])).view(-1, 2, H, D)
            if t in self.dst_node_types:
                q[t] = torch.nn.functional.linear(x[: num_dst.get(t, x.size(0))], w[F:2 * F],
                                                  b[F:2 * F]).view(-1, H, D)
        num_rel = len(self.edge_types)
        w_k = self.k_rel.weight.view(H, num_rel, D, D)
        w_v = self.v_rel.weight.view(H, num_rel, D, D)
        per_dst: dict[str, list] = {}
        for et, ei in edge_index_dict.items():
            r = self.edge_types_map[et]
            src, dst = ei
            # score = (q W_k^T) . k, per head
            qk = torch.einsum("nhe,hde->nhd", q[et[-1]], w_k[:, r])
            k_j = kv[et[0]][:, 0].index_select(0, src)
            score = (qk.index_select(0, dst) * k_j).sum(-1) * self.p_rel["__".join(et)]
            per_dst.setdefault(et[-1], []).append((r, et[0], src, dst, score / D ** 0.5))
        out = {}
        for t, h_q in q.items():
            n = h_q.size(0)
            m = h_q.new_zeros(n, H, D)
            rels = per_dst.get(t, [])
            if rels:
                index = torch.cat([dst for _, _, _, dst, _ in rels])
                alpha = softmax(torch.cat([s for *_, s in rels]), index, num_nodes=n)
                for (r, s, src, dst, _), a in zip(rels, alpha.split([d.numel() for _, _, _, d, _ in rels])):
                    msg = kv[s][:, 1].index_select(0, src) * a.unsqueeze(-1)
                    agg = msg.new_zeros(n, H, D).index_add_(0, dst, msg)
                    m = m + torch.einsum("nhd,hde->nhe", agg, w_v[:, r])
            a_t = self.out_lin.lins[t](torch.nn.functional.gelu(m.reshape(n, F)))
            x_t = x_dict[t][:n]
            if a_t.size(-1) == x_t.size(-1):
                beta = self.skip[t].sigmoid()
                a_t = beta * a_t + (1 - beta) * x_t
            out[t] = a_t
        return out


class HGT(nn.Module):
    r"""Heterogeneous Graph Transformer (Hu et al., 2020) over the sampled subgraph.

    .. math::
        \mathbf{h}^{(0)} = \mathrm{NodeEncoder}(\mathbf{x}), \qquad
        \mathbf{h}^{(l+1)}_T = \mathrm{LN}_T\big(\mathrm{Dropout}(
            \mathrm{HGTConv}^{(l)}(\mathbf{h}^{(l)})_T)\big)

    ``HGTConv`` computes, per relation :math:`r = (S, \cdot, T)` and head, attention
    :math:`\mathrm{softmax}_j(\mathbf{q}_i^\top W^{att}_r \mathbf{k}_j \, \mu_r /\sqrt{d})`
    over the sources :math:`j` of :math:`i`, aggregates relation-transformed values,
    and mixes the result with :math:`\mathbf{h}_i` through a learned sigmoid gate
    per type (its own skip connection).

    Args:
        feature_meta (dict): Per node type column counts (see :class:`NodeEncoder`).
        metadata (tuple[list[str], list[tuple[str, str, str]]]): Node and edge types.
        entity_type (str): The seeds' node type.
        hidden (int): Width, divisible by ``heads``.
        layers (int): Number of HGT layers (hops).
        heads (int): Attention heads.
        dropout (float): Dropout after each layer.
        norm (str): ``"layer"`` or ``"none"``.
        periods_days (tuple[float, ...]): Periods of the relative-time features.

    Their defaults are :class:`~pipeline.models.config.ModelConfig`'s (`from_config`).

    Shapes:
        - **input:** a sampled ``HeteroData`` batch with B seeds
        - **output:** :math:`[B, \text{hidden}]`
    """

    def __init__(
        self,
        feature_meta: dict,
        metadata: tuple[list[str], list[tuple[str, str, str]]],
        entity_type: str,
        hidden: int,
        layers: int,
        heads: int,
        dropout: float,
        norm: str,
        periods_days: tuple[float, ...],
    ):
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hgt: hidden ({hidden}) must be divisible by heads ({heads})")
        if layers < 1:
            raise ValueError(f"hgt: layers must be >= 1, got {layers}")
        node_types, edge_types = list(metadata[0]), [tuple(et) for et in metadata[1]]
        self.entity_type = entity_type
        self.edge_types = edge_types
        self.out_channels = hidden
        self.encoder = NodeEncoder(
            {t: feature_meta[t] for t in node_types}, hidden, entity_type, periods_days, edge_types
        )
        # HGTConv names torch modules after the types, and a table name may hold a dot,
        # which torch refuses: the convolutions see positional aliases n<i> and e<j>.
        self.node_alias = {t: f"n{i}" for i, t in enumerate(node_types)}
        self.edge_alias = {
            et: (self.node_alias[et[0]], f"e{j}", self.node_alias[et[2]])
            for j, et in enumerate(edge_types)
        }
        aliased = (list(self.node_alias.values()), list(self.edge_alias.values()))
        self.convs = nn.ModuleList(HGTLayer(hidden, hidden, aliased, heads=heads) for _ in range(layers))
        for conv in self.convs:
            # Redrawn, as the version that replaced these two modules after construction
            # did, so that a seed gives the same initial weights as it always has.
            conv.k_rel.reset_parameters()
            conv.v_rel.reset_parameters()
        self.norms = nn.ModuleList(
            ModuleDict(
                {t: nn.LayerNorm(hidden) if norm == "layer" else nn.Identity() for t in node_types}
            )
            for _ in range(layers)
        )
        self.dropout = nn.Dropout(dropout)
        self.trim = True  # off only to check that trimming changes nothing

    @classmethod
    def from_config(cls, feature_meta: dict, metadata, entity_type: str, c: ModelConfig) -> HGT:
        return cls(feature_meta, metadata, entity_type, c.hidden, c.layers, c.heads, c.dropout,
                   c.norm, c.time_periods_days)

    def forward(self, batch: HeteroData) -> Tensor:
        x_dict = self.encoder(batch)
        ei = edge_index_dict(batch, self.edge_types)
        # Layer i keeps only what a later layer reads (see mpnn.hop_plan): each layer's
        # output shrinks to the nodes of the hops still needed, and so does the next
        # layer's input.
        plan = hop_plan(batch, len(self.convs), ei) if self.trim else None
        alias = self.node_alias
        for i, (conv, norms) in enumerate(zip(self.convs, self.norms, strict=True)):
            num_dst, num_edges = plan[i] if plan is not None else ({}, {})
            layer_ei = {self.edge_alias[et]: e[:, : num_edges.get(et, e.size(1))] for et, e in ei.items()}
            out = conv({alias[t]: h for t, h in x_dict.items()}, layer_ei,
                       {alias[t]: n for t, n in num_dst.items()}) if layer_ei else {}
            x_dict = {
                t: norms[t](self.dropout(out[alias[t]]) if alias[t] in out
                            else h[: num_dst.get(t, h.size(0))])
                for t, h in x_dict.items()
            }
        return x_dict[self.entity_type][: num_seeds(batch, self.entity_type)]


# Seeds per attention call in RelationalGraphTransformer (grouped by subgraph size).
SEEDS_PER_LENGTH_GROUP = 64


class RelationalGraphTransformer(nn.Module):
    r"""Relational graph transformer: each seed attends over the nodes of its own
    sampled subgraph as a set of tokens.

    After RelGT (Dwivedi et al., 2025, "Relational Graph Transformer") and the
    graph transformers behind Kumo's relational models. The temporal sampler gives
    every seed :math:`s` a disjoint subgraph; its nodes become tokens

    .. math::
        \mathbf{t}_v = \mathrm{NodeEncoder}(\mathbf{x}_v, t_s - t_v)
            + \mathbf{e}^{type}_{\tau(v)} + \mathbf{e}^{hop}_{\mathrm{hop}(v)}
            + W^{struct} \log(1 + \mathbf{deg}_v)

    (features and time relative to the seed's cutoff, node type, hop distance from
    the seed, and in-degree per edge type on the sampled subgraph). Optionally
    ``local_layers`` rounds of :class:`HeteroMPLayer` (GraphSAGE) mix neighbours
    first. Tokens are grouped by seed (lowest hops first, at most ``max_tokens`` per
    seed, the seed itself first), padded, and a pre-norm transformer encoder with
    key-padding masks attends within each seed only. The seed's output token then
    attends to ``global_tokens`` learned vectors shared by every seed (RelGT's
    global module, a soft codebook of the whole graph):

    .. math::
        \mathbf{z}_s = \mathrm{Transformer}(\mathbf{t}_{s,1..L_s})_1, \qquad
        \text{out}_s = \mathrm{LN}\big(\mathbf{z}_s + \mathrm{MHA}(\mathbf{z}_s, G, G)\big)

    Args:
        feature_meta (dict): Per node type column counts (see :class:`NodeEncoder`).
        metadata (tuple[list[str], list[tuple[str, str, str]]]): Node and edge types.
        entity_type (str): The seeds' node type.
        hidden (int): Width, divisible by ``heads``.
        layers (int): Transformer encoder layers.
        heads (int): Attention heads.
        dropout (float): Dropout.
        max_tokens (int): Tokens kept per seed.
        global_tokens (int): Learned global tokens; 0 disables them.
        local_layers (int): Message-passing rounds before attention.
        max_hops (int): Hops beyond this share one embedding.
        act (str): ``"relu"`` or ``"gelu"``.
        periods_days (tuple[float, ...]): Periods of the relative-time features.

    Their defaults are :class:`~pipeline.models.config.ModelConfig`'s (`from_config`).

    Shapes:
        - **input:** a sampled ``HeteroData`` batch with B seeds (needs ``batch``
          and ``num_sampled_nodes`` on every node type)
        - **tokens:** :math:`[B, L, \text{hidden}]`, :math:`L = \min(\max_s L_s, \text{max\_tokens})`
        - **output:** :math:`[B, \text{hidden}]`
    """

    def __init__(
        self,
        feature_meta: dict,
        metadata: tuple[list[str], list[tuple[str, str, str]]],
        entity_type: str,
        hidden: int,
        layers: int,
        heads: int,
        dropout: float,
        max_tokens: int,
        global_tokens: int,
        local_layers: int,
        max_hops: int,
        act: str,
        periods_days: tuple[float, ...],
    ):
        super().__init__()
        if hidden % heads:
            raise ValueError(f"rgt: hidden ({hidden}) must be divisible by heads ({heads})")
        if layers < 1 or max_tokens < 1:
            raise ValueError(f"rgt: layers and max_tokens must be >= 1, got {layers} and {max_tokens}")
        node_types, edge_types = list(metadata[0]), [tuple(et) for et in metadata[1]]
        self.entity_type = entity_type
        self.node_types = node_types
        self.edge_types = edge_types
        self.max_tokens = max_tokens
        self.max_hops = max_hops
        self.out_channels = hidden
        self.encoder = NodeEncoder(
            {t: feature_meta[t] for t in node_types}, hidden, entity_type, periods_days, edge_types
        )
        self.type_emb = NodeTypeEmbedding(node_types, hidden)
        self.hop_emb = nn.Embedding(max_hops + 1, hidden)
        self.struct = nn.Linear(len(edge_types), hidden) if edge_types else None
        self.local = nn.ModuleList(
            HeteroMPLayer("sage", node_types, edge_types, hidden, "sum", "layer", dropout, act)
            for _ in range(local_layers)
        )
        layer = nn.TransformerEncoderLayer(
            hidden, heads, 2 * hidden, dropout, activation=act, batch_first=True, norm_first=True
        )
        # No dropout on the attention weights (dropout stays on the residual branches):
        # a dropout mask over every [L, L] score matrix cost a quarter of a training step.
        layer.self_attn.dropout = 0.0
        self.transformer = nn.TransformerEncoder(
            layer, layers, norm=nn.LayerNorm(hidden), enable_nested_tensor=False
        )
        if global_tokens:
            self.global_tokens = nn.Parameter(torch.randn(global_tokens, hidden) * 0.02)
            self.global_attn = nn.MultiheadAttention(hidden, heads, dropout=dropout, batch_first=True)
        else:
            self.global_tokens = None
            self.global_attn = None
        self.out_norm = nn.LayerNorm(hidden)

    def tokens(self, batch: HeteroData) -> tuple[Tensor, Tensor]:
        """Padded token matrix [B, L, hidden] and its validity mask [B, L]."""
        x_dict = self.type_emb(self.encoder(batch))
        present = [t for t in self.node_types if t in batch.node_types and batch[t].num_nodes]
        struct = (
            log_degree_features(batch, self.node_types, self.edge_types)
            if self.struct is not None
            else None
        )
        hops = {}
        for t in present:
            hops[t] = node_hops(batch, t)
            x_dict[t] = x_dict[t] + self.hop_emb(hops[t].clamp(max=self.max_hops))
            if struct is not None:
                x_dict[t] = x_dict[t] + self.struct(struct[t])
        ei = edge_index_dict(batch, self.edge_types)
        for layer in self.local:
            x_dict = layer(x_dict, ei)

        h = torch.cat([x_dict[t] for t in present])
        seed = torch.cat([batch[t].batch for t in present])
        hop = torch.cat([hops[t] for t in present]).clamp(max=self.max_hops)
        # Group by seed, lowest hop first; the stable sort keeps the sampler's order
        # within a hop, and hop 0 holds only the seed, so it becomes token 0.
        order = torch.sort(seed * (self.max_hops + 1) + hop, stable=True).indices
        seed = seed[order]
        b = num_seeds(batch, self.entity_type)
        longest = int(torch.bincount(seed, minlength=b).max())
        # to_dense_batch drops every token past max_num_nodes in each seed's group,
        # i.e. the highest hops: that is the cap.
        return to_dense_batch(h[order], seed, batch_size=b, max_num_nodes=min(longest, self.max_tokens))

    @classmethod
    def from_config(cls, feature_meta: dict, metadata, entity_type: str,
                    c: ModelConfig) -> RelationalGraphTransformer:
        return cls(feature_meta, metadata, entity_type, c.hidden, c.layers, c.heads, c.dropout,
                   c.max_tokens, c.global_tokens, c.local_layers, c.max_hops, c.act,
                   c.time_periods_days)

    def forward(self, batch: HeteroData) -> Tensor:
        tok, mask = self.tokens(batch)
        # Seeds' subgraphs differ a lot in size (on the e-commerce graph: median 25
        # tokens, longest 150), and attention costs L^2 per seed at the padded length L.
        # Seeds of similar length are therefore run together, each group padded only
        # to its own longest: the same result as one padded batch, at a fraction of it.
        lengths = mask.sum(1)
        order = torch.argsort(lengths, stable=True)
        parts = []
        for idx in order.split(SEEDS_PER_LENGTH_GROUP):
            width = max(int(lengths[idx].max()), 1)
            parts.append(self.transformer(tok[idx, :width], src_key_padding_mask=~mask[idx, :width])[:, 0])
        z = torch.cat(parts)[torch.argsort(order)] if parts else tok[:, 0]
        if self.global_tokens is not None:
            g = self.global_tokens.unsqueeze(0).expand(z.size(0), -1, -1)
            z = z + self.global_attn(z.unsqueeze(1), g, g, need_weights=False)[0].squeeze(1)
        return self.out_norm(z)
