"""How each stage scales with the database: wall time and peak memory from ~0.1M to ~30M rows.

    .venv/bin/python -m bench.bench_scale            # ~0.1M, 0.3M, 1M, 3M rows
    .venv/bin/python -m bench.bench_scale --quick    # the two smallest
    .venv/bin/python -m bench.bench_scale --large    # and ~10M, ~30M rows (580k, 1.75M customers)
    .venv/bin/python -m bench.bench_scale --large --model-stages-up-to 15000   # train and
                                     # inference only at the small scales (a busy machine)

The default stops at ~3M rows to stay near 20 minutes on a 2-core CPU machine: scoring
every live entity with sage on CPU runs at a few hundred entities a second there, and
the live set grows with the customers.

The synthetic e-commerce dataset (datasets/ecommerce.yaml, task customer_churn) is
generated at each scale into a scratch directory, then the stages run one after another,
each in a fresh child process (spawn), so that each peak RSS (getrusage of the child) is
the stage's own:

    extract     open_source + extract_table of every table into a new DuckDB warehouse
    tasks       build_task_table (labels at every cutoff, the live set)
    graph       build_graph into an empty cache
    train       Trainer.fit of sage, batch 512, one epoch of at most 100 steps (val and test
                cut to 2,048 examples each, so evaluation stays small); "s" is the time of
                the training steps alone, scaled to 100 steps where the train split has fewer
    inference   predict_scores of the trained model over every live entity, on the graph of
                every row (what the predictions asset scores)

"s" is the stage's own work (perf_counter around it, after imports and loading), "peak MB"
the child's peak RSS (imports included: ~0.4 GB for torch). Results go to
bench/results/scale.{json,md,png}; the plot is log-log time against total rows with each
stage's slope fitted over the scales from 1M rows up (1 = linear).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from bench.memory import peak_mb

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "datasets" / "ecommerce.yaml"
RESULTS = Path(__file__).resolve().parent / "results"
TASK = "customer_churn"
# customers -> total rows: about 17 to 20 rows per customer (more per customer when small)
SCALES = (5_500, 15_000, 55_000, 170_000)
LARGE = (580_000, 1_750_000)
STAGES = ("extract", "tasks", "graph", "train", "inference")
TRAIN_STEPS = 100
BATCH = 512
EVAL_EXAMPLES = 2_048
SLOPE_FROM_ROWS = 1_000_000


def _spec(customers: int):
    from pipeline.data.spec import load_spec

    spec = load_spec(SPEC)
    return replace(spec, source=replace(spec.source, scale=customers))


def _fit_cutoff(con, spec):
    """As the graph asset does: encoders fitted up to the earliest validation cutoff."""
    from pipeline.data.tasks import task_cutoffs

    return min(task_cutoffs(con, spec, t).val for t in spec.tasks.values())


# ---------------------------------------------------------------------------------------
# Stages: each runs in its own child process and returns {"seconds", "peak_mb", ...}


def _generate(customers: int, work: str) -> dict:
    from pipeline.data.sources import synthetic_dir

    t0 = time.perf_counter()
    synthetic_dir(_spec(customers), Path(work))
    return {"seconds": time.perf_counter() - t0}


def _extract(customers: int, work: str) -> dict:
    import duckdb

    from pipeline.data.sources import open_source
    from pipeline.data.warehouse import extract_table

    spec = _spec(customers)
    t0 = time.perf_counter()
    source = open_source(spec, Path(work))
    with duckdb.connect(str(Path(work) / "warehouse.duckdb")) as con:
        reports = [extract_table(con, spec, t, source.read(t)) for t in spec.extract_order()]
    return {"seconds": time.perf_counter() - t0, "rows": sum(r.rows_in for r in reports)}


def _tasks(customers: int, work: str) -> dict:
    import duckdb

    from pipeline.data.tasks import build_task_table

    spec = _spec(customers)
    with duckdb.connect(str(Path(work) / "warehouse.duckdb")) as con:
        t0 = time.perf_counter()
        summary = build_task_table(con, spec, spec.task(TASK))
    return {"seconds": time.perf_counter() - t0,
            "train_examples": summary["splits"]["train"]["examples"],
            "live_entities": summary["live_entities"]}


def _graph(customers: int, work: str) -> dict:
    import duckdb

    from pipeline.graph.features import FeatureConfig
    from pipeline.graph.build import build_graph

    spec = _spec(customers)
    with duckdb.connect(str(Path(work) / "warehouse.duckdb"), read_only=True) as con:
        t0 = time.perf_counter()
        art = build_graph(con, spec, _fit_cutoff(con, spec), FeatureConfig(), Path(work) / "graphs")
    return {"seconds": time.perf_counter() - t0, "graph": str(art.path),
            "nodes": int(sum(art.stats["nodes"].values())),
            "edges": int(sum(art.stats["edges"].values()))}


def _head(ex, n: int):
    """The first n examples of a split (evaluation size bounded; the split is time-ordered)."""
    from pipeline.data.tasks import Examples

    return Examples(ex.entity[:n], ex.cutoff[:n], None if ex.label is None else ex.label[:n])


def _train(customers: int, work: str, graph_path: str) -> dict:
    from contextlib import closing

    import duckdb

    from pipeline.graph.build import load_graph
    from pipeline.training.prepare import prepare_task
    from pipeline.training.trainer import TrainConfig
    from pipeline.training.zoo import make_trainer

    spec = _spec(customers)
    warehouse = str(Path(work) / "warehouse.duckdb")
    prep = prepare_task(lambda: closing(duckdb.connect(warehouse, read_only=True)), spec,
                        spec.task(TASK), graph=load_graph(Path(graph_path)))
    splits = prep.examples()
    splits["val"], splits["test"] = (_head(splits[s], EVAL_EXAMPLES) for s in ("val", "test"))
    config = TrainConfig(model="sage", batch_size=BATCH, epochs=1, max_steps_per_epoch=TRAIN_STEPS)
    t0 = time.perf_counter()
    trainer = make_trainer(prep.training_graph(), prep.graph.feature_meta, prep.task, splits,
                           config, Path(work) / "checkpoints", progress=False)
    result = trainer.fit()
    fit_seconds = time.perf_counter() - t0
    seen = min(len(splits["train"]), TRAIN_STEPS * BATCH)
    steps = math.ceil(seen / BATCH)
    step_seconds = seen / result.train_seeds_per_s
    return {"seconds": step_seconds * TRAIN_STEPS / steps, "steps": steps,
            "fit_seconds": fit_seconds, "checkpoint": result.checkpoint}


def _inference(customers: int, work: str, graph_path: str, checkpoint: str) -> dict:
    import duckdb

    from pipeline.graph.build import load_graph
    from pipeline.data.tasks import load_examples
    from pipeline.training.distributed import resolve_device
    from pipeline.training.trainer import load_predictor, predict_scores
    from pipeline.training.zoo import model_entry

    spec = _spec(customers)
    task = spec.task(TASK)
    graph = load_graph(Path(graph_path))
    with duckdb.connect(str(Path(work) / "warehouse.duckdb"), read_only=True) as con:
        live = load_examples(con, task, "live")
    device = resolve_device("auto")
    model, config, y_mean, y_std = load_predictor(checkpoint, model_entry("sage").build,
                                                  graph.feature_meta, graph.data.metadata(), task,
                                                  device)
    t0 = time.perf_counter()
    scores = predict_scores(model, graph.data, task, live, config, device, y_mean, y_std)
    seconds = time.perf_counter() - t0
    if len(scores) != len(live) or not np.isfinite(scores).all():
        raise RuntimeError(f"inference gave {len(scores)} scores for {len(live)} live entities")
    return {"seconds": seconds, "scored": len(live)}


def _in_child(fn, *args) -> dict:
    """Run fn(*args) in a fresh spawned process and add that process's peak RSS."""
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(_measured, fn, *args).result()


def _measured(fn, *args) -> dict:
    out = fn(*args)
    out["peak_mb"] = peak_mb()
    return out


# ---------------------------------------------------------------------------------------


def measure(customers: int, work: Path, model_stages: bool = True) -> dict:
    """Every stage at one scale (without train and inference when `model_stages` is
    false: their cells are then None); `work` is emptied first and left for the caller
    to delete."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    w = str(work)
    gen = _in_child(_generate, customers, w)
    stages = {"extract": _in_child(_extract, customers, w), "tasks": _in_child(_tasks, customers, w),
              "graph": _in_child(_graph, customers, w)}
    if model_stages:
        stages["train"] = _in_child(_train, customers, w, stages["graph"]["graph"])
        stages["inference"] = _in_child(_inference, customers, w, stages["graph"]["graph"],
                                        stages["train"]["checkpoint"])
    row = {"customers": customers, "rows": stages["extract"]["rows"],
           "nodes": stages["graph"]["nodes"], "edges": stages["graph"]["edges"],
           "train_examples": stages["tasks"]["train_examples"],
           "live_entities": stages["tasks"]["live_entities"],
           "train_steps": stages["train"]["steps"] if model_stages else None,
           "generate_s": gen["seconds"]}
    for name in STAGES:
        row[f"{name}_s"] = stages[name]["seconds"] if name in stages else None
        row[f"{name}_peak_mb"] = stages[name]["peak_mb"] if name in stages else None
    return row


def slopes(rows: list[dict], from_rows: int = SLOPE_FROM_ROWS) -> dict[str, float | None]:
    """Per stage, the least-squares slope of log(seconds) on log(rows) over the scales with
    at least `from_rows` rows: t ~ rows^slope. None with fewer than two such scales."""
    out: dict[str, float | None] = {}
    for name in STAGES:
        big = [r for r in rows if r["rows"] >= from_rows and r[f"{name}_s"] is not None]
        if len(big) < 2:
            out[name] = None
            continue
        x = np.log([r["rows"] for r in big])
        y = np.log([max(r[f"{name}_s"], 1e-6) for r in big])
        out[name] = float(np.polyfit(x, y, 1)[0])
    return out


def to_markdown(rows: list[dict], fitted: dict[str, float | None]) -> str:
    head = ["rows", "customers"] + [f"{s} s" for s in STAGES] + [f"{s} peak MB" for s in STAGES]
    lines = ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    for r in rows:
        cells = [f"{r['rows']:,}", f"{r['customers']:,}"]
        cells += [f"{r[f'{s}_s']:.2f}" if r[f"{s}_s"] is not None else "-" for s in STAGES]
        cells += [f"{r[f'{s}_peak_mb']:,.0f}" if r[f"{s}_peak_mb"] is not None else "-"
                  for s in STAGES]
        lines.append("| " + " | ".join(cells) + " |")
    shown = ", ".join(f"{s} {v:.2f}" if v is not None else f"{s} n/a" for s, v in fitted.items())
    lines += ["", f"Slope of log time on log rows from {SLOPE_FROM_ROWS:,} rows up (1 = linear): "
              f"{shown}.", "",
              "train s: 100 steps of sage at batch 512 (scaled from fewer steps where the train "
              "split is smaller: " + ", ".join(f"{r['train_steps']} at {r['rows']:,}" for r in rows
                                               if r["train_steps"] is not None)
              + "); inference s: every live entity ("
              + ", ".join(f"{r['live_entities']:,}" for r in rows) + ")."]
    return "\n".join(lines)


def plot(rows: list[dict], fitted: dict[str, float | None], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    fig, ax = plt.subplots(figsize=(7, 5))
    for name in STAGES:
        slope = fitted[name]
        label = f"{name} (slope {slope:.2f})" if slope is not None else name
        pts = [(r["rows"], r[f"{name}_s"]) for r in rows if r[f"{name}_s"] is not None]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())  # decade labels only: minor ones collide
    ax.set_xlabel("total rows in the database")
    ax.set_ylabel("seconds")
    ax.set_title("relgraph stages vs database size (train: 100 steps)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(quick: bool = False, large: bool = False, work_dir: Path | None = None,
        model_stages_up_to: int | None = None) -> list[dict]:
    """Measure every scale (quick: the two smallest; large: add ~10M and ~30M rows), write
    bench/results/scale.{json,md,png} and return one row per scale. With
    `model_stages_up_to`, train and inference run only at scales of at most that many
    customers (the data stages run everywhere)."""
    scales = list(SCALES[:2] if quick else SCALES) + (list(LARGE) if large else [])
    base = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="relgraph-bench-scale-"))
    rows = []
    try:
        for customers in scales:
            t0 = time.perf_counter()
            row = measure(customers, base / f"c{customers}",
                          model_stages_up_to is None or customers <= model_stages_up_to)
            shutil.rmtree(base / f"c{customers}", ignore_errors=True)
            rows.append(row)
            print(f"{customers:,} customers, {row['rows']:,} rows: "
                  + ", ".join(f"{s} {row[f'{s}_s']:.1f}s/{row[f'{s}_peak_mb']:.0f}MB" for s in STAGES
                              if row[f"{s}_s"] is not None)
                  + f" ({time.perf_counter() - t0:.0f}s in all)", flush=True)
    finally:
        if work_dir is None:
            shutil.rmtree(base, ignore_errors=True)
    fitted = slopes(rows)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "scale.json").write_text(json.dumps({"rows": rows, "slopes": fitted}, indent=2))
    (RESULTS / "scale.md").write_text(to_markdown(rows, fitted) + "\n")
    plot(rows, fitted, RESULTS / "scale.png")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="the two smallest scales only")
    parser.add_argument("--large", action="store_true",
                        help="also 580,000 and 1,750,000 customers (~10M and ~30M rows)")
    parser.add_argument("--work-dir", type=Path, help="scratch directory (default: a temp dir)")
    parser.add_argument("--model-stages-up-to", type=int, metavar="CUSTOMERS",
                        help="run train and inference only up to this many customers")
    args = parser.parse_args(argv)
    rows = run(quick=args.quick, large=args.large, work_dir=args.work_dir,
               model_stages_up_to=args.model_stages_up_to)
    print(to_markdown(rows, slopes(rows)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
