"""Dagster resources: the data directory, the DuckDB warehouse, MLflow and the compute device."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import dagster as dg
from dagster_duckdb import DuckDBResource

from pipeline.paths import DataPaths
from pipeline.serving.tracking import Tracker


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


class WarehouseResource(DuckDBResource):
    """dagster-duckdb's resource, creating the warehouse's directory before connecting.

    A fresh data directory has none, and DuckDB then fails to open the file; the parent
    resource retries that failure with back-off for over a minute before it gives up."""

    @contextmanager
    def get_connection(self):
        Path(self.database).parent.mkdir(parents=True, exist_ok=True)
        with super().get_connection() as con:
            yield con


def default_resources() -> dict:
    paths = DataPaths.from_env()
    return {
        "paths": PathsResource(),
        "duckdb": WarehouseResource(database=str(paths.warehouse)),
        "mlflow": MLflowResource(),
        "compute": ComputeResource(),
    }
