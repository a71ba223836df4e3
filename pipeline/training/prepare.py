"""One way to prepare a task for training, tuning and scoring.

`prepare_task` takes the warehouse, the spec, the task and the feature settings and
returns a `PreparedTask`: the task's cutoffs, the encoders' fit cutoff, the graph (built,
or read from the graph cache) and the split examples, loaded when first asked for. The
Dagster assets, `relgraph tune`, the experiment runner, the benchmarks and the tests all
start here, so the rules of time are written once:

- the training graph holds no row after the test cutoff (training and validation);
- the test graph follows the task's `test_context`: `frozen` is the training graph (a
  test example sees rows up to the earlier of its own cutoff and the test cutoff);
  `rolling` holds every row up to the newest test cutoff, and the sampler keeps each
  example to the rows up to its own cutoff;
- the scoring graph (batch predictions at the newest timestamp) holds every row;
- every one of them hides the task's `remove_columns` (pipeline/graph/views.py);
- encoders are fitted on rows up to the validation cutoff.
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
from pipeline.graph.views import frozen_graph, hide_columns

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
    The graph views (`training_graph`, `test_graph`, `scoring_graph`) are made on first
    use and kept.
    """

    connect: Connect
    spec: DatasetSpec
    task: TaskSpec
    cutoffs: TaskCutoffs
    fit_cutoff: datetime
    graph: GraphArtifact | None
    _examples: dict[str, Examples] = field(default_factory=dict, repr=False)
    _views: dict = field(default_factory=dict, repr=False)

    def examples(self, splits=("train", "val", "test")) -> dict[str, Examples]:
        """The examples of `splits` ("train", "val", "test", "live"), from the task table."""
        missing = [s for s in splits if s not in self._examples]
        if missing:
            with self.connect() as con:
                self._examples.update({s: load_examples(con, self.task, s) for s in missing})
        return {s: self._examples[s] for s in splits}

    def _graph(self):
        if self.graph is None:
            raise ValueError(f"task {self.task.name} was prepared without its graph")
        return self.graph

    def _as_of(self, as_of: datetime, splits) -> object:
        """The graph as of `as_of`, with a (bare) node for every entity of `splits`' examples
        and the task's removed columns hidden."""
        graph = self._graph()
        ids = [ex.entity for ex in self.examples(splits).values() if len(ex)]
        n = max((int(e.max()) + 1 for e in ids), default=0)
        data = frozen_graph(graph.data, as_of, self.task.entity_table, n)
        return hide_columns(data, graph.feature_meta, self.task.remove_columns)

    def training_graph(self):
        """The graph as of the test cutoff: training and validation see no later row."""
        if "train" not in self._views:
            self._views["train"] = self._as_of(self.cutoffs.test, ("train", "val"))
        return self._views["train"]

    def test_graph(self):
        """What the test split samples from, by the task's `test_context` (see the module
        docstring); the training graph itself when that is the same graph."""
        if "test" not in self._views:
            frozen = self.task.test_context == "frozen"
            as_of = self.cutoffs.test if frozen else max(self.cutoffs.test_windows)
            train = self.training_graph()
            test = self._as_of(as_of, ("test",))
            same = all(test[t].num_nodes == train[t].num_nodes for t in train.node_types)
            self._views["test"] = train if frozen and same else test
        return self._views["test"]

    def scoring_graph(self):
        """The graph of every row (scoring at the newest timestamp), the task's removed
        columns hidden."""
        if "score" not in self._views:
            graph = self._graph()
            self._views["score"] = hide_columns(graph.data, graph.feature_meta,
                                                self.task.remove_columns)
        return self._views["score"]


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
