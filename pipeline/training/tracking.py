"""MLflow tracking: one experiment per dataset and task, one parent run per Dagster run,
one nested run per trained model; registry aliases (`champion`, `challenger`).

Names follow the design's contract: experiment `relgraph/<dataset>/<task>`, params
`model`, metrics `val_<metric>` / `test_<metric>` and per-epoch `train_loss` and
`val_<metric>` with step=epoch, tags `dagster_run_id`, `dataset`, `task`, `graph_hash`.
The client API is used throughout (no global active run), so tracking is safe to call
from any process and leaves no state behind.
"""

from __future__ import annotations

import math
import os
import subprocess
import time
import urllib.parse
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from pipeline.paths import DataPaths


class TrackingError(RuntimeError):
    """MLflow cannot be reached or refused a write; the message names the URI."""


def redact(uri: str) -> str:
    """The URI with any password replaced, for messages and logs."""
    parts = urllib.parse.urlsplit(uri)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urllib.parse.urlunsplit(parts._replace(netloc=netloc))
    return uri


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


@dataclass
class Tracker:
    tracking_uri: str
    artifact_root: Path | None = None

    @classmethod
    def default(cls, paths: DataPaths | None = None) -> "Tracker":
        """$MLFLOW_TRACKING_URI if set, else the sqlite store under the data directory."""
        paths = paths or DataPaths.from_env()
        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if uri:
            return cls(uri)
        return cls(paths.mlflow_uri(), paths.mlflow / "artifacts")

    @property
    def client(self):
        from mlflow.tracking import MlflowClient

        if self.tracking_uri.startswith("sqlite:///"):
            Path(self.tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        # The registry lives in the same store; left unset, MLflow would pick its default
        # (./mlflow.db in the working directory), not this one.
        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    def check(self) -> None:
        """Fail fast, before any training, when the tracking server cannot be used."""
        if self.tracking_uri.startswith("file:") or "://" not in self.tracking_uri:
            raise TrackingError(f"MLflow tracking URI {redact(self.tracking_uri)} is a file store, "
                                "which MLflow 3 refuses; use sqlite:///path/mlflow.db or http://host:port")
        if self.tracking_uri.startswith(("http://", "https://")):
            import urllib.request

            try:
                urllib.request.urlopen(self.tracking_uri.rstrip("/") + "/health", timeout=10).read()
            except OSError as exc:
                raise TrackingError(f"MLflow tracking server {redact(self.tracking_uri)} is not "
                                    f"reachable ({exc}); start it or set MLFLOW_TRACKING_URI") from None
        try:
            self.client.search_experiments(max_results=1)
        except Exception as exc:  # MLflow raises many types; all mean "cannot use this store"
            raise TrackingError(f"MLflow tracking store {redact(self.tracking_uri)} cannot be used: "
                                f"{str(exc).splitlines()[0]}") from None

    def experiment(self, dataset: str, task: str) -> str:
        name = f"relgraph/{dataset}/{task}"
        client = self.client
        exp = client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        location = None
        if self.artifact_root is not None:
            location = (self.artifact_root / dataset / task).resolve().as_uri()
        return client.create_experiment(name, artifact_location=location)

    def parent_run(self, experiment_id: str, dagster_run_id: str, tags: dict[str, str]) -> str:
        """The run standing for one Dagster run; created on first use, then reused."""
        client = self.client
        found = client.search_runs([experiment_id],
                                   f"tags.dagster_run_id = '{dagster_run_id}' "
                                   "and tags.relgraph_role = 'parent'", max_results=1)
        if found:
            return found[0].info.run_id
        run = client.create_run(experiment_id, run_name=f"dagster-{dagster_run_id[:8]}",
                                tags={**tags, "dagster_run_id": dagster_run_id,
                                      "relgraph_role": "parent"})
        return run.info.run_id

    def start_model_run(self, experiment_id: str, parent_id: str, model: str,
                        tags: dict[str, str]) -> str:
        """A nested run for one model, open while it trains (see `system_metrics`)."""
        run = self.client.create_run(experiment_id, run_name=model,
                                     tags={**tags, "mlflow.parentRunId": parent_id,
                                           "relgraph_role": "model"})
        return run.info.run_id

    @contextmanager
    def system_metrics(self, run_id: str) -> Iterator[None]:
        """MLflow's own system metrics (CPU, memory, disk, network; GPU where MLflow's
        monitor finds one) of `run_id` while the block runs: its "System metrics" tab.
        MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL sets the seconds between samples (10)."""
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(run_id, tracking_uri=self.tracking_uri)
        monitor.start()
        try:
            yield
        finally:
            monitor.finish()

    def log_model_run(self, experiment_id: str, parent_id: str, *, model: str, params: dict,
                      history: list[dict], metrics: dict[str, float], tags: dict[str, str],
                      artifacts: list[Path] = (), run_id: str | None = None) -> str:
        """One nested run (`run_id`, or a new one): params, per-epoch curves, final
        metrics, artifacts; the run is finished."""
        from mlflow.entities import Metric, Param, RunTag

        client = self.client
        run_id = run_id or self.start_model_run(experiment_id, parent_id, model, tags)
        now = int(time.time() * 1000)
        all_params = {"model": model, **params}
        epoch_metrics = [Metric(k, float(v), now, int(row["epoch"])) for row in history
                         for k, v in row.items() if k != "epoch" and _finite(v)]
        # Final metrics go at the last epoch's step with a later timestamp, so MLflow shows
        # them (the best checkpoint's numbers) as the run's value of val_<metric>.
        last = max((int(row["epoch"]) for row in history), default=0)
        final = [Metric(k, float(v), now + 1, last) for k, v in metrics.items() if _finite(v)]
        ps = [Param(k, str(v)[:6000]) for k, v in all_params.items()]
        try:
            for i in range(0, max(len(ps), 1), 100):
                client.log_batch(run_id, params=ps[i:i + 100])
            for i in range(0, len(epoch_metrics) + len(final), 1000):
                client.log_batch(run_id, metrics=(epoch_metrics + final)[i:i + 1000])
            client.log_batch(run_id, tags=[RunTag("model", model)])
            for path in artifacts:
                client.log_artifact(run_id, str(path))
        except Exception:
            client.set_terminated(run_id, "FAILED")
            raise
        client.set_terminated(run_id, "FINISHED")
        return run_id

    def alias_version(self, name: str, alias: str):
        """The ModelVersion that `alias` of registered model `name` points at, or None."""
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_model_version_by_alias(name, alias)
        except MlflowException as exc:
            # No such model or alias is the normal state before the first promotion.
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                return None
            raise

    def log_parent(self, run_id: str, metrics: dict[str, float], artifacts: list[Path] = (),
                   finish: bool = False) -> None:
        from mlflow.entities import Metric

        client = self.client
        now = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0)
                                          for k, v in metrics.items() if _finite(v)])
        for path in artifacts:
            client.log_artifact(run_id, str(path))
        if finish:
            client.set_terminated(run_id, "FINISHED")


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not math.isnan(float(v)) and not math.isinf(float(v))


def run_url(ui: str, experiment_id: str, run_id: str | None = None) -> str:
    """The MLflow UI page of a run (or of the experiment's runs table when run_id is None)."""
    base = f"{ui.rstrip('/')}/#/experiments/{experiment_id}"
    return f"{base}/runs/{run_id}" if run_id else f"{base}/runs"


@contextmanager
def mlflow_uri(uri: str) -> Iterator[None]:
    """Point MLflow's fluent API (log_model, load_model) at `uri` for the block, then
    restore the previous URIs and environment variables: the fluent API has no
    per-call URI, and it exports its URIs to the environment, which `Tracker.default`
    reads."""
    import mlflow
    from mlflow.tracking._model_registry import utils as registry_state
    from mlflow.tracking._tracking_service import utils as tracking_state

    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    # What was set, not what get_*_uri() resolves: restoring a resolved default would pin
    # it, and a later MlflowClient(tracking_uri) would read another store's registry.
    previous = tracking_state._tracking_uri, registry_state._registry_uri
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous[0])
        mlflow.set_registry_uri(previous[1])
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
