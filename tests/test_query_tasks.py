"""Predictive queries as tasks of a spec: `query:` in the YAML, `relgraph query`, and a
seasonal RelBench-style database where the query and hand-written SQL must agree over
many windows and all-history training cutoffs."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest
import yaml

from assets.cli import main
from pipeline.data.sources import open_source
from pipeline.data.spec import SpecError, parse_spec
from pipeline.data.tasks import build_task_table, preview_task
from pipeline.data.warehouse import extract_table
from relbench_folders import write_racing_folder

# Drivers who race in the next 30 days: did any of their results not finish? Among drivers
# who raced in the year before the cutoff. Races run March to November, so most winter
# windows hold no example at all.
DNF_QUERY = ("PREDICT MAX(results.status != 'Finished', 0, 30, days) FOR EACH drivers.driver_id "
             "WHERE COUNT(results.*, -365, 0, days) > 0")
DNF_SQL = """
SELECT d.driver_id, t.cutoff, CAST(MAX(r.status <> 'Finished') AS INTEGER) AS label
FROM cutoffs t
JOIN drivers d ON d.joined <= t.cutoff
JOIN results r ON r.driver_id = d.driver_id AND r.date > t.cutoff AND r.date <= t.window_end
WHERE EXISTS (SELECT 1 FROM results p WHERE p.driver_id = d.driver_id
              AND p.date > t.cutoff - INTERVAL 365 DAY AND p.date <= t.cutoff)
GROUP BY ALL
"""
# The mean finishing position over the next 60 days of drivers who finish at least once.
POSITION_QUERY = ("PREDICT AVG(results.position WHERE results.position IS NOT NULL, 0, 60, days) "
                  "FOR EACH drivers.driver_id")
POSITION_SQL = """
SELECT d.driver_id, t.cutoff, AVG(r.position) AS label
FROM cutoffs t
JOIN drivers d ON d.joined <= t.cutoff
JOIN results r ON r.driver_id = d.driver_id AND r.date > t.cutoff AND r.date <= t.window_end
WHERE r.position IS NOT NULL
GROUP BY ALL
"""
SPLITS = {"val_cutoff": "2010-01-01", "test_cutoff": "2011-01-01", "num_eval_windows": 40,
          "num_train_cutoffs": "all"}


def racing_spec(db: Path, tasks: dict) -> dict:
    return {"name": "racing", "source": {"kind": "parquet", "path": str(db)},
            "tables": {"circuits": {"primary_key": "circuit_id"},
                       "drivers": {"primary_key": "driver_id", "time_column": "joined"},
                       "races": {"primary_key": "race_id", "time_column": "date",
                                 "foreign_keys": {"circuit_id": "circuits"}},
                       "results": {"primary_key": "result_id", "time_column": "date",
                                   "foreign_keys": {"race_id": "races", "driver_id": "drivers"}}},
            "tasks": tasks}


@pytest.fixture(scope="module")
def racing(tmp_path_factory):
    root = tmp_path_factory.mktemp("racing")
    folder = write_racing_folder(root)
    spec = parse_spec(racing_spec(folder / "db", {
        "dnf_sql": {"type": "binary_classification", "entity_table": "drivers",
                    "label_sql": DNF_SQL, "horizon": "30d", **SPLITS},
        "dnf_query": {"query": DNF_QUERY, **SPLITS},
        "position_sql": {"type": "regression", "entity_table": "drivers",
                         "label_sql": POSITION_SQL, "horizon": "60d", **SPLITS},
        "position_query": {"query": POSITION_QUERY, **SPLITS}}))
    warehouse = root / "warehouse.duckdb"
    source = open_source(spec, root)
    with duckdb.connect(str(warehouse)) as con:
        for table in spec.extract_order():
            extract_table(con, spec, table, source.read(table), source.fingerprint(table))
    return spec, warehouse


@pytest.mark.parametrize("name", ["dnf", "position"])
def test_a_seasonal_query_gives_the_hand_written_label_table(racing, name):
    spec, warehouse = racing
    by_sql, by_query = spec.tasks[f"{name}_sql"], spec.tasks[f"{name}_query"]
    assert (by_query.type, by_query.horizon) == (by_sql.type, by_sql.horizon)
    with duckdb.connect(str(warehouse)) as con:
        tables, summaries = {}, {}
        for task in (by_sql, by_query):
            summaries[task.name] = build_task_table(con, spec, task)
            tables[task.name] = con.execute(
                f"SELECT driver_id, cutoff, split, label FROM task_{task.name} ORDER BY ALL").fetchall()
    assert tables[by_sql.name] == tables[by_query.name]
    # the windows matter: many validation and test windows, all-history training, and
    # winters without races leave some windows empty
    sql_summary = summaries[by_sql.name]
    assert sql_summary["splits"]["test"]["cutoffs"] > 1 and sql_summary["splits"]["train"]["cutoffs"] > 20
    assert len({c for _, c, _, _ in tables[by_sql.name]}) < len(sql_summary["cutoffs"]["train"]) \
        + len(sql_summary["cutoffs"]["val_windows"]) + len(sql_summary["cutoffs"]["test_windows"])


def test_a_query_task_says_where_it_came_from_and_takes_nothing_it_gives(racing, tmp_path):
    spec, _ = racing
    assert spec.tasks["dnf_query"].query == DNF_QUERY and spec.tasks["dnf_sql"].query is None
    raw = racing_spec(tmp_path, {"both": {"query": DNF_QUERY, "label_sql": DNF_SQL, **SPLITS}})
    with pytest.raises(SpecError, match="task both: a task with a query takes label_sql"):
        parse_spec(raw)
    raw = racing_spec(tmp_path, {"typo": {"query": DNF_QUERY.replace("results.status", "results.stats"),
                                          **SPLITS}})
    parse_spec(raw)  # columns are checked against the warehouse, not at load
    raw["tasks"]["typo"]["query"] = DNF_QUERY.replace("FOR EACH drivers", "FOR EACH driver")
    with pytest.raises(SpecError, match=r"task typo.query: .*column \d+: no table 'driver'; did you mean drivers"):
        parse_spec(raw)


def test_relgraph_query_prints_the_sql_and_the_counts_of_build_task_table(racing, tmp_path,
                                                                           monkeypatch, capsys):
    spec, warehouse = racing
    path = tmp_path / "racing.yaml"
    raw = racing_spec(Path(spec.source.path), {})
    path.write_text(yaml.safe_dump(raw))
    monkeypatch.setenv("RELGRAPH_DATA", str(tmp_path / "data"))
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    monkeypatch.delenv("RELGRAPH_DATASETS", raising=False)
    # In season: a window that starts on 1 January holds no race at all
    assert main(["query", "--dataset", str(path), "--val-cutoff", "2010-05-01",
                 "--test-cutoff", "2010-08-01", DNF_QUERY]) == 0
    out = capsys.readouterr().out
    assert "binary_classification on drivers, horizon 30 days" in out and "-- label_sql" in out
    # the counts are those of the same task built by hand (one window per split here)
    task = parse_spec(racing_spec(Path(spec.source.path), {"q": {
        "query": DNF_QUERY, "val_cutoff": "2010-05-01", "test_cutoff": "2010-08-01"}})).tasks["q"]
    expected = preview_task(warehouse, spec, task)
    for split in ("train", "val", "test"):
        row = expected["splits"][split]
        assert f"| {split} | {row['examples']} | {row['positive_rate']:.4f} |" in out
    # the preview wrote nothing: no task table in the warehouse it read
    with duckdb.connect(str(tmp_path / "data" / "warehouse.duckdb"), read_only=True) as con:
        assert not con.execute("SELECT COUNT(*) FROM duckdb_tables() WHERE table_name LIKE 'task_%'"
                               ).fetchall()[0][0]
