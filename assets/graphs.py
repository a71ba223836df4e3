"""The graph asset: the warehouse as a heterogeneous graph, cached by content hash."""

from pathlib import Path

import dagster as dg
from dagster_duckdb import DuckDBResource

from assets import names
from assets.resources import PathsResource
from pipeline.data.spec import DatasetSpec
from pipeline.graph.build import GraphArtifact, load_graph, prune_cache
from pipeline.graph.features import FeatureConfig
from pipeline.paths import DataPaths
from pipeline.training.prepare import Connect, task_graph


def upstream_graph(context: dg.AssetExecutionContext, spec: DatasetSpec, connect: Connect,
                   paths: DataPaths) -> GraphArtifact:
    """The graph asset's output when it was materialized in this run (the path in its
    metadata); otherwise, when a step runs without it, the graph that the warehouse gives
    now (a cache hit when the graph asset built it from the same rows)."""
    event = context.instance.get_latest_materialization_event(names.graph_key(spec))
    if event is not None and event.run_id == context.run.run_id:
        path = Path(event.asset_materialization.metadata["path"].value)
        if path.exists():
            return load_graph(path)
    with connect() as con:
        return task_graph(con, spec, FeatureConfig(), paths.graphs / spec.name)


def graph_asset(spec: DatasetSpec) -> dg.AssetsDefinition:
    @dg.asset(key=names.graph_key(spec), deps=[names.table_key(spec, t) for t in spec.tables],
              pool="warehouse", group_name=names.group(spec), kinds={"pytorch"},
              description="Heterogeneous graph: a node per row, an edge per foreign key (both ways).")
    def _graph(context: dg.AssetExecutionContext, duckdb: DuckDBResource,
               paths: PathsResource) -> dg.MaterializeResult:
        p = paths.paths()
        with duckdb.get_connection() as con:
            art = task_graph(con, spec, FeatureConfig(), p.graphs / spec.name)
        prune_cache(p.graphs / spec.name)
        s = art.stats
        table = ["| node type | nodes | features |", "|---|---|---|"]
        for nt, n in s["nodes"].items():
            table.append(f"| {nt} | {n} | {s.get('feature_dims', {}).get(nt, '')} |")
        table += ["", "| edge type | edges |", "|---|---|"]
        for et, n in s["edges"].items():
            table.append(f"| {et} | {n} |")
        context.log.info("graph %s at %s (cache %s)", art.hash, art.path, "hit" if art.cache_hit else "miss")
        return dg.MaterializeResult(metadata={
            "graph_hash": art.hash, "path": dg.MetadataValue.path(str(art.path)),
            "cache_hit": art.cache_hit, "sizes": dg.MetadataValue.md("\n".join(table)),
            "num_nodes": int(sum(s["nodes"].values())), "num_edges": int(sum(s["edges"].values())),
            "build_seconds": float(s.get("build_seconds", 0.0)), "bytes": int(s.get("bytes", 0)),
        })

    return _graph
