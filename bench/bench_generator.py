"""Synthetic e-commerce generator throughput: rows, seconds, rows/s and peak memory per scale.

    python -m bench.bench_generator [--scales 10000,100000] [--large]

Each scale runs in a fresh process so that its peak RSS is its own; the time covers
`generate` only (catalog, simulation and parquet writing), not interpreter start-up.
"""

from __future__ import annotations

import argparse
import multiprocessing
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from bench.memory import peak_mb

SCALES = (10_000, 100_000)
QUICK_SCALES = (10_000,)
LARGE_SCALE = 500_000


def _measure(scale: int, seed: int) -> dict:
    from pipeline.data.sources.synthetic import SyntheticConfig, generate

    config = SyntheticConfig(scale=scale, seed=seed)
    with tempfile.TemporaryDirectory(prefix="relgraph-bench-gen-") as tmp:
        started = time.perf_counter()
        counts = generate(Path(tmp), config)
        seconds = time.perf_counter() - started
        disk = sum(p.stat().st_size for p in Path(tmp).rglob("*.parquet"))
    rows = sum(counts.values())
    return {
        "scale": scale,
        "chunks": -(-scale // config.chunk_customers),
        "rows": rows,
        "orders": counts["orders"],
        "order_items": counts["order_items"],
        "seconds": round(seconds, 3),
        "rows_per_s": round(rows / seconds),
        # ru_maxrss is in KiB on Linux
        "peak_rss_mb": round(peak_mb(), 1),
        "parquet_mb": round(disk / 2**20, 1),
    }


def run(scales: Sequence[int] | None = None, quick: bool = False, seed: int = 0) -> list[dict]:
    """Generate at each scale (customers) into a temporary directory; one result row per scale."""
    scales = tuple(scales) if scales else (QUICK_SCALES if quick else SCALES)
    spawn = multiprocessing.get_context("spawn")
    results = []
    for scale in scales:
        with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
            results.append(pool.submit(_measure, scale, seed).result())
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scales", default=",".join(map(str, SCALES)),
                        help="comma-separated customer counts")
    parser.add_argument("--large", action="store_true",
                        help=f"also {LARGE_SCALE:,} customers (about 9M rows)")
    args = parser.parse_args(argv)
    scales = [int(s) for s in args.scales.split(",") if s] + ([LARGE_SCALE] if args.large else [])
    header = ("customers", "rows", "seconds", "rows/s", "peak RSS MB", "parquet MB")
    print(" ".join(f"{h:>12}" for h in header))
    for row in run(scales):
        print(f"{row['scale']:>12,} {row['rows']:>12,} {row['seconds']:>12.2f} {row['rows_per_s']:>12,} "
              f"{row['peak_rss_mb']:>12,.1f} {row['parquet_mb']:>12,.1f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
