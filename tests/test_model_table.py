"""The model table: a new graph model is one file plus one row, and everything else reads
the table (the Launchpad, `relgraph run`, Dagster's assets, MLflow, tune, scoring)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import mlflow
import pytest

from pipeline.training.family import ModelFamily
from pipeline.training.zoo import ALL_MODELS, MODELS, run_models

REPO = Path(__file__).resolve().parent.parent

# A graph model written as a user would: its own file, a module mapping a sampled batch
# to seed embeddings [B, hidden], and one row for the table.
PLUGIN = textwrap.dedent('''
    """Node encoder only: each seed's own row and degrees, no message passing."""
    from torch import nn

    from pipeline.models.encoders import NodeEncoder
    from pipeline.models.mpnn import num_seeds
    from pipeline.training.family import ModelEntry
    from pipeline.training.graph_family import GRAPH


    class OwnRow(nn.Module):
        def __init__(self, feature_meta, metadata, entity_type, config):
            super().__init__()
            self.entity_type = entity_type
            self.encoder = NodeEncoder(feature_meta, config.hidden, entity_type,
                                       config.time_periods_days, list(metadata[1]))

        def forward(self, batch):
            return self.encoder(batch)[self.entity_type][: num_seeds(batch, self.entity_type)]


    MODELS = [ModelEntry("ownrow", GRAPH, build=OwnRow)]
''')


def test_every_family_is_a_model_family_and_every_name_is_unique():
    assert len(ALL_MODELS) == len(set(ALL_MODELS)) == len(MODELS)
    for entry in MODELS.values():
        assert isinstance(entry.family, ModelFamily)
        assert isinstance(entry.default_config(), entry.family.config_class)
        assert entry.family.search_space(entry), entry.name
    assert run_models("all") == list(ALL_MODELS)
    with pytest.raises(ValueError, match="unknown model"):
        run_models("sage,nope")


def test_nothing_outside_the_table_branches_on_a_model_name():
    """No module of the pipeline or the Dagster layer compares with, or tests membership
    in, a string that names a model; only pipeline/training/zoo.py says what they are.
    (The architectures in pipeline/models/ name their own operators: mpnn's `kind` picks
    the convolution that the table's gcn, sage, gat and gin rows ask for.)"""
    offenders = []
    for path in [*REPO.glob("pipeline/**/*.py"), *REPO.glob("assets/*.py")]:
        if path.name == "zoo.py" or path.parent.name == "models":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                for side in [node.left, *node.comparators]:
                    names = [side] if isinstance(side, ast.Constant) else \
                        getattr(side, "elts", [])
                    hits = [n.value for n in names if isinstance(n, ast.Constant) and n.value in MODELS]
                    if hits:
                        offenders.append(f"{path.relative_to(REPO)}:{node.lineno} {hits}")
    assert not offenders, offenders


def test_nothing_outside_the_task_kinds_compares_a_task_type():
    offenders = []
    for path in [*REPO.glob("pipeline/**/*.py"), *REPO.glob("assets/*.py"), *REPO.glob("bench/*.py")]:
        if path.name == "task_kinds.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                for side in [node.left, *node.comparators]:
                    if isinstance(side, ast.Attribute) and side.attr in ("type", "task_type") and \
                            isinstance(side.value, ast.Name) and side.value.id in ("task", "self"):
                        offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not offenders, offenders


def test_the_library_imports_no_dagster_and_nothing_from_assets():
    offenders = []
    for path in REPO.glob("pipeline/**/*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            offenders += [f"{path.relative_to(REPO)}: {n}" for n in names
                          if n.split(".")[0] in ("dagster", "dagster_duckdb", "assets")]
    assert not offenders, offenders


def test_a_plugin_model_trains_through_relgraph_run_dagster_and_mlflow(tmp_path, monkeypatch):
    plugin = tmp_path / "ownrow.py"
    plugin.write_text(PLUGIN)
    data = tmp_path / "data"
    env = {**os.environ, "RELGRAPH_DATA": str(data), "RELGRAPH_MODEL_PLUGINS": str(plugin),
           "OMP_NUM_THREADS": "1"}
    env.pop("DAGSTER_HOME", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run(
        [sys.executable, "-m", "assets.cli", "run", "--scale", "1000", "--models", "ownrow",
         "--epochs", "1"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    line = next(l for l in proc.stdout.splitlines() if l.startswith("| ownrow |"))
    val = float(line.split("|")[2].split("±")[0])
    assert 0.0 <= val <= 1.0, line

    # Dagster ran the plug-in's own asset; MLflow has its nested run with param model.
    client = mlflow.MlflowClient(f"sqlite:///{data / 'mlflow' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("relgraph/ecommerce/customer_churn")
    runs = client.search_runs([exp.experiment_id], "params.model = 'ownrow'")
    assert len(runs) == 1 and runs[0].data.tags["dagster_run_id"]
    assert runs[0].data.metrics["val_auroc"] == pytest.approx(val, abs=5e-5)
    import dagster as dg

    monkeypatch.setenv("DAGSTER_HOME", str(data / "dagster"))  # the instance's dagster.yaml reads it
    with dg.DagsterInstance.from_config(str(data / "dagster")) as instance:
        event = instance.get_latest_materialization_event(
            dg.AssetKey(["ecommerce", "customer_churn", "ownrow"]))
    assert event is not None and event.run_id == runs[0].data.tags["dagster_run_id"]
