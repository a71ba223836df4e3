"""Message-passing GNNs (GCN, GraphSAGE, GAT, GIN) on the heterogeneous graph.

Every edge type (one per foreign key and direction) gets its own convolution; the
messages reaching a destination type from all its edge types are combined (sum or
mean), then each node applies the residual update of :class:`HeteroMPLayer`. One
layer is one hop: stacking L layers lets a seed see its L-hop relational
neighbourhood (customer <- orders <- products).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch_geometric.data import HeteroData
# PyG's ModuleDict accepts any table name as a key (torch's rejects names with a dot).
from torch_geometric.nn.module_dict import ModuleDict
from torch_geometric.nn import GATConv, GINConv, HeteroConv, MessagePassing, SAGEConv
from torch_geometric.utils import degree, scatter

from pipeline.models.config import ModelConfig
from pipeline.models.encoders import NodeEncoder

MPNN_KINDS = ("gcn", "sage", "gat", "gin")
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU}


def num_seeds(batch: HeteroData, entity_type: str) -> int:
    """B, the number of seeds: the first B nodes of the entity type are the seeds."""
    store = batch[entity_type]
    if "batch_size" in store:
        return int(store.batch_size)
    if "seed_time" in store:
        return int(store.seed_time.numel())
    raise ValueError(
        f"batch[{entity_type!r}] has neither 'batch_size' nor 'seed_time'; is it a sampled batch?"
    )


def edge_index_dict(batch: HeteroData, edge_types: list[tuple[str, str, str]]) -> dict:
    """The local edge indices of the model's edge types that this batch holds."""
    present = set(batch.edge_types)
    return {et: batch[et].edge_index for et in edge_types if et in present}


def hop_plan(batch: HeteroData, layers: int, edge_index: dict) -> list | None:
    r"""Per layer, how many nodes of each type to update and edges of each type to use.

    The sampler lays nodes out hop by hop (``num_sampled_nodes[T][h]`` nodes of hop h)
    and edges by the hop of their destination (``num_sampled_edges[r][h]``). With L
    layers, layer :math:`i` (from 0) only needs new states for the nodes of hops
    :math:`\le L-1-i`, since no later layer reads the others; those nodes' incoming
    edges are the edges of hops :math:`\le L-1-i`. Keeping exactly these is the same
    computation for the seeds as updating every node (PyG calls this trimming), and the
    outer hops, which hold most of the nodes, are only read, never updated.

    Returns ``[(num_dst per type, num_edges per edge type)] * layers``, or ``None``
    when the batch does not record its hops (a batch not made by the sampler).
    """
    counts = {}
    for t in batch.node_types:
        per_hop = batch[t].get("num_sampled_nodes")
        if per_hop is None:
            return None
        counts[t] = torch.as_tensor(per_hop).cumsum(0).tolist()
    edge_counts = {}
    for et in edge_index:
        per_hop = batch[et].get("num_sampled_edges")
        if per_hop is None:
            return None
        edge_counts[et] = torch.as_tensor(per_hop).cumsum(0).tolist()
    plan = []
    for i in range(layers):
        keep = layers - 1 - i  # the deepest hop whose states are still needed
        num_dst = {t: c[min(keep, len(c) - 1)] for t, c in counts.items()}
        num_edges = {et: (c[min(keep, len(c) - 1)] if c else 0) for et, c in edge_counts.items()}
        plan.append((num_dst, num_edges))
    return plan


class BipartiteGCNConv(MessagePassing):
    r"""Graph convolution with symmetric degree normalization on one edge type,
    which may join two different node types (Kipf & Welling, 2017).

    .. math::
        \mathbf{x}'_i = \sum_{j \in \mathcal{N}(i)}
            \frac{1}{\sqrt{d^{src}_j \, d^{dst}_i}} \, \mathbf{\Theta} \mathbf{x}_j
            + \mathbf{b}

    where :math:`d^{src}_j` is the number of edges leaving source :math:`j` and
    :math:`d^{dst}_i` the number of edges reaching destination :math:`i`, both
    counted on this edge type. There are no self-loops (source and destination are
    different tables); the node's own state enters through the residual of
    :class:`HeteroMPLayer`. A node with no neighbours receives :math:`\mathbf{b}`.

    Args:
        in_channels (int): Size of each source node's features.
        out_channels (int): Size of each output.
        bias (bool, optional): Learn the additive bias :math:`\mathbf{b}`.
            (default: ``True``)

    Shapes:
        - **input:** source features :math:`[N_s, F_{in}]` or a pair
          ``(x_src [N_s, F_in], x_dst [N_d, *])``, edge index :math:`[2, E]`
        - **output:** :math:`[N_d, F_{out}]`
    """

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True):
        super().__init__(aggr="add")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.lin = nn.Linear(in_channels, out_channels, bias=False)
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        self.lin.reset_parameters()
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: Tensor | tuple[Tensor, Tensor], edge_index: Tensor) -> Tensor:
        x_src, x_dst = (x, x) if isinstance(x, Tensor) else x
        n_src, n_dst = x_src.size(0), x_dst.size(0)
        src, dst = edge_index
        # Every endpoint of an edge has degree >= 1, so the rsqrt is finite.
        norm = (
            degree(src, n_src, dtype=torch.float32)[src].rsqrt()
            * degree(dst, n_dst, dtype=torch.float32)[dst].rsqrt()
        )
        out = self.propagate(edge_index, x=(self.lin(x_src), None), norm=norm, size=(n_src, n_dst))
        return out if self.bias is None else out + self.bias

    def message(self, x_j: Tensor, norm: Tensor) -> Tensor:
        return norm.unsqueeze(-1) * x_j

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.in_channels}, {self.out_channels})"


def make_conv(
    kind: str, hidden: int, heads: int = 4, attn_dropout: float = 0.0, act: str = "relu"
) -> nn.Module:
    r"""One edge type's convolution for ``kind``, mapping ``hidden`` -> ``hidden``.

    - ``gcn``: :class:`BipartiteGCNConv`.
    - ``sage``: :math:`\mathbf{x}'_i = W_1 \mathbf{x}_i + W_2 \,\mathrm{mean}_{j \in
      \mathcal{N}(i)} \mathbf{x}_j` (PyG ``SAGEConv``, mean aggregation, root weight).
    - ``gat``: :math:`\mathbf{x}'_i = \Vert_{h} \sum_{j} \alpha^h_{ij} \Theta^h_s \mathbf{x}_j`,
      :math:`\alpha^h_{ij} = \mathrm{softmax}_j(\mathrm{LeakyReLU}_{0.2}(
      \mathbf{a}^{h\top}_s \Theta^h_s \mathbf{x}_j + \mathbf{a}^{h\top}_t \Theta^h_t \mathbf{x}_i))`
      (PyG ``GATConv``, ``heads`` heads of size hidden/heads, no self-loops since
      edge types are bipartite).
    - ``gin``: :math:`\mathbf{x}'_i = \mathrm{MLP}((1 + \epsilon)\mathbf{x}_i +
      \sum_{j} \mathbf{x}_j)` with a learned :math:`\epsilon` (PyG ``GINConv``).
    """
    if kind == "gcn":
        return BipartiteGCNConv(hidden, hidden)
    if kind == "sage":
        return SAGEConv((hidden, hidden), hidden, aggr="mean", root_weight=True)
    if kind == "gat":
        if hidden % heads:
            raise ValueError(f"gat: hidden ({hidden}) must be divisible by heads ({heads})")
        return GATConv(
            (hidden, hidden),
            hidden // heads,
            heads=heads,
            concat=True,
            add_self_loops=False,
            dropout=attn_dropout,
        )
    if kind == "gin":
        mlp = nn.Sequential(nn.Linear(hidden, hidden), ACTIVATIONS[act](), nn.Linear(hidden, hidden))
        return GINConv(mlp, train_eps=True)
    raise ValueError(f"unknown convolution {kind!r}; valid: {', '.join(MPNN_KINDS)}")


class HeteroMPLayer(nn.Module):
    r"""One hop of heterogeneous message passing with a residual update.

    .. math::
        \mathbf{m}_i = \mathop{\mathrm{AGG}}_{r = (S, \cdot, T)}
            \mathrm{conv}_r(\mathbf{h}_S, \mathbf{h}_T)_i, \qquad
        \mathbf{h}'_i = \mathrm{LN}_T\big(\mathbf{h}_i + \mathrm{Dropout}(\sigma(\mathbf{m}_i))\big)

    for node :math:`i` of type :math:`T`, where AGG is sum or mean over the edge
    types ending at :math:`T` that the batch holds. A type that receives no
    message has :math:`\mathbf{m}_i = 0`.

    Args:
        kind (str): ``"gcn"``, ``"sage"``, ``"gat"`` or ``"gin"`` (see :func:`make_conv`).
        node_types (list[str]): All node types.
        edge_types (list[tuple[str, str, str]]): All edge types.
        hidden (int): Feature size (input = output).
        aggr (str, optional): Across edge types: ``"sum"`` or ``"mean"``. (default: ``"sum"``)
        norm (str, optional): ``"layer"`` (LayerNorm per type) or ``"none"``. (default: ``"layer"``)
        dropout (float, optional): Dropout on the messages. (default: ``0.0``)
        act (str, optional): ``"relu"`` or ``"gelu"``. (default: ``"relu"``)
        heads (int, optional): Attention heads (``gat`` only). (default: ``4``)

    Shapes:
        - **input:** ``dict[T, [N_T, hidden]]`` (every type, possibly with 0 rows),
          ``dict[edge type, [2, E]]`` local edge indices
        - **output:** ``dict[T, [N_T, hidden]]``
    """

    def __init__(
        self,
        kind: str,
        node_types: list[str],
        edge_types: list[tuple[str, str, str]],
        hidden: int,
        aggr: str = "sum",
        norm: str = "layer",
        dropout: float = 0.0,
        act: str = "relu",
        heads: int = 4,
    ):
        super().__init__()
        if aggr not in ("sum", "mean"):
            raise ValueError(f"aggr must be 'sum' or 'mean', got {aggr!r}")
        if norm not in ("layer", "none"):
            raise ValueError(f"norm must be 'layer' or 'none', got {norm!r}")
        if act not in ACTIVATIONS:
            raise ValueError(f"act must be one of {sorted(ACTIVATIONS)}, got {act!r}")
        self.kind, self.aggr = kind, aggr
        # HeteroConv holds the per-edge-type convolutions; forward calls them itself so
        # that sources and destinations can be different slices of a type's nodes.
        self.conv = HeteroConv(
            {et: make_conv(kind, hidden, heads=heads, attn_dropout=dropout, act=act) for et in edge_types},
            aggr=aggr,
        )
        self.act = ACTIVATIONS[act]()
        self.dropout = nn.Dropout(dropout)
        self.norms = ModuleDict(
            {t: nn.LayerNorm(hidden) if norm == "layer" else nn.Identity() for t in node_types}
        )

    def reset_parameters(self) -> None:
        self.conv.reset_parameters()
        for n in self.norms.values():
            if isinstance(n, nn.LayerNorm):
                n.reset_parameters()

    def forward(self, x_dict: dict[str, Tensor], edge_index_dict: dict,
                num_dst: dict[str, int] | None = None) -> dict[str, Tensor]:
        """``num_dst[T]``: update only the first ``num_dst[T]`` nodes of type T (the
        others are only message sources) and return just those; every edge must end
        among them. A type it does not name, or ``None``, updates every node."""
        dst = x_dict if num_dst is None else {t: h[: num_dst.get(t, h.size(0))] for t, h in x_dict.items()}
        into: dict[str, list] = {}
        for et in edge_index_dict:
            into.setdefault(et[2], []).append(et)
        out = {}
        for t, h in dst.items():
            if t not in into:
                out[t] = self.norms[t](h)
                continue
            if self.kind == "sage":
                m = self._sage_sum(x_dict, h, edge_index_dict, into[t])
            else:
                m = torch.stack([self.conv.convs[et]((x_dict[et[0]], h), edge_index_dict[et])
                                 for et in into[t]]).sum(0)
            if self.aggr == "mean":
                m = m / len(into[t])
            out[t] = self.norms[t](h + self.dropout(self.act(m)))
        return out

    def _sage_sum(self, x_dict: dict[str, Tensor], h: Tensor, edge_index_dict: dict,
                  edge_types: list) -> Tensor:
        r"""Every SAGEConv into one type, summed, as one product:
        :math:`\sum_r W^r_l \bar{\mathbf{x}}^r_i + b^r_l + W^r_r \mathbf{x}_i
        = [\bar{\mathbf{x}}^1 | \dots | \bar{\mathbf{x}}^k | \mathbf{x}]
        [W^1_l | \dots | W^k_l | \sum_r W^r_r]^\top + \sum_r b^r_l`, with
        :math:`\bar{\mathbf{x}}^r_i` the mean of :math:`i`'s sources under relation
        :math:`r` (0 without any). The convolutions' own parameters, the same sum; one
        weight-gradient product per type instead of two per relation."""
        inputs, weights, bias, root = [], [], 0, 0
        for et in edge_types:
            conv = self.conv.convs[et]
            src, dst = edge_index_dict[et]
            inputs.append(scatter(x_dict[et[0]].index_select(0, src), dst, 0, h.size(0), reduce="mean"))
            weights.append(conv.lin_l.weight)
            bias = bias + conv.lin_l.bias
            root = root + conv.lin_r.weight
        return nn.functional.linear(torch.cat(inputs + [h], 1), torch.cat(weights + [root], 1), bias)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.kind}, {len(self.conv.convs)} edge types)"


class HeteroGNN(nn.Module):
    r"""Node encoder followed by ``layers`` rounds of :class:`HeteroMPLayer`.

    .. math::
        \mathbf{h}^{(0)} = \mathrm{NodeEncoder}(\mathbf{x}), \quad
        \mathbf{h}^{(l+1)} = \mathrm{HeteroMPLayer}^{(l)}(\mathbf{h}^{(l)}), \quad
        \text{out} = \mathbf{h}^{(L)}_{E}[:B]

    Args:
        kind (str): ``"gcn"``, ``"sage"``, ``"gat"`` or ``"gin"``.
        feature_meta (dict): Per node type column counts (see :class:`NodeEncoder`).
        metadata (tuple[list[str], list[tuple[str, str, str]]]): Node and edge types.
        entity_type (str): The seeds' node type.
        hidden (int): Width.
        layers (int): Message-passing rounds (hops).
        aggr, norm, dropout, act, heads: passed to :class:`HeteroMPLayer`.
        periods_days (tuple[float, ...]): Periods of the relative-time features.

    Their defaults are :class:`~pipeline.models.config.ModelConfig`'s (`from_config`).

    Shapes:
        - **input:** a sampled ``HeteroData`` batch with B seeds
        - **output:** :math:`[B, \text{hidden}]` seed embeddings
    """

    def __init__(
        self,
        kind: str,
        feature_meta: dict,
        metadata: tuple[list[str], list[tuple[str, str, str]]],
        entity_type: str,
        hidden: int,
        layers: int,
        aggr: str,
        norm: str,
        dropout: float,
        act: str,
        heads: int,
        periods_days: tuple[float, ...],
    ):
        super().__init__()
        if kind not in MPNN_KINDS:
            raise ValueError(f"unknown message-passing model {kind!r}; valid: {', '.join(MPNN_KINDS)}")
        if layers < 1:
            raise ValueError(f"{kind}: layers must be >= 1, got {layers}")
        node_types, edge_types = list(metadata[0]), [tuple(et) for et in metadata[1]]
        missing = sorted(set(node_types) - set(feature_meta))
        if missing:
            raise ValueError(f"feature_meta lacks node types {missing}")
        self.entity_type = entity_type
        self.edge_types = edge_types
        self.out_channels = hidden
        self.encoder = NodeEncoder(
            {t: feature_meta[t] for t in node_types}, hidden, entity_type, periods_days, edge_types
        )
        self.layers = nn.ModuleList(
            HeteroMPLayer(kind, node_types, edge_types, hidden, aggr, norm, dropout, act, heads)
            for _ in range(layers)
        )
        # Skip the work whose result cannot reach a seed (see hop_plan); off only to
        # check that it changes nothing.
        self.trim = True

    @classmethod
    def from_config(cls, kind: str, feature_meta: dict, metadata, entity_type: str,
                    c: ModelConfig) -> HeteroGNN:
        return cls(kind, feature_meta, metadata, entity_type, c.hidden, c.layers, c.aggr, c.norm,
                   c.dropout, c.act, c.heads, c.time_periods_days)

    def forward(self, batch: HeteroData) -> Tensor:
        x_dict = self.encoder(batch)
        ei = edge_index_dict(batch, self.edge_types)
        plan = hop_plan(batch, len(self.layers), ei) if self.trim else None
        for i, layer in enumerate(self.layers):
            if plan is None:
                x_dict = layer(x_dict, ei)
            else:
                num_dst, num_edges = plan[i]
                x_dict = layer(x_dict, {et: e[:, : num_edges[et]] for et, e in ei.items()}, num_dst)
        return x_dict[self.entity_type][: num_seeds(batch, self.entity_type)]
