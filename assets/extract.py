"""One asset per source table: extract into the DuckDB warehouse, with asset checks.

The checks look at the data as extracted and report what the spec's policies repaired:
a repaired problem (orphans under `on_orphan: null`) fails its check with WARN severity;
a problem that stops the pipeline (duplicate keys under `fail`) with ERROR severity.
"""


import dagster as dg
from dagster_duckdb import DuckDBResource

from assets import names
from assets.resources import PathsResource
from pipeline.data.sources import open_source
from pipeline.data.spec import DatasetSpec, TableSpec
from pipeline.data.warehouse import Problem, WarehouseError, extract_table

# Which problem kinds each check covers.
CHECK_KINDS = {
    "primary_key": ("duplicate_key", "null_key"),
    "foreign_keys": ("orphan",),
    "time_column": ("null_time", "unparsable_time", "future_time"),
    "columns": ("mixed_types", "empty_table"),
}


def _checks_for(t: TableSpec) -> list[str]:
    names = ["columns"]
    if t.primary_key:
        names.append("primary_key")
    if t.foreign_keys:
        names.append("foreign_keys")
    if t.time_column:
        names.append("time_column")
    return names


def _check_results(key: dg.AssetKey, t: TableSpec, problems: list[Problem]):
    for name in _checks_for(t):
        found = [p for p in problems if p.kind in CHECK_KINDS[name]]
        severity = (dg.AssetCheckSeverity.ERROR if any(p.severity == "error" for p in found)
                    else dg.AssetCheckSeverity.WARN)
        meta = {"problems": dg.MetadataValue.md("\n".join(f"- {p.message}" for p in found) or "none"),
                "rows_affected": sum(p.count for p in found)}
        yield dg.AssetCheckResult(asset_key=key, check_name=name, passed=not found,
                                  severity=severity, metadata=meta,
                                  description="; ".join(p.message for p in found) or None)


def extract_assets(spec: DatasetSpec) -> list[dg.AssetsDefinition]:
    return [_extract_asset(spec, name) for name in spec.extract_order()]


def _extract_asset(spec: DatasetSpec, name: str) -> dg.AssetsDefinition:
    t = spec.tables[name]
    key = names.table_key(spec, name)
    deps = sorted({fk.references for fk in t.foreign_keys if fk.references != name})
    checks = [dg.AssetCheckSpec(c, asset=key, description=f"{c.replace('_', ' ')} of {name} as extracted")
              for c in _checks_for(t)]

    @dg.asset(key=key, deps=[names.table_key(spec, d) for d in deps], pool="warehouse",
              group_name=names.group(spec), kinds={"duckdb", spec.source.kind}, check_specs=checks,
              description=f"Table {name} extracted from the {spec.source.kind} source into DuckDB.")
    def _extract(context: dg.AssetExecutionContext, duckdb: DuckDBResource, paths: PathsResource):
        source = open_source(spec, paths.paths().root)
        fingerprint = source.fingerprint(name)
        with duckdb.get_connection() as con:
            try:
                report = extract_table(con, spec, name, source.read(name), fingerprint)
            except WarehouseError as exc:
                yield from _check_results(key, t, exc.problems)
                raise dg.Failure(description=str(exc)) from None
        yield from _check_results(key, t, report.problems)
        context.log.info(report.message)
        meta = {
            "rows": report.rows_out, "rows_in": report.rows_in, "rows_rejected": report.rows_rejected,
            "unchanged": report.skipped,
            "columns": dg.MetadataValue.md("| column | type |\n|---|---|\n" + "\n".join(
                f"| {c} | {ty} |" for c, ty in report.columns.items() if not c.startswith("__"))),
        }
        if report.time_range:
            meta["time_min"], meta["time_max"] = (str(v) for v in report.time_range)
        yield dg.MaterializeResult(metadata=meta)

    return _extract
