"""Where the pipeline writes: everything under one data directory (RELGRAPH_DATA)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class DataPaths:
    """The layout of the data directory; `root` defaults to $RELGRAPH_DATA or ./data."""

    root: Path

    @classmethod
    def from_env(cls) -> "DataPaths":
        return cls(Path(os.environ.get("RELGRAPH_DATA", "data")).resolve())

    @property
    def warehouse(self) -> Path:
        return self.root / "warehouse.duckdb"

    @property
    def graphs(self) -> Path:
        return self.root / "graphs"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def results(self) -> Path:
        return self.root / "results"

    @property
    def predictions(self) -> Path:
        return self.root / "predictions"

    @property
    def mlflow(self) -> Path:
        return self.root / "mlflow"

    @property
    def dagster_home(self) -> Path:
        return self.root / "dagster"

    def mlflow_uri(self) -> str:
        return f"sqlite:///{self.mlflow / 'mlflow.db'}"
