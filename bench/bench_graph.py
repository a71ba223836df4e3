"""Graph build speed and memory: ours against RelBench's make_pkey_fkey_graph, same tables.

    .venv/bin/python -m bench.bench_graph              # about 1M, 10M and 30M rows
    .venv/bin/python -m bench.bench_graph --scales 30M # one of them
    .venv/bin/python -m bench.bench_graph --quick      # about 1M rows

The synthetic e-commerce dataset (datasets/ecommerce.yaml) is generated at each scale and
extracted into a DuckDB warehouse with the real pipeline (kept under
$RELGRAPH_DATA/bench/graph/ and reused). Each builder then runs in its own child process,
so its peak RSS (getrusage) is its own:

- ours: `pipeline.graph.build_graph` from the warehouse into an empty cache, then again
  (a cache hit);
- RelBench: the same clean tables as pandas DataFrames (`__id` as primary key, `__fk_*`
  as foreign keys, the same feature columns), pytorch-frame's column-type inference
  (`get_stype_proposal`) and `make_pkey_fkey_graph`, with a hashed word uni+bi-gram text
  embedder of the same width as ours (64). It runs in the interpreter given by
  --relbench-python or $RELBENCH_PYTHON (default: this one), which needs
  bench/requirements.txt installed.

"build s" is the graph build alone (RelBench: type inference + make_pkey_fkey_graph;
loading its DataFrames is reported apart); "peak MB" is the child's peak RSS and
"build MB" what the build added to the RSS it started from.
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

from bench.memory import hwm_mb, reset_peak, rss_mb

import yaml

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "datasets" / "ecommerce.yaml"
# customers -> about 17 rows each in all tables
SCALES = {"1M": 58_000, "10M": 580_000, "30M": 1_740_000}


def _spec_at(customers: int):
    from pipeline.data.spec import parse_spec

    raw = yaml.safe_load(SPEC.read_text())
    raw["source"]["scale"] = customers
    return parse_spec(raw, SPEC)


def prepare(customers: int, workdir: Path) -> Path:
    """Generate the synthetic data at this scale and extract it; returns the warehouse path.

    Both steps are skipped when already done (the generator's marker file, the
    warehouse's fingerprints).
    """
    import duckdb

    from pipeline.data.sources import open_source
    from pipeline.data.warehouse import extract_table

    spec = _spec_at(customers)
    data_dir = workdir / f"ecommerce-{customers}"
    data_dir.mkdir(parents=True, exist_ok=True)
    source = open_source(spec, data_dir)
    path = data_dir / "warehouse.duckdb"
    con = duckdb.connect(str(path))
    try:
        for table in spec.extract_order():
            extract_table(con, spec, table, source.read(table), source.fingerprint(table))
    finally:
        con.close()
    return path


def layout(customers: int) -> dict:
    """What RelBench needs to know about each table, in plain JSON for the child process."""
    spec = _spec_at(customers)
    out = {}
    for name, t in spec.tables.items():
        drop = sorted(set(t.key_columns) | set(t.ignore_columns))
        out[name] = {"time": t.time_column, "drop": drop,
                     "fks": {f"__fk_{fk.name}": fk.references for fk in t.foreign_keys}}
    return out


def child_ours(warehouse: Path, customers: int) -> dict:
    import duckdb

    from pipeline.graph.features import FeatureConfig
    from pipeline.graph.build import build_graph

    spec = _spec_at(customers)
    con = duckdb.connect(str(warehouse), read_only=True)
    cutoff = con.execute("SELECT max(ordered_at) - INTERVAL 60 DAY FROM orders").fetchall()[0][0]
    before = rss_mb()
    # the build's own peak: what importing and connecting reached before it does not count
    reset_peak()
    with tempfile.TemporaryDirectory() as cache:
        started = time.perf_counter()
        art = build_graph(con, spec, cutoff, FeatureConfig(), Path(cache))
        seconds = time.perf_counter() - started
        peak = hwm_mb()
        started = time.perf_counter()
        hit = build_graph(con, spec, cutoff, FeatureConfig(), Path(cache))
        hit_seconds = time.perf_counter() - started
        assert hit.cache_hit
    return {"seconds": seconds, "cache_hit_seconds": hit_seconds, "peak_mb": peak,
            "before_mb": before, "graph_mb": art.stats["bytes"] / 2**20,
            "rows": sum(art.stats["nodes"].values()), "edges": sum(art.stats["edges"].values())}


class HashTextEmbedder:
    """Word uni+bi-gram counts hashed into `dim` buckets, log(1 + count): the same kind of
    text feature as ours, so both builders do comparable work on text columns."""

    def __init__(self, dim: int = 64):
        from sklearn.feature_extraction.text import HashingVectorizer

        self.vectorizer = HashingVectorizer(n_features=dim, ngram_range=(1, 2),
                                            alternate_sign=False, norm=None)

    def __call__(self, sentences: list[str]):
        import numpy as np
        import torch

        counts = self.vectorizer.transform(sentences)
        counts.data = np.log1p(counts.data)
        return torch.from_numpy(counts.toarray().astype(np.float32))


def child_relbench(warehouse: Path, tables: dict) -> dict:
    import duckdb
    from relbench.base import Database, Table
    from relbench.modeling.graph import make_pkey_fkey_graph
    from relbench.modeling.utils import get_stype_proposal
    from torch_frame.config import TextEmbedderConfig

    con = duckdb.connect(str(warehouse), read_only=True)
    started = time.perf_counter()
    frames = {}
    for name, t in tables.items():
        drop = ", ".join('"' + c.replace('"', '""') + '"' for c in t["drop"])
        exclude = f" EXCLUDE ({drop})" if drop else ""
        df = con.sql(f'SELECT *{exclude} FROM main."{name}" ORDER BY __id').df()
        frames[name] = Table(df=df, fkey_col_to_pkey_table=t["fks"], pkey_col="__id", time_col=t["time"])
    con.close()
    db = Database(frames)
    load_seconds = time.perf_counter() - started
    before = rss_mb()
    reset_peak()  # as for ours: the build's own peak, not the loading's
    started = time.perf_counter()
    stypes = get_stype_proposal(db)
    for name, t in tables.items():  # the time column is no feature on our side either
        if t["time"]:
            stypes[name].pop(t["time"], None)
    data, _ = make_pkey_fkey_graph(db, stypes, TextEmbedderConfig(HashTextEmbedder(64), batch_size=50_000))
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "load_seconds": load_seconds, "peak_mb": hwm_mb(),
            "before_mb": before, "rows": sum(data[t].num_nodes for t in data.node_types),
            "edges": sum(data[e].edge_index.size(1) for e in data.edge_types)}


def _child(python: str, args: list[str]) -> dict:
    proc = subprocess.run([python, "-m", "bench.bench_graph", *args], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{python} bench.bench_graph {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _relbench_python(given: str | None) -> str | None:
    """An interpreter that can import relbench, pytorch-frame and torch-geometric, or None."""
    for python in (given, os.environ.get("RELBENCH_PYTHON"), sys.executable):
        if python and subprocess.run([python, "-c", "import relbench.modeling.graph, torch_frame"],
                                     capture_output=True).returncode == 0:
            return python
    return None


def run(scales: list[str] | None = None, quick: bool = False, relbench_python: str | None = None,
        workdir: Path | None = None) -> list[dict]:
    """Time both builders at each scale ("1M", "10M", "30M"); one row per scale."""
    scales = scales or (["1M"] if quick else ["1M", "10M", "30M"])
    workdir = workdir or Path(os.environ.get("RELGRAPH_DATA", ROOT / "data")) / "bench" / "graph"
    python = _relbench_python(relbench_python)
    rows = []
    for scale in scales:
        customers = SCALES[scale]
        started = time.perf_counter()
        warehouse = prepare(customers, workdir)
        prepared = time.perf_counter() - started
        ours = _child(sys.executable, ["--child", "ours", "--warehouse", str(warehouse),
                                       "--customers", str(customers)])
        row = {"scale": scale, "rows": ours["rows"], "edges": ours["edges"],
               "prepare s": round(prepared, 1),
               "ours build s": ours["seconds"], "ours rows/s": ours["rows"] / ours["seconds"],
               "ours peak MB": ours["peak_mb"], "ours build MB": ours["peak_mb"] - ours["before_mb"],
               "graph MB": ours["graph_mb"], "cache hit s": ours["cache_hit_seconds"]}
        if python is None:
            row["relbench"] = "not installed (pip install -r bench/requirements.txt)"
        else:
            rb = _child(python, ["--child", "relbench", "--warehouse", str(warehouse),
                                 "--layout", json.dumps(layout(customers))])
            row.update({"relbench build s": rb["seconds"], "relbench load s": rb["load_seconds"],
                        "relbench rows/s": rb["rows"] / rb["seconds"], "relbench peak MB": rb["peak_mb"],
                        "relbench build MB": rb["peak_mb"] - rb["before_mb"],
                        "speedup": rb["seconds"] / ours["seconds"]})
            if rb["rows"] != ours["rows"]:
                row["note"] = f"row counts differ: relbench {rb['rows']}"
        rows.append(row)
        print(json.dumps(row, default=str), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="about 1M rows only")
    parser.add_argument("--scales", help="comma-separated subset of 1M,10M,30M (default: all three)")
    parser.add_argument("--relbench-python", help="interpreter with bench/requirements.txt installed")
    parser.add_argument("--workdir", type=Path, help="where the generated warehouses are kept")
    parser.add_argument("--child", choices=("ours", "relbench"), help=argparse.SUPPRESS)
    parser.add_argument("--warehouse", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--customers", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--layout", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child == "ours":
        print(json.dumps(child_ours(args.warehouse, args.customers)))
        return 0
    if args.child == "relbench":
        print(json.dumps(child_relbench(args.warehouse, json.loads(args.layout))))
        return 0
    from bench.run import to_markdown

    scales = args.scales.split(",") if args.scales else None
    print(to_markdown(run(scales, quick=args.quick, relbench_python=args.relbench_python, workdir=args.workdir)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
