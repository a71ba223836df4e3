"""One training asset per (task, model); each is launchable from the UI's Launchpad.

The Launchpad settings are those of every family in the model table (graph models'
settings by their own names, rgt's prefixed `rgt_`, LightGBM's `gbdt_`), with the
families' defaults, plus the run's `seed` and `seeds`; a model reads its family's.
"""

import dagster as dg
from dagster_duckdb import DuckDBResource

from assets.graphs import upstream_graph
from assets.resources import ComputeResource, MLflowResource, PathsResource
from pipeline.data.spec import DatasetSpec
from pipeline.training.experiment import RunContext, run_model
from pipeline.training.prepare import prepare_task
from pipeline.training.zoo import ALL_MODELS, MODELS, model_entry


def _launchpad_config() -> type[dg.Config]:
    """A flat dagster.Config with every family's settings (each once) and the run's."""
    annotations, defaults = {"seed": int, "seeds": int}, {"seed": 0, "seeds": 1}
    for family in {id(e.family): e.family for e in MODELS.values()}.values():
        for f in family.launchpad_fields():
            annotations[f.name], defaults[f.name] = f.type, f.default
    return type("TrainingConfig", (dg.Config,), {
        "__annotations__": annotations, **defaults, "__module__": __name__,
        "__doc__": "Launchpad config for one model; every field has a working default."})


TrainingConfig = _launchpad_config()


def training_assets(spec: DatasetSpec, models=ALL_MODELS) -> list[dg.AssetsDefinition]:
    return [_training_asset(spec, task, model) for task in spec.tasks for model in models]


def _training_asset(spec: DatasetSpec, task_name: str, model: str) -> dg.AssetsDefinition:
    task = spec.tasks[task_name]
    entry = model_entry(model)

    @dg.asset(key=[spec.name, task_name, model],
              deps=[[spec.name, task_name], [spec.name, "graph"]],
              pool="gpu", group_name=spec.name, kinds={entry.family.name},
              description=f"{model} trained and evaluated on {task_name}; logged to MLflow.")
    def _train(context: dg.AssetExecutionContext, config: TrainingConfig, duckdb: DuckDBResource,
               paths: PathsResource, mlflow: MLflowResource,
               compute: ComputeResource) -> dg.MaterializeResult:
        p = paths.paths()
        graph = upstream_graph(context, spec, duckdb.get_connection, p)
        prep = prepare_task(duckdb.get_connection, spec, task, graph=graph)
        cfg = entry.family.config_from_launchpad(entry, config.model_dump(), config.seed,
                                                 compute.device)
        ctx = RunContext(paths=p, tracker=mlflow.tracker(p), dagster_run_id=context.run_id,
                         log=context.log.info, progress=False)
        result = run_model(prep, model, cfg, ctx, seeds=config.seeds)
        metric = task.metric
        val, test = result["summary"][f"val_{metric}"], result["summary"][f"test_{metric}"]
        meta = {
            f"val_{metric}": val["mean"], f"test_{metric}": test["mean"],
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
