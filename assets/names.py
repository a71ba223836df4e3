"""Dagster's names for a dataset's assets: keys, op names, groups, jobs, sensors.

Dagster accepts only `[A-Za-z0-9_]` in group, op, job and sensor names, while a dataset,
table, task or model may be named as its source names it (RelBench's `rel-f1` and
`driver-dnf`). Here, and only here, every such name becomes its safe form
(`pipeline.data.spec.safe_name`: every other character becomes `_`), so `rel-f1`'s task
`driver-dnf` is the asset `rel_f1/driver_dnf`, its op `rel_f1__driver_dnf` and its group
`rel_f1`. Everything a user reads or types keeps the spec's own spelling: `--task
driver-dnf`, the MLflow experiment `relgraph/rel-f1/driver-dnf`, the printed table, the
registered model and the prediction files.

The mapping is one-to-one: the spec's tables and tasks are checked when it is loaded
(`check_safe_names`), the datasets of one code location and the models here.
"""

from __future__ import annotations

import dagster as dg

from pipeline.data.spec import DatasetSpec, SpecError, check_safe_names, safe_name

# Asset-key parts that the Dagster layer itself puts under a dataset or a task.
RESERVED = {"graph": "the dataset's graph asset"}
TASK_RESERVED = ("evaluation", "champion", "predictions")


def group(spec: DatasetSpec) -> str:
    """The dataset's asset group (and the prefix of its job and sensor names)."""
    return safe_name(spec.name)


def key(spec: DatasetSpec, *parts: str) -> dg.AssetKey:
    """The asset key `<dataset>/<part>/...` in safe form."""
    return dg.AssetKey([safe_name(spec.name), *(safe_name(p) for p in parts)])


def table_key(spec: DatasetSpec, table: str) -> dg.AssetKey:
    return key(spec, table)


def task_key(spec: DatasetSpec, task: str) -> dg.AssetKey:
    return key(spec, task)


def graph_key(spec: DatasetSpec) -> dg.AssetKey:
    return key(spec, "graph")


def model_key(spec: DatasetSpec, task: str, model: str) -> dg.AssetKey:
    return key(spec, task, model)


def evaluation_key(spec: DatasetSpec, task: str) -> dg.AssetKey:
    return key(spec, task, "evaluation")


def champion_key(spec: DatasetSpec, task: str) -> dg.AssetKey:
    return key(spec, task, "champion")


def predictions_key(spec: DatasetSpec, task: str) -> dg.AssetKey:
    return key(spec, task, "predictions")


def op_name(asset_key: dg.AssetKey) -> str:
    """The op (node) that materializes `asset_key`, as Dagster names it."""
    return "__".join(asset_key.path)


def job_name(spec: DatasetSpec) -> str:
    return f"{group(spec)}_nightly"


def check_dataset(spec: DatasetSpec, models) -> None:
    """SpecError when two of the dataset's asset keys would be one: a table or task
    whose safe name is a key the Dagster layer uses itself, or two models (plug-ins
    included) whose safe names are the same."""
    names = check_safe_names([*spec.tables, *spec.tasks], spec.where())
    for name, safe in names.items():
        if safe in RESERVED:
            raise SpecError(f"{spec.where()}: '{name}' becomes the asset key {group(spec)}/{safe}, "
                            f"which is {RESERVED[safe]}; rename the "
                            f"{'table' if name in spec.tables else 'task'}")
    safe_models = check_safe_names(models, "the model table")
    clash = sorted(m for m, s in safe_models.items() if s in TASK_RESERVED)
    if clash:
        raise SpecError(f"model {clash[0]} becomes the asset key <dataset>/<task>/"
                        f"{safe_name(clash[0])}, which the Dagster layer uses itself; rename it")


def check_datasets(specs: list[DatasetSpec]) -> None:
    """SpecError when two datasets of one code location share a name or its safe form."""
    seen: dict[str, DatasetSpec] = {}
    for spec in specs:
        other = seen.get(spec.name)
        if other is not None:
            raise SpecError(f"RELGRAPH_DATASETS: {other.where()} and {spec.where()} are both "
                            f"named '{spec.name}'; every dataset needs its own name")
        seen[spec.name] = spec
    check_safe_names([s.name for s in specs], "RELGRAPH_DATASETS (dataset names)")
