"""One training asset per (task, model); each is launchable from the UI's Launchpad.

The Launchpad settings are those of every family in the model table (graph models'
settings by their own names, rgt's prefixed `rgt_`, LightGBM's `gbdt_`), with the
families' defaults, plus the run's `seed`, `seeds` and `test_context` (empty: the task's
own; `frozen` or `rolling` overrides it for the run); a model reads its family's.
"""

import dataclasses
import sys

import dagster as dg
from dagster_duckdb import DuckDBResource

from assets import names
from assets.graphs import upstream_graph
from assets.resources import ComputeResource, MLflowResource, PathsResource
from pipeline.data.spec import TEST_CONTEXTS, DatasetSpec, TaskSpec
from pipeline.training.experiment import RunContext, run_model
from pipeline.training.prepare import prepare_task
from pipeline.training.zoo import ALL_MODELS, MODELS, model_entry


def _launchpad_config() -> type[dg.Config]:
    """A flat dagster.Config with every family's settings (each once) and the run's."""
    annotations = {"seed": int, "seeds": int, "test_context": str}
    defaults = {"seed": 0, "seeds": 1, "test_context": ""}
    for family in {id(e.family): e.family for e in MODELS.values()}.values():
        for f in family.launchpad_fields():
            annotations[f.name], defaults[f.name] = f.type, f.default
    return type("TrainingConfig", (dg.Config,), {
        "__annotations__": annotations, **defaults, "__module__": __name__,
        "__doc__": "Launchpad config for one model; every field has a working default."})


TrainingConfig = _launchpad_config()


def with_test_context(task: TaskSpec, context: str) -> TaskSpec:
    """`task` with its test context overridden for a run (empty: the task's own)."""
    if not context or context == task.test_context:
        return task
    if context not in TEST_CONTEXTS:
        raise dg.Failure(f"test_context '{context}' is not one of {', '.join(TEST_CONTEXTS)} "
                         "(or empty for the task's own)")
    return dataclasses.replace(task, test_context=context)


def training_assets(spec: DatasetSpec, models=ALL_MODELS) -> list[dg.AssetsDefinition]:
    return [_training_asset(spec, task, model) for task in spec.tasks for model in models]


def _training_asset(spec: DatasetSpec, task_name: str, model: str) -> dg.AssetsDefinition:
    spec_task = spec.tasks[task_name]
    entry = model_entry(model)

    @dg.asset(key=names.model_key(spec, task_name, model),
              deps=[names.task_key(spec, task_name), names.graph_key(spec)],
              pool="gpu", group_name=names.group(spec), kinds={entry.family.asset_kind},
              description=f"{model} trained and evaluated on {task_name}; logged to MLflow.",
              metadata={"dataset": spec.name, "task": task_name, "model": model})
    def _train(context: dg.AssetExecutionContext, config: TrainingConfig, duckdb: DuckDBResource,
               paths: PathsResource, mlflow: MLflowResource,
               compute: ComputeResource) -> dg.MaterializeResult:
        p = paths.paths()
        task = with_test_context(spec_task, config.test_context)
        graph = upstream_graph(context, spec, duckdb.get_connection, p)
        prep = prepare_task(duckdb.get_connection, spec, task, graph=graph)
        cfg = entry.family.config_from_launchpad(entry, config.model_dump(), config.seed,
                                                 compute.device)
        ctx = RunContext(paths=p, tracker=mlflow.tracker(p), dagster_run_id=context.run.run_id,
                         # bars over the batches in a terminal, plain epoch lines elsewhere
                         log=context.log.info, progress=sys.stderr.isatty())
        result = run_model(prep, model, cfg, ctx, seeds=config.seeds)
        metric = task.metric
        val, test = result["summary"][f"val_{metric}"], result["summary"][f"test_{metric}"]
        meta = {
            f"val_{metric}": val["mean"], f"test_{metric}": test["mean"],
            "test_context": task.test_context,
            "seeds": len(result["runs"]), "experiment": result["experiment"],
            "seconds": sum(r["seconds"] for r in result["runs"]),
        }
        if config.seeds > 1:
            meta[f"test_{metric}_std"] = test["std"]
        curves = [pl for r in result["runs"][:1] for pl in r["plots"] if pl.endswith("curves.png")]
        if curves:
            meta["curves"] = dg.MetadataValue.path(curves[0])
        return dg.MaterializeResult(metadata=meta)

    return _train
