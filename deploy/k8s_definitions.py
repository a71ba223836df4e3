"""The Kubernetes code location: the assets of `assets.definitions`, each step in its own pod.

Loaded by the user code deployment (`dagster api grpc -f deploy/k8s_definitions.py`, see
deploy/values.yaml). It adds one thing to the local code location: the `k8s_job_executor`
of dagster-k8s, configured so that

- every GNN training step (an asset in the pool `gpu` that trains with PyTorch) requests
  one GPU: `per_step_k8s_config[<op name>]` = `GPU_STEP_CONFIG`; the LightGBM baselines
  (pool `gpu` too, so that they queue with the rest of training) and every other step
  run on CPU nodes;
- every other step gets the CPU and memory of `STEP_RESOURCES`;
- the warehouse is `PublishedWarehouse` (deploy/warehouse.py): the steps of the pool
  `warehouse` write a working copy and publish snapshots, every other step reads the newest
  snapshot read-only, so that a training pod never meets a writing pod's lock.

The GPU request is the same Kubernetes config the op tag `dagster-k8s/config` carries; an
asset defined with `op_tags={"dagster-k8s/config": GPU_STEP_CONFIG}` gets it from the tag
instead, and the two merge.
"""

from __future__ import annotations

import dagster as dg
from dagster_k8s import k8s_job_executor

from assets.definitions import build_definitions
from deploy.warehouse import PublishedWarehouse
from pipeline.paths import DataPaths

# Kubernetes schedules a pod that sets a GPU limit onto a node with a free GPU (the NVIDIA
# device plugin advertises `nvidia.com/gpu`); the toleration lets it onto GPU nodes that
# are tainted to keep other pods off.
GPU_STEP_CONFIG = {
    "container_config": {
        "resources": {
            "requests": {"cpu": "4", "memory": "24Gi"},
            "limits": {"nvidia.com/gpu": 1, "memory": "48Gi"},
        },
    },
    "pod_spec_config": {
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    },
}
# Extract, tasks, graph, evaluation, predictions, LightGBM: DuckDB and polars on CPU.
STEP_RESOURCES = {
    "container_config": {
        "resources": {"requests": {"cpu": "2", "memory": "8Gi"}, "limits": {"memory": "32Gi"}},
    },
}


def gpu_ops(defs: dg.Definitions) -> list[str]:
    """Op names of the steps that train a graph model: pool `gpu` and kind `pytorch`."""
    graph = defs.resolve_asset_graph()
    ops = set()
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        if "gpu" in node.pools and "pytorch" in node.kinds:
            ops.add(node.assets_def.node_def.name)
    return sorted(ops)


def executor_config(defs: dg.Definitions) -> dict:
    """The k8s_job_executor's config for the assets of `defs`."""
    return {
        "step_k8s_config": STEP_RESOURCES,
        "per_step_k8s_config": {op: GPU_STEP_CONFIG for op in gpu_ops(defs)},
        # Step pods of a finished run are deleted with its run worker pod.
        "enable_owner_references": True,
    }


def k8s_definitions(base: dg.Definitions | None = None) -> dg.Definitions:
    """`base` (default: every dataset spec in $RELGRAPH_DATASETS) with the k8s executor and
    the published-snapshot warehouse."""
    base = base if base is not None else build_definitions(executor=None)
    executor = k8s_job_executor.configured(executor_config(base), name="relgraph_k8s")
    warehouse = PublishedWarehouse(database=str(DataPaths.from_env().warehouse))
    return dg.Definitions(
        assets=base.assets, asset_checks=base.asset_checks, jobs=base.jobs,
        schedules=base.schedules, sensors=base.sensors, loggers=base.loggers,
        metadata=base.metadata, resources={**(base.resources or {}), "duckdb": warehouse},
        executor=executor)


defs = k8s_definitions()
