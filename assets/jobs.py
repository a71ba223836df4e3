"""Jobs: the nightly retraining job per dataset (extract -> tasks -> graph -> train -> evaluate)."""

from __future__ import annotations

import dagster as dg

from assets import names
from pipeline.data.spec import DatasetSpec


def nightly_job(spec: DatasetSpec) -> dg.UnresolvedAssetJobDefinition:
    return dg.define_asset_job(
        names.job_name(spec), selection=dg.AssetSelection.groups(names.group(spec)),
        description=f"Extract {spec.name}, rebuild tasks and graph, retrain and evaluate every model.",
        tags={"dagster/max_retries": "1"})
