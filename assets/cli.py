"""The `relgraph` command. Every sub-command runs the same Dagster assets as the UI, in process.

    relgraph run   --dataset SPEC [--task T] [--models sage,gat | all] [--seeds N] [--scale N] [--nproc N]
    relgraph train --dataset SPEC [--task T] [--model sage] [--nproc N] [--epochs E] [--seeds N]
    relgraph graph --dataset SPEC [--scale N]
    relgraph tune  --dataset SPEC [--task T] --model M --trials N [--seed S] [--timeout-s X]
    relgraph ui    [--dagster-port 3000] [--mlflow-port 5000]
    relgraph bench [--quick]
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
    import dagster as dg

    from assets.definitions import dataset_assets
    from assets.resources import default_resources

    instance = dg.DagsterInstance.get()
    for run_id in reclaim_dead_runs(instance):
        print(f"relgraph: run {run_id} lost its process (killed?); marked failed, its pool "
              "slots freed", file=sys.stderr)
    return dg.materialize(dataset_assets(spec), instance=instance, selection=selection,
                          resources=default_resources(), run_config=run_config or {},
                          tags={HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())})


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


def _op_name(key: list[str]) -> str:
    return "__".join(key)


def _spec_and_task(args, verb: str = "train"):
    """The environment prepared, the spec loaded, and the task named by --task (or the first)."""
    _prepare_env(args.dataset)
    spec = _load(args)
    if not spec.tasks:
        raise SystemExit(f"{args.dataset}: the spec defines no task to {verb}")
    return spec, spec.task(args.task) if args.task else next(iter(spec.tasks.values()))


def cmd_run(args) -> int:
    from pipeline.paths import DataPaths
    from pipeline.training.report import comparison

    spec, task = _spec_and_task(args)
    models = run_models(args.models)
    keys = [[spec.name, t] for t in spec.tables] + [[spec.name, task.name], [spec.name, "graph"]]
    keys += [[spec.name, task.name, m] for m in models]
    keys += [[spec.name, task.name, "evaluation"], [spec.name, task.name, "champion"],
             [spec.name, task.name, "predictions"]]
    import dagster as dg

    selection = [dg.AssetKey(k) for k in keys]
    run_config = {"ops": {_op_name([spec.name, task.name, m]): {"config": _overrides(args)}
                          for m in models}}
    result = _materialize(spec, selection, run_config)
    report = comparison(DataPaths.from_env(), spec, task, run_id=result.run_id)
    print(f"\n{spec.name} / {task.name}: {task.metric} "
          f"({'lower' if task.lower_is_better else 'higher'} is better)\n")
    print(report.markdown)
    print(f"\nMLflow experiment: relgraph/{spec.name}/{task.name}  "
          f"(tracking store: {os.environ.get('MLFLOW_TRACKING_URI') or DataPaths.from_env().mlflow_uri()})")
    return 0


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
    return out


def cmd_train(args) -> int:
    """Build what one model needs (warehouse, task table, graph) and train it, nothing more."""
    spec, task = _spec_and_task(args)
    run_models(args.model)
    import dagster as dg

    keys = [[spec.name, t] for t in spec.tables] + [[spec.name, task.name], [spec.name, "graph"],
                                                     [spec.name, task.name, args.model]]
    op = _op_name([spec.name, task.name, args.model])
    result = _materialize(spec, [dg.AssetKey(k) for k in keys],
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
    import dagster as dg
    import optuna

    from pipeline.training.tune import summary, tune_dataset

    spec, task = _spec_and_task(args, "tune")
    run_models(args.model)
    if args.trials < 1:
        raise SystemExit(f"--trials must be at least 1, got {args.trials}")
    keys = [[spec.name, t] for t in spec.tables] + [[spec.name, task.name], [spec.name, "graph"]]
    _materialize(spec, [dg.AssetKey(k) for k in keys])
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # tune logs one line per trial itself
    result = tune_dataset(spec, task, args.model, args.trials, seed=args.seed,
                          timeout_s=args.timeout_s, epochs=args.epochs)
    print(summary(result))
    return 0


def cmd_graph(args) -> int:
    import dagster as dg

    from pipeline.paths import DataPaths

    _prepare_env(args.dataset)
    spec = _load(args)
    keys = [[spec.name, t] for t in spec.tables] + [[spec.name, t] for t in spec.tasks]
    keys.append([spec.name, "graph"])
    result = _materialize(spec, [dg.AssetKey(k) for k in keys])
    mats = result.asset_materializations_for_node(_op_name([spec.name, "graph"]))
    path = mats[-1].metadata["path"].value if mats else DataPaths.from_env().graphs / spec.name
    print(f"graph: {path}")
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

    run = sub.add_parser("run", help="extract, build, train and evaluate on one task")
    run.add_argument("--dataset", default=default_spec)
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
    run.set_defaults(func=cmd_run)

    train = sub.add_parser("train", help="build the graph and train one model on one task")
    train.add_argument("--dataset", default=default_spec)
    train.add_argument("--task")
    train.add_argument("--model", default="sage")
    train.add_argument("--nproc", type=int, default=1,
                       help="processes training together (torchrun + DDP; one GPU each on CUDA)")
    train.add_argument("--epochs", type=int)
    train.add_argument("--seeds", type=int, default=1)
    train.add_argument("--seed", type=int, default=0,
                       help="first training seed; --seeds N trains seeds seed .. seed+N-1")
    train.add_argument("--scale", type=int, help="synthetic source only: number of customers")
    train.set_defaults(func=cmd_train)

    tune = sub.add_parser("tune", help="search one model's hyper-parameters on the validation split")
    tune.add_argument("--dataset", default=default_spec)
    tune.add_argument("--task")
    tune.add_argument("--model", required=True)
    tune.add_argument("--trials", type=int, required=True,
                      help="trials per search (trial 0 is the shipped defaults); use the same N for every model")
    tune.add_argument("--seed", type=int, default=0, help="seed of the TPE sampler")
    tune.add_argument("--timeout-s", type=float, help="stop starting trials after this many seconds")
    tune.add_argument("--epochs", type=int, help="graph models: epoch budget of every trial")
    tune.add_argument("--scale", type=int, help="synthetic source only: number of customers")
    tune.set_defaults(func=cmd_tune)

    graph = sub.add_parser("graph", help="build the warehouse, task tables and graph")
    graph.add_argument("--dataset", default=default_spec)
    graph.add_argument("--scale", type=int)
    graph.set_defaults(func=cmd_graph)

    ui = sub.add_parser("ui", help="serve the Dagster and MLflow UIs on 127.0.0.1")
    ui.add_argument("--dataset")
    ui.add_argument("--host", default="127.0.0.1")
    ui.add_argument("--dagster-port", type=int, default=3000)
    ui.add_argument("--mlflow-port", type=int, default=5000)
    ui.set_defaults(func=cmd_ui)

    bench = sub.add_parser("bench", help="run the benchmarks")
    bench.add_argument("--quick", action="store_true")
    bench.set_defaults(func=cmd_bench)

    args = parser.parse_args(argv)
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


# Errors whose message is the whole story for the user (no traceback needed).
_USER_ERRORS = {"WarehouseError", "SourceError", "TrackingError", "Failure"}


if __name__ == "__main__":
    sys.exit(main())
