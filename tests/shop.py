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
