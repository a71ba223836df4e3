"""Per task: the comparison of every model trained in this run, as a table and a plot."""


import dagster as dg

from assets.resources import MLflowResource, PathsResource
from pipeline.experiment import ALL_MODELS
from pipeline.report import comparison
from pipeline.spec import DatasetSpec


def evaluation_assets(spec: DatasetSpec, models=ALL_MODELS) -> list[dg.AssetsDefinition]:
    return [_evaluation_asset(spec, task, models) for task in spec.tasks]


def _evaluation_asset(spec: DatasetSpec, task_name: str, models) -> dg.AssetsDefinition:
    task = spec.tasks[task_name]

    @dg.asset(key=[spec.name, task_name, "evaluation"],
              deps=[[spec.name, task_name, m] for m in models], group_name=spec.name,
              description=f"Validation and test {task.metric} of every model on {task_name}.")
    def _evaluate(context: dg.AssetExecutionContext, paths: PathsResource,
                  mlflow: MLflowResource) -> dg.MaterializeResult:
        p = paths.paths()
        report = comparison(p, spec, task, run_id=context.run_id, tracker=mlflow.tracker(p))
        if not report.rows:
            raise dg.Failure(f"no model of {task_name} was trained in run {context.run_id}; "
                             "materialize at least one model asset with this one")
        context.log.info("\n" + report.markdown)
        return dg.MaterializeResult(metadata={
            "results": dg.MetadataValue.md(report.markdown),
            "best_model": report.best, f"best_val_{task.metric}": report.best_val,
            "comparison": dg.MetadataValue.path(str(report.plot)),
            "experiment": f"relgraph/{spec.name}/{task_name}",
        })

    return _evaluate
