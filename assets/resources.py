"""Dagster resources: the data directory, the DuckDB warehouse, MLflow and the compute device."""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import duckdb
from dagster_duckdb import DuckDBResource

from pipeline.paths import DataPaths
from pipeline.training.tracking import Tracker


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
    """dagster-duckdb's resource: read-write in the steps of the pool `warehouse`, read-only
    in every other step.

    Every asset that writes the warehouse is in the pool `warehouse` (one at a time); the
    others (training, evaluation, the champion) only read, and several of them can then
    hold the file at once. DuckDB still refuses a reading process beside a writing one on
    one file ("Conflicting lock is held"): a reader retries for `lock_wait_s` seconds, then
    fails with an error that says so. Outside a step (the CLI, a notebook) it opens
    read-write, as before.

    A writer creates the warehouse's directory first: a fresh data directory has none, and
    DuckDB then fails to open the file; the parent resource retries that failure with
    back-off for over a minute before it gives up."""

    lock_wait_s: float = 300.0

    @contextmanager
    def get_connection(self):
        if _step_pool() not in (None, "warehouse") and self.database != ":memory:":
            con = self._connect_read_only()
            try:
                yield con
            finally:
                con.close()
            return
        Path(self.database).parent.mkdir(parents=True, exist_ok=True)
        with super().get_connection() as con:
            yield con

    def _connect_read_only(self) -> duckdb.DuckDBPyConnection:
        deadline, delay = time.monotonic() + self.lock_wait_s, 0.1
        while True:
            try:
                return duckdb.connect(self.database, read_only=True,
                                      config={"custom_user_agent": "dagster", **self.connection_config})
            except duckdb.IOException as exc:
                if "lock" not in str(exc).lower():
                    raise
                if time.monotonic() >= deadline:
                    raise dg.Failure(
                        f"the warehouse {self.database} stayed locked by a writing process for "
                        f"{self.lock_wait_s:g} s; this step only reads it (read-only), and DuckDB "
                        f"lets no reader beside a writer on one file. ({exc})") from exc
                time.sleep(min(delay, max(deadline - time.monotonic(), 0.0)))
                delay = min(delay * 2, 5.0)


def _step_pool() -> str | None:
    """The pool of the asset whose step runs this code; None outside a step."""
    try:
        return dg.AssetExecutionContext.get().op_def.pool or ""
    except dg.DagsterInvariantViolationError:
        return None


def default_resources() -> dict:
    paths = DataPaths.from_env()
    return {
        "paths": PathsResource(),
        "duckdb": WarehouseResource(database=str(paths.warehouse)),
        "mlflow": MLflowResource(),
        "compute": ComputeResource(),
    }
