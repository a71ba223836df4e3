"""Asset checks beyond extraction: the champion gate and freshness.

- `champion_gate` (on `<dataset>/<task>/champion`): passes when the run's best model
  became the champion; fails with WARN severity, the reason in its description and
  metadata, when it was kept as challenger.
- Freshness: every source table and every champion asset must have been updated within
  a maximum lag (hours), from $RELGRAPH_SOURCE_MAX_LAG_HOURS (default 26: one nightly
  run plus slack) and $RELGRAPH_CHAMPION_MAX_LAG_HOURS (default 50: a missed night is
  already alerted by the run-failure sensor; two mean retraining has stopped). A sensor
  evaluates them every `sensor_interval_s`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from datetime import timedelta

import dagster as dg

from assets import names
from pipeline.serving.registry import GateDecision
from pipeline.data.spec import DatasetSpec

CHAMPION_GATE = "champion_gate"


def champion_gate_spec(key: dg.AssetKey) -> dg.AssetCheckSpec:
    return dg.AssetCheckSpec(CHAMPION_GATE, asset=key,
                             description="The run's best model beats the champion, re-scored on "
                                         "the current validation split")


def _num(value: float | None):
    return None if value is None or math.isnan(value) else float(value)


def champion_gate_result(key: dg.AssetKey, d: GateDecision) -> dg.AssetCheckResult:
    meta = {
        "decision": "promoted to champion" if d.promoted else "kept as challenger",
        "reason": dg.MetadataValue.md(d.reason),
        "registered_model": d.registered_model,
        "candidate": f"v{d.candidate_version} ({d.candidate_model})",
        "champion": f"v{d.champion_after}",
    }
    for name, value in ((f"candidate_val_{d.metric}", d.candidate_val),
                        (f"champion_val_{d.metric}", d.champion_val)):
        if _num(value) is not None:
            meta[name] = _num(value)
    return dg.AssetCheckResult(asset_key=key, check_name=CHAMPION_GATE, passed=d.promoted,
                               severity=dg.AssetCheckSeverity.WARN, metadata=meta,
                               description=d.reason)


def _hours(env: str, default: float) -> float:
    raw = os.environ.get(env, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"${env} must be a number of hours, got '{raw}'") from None
    if value <= 0:
        raise ValueError(f"${env} must be positive, got {value}")
    return value


@dataclass(frozen=True)
class FreshnessConfig:
    """Maximum age, in hours, of the last update before a freshness check fails (WARN)."""

    source_max_lag_hours: float = 26.0
    champion_max_lag_hours: float = 50.0
    sensor_interval_s: int = 600

    @classmethod
    def from_env(cls) -> "FreshnessConfig":
        return cls(source_max_lag_hours=_hours("RELGRAPH_SOURCE_MAX_LAG_HOURS", cls.source_max_lag_hours),
                   champion_max_lag_hours=_hours("RELGRAPH_CHAMPION_MAX_LAG_HOURS",
                                                 cls.champion_max_lag_hours))


def freshness_checks(specs: list[DatasetSpec], config: FreshnessConfig | None = None
                     ) -> list[dg.AssetChecksDefinition]:
    """Last-update freshness checks for the source tables and the champion assets."""
    config = config or FreshnessConfig.from_env()
    tables = [names.table_key(s, t) for s in specs for t in s.tables]
    champions = [names.champion_key(s, t) for s in specs for t in s.tasks]
    checks = []
    if tables:
        checks += dg.build_last_update_freshness_checks(
            assets=tables, lower_bound_delta=timedelta(hours=config.source_max_lag_hours))
    if champions:
        checks += dg.build_last_update_freshness_checks(
            assets=champions, lower_bound_delta=timedelta(hours=config.champion_max_lag_hours))
    return list(checks)


def freshness_sensor(checks: list[dg.AssetChecksDefinition],
                     config: FreshnessConfig | None = None) -> dg.SensorDefinition:
    config = config or FreshnessConfig.from_env()
    return dg.build_sensor_for_freshness_checks(
        freshness_checks=checks, minimum_interval_seconds=config.sensor_interval_s,
        name="relgraph_freshness", default_status=dg.DefaultSensorStatus.RUNNING)
