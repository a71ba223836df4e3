"""Per task: batch predictions for every live entity, with the best model of the run."""

import dagster as dg
from dagster_duckdb import DuckDBResource

from assets.graphs import fit_cutoff
from assets.resources import ComputeResource, PathsResource
from pipeline.experiment import load_results
from pipeline.features import FeatureConfig
from pipeline.graph import build_graph
from pipeline.predict import model_scores, predictions_table, write_predictions
from pipeline.report import comparison
from pipeline.spec import DatasetSpec


def prediction_assets(spec: DatasetSpec) -> list[dg.AssetsDefinition]:
    return [_prediction_asset(spec, task) for task in spec.tasks]


def _prediction_asset(spec: DatasetSpec, task_name: str) -> dg.AssetsDefinition:
    task = spec.tasks[task_name]

    @dg.asset(key=[spec.name, task_name, "predictions"], deps=[[spec.name, task_name, "evaluation"]],
              pool="warehouse", group_name=spec.name, kinds={"duckdb"},
              description=f"predictions_{task_name}: every live entity scored by the chosen model.")
    def _predict(context: dg.AssetExecutionContext, duckdb: DuckDBResource, paths: PathsResource,
                 compute: ComputeResource) -> dg.MaterializeResult:
        p = paths.paths()
        report = comparison(p, spec, task, run_id=context.run_id)
        if report.best is None:
            raise dg.Failure(f"no model of {task_name} was trained in run {context.run_id}")
        result = load_results(p, spec.name, task_name, context.run_id)[report.best]
        checkpoint = result["runs"][0]["checkpoint"]
        with duckdb.get_connection() as con:
            graph = build_graph(con, spec, fit_cutoff(con, spec), FeatureConfig(), p.graphs / spec.name)
            scores = model_scores(con, spec, task, graph, report.best, checkpoint, device=compute.device)
            table = predictions_table(con, spec, task, report.best, scores,
                                      result["runs"][0].get("mlflow_run_id") or "local")
        path = write_predictions(duckdb.get_connection, task, table, p.predictions / spec.name)
        context.log.info("scored %d live entities with %s", table.num_rows, report.best)
        return dg.MaterializeResult(metadata={
            "rows": table.num_rows, "model": report.best, "parquet": dg.MetadataValue.path(str(path)),
            "preview": dg.MetadataValue.md(table.slice(0, 5).to_pandas().to_markdown(index=False)
                                           if table.num_rows else "(empty)"),
        })

    return _predict
