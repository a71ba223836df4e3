"""Freshness: every source table and every champion must have been updated within a
maximum lag, as Dagster freshness policies (`dg.FreshnessPolicy.time_window`) on the
assets themselves.

The lags come from $RELGRAPH_SOURCE_MAX_LAG_HOURS (default 26: one nightly run plus
slack) and $RELGRAPH_CHAMPION_MAX_LAG_HOURS (default 50: a missed night is already
alerted by the run-failure sensor; two mean retraining has stopped). The daemon's
freshness evaluation (`freshness: enabled` in dagster.yaml) shows each asset as fresh
(PASS), WARN past half its lag, or FAIL past it, on the asset's page and in the catalog;
an asset never materialized is UNKNOWN.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Sequence

import dagster as dg

from assets import names
from pipeline.data.spec import DatasetSpec


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
    """Maximum age, in hours, of the last update before an asset is stale (FAIL); it is
    WARN from half that age."""

    source_max_lag_hours: float = 26.0
    champion_max_lag_hours: float = 50.0

    @classmethod
    def from_env(cls) -> "FreshnessConfig":
        return cls(source_max_lag_hours=_hours("RELGRAPH_SOURCE_MAX_LAG_HOURS", cls.source_max_lag_hours),
                   champion_max_lag_hours=_hours("RELGRAPH_CHAMPION_MAX_LAG_HOURS",
                                                 cls.champion_max_lag_hours))


def _policy(hours: float) -> dg.FreshnessPolicy:
    fail = timedelta(hours=hours)
    # Dagster refuses windows under a minute; a lag under two minutes gets no WARN.
    warn = fail / 2 if fail >= timedelta(minutes=2) else None
    return dg.FreshnessPolicy.time_window(fail_window=fail, warn_window=warn)


def freshness_policies(spec: DatasetSpec, config: FreshnessConfig | None = None
                       ) -> dict[dg.AssetKey, dg.FreshnessPolicy]:
    """The policy of every source table and champion asset of `spec`."""
    config = config or FreshnessConfig.from_env()
    out = {names.table_key(spec, t): _policy(config.source_max_lag_hours) for t in spec.tables}
    out.update({names.champion_key(spec, t): _policy(config.champion_max_lag_hours)
                for t in spec.tasks})
    return out


def with_freshness(spec: DatasetSpec, assets: Sequence[dg.AssetsDefinition],
                   config: FreshnessConfig | None = None) -> list[dg.AssetsDefinition]:
    """`assets` with the freshness policies of `freshness_policies` attached."""
    policies = freshness_policies(spec, config)
    return list(dg.map_asset_specs(
        lambda s: dg.apply_freshness_policy(s, policies[s.key]) if s.key in policies else s, assets))
