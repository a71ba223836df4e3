"""Runs every benchmark and writes bench/results/<name>.json plus a markdown summary.

    python -m bench.run [--quick] [--only generator,graph,sampler,scale]
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
BENCHES = ("generator", "graph", "sampler", "scale")


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
    import os

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
        rows = module.run(quick=args.quick)
        (RESULTS / f"{name}.json").write_text(json.dumps({"machine": info, "rows": rows}, indent=2,
                                                          default=str))
        print(to_markdown(rows), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
