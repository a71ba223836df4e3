"""The model registry: trained models as MLflow pyfunc models, and the champion gate.

Every trained model (a graph model's best.pt, or a LightGBM model directory) is logged
with its nested MLflow run as a pyfunc model and registered as a new version of
`relgraph-<dataset>-<task>`. Its artifacts make it self-contained but for the data:

    model        the checkpoint file or the LightGBM directory
    spec         the dataset spec (YAML; for a RelBench folder, its equivalent relgraph spec,
                 `relbench_spec_yaml`, which names the folder)
    meta         relgraph.json: dataset, task, model, graph hash, the graph's fit cutoff,
                 feature metadata and encoders

`mlflow.pyfunc.load_model(uri).predict(df)` takes a DataFrame with the entity table's
key column(s) and `cutoff` (naive UTC timestamps) and scores those rows against the
warehouse and graph cache of `$RELGRAPH_DATA` (or `model_config={"data_dir": ...}`), so
a copy of the data directory works. It returns a numpy array in input order: binary
[n] probabilities, regression [n] values, multiclass [n, C] probabilities, link
prediction [n, num_targets] scores (graph models) or [n, 10] target `__id`s (LightGBM).
The model is an MLflow "model from code": its `python_model` is the file
`pipeline/serving/pyfunc_model.py` (copied into the model), which names `RelgraphModel`;
every artifact is a plain file (weights read with `torch.load(weights_only=True)` or
LightGBM's text model, YAML, JSON), so loading unpickles nothing. The code itself is not
packaged: loading needs `relgraph` installed (it is, in `.venv`). Versions registered
before (a CloudPickled `RelgraphModel`, under this module's name or `pipeline.registry`)
still load and score: the class they name is this one.

Graph models see the current rows encoded as at training time: the graph is rebuilt with
the model's fit cutoff, and encoders read nothing after it, so they come out identical
on append-only data (checked; a rewritten history is an error that asks for retraining).

The gate: after a run, its best model by validation metric is the candidate. The
`champion` version (if any) is re-scored on the current validation split, and so is the
candidate, through the same pyfunc path; `champion` moves to the candidate only when it
is strictly better, else the candidate becomes `challenger`. The decision and its
reason are tags on the candidate's version.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

import mlflow.pyfunc
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema

from pipeline.data.spec import DatasetSpec, TaskSpec, load_spec
from pipeline.data.sqlutil import q, q_list
from pipeline.graph.build import build_graph
from pipeline.graph.features import FeatureConfig
from pipeline.paths import DataPaths
from pipeline.training.tracking import Tracker, mlflow_uri
from pipeline.training.experiment import load_results
from pipeline.training.family import ModelEntry
from pipeline.training.graph_family import RegistryMismatch
from pipeline.training.zoo import model_entry

CHAMPION, CHALLENGER = "champion", "challenger"
# The file MLflow logs as every registered model's python_model (models from code).
PYFUNC_CODE = Path(__file__).resolve().with_name("pyfunc_model.py")
META_FORMAT = 1
# How long a scoring call waits for a writer (another process) to release the warehouse.
LOCK_WAIT_S = 120.0


class RegistryError(RuntimeError):
    """A model cannot be registered or cannot score; the message names model and data."""


def registered_name(dataset: str, task: str) -> str:
    return f"relgraph-{dataset}-{task}"


def version_uri(name: str, version: str) -> str:
    return f"models:/{name}/{version}"


# ------------------------------------------------------------------------- scoring


@dataclass
class ModelBundle:
    """What scoring needs besides the data: the spec, the task and the trained model."""

    spec: DatasetSpec
    task: TaskSpec
    model: str
    checkpoint: Path
    meta: dict

    @property
    def entry(self) -> ModelEntry:
        return model_entry(self.model)


def open_warehouse(path: Path, wait_s: float = LOCK_WAIT_S) -> duckdb.DuckDBPyConnection:
    """A read-only connection; waits while another process holds the write lock."""
    if not path.exists():
        raise RegistryError(f"no warehouse at {path}; set RELGRAPH_DATA to a data directory "
                            "that holds one")
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return duckdb.connect(str(path), read_only=True)
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower() or time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _entity_rows(con: duckdb.DuckDBPyConnection, spec: DatasetSpec, task: TaskSpec,
                 frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Surrogate entity ids and cutoffs (epoch seconds) of `frame`'s rows, in its order;
    also leaves them in the temp table `_score_rows(__row, __entity_id, cutoff)`."""
    entity = spec.tables[task.entity_table]
    keys = list(entity.primary_key)
    missing = [c for c in keys + ["cutoff"] if c not in frame.columns]
    if missing:
        raise RegistryError(f"task {task.name}: input lacks column(s) {', '.join(missing)}; it "
                            f"needs {task.entity_table}'s key {', '.join(keys)} and cutoff "
                            f"(got {', '.join(map(str, frame.columns))})")
    inp = frame[keys + ["cutoff"]].reset_index(drop=True)
    inp["cutoff"] = pd.to_datetime(inp["cutoff"])
    inp.insert(0, "__row", np.arange(len(inp), dtype=np.int64))
    join = " AND ".join(f"i.{q(k)} = e.{q(k)}" for k in keys)
    con.register("_score_in", inp)
    try:
        con.execute(f"""CREATE OR REPLACE TEMP TABLE _score_rows AS
                        SELECT i.__row, e.__id AS __entity_id, CAST(i.cutoff AS TIMESTAMP) AS cutoff,
                               {q_list(keys, 'i.')}
                        FROM _score_in i LEFT JOIN main.{q(entity.name)} e ON {join}""")
    finally:
        con.unregister("_score_in")
    unknown = con.execute(f"SELECT COUNT(*), list({q_list(keys)} ORDER BY __row)[:5] "
                          "FROM _score_rows WHERE __entity_id IS NULL").fetchall()[0]
    if unknown[0]:
        raise RegistryError(f"{unknown[0]} input rows name {entity.name} keys that are not in the "
                            f"warehouse (first: {', '.join(map(str, unknown[1]))})")
    nulls = con.execute("SELECT COUNT(*) FROM _score_rows WHERE cutoff IS NULL").fetchall()[0][0]
    if nulls:
        raise RegistryError(f"{nulls} input rows have no cutoff")
    tbl = con.sql("SELECT __entity_id, epoch(cutoff)::BIGINT AS t FROM _score_rows "
                  "ORDER BY __row").to_arrow_table()
    return (tbl.column("__entity_id").to_numpy().astype(np.int64),
            tbl.column("t").to_numpy().astype(np.int64))


def score_frame(con: duckdb.DuckDBPyConnection, paths: DataPaths, bundle: ModelBundle,
                frame: pd.DataFrame, device: str = "auto") -> np.ndarray:
    """Scores of `frame`'s (keys, cutoff) rows, in input order (see the module docstring)."""
    if len(frame) == 0:
        raise RegistryError(f"{bundle.model} on {bundle.task.name}: nothing to score (empty input)")
    entry = bundle.entry
    try:
        entity, cutoff = _entity_rows(con, bundle.spec, bundle.task, frame)
        graph = None
        if entry.family.needs_graph:
            graph = build_graph(con, bundle.spec, datetime.fromisoformat(bundle.meta["fit_cutoff"]),
                                FeatureConfig(), paths.graphs / bundle.spec.name)
        return entry.family.score_rows(entry, con, bundle.spec, bundle.task, graph,
                                       bundle.checkpoint, bundle.meta, entity, cutoff, device)
    except RegistryMismatch as exc:
        raise RegistryError(str(exc)) from None
    finally:
        con.execute("DROP TABLE IF EXISTS _score_rows")


class RelgraphModel(mlflow.pyfunc.PythonModel):
    """The pyfunc face of a trained relgraph model (see the module docstring).

    model_config: `data_dir` ("" = $RELGRAPH_DATA) and `device` (default auto).
    """

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        meta = json.loads(Path(context.artifacts["meta"]).read_text())
        if meta.get("format") != META_FORMAT:
            raise RegistryError(f"model metadata format {meta.get('format')} is not {META_FORMAT}")
        spec = load_spec(context.artifacts["spec"])
        self.bundle = ModelBundle(spec, spec.task(meta["task"]), meta["model"],
                                  Path(context.artifacts["model"]), meta)
        config = context.model_config or {}
        self.data_dir = config.get("data_dir")
        self.device = config.get("device", "auto")

    # pd.DataFrame: MLflow passes the frame as it is (a signature would coerce the keys'
    # types, which differ from dataset to dataset); score_frame checks the columns.
    def predict(self, context: mlflow.pyfunc.PythonModelContext, model_input: pd.DataFrame,
                params: dict | None = None) -> np.ndarray:
        paths = DataPaths(Path(self.data_dir).resolve()) if self.data_dir else DataPaths.from_env()
        con = open_warehouse(paths.warehouse)
        try:
            return score_frame(con, paths, self.bundle, pd.DataFrame(model_input), self.device)
        finally:
            con.close()


def load_version(tracker: Tracker, name: str, version: str, data_dir: Path | None = None,
                 device: str = "auto"):
    """A registered version as a PyFuncModel, scoring against `data_dir`."""
    config = {"device": device, **({"data_dir": str(data_dir)} if data_dir else {})}
    with mlflow_uri(tracker.tracking_uri):
        return mlflow.pyfunc.load_model(version_uri(name, version), model_config=config)


# -------------------------------------------------------------------- registration


def _best_seed(result: dict, task: TaskSpec) -> dict:
    """The run (seed) of a result with the best validation metric."""
    key = f"val_{task.metric}"
    sign = 1 if task.lower_is_better else -1

    def rank(run: dict) -> float:
        v = run["metrics"].get(key, math.nan)
        return math.inf if math.isnan(v) else sign * v

    return min(result["runs"], key=rank)


def register_model(tracker: Tracker, paths: DataPaths, spec: DatasetSpec, task: TaskSpec,
                   result: dict) -> str:
    """Log one model of a run (a result dict of `run_model`) as a pyfunc model with its
    nested run and register it; returns the new version number."""
    run = _best_seed(result, task)
    model, run_id = result["model"], run.get("mlflow_run_id")
    if not run_id:
        raise RegistryError(f"{model} on {task.name}: the result has no MLflow run to log the "
                            "model with (was it trained without tracking?)")
    if spec.path is None or not Path(spec.path).exists():
        raise RegistryError(f"dataset {spec.name}: the spec was not loaded from a file or a "
                            "RelBench folder, so it cannot travel with the model")
    checkpoint = Path(run["checkpoint"])
    graph_meta = paths.graphs / spec.name / result["graph_hash"] / "meta.json"
    if not checkpoint.exists() or not graph_meta.exists():
        raise RegistryError(f"{model} on {task.name}: checkpoint {checkpoint} or graph "
                            f"{graph_meta.parent} is gone (pruned?); retrain to register it")
    gm = json.loads(graph_meta.read_text())
    metric = task.metric
    meta = {"format": META_FORMAT, "dataset": spec.name, "task": task.name, "model": model,
            "metric": metric, "graph_hash": gm["hash"], "fit_cutoff": gm["fit_cutoff"],
            "feature_meta": gm["feature_meta"], "encoders": gm["encoders"],
            "dagster_run_id": result["dagster_run_id"], "mlflow_run_id": run_id,
            f"val_{metric}": run["metrics"].get(f"val_{metric}"),
            f"test_{metric}": run["metrics"].get(f"test_{metric}")}
    name = registered_name(spec.name, task.name)
    # What the model takes: the entity's key columns (never missing) and a cutoff, typed
    # as the warehouse holds them, shown on five rows of the validation split. Not
    # `required`: a frame without them gets relgraph's own error, which names the columns.
    con = open_warehouse(paths.warehouse)
    try:
        example = split_frame(con, spec, task, "val")[0].head(5)
    finally:
        con.close()
    signature = ModelSignature(inputs=Schema([ColSpec(_mlflow_type(example[c]), c, required=False)
                                              for c in example.columns]))
    with tempfile.TemporaryDirectory() as tmp:
        meta_path = Path(tmp) / "relgraph.json"
        meta_path.write_text(json.dumps(meta, default=float))
        spec_path = Path(tmp) / "spec.yaml"
        if Path(spec.path).is_dir():  # a RelBench folder: its spec, which names the folder
            from pipeline.data.relbench_folder import relbench_spec_yaml

            spec_path.write_text(relbench_spec_yaml(Path(spec.path).resolve()))
        else:
            shutil.copyfile(spec.path, spec_path)
        with mlflow_uri(tracker.tracking_uri), mlflow.start_run(run_id=run_id):
            info = mlflow.pyfunc.log_model(
                name="model", python_model=str(PYFUNC_CODE),
                artifacts={"model": str(checkpoint), "spec": str(spec_path), "meta": str(meta_path)},
                # Declared so that load_model may override them (it drops undeclared keys).
                model_config={"data_dir": "", "device": "auto"}, signature=signature,
                # as columns of values: MLflow's DataFrame path warns inside pandas
                input_example=example.to_dict(orient="list"),
                # Listed, not inferred: inference would load and run the model in a subprocess.
                pip_requirements=_requirements())
    tags = {"model": model, "dataset": spec.name, "task": task.name, "graph_hash": gm["hash"],
            "dagster_run_id": result["dagster_run_id"],
            **{k: f"{meta[k]:.6g}" for k in (f"val_{metric}", f"test_{metric}")
               if isinstance(meta[k], float)}}
    client = tracker.client
    if not client.search_registered_models(f"name = '{name}'", max_results=1):
        client.create_registered_model(name, description=f"{metric} models of {spec.name}/{task.name}")
    # The registry resolves `models:/m-...` sources through the global tracking store.
    with mlflow_uri(tracker.tracking_uri):
        version = client.create_model_version(name, source=info.model_uri, run_id=run_id,
                                              tags=tags, model_id=info.model_id)
    return str(version.version)


def _requirements() -> list[str]:
    from importlib.metadata import version

    pkgs = ("mlflow", "torch", "torch-geometric", "lightgbm", "duckdb", "polars", "pyarrow",
            "pandas", "numpy", "pyyaml")
    return [f"{p}=={version(p)}" for p in pkgs]


def best_of_run(paths: DataPaths, spec: DatasetSpec, task: TaskSpec, dagster_run_id: str) -> str | None:
    """The model of one Dagster run with the best mean validation metric (None: no model)."""
    results = load_results(paths, spec.name, task.name, dagster_run_id)
    sign = 1 if task.lower_is_better else -1

    def rank(model: str) -> float:
        v = results[model]["summary"].get(f"val_{task.metric}", {}).get("mean", math.nan)
        return math.inf if math.isnan(v) else sign * v

    return min(results, key=rank) if results else None


def register_run(tracker: Tracker, paths: DataPaths, spec: DatasetSpec, task: TaskSpec,
                 dagster_run_id: str) -> dict[str, str]:
    """Register every model of one Dagster run; returns {model: version}."""
    results = load_results(paths, spec.name, task.name, dagster_run_id)
    return {model: register_model(tracker, paths, spec, task, res) for model, res in results.items()}


# ----------------------------------------------------------------------- the gate


def _mlflow_type(column: pd.Series) -> str:
    """The MLflow column type of a key or cutoff column."""
    if pd.api.types.is_datetime64_any_dtype(column):
        return "datetime"
    if pd.api.types.is_integer_dtype(column):
        return "long"
    if pd.api.types.is_float_dtype(column):
        return "double"
    return "string"


def split_frame(con: duckdb.DuckDBPyConnection, spec: DatasetSpec, task: TaskSpec,
                split: str) -> tuple[pd.DataFrame, object]:
    """One split's (keys, cutoff) rows and their truth, in the trainer's order."""
    from pipeline.data.tasks import load_examples
    from pipeline.training.trainer import link_truth

    keys = list(spec.tables[task.entity_table].primary_key)
    frame = con.sql(f"""SELECT DISTINCT {q_list(keys)}, __entity_id, cutoff FROM {q(f'task_{task.name}')}
                        WHERE split = ? ORDER BY cutoff, __entity_id""",
                    params=[split]).df()[keys + ["cutoff"]]
    ex = load_examples(con, task, split)
    truth = link_truth(ex) if task.kind.ranks_targets else ex.label.numpy()
    return frame, truth


def split_metric(model, frame: pd.DataFrame, truth, task: TaskSpec) -> float:
    """The task metric of a pyfunc model on one split."""
    return float(task.kind.compute_metrics(truth, model.predict(frame))[task.metric])


def beats(candidate: float, champion: float, lower_is_better: bool) -> bool:
    """Strictly better; a NaN candidate never wins, any number beats a NaN champion."""
    if math.isnan(candidate):
        return False
    if math.isnan(champion):
        return True
    return candidate < champion if lower_is_better else candidate > champion


@dataclass
class GateDecision:
    registered_model: str
    metric: str
    candidate_version: str
    candidate_model: str
    candidate_val: float
    champion_version: str | None      # the champion before the decision
    champion_model: str | None
    champion_val: float | None        # re-scored on the current validation split
    promoted: bool
    reason: str

    @property
    def champion_after(self) -> str:
        return self.candidate_version if self.promoted else str(self.champion_version)


def champion_gate(tracker: Tracker, paths: DataPaths, spec: DatasetSpec, task: TaskSpec,
                  candidate_version: str, device: str = "auto") -> GateDecision:
    """Re-score champion and candidate on the current validation split and move the
    aliases (see the module docstring)."""
    name = registered_name(spec.name, task.name)
    client = tracker.client
    candidate = client.get_model_version(name, candidate_version)
    champion = tracker.alias_version(name, CHAMPION)
    con = open_warehouse(paths.warehouse)
    try:
        frame, truth = split_frame(con, spec, task, "val")
    finally:
        con.close()
    m = task.metric
    cand_val = split_metric(load_version(tracker, name, candidate_version, paths.root, device),
                            frame, truth, task)
    what = f"candidate v{candidate_version} ({candidate.tags.get('model')}) val_{m}={cand_val:.4f}"
    champ_val = None
    if champion is None:
        promoted, reason = True, f"{what}; there was no champion"
    elif str(champion.version) == str(candidate_version):
        promoted, reason = True, f"{what} is already the champion"
    else:
        held = f"champion v{champion.version} ({champion.tags.get('model')})"
        try:
            champ_val = split_metric(load_version(tracker, name, str(champion.version), paths.root,
                                                  device), frame, truth, task)
        except Exception as exc:  # a champion that cannot score today's data cannot serve it
            promoted = True
            reason = f"{what}; {held} cannot score the current data: {str(exc).splitlines()[0]}"
        else:
            promoted = beats(cand_val, champ_val, task.lower_is_better)
            verb = "beats" if promoted else "does not beat"
            reason = (f"{what} {verb} {held} val_{m}={champ_val:.4f}, re-scored on the current "
                      f"validation split ({len(frame)} examples)")
    decision = GateDecision(name, m, str(candidate_version), candidate.tags.get("model", ""),
                            cand_val, str(champion.version) if champion else None,
                            champion.tags.get("model") if champion else None, champ_val,
                            promoted, reason)
    _apply(tracker, decision)
    return decision


def _apply(tracker: Tracker, d: GateDecision) -> None:
    client = tracker.client
    if d.promoted:
        client.set_registered_model_alias(d.registered_model, CHAMPION, d.candidate_version)
        challenger = tracker.alias_version(d.registered_model, CHALLENGER)
        if challenger is not None and str(challenger.version) == d.candidate_version:
            client.delete_registered_model_alias(d.registered_model, CHALLENGER)
    else:
        client.set_registered_model_alias(d.registered_model, CHALLENGER, d.candidate_version)
    tags = {"gate": CHAMPION if d.promoted else CHALLENGER, "gate_reason": d.reason[:5000],
            f"gate_val_{d.metric}": f"{d.candidate_val:.6g}"}
    if d.champion_val is not None:
        tags[f"gate_champion_val_{d.metric}"] = f"{d.champion_val:.6g}"
    for key, value in tags.items():
        client.set_model_version_tag(d.registered_model, d.candidate_version, key, value)
