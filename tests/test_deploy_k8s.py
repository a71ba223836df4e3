"""The Kubernetes deployment with dagster-k8s's own code: the step pod of a training asset
as the k8s_job_executor builds it, and the Helm values rendered into the instance they make.

The chart itself is not on the package index, so `chart_instance` renders the instance
ConfigMap the way the chart's templates do (configmap-instance.yaml and its helpers:
postgresql, run launcher, run coordinator, compute log manager, concurrency), refusing
keys those templates do not read, and the result is compared with deploy/dagster.yaml
after Dagster has parsed both.
"""

import re
import sys
from pathlib import Path

import dagster as dg
import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
IMAGE = "registry.example.com/relgraph:0.1.0"
NAMESPACE = "relgraph"

pytest.importorskip("dagster_k8s", reason="dagster-k8s is not installed")
pytest.importorskip("dagster_postgres", reason="dagster-postgres is not installed")


def _values() -> dict:
    return yaml.safe_load((DEPLOY / "values.yaml").read_text())


def _snake(obj):
    """Keys camelCase -> snake_case, all the way down (Kubernetes takes either)."""
    if isinstance(obj, dict):
        return {re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", k).lower(): _snake(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_snake(v) for v in obj]
    return obj


# ---------------------------------------------------------------------------------------
# The chart's instance ConfigMap, rendered from values.yaml


def _only(section: dict, known: set[str], where: str) -> dict:
    unknown = set(section) - known
    assert not unknown, f"{where}: the chart's templates read no {sorted(unknown)}"
    return section


def chart_instance(values: dict, namespace: str = NAMESPACE) -> dict:
    """The dagster.yaml the chart (1.13) writes into the ConfigMap `<fullname>-instance`."""
    fullname = values.get("fullnameOverride") or "dagster"
    glob = values.get("global", {})
    pg = _only(values["postgresql"], {"enabled", "postgresqlHost", "postgresqlUsername",
                                      "postgresqlDatabase", "postgresqlParams", "postgresqlScheme",
                                      "service", "postgresqlPassword", "image"}, "postgresql")
    db = {"username": pg["postgresqlUsername"], "password": {"env": "DAGSTER_PG_PASSWORD"},
          "hostname": pg["postgresqlHost"], "db_name": pg["postgresqlDatabase"],
          "port": pg["service"]["port"], "params": pg.get("postgresqlParams") or {}}
    if pg.get("postgresqlScheme"):
        db["scheme"] = pg["postgresqlScheme"]
    out = {"scheduler": {"module": "dagster.core.scheduler", "class": "DagsterDaemonScheduler"}}
    for key, module, cls in [("schedule_storage", "schedule_storage", "PostgresScheduleStorage"),
                             ("run_storage", "run_storage", "PostgresRunStorage"),
                             ("event_log_storage", "event_log", "PostgresEventLogStorage")]:
        out[key] = {"module": f"dagster_postgres.{module}", "class": cls,
                    "config": {"postgres_db": db}}

    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    k8s = _only(values["runLauncher"]["config"]["k8sRunLauncher"], {
        "loadInclusterConfig", "kubeconfigFile", "jobNamespace", "imagePullPolicy", "image",
        "envConfigMaps", "envSecrets", "envVars", "volumeMounts", "volumes", "labels",
        "resources", "failPodOnRunFailure", "schedulerName", "securityContext", "runK8sConfig"},
        "runLauncher.config.k8sRunLauncher")
    launcher = {"load_incluster_config": k8s.get("loadInclusterConfig", True),
                "job_namespace": k8s.get("jobNamespace") or namespace,
                "image_pull_policy": k8s.get("imagePullPolicy", "Always"),
                "service_account_name": glob.get("serviceAccountName") or fullname,
                "dagster_home": glob.get("dagsterHome", "/opt/dagster/dagster_home"),
                "instance_config_map": f"{fullname}-instance",
                "postgres_password_secret": glob.get("postgresqlSecretName",
                                                     f"{fullname}-postgresql-secret")}
    for key, name in [("envConfigMaps", "env_config_maps"), ("envSecrets", "env_secrets")]:
        if k8s.get(key):
            launcher[name] = [e["name"] for e in k8s[key] if "name" in e]
    for key, name in [("kubeconfigFile", "kubeconfig_file"), ("envVars", "env_vars"),
                      ("volumeMounts", "volume_mounts"), ("volumes", "volumes"),
                      ("labels", "labels"), ("resources", "resources"),
                      ("schedulerName", "scheduler_name"), ("securityContext", "security_context")]:
        if k8s.get(key):
            launcher[name] = k8s[key]
    if k8s.get("failPodOnRunFailure"):
        launcher["fail_pod_on_run_failure"] = True
    run_k8s = _only(k8s.get("runK8sConfig") or {}, {
        "containerConfig", "podSpecConfig", "podTemplateSpecMetadata", "jobSpecConfig",
        "jobMetadata"}, "runK8sConfig")
    if run_k8s:
        launcher["run_k8s_config"] = {re.sub(r"([A-Z])", r"_\1", k).lower(): v
                                      for k, v in run_k8s.items() if v}
    out["run_launcher"] = {"module": "dagster_k8s", "class": "K8sRunLauncher", "config": launcher}

    daemon = values["dagsterDaemon"]
    coordinator = daemon["runCoordinator"]
    if daemon["enabled"] and coordinator["enabled"]:
        assert coordinator["type"] == "QueuedRunCoordinator"
        queued = _only(coordinator["config"].get("queuedRunCoordinator") or {}, {
            "maxConcurrentRuns", "tagConcurrencyLimits", "dequeueIntervalSeconds",
            "dequeueUseThreads", "dequeueNumWorkers", "blockOpConcurrencyLimitedRuns"},
            "queuedRunCoordinator")
        out["run_coordinator"] = {"module": "dagster.core.run_coordinator",
                                  "class": "QueuedRunCoordinator"}
        if any(v is not None for v in queued.values()):
            out["run_coordinator"]["config"] = {
                "max_concurrent_runs": queued.get("maxConcurrentRuns", -1),
                **({"tag_concurrency_limits": queued["tagConcurrencyLimits"]}
                   if queued.get("tagConcurrencyLimits") else {}),
                **({"dequeue_interval_seconds": queued["dequeueIntervalSeconds"]}
                   if queued.get("dequeueIntervalSeconds") else {})}

    logs = values.get("computeLogManager", {"type": "NoOpComputeLogManager"})
    if logs["type"] == "CustomComputeLogManager":
        custom = logs["config"]["customComputeLogManager"]
        out["compute_logs"] = {"module": custom["module"], "class": custom["class"],
                               "config": custom["config"]}
    elif logs["type"] == "NoOpComputeLogManager":
        out["compute_logs"] = {"module": "dagster.core.storage.noop_compute_log_manager",
                               "class": "NoOpComputeLogManager"}
    else:
        raise AssertionError(f"chart_instance renders no {logs['type']}")

    monitoring = _only(daemon.get("runMonitoring") or {}, {
        "enabled", "startTimeoutSeconds", "cancelTimeoutSeconds", "maxResumeRunAttempts",
        "pollIntervalSeconds", "freeSlotsAfterRunEndSeconds"}, "dagsterDaemon.runMonitoring")
    if daemon["enabled"] and monitoring.get("enabled"):
        out["run_monitoring"] = {
            "enabled": True, "start_timeout_seconds": monitoring["startTimeoutSeconds"],
            "poll_interval_seconds": monitoring["pollIntervalSeconds"],
            # (the chart's default values set it; left to Dagster's default here)
            **({"free_slots_after_run_end_seconds": monitoring["freeSlotsAfterRunEndSeconds"]}
               if "freeSlotsAfterRunEndSeconds" in monitoring else {}),
            **({"cancel_timeout_seconds": monitoring["cancelTimeoutSeconds"]}
               if "cancelTimeoutSeconds" in monitoring else {}),
            **({"max_resume_run_attempts": monitoring["maxResumeRunAttempts"]}
               if "maxResumeRunAttempts" in monitoring else {})}
    retries = _only(daemon.get("runRetries") or {}, {"enabled", "maxRetries"}, "runRetries")
    if daemon["enabled"] and retries.get("enabled"):
        out["run_retries"] = {"enabled": True, **({"max_retries": retries["maxRetries"]}
                                                  if retries.get("maxRetries") else {})}
    out["telemetry"] = {"enabled": values.get("telemetry", {}).get("enabled", True)}

    retention = _only(values.get("retention") or {}, {"enabled", "sensor", "schedule",
                                                      "autoMaterialize"}, "retention")
    if retention.get("enabled"):
        out["retention"] = {name: {"purge_after_days": retention[key]["purgeAfterDays"]}
                            for key, name in [("sensor", "sensor"), ("schedule", "schedule"),
                                              ("autoMaterialize", "auto_materialize")]
                            if retention.get(key)}

    concurrency = _only(values.get("concurrency") or {}, {"pools", "runs"}, "concurrency")
    pools = _only(concurrency.get("pools") or {}, {"defaultLimit", "granularity",
                                                   "opGranularityRunBuffer"}, "concurrency.pools")
    runs = _only(concurrency.get("runs") or {}, {"maxConcurrentRuns", "tagConcurrencyLimits"},
                 "concurrency.runs")
    if runs.get("maxConcurrentRuns") is not None and "config" in out.get("run_coordinator", {}):
        raise AssertionError("the chart fails: maxConcurrentRuns set twice")
    rendered = {}
    if pools:
        rendered["pools"] = {name: pools[key] for key, name in [
            ("defaultLimit", "default_limit"), ("granularity", "granularity"),
            ("opGranularityRunBuffer", "op_granularity_run_buffer")] if key in pools}
    if runs.get("maxConcurrentRuns") is not None or runs.get("tagConcurrencyLimits"):
        rendered["runs"] = {name: runs[key] for key, name in [
            ("maxConcurrentRuns", "max_concurrent_runs"),
            ("tagConcurrencyLimits", "tag_concurrency_limits")] if runs.get(key) is not None}
    if rendered:
        out["concurrency"] = rendered

    for key, value in (values.get("additionalInstanceConfig") or {}).items():
        assert key not in out, f"additionalInstanceConfig repeats the chart's {key}"
        out[key] = value
    return out


def _parsed(instance: dict, tmp: Path) -> dict:
    """The instance as Dagster parses and validates it (dagster.yaml in a directory)."""
    from dagster._core.instance.config import dagster_instance_config

    tmp.mkdir()
    (tmp / "dagster.yaml").write_text(yaml.safe_dump(instance))
    config, custom_class = dagster_instance_config(str(tmp))
    assert custom_class is None
    return config


def test_helm_values_render_the_instance_of_dagster_yaml(tmp_path, monkeypatch):
    from dagster._config import process_config
    from dagster_k8s import K8sRunLauncher
    from dagster_postgres import DagsterPostgresStorage
    from dagster_postgres.run_storage import PostgresRunStorage
    from dagster_postgres.utils import pg_url_from_config

    values = _values()
    pg = values["postgresql"]
    for key, value in {"DAGSTER_PG_HOST": pg["postgresqlHost"], "DAGSTER_PG_PORT": str(pg["service"]["port"]),
                       "DAGSTER_PG_USERNAME": pg["postgresqlUsername"], "DAGSTER_PG_DB": pg["postgresqlDatabase"],
                       "DAGSTER_PG_PASSWORD": "s3cret", "DAGSTER_K8S_NAMESPACE": NAMESPACE,
                       "DAGSTER_COMPUTE_LOG_DIR": str(tmp_path / "logs")}.items():
        monkeypatch.setenv(key, value)
    chart = _parsed(chart_instance(values), tmp_path / "chart")
    ours = _parsed(yaml.safe_load((DEPLOY / "dagster.yaml").read_text()), tmp_path / "ours")

    # Storage: the chart writes three storages, dagster.yaml one; each connects to one URL.
    url = pg_url_from_config(process_config(DagsterPostgresStorage.config_type(),
                                            ours["storage"]["postgres"]).value)
    for key in ("run_storage", "event_log_storage", "schedule_storage"):
        config = process_config(PostgresRunStorage.config_type(), chart[key]["config"])
        assert config.success, config.errors
        assert pg_url_from_config(config.value) == url, key
    assert "sslmode" not in url  # TLS is PGSSLMODE's (test_postgres_tls_follows_pgsslmode)

    # The run launcher: every key dagster.yaml sets, the chart sets alike.
    theirs = process_config(K8sRunLauncher.config_type(), chart["run_launcher"]["config"])
    mine = process_config(K8sRunLauncher.config_type(), ours["run_launcher"]["config"])
    assert theirs.success, theirs.errors
    assert mine.success, mine.errors
    for key in ours["run_launcher"]["config"]:
        assert _snake(theirs.value.get(key)) == _snake(mine.value[key]), key

    # Everything else, section by section: the run queue, pools, monitoring with its time
    # limits, retries, step output, retention, telemetry.
    for section in ("scheduler", "run_coordinator", "concurrency", "run_monitoring", "run_retries",
                    "compute_logs", "retention", "telemetry", "nux", "freshness"):
        assert chart.get(section) == ours.get(section, {"module": "dagster.core.scheduler",
                                                        "class": "DagsterDaemonScheduler"}
                                              if section == "scheduler" else None), section
    assert ours["concurrency"]["pools"]["default_limit"] == 1
    assert ours["run_monitoring"]["max_runtime_seconds"] == 14400
    assert ours["freshness"] == {"enabled": True}

    # Secrets only where they are read: the webserver gets no relgraph-env; PGSSLMODE and
    # the step-output directory reach every Dagster process.
    assert "envSecrets" not in values["dagsterWebserver"]
    for env in (values["dagsterWebserver"]["env"], values["dagsterDaemon"]["env"],
                values["dagster-user-deployments"]["deployments"][0]["env"]):
        assert {"name": "PGSSLMODE", "value": "require"} in env
    for env in (values["dagsterWebserver"]["env"], values["dagsterDaemon"]["env"]):
        assert {"name": "DAGSTER_COMPUTE_LOG_DIR", "value": "/data/dagster/compute-logs"} in env


def test_the_chart_renderer_refuses_what_the_chart_does_not_read():
    values = _values()
    values["dagsterDaemon"]["runMonitoring"]["maxRuntimeSeconds"] = 14400
    with pytest.raises(AssertionError, match="maxRuntimeSeconds"):
        chart_instance(values)


# ---------------------------------------------------------------------------------------
# The step pod of a training asset, built by dagster-k8s


def chart_container_context(values: dict, namespace: str = NAMESPACE) -> dict:
    """What the chart hands the runs of a user deployment with includeConfigInLaunchedRuns
    (dagster-user-deployments' helper k8sContainerContext)."""
    fullname = values.get("fullnameOverride") or "dagster"
    [d] = values["dagster-user-deployments"]["deployments"]
    assert d["includeConfigInLaunchedRuns"]["enabled"]
    k8s = {"image_pull_policy": d["image"]["pullPolicy"],
           "env_config_maps": [f"{fullname}-{d['name']}-user-env"]
           + [c["name"] for c in d.get("envConfigMaps", []) if "name" in c],
           "namespace": namespace,
           "service_account_name": values.get("global", {}).get("serviceAccountName"),
           "run_k8s_config": {"pod_spec_config": {"automount_service_account_token": True}}}
    if d.get("envSecrets"):
        k8s["env_secrets"] = [s["name"] for s in d["envSecrets"] if "name" in s]
    for key, name in [("volumeMounts", "volume_mounts"), ("volumes", "volumes"),
                      ("labels", "labels"), ("resources", "resources")]:
        if d.get(key):
            k8s[name] = d[key]
    if isinstance(d.get("env"), list):
        k8s["env"] = d["env"]
    return {"k8s": k8s}


class _Jobs:
    """Kubernetes' BatchV1Api, as far as creating a Job: keeps what it is sent."""

    def __init__(self):
        self.created = []

    def create_namespaced_job(self, body, namespace, **kwargs):
        self.created.append((namespace, body))


@pytest.fixture(scope="module")
def step_jobs(tmp_path_factory):
    """The Kubernetes Job of a GNN training step and of an extract step of ecommerce_nightly,
    built by the k8s_job_executor of deploy/k8s_definitions.py on an instance with
    deploy/dagster.yaml's K8sRunLauncher (its cluster: a kubeconfig that is never called)."""
    import kubernetes
    from dagster._core.definitions.reconstruct import ReconstructableRepository
    from dagster._core.execution.api import create_execution_plan
    from dagster._core.execution.context.system import PlanData, PlanOrchestrationContext
    from dagster._core.execution.context_creation_job import create_context_free_log_manager
    from dagster._core.execution.retries import RetryMode
    from dagster._core.executor.init import InitExecutorContext
    from dagster._core.executor.step_delegating import StepHandlerContext
    from dagster._core.system_config.objects import ResolvedRunConfig
    from dagster._grpc.types import ExecuteStepArgs

    tmp = tmp_path_factory.mktemp("k8s")
    kubeconfig = tmp / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "test", "cluster": {"server": "https://127.0.0.1:9"}}],
        "users": [{"name": "test", "user": {"token": "x"}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}]}))
    mp = pytest.MonkeyPatch()
    mp.setenv("RELGRAPH_DATASETS", str(REPO / "datasets" / "ecommerce.yaml"))
    mp.setenv("RELGRAPH_DATA", str(tmp / "data"))
    mp.setenv("DAGSTER_K8S_NAMESPACE", NAMESPACE)
    mp.delenv("HOSTNAME", raising=False)  # not in a pod: no owner reference to look up
    mp.syspath_prepend(str(REPO))
    launcher = yaml.safe_load((DEPLOY / "dagster.yaml").read_text())["run_launcher"]
    launcher["config"].update(load_incluster_config=False, kubeconfig_file=str(kubeconfig))
    (tmp / "home").mkdir()
    instance = dg.DagsterInstance.local_temp(str(tmp / "home"), overrides={"run_launcher": launcher})
    try:
        repo = ReconstructableRepository.for_file(
            str(DEPLOY / "k8s_definitions.py"), "defs", working_directory=str(REPO),
            container_image=IMAGE, container_context=chart_container_context(_values()))
        recon_job = repo.get_reconstructable_job("ecommerce_nightly")
        job = recon_job.get_definition()
        assert job.executor_def.name == "relgraph_k8s"
        executor = job.executor_def.executor_creation_fn(InitExecutorContext(
            job=recon_job, executor_def=job.executor_def, instance=instance,
            executor_config=ResolvedRunConfig.build(job, {}).execution.execution_engine_config))
        plan = create_execution_plan(recon_job)
        run = instance.create_run_for_job(job, execution_plan=plan, run_config={},
                                          job_code_origin=recon_job.get_python_origin())
        orchestration = PlanOrchestrationContext(
            plan_data=PlanData(job=recon_job, dagster_run=run, instance=instance,
                               execution_plan=plan, raise_on_error=True,
                               retry_mode=RetryMode.DISABLED),
            log_manager=create_context_free_log_manager(instance, run), executor=executor,
            output_capture=None)
        handler = executor._step_handler
        handler._api_client.batch_api = jobs = _Jobs()
        built = {}
        for key in ("ecommerce__customer_churn__sage", "ecommerce__orders"):
            step = plan.get_step_by_key(key)
            context = StepHandlerContext(
                instance=instance, plan_context=orchestration, steps=[step], dagster_run=run,
                execute_step_args=ExecuteStepArgs(job_origin=recon_job.get_python_origin(),
                                                  run_id=run.run_id, step_keys_to_execute=[key],
                                                  instance_ref=None))
            list(handler.launch_step(context))
            namespace, body = jobs.created[-1]
            built[key] = (namespace, kubernetes.client.ApiClient().sanitize_for_serialization(body))
        yield built
    finally:
        instance.dispose()
        mp.undo()


def test_a_graph_model_step_gets_a_gpu_node_and_the_deployment_settings(step_jobs):
    namespace, job = step_jobs["ecommerce__customer_churn__sage"]
    assert namespace == NAMESPACE
    pod = job["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["image"] == IMAGE
    assert container["resources"] == {"requests": {"cpu": "4", "memory": "24Gi"},
                                      "limits": {"nvidia.com/gpu": "1", "memory": "48Gi"}}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    # The image's user, the volume's group, no privileges.
    assert pod["securityContext"] == {"runAsUser": 10001, "runAsGroup": 10001, "runAsNonRoot": True,
                                      "fsGroup": 10001, "fsGroupChangePolicy": "OnRootMismatch",
                                      "seccompProfile": {"type": "RuntimeDefault"}}
    assert container["securityContext"] == {"allowPrivilegeEscalation": False,
                                            "capabilities": {"drop": ["ALL"]}}
    # One shared volume at /data (the launcher and the user deployment both name it).
    assert pod["volumes"] == [{"name": "relgraph-data",
                               "persistentVolumeClaim": {"claimName": "relgraph-data"}}]
    assert [(m["name"], m["mountPath"]) for m in container["volumeMounts"]] == [("relgraph-data", "/data")]
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}
    assert env["PGSSLMODE"] == "require" and env["RELGRAPH_DATA"] == "/data"
    assert env["DAGSTER_PG_PASSWORD"] == {"secretKeyRef": {"name": "dagster-postgresql-secret",
                                                           "key": "postgresql-password"}}
    assert {"secretRef": {"name": "relgraph-env"}} in container["envFrom"]
    assert pod["serviceAccountName"] == "dagster"
    assert job["spec"]["ttlSecondsAfterFinished"] == 86400


def test_an_extract_step_stays_on_a_cpu_node(step_jobs):
    _, job = step_jobs["ecommerce__orders"]
    pod = job["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["resources"] == {"requests": {"cpu": "2", "memory": "8Gi"},
                                      "limits": {"memory": "32Gi"}}
    assert not any(t.get("key") == "nvidia.com/gpu" for t in pod.get("tolerations") or [])
    assert pod["securityContext"]["fsGroup"] == 10001
