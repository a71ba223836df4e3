"""Per task: the comparison of every model trained in this run, and the champion gate.

`<dataset>/<task>/evaluation`: the metric table, the comparison plot and a link to the
run in the MLflow UI ($RELGRAPH_MLFLOW_UI, default http://127.0.0.1:5000; empty: no link).
`<dataset>/<task>/champion`: registers the run's models and moves the `champion` alias
to the run's best model only when it beats the current champion (check `champion_gate`).
"""

import base64
import os

import dagster as dg
from dagster_duckdb import DuckDBResource

from assets import names
from assets.checks import champion_gate_result, champion_gate_spec
from assets.resources import ComputeResource, MLflowResource, PathsResource
from pipeline.training.zoo import ALL_MODELS, model_entry
from pipeline.graph.build import prune_cache
from pipeline.serving.registry import best_of_run, champion_gate, register_run, version_uri
from pipeline.training.report import comparison
from pipeline.data.spec import DatasetSpec
from pipeline.training.tracking import run_url

MLFLOW_UI_DEFAULT = "http://127.0.0.1:5000"


def evaluation_assets(spec: DatasetSpec, models=ALL_MODELS) -> list[dg.AssetsDefinition]:
    return [a for task in spec.tasks
            for a in (_evaluation_asset(spec, task, models), _champion_asset(spec, task))]


def _evaluation_asset(spec: DatasetSpec, task_name: str, models) -> dg.AssetsDefinition:
    task = spec.tasks[task_name]

    @dg.asset(key=names.evaluation_key(spec, task_name),
              deps=[names.model_key(spec, task_name, m) for m in models],
              group_name=names.group(spec),
              description=f"Validation and test {task.metric} of every model on {task_name}.")
    def _evaluate(context: dg.AssetExecutionContext, paths: PathsResource,
                  mlflow: MLflowResource, duckdb: DuckDBResource) -> dg.MaterializeResult:
        p = paths.paths()
        tracker = mlflow.tracker(p)
        report = comparison(p, spec, task, run_id=context.run.run_id, tracker=tracker)
        if not report.rows:
            raise dg.Failure(f"no model of {task_name} was trained in run {context.run.run_id}; "
                             "materialize at least one model asset with this one")
        context.log.info("\n" + report.markdown)
        meta = {
            "results": dg.MetadataValue.md(report.markdown),
            "best_model": report.best, f"best_val_{task.metric}": report.best_val,
            "comparison": dg.MetadataValue.path(str(report.plot)),
            "experiment": f"relgraph/{spec.name}/{task_name}",
        }
        if report.plot is not None:
            # Inline, so the plot shows in the UI's metadata panel without a file server.
            png = base64.b64encode(report.plot.read_bytes()).decode()
            meta["comparison_plot"] = dg.MetadataValue.md(f"![comparison](data:image/png;base64,{png})")
        meta.update(_importance(p, tracker, spec, task, duckdb, context.run.run_id))
        ui = os.environ.get("RELGRAPH_MLFLOW_UI", MLFLOW_UI_DEFAULT).strip()
        parent = report.rows[0]["parent"]
        if ui and parent:
            experiment_id = tracker.experiment(spec.name, task_name)
            meta["mlflow_run"] = dg.MetadataValue.url(run_url(ui, experiment_id, parent))
        return dg.MaterializeResult(metadata=meta)

    return _evaluate


# Test examples the importance plots average over: enough for a stable ranking of tables
# and columns; integrated gradients over 256 took about 110 s of a small run's evaluation.
IMPORTANCE_EXAMPLES = 64


def _importance(p, tracker, spec: DatasetSpec, task, duckdb, run_id: str) -> dict:
    """A global importance plot (by table, by column) per model of the run, inline in the
    metadata and logged to the model's MLflow run (pipeline/serving/explain.py)."""
    from pipeline.serving.explain import importance_plots
    from pipeline.training.experiment import load_results
    from pipeline.training.prepare import prepare_task

    results = load_results(p, spec.name, task.name, run_id)
    graphs = any(model_entry(m).family.needs_graph for m in results)
    prep = prepare_task(duckdb.get_connection, spec, task,
                        graphs_dir=p.graphs / spec.name if graphs else None)
    plots = importance_plots(prep, results, p.results / spec.name / task.name,
                             n=IMPORTANCE_EXAMPLES)
    meta = {}
    for model, png in plots.items():
        data = base64.b64encode(png.read_bytes()).decode()
        meta[f"importance_{model}"] = dg.MetadataValue.md(
            f"![importance of {model}](data:image/png;base64,{data})")
        for run in results[model]["runs"]:
            if run.get("mlflow_run_id"):
                tracker.client.log_artifact(run["mlflow_run_id"], str(png), "explanations")
    return meta


def _champion_asset(spec: DatasetSpec, task_name: str) -> dg.AssetsDefinition:
    task = spec.tasks[task_name]
    key = names.champion_key(spec, task_name)

    @dg.asset(key=key, deps=[names.evaluation_key(spec, task_name)], group_name=names.group(spec),
              kinds={"mlflow"}, check_specs=[champion_gate_spec(key)],
              description=f"The registered champion of {task_name}: the run's models are "
                          "registered, and the best becomes champion only if it beats the "
                          "current one on today's validation split.")
    def _champion(context: dg.AssetExecutionContext, paths: PathsResource, mlflow: MLflowResource,
                  compute: ComputeResource):
        p = paths.paths()
        tracker = mlflow.tracker(p)
        best = best_of_run(p, spec, task, context.run.run_id)
        if best is None:
            raise dg.Failure(f"no model of {task_name} was trained in run {context.run.run_id}")
        versions = register_run(tracker, p, spec, task, context.run.run_id)
        context.log.info("registered %s", ", ".join(f"{m} as v{v}" for m, v in versions.items()))
        decision = champion_gate(tracker, p, spec, task, versions[best], device=compute.device)
        # Re-scoring an older graph-model champion rebuilt the graph it was trained on.
        prune_cache(p.graphs / spec.name)
        context.log.info(decision.reason)
        yield champion_gate_result(key, decision)
        yield dg.MaterializeResult(metadata={
            "registered_model": decision.registered_model,
            "champion_version": decision.champion_after,
            "champion_uri": version_uri(decision.registered_model, decision.champion_after),
            "candidate": f"v{decision.candidate_version} ({decision.candidate_model})",
            "promoted": decision.promoted,
            "versions": dg.MetadataValue.json(versions),
        })

    return _champion
