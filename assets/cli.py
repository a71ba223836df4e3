"""The `relgraph` command. Every sub-command runs the same Dagster assets as the UI, in process.

    relgraph run   --dataset SPEC|DIR [--task T] [--models sage,gat | all] [--seeds N] [--scale N]
                   [--nproc N] [--test-context frozen|rolling]
    relgraph train --dataset SPEC|DIR [--task T] [--model sage] [--nproc N] [--epochs E] [--seeds N]
    relgraph graph --dataset SPEC|DIR [--scale N]
    relgraph query --dataset SPEC|DIR "PREDICT ..." [--val-cutoff C] [--test-cutoff C]
    relgraph tune  --dataset SPEC|DIR [--task T] --model M --trials N [--seed S] [--timeout-s X]
    relgraph explain --dataset SPEC|DIR [--task T] --entity KEY [--cutoff C] [--model M]
    relgraph import-relbench DIR                      print the relgraph spec of a RelBench folder
    relgraph export-relbench --dataset SPEC --out DIR write a dataset as a RelBench 3 folder
    relgraph ui    [--dagster-port 3000] [--mlflow-port 5000]
    relgraph bench [--quick]

A dataset is a spec file (YAML) or a RelBench 3 folder (a directory holding manifest.yaml).
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _prepare_env(dataset: str | None = None) -> None:
    """Point Dagster at the data directory's instance, with telemetry off."""
    from pipeline.paths import DataPaths

    paths = DataPaths.from_env()
    os.environ["RELGRAPH_DATA"] = str(paths.root)
    home = Path(os.environ.setdefault("DAGSTER_HOME", str(paths.dagster_home)))
    home.mkdir(parents=True, exist_ok=True)
    if dataset:
        os.environ["RELGRAPH_DATASETS"] = str(Path(dataset).resolve())
    ready = home / ".relgraph-initialized"
    if ready.exists():
        return
    # Two commands started at once on a fresh directory would both create the instance's
    # sqlite tables, and Dagster does not guard that ("table runs already exists"); nor
    # must one read the other's half-copied dagster.yaml. One creates, the other waits.
    import dagster as dg

    with open(home / ".init.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not ready.exists():
            if not (home / "dagster.yaml").exists():
                tmp = home / f".dagster.yaml.{os.getpid()}"
                shutil.copy(REPO / "dagster.yaml", tmp)
                os.replace(tmp, home / "dagster.yaml")
            with dg.DagsterInstance.from_config(str(home)):
                pass  # creates the storages
            ready.touch()


def _load(args):
    from pipeline.data.datasets import load_dataset

    spec = load_dataset(args.dataset)
    if getattr(args, "scale", None):
        if spec.source.kind != "synthetic":
            raise SystemExit(f"--scale applies to the synthetic source only; {args.dataset} "
                             f"has kind {spec.source.kind}")
        spec = dataclasses.replace(spec, source=dataclasses.replace(spec.source, scale=args.scale))
    return spec


# Tags on every run this command executes in process: which process runs it, so that a
# later command can tell a run whose process died from one still going.
HOST_TAG, PID_TAG = "relgraph/host", "relgraph/pid"


def _materialize(spec, selection, run_config=None):
    """Materialize the assets `selection` (AssetKeys) of `spec` in process."""
    import dagster as dg

    from assets import names
    from assets.console import progress_logger
    from assets.definitions import dataset_assets
    from assets.resources import default_resources

    instance = dg.DagsterInstance.get()
    for run_id in reclaim_dead_runs(instance):
        print(f"relgraph: run {run_id} lost its process (killed?); marked failed, its pool "
              "slots freed", file=sys.stderr)
    # What dg.materialize does, with the terminal's logger in place of Dagster's console
    # logger unless --verbose: the engine events stay in the run's event log.
    steps = {names.op_name(k): "/".join(k.path) for k in selection}
    loggers = None if VERBOSE else {"console": progress_logger(steps)}
    defs = dg.Definitions(jobs=[dg.define_asset_job(RUN_JOB, selection=selection)],
                          assets=dataset_assets(spec), resources=default_resources(),
                          loggers=loggers)
    run_config = dict(run_config or {})
    if loggers:  # Dagster starts a job's logger only when the run config names it
        run_config["loggers"] = {"console": {}}
    return defs.resolve_job_def(RUN_JOB).execute_in_process(
        run_config=run_config, instance=instance,
        tags={HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())})


# The job name dg.materialize gives its runs; a command's runs keep it.
RUN_JOB = "__ephemeral_asset_job__"
# --verbose: Dagster's own console logger at DEBUG, MLflow's and Alembic's INFO lines.
VERBOSE = False


def _quiet_libraries() -> None:
    """Without --verbose, the libraries say only what is wrong: MLflow's and Alembic's INFO
    lines (store creation, migrations) and MLflow's download bars stay out of the terminal;
    their warnings still show."""
    import logging

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # MLflow sets its level on import
    logging.getLogger("alembic").setLevel(logging.WARNING)


def reclaim_dead_runs(instance) -> list[str]:
    """Fail the in-process runs of this host whose process is gone; the ids of those runs.

    A `relgraph` process killed outright (SIGKILL, the OOM killer) leaves its run
    "started" and its pool slot ("gpu", "warehouse") claimed, so every later run would
    wait for that slot forever. Dagster's run monitoring does not see in-process runs.
    """
    import dagster as dg

    host = socket.gethostname()
    live = dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED],
                         tags={HOST_TAG: host})
    dead = []
    for run in instance.get_runs(filters=live):
        pid = int(run.tags.get(PID_TAG, "0"))
        if pid <= 0 or _alive(pid):
            continue
        instance.report_run_failed(run, message=f"its process ({host}, pid {pid}) no longer exists")
        instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        dead.append(run.run_id)
    return dead


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def _data_keys(spec, tasks) -> list:
    """The asset keys of the warehouse tables, `tasks`' label tables and the graph."""
    from assets import names

    return ([names.table_key(spec, t) for t in spec.tables]
            + [names.task_key(spec, t) for t in tasks] + [names.graph_key(spec)])


def _spec_and_task(args, verb: str = "train"):
    """The environment prepared, the spec loaded, and the task named by --task (or the first)."""
    _prepare_env(args.dataset)
    spec = _load(args)
    if not spec.tasks:
        refused = "".join(f"\n  {t}: {why}" for t, why in spec.refused_tasks.items())
        raise SystemExit(f"{args.dataset}: the dataset defines no task relgraph can {verb}"
                         + (f"; left out:{refused}" if refused else ""))
    return spec, spec.task(args.task) if args.task else next(iter(spec.tasks.values()))


def cmd_run(args) -> int:
    from assets import names
    from pipeline.paths import DataPaths
    from pipeline.training.report import comparison

    spec, task = _spec_and_task(args)
    models = run_models(args.models)
    keys = _data_keys(spec, [task.name]) + [names.model_key(spec, task.name, m) for m in models]
    keys += [names.evaluation_key(spec, task.name), names.champion_key(spec, task.name),
             names.predictions_key(spec, task.name)]
    run_config = {"ops": {names.op_name(names.model_key(spec, task.name, m)):
                          {"config": _overrides(args)} for m in models}}
    result = _materialize(spec, keys, run_config)
    context = args.test_context or task.test_context
    report = comparison(DataPaths.from_env(), spec, task, run_id=result.run_id)
    print(f"\n{spec.name} / {task.name}: {task.metric} "
          f"({'lower' if task.lower_is_better else 'higher'} is better), "
          f"test context {context}\n")
    print(report.markdown)
    print(f"\nMLflow experiment: relgraph/{spec.name}/{task.name}  "
          f"(tracking store: {os.environ.get('MLFLOW_TRACKING_URI') or DataPaths.from_env().mlflow_uri()})")
    print("Look closer: `make ui` (or `relgraph ui`) serves the Dagster UI on http://127.0.0.1:3000 "
          "and MLflow on http://127.0.0.1:5000")
    if report.submissions:
        print(f"RelBench prediction files: {report.submissions}")
    _print_refused(spec)
    return 0


def _print_refused(spec) -> None:
    for name, why in spec.refused_tasks.items():
        print(f"task {name} left out: {why}")


def run_models(arg: str | None) -> list[str]:
    """The models `relgraph run --models ARG` trains (see `zoo.run_models`)."""
    from pipeline.training.zoo import run_models as models_of

    try:
        return models_of(arg)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None


def _overrides(args) -> dict:
    """TrainingConfig fields set on the command line."""
    if args.nproc < 1:
        raise SystemExit(f"--nproc must be at least 1, got {args.nproc}")
    if args.seed < 0:
        raise SystemExit(f"--seed must be at least 0, got {args.seed}")
    out = {"seed": args.seed, "seeds": args.seeds, "nproc": args.nproc}
    if args.epochs:
        out["epochs"] = args.epochs
    if getattr(args, "test_context", None):
        out["test_context"] = args.test_context
    return out


def cmd_train(args) -> int:
    """Build what one model needs (warehouse, task table, graph) and train it, nothing more."""
    from assets import names

    spec, task = _spec_and_task(args)
    run_models(args.model)
    key = names.model_key(spec, task.name, args.model)
    op = names.op_name(key)
    result = _materialize(spec, _data_keys(spec, [task.name]) + [key],
                          {"ops": {op: {"config": _overrides(args)}}})
    meta = result.asset_materializations_for_node(op)[-1].metadata
    m = task.metric
    print(f"{spec.name} / {task.name} / {args.model} ({args.nproc} process"
          f"{'es' if args.nproc > 1 else ''}): val_{m}={meta[f'val_{m}'].value:.4f} "
          f"test_{m}={meta[f'test_{m}'].value:.4f}\nMLflow experiment: {meta['experiment'].value}")
    return 0


def cmd_tune(args) -> int:
    """Build the warehouse, task table and graph, then search one model's hyper-parameters
    on val (pipeline/training/tune.py); the test split is never scored."""
    import optuna

    from pipeline.training.tune import summary, tune_dataset

    spec, task = _spec_and_task(args, "tune")
    run_models(args.model)
    if args.trials < 1:
        raise SystemExit(f"--trials must be at least 1, got {args.trials}")
    _materialize(spec, _data_keys(spec, [task.name]))
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # tune logs one line per trial itself
    result = tune_dataset(spec, task, args.model, args.trials, seed=args.seed,
                          timeout_s=args.timeout_s, epochs=args.epochs)
    print(summary(result))
    return 0


def cmd_graph(args) -> int:
    from assets import names
    from pipeline.paths import DataPaths

    _prepare_env(args.dataset)
    spec = _load(args)
    result = _materialize(spec, _data_keys(spec, spec.tasks))
    mats = result.asset_materializations_for_node(names.op_name(names.graph_key(spec)))
    path = mats[-1].metadata["path"].value if mats else DataPaths.from_env().graphs / spec.name
    print(f"graph: {path}")
    _print_refused(spec)
    return 0


def cmd_query(args) -> int:
    """Extract the warehouse, compile a predictive query against it and print the SQL and
    the label table's examples per split; nothing is trained and no task table written."""
    import duckdb

    from assets import names
    from pipeline.data.query import warehouse_columns
    from pipeline.data.spec import task_from_query
    from pipeline.data.tasks import preview_task
    from pipeline.paths import DataPaths

    _prepare_env(args.dataset)
    spec = _load(args)
    _materialize(spec, [names.table_key(spec, t) for t in spec.tables])
    warehouse = DataPaths.from_env().warehouse
    with duckdb.connect(str(warehouse), read_only=True) as con:
        columns = warehouse_columns(con, spec)
    task = task_from_query(spec, args.query, columns=columns, val_cutoff=args.val_cutoff,
                           test_cutoff=args.test_cutoff)
    summary = preview_task(warehouse, spec, task)
    print(f"{task.type} on {task.entity_table}"
          f"{f' -> {task.target_table}' if task.target_table else ''}, horizon {task.horizon}, "
          f"val_cutoff {task.val_cutoff}, test_cutoff {task.test_cutoff}\n")
    print(f"-- label_sql\n{task.label_sql}\n\n-- entity_sql\n{task.entity_sql}\n")
    stat = task.kind.label_stat
    print(f"| split | examples | {stat} | entities | cutoffs |\n|---|---|---|---|---|")
    for split in ("train", "val", "test"):
        row = summary["splits"][split]
        value = row[stat]
        print(f"| {split} | {row['examples']} | "
              f"{'' if value is None else f'{value:.4f}'} | {row['entities']} | {row['cutoffs']} |")
    print(f"\nlive entities at the newest timestamp: {summary['live_entities']}")
    return 0


def cmd_import_relbench(args) -> int:
    """Print the relgraph YAML spec of a RelBench folder (nothing is built)."""
    from pipeline.data.relbench_folder import relbench_spec_yaml

    sys.stdout.write(relbench_spec_yaml(args.folder))
    return 0


def cmd_export_relbench(args) -> int:
    """Extract a dataset into the warehouse and write it as a RelBench 3 folder."""
    from pipeline.data.relbench_folder import export_relbench
    from pipeline.paths import DataPaths

    _prepare_env(args.dataset)
    spec = _load(args)
    _materialize(spec, _data_keys(spec, [])[:-1])  # the tables only
    import duckdb

    con = duckdb.connect(str(DataPaths.from_env().warehouse), read_only=True)
    try:
        out = export_relbench(spec, con, args.out)
    finally:
        con.close()
    print(f"RelBench folder: {out['folder']} (val_timestamp {out['val_timestamp']}, "
          f"test_timestamp {out['test_timestamp']})")
    for table, n in out["tables"].items():
        print(f"  db/{table}.parquet: {n} rows")
    for task in out["tasks"]:
        print(f"  tasks/{task}/manifest.yaml")
    for task, why in out["refused"].items():
        print(f"  task {task} left out: {why}")
    for note in out["notes"]:
        print(f"  note: {note}")
    return 0


def cmd_explain(args) -> int:
    """Why a trained model scores one entity as it does: the top contributions in the
    user's terms and the neighbouring rows that mattered most (nothing is trained)."""
    from contextlib import closing
    from datetime import datetime

    import duckdb

    from pipeline.graph.build import epoch_seconds
    from pipeline.paths import DataPaths
    from pipeline.serving.explain import (choose_model, entity_id, explain_rows, neighbours,
                                          node_keys, reasons)
    from pipeline.serving.registry import registered_name
    from pipeline.training.prepare import prepare_task
    from pipeline.training.tracking import Tracker
    from pipeline.training.zoo import model_entry

    spec, task = _spec_and_task(args, "explain")
    paths = DataPaths.from_env()
    if not paths.warehouse.exists():
        raise SystemExit(f"relgraph explain: no warehouse at {paths.warehouse}; run `relgraph run` first")
    champion = None
    if not args.model:
        try:
            version = Tracker.default(paths).client.get_model_version_by_alias(
                registered_name(spec.name, task.name), "champion")
            champion = version.tags.get("model")
        except Exception:  # no registry or no champion yet: the run's best model
            champion = None
    try:
        chosen = choose_model(paths, spec, task, args.model, champion)
    except ValueError as exc:
        raise SystemExit(f"relgraph explain: {exc}") from None

    def connect():
        return closing(duckdb.connect(str(paths.warehouse), read_only=True))

    needs_graph = model_entry(chosen.model).family.needs_graph
    prep = prepare_task(connect, spec, task,
                        graphs_dir=paths.graphs / spec.name if needs_graph else None)
    cutoff = datetime.fromisoformat(args.cutoff) if args.cutoff else prep.cutoffs.latest
    try:
        with connect() as con:
            eid = entity_id(con, spec, task, args.entity)
    except ValueError as exc:
        raise SystemExit(f"relgraph explain: {exc}") from None
    attr = explain_rows(prep, chosen.model, chosen.checkpoint, [eid], [epoch_seconds(cutoff)],
                        device=args.device)
    print(f"{spec.name} / {task.name}: {task.entity_table} {args.entity} at {cutoff} by "
          f"{chosen.model} ({chosen.why})")
    print(f"score {float(attr.scores[0]):+.4f} (raw output: log-odds for classification) = "
          f"reference {float(attr.base[0]):+.4f} + contributions; {attr.method}")
    print(f"\ntop {args.top} contributions:")
    for reason, value in reasons(attr, task.entity_table, args.top).select("reason", "value").iter_rows():
        print(f"  {value:+.4f}  {reason}")
    near = neighbours(attr, top=5)
    if len(near):
        with connect() as con:
            near = node_keys(con, spec, near)
        print("\nneighbouring rows that mattered most:")
        for table, key, value in near.select("node_table", "key", "value").iter_rows():
            print(f"  {value:+.4f}  {table} {key}")
    return 0


def _stop_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGINT)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def cmd_ui(args) -> int:
    from pipeline.paths import DataPaths

    _prepare_env(args.dataset)
    paths = DataPaths.from_env()
    paths.mlflow.mkdir(parents=True, exist_ok=True)
    bin_dir = Path(sys.executable).parent
    host = args.host
    dagster = subprocess.Popen([str(bin_dir / "dagster"), "dev", "-h", host, "-p", str(args.dagster_port),
                                "-w", str(REPO / "workspace.yaml")], cwd=REPO, start_new_session=True)
    mlflow = subprocess.Popen([str(bin_dir / "mlflow"), "server", "--host", host,
                               "--port", str(args.mlflow_port), "--workers", "1",
                               "--backend-store-uri", paths.mlflow_uri(),
                               "--default-artifact-root", (paths.mlflow / "artifacts").as_uri()],
                              cwd=REPO, start_new_session=True)
    print(f"Dagster UI: http://{host}:{args.dagster_port}\nMLflow UI:  http://{host}:{args.mlflow_port}\n"
          "Ctrl-C stops both.", flush=True)
    try:
        while dagster.poll() is None and mlflow.poll() is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        _stop_group(dagster)
        _stop_group(mlflow)
    return 0


def cmd_bench(args) -> int:
    sys.path.insert(0, str(REPO))  # bench/ lives beside the packages, not inside them
    from bench.run import main as bench_main

    return bench_main(["--quick"] if args.quick else [])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="relgraph", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    default_spec = str(REPO / "datasets" / "ecommerce.yaml")

    dataset_help = "a dataset spec (YAML) or a RelBench 3 folder"
    contexts = ("frozen", "rolling")
    context_help = ("which rows a test example sees: frozen (up to the test cutoff; RelBench's "
                    "rule) or rolling (up to its own cutoff); default: the task's own")

    run = sub.add_parser("run", help="extract, build, train and evaluate on one task")
    run.add_argument("--dataset", default=default_spec, help=dataset_help)
    run.add_argument("--task")
    run.add_argument("--models", help="comma-separated, or 'all'; default: lightgbm_flat, lightgbm, "
                                      "sage and hgt")
    run.add_argument("--seeds", type=int, default=1)
    run.add_argument("--seed", type=int, default=0,
                     help="first training seed; --seeds N trains seeds seed .. seed+N-1")
    run.add_argument("--scale", type=int, help="synthetic source only: number of customers")
    run.add_argument("--epochs", type=int, help="override the graph models' epoch budget")
    run.add_argument("--nproc", type=int, default=1,
                     help="processes per graph model (torchrun + DDP; one GPU each on CUDA)")
    run.add_argument("--test-context", choices=contexts, help=context_help)
    run.set_defaults(func=cmd_run)

    train = sub.add_parser("train", help="build the graph and train one model on one task")
    train.add_argument("--dataset", default=default_spec, help=dataset_help)
    train.add_argument("--task")
    train.add_argument("--model", default="sage")
    train.add_argument("--nproc", type=int, default=1,
                       help="processes training together (torchrun + DDP; one GPU each on CUDA)")
    train.add_argument("--epochs", type=int)
    train.add_argument("--seeds", type=int, default=1)
    train.add_argument("--seed", type=int, default=0,
                       help="first training seed; --seeds N trains seeds seed .. seed+N-1")
    train.add_argument("--scale", type=int, help="synthetic source only: number of customers")
    train.add_argument("--test-context", choices=contexts, help=context_help)
    train.set_defaults(func=cmd_train)

    tune = sub.add_parser("tune", help="search one model's hyper-parameters on the validation split")
    tune.add_argument("--dataset", default=default_spec, help=dataset_help)
    tune.add_argument("--task")
    tune.add_argument("--model", required=True)
    tune.add_argument("--trials", type=int, required=True,
                      help="trials per search (trial 0 is the shipped defaults); use the same N for every model")
    tune.add_argument("--seed", type=int, default=0, help="seed of the TPE sampler")
    tune.add_argument("--timeout-s", type=float, help="stop starting trials after this many seconds")
    tune.add_argument("--epochs", type=int, help="graph models: epoch budget of every trial")
    tune.add_argument("--scale", type=int, help="synthetic source only: number of customers")
    tune.set_defaults(func=cmd_tune)

    query = sub.add_parser("query", help="compile a predictive query and count its labels "
                                         "per split (no training)")
    query.add_argument("query", help='e.g. "PREDICT COUNT(orders.*, 0, 30, days) = 0 '
                                     'FOR EACH customers.customer_id"')
    query.add_argument("--dataset", default=default_spec, help=dataset_help)
    query.add_argument("--val-cutoff", help="default: latest minus two horizons")
    query.add_argument("--test-cutoff", help="default: latest minus one horizon")
    query.add_argument("--scale", type=int, help="synthetic source only: number of customers")
    query.set_defaults(func=cmd_query)

    graph = sub.add_parser("graph", help="build the warehouse, task tables and graph")
    graph.add_argument("--dataset", default=default_spec, help=dataset_help)
    graph.add_argument("--scale", type=int)
    graph.set_defaults(func=cmd_graph)

    imp = sub.add_parser("import-relbench", help="print the relgraph YAML spec of a RelBench 3 "
                                                 "folder (add policies or tasks, then --dataset it)")
    imp.add_argument("folder", help="a RelBench 3 folder (holds manifest.yaml)")
    imp.set_defaults(func=cmd_import_relbench)

    exp = sub.add_parser("export-relbench", help="write a dataset and its tasks as a RelBench 3 folder")
    exp.add_argument("--dataset", default=default_spec, help="a dataset spec (YAML)")
    exp.add_argument("--out", required=True, help="the folder to write")
    exp.add_argument("--scale", type=int, help="synthetic source only: number of customers")
    exp.set_defaults(func=cmd_export_relbench)

    ui = sub.add_parser("ui", help="serve the Dagster and MLflow UIs on 127.0.0.1")
    ui.add_argument("--dataset")
    ui.add_argument("--host", default="127.0.0.1")
    ui.add_argument("--dagster-port", type=int, default=3000)
    ui.add_argument("--mlflow-port", type=int, default=5000)
    ui.set_defaults(func=cmd_ui)

    explain = sub.add_parser("explain", help="why a trained model scores one entity as it does")
    explain.add_argument("--dataset", default=default_spec, help=dataset_help)
    explain.add_argument("--task")
    explain.add_argument("--entity", required=True, help="the entity's key")
    explain.add_argument("--cutoff", help="as of when (ISO time); default: the newest row's time")
    explain.add_argument("--model", help="default: the registered champion, else the best by "
                                         "validation among the trained models")
    explain.add_argument("--top", type=int, default=10, help="contributions to print")
    explain.add_argument("--device", default="cpu")
    explain.set_defaults(func=cmd_explain)

    bench = sub.add_parser("bench", help="run the benchmarks")
    bench.add_argument("--quick", action="store_true")
    bench.set_defaults(func=cmd_bench)
    for command in sub.choices.values():
        command.add_argument("--verbose", action="store_true",
                             help="Dagster's engine events and the libraries' INFO lines too")

    args = parser.parse_args(argv)
    global VERBOSE
    VERBOSE = args.verbose
    if not VERBOSE:
        _quiet_libraries()
    import warnings

    # What a RelBench folder holds that relbench ignores: one line each, not a source line.
    warnings.formatwarning = lambda message, category, *a, **k: (
        f"relgraph: warning: {message}\n" if category.__name__ == "RelBenchManifestWarning"
        else _FORMAT_WARNING(message, category, *a, **k))
    from pipeline.data.spec import SpecError
    from pipeline.data.tasks import TaskError

    try:
        return args.func(args)
    except Exception as exc:
        # Dagster wraps errors raised inside assets; show the user the one that matters.
        inner = getattr(exc, "user_exception", None) or exc
        if isinstance(inner, (SpecError, TaskError)) or type(inner).__name__ in _USER_ERRORS:
            print(f"relgraph: {inner}", file=sys.stderr)
            return 2
        raise


_FORMAT_WARNING = __import__("warnings").formatwarning

# Errors whose message is the whole story for the user (no traceback needed).
_USER_ERRORS = {"WarehouseError", "SourceError", "TrackingError", "Failure"}


if __name__ == "__main__":
    sys.exit(main())
