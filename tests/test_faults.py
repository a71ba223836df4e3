"""Faults: a training run killed mid-epoch, two writers at once, MLflow down, a schema that
changes between two nights.

A warehouse killed mid-write is tested in tests/test_warehouse.py
(test_killed_process_mid_write_leaves_previous_snapshot); it is not repeated here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import dagster as dg
import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from pipeline.training.experiment import RunContext, run_model
from pipeline.training.prepare import prepare_task, task_graph
from pipeline.graph.features import FeatureConfig
from pipeline.models.gbdt import GBDTConfig, load_gbdt, predict_gbdt
from pipeline.paths import DataPaths
from pipeline.data.sources import open_source
from pipeline.data.spec import load_spec
from pipeline.data.tasks import build_task_table
from pipeline.training.tracking import Tracker, TrackingError
from pipeline.training.trainer import TrainConfig, load_predictor
from pipeline.training.zoo import make_trainer, model_entry
from pipeline.data.warehouse import extract_table
from shop import RELGRAPH, shop_spec

REPO = Path(__file__).resolve().parents[1]

TINY = TrainConfig(hidden=8, layers=1, fanouts=(4,), epochs=2, batch_size=64, max_steps_per_epoch=2)
FAST_GBDT = GBDTConfig(n_estimators=20, early_stopping_rounds=5, num_threads=1)
# The configuration each model of these tests trains with (its family's config class).
CONFIGS = {"sage": TINY, "lightgbm_flat": FAST_GBDT}


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: on a shared 2-core machine more threads spin against each other
    (ten times slower), and the kill/resume comparison needs one fixed thread count."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def shop_tables(customers: int = 120, orders: int = 900, seed: int = 0) -> tuple[pa.Table, pa.Table]:
    """A year of random orders of `customers` customers: churn has both classes in every split."""
    rng = np.random.default_rng(seed)
    start = np.datetime64("2024-01-01T00:00:00", "us")
    seconds = np.sort(rng.integers(0, 365 * 86_400, orders))
    cust = pa.table({"customer_id": np.arange(1, customers + 1),
                     "country": rng.choice(["DE", "FR", "US"], customers),
                     "age": rng.integers(18, 80, customers)})
    ords = pa.table({"order_id": np.arange(1, orders + 1),
                     "customer_id": rng.integers(1, customers + 1, orders),
                     "ordered_at": start + seconds.astype("timedelta64[s]"),
                     "amount": np.round(rng.gamma(2.0, 20.0, orders), 2),
                     "channel": rng.choice(["web", "app"], orders)})
    return cust, ords


def write_shop(root: Path, customers: pa.Table | None = None, orders: pa.Table | None = None) -> Path:
    """The shop as parquet under root/src and its spec at root/shop.yaml."""
    src = root / "src"
    src.mkdir(parents=True, exist_ok=True)
    c, o = shop_tables()
    pq.write_table(c if customers is None else customers, src / "customers.parquet")
    pq.write_table(o if orders is None else orders, src / "orders.parquet")
    spec = shop_spec("shop", src)
    path = root / "shop.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@dataclasses.dataclass
class Night:
    spec: object
    task: object
    graph: object
    paths: DataPaths

    @contextlib.contextmanager
    def connect(self):
        con = duckdb.connect(str(self.paths.warehouse))
        try:
            yield con
        finally:
            con.close()


def night(root: Path, data: Path, customers: pa.Table | None = None,
          orders: pa.Table | None = None) -> Night:
    """One nightly refresh with the library: write the source, extract, label, build the graph."""
    spec = load_spec(write_shop(root, customers, orders))
    paths = DataPaths(data)
    paths.root.mkdir(parents=True, exist_ok=True)
    source = open_source(spec, root)
    task = spec.tasks["churn"]
    with duckdb.connect(str(paths.warehouse)) as con:
        for table in spec.extract_order():
            extract_table(con, spec, table, source.read(table), source.fingerprint(table))
        build_task_table(con, spec, task)
        graph = task_graph(con, spec, FeatureConfig(), paths.graphs / spec.name)
    return Night(spec, task, graph, paths)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(args: list[str], data: Path, timeout: int = 180, **env) -> subprocess.Popen:
    environ = {**os.environ, "RELGRAPH_DATA": str(data), "OMP_NUM_THREADS": "1", **env}
    environ.pop("DAGSTER_HOME", None)
    return subprocess.Popen([RELGRAPH, *args], env=environ, cwd=str(data.parent),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# ---------------------------------------------------------------------------------------
# (a) A training process killed in the middle of an epoch resumes bit-identically

CHILD = textwrap.dedent("""
    import json, sys, time
    import duckdb, torch
    sys.path.insert(0, {repo!r})
    torch.set_num_threads(1)
    from pipeline.graph.build import load_graph
    from pipeline.data.spec import load_spec
    from pipeline.data.tasks import load_examples, task_cutoffs
    from pipeline.training.trainer import TrainConfig
    from pipeline.training.zoo import make_trainer

    spec = load_spec({spec!r})
    task = spec.tasks["churn"]
    with duckdb.connect({db!r}, read_only=True) as con:
        splits = {{s: load_examples(con, task, s) for s in ("train", "val", "test")}}
        cuts = task_cutoffs(con, spec, task)
    graph = load_graph({graph!r})
    config = TrainConfig(**json.loads({config!r}))
    trainer = make_trainer(graph.truncate(cuts.test), graph.feature_meta, task, splits, config,
                      {ckpt!r}, progress=False, log=lambda m: print(m, flush=True))

    def step(module, args):
        if module.training:  # a training step, not an evaluation batch
            print("step", flush=True)
            time.sleep(0.05)  # long enough for the parent to kill us inside this step

    trainer.model.register_forward_pre_hook(step)
    trainer.fit()
    print("finished", flush=True)
""")


def test_training_killed_mid_epoch_resumes_bit_identically(tmp_path):
    n = night(tmp_path, tmp_path / "data")
    config = TrainConfig(hidden=8, layers=1, fanouts=(4,), epochs=3, batch_size=32, seed=3)
    prep = prepare_task(n.connect, n.spec, n.task, graph=n.graph)
    steps = -(-len(prep.examples()["train"]) // config.batch_size)
    assert steps >= 6, "the epoch must be long enough to be killed inside"

    def trainer(ckpt: Path, log=None):
        return make_trainer(prep.training_graph(), n.graph.feature_meta, n.task, prep.examples(),
                            config, ckpt, progress=False, log=log)

    reference = trainer(tmp_path / "ref").fit()

    ckpt = tmp_path / "killed"
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(repo=str(REPO), spec=str(n.spec.path), db=str(n.paths.warehouse),
                                   graph=str(n.graph.path), ckpt=str(ckpt),
                                   config=json.dumps(dataclasses.asdict(config))))
    kill_at = random.randint(1, steps - 2)  # a step of epoch 2, neither its first nor its last
    child = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        seen, in_epoch_two = 0, False
        for line in child.stdout:
            if line.startswith("sage epoch 1:"):
                in_epoch_two = True  # epoch 1 is checkpointed; count the steps of epoch 2
            elif line.startswith("step") and in_epoch_two:
                seen += 1
                if seen == kill_at:
                    os.kill(child.pid, signal.SIGKILL)
                    break
            assert not line.startswith("finished"), "the child finished before it was killed"
    finally:
        child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL, f"killed at step {kill_at} of epoch 2"
    last = torch.load(next(ckpt.glob("*/last.pt")), weights_only=True)
    assert last["epoch"] == 1, "the kill came after epoch 2's checkpoint"

    messages: list[str] = []
    resumed = trainer(ckpt, messages.append).fit()
    assert any(m.startswith("resuming sage from epoch 1") for m in messages), messages
    assert resumed.val_metrics == reference.val_metrics
    assert resumed.test_metrics == reference.test_metrics
    assert resumed.test_scores.tobytes() == reference.test_scores.tobytes(), f"kill at step {kill_at}"
    assert resumed.history == reference.history
    assert resumed.best_epoch == reference.best_epoch

    # A checkpoint of the same configuration written by another version of the model
    # (other parameters) is not resumed, and not a crash: training starts over.
    path = next(ckpt.glob("*/last.pt"))
    state = torch.load(path, weights_only=True)
    state["model"]["history.mlp.0.weight"] = torch.zeros(16, 2)
    torch.save(state, path)
    messages.clear()
    again = trainer(ckpt, messages.append).fit()
    assert any("written by another version of sage" in m for m in messages), messages
    assert again.history == reference.history


# ---------------------------------------------------------------------------------------
# (c) Two processes writing one warehouse at once


def test_two_concurrent_graph_builds_serialize_on_the_warehouse(tmp_path, monkeypatch):
    spec_path = write_shop(tmp_path)
    data = tmp_path / "data"
    # The Dagster instance exists before the two runs start, as it does wherever the UI, the
    # daemon or any earlier run has used this data directory. Two processes that create it
    # at the same moment can fail inside Dagster's sqlite storage (`table ... already
    # exists`), a start-up race that is not the writers' concurrency this test is about.
    home = data / "dagster"
    home.mkdir(parents=True)
    (home / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert instance.get_runs() == []
    # A third writer holds the warehouse while both processes start, so that both meet the
    # lock for certain (not only when their extracts happen to overlap) and must wait.
    holder = duckdb.connect(str(data / "warehouse.duckdb"))
    started = time.monotonic()
    # --verbose: the engine's STEP_START lines tell when a process is inside its first step
    procs = [cli(["graph", "--dataset", str(spec_path), "--verbose"], data) for _ in range(2)]
    errs: list[list[str]] = [[], []]
    readers = [threading.Thread(target=lambda p=p, e=e: e.extend(p.stderr), daemon=True)
               for p, e in zip(procs, errs)]
    for r in readers:
        r.start()
    # Generous, because a loaded machine can take minutes to import torch and Dagster twice;
    # the limit only keeps a hung child from hanging the test.
    deadline = started + 600
    # The `warehouse` pool of the shared Dagster instance lets one of them start its step;
    # the other waits for the pool slot.
    while not any(any("STEP_START" in line for line in e) for e in errs):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), \
            "".join(errs[0][-20:] + errs[1][-20:])
        time.sleep(0.2)
    first_step = time.monotonic() - started
    time.sleep(3.0)  # inside its first extract step, retrying the locked file
    assert all(p.poll() is None for p in procs), "a process gave up on the locked warehouse"
    holder.close()
    outs = []
    for p, r, e in zip(procs, readers, errs):
        out = p.stdout.read()
        p.wait(timeout=max(deadline - time.monotonic(), 60))
        r.join(timeout=10)
        outs.append((out, "".join(e)))
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, (f"first step after {first_step:.0f}s, done after "
                                   f"{time.monotonic() - started:.0f}s\n" + err[-3000:])
        assert "graph: " in out
    # both point at the same graph (same content, same hash); no half-written entry is left
    graphs = {line.split("graph: ", 1)[1].strip() for out, _ in outs for line in out.splitlines()
              if line.startswith("graph: ")}
    assert len(graphs) == 1
    entries = list((data / "graphs" / "shop").iterdir())
    assert [e.name for e in entries] == [Path(next(iter(graphs))).name]
    assert (entries[0] / "meta.json").exists()

    with duckdb.connect(str(data / "warehouse.duckdb"), read_only=True) as con:
        for table, rows in (("customers", 120), ("orders", 900)):
            raw, clean, rejected = (con.execute(f"SELECT count(*) FROM {rel}").fetchall()[0][0]
                                    for rel in (f"raw.{table}", table, f"rejected_{table}"))
            assert (raw, clean, rejected) == (rows, rows, 0)
            ids = con.execute(f"SELECT min(__id), max(__id), count(DISTINCT __id) FROM {table}").fetchall()
            assert ids == [(0, rows - 1, rows)]
        # each table was loaded by one process and found unchanged by the other, or loaded twice:
        # either way every extract is recorded whole, in sequence
        seqs = [r[0] for r in con.execute('SELECT seq FROM "_relgraph_extracts" ORDER BY seq').fetchall()]
        assert seqs == list(range(1, len(seqs) + 1)) and 2 <= len(seqs) <= 4
        assert con.execute("SELECT count(*) FROM task_churn").fetchall()[0][0] > 0


STARTER = textwrap.dedent("""
    import os, sys, time
    sys.path.insert(0, {repo!r})
    import dagster as dg
    from assets.cli import _prepare_env
    open(os.path.join({ready!r}, str(os.getpid())), "w").close()
    while not os.path.exists({go!r}):  # every process has imported Dagster: all go at once
        time.sleep(0.001)
    _prepare_env()
    with dg.DagsterInstance.get() as instance:
        print(len(instance.get_runs()))
""")


def test_commands_starting_together_on_a_fresh_directory_all_start(tmp_path):
    """Dagster's sqlite storages have no guard against two creators at once; the CLI
    creates the instance under a file lock, so every one of several starts succeeds."""
    data, go, ready = tmp_path / "data", tmp_path / "go", tmp_path / "ready"
    ready.mkdir()
    env = {**os.environ, "RELGRAPH_DATA": str(data)}
    env.pop("DAGSTER_HOME", None)
    code = STARTER.format(repo=str(REPO), go=str(go), ready=str(ready))
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    deadline = time.monotonic() + 300
    while len(list(ready.iterdir())) < len(procs):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
        time.sleep(0.05)
    go.touch()
    results = [p.communicate(timeout=300) for p in procs]
    failed = [err[-2000:] for p, (_, err) in zip(procs, results) if p.returncode != 0]
    assert failed == [], failed
    assert [out.strip() for out, _ in results] == ["0"] * 4
    assert (data / "dagster" / "dagster.yaml").read_text() == (REPO / "dagster.yaml").read_text()


def test_a_killed_run_gives_its_pool_slot_back_to_the_next_run(tmp_path, monkeypatch):
    """SIGKILL leaves an in-process run "started" with its pool slot claimed; the next
    command must find that the process is gone, fail the run and take the slot."""
    spec_path = write_shop(tmp_path)
    data = tmp_path / "data"
    monkeypatch.setenv("DAGSTER_HOME", str(data / "dagster"))  # for this process's reads
    first = cli(["graph", "--dataset", str(spec_path), "--verbose"], data)  # STEP_START lines
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(first.stderr), daemon=True)
    reader.start()
    deadline = time.monotonic() + 600
    while not any("STEP_START" in line for line in lines):
        assert first.poll() is None and time.monotonic() < deadline, "".join(lines[-20:])
        time.sleep(0.05)
    first.kill()
    first.wait()
    with dg.DagsterInstance.from_config(str(data / "dagster")) as instance:
        [run] = instance.get_runs()
        assert run.status == dg.DagsterRunStatus.STARTED
        assert instance.event_log_storage.get_concurrency_info("warehouse").active_run_ids == {run.run_id}

    second = cli(["graph", "--dataset", str(spec_path)], data)
    try:
        out, err = second.communicate(timeout=600)
    finally:
        second.kill()
    assert second.returncode == 0, err[-3000:]
    assert f"run {run.run_id} lost its process" in err
    with dg.DagsterInstance.from_config(str(data / "dagster")) as instance:
        statuses = {r.run_id: r.status for r in instance.get_runs()}
        assert statuses.pop(run.run_id) == dg.DagsterRunStatus.FAILURE
        assert list(statuses.values()) == [dg.DagsterRunStatus.SUCCESS]
        assert instance.event_log_storage.get_concurrency_info("warehouse").active_run_ids == set()


# ---------------------------------------------------------------------------------------
# (d) MLflow unreachable: the run fails before any training, naming the URI


def test_unreachable_mlflow_fails_before_training(tmp_path):
    n = night(tmp_path, tmp_path / "data")
    uri = f"http://127.0.0.1:{closed_port()}"
    ctx = RunContext(paths=n.paths, tracker=Tracker(uri), progress=False)
    for model in ("sage", "lightgbm_flat"):
        with pytest.raises(TrackingError, match=f"MLflow tracking server {uri} is not reachable"):
            run_model(prepare_task(n.connect, n.spec, n.task, graph=n.graph), model,
                      CONFIGS[model], ctx)
    assert not n.paths.checkpoints.exists(), "something was trained"
    assert not n.paths.results.exists()


def test_unreachable_mlflow_through_the_cli(tmp_path):
    spec_path = write_shop(tmp_path)
    uri = f"http://127.0.0.1:{closed_port()}"
    p = cli(["run", "--dataset", str(spec_path), "--models", "lightgbm_flat"], tmp_path / "data",
            MLFLOW_TRACKING_URI=uri)
    try:
        _, err = p.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
        pytest.fail(f"relgraph run kept trying the unreachable {uri} for 90 s instead of failing")
    assert p.returncode == 2
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"relgraph: MLflow tracking server {uri} is not reachable"), last
    assert not (tmp_path / "data" / "checkpoints").exists()


# ---------------------------------------------------------------------------------------
# (e) A column added to or dropped from a source table between two nights


def test_schema_change_between_nights_retrains_and_old_models_refuse_to_score(tmp_path):
    data = tmp_path / "data"
    messages: list[str] = []
    ctx = RunContext(paths=DataPaths(data), progress=False, log=messages.append)
    customers, orders = shop_tables()
    one = night(tmp_path, data, customers, orders)
    first = {m: run_model(prepare_task(one.connect, one.spec, one.task, graph=one.graph), m,
                          CONFIGS[m], ctx) for m in ("sage", "lightgbm_flat")}

    # night 2: customers gain a numeric column and lose `age`: the same number of numeric
    # features, so without a check an old model would load and read `vip` as `age`
    changed = customers.drop_columns(["age"]).append_column(
        "vip", pa.array(np.arange(customers.num_rows) % 3, pa.int64()))
    two = night(tmp_path, data, changed, orders)
    assert two.graph.feature_meta["customers"]["num"] == one.graph.feature_meta["customers"]["num"]
    messages.clear()
    for model in ("sage", "lightgbm_flat"):
        res = run_model(prepare_task(two.connect, two.spec, two.task, graph=two.graph), model,
                        CONFIGS[model], ctx)
        assert res["runs"][0]["checkpoint"] != first[model]["runs"][0]["checkpoint"]
    assert not [m for m in messages if m.startswith("resuming")], "night 2 reloaded night 1's model"
    assert [m.split(":")[0] for m in messages if m.startswith("sage epoch")] == [
        "sage epoch 1", "sage epoch 2"], "night 2 must train its own epochs"

    # yesterday's models cannot score today's graph, and say why
    old_sage = first["sage"]["runs"][0]["checkpoint"]
    with pytest.raises(ValueError, match=r"customers: num columns new \['vip'\] missing \['age'\]"):
        load_predictor(old_sage, model_entry("sage").build, two.graph.feature_meta,
                       two.graph.data.metadata(), two.task)
    old_gbdt = load_gbdt(Path(first["lightgbm_flat"]["runs"][0]["checkpoint"]))
    with two.connect() as con, pytest.raises(ValueError, match=r"features differ from the model's "
                                             r"\(new: \['customers.vip'\], missing: \['customers.age'\]\)"):
        predict_gbdt(con, two.spec, two.task, old_gbdt, "task_churn_live")
