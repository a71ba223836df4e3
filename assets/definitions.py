"""The code location: assets for every dataset spec in $RELGRAPH_DATASETS.

RELGRAPH_DATASETS is a list of dataset paths separated by ':' or ',' (a spec file, or a
RelBench 3 folder holding manifest.yaml); by default every `*.yaml` in datasets/. Asset
keys are prefixed by the dataset's name, in the safe form Dagster accepts
(assets/names.py: `rel-f1` -> `rel_f1`).
"""

from __future__ import annotations

from pipeline.third_party_warnings import ignore_third_party_warnings

ignore_third_party_warnings()  # before torch, PyG and MLflow are imported

import os  # noqa: E402
import re
from pathlib import Path

import dagster as dg

from assets import names
from assets.evaluation import evaluation_assets
from assets.extract import extract_assets
from assets.freshness import with_freshness
from assets.graphs import graph_asset
from assets.jobs import nightly_job
from assets.predictions import prediction_assets
from assets.resources import default_resources
from assets.schedules import nightly_schedule
from assets.sensors import new_data_sensor, run_failure_alert
from assets.tasks import task_assets
from assets.training import training_assets
from pipeline.data.datasets import load_dataset
from pipeline.data.spec import DatasetSpec
from pipeline.training.zoo import ALL_MODELS

REPO = Path(__file__).resolve().parent.parent


def dataset_paths() -> list[Path]:
    raw = os.environ.get("RELGRAPH_DATASETS", "").strip()
    if raw:
        return [Path(p) for p in re.split(r"[:,]", raw) if p.strip()]
    return sorted((REPO / "datasets").glob("*.yaml"))


def dataset_assets(spec: DatasetSpec) -> list:
    names.check_dataset(spec, ALL_MODELS)
    return with_freshness(spec, [*extract_assets(spec), *task_assets(spec), graph_asset(spec),
                                 *training_assets(spec), *evaluation_assets(spec),
                                 *prediction_assets(spec)])


# Runs launched from the UI, the schedule or a sensor execute each step in its own
# process. A freshly spawned one spends 15-17 s (2 cores) importing torch, Dagster and
# MLflow before its step starts; a forkserver imports them once per run and forks every
# step from there, already loaded.
PRELOAD_MODULES = ["torch", "torch_geometric", "mlflow", "lightgbm", "polars", "duckdb",
                   "assets.definitions"]
LOCAL_EXECUTOR = dg.multiprocess_executor.configured(
    {"start_method": {"forkserver": {"preload_modules": PRELOAD_MODULES}}}, name="relgraph_local")


def build_definitions(specs: list[DatasetSpec] | None = None,
                      executor: dg.ExecutorDefinition | None = LOCAL_EXECUTOR) -> dg.Definitions:
    """Every dataset's assets (source tables and champions with freshness policies), checks,
    nightly job, schedule and sensors; `executor` is the default of every job (None:
    Dagster's own, for a deployment that brings its own)."""
    specs = specs if specs is not None else [load_dataset(p) for p in dataset_paths()]
    names.check_datasets(specs)
    assets = [a for spec in specs for a in dataset_assets(spec)]
    jobs = {spec.name: nightly_job(spec) for spec in specs}
    return dg.Definitions(
        assets=assets, resources=default_resources(), jobs=list(jobs.values()),
        schedules=[nightly_schedule(j) for j in jobs.values()],
        sensors=[new_data_sensor(spec, jobs[spec.name]) for spec in specs] + [run_failure_alert],
        executor=executor)


defs = build_definitions()
