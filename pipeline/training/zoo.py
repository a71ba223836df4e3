"""The model table: every model relgraph can train, one row each.

A row (`ModelEntry`) names the model, its family (how it is configured, fitted, tuned,
saved and scored: pipeline/training/family.py) and what sets it apart in the family: for
a graph model the function that builds it from a `ModelConfig`, and what `relgraph tune`
searches besides the family's space. The Launchpad, `relgraph run --models`, the
experiment runner, the tuner, the registry, batch predictions and the benchmarks read
this table; nothing else branches on a model's name or family.

Adding a graph model: write its module (a class with ``forward(batch) -> [B, hidden]``
and a builder taking ``(feature_meta, metadata, entity_type, config)``) and add one row
below. Models outside the package: list Python files in ``RELGRAPH_MODEL_PLUGINS``
(separated by ``os.pathsep``); each defines ``MODELS``, a list of `ModelEntry` rows that
are appended to the table.
"""

from __future__ import annotations

import importlib.util
import os
from functools import partial
from pathlib import Path

from optuna.distributions import IntDistribution

from pipeline.models.mpnn import HeteroGNN
from pipeline.models.transformer import HGT, RelationalGraphTransformer
from pipeline.training.family import ModelEntry
from pipeline.training.gbdt_family import GBDT
from pipeline.training.graph_family import ATTENTION_SPACE, GRAPH
from pipeline.training.trainer import Trainer

PLUGINS_ENV = "RELGRAPH_MODEL_PLUGINS"

_BUILT_IN = (
    ModelEntry("gcn", GRAPH, build=partial(HeteroGNN.from_config, "gcn")),
    ModelEntry("sage", GRAPH, build=partial(HeteroGNN.from_config, "sage")),
    ModelEntry("gat", GRAPH, build=partial(HeteroGNN.from_config, "gat"), space=ATTENTION_SPACE),
    ModelEntry("gin", GRAPH, build=partial(HeteroGNN.from_config, "gin")),
    ModelEntry("hgt", GRAPH, build=HGT.from_config, space=ATTENTION_SPACE),
    ModelEntry("rgt", GRAPH, build=RelationalGraphTransformer.from_config, space=ATTENTION_SPACE),
    # How far `lightgbm`'s aggregates reach: its counterpart of a graph model's depth.
    ModelEntry("lightgbm", GBDT, space={"max_hops": IntDistribution(1, 3)}),
    ModelEntry("lightgbm_flat", GBDT, flat=True),
)

# What `relgraph run` (and so `make run`) trains unless told otherwise: the two baselines
# every comparison needs (RelBench's flat one and the hand-built multi-hop one), the
# message-passing model RelBench's reference is built on, and the transformer that leads
# on churn. The other four double the run's time on 2 cores (README); `--models all`.
DEFAULT_MODELS = ("lightgbm_flat", "lightgbm", "sage", "hgt")


def _plugins() -> list[ModelEntry]:
    out = []
    for path in filter(None, os.environ.get(PLUGINS_ENV, "").split(os.pathsep)):
        file = Path(path)
        if not file.is_file():
            raise ValueError(f"{PLUGINS_ENV}: no such file {file}")
        spec = importlib.util.spec_from_file_location(f"relgraph_plugin_{file.stem}", file)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        rows = getattr(module, "MODELS", None)
        if not isinstance(rows, (list, tuple)) or not all(isinstance(r, ModelEntry) for r in rows):
            raise ValueError(f"{file}: a model plug-in defines MODELS, a list of ModelEntry rows")
        out += rows
    return out


def _table() -> dict[str, ModelEntry]:
    table: dict[str, ModelEntry] = {}
    for entry in (*_BUILT_IN, *_plugins()):
        if entry.name in table:
            raise ValueError(f"model table: two models are named {entry.name!r}")
        table[entry.name] = entry
    return table


MODELS: dict[str, ModelEntry] = _table()
ALL_MODELS = tuple(MODELS)
GRAPH_MODELS = tuple(name for name, e in MODELS.items() if e.family.needs_graph)


def model_entry(name: str) -> ModelEntry:
    """The table's row for `name`; a clear error for an unknown name."""
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}") from None


def run_models(arg: str | None) -> list[str]:
    """The models `relgraph run --models ARG` trains: the default four without ARG, every
    model for 'all', else the comma-separated names (each must exist)."""
    if not arg:
        return list(DEFAULT_MODELS)
    if arg.strip() == "all":
        return list(ALL_MODELS)
    models = [m.strip() for m in arg.split(",")]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        raise ValueError(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    return models


def make_trainer(data, feature_meta: dict, task, splits: dict, config, checkpoint_dir: Path,
                 **kwargs) -> Trainer:
    """A Trainer for the graph model `config.model`, built as its row of the table says."""
    return Trainer(data, feature_meta, task, splits, config, checkpoint_dir,
                   build=model_entry(config.model).build, **kwargs)


def build_model(name: str, feature_meta: dict, metadata, entity_type: str, config):
    """Graph model `name` for a graph's schema: ``forward(batch) -> [B, config.hidden]``."""
    entry = model_entry(name)
    if entry.build is None:
        raise ValueError(f"{name} is not a graph model (family {entry.family.name})")
    node_types = list(metadata[0])
    if entity_type not in node_types:
        raise ValueError(
            f"entity type {entity_type!r} is not a node type of the graph (node types: {node_types})"
        )
    missing = [t for t in node_types if t not in feature_meta]
    if missing:
        raise ValueError(f"feature_meta has no entry for node types {missing}")
    return entry.build(feature_meta, metadata, entity_type, config)
