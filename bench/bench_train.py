"""Training throughput and peak memory of every graph model, next to RelBench's reference
GraphSAGE fed by our sampler, plus a validation AUROC check of sage against that model.

    .venv/bin/python -m bench.bench_train                 # ~10M rows (580,000 customers)
    .venv/bin/python -m bench.bench_train --quick         # ~0.2M rows (10,000 customers)
    .venv/bin/python -m bench.bench_train --customers N   # another scale

The synthetic e-commerce dataset (datasets/ecommerce.yaml, task customer_churn) is
generated and extracted with the real pipeline (bench/bench_graph.py's `prepare`, kept
under $RELGRAPH_DATA/bench/train/ and reused), its task table and graph built as the
assets build them (encoders fitted up to the validation cutoff; the model trains on the
graph truncated at the test cutoff). Then each measurement runs in its own child process,
so that its peak RSS (getrusage) is its own:

- throughput, ours: for gcn, sage, gat, gin, hgt and rgt, `pipeline.training.trainer.Trainer` with
  the default `TrainConfig` (batch 512, its fanouts, most recent neighbours), and the
  Trainer's own training step (forward, loss, backward, gradient clipping, AdamW) on
  batches of `pipeline.graph.sampling.make_loader` over the shuffled train split: `warmup`
  steps untimed, then `steps` steps timed, sampling and feature gathering included.
- throughput, RelBench: RelBench's example model for entity tasks (examples/model.py +
  gnn_entity.py: `HeteroEncoder` (torch_frame ResNet per table) + `HeteroTemporalEncoder`
  + `HeteroGraphSAGE` (aggr sum) + an MLP head with batch norm; 128 channels, 2 layers;
  Adam, lr 0.005, BCE) on RelBench's own graph of the same warehouse tables
  (`make_pkey_fkey_graph`: TensorFrame features, pytorch-frame's column-type inference, a
  hashed word n-gram text embedder of width 64 as in bench_graph), fed by the same
  `make_loader` and strategy as ours, with the first two of our fanouts (a 2-layer model
  reads 2 hops; RelBench's examples sample as many hops as layers). So the two differ in
  the model, not in the sampler.
- validation AUROC (at `auroc_customers`, default the 10,000-customer dataset): ours
  (`Trainer.fit`, sage, default config) and RelBench's model, each `epochs` epochs over
  the train split (at most `max_steps` batches an epoch, 0: all) with the same sampler,
  the best epoch by validation AUROC; its test AUROC is reported too.

Numbers: "seeds/s" = seeds / wall seconds of the timed steps; "seeds/cpu-s" = seeds / this
process's CPU seconds over them (all threads; on a shared machine the wall clock also
counts other processes' turns, CPU time does not); torch uses `threads` intra-op threads
(2 by default: the machine's cores), with OMP_WAIT_POLICY=PASSIVE unless set. "peak MB"
is the child's peak RSS (imports ~0.5 GB, the memory-mapped graph pages it touched, the
sampler's index build, the model, the steps); "before MB" its RSS just before the first
step; "steps MB" its peak RSS during the steps (the kernel's count restarted at the first
step) minus "before MB"; on CUDA, "cuda MB" is torch.cuda.max_memory_allocated. The
RelBench child runs in the interpreter given by
--relbench-python or $RELBENCH_PYTHON (default: this one); it needs bench/requirements.txt.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.memory import hwm_mb, peak_mb, reset_peak, rss_mb

ROOT = Path(__file__).resolve().parent.parent
TASK = "customer_churn"
MODELS = ("gcn", "sage", "gat", "gin", "hgt", "rgt")
SCALE = 580_000        # customers: ~10M rows
QUICK_SCALE = 10_000   # the default dataset: ~0.2M rows
AUROC_SCALE = 10_000
THREADS = 2
BATCH = 512
# RelBench's reference model, as its examples configure it for entity tasks.
RELBENCH_CHANNELS, RELBENCH_LAYERS, RELBENCH_LR = 128, 2, 0.005


def _timed_with_memory(batches, step, warmup: int, steps: int) -> dict:
    """`_timed`, plus the process's peak RSS over all time ("peak_mb"), its RSS before the
    first step ("before_mb") and its peak RSS during the steps alone ("steps_peak_mb"):
    the whole-process peak can come from the sampler's index build, which is the same for
    every model, so the steps' own peak tells the models apart."""
    before = rss_mb()
    setup_peak = peak_mb()
    reset_peak()
    out = _timed(batches, step, warmup, steps)
    steps_peak = hwm_mb()
    out.update(peak_mb=max(setup_peak, steps_peak), before_mb=before, steps_peak_mb=steps_peak)
    return out


def _workdir() -> Path:
    return Path(os.environ.get("RELGRAPH_DATA", ROOT / "data")) / "bench" / "train"


# ---------------------------------------------------------------------------------------
# Children. Each prints one JSON line last; the parent reads it.


def child_prepare(customers: int, workdir: Path) -> dict:
    """Warehouse (reused), task table and graph (content-hash cache) at one scale."""
    import duckdb

    from bench.bench_graph import _spec_at, prepare
    from pipeline.data.tasks import build_task_table
    from pipeline.graph.features import FeatureConfig
    from pipeline.training.prepare import task_graph

    t0 = time.perf_counter()
    warehouse = prepare(customers, workdir)
    spec = _spec_at(customers)
    with duckdb.connect(str(warehouse)) as con:
        summary = build_task_table(con, spec, spec.task(TASK))
        art = task_graph(con, spec, FeatureConfig(), warehouse.parent / "graphs")
    return {"warehouse": str(warehouse), "graph": str(art.path),
            "rows": int(sum(art.stats["nodes"].values())),
            "edges": int(sum(art.stats["edges"].values())),
            "train_examples": summary["splits"]["train"]["examples"],
            "val_examples": summary["splits"]["val"]["examples"],
            "seconds": time.perf_counter() - t0}


def _prepared(warehouse: str, customers: int, graph: str | None):
    """The task prepared on the built warehouse and our graph (none for RelBench's model)."""
    from contextlib import closing

    import duckdb

    from bench.bench_graph import _spec_at
    from pipeline.graph.build import load_graph
    from pipeline.training.prepare import prepare_task

    spec = _spec_at(customers)
    return prepare_task(lambda: closing(duckdb.connect(warehouse, read_only=True)), spec,
                        spec.task(TASK), graph=load_graph(Path(graph)) if graph else None)


def _timed(batches, step, warmup: int, steps: int) -> dict:
    """Run `warmup` untimed then `steps` timed calls of step(batch) -> seeds; drawing each
    batch from the loader (sampling, feature gathering) is inside the timing."""
    it = iter(batches)
    for _ in range(warmup):
        step(next(it))
    t0, c0 = time.perf_counter(), time.process_time()
    seeds = done = 0
    for batch in it:
        seeds += step(batch)
        done += 1
        if done == steps:
            break
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    if done < steps:
        raise RuntimeError(f"the train split gave {warmup + done} batches, fewer than the "
                           f"{warmup + steps} asked for; lower --steps or use a larger scale")
    return {"steps": steps, "seeds": seeds, "wall_s": wall, "cpu_s": cpu,
            "seeds_per_s": seeds / wall, "cpu_seeds_per_s": seeds / cpu, "ms_per_step": 1e3 * wall / steps}


def _device_memory(device) -> dict:
    import torch

    if device.type != "cuda":
        return {}
    return {"cuda_mb": torch.cuda.max_memory_allocated(device) / 2**20}


def child_ours(model: str, warehouse: str, graph: str, customers: int, warmup: int, steps: int,
               threads: int) -> dict:
    """Training throughput of one of our models with the default TrainConfig."""
    import torch

    from pipeline.training.trainer import TrainConfig
    from pipeline.training.zoo import make_trainer

    torch.set_num_threads(threads)
    prep = _prepared(warehouse, customers, graph)
    splits = prep.examples()
    config = TrainConfig(model=model)
    with tempfile.TemporaryDirectory() as ckpt:
        trainer = make_trainer(prep.training_graph(), prep.graph.feature_meta, prep.task, splits,
                               config, Path(ckpt), progress=False)
        trainer.model.train()
        ex = splits["train"]
        loader = trainer._loader(ex, shuffle=True, seed=config.seed)

        def step(batch) -> int:
            batch = batch.to(trainer.device)
            idx = batch[prep.task.entity_table].input_id.cpu()
            trainer._step(batch, ex, idx)  # the Trainer's own step; its float(loss) syncs CUDA
            return idx.numel()

        out = _timed_with_memory(loader, step, warmup, steps)
    out.update(model=model, layers=config.layers, fanouts=list(config.fanouts),
               device=str(trainer.device), threads=torch.get_num_threads(),
               params=sum(p.numel() for p in trainer.model.parameters()),
               **_device_memory(trainer.device))
    return out


def child_ours_auroc(warehouse: str, graph: str, customers: int, epochs: int, max_steps: int,
                     threads: int, seed: int) -> dict:
    """Validation AUROC of our sage (default config but epochs, steps and seed), best epoch."""
    import torch

    from pipeline.training.trainer import TrainConfig
    from pipeline.training.zoo import make_trainer

    torch.set_num_threads(threads)
    prep = _prepared(warehouse, customers, graph)
    config = TrainConfig(model="sage", epochs=epochs, max_steps_per_epoch=max_steps, seed=seed)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as ckpt:
        result = make_trainer(prep.training_graph(), prep.graph.feature_meta, prep.task,
                              prep.examples(), config, Path(ckpt), progress=False).fit()
    return {"model": "sage", "layers": config.layers, "fanouts": list(config.fanouts),
            "epochs": epochs, "max_steps": max_steps, "seed": seed, "best_epoch": result.best_epoch,
            "val_auroc": result.val_metrics["auroc"], "test_auroc": result.test_metrics["auroc"],
            "val_per_epoch": [h["val_auroc"] for h in result.history],
            "params": result.num_parameters, "seconds": time.perf_counter() - t0}


def relbench_graph(warehouse: str, customers: int, cache_dir: Path):
    """RelBench's graph of the warehouse tables: (HeteroData with `tf` per node type and
    int64 epoch-second `time` on temporal ones, column stats per table).

    The same clean tables as our graph (node i = the row with `__id` = i, so our example
    ids address it), without key and ignored columns; the time column is no feature.
    Materialized tensor frames are cached in `cache_dir` (per scale: the data is fixed).
    """
    import duckdb
    from relbench.base import Database, Table
    from relbench.modeling.graph import make_pkey_fkey_graph
    from relbench.modeling.utils import get_stype_proposal
    from torch_frame.config import TextEmbedderConfig

    from bench.bench_graph import HashTextEmbedder, layout

    tables = layout(customers)
    frames = {}
    with duckdb.connect(warehouse, read_only=True) as con:
        for name, t in tables.items():
            drop = ", ".join('"' + c.replace('"', '""') + '"' for c in t["drop"])
            exclude = f" EXCLUDE ({drop})" if drop else ""
            df = con.sql(f'SELECT *{exclude} FROM main."{name}" ORDER BY __id').df()
            if t["time"]:
                # DuckDB hands pandas datetime64[us]; RelBench's to_unix_time assumes ns.
                df[t["time"]] = df[t["time"]].astype("datetime64[ns]")
            # RelBench names edge types f2p_<column>, and PyG's ModuleDict cannot hold a
            # relation name with "___" in it: "__fk_x" becomes "fk_x".
            df = df.rename(columns={col: col[2:] for col in t["fks"]})
            frames[name] = Table(df=df, fkey_col_to_pkey_table={c[2:]: p for c, p in t["fks"].items()},
                                 pkey_col="__id", time_col=t["time"])
    db = Database(frames)
    stypes = get_stype_proposal(db)
    for name, t in tables.items():
        if t["time"]:
            stypes[name].pop(t["time"], None)
    data, col_stats = make_pkey_fkey_graph(
        db, stypes, TextEmbedderConfig(HashTextEmbedder(64), batch_size=50_000),
        cache_dir=str(cache_dir))
    return data, col_stats


def relbench_model(data, col_stats, entity: str):
    """RelBench's example entity model (examples/model.py), built from relbench.modeling.nn.

    x_T = ResNet_T(tf_T) + Linear_T(PE((seed_time - time_T) / 86400)) for every node type
    T, then 2 HeteroGraphSAGE layers (SAGEConv per edge type, sum over edge types,
    LayerNorm, ReLU), then MLP(128 -> 1, batch norm) on the seeds.
    """
    import torch
    from relbench.modeling.nn import HeteroEncoder, HeteroGraphSAGE, HeteroTemporalEncoder
    from torch_geometric.nn import MLP

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = HeteroEncoder(
                channels=RELBENCH_CHANNELS,
                node_to_col_names_dict={t: data[t].tf.col_names_dict for t in data.node_types},
                node_to_col_stats=col_stats)
            self.temporal_encoder = HeteroTemporalEncoder(
                [t for t in data.node_types if "time" in data[t]], RELBENCH_CHANNELS)
            self.gnn = HeteroGraphSAGE(data.node_types, data.edge_types, RELBENCH_CHANNELS,
                                       aggr="sum", num_layers=RELBENCH_LAYERS)
            self.head = MLP(RELBENCH_CHANNELS, out_channels=1, norm="batch_norm", num_layers=1)

        def forward(self, batch):
            seed_time = batch[entity].seed_time
            x = self.encoder(batch.tf_dict)
            for t, rel in self.temporal_encoder(seed_time, batch.time_dict, batch.batch_dict).items():
                x[t] = x[t] + rel
            x = self.gnn(x, batch.edge_index_dict)
            return self.head(x[entity][: seed_time.size(0)]).view(-1)

    return Model()


def _relbench_setup(warehouse: str, customers: int, cache_dir: Path, threads: int, seed: int):
    import torch

    from pipeline.training.distributed import resolve_device

    torch.set_num_threads(threads)
    prep = _prepared(warehouse, customers, None)
    task, splits = prep.task, prep.examples()
    t0 = time.perf_counter()
    data, col_stats = relbench_graph(warehouse, customers, cache_dir)
    build_s = time.perf_counter() - t0
    device = resolve_device("auto")
    data = data.to(device)
    torch.manual_seed(seed)
    model = relbench_model(data, col_stats, task.entity_table).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=RELBENCH_LR)
    return task, splits, data, device, model, optimizer, build_s


def relbench_fanouts() -> list[int]:
    """Our default fanouts, one hop per layer of RelBench's model."""
    from pipeline.training.trainer import TrainConfig

    return list(TrainConfig().fanouts[:RELBENCH_LAYERS])


def _relbench_loader(data, task, ex, shuffle: bool, seed: int, drop_last: bool = False):
    from pipeline.graph.sampling import make_loader
    from pipeline.training.trainer import TrainConfig

    # our sampler and strategy, exactly as our models get them
    return make_loader(data, task.entity_table, ex.entity, ex.cutoff, relbench_fanouts(),
                       batch_size=BATCH, shuffle=shuffle, strategy=TrainConfig().strategy,
                       seed=seed, drop_last=drop_last)


def _relbench_step(model, optimizer, entity: str, ex, device):
    import torch

    loss_fn = torch.nn.BCEWithLogitsLoss()

    def step(batch) -> int:
        batch = batch.to(device)
        idx = batch[entity].input_id.cpu()
        optimizer.zero_grad()
        loss = loss_fn(model(batch).float(), ex.label[idx].to(device))
        loss.backward()
        optimizer.step()
        float(loss)  # as RelBench's loop does (loss.item()): also syncs CUDA
        return idx.numel()

    return step


def child_relbench(warehouse: str, customers: int, cache_dir: str, warmup: int, steps: int,
                   threads: int) -> dict:
    """Training throughput of RelBench's reference model fed by our sampler."""
    import torch

    task, splits, data, device, model, optimizer, build_s = _relbench_setup(
        warehouse, customers, Path(cache_dir), threads, seed=0)
    model.train()
    ex = splits["train"]
    step = _relbench_step(model, optimizer, task.entity_table, ex, device)
    # drop_last: the head's batch norm cannot train on a last batch of one seed
    loader = _relbench_loader(data, task, ex, shuffle=True, seed=0, drop_last=True)
    out = _timed_with_memory(loader, step, warmup, steps)
    out.update(model="relbench_sage", layers=RELBENCH_LAYERS, fanouts=relbench_fanouts(),
               device=str(device), threads=torch.get_num_threads(),
               params=sum(p.numel() for p in model.parameters()), graph_build_s=build_s,
               **_device_memory(device))
    return out


def child_relbench_auroc(warehouse: str, customers: int, cache_dir: str, epochs: int,
                         max_steps: int, threads: int, seed: int) -> dict:
    """Validation AUROC of RelBench's reference model, best of `epochs` epochs."""
    import copy

    import torch


    t0 = time.perf_counter()
    task, splits, data, device, model, optimizer, _ = _relbench_setup(
        warehouse, customers, Path(cache_dir), threads, seed)

    @torch.no_grad()
    def scores(ex):
        model.eval()
        out = [torch.sigmoid(model(b.to(device))).float().cpu()
               for b in _relbench_loader(data, task, ex, shuffle=False, seed=seed)]
        return torch.cat(out).numpy()

    def auroc(split: str) -> float:
        ex = splits[split]
        return task.kind.compute_metrics(ex.label.numpy(), scores(ex))["auroc"]

    ex = splits["train"]
    step = _relbench_step(model, optimizer, task.entity_table, ex, device)
    history, best, best_state, best_epoch = [], float("-inf"), None, 0
    for epoch in range(1, epochs + 1):
        torch.manual_seed(seed * 100_003 + epoch)
        model.train()
        loader = _relbench_loader(data, task, ex, shuffle=True, seed=seed * 100_003 + epoch,
                                  drop_last=True)
        for i, batch in enumerate(loader):
            if max_steps and i == max_steps:
                break
            step(batch)
        value = auroc("val")
        history.append(value)
        if value > best:
            best, best_epoch, best_state = value, epoch, copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    return {"model": "relbench_sage", "layers": RELBENCH_LAYERS, "fanouts": relbench_fanouts(),
            "epochs": epochs, "max_steps": max_steps, "seed": seed, "best_epoch": best_epoch,
            "val_auroc": auroc("val"), "test_auroc": auroc("test"), "val_per_epoch": history,
            "params": sum(p.numel() for p in model.parameters()),
            "seconds": time.perf_counter() - t0}


CHILDREN = {"prepare": child_prepare, "ours": child_ours, "ours_auroc": child_ours_auroc,
            "relbench": child_relbench, "relbench_auroc": child_relbench_auroc}


# ---------------------------------------------------------------------------------------
# Parent


def _child(python: str, name: str, **kwargs) -> dict:
    """Run CHILDREN[name](**kwargs) in a fresh `python` process; its JSON result."""
    # Idle OpenMP workers sleep instead of spinning: on a shared machine a spinning worker
    # waits out other processes' turns and burns the CPU time measured (15x per step seen).
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    proc = subprocess.run([python, "-m", "bench.bench_train", "--child", name, "--kwargs",
                           json.dumps(kwargs, default=str)], cwd=ROOT, capture_output=True,
                          text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"bench.bench_train child {name} {kwargs} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _relbench_python(given: str | None) -> str | None:
    """An interpreter that imports relbench, pytorch-frame and this project, or None."""
    probe = "import relbench.modeling.nn, torch_frame, pipeline.graph.sampling"
    for python in (given, os.environ.get("RELBENCH_PYTHON"), sys.executable):
        if python and subprocess.run([python, "-c", probe], cwd=ROOT,
                                     capture_output=True).returncode == 0:
            return python
    return None


def _say(row: dict) -> None:
    print(json.dumps(row, default=str), flush=True)


def run(quick: bool = False, customers: int | None = None, auroc_customers: int = AUROC_SCALE,
        warmup: int | None = None, steps: int | None = None, epochs: int | None = None,
        max_steps: int | None = None, auroc_seeds: int | None = None, threads: int = THREADS,
        models: tuple[str, ...] = MODELS, relbench_python: str | None = None,
        workdir: Path | None = None) -> list[dict]:
    """Measure; one row per model ("bench": "throughput") and per (model, seed) of the
    AUROC check ("bench": "auroc").

    quick: 10,000 customers, 2 warm-up + 5 timed steps; AUROC after 2 epochs of 8 steps,
    1 seed (a smoke test, not a comparison). Otherwise 580,000 customers (~10M rows),
    3 + 20 steps; AUROC after 8 whole epochs, 2 seeds.
    """
    customers = customers or (QUICK_SCALE if quick else SCALE)
    warmup = warmup if warmup is not None else (2 if quick else 3)
    steps = steps or (5 if quick else 20)
    epochs = epochs or (2 if quick else 8)
    max_steps = max_steps if max_steps is not None else (8 if quick else 0)
    auroc_seeds = auroc_seeds or (1 if quick else 2)
    workdir = Path(workdir) if workdir else _workdir()
    python = _relbench_python(relbench_python)
    me = sys.executable
    rows: list[dict] = []

    prep = {c: _child(me, "prepare", customers=c, workdir=str(workdir))
            for c in dict.fromkeys([customers, auroc_customers])}
    for c, p in prep.items():
        print(f"{c:,} customers: {p['rows']:,} rows, {p['edges']:,} edges, "
              f"{p['train_examples']:,} train examples (prepared in {p['seconds']:.0f} s)", flush=True)

    p = prep[customers]
    common = {"bench": "throughput", "customers": customers, "rows": p["rows"], "batch": BATCH}
    for model in models:
        r = _child(me, "ours", model=model, warehouse=p["warehouse"], graph=p["graph"],
                   customers=customers, warmup=warmup, steps=steps, threads=threads)
        rows.append({**common, **r})
        _say(rows[-1])
    cache = workdir / f"ecommerce-{customers}" / "relbench-tf"
    if python is None:
        rows.append({**common, "model": "relbench_sage",
                     "note": "relbench not installed (pip install -r bench/requirements.txt)"})
    else:
        r = _child(python, "relbench", warehouse=p["warehouse"], customers=customers,
                   cache_dir=str(cache), warmup=warmup, steps=steps, threads=threads)
        rows.append({**common, **r})
        _say(rows[-1])

    a = prep[auroc_customers]
    common = {"bench": "auroc", "customers": auroc_customers, "rows": a["rows"], "batch": BATCH}
    cache = workdir / f"ecommerce-{auroc_customers}" / "relbench-tf"
    for seed in range(auroc_seeds):
        r = _child(me, "ours_auroc", warehouse=a["warehouse"], graph=a["graph"],
                   customers=auroc_customers, epochs=epochs, max_steps=max_steps,
                   threads=threads, seed=seed)
        rows.append({**common, **r})
        _say(rows[-1])
        if python is not None:
            r = _child(python, "relbench_auroc", warehouse=a["warehouse"], customers=auroc_customers,
                       cache_dir=str(cache), epochs=epochs, max_steps=max_steps, threads=threads,
                       seed=seed)
            rows.append({**common, **r})
            _say(rows[-1])
    return rows


def _fan(r: dict) -> str:
    return "[" + ", ".join(map(str, r["fanouts"])) + "]"


def markdown(rows: list[dict]) -> str:
    """The tables of bench/results/train.md."""
    thr = [r for r in rows if r["bench"] == "throughput"]
    auc = [r for r in rows if r["bench"] == "auroc"]
    out = []
    timed = [r for r in thr if "seeds_per_s" in r]
    if timed:
        r0 = timed[0]
        out += [f"Training throughput on {TASK}, {r0['customers']:,} customers ({r0['rows']:,} rows), "
                f"batch {BATCH}, most recent neighbours, {r0['threads']} torch threads, device "
                f"{r0['device']}; {r0['steps']} timed steps after warm-up, sampling included. "
                "seeds/s over wall time, seeds/cpu-s over the process's CPU time (the machine "
                "may be shared). peak MB: the child process's peak RSS (setup included: the "
                "sampler's index build); before MB: its RSS at the first step (graph pages "
                "touched, sampler index, model); steps MB: the peak RSS during the steps "
                "minus before MB, what training itself takes.", "",
                "| model | layers | fanouts | params | seeds/s | seeds/cpu-s | ms/step | peak MB "
                "| before MB | steps MB | cuda MB |",
                "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in thr:
            if "seeds_per_s" not in r:
                out.append(f"| {r['model']} | {r.get('note', '')} | | | | | | | | | |")
                continue
            cuda = f"{r['cuda_mb']:,.0f}" if "cuda_mb" in r else ""
            out.append(f"| {r['model']} | {r['layers']} | {_fan(r)} | {r['params']:,} | "
                       f"{r['seeds_per_s']:,.0f} | {r['cpu_seeds_per_s']:,.0f} | "
                       f"{r['ms_per_step']:,.0f} | {r['peak_mb']:,.0f} | {r['before_mb']:,.0f} | "
                       f"{r['steps_peak_mb'] - r['before_mb']:,.0f} | {cuda} |")
        out.append("")
    if auc:
        r0 = auc[0]
        steps = f", at most {r0['max_steps']} steps each" if r0["max_steps"] else ""
        out += [f"Validation AUROC on {TASK}, {r0['customers']:,} customers ({r0['rows']:,} rows), "
                f"{r0['epochs']} epochs{steps}, best epoch by validation AUROC, the same "
                "sampler:", "",
                "| model | layers | fanouts | seed | val AUROC | test AUROC | best epoch "
                "| val AUROC per epoch | s |",
                "|---|---:|---|---:|---:|---:|---:|---|---:|"]
        for r in auc:
            per = ", ".join(f"{v:.3f}" for v in r["val_per_epoch"])
            out.append(f"| {r['model']} | {r['layers']} | {_fan(r)} | {r['seed']} | "
                       f"{r['val_auroc']:.4f} | {r['test_auroc']:.4f} | {r['best_epoch']} | "
                       f"{per} | {r['seconds']:.0f} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="10,000 customers, few steps")
    parser.add_argument("--customers", type=int, help=f"throughput scale (default {SCALE:,})")
    parser.add_argument("--auroc-customers", type=int, default=AUROC_SCALE)
    parser.add_argument("--warmup", type=int)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--max-steps", type=int, help="AUROC check: batches per epoch (0: all)")
    parser.add_argument("--auroc-seeds", type=int)
    parser.add_argument("--threads", type=int, default=THREADS)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--relbench-python", help="interpreter with bench/requirements.txt installed")
    parser.add_argument("--workdir", type=Path, help="where the generated warehouses are kept")
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--kwargs", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        kwargs = json.loads(args.kwargs)
        if "workdir" in kwargs:
            kwargs["workdir"] = Path(kwargs["workdir"])
        print(json.dumps(CHILDREN[args.child](**kwargs), default=str))
        return 0
    rows = run(quick=args.quick, customers=args.customers, auroc_customers=args.auroc_customers,
               warmup=args.warmup, steps=args.steps, epochs=args.epochs,
               max_steps=args.max_steps, auroc_seeds=args.auroc_seeds, threads=args.threads,
               models=tuple(args.models.split(",")), relbench_python=args.relbench_python,
               workdir=args.workdir)
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
