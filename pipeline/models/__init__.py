"""Graph models: a typed config and one entry point, :func:`build_model`.

Every model maps a sampled ``HeteroData`` batch to the seed embeddings
``[B, hidden]`` (the first ``batch_size`` nodes of the entity type); a
:class:`~pipeline.models.heads.TaskHead` turns those into predictions.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from pipeline.models.encoders import DEFAULT_PERIODS_DAYS, NodeEncoder, RelativeTimeEncoder
from pipeline.models.heads import TaskHead
from pipeline.models.mpnn import MPNN_KINDS, HeteroGNN
from pipeline.models.transformer import HGT, RelationalGraphTransformer

GNN_MODELS = ("gcn", "sage", "gat", "gin", "hgt", "rgt")


@dataclass
class ModelConfig:
    """Hyper-parameters shared by the graph models; each model reads the fields it uses.

    hidden: width of every embedding. layers: message-passing / HGT layers (hops),
    or transformer layers for rgt. heads: attention heads (gat, hgt, rgt).
    aggr: how messages from different edge types combine (sum | mean).
    norm: layer | none. act: relu | gelu. max_tokens, global_tokens,
    local_layers, max_hops: rgt only (see RelationalGraphTransformer).
    time_periods_days: periods of the sinusoidal relative-time features.
    """

    hidden: int = 64
    layers: int = 2
    dropout: float = 0.1
    heads: int = 4
    aggr: str = "sum"
    norm: str = "layer"
    act: str = "relu"
    max_tokens: int = 64
    global_tokens: int = 4
    local_layers: int = 1
    max_hops: int = 8
    time_periods_days: tuple[float, ...] = DEFAULT_PERIODS_DAYS

    def __post_init__(self) -> None:
        if self.hidden < 1 or self.layers < 1 or self.heads < 1:
            raise ValueError(
                f"ModelConfig: hidden, layers and heads must be >= 1 "
                f"(got hidden={self.hidden}, layers={self.layers}, heads={self.heads})"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"ModelConfig: dropout must be in [0, 1), got {self.dropout}")
        if self.aggr not in ("sum", "mean"):
            raise ValueError(f"ModelConfig: aggr must be 'sum' or 'mean', got {self.aggr!r}")
        if self.norm not in ("layer", "none"):
            raise ValueError(f"ModelConfig: norm must be 'layer' or 'none', got {self.norm!r}")
        if self.act not in ("relu", "gelu"):
            raise ValueError(f"ModelConfig: act must be 'relu' or 'gelu', got {self.act!r}")
        if self.max_tokens < 1 or self.global_tokens < 0 or self.local_layers < 0 or self.max_hops < 0:
            raise ValueError(
                "ModelConfig: need max_tokens >= 1 and global_tokens, local_layers, max_hops >= 0 "
                f"(got {self.max_tokens}, {self.global_tokens}, {self.local_layers}, {self.max_hops})"
            )


def build_model(
    name: str,
    feature_meta: dict,
    metadata: tuple[list[str], list[tuple[str, str, str]]],
    entity_type: str,
    config: ModelConfig | None = None,
) -> nn.Module:
    """The graph model ``name`` (one of :data:`GNN_MODELS`) for a graph's schema.

    ``forward(batch: HeteroData) -> Tensor[B, config.hidden]``; the module's
    ``out_channels`` is ``config.hidden``.
    """
    config = config or ModelConfig()
    node_types = list(metadata[0])
    if entity_type not in node_types:
        raise ValueError(
            f"entity type {entity_type!r} is not a node type of the graph (node types: {node_types})"
        )
    missing = [t for t in node_types if t not in feature_meta]
    if missing:
        raise ValueError(f"feature_meta has no entry for node types {missing}")
    c = config
    if name in MPNN_KINDS:
        return HeteroGNN(
            name,
            feature_meta,
            metadata,
            entity_type,
            c.hidden,
            c.layers,
            c.aggr,
            c.norm,
            c.dropout,
            c.act,
            c.heads,
            c.time_periods_days,
        )
    if name == "hgt":
        return HGT(
            feature_meta,
            metadata,
            entity_type,
            c.hidden,
            c.layers,
            c.heads,
            c.dropout,
            c.norm,
            c.time_periods_days,
        )
    if name == "rgt":
        return RelationalGraphTransformer(
            feature_meta,
            metadata,
            entity_type,
            c.hidden,
            c.layers,
            c.heads,
            c.dropout,
            c.max_tokens,
            c.global_tokens,
            c.local_layers,
            c.max_hops,
            c.act,
            c.time_periods_days,
        )
    raise ValueError(f"unknown model {name!r}; valid: {', '.join(GNN_MODELS)}")


__all__ = [
    "GNN_MODELS",
    "ModelConfig",
    "build_model",
    "NodeEncoder",
    "RelativeTimeEncoder",
    "TaskHead",
]
