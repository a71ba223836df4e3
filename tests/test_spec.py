from datetime import datetime, timedelta
from pathlib import Path

import pytest
import yaml

from pipeline.data.spec import SpecError, load_spec, parse_duration, parse_spec, resolve_time

REPO = Path(__file__).resolve().parent.parent

BASE = {
    "name": "shop",
    "source": {"kind": "parquet", "path": "/tmp/x"},
    "tables": {
        "customers": {"primary_key": "customer_id"},
        "orders": {"primary_key": "order_id", "time_column": "ordered_at",
                   "foreign_keys": {"customer_id": "customers"}},
        "weather": {"primary_key": ["origin", "hour"]},
        "flights": {"time_column": "departed_at",
                    "foreign_keys": [{"columns": ["origin", "hour"], "references": "weather"}]},
    },
    "tasks": {
        "churn": {"type": "binary_classification", "entity_table": "customers",
                  "label_sql": "SELECT 1", "horizon": "30d", "val_cutoff": "latest - 60d",
                  "test_cutoff": "latest - 30d"},
    },
}


def _spec(**changes):
    raw = yaml.safe_load(yaml.safe_dump(BASE))
    for path, value in changes.items():
        node = raw
        *parents, last = path.split(".")
        for p in parents:
            node = node[p]
        if value is None:
            del node[last]
        else:
            node[last] = value
    return parse_spec(raw, Path("shop.yaml"))


def test_both_foreign_key_forms_and_composite_keys():
    spec = _spec()
    assert spec.tables["orders"].foreign_keys[0].columns == ("customer_id",)
    assert spec.tables["orders"].foreign_keys[0].name == "customer_id"
    fk = spec.tables["flights"].foreign_keys[0]
    assert (fk.columns, fk.references, fk.name) == (("origin", "hour"), "weather", "origin__hour")
    assert spec.tables["weather"].primary_key == ("origin", "hour")
    assert spec.tables["flights"].primary_key == ()
    assert spec.tasks["churn"].metric == "auroc"
    assert spec.tasks["churn"].horizon == timedelta(days=30)
    order = spec.extract_order()
    assert order.index("customers") < order.index("orders")
    assert order.index("weather") < order.index("flights")


def test_unknown_key_suggests_the_closest():
    with pytest.raises(SpecError, match="unknown key 'primay_key'.*did you mean primary_key"):
        _spec(**{"tables.customers": {"primay_key": "customer_id"}})


def test_reference_to_missing_table_suggests():
    with pytest.raises(SpecError, match="references table 'customer'.*did you mean customers"):
        _spec(**{"tables.orders.foreign_keys": {"customer_id": "customer"}})


def test_foreign_key_to_table_without_primary_key():
    with pytest.raises(SpecError, match="orders.customer_id: references table 'customers', which has no primary_key"):
        _spec(**{"tables.customers": {}})


def test_composite_arity_mismatch():
    with pytest.raises(SpecError, match="1 column.*2-column primary key"):
        _spec(**{"tables.flights.foreign_keys": [{"columns": ["origin"], "references": "weather"}]})


def test_metric_must_fit_task_type():
    with pytest.raises(SpecError, match="'mae' does not fit binary_classification"):
        _spec(**{"tasks.churn.metric": "mae"})


def test_overlapping_windows_rejected():
    with pytest.raises(SpecError, match="overlap"):
        _spec(**{"tasks.churn.val_cutoff": "latest - 40d"})


def test_password_in_uri_rejected():
    with pytest.raises(SpecError, match="do not write the password"):
        _spec(**{"source": {"kind": "postgres", "uri": "postgresql://u:secret@h/db"}})


def test_cycle_rejected():
    with pytest.raises(SpecError, match="cycle"):
        _spec(**{"tables.customers": {"primary_key": "customer_id",
                                      "foreign_keys": {"last_order": "orders"}}})


def test_malformed_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\ntables:\n  a: [unclosed\n")
    with pytest.raises(SpecError, match=r"bad.yaml: not valid YAML \(line \d+"):
        load_spec(path)


def test_check_columns_suggests_column():
    spec = _spec(**{"tables.orders.foreign_keys": {"custmer_id": "customers"}})
    cols = {"customers": ["customer_id"], "orders": ["order_id", "ordered_at", "customer_id"],
            "weather": ["origin", "hour"], "flights": ["origin", "hour", "departed_at"]}
    with pytest.raises(SpecError, match="orders.custmer_id: no such column; did you mean customer_id"):
        spec.check_columns(cols)
    with pytest.raises(SpecError, match="table 'weather' is not in the source; did you mean weathr"):
        _spec().check_columns({**{k: v for k, v in cols.items() if k != "weather"},
                               "weathr": ["origin", "hour"]})


def test_durations_and_times():
    assert parse_duration("12h") == timedelta(hours=12)
    assert parse_duration("2w") == timedelta(weeks=2)
    latest = datetime(2025, 12, 31)
    assert resolve_time("latest - 30d", latest) == datetime(2025, 12, 1)
    assert resolve_time("2025-06-01", latest) == datetime(2025, 6, 1)
    with pytest.raises(SpecError, match="cannot read time"):
        resolve_time("yesterday", latest)


def test_shipped_specs_load():
    specs = sorted((REPO / "datasets").glob("*.yaml"))
    assert specs, "datasets/ holds no spec"
    for path in specs:
        spec = load_spec(path)
        assert spec.tables and spec.name
