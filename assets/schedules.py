"""The nightly schedule: cron 0 2 * * * in $RELGRAPH_TIMEZONE (default UTC)."""

from __future__ import annotations

import os

import dagster as dg


def nightly_schedule(job) -> dg.ScheduleDefinition:
    return dg.ScheduleDefinition(
        name=f"{job.name}_schedule", job=job, cron_schedule=os.environ.get("RELGRAPH_CRON", "0 2 * * *"),
        execution_timezone=os.environ.get("RELGRAPH_TIMEZONE", "UTC"),
        default_status=dg.DefaultScheduleStatus.STOPPED)
