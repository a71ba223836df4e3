"""One asset per task: the label table at train/val/test cutoffs, with WARN checks of what
the task's rules repaired (assets/checks.py)."""


import dagster as dg
from dagster_duckdb import DuckDBResource

from assets import names
from assets.checks import task_check_results, task_check_specs
from pipeline.data.spec import DatasetSpec
from pipeline.data.tasks import build_task_table


def task_assets(spec: DatasetSpec) -> list[dg.AssetsDefinition]:
    out = []
    for task in spec.tasks.values():
        out.append(_task_asset(spec, task.name))
    return out


def _task_asset(spec: DatasetSpec, task_name: str) -> dg.AssetsDefinition:
    task = spec.tasks[task_name]

    @dg.asset(key=names.task_key(spec, task_name), deps=[names.table_key(spec, t) for t in spec.tables],
              pool="warehouse", group_name=names.group(spec), kinds={"duckdb"},
              description=f"Labels of task {task_name} ({task.type}) at every cutoff.",
              check_specs=task_check_specs(spec, task, names.task_key(spec, task_name)),
              metadata={"dataset": spec.name, "task": task_name})
    def _labels(context: dg.AssetExecutionContext, duckdb: DuckDBResource):
        with duckdb.get_connection() as con:
            summary = build_task_table(con, spec, task)
        rows = ["| split | " + " | ".join(next(iter(summary["splits"].values())).keys()) + " |",
                "|---" * (1 + len(next(iter(summary["splits"].values())))) + "|"]
        for split in ("train", "val", "test"):
            s = summary["splits"][split]
            rows.append(f"| {split} | " + " | ".join(
                f"{v:.4f}" if isinstance(v, float) else str(v) for v in s.values()) + " |")
        stat = task.kind.label_stat
        context.log.info("%s: %s; %d live entities", task_name, ", ".join(
            f"{split} {s['examples']} examples at {s['cutoffs']} cutoffs "
            f"({stat.replace('_', ' ')} {s[stat]:.3f})" if s[stat] is not None else
            f"{split} {s['examples']} examples at {s['cutoffs']} cutoffs"
            for split, s in ((k, summary["splits"][k]) for k in ("train", "val", "test"))),
            summary["live_entities"])
        for repair in summary["repairs"]:
            context.log.warning(repair["message"])
        yield from task_check_results(spec, task, names.task_key(spec, task_name), summary["repairs"])
        yield dg.MaterializeResult(metadata={
            "splits": dg.MetadataValue.md("\n".join(rows)),
            "live_entities": summary["live_entities"],
            "cutoffs": dg.MetadataValue.json(summary["cutoffs"]),
            **{f"{split}_examples": s["examples"] for split, s in summary["splits"].items()},
            "live_from": summary["live_from"],
            **_sql_metadata(task),
        })

    return _labels


def _sql_metadata(task) -> dict:
    """The SQL that made the labels (compiled from the task's query, when it has one)."""
    out = {"label_sql": dg.MetadataValue.md(f"```sql\n{task.label_sql.strip()}\n```")}
    if task.entity_sql:
        out["entity_sql"] = dg.MetadataValue.md(f"```sql\n{task.entity_sql.strip()}\n```")
    if task.query:
        out["query"] = dg.MetadataValue.text(task.query)
    return out
