"""No warning from our own code: a fresh interpreter with every warning an error (but the
third-party ones listed, with their reasons, in pipeline/third_party_warnings.py) imports
the code location, resolves its jobs and runs a tiny one (extract of a two-table shop)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

REPO = Path(__file__).resolve().parent.parent

_SCRIPT = """
import warnings
warnings.simplefilter("error")
from pipeline.third_party_warnings import ignore_third_party_warnings
ignore_third_party_warnings()

import dagster as dg
from assets.definitions import defs

job = defs.resolve_job_def("shop_nightly")
for j in defs.resolve_all_job_defs():
    pass
defs.resolve_asset_graph()
result = job.execute_in_process(instance=dg.DagsterInstance.ephemeral(),
                                asset_selection=[dg.AssetKey(["shop", "customers"]),
                                                 dg.AssetKey(["shop", "orders"])])
assert result.success
print("RAN", len(result.get_asset_materialization_events()))
"""


def test_definitions_load_and_a_job_runs_with_warnings_as_errors(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    pq.write_table(pa.table({"customer_id": [1, 2, 3], "country": ["DE", "FR", "US"]}),
                   src / "customers.parquet")
    pq.write_table(pa.table({"order_id": [10, 11, 12], "customer_id": [1, 2, 3],
                             "ordered_at": ["2025-01-02 00:00:00", "2025-01-05 00:00:00",
                                            "2025-02-01 00:00:00"]}), src / "orders.parquet")
    spec = tmp_path / "shop.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "shop", "source": {"kind": "parquet", "path": str(src)},
        "tables": {"customers": {"primary_key": "customer_id"},
                   "orders": {"primary_key": "order_id", "time_column": "ordered_at",
                              "foreign_keys": {"customer_id": "customers"}}}}))
    env = {**os.environ, "RELGRAPH_DATASETS": str(spec), "RELGRAPH_DATA": str(tmp_path / "data"),
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
           "DAGSTER_HOME": str(tmp_path / "dagster"), "PYTHONWARNINGS": "error"}
    (tmp_path / "dagster").mkdir()
    out = subprocess.run([sys.executable, "-W", "error", "-c", _SCRIPT], capture_output=True,
                         text=True, env=env, cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr[-4000:]
    assert "RAN 2" in out.stdout
