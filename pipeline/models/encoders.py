"""Column-wise node encoders shared by every graph model.

A sampled batch carries, per node type, up to four feature blocks (see the graph
contract): ``x_num`` float32 [N, Fn], ``x_cat`` int64 [N, Fc], ``x_text`` float32
[N, Ft] and ``x_ts`` float64 [N, Fts] (epoch seconds, NaN where null), plus ``time``
int64 [N] for temporal tables. Every block is encoded into the same ``hidden``
space and the pieces are summed, so a block with zero columns simply contributes
nothing. Times are only ever seen relative to the cutoff of the seed a node was
sampled for, which keeps the models independent of the absolute date.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch_geometric.data import HeteroData
# PyG's ModuleDict accepts any table name as a key (torch's rejects names with a dot).
from torch_geometric.nn.module_dict import ModuleDict

SECONDS_PER_DAY = 86_400.0
DEFAULT_PERIODS_DAYS: tuple[float, ...] = (1.0, 7.0, 30.4375, 365.25)
# A type's categoricals up to this many codes in all enter the encoder's one product as
# code counts; beyond it, [N, codes] counts would cost more than embedding lookups.
ONE_HOT_MAX_CODES = 256


def seed_time_per_node(batch: HeteroData, node_type: str, entity_type: str) -> Tensor:
    """The cutoff of the seed every node of ``node_type`` was sampled for.

    Returns:
        int64 [N_T]: ``batch[entity_type].seed_time[batch[node_type].batch]``.
    """
    store = batch[entity_type]
    if "seed_time" not in store:
        raise ValueError(
            f"batch[{entity_type!r}] has no 'seed_time': the models need the seed cutoffs "
            "that the temporal sampler attaches (NodeLoader(..., input_time=cutoffs))"
        )
    if "batch" not in batch[node_type]:
        raise ValueError(
            f"batch[{node_type!r}] has no 'batch' vector: the models need disjoint sampling "
            "(each node tagged with the index of its seed)"
        )
    return store.seed_time[batch[node_type].batch]


class RelativeTimeEncoder(nn.Module):
    r"""Encodes a time difference :math:`\Delta` (seconds, seed cutoff minus event time).

    .. math::
        \phi(\Delta) = W \big[\, \mathrm{sign}(d)\log(1 + |d|),\;
        \sin(2\pi d / P_k),\; \cos(2\pi d / P_k)\ (k = 1..K),\; m \,\big] + b,
        \qquad d = \Delta / 86400

    where :math:`m = 1` marks a missing (NaN) difference, whose other features are 0.
    The phase :math:`(d \bmod P_k)/P_k` is taken in float64, because epoch seconds
    (about :math:`1.7 \cdot 10^9`) leave float32 a resolution of minutes.

    Args:
        hidden (int): Output size.
        periods_days (tuple[float, ...], optional): The periods :math:`P_k` in days.
            (default: ``(1.0, 7.0, 30.4375, 365.25)``)

    Shapes:
        - **input:** float64 :math:`[*]` differences in seconds (NaN allowed)
        - **output:** :math:`[*, \text{hidden}]`
    """

    def __init__(self, hidden: int, periods_days: tuple[float, ...] = DEFAULT_PERIODS_DAYS):
        super().__init__()
        self.hidden = hidden
        self.register_buffer("periods", torch.tensor(periods_days, dtype=torch.float64), persistent=False)
        self.num_features = 2 + 2 * len(periods_days)
        self.lin = nn.Linear(self.num_features, hidden)

    def reset_parameters(self) -> None:
        self.lin.reset_parameters()

    def features(self, delta_seconds: Tensor) -> Tensor:
        """Raw float32 features [*, num_features] before the projection."""
        days = delta_seconds.double() / SECONDS_PER_DAY
        missing = torch.isnan(days)
        days = torch.where(missing, torch.zeros_like(days), days)
        log_days = torch.sign(days) * torch.log1p(days.abs())
        phase = torch.remainder(days.unsqueeze(-1), self.periods) / self.periods
        angle = (2.0 * math.pi) * phase
        feats = torch.cat(
            [
                log_days.unsqueeze(-1),
                torch.sin(angle),
                torch.cos(angle),
                missing.unsqueeze(-1).double(),
            ],
            dim=-1,
        )
        return feats.float()

    def forward(self, delta_seconds: Tensor) -> Tensor:
        return self.lin(self.features(delta_seconds))

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.hidden}, periods={self.periods.tolist()})"


class NodeTypeEmbedding(nn.Module):
    r"""A learned vector per node type, added to every node of that type.

    .. math::
        \mathbf{x}'_v = \mathbf{x}_v + \mathbf{e}_{\tau(v)}

    Args:
        node_types (list[str]): The node types, in a fixed order.
        hidden (int): Embedding size.

    Shapes:
        - **input:** ``dict[T, [N_T, hidden]]``
        - **output:** ``dict[T, [N_T, hidden]]``
    """

    def __init__(self, node_types: list[str], hidden: int):
        super().__init__()
        self.index = {t: i for i, t in enumerate(node_types)}
        self.emb = nn.Embedding(len(node_types), hidden)

    def reset_parameters(self) -> None:
        self.emb.reset_parameters()

    def forward(self, x_dict: dict[str, Tensor]) -> dict[str, Tensor]:
        return {t: x + self.emb.weight[self.index[t]] for t, x in x_dict.items()}

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({len(self.index)}, {self.emb.embedding_dim})"


class _TypeEncoder(nn.Module):
    """Encodes the feature blocks of one node type; see :class:`NodeEncoder`."""

    def __init__(self, node_type: str, meta: dict, hidden: int, periods_days: tuple[float, ...],
                 degree_cols: int = 0):
        super().__init__()
        self.node_type = node_type
        self.num_cols = int(meta.get("num", 0))
        cards = [int(c) for c in meta.get("cat", [])]
        self.text_cols = int(meta.get("text", 0))
        self.ts_cols = int(meta.get("ts", 0))
        self.temporal = bool(meta.get("temporal", False))
        if any(c < 1 for c in cards):
            raise ValueError(f"feature_meta[{node_type!r}]['cat']: cardinalities must be >= 1, got {cards}")

        self.num = nn.Linear(self.num_cols, hidden) if self.num_cols else None
        self.cards = cards
        if cards:
            # One table for all columns, each column's codes shifted into its own
            # slice, so a type's categoricals cost a single lookup.
            offsets = torch.tensor([0] + cards[:-1], dtype=torch.long).cumsum(0)
            self.register_buffer("cat_offsets", offsets, persistent=False)
            self.register_buffer("cat_cards", torch.tensor(cards, dtype=torch.long), persistent=False)
            self.cat = nn.Embedding(sum(cards), hidden)
        else:
            self.cat = None
        self.text = nn.Linear(self.text_cols, hidden) if self.text_cols else None
        if self.ts_cols:
            self.ts_time = RelativeTimeEncoder(hidden, periods_days)
            self.ts = nn.Linear(self.ts_cols * self.ts_time.num_features, hidden)
        else:
            self.ts_time = None
            self.ts = None
        self.degree = nn.Linear(degree_cols, hidden) if degree_cols else None
        # A static row has no age; it gets its own learned vector in place of one.
        self.static = None if self.temporal else nn.Parameter(torch.zeros(hidden))
        self.norm = nn.LayerNorm(hidden)

    def reset_parameters(self) -> None:
        for m in (self.num, self.cat, self.text, self.ts, self.degree, self.norm):
            if m is not None:
                m.reset_parameters()
        if self.static is not None:
            nn.init.normal_(self.static, std=0.02)

    def check_widths(self, store) -> None:
        """Fail with the table's name when the batch and feature_meta disagree."""
        widths = {
            "x_num": self.num_cols,
            "x_cat": len(self.cards),
            "x_text": self.text_cols,
            "x_ts": self.ts_cols,
        }
        for key, width in widths.items():
            if width and key not in store:
                raise ValueError(
                    f"{self.node_type}: feature_meta declares {width} {key} columns "
                    f"but the batch has no {key}"
                )
            if width and store[key].size(-1) != width:
                raise ValueError(
                    f"{self.node_type}.{key} has {store[key].size(-1)} columns "
                    f"but feature_meta declares {width}"
                )

    def forward(self, store, node_seed_time: Tensor, time_enc: RelativeTimeEncoder) -> Tensor:
        self.check_widths(store)
        # The blocks' linear maps are applied as one: [x_1 | x_2 | ...] times
        # [W_1 | W_2 | ...] plus the summed biases. Same parameters, same sum; but the
        # backward pass reads the [N, hidden] gradient once instead of once per block, and
        # those skinny weight-gradient products dominated the encoder's time.
        inputs, weights, biases = [], [], []

        def block(x: Tensor, lin: nn.Linear) -> None:
            inputs.append(x)
            weights.append(lin.weight)
            biases.append(lin.bias)

        if self.num is not None:
            block(store.x_num, self.num)
        if self.text is not None:
            block(store.x_text, self.text)
        if self.ts is not None:
            delta = node_seed_time.double().unsqueeze(1) - store.x_ts.double()
            block(self.ts_time.features(delta).flatten(1), self.ts)
        if self.degree is not None and "degree" in store:
            block(torch.log1p(store.degree.float()), self.degree)
        if self.temporal:
            if "time" not in store:
                raise ValueError(
                    f"node type {self.node_type!r} is marked temporal but the batch has no 'time'"
                )
            block(time_enc.features(node_seed_time - store.time), time_enc.lin)
        codes = None
        if self.cat is not None:
            codes = store.x_cat
            bad = (codes < 0) | (codes >= self.cat_cards)
            if bool(bad.any()):
                col = int(bad.any(0).nonzero()[0])
                raise ValueError(
                    f"{self.node_type}.x_cat column {col}: codes outside 0..{self.cards[col] - 1} "
                    f"(max seen {int(codes[:, col].max())}); feature_meta and the graph disagree"
                )
            codes = codes + self.cat_offsets
            if self.cat.num_embeddings <= ONE_HOT_MAX_CODES:
                # sum_c E[code_c] = counts @ E, the counts of each code in the row: one more
                # block of the product, whose backward beats the embedding's (5 ms a batch)
                counts = torch.zeros(codes.size(0), self.cat.num_embeddings, device=codes.device)
                inputs.append(counts.scatter_add_(1, codes, torch.ones(codes.shape, device=codes.device)))
                weights.append(self.cat.weight.t())
                codes = None
        if inputs:
            out = nn.functional.linear(torch.cat(inputs, dim=1), torch.cat(weights, dim=1),
                                       sum(biases) if biases else None)
        else:
            out = torch.zeros(node_seed_time.numel(), self.norm.normalized_shape[0],
                              device=node_seed_time.device)
        if codes is not None:  # too many codes for counts: look them up
            out = out + self.cat(codes).sum(dim=1)
        if not self.temporal:
            out = out + self.static
        return self.norm(out)


class NodeEncoder(nn.Module):
    r"""Encodes every node type's raw columns into one ``hidden``-sized vector.

    For a node :math:`v` of type :math:`T` sampled for a seed with cutoff :math:`t_s`:

    .. math::
        \mathbf{h}_v = \mathrm{LN}_T\Big( W^{num}_T \mathbf{x}^{num}_v
            + \sum_{c} E_{T,c}[x^{cat}_{v,c}]
            + W^{text}_T \mathbf{x}^{text}_v
            + W^{ts}_T [\phi(t_s - x^{ts}_{v,1}), \dots]
            + W^{deg}_T \log(1 + \mathbf{d}_v)
            + \begin{cases} \phi_{node}(t_s - t_v) & T \text{ temporal} \\
                            \mathbf{s}_T & T \text{ static} \end{cases} \Big)

    with :math:`\phi` the :class:`RelativeTimeEncoder` and :math:`\mathbf{s}_T` a
    learned static vector. :math:`\mathbf{d}_v` counts, per edge type ending at
    :math:`T`, the node's neighbours as of the seed's cutoff (the sampler's
    ``degree``): how many orders a customer had placed, how many returns a product
    had seen by then, however few of them the fanout kept. Blocks with zero columns
    (or a batch without ``degree``, as pyg-lib's sampler makes) are skipped. Categorical
    code 0 (null / out of vocabulary) has its own embedding row.

    Args:
        feature_meta (dict): ``{T: {"num": Fn, "cat": [card, ...], "text": Ft,
            "ts": Fts, "temporal": bool}}`` as produced with the graph.
        hidden (int): Output size.
        entity_type (str, optional): The seeds' node type, which holds ``seed_time``;
            ``None`` finds it in each batch as the one type that has ``seed_time``.
            (default: ``None``)
        periods_days (tuple[float, ...], optional): Periods of the sinusoidal time
            features. (default: ``(1.0, 7.0, 30.4375, 365.25)``)
        edge_types (list[tuple[str, str, str]], optional): The graph's edge types, in
            ``data.edge_types`` order; they size :math:`W^{deg}_T`. (default: none)

    Shapes:
        - **input:** a sampled ``HeteroData`` batch
        - **output:** ``dict[T, [N_T, hidden]]`` for every type of ``feature_meta``
          (``[0, hidden]`` for a type absent from the batch)
    """

    def __init__(
        self,
        feature_meta: dict,
        hidden: int,
        entity_type: str | None = None,
        periods_days: tuple[float, ...] = DEFAULT_PERIODS_DAYS,
        edge_types: list[tuple[str, str, str]] = (),
    ):
        super().__init__()
        if entity_type is not None and entity_type not in feature_meta:
            raise ValueError(
                f"entity type {entity_type!r} is not a node type of the graph "
                f"(node types: {sorted(feature_meta)})"
            )
        self.hidden = hidden
        self.entity_type = entity_type
        self.node_types = list(feature_meta)
        self.encoders = ModuleDict(
            {t: _TypeEncoder(t, feature_meta[t], hidden, periods_days,
                             sum(et[2] == t for et in edge_types)) for t in self.node_types}
        )
        self.time = RelativeTimeEncoder(hidden, periods_days)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for enc in self.encoders.values():
            enc.reset_parameters()
        self.time.reset_parameters()

    @staticmethod
    def _seed_type(batch: HeteroData) -> str:
        holders = [t for t in batch.node_types if "seed_time" in batch[t]]
        if len(holders) != 1:
            raise ValueError(
                f"cannot tell the seeds' node type: {len(holders)} node types carry 'seed_time' "
                f"({holders}); pass entity_type to NodeEncoder"
            )
        return holders[0]

    def forward(self, batch: HeteroData) -> dict[str, Tensor]:
        device = self.time.lin.weight.device
        entity = self.entity_type or self._seed_type(batch)
        out = {}
        for t, enc in self.encoders.items():
            if t in batch.node_types and batch[t].num_nodes:
                out[t] = enc(batch[t], seed_time_per_node(batch, t, entity), self.time)
            else:
                out[t] = torch.zeros(0, self.hidden, device=device)
        return out

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({len(self.node_types)} node types, {self.hidden})"
