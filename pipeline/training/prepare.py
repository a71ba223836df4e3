"""One way to prepare a task for training, tuning and scoring.

`prepare_task` takes the warehouse, the spec, the task and the feature settings and
returns a `PreparedTask`: the task's cutoffs, the encoders' fit cutoff, the graph (built,
or read from the graph cache) and the split examples, loaded when first asked for. The
Dagster assets, `relgraph tune`, the experiment runner, the benchmarks and the tests all
start here, so the rules of time (the training graph holds no row after the test cutoff;
encoders are fitted on rows up to the validation cutoff) are written once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable, ContextManager

import duckdb

from pipeline.data.spec import DatasetSpec, TaskSpec
from pipeline.data.tasks import Examples, TaskCutoffs, encoder_fit_cutoff, load_examples, task_cutoffs
from pipeline.graph.build import GraphArtifact, build_graph
from pipeline.graph.features import FeatureConfig

Connect = Callable[[], ContextManager[duckdb.DuckDBPyConnection]]


def task_graph(con: duckdb.DuckDBPyConnection, spec: DatasetSpec, features: FeatureConfig,
               graphs_dir: Path) -> GraphArtifact:
    """The dataset's graph with encoders fitted up to the validation cutoff (a cache hit
    when the warehouse and the settings are unchanged)."""
    return build_graph(con, spec, encoder_fit_cutoff(con, spec), features, graphs_dir)


@dataclass
class PreparedTask:
    """What every trainer needs for one task; examples and the training graph are made
    on first use and kept.

    connect: opens the warehouse (held only while reading).
    graph: the graph of every row (scoring uses it whole; training truncates it).
    """

    connect: Connect
    spec: DatasetSpec
    task: TaskSpec
    cutoffs: TaskCutoffs
    fit_cutoff: datetime
    graph: GraphArtifact | None
    _examples: dict[str, Examples] = field(default_factory=dict, repr=False)
    _training_graph: object = field(default=None, repr=False)

    def examples(self, splits=("train", "val", "test")) -> dict[str, Examples]:
        """The examples of `splits` ("train", "val", "test", "live"), from the task table."""
        missing = [s for s in splits if s not in self._examples]
        if missing:
            with self.connect() as con:
                self._examples.update({s: load_examples(con, self.task, s) for s in missing})
        return {s: self._examples[s] for s in splits}

    def training_graph(self):
        """The graph as of the test cutoff: training and validation see no later row."""
        if self.graph is None:
            raise ValueError(f"task {self.task.name} was prepared without its graph")
        if self._training_graph is None:
            self._training_graph = self.graph.truncate(self.cutoffs.test)
        return self._training_graph


def prepare_task(connect: Connect, spec: DatasetSpec, task: TaskSpec,
                 features: FeatureConfig | None = None, graphs_dir: Path | None = None,
                 graph: GraphArtifact | None = None) -> PreparedTask:
    """Cutoffs, fit cutoff and graph of `task` (the task table must be built).

    The graph is `graph` when given (the graph asset's output), else built or read from
    the cache in `graphs_dir`; with neither, the task is prepared without a graph (the
    LightGBM models need none)."""
    with connect() as con:
        cuts = task_cutoffs(con, spec, task)
        fit_cutoff = encoder_fit_cutoff(con, spec)
        if graph is None and graphs_dir is not None:
            graph = build_graph(con, spec, fit_cutoff, features or FeatureConfig(), graphs_dir)
    return PreparedTask(connect, spec, task, cuts, fit_cutoff, graph)
