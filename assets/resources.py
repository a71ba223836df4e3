"""Dagster resources: the data directory, the DuckDB warehouse, MLflow and the compute device."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
from dagster_duckdb import DuckDBResource

from pipeline.paths import DataPaths
from pipeline.tracking import Tracker


class PathsResource(dg.ConfigurableResource):
    """The data directory; empty means $RELGRAPH_DATA (default ./data)."""

    data_dir: str = ""

    def paths(self) -> DataPaths:
        return DataPaths.from_env() if not self.data_dir else DataPaths(Path(self.data_dir).resolve())


class MLflowResource(dg.ConfigurableResource):
    """MLflow tracking; empty URI means $MLFLOW_TRACKING_URI or the sqlite store under data/."""

    tracking_uri: str = ""

    def tracker(self, paths: DataPaths) -> Tracker:
        return Tracker(self.tracking_uri) if self.tracking_uri else Tracker.default(paths)


class ComputeResource(dg.ConfigurableResource):
    """Where models train: auto (CUDA when present), cpu, cuda or cuda:N."""

    device: str = "auto"


def default_resources() -> dict:
    paths = DataPaths.from_env()
    return {
        "paths": PathsResource(),
        "duckdb": DuckDBResource(database=str(paths.warehouse)),
        "mlflow": MLflowResource(),
        "compute": ComputeResource(),
    }
