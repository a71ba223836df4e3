"""Runs every benchmark and writes bench/results/<name>.json and <name>.md.

    python -m bench.run [--quick] [--only generator,graph,sampler,scale,train]

Each benchmark module has `run(quick: bool) -> list[dict]`; its rows go to <name>.json
with the machine they were measured on, and to <name>.md as a table (the module's
`markdown(rows)` where it has one). A benchmark that writes its own <name>.json or
<name>.md during its run (bench_scale) keeps that file.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
BENCHES = ("generator", "graph", "sampler", "scale", "train")


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cores": os.cpu_count(), "gpu": gpu, "torch": torch.__version__,
            "when": time.strftime("%Y-%m-%d %H:%M")}


def to_markdown(rows: list[dict]) -> str:
    if not rows:
        return "(no rows)"
    cols = list(dict.fromkeys(k for r in rows for k in r))
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c, "")
            cells.append(f"{v:,.1f}" if isinstance(v, float) and abs(v) >= 100 else
                         f"{v:.4g}" if isinstance(v, float) else str(v))
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small scales only (minutes)")
    parser.add_argument("--only", default=",".join(BENCHES))
    args = parser.parse_args(argv)
    RESULTS.mkdir(exist_ok=True)
    info = machine()
    print(f"machine: {info}")
    for name in args.only.split(","):
        module = importlib.import_module(f"bench.bench_{name}")
        print(f"\n## {name}\n", flush=True)
        paths = {ext: RESULTS / f"{name}.{ext}" for ext in ("json", "md")}
        before = {ext: _mtime(path) for ext, path in paths.items()}
        rows = module.run(quick=args.quick)
        table = module.markdown(rows) if hasattr(module, "markdown") else to_markdown(rows)
        texts = {"json": json.dumps({"machine": info, "quick": args.quick, "rows": rows},
                                    indent=2, default=str) + "\n",
                 "md": f"{describe(info, args.quick)}\n\n{table}\n"}
        for ext, path in paths.items():
            if _mtime(path) == before[ext]:  # the benchmark did not write it itself
                path.write_text(texts[ext])
        print(table, flush=True)
    return 0


def _mtime(path: Path) -> int | None:
    return path.stat().st_mtime_ns if path.exists() else None


def describe(info: dict, quick: bool) -> str:
    """The machine line at the top of every <name>.md."""
    gpu = f"GPU {info['gpu']}" if info["gpu"] else "no GPU (CPU numbers)"
    return (f"Measured {info['when']} on {info['cpu']}, {info['cores']} cores, {gpu}, "
            f"torch {info['torch']}{' (--quick)' if quick else ''}.")


if __name__ == "__main__":
    raise SystemExit(main())
