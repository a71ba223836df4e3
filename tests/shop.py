"""A small two-table shop (customers, orders) shared by the reliability, fault and soak tests."""

import sys
from pathlib import Path

RELGRAPH = str(Path(sys.executable).parent / "relgraph")
CHURN = """SELECT c.customer_id, t.cutoff, (COUNT(o.order_id) = 0)::INTEGER AS label
FROM cutoffs t JOIN customers c ON TRUE
LEFT JOIN orders o ON o.customer_id = c.customer_id
     AND o.ordered_at > t.cutoff AND o.ordered_at <= t.window_end
WHERE EXISTS (SELECT 1 FROM orders p WHERE p.customer_id = c.customer_id AND p.ordered_at <= t.cutoff)
GROUP BY ALL"""


def shop_spec(name: str, src: Path, label_sql: str = CHURN) -> dict:
    """The spec (as a dict) of a parquet shop in `src` with one churn task."""
    return {"name": name, "source": {"kind": "parquet", "path": str(src)},
            "tables": {"customers": {"primary_key": "customer_id"},
                       "orders": {"primary_key": "order_id", "time_column": "ordered_at",
                                  "foreign_keys": {"customer_id": "customers"}}},
            "tasks": {"churn": {"type": "binary_classification", "entity_table": "customers",
                                "label_sql": label_sql, "horizon": "30d", "val_cutoff": "latest - 60d",
                                "test_cutoff": "latest - 30d", "num_train_cutoffs": 3}}}


def synthetic_prep(root: Path, task_name: str, scale: int = 1000):
    """The synthetic e-commerce shop (datasets/ecommerce.yaml) at `scale` customers under
    `root`, extracted, with `task_name`'s label table: the task prepared (PreparedTask)."""
    import dataclasses

    import duckdb

    from pipeline.data.sources import open_source
    from pipeline.data.spec import load_spec
    from pipeline.data.tasks import build_task_table
    from pipeline.data.warehouse import extract_table
    from pipeline.training.prepare import prepare_task

    spec = load_spec(Path(__file__).resolve().parents[1] / "datasets" / "ecommerce.yaml")
    spec = dataclasses.replace(spec, source=dataclasses.replace(spec.source, scale=scale))
    task = spec.tasks[task_name]
    source = open_source(spec, root)
    warehouse = str(root / "warehouse.duckdb")
    with duckdb.connect(warehouse) as con:
        for table in spec.extract_order():
            extract_table(con, spec, table, source.read(table), source.fingerprint(table))
        build_task_table(con, spec, task)
    return prepare_task(lambda: duckdb.connect(warehouse), spec, task, graphs_dir=root / "graphs")


def synthetic_task(root: Path, task_name: str, scale: int = 1000):
    """`synthetic_prep`'s task as (graph truncated at the test cutoff, feature meta, task,
    splits)."""
    prep = synthetic_prep(root, task_name, scale)
    return prep.training_graph(), prep.graph.feature_meta, prep.task, prep.examples()
