"""The graph models' architecture settings: one dataclass, every default written once."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.models.encoders import DEFAULT_PERIODS_DAYS


@dataclass
class ModelConfig:
    """The architecture of a graph model; each model reads the fields it uses. Every
    default of a graph model is written here once (the trainer's TrainConfig extends it).

    hidden: width of every embedding. layers: message-passing / HGT layers (hops),
    or transformer layers for rgt. heads: attention heads (gat, hgt, rgt).
    aggr: how messages from different edge types combine (sum | mean).
    norm: layer | none. act: relu | gelu. max_tokens, global_tokens,
    local_layers, max_hops: rgt only (see RelationalGraphTransformer).
    time_periods_days: periods of the sinusoidal relative-time features.
    """

    hidden: int = 64
    layers: int = 3                # customer <- orders <- items <- products (with their degrees)
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
        self.time_periods_days = tuple(self.time_periods_days)  # JSON and the Launchpad give lists
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
