"""Jobs: the nightly retraining job per dataset (extract -> tasks -> graph -> train -> evaluate)."""

from __future__ import annotations

import dagster as dg

from pipeline.data.spec import DatasetSpec


def nightly_job(spec: DatasetSpec) -> dg.UnresolvedAssetJobDefinition:
    return dg.define_asset_job(
        f"{spec.name}_nightly", selection=dg.AssetSelection.groups(spec.name),
        description=f"Extract {spec.name}, rebuild tasks and graph, retrain and evaluate every model.",
        tags={"dagster/max_retries": "1"})
