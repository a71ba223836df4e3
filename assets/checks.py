"""Asset checks beyond extraction: what a task's rules repaired, and the champion gate.

- Task repairs (on `<dataset>/<task>`): what the task's rules dropped or kept under a
  policy (`build_task_table`'s `repairs`): examples whose entity is NULL
  (`null_entity`), not in the entity table as of the test cutoff (`dangling_entity`,
  RelBench's rule), created after the example's cutoff (`future_entity`, under
  `on_future_entity: drop | withhold`), link targets pruned from the lists
  (`pruned_target`), and an empty scoring set (`live_set`). Each fails with WARN
  severity: the count, the count per split, a few example keys and what was done.
- `champion_gate` (on `<dataset>/<task>/champion`): passes when the run's best model
  became the champion; fails with WARN severity, the reason in its description and
  metadata, when it was kept as challenger.

Freshness is not a check: the source tables and champions carry Dagster freshness
policies (assets/freshness.py).
"""

from __future__ import annotations

import math

import dagster as dg

from pipeline.serving.registry import GateDecision
from pipeline.data.spec import DatasetSpec

CHAMPION_GATE = "champion_gate"


# Task checks: name -> (repair kinds it covers, what it checks)
TASK_CHECKS = {
    "null_entity": (("null_entity",), "no example names a NULL entity key"),
    "dangling_entity": (("dangling_entity",), "every example's entity is in the entity table "
                                              "as of the test cutoff"),
    "future_entity": (("future_entity",), "no example's entity is created after its cutoff"),
    "pruned_target": (("pruned_target",), "no target is created after the test cutoff"),
    "live_set": (("empty_live_set",), "some entity is live at the newest timestamp"),
}


def task_check_names(spec: DatasetSpec, task) -> list[str]:
    """The repair checks that can fail for `task`, given its options."""
    relbench_like = task.label_database == "per_split" or task.relbench is not None
    out = []
    if relbench_like:
        out.append("null_entity")
    if task.label_database == "per_split":
        out.append("dangling_entity")
        if task.kind.ranks_targets:
            out.append("pruned_target")
    if spec.tables[task.entity_table].time_column and task.on_future_entity != "fail":
        out.append("future_entity")
    return out + ["live_set"]


def task_check_specs(spec: DatasetSpec, task, key: dg.AssetKey) -> list[dg.AssetCheckSpec]:
    return [dg.AssetCheckSpec(name, asset=key, description=TASK_CHECKS[name][1])
            for name in task_check_names(spec, task)]


def task_check_results(spec: DatasetSpec, task, key: dg.AssetKey, repairs: list[dict]):
    """One result per check of `task_check_specs`: WARN with the repairs it covers."""
    for name in task_check_names(spec, task):
        found = [r for r in repairs if r["kind"] in TASK_CHECKS[name][0]]
        by_split: dict[str, int] = {}
        for r in found:
            for split, n in r["by_split"].items():
                by_split[split] = by_split.get(split, 0) + n
        meta = {"count": sum(r["count"] for r in found),
                "by_split": dg.MetadataValue.json(by_split),
                "examples": dg.MetadataValue.md("\n".join(
                    f"- {e}" for r in found for e in r["examples"]) or "none"),
                "action": "; ".join(r["action"] for r in found) or "none"}
        if any("examples_emptied" in r for r in found):
            meta["examples_emptied"] = sum(r.get("examples_emptied", 0) for r in found)
        yield dg.AssetCheckResult(asset_key=key, check_name=name, passed=not found,
                                  severity=dg.AssetCheckSeverity.WARN, metadata=meta,
                                  description="; ".join(r["message"] for r in found) or None)


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
