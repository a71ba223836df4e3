"""Per task: batch predictions for every live entity, with the registered champion.

The champion's pyfunc model scores the live table (`task_<task>_live`); where there is
no champion yet (the champion asset was not run, or tracking is off), the run's best
model scores from its checkpoint instead, and the metadata says so.
"""

import dagster as dg
from dagster_duckdb import DuckDBResource

from assets import names
from assets.graphs import upstream_graph
from assets.resources import ComputeResource, MLflowResource, PathsResource
from pipeline.data.spec import DatasetSpec
from pipeline.data.sqlutil import q, q_list
from pipeline.graph.build import prune_cache
from pipeline.serving.predict import model_scores, predictions_table, write_predictions
from pipeline.serving.registry import CHAMPION, best_of_run, load_version, registered_name, version_uri
from pipeline.training.experiment import load_results
from pipeline.training.prepare import prepare_task


def prediction_assets(spec: DatasetSpec) -> list[dg.AssetsDefinition]:
    return [_prediction_asset(spec, task) for task in spec.tasks]


def _prediction_asset(spec: DatasetSpec, task_name: str) -> dg.AssetsDefinition:
    task = spec.tasks[task_name]
    keys = list(spec.tables[task.entity_table].primary_key)

    @dg.asset(key=names.predictions_key(spec, task_name), deps=[names.champion_key(spec, task_name)],
              pool="warehouse", group_name=names.group(spec), kinds={"duckdb"},
              description=f"predictions_{task_name}: every live entity scored by the champion.")
    def _predict(context: dg.AssetExecutionContext, duckdb: DuckDBResource, paths: PathsResource,
                 mlflow: MLflowResource, compute: ComputeResource) -> dg.MaterializeResult:
        p = paths.paths()
        tracker = mlflow.tracker(p)
        name = registered_name(spec.name, task_name)
        champion = tracker.alias_version(name, CHAMPION)
        if champion is not None:
            with duckdb.get_connection() as con:
                live = con.sql(f"SELECT {q_list(keys)}, cutoff FROM {q(f'task_{task_name}_live')} "
                               "ORDER BY __entity_id").df()
            # The pyfunc opens the warehouse itself (read-only); no connection is held here.
            model = load_version(tracker, name, str(champion.version), p.root, compute.device)
            scores = model.predict(live)
            used, version = champion.tags.get("model", "?"), version_uri(name, str(champion.version))
            source = f"champion v{champion.version}"
        else:
            used = best_of_run(p, spec, task, context.run.run_id)
            if used is None:
                raise dg.Failure(f"{name} has no champion and run {context.run.run_id} trained no "
                                 f"model of {task_name}; run the champion asset first")
            context.log.warning("%s has no champion yet; scoring with this run's best model, %s",
                                name, used)
            run = load_results(p, spec.name, task_name, context.run.run_id)[used]["runs"][0]
            prep = prepare_task(duckdb.get_connection, spec, task,
                                graph=upstream_graph(context, spec, duckdb.get_connection, p))
            scores = model_scores(prep, used, run["checkpoint"], device=compute.device)
            version = run.get("mlflow_run_id") or "local"
            source = "the run's best model (no champion)"
        with duckdb.get_connection() as con:
            table = predictions_table(con, spec, task, used, scores, version)
        path = write_predictions(duckdb.get_connection, task, table, p.predictions / spec.name)
        prune_cache(p.graphs / spec.name)  # scoring may have rebuilt the champion's graph
        context.log.info("scored %d live entities with %s (%s)", table.num_rows, used, source)
        return dg.MaterializeResult(metadata={
            "rows": table.num_rows, "model": used, "model_version": version, "source": source,
            "parquet": dg.MetadataValue.path(str(path)),
            "preview": dg.MetadataValue.md(table.slice(0, 5).to_pandas().to_markdown(index=False)
                                           if table.num_rows else "(empty)"),
        })

    return _predict
