"""The contract every model family keeps, and a row of the model table.

A family (graph models, LightGBM models, ...) knows how to fit one of its models on a
prepared task, run one search trial on the validation split, and score rows with a saved
checkpoint; its configuration is one dataclass whose fields and defaults the Launchpad,
`relgraph tune` and MLflow read. A `ModelEntry` is one model: a name, its family and
what sets it apart within the family. Tuning, tracking, the registry, scoring and the
Launchpad talk to the entry and its family only, never to a model name.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from pipeline.training.prepare import PreparedTask


@dataclass
class FitOutcome:
    """One seed of one model: what MLflow, the plots and the result file record."""

    params: dict[str, Any]
    val_metrics: dict[str, float]
    test_metrics: dict[str, float]
    history: list[dict]
    test_true: Any
    test_scores: np.ndarray
    checkpoint: str
    train_seeds_per_s: float = float("nan")


@dataclass
class TrialOutcome:
    """What one search trial measured on val: all of the task's metrics at the best
    epoch (or boosting round)."""

    val_metrics: dict[str, float]
    best_epoch: int
    history: list[dict]


@dataclass
class Attributions:
    """Why a model scored some rows as it did: additive contributions to its raw output
    (log-odds for binary, the value for regression), one long table.

    `frame` columns: `row` (index into the explained rows), `path` (the tables walked from
    the entity to the row the input belongs to, " / "-joined; "" for the entity's own row),
    `table` and `column` (what the input is about; pseudo-columns `(rows)`: how many rows
    the path reaches, `(age)`: how old the row is at the cutoff, `(recency)`: days since
    the path's latest row), `aggregate` (LightGBM: count, sum, mean, max, distinct, value;
    graph models: ""), `window_days` (null: all history), `node_table` and `node` (graph
    models: the neighbouring row, by `__id`, whose encoder input it is; null otherwise),
    and `value` (LightGBM adds `feature`, the feature's own name). `scores` are the raw
    outputs explained and `base` what the rows would get from a reference input
    (LightGBM's expected value; for a graph model, every node's inputs at the average
    row's): `base + sum(value)` is `scores` exactly (LightGBM) or up to the
    integration error (graph models).
    """

    frame: object  # polars.DataFrame
    scores: np.ndarray
    base: np.ndarray
    method: str


@dataclass(frozen=True)
class LaunchpadField:
    """One Launchpad setting: its name there, its type, its default, and the config
    field it sets."""

    name: str
    type: Any
    default: Any
    field: str


@dataclass(frozen=True)
class ModelEntry:
    """One model of the table.

    name: what users type (`--models`, MLflow's `model` param, asset keys).
    family: how it is fitted, tuned, saved and scored.
    build: graph models: (feature_meta, metadata, entity_type, ModelConfig) -> module
        mapping a sampled batch to seed embeddings [B, hidden].
    space: searched by `relgraph tune` besides the family's own space.
    flat: LightGBM: the entity's own row only (RelBench's single-table baseline).
    """

    name: str
    family: ModelFamily
    build: Callable | None = None
    space: dict = field(default_factory=dict)
    flat: bool = False

    def default_config(self):
        return self.family.default_config(self)


class ModelFamily:
    """What a family of models does; one instance per family (see `pipeline.training.zoo`).

    Attributes:
        name: the family's name.
        asset_kind: the Dagster asset kind its models' assets show (the UI's icon).
        config_class: the dataclass holding every setting of its models, defaults included.
        launchpad_prefix: prefix of its settings on the Launchpad ("" for none).
        launchpad_skip: config fields the Launchpad does not set (the run's seed, the
            machine's device or thread count).
        launchpad_names: Launchpad names that differ from prefix + field name.
        needs_graph: whether fitting and scoring read the graph.
    """

    name: str
    asset_kind: str
    config_class: type
    launchpad_prefix: str = ""
    launchpad_skip: tuple[str, ...] = ("seed",)
    launchpad_names: dict[str, str] = {}
    needs_graph: bool = False

    # -- configuration ----------------------------------------------------------------
    def default_config(self, entry: ModelEntry):
        return self.config_class()

    def launchpad_fields(self) -> list[LaunchpadField]:
        """The settings of this family's config as Launchpad fields (lists for tuples)."""
        hints = typing.get_type_hints(self.config_class)
        defaults = self.config_class()
        out = []
        for f in dataclasses.fields(self.config_class):
            if f.name in self.launchpad_skip:
                continue
            kind, default = hints[f.name], getattr(defaults, f.name)
            if typing.get_origin(kind) is tuple:
                kind, default = list[typing.get_args(kind)[0]], list(default)
            name = self.launchpad_names.get(f.name, self.launchpad_prefix + f.name)
            out.append(LaunchpadField(name, kind, default, f.name))
        return out

    def config_from_launchpad(self, entry: ModelEntry, values: dict[str, Any], seed: int,
                              device: str):
        """The entry's config with the Launchpad's `values` (by Launchpad name) set."""
        set_ = {f.field: values[f.name] for f in self.launchpad_fields() if f.name in values}
        return dataclasses.replace(self.default_config(entry), **set_, seed=seed)

    def search_space(self, entry: ModelEntry) -> dict:
        """What `relgraph tune` searches (names are config fields unless the family says)."""
        raise NotImplementedError

    def trial_config(self, entry: ModelEntry, base, params: dict):
        """`base` with the searched `params` set."""
        return dataclasses.replace(base, **params)

    def base_params(self, entry: ModelEntry, base, space: dict) -> dict:
        """The point of `space` that is `base` (a search's trial 0)."""
        return {name: getattr(base, name) for name in space}

    def log_params(self, config) -> dict[str, Any]:
        """The configuration as MLflow params."""
        return dataclasses.asdict(config)

    # -- fitting and scoring ------------------------------------------------------------
    def fit(self, entry: ModelEntry, config, prep: PreparedTask, checkpoint_dir: Path, *,
            progress: bool, log: Callable[[str], None]) -> FitOutcome:
        """Train on split train, choose on val, score val and test; save a checkpoint
        under `checkpoint_dir`."""
        raise NotImplementedError

    def trial(self, entry: ModelEntry, config, prep: PreparedTask, workdir: Path) -> TrialOutcome:
        """One search trial: train on train, choose and score on val; test is never read."""
        raise NotImplementedError

    def score_live(self, entry: ModelEntry, prep: PreparedTask, checkpoint: str | Path,
                   device: str) -> np.ndarray:
        """Raw scores of the task's live entities (`task_<task>_live`, by entity id)."""
        raise NotImplementedError

    def score_rows(self, entry: ModelEntry, con, spec, task, graph, checkpoint: Path,
                   meta: dict, entity: np.ndarray, cutoff: np.ndarray,
                   device: str) -> np.ndarray:
        """Raw scores of arbitrary (entity, cutoff) rows, in input order; the rows are
        also in the temp table `_score_rows(__row, __entity_id, cutoff)` of `con`.
        `graph` is the graph as of the model's encoder fit cutoff (None for families that
        need none); `meta` is what the registry stored beside the checkpoint."""
        raise NotImplementedError

    def explain(self, entry: ModelEntry, prep: PreparedTask, checkpoint: str | Path,
                entity: np.ndarray, cutoff: np.ndarray, device: str = "cpu") -> Attributions:
        """Attributions of the rows (entity `__id`s, cutoffs in epoch seconds) to the
        tables, columns, paths and neighbouring rows they read (see `Attributions`)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"ModelFamily({self.name})"
