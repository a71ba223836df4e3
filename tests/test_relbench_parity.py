"""A RelBench 3 folder is a relgraph dataset, and relgraph's label tables are relbench's.

For every task of the three folders of tests/relbench_folders.py (seasonal results with
40-window tasks, a recommendation task with late destinations, hosted labels with
remove_columns), relgraph's train/val/test tables hold row for row the (entity,
timestamp) keys and labels of relbench 3.0.2's own
relbench's `load_dataset(DIR).load_task(T).get_table(split, mask_input_cols=False)`.

One deliberate difference: relbench keeps rows whose entity is NULL (its cut at
test_timestamp turns a foreign key into NULL and `driver-position` groups by it);
relgraph cannot key an example on no entity, drops them and reports the count (repair
`null_entity`). The comparison is therefore on relbench's rows with a non-NULL entity,
and the dropped count must equal the NULL rows relbench kept.

Bad folders and bad task SQL fail in one line naming the file and the key.
"""

from __future__ import annotations

import dataclasses
import shutil
import warnings
from dataclasses import asdict
from datetime import timedelta
from pathlib import Path

import duckdb
import pandas as pd
import pytest
import yaml

pytest.importorskip("relbench")
from relbench_folders import (  # noqa: E402
    CLINIC, RACING, SHOP, relbench_tables, split_timestamps,
    write_clinic_folder, write_racing_folder, write_shop_folder,
)

from pipeline.data.relbench_folder import (  # noqa: E402
    RelBenchManifestWarning, export_relbench, is_relbench_folder, relbench_spec_yaml,
    spec_from_relbench_folder,
)
from pipeline.data.sources import open_source  # noqa: E402
from pipeline.data.datasets import load_dataset  # noqa: E402
from pipeline.data.spec import SpecError, TaskSpec, safe_name  # noqa: E402
from pipeline.data.tasks import TaskError, build_task_table, task_cutoffs  # noqa: E402
from pipeline.data.warehouse import extract_table  # noqa: E402

SPLITS = ("train", "val", "test")
REPO = Path(__file__).resolve().parents[1]


def _warehouse(spec, data_dir):
    con = duckdb.connect()
    source = open_source(spec, data_dir)
    for table in spec.extract_order():
        extract_table(con, spec, table, source.read(table))
    return con


def _load(folder):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RelBenchManifestWarning)
        return load_dataset(folder)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """{folder: (path, spec, con, {task: summary})}, every task built once."""
    root = tmp_path_factory.mktemp("rb")
    out = {}
    for key, write in (("racing", write_racing_folder), ("shop", write_shop_folder),
                       ("clinic", lambda r: write_clinic_folder(r, unsupported_kinds=True))):
        path = write(root)
        spec = _load(path)
        con = _warehouse(spec, root)
        out[key] = (path, spec, con, {t: build_task_table(con, spec, spec.tasks[t])
                                      for t in spec.tasks})
    yield out
    for _, _, con, _ in out.values():
        con.close()


TASKS = ([("racing", t) for t in RACING["tasks"]] + [("shop", t) for t in SHOP["tasks"]]
         + [("clinic", t) for t in CLINIC["tasks"]])


def _ours(con, spec, task, split) -> list[tuple]:
    key = spec.tables[task.entity_table].primary_key[0]
    if task.kind.ranks_targets:
        tkey = spec.tables[task.target_table].primary_key[0]
        rows = con.execute(f'SELECT "{key}", cutoff, list("{tkey}" ORDER BY "{tkey}") '
                           f'FROM "task_{task.name}" WHERE split = ? GROUP BY ALL', [split]).fetchall()
        return sorted((int(e), pd.Timestamp(c), tuple(int(x) for x in ids)) for e, c, ids in rows)
    rows = con.execute(f'SELECT "{key}", cutoff, label FROM "task_{task.name}" WHERE split = ?',
                       [split]).fetchall()
    return sorted((int(e), pd.Timestamp(c), float(y)) for e, c, y in rows)


def _theirs(df: pd.DataFrame, task) -> list[tuple]:
    rb = task.relbench
    df = df[df[rb.entity_col].notna()]
    if task.kind.ranks_targets:
        return sorted((int(e), pd.Timestamp(c), tuple(sorted(int(x) for x in ids))) for c, e, ids
                      in df[[rb.time_col, rb.entity_col, rb.dst_entity_col]].itertuples(index=False))
    return sorted((int(e), pd.Timestamp(c), float(y)) for c, e, y
                  in df[[rb.time_col, rb.entity_col, rb.target_col]].itertuples(index=False))


def _assert_same(ours, expected, link: bool, split: str) -> None:
    """Same (entity, timestamp) keys in the same order, same labels (floats to 1e-12:
    DuckDB's parallel sums may add in another order)."""
    assert len(ours) == len(expected) > 0, (split, len(ours), len(expected))
    assert [r[:2] for r in ours] == [r[:2] for r in expected], split
    if link:
        assert ours == expected, split
    else:
        assert [r[2] for r in ours] == pytest.approx([r[2] for r in expected], rel=1e-12,
                                                     abs=1e-12), split


@pytest.mark.parametrize("folder,name", TASKS)
def test_label_tables_equal_relbench_row_for_row(built, folder, name):
    path, spec, con, summaries = built[folder]
    task = spec.tasks[name]
    theirs = relbench_tables(path, name)
    nulls = next((r["by_split"] for r in summaries[name]["repairs"]
                  if r["kind"] == "null_entity"), {})
    for split in SPLITS:
        _assert_same(_ours(con, spec, task, split), _theirs(theirs[split], task),
                     task.kind.ranks_targets, split)
        kept_null = int(theirs[split][task.relbench.entity_col].isna().sum())
        assert nulls.get(split, 0) == kept_null, split


def test_windows_are_relbench_seed_timestamps(built):
    """TaskCutoffs' train, val_windows and test_windows are relbench's timestamps; val and
    test stay the first window's cutoff."""
    for folder, name in TASKS:
        path, spec, con, _ = built[folder]
        task = spec.tasks[name]
        cuts = task_cutoffs(con, spec, task)
        lo, hi = cuts.earliest, cuts.latest
        stamps = split_timestamps(pd.Timestamp(task.val_cutoff), pd.Timestamp(task.test_cutoff),
                                  pd.Timedelta(task.horizon), task.num_eval_windows,
                                  pd.Timestamp(lo), pd.Timestamp(hi))
        assert cuts.train == sorted(stamps["train"].to_pydatetime().tolist()), name
        assert cuts.val_windows == stamps["val"].to_pydatetime().tolist(), name
        assert cuts.test_windows == stamps["test"].to_pydatetime().tolist(), name
        assert (cuts.val, cuts.test) == (cuts.val_windows[0], cuts.test_windows[0])
    racing = task_cutoffs(built["racing"][2], built["racing"][1],
                          built["racing"][1].tasks["driver-podium"])
    assert len(racing.test_windows) == 40 and 1 < len(racing.val_windows) < 40


def test_rules_are_reported(built):
    """What the rules dropped or kept comes back with counts and example keys."""
    repairs = {(f, t): {r["kind"]: r for r in s["repairs"]}
               for f, (_, _, _, summaries) in built.items() for t, s in summaries.items()}
    withheld = repairs[("racing", "driver-dnf-count")]["future_entity"]
    assert withheld["count"] > 0 and "withheld" in withheld["action"]
    assert 0 < len(withheld["examples"]) <= 5 and " at " in withheld["examples"][0]
    assert repairs[("racing", "driver-position")]["dangling_entity"]["by_split"]["test"] > 0
    pruned = repairs[("shop", "customer-item-purchase")]["pruned_target"]
    assert pruned["count"] > 5 and pruned["examples_emptied"] > 0
    assert "null_entity" not in repairs[("racing", "driver-podium")]
    live = {k: s["live_entities"] for k, s in
            ((t, s) for _, (_, _, _, ss) in built.items() for t, s in ss.items())}
    assert all(n > 0 for n in live.values()), live
    assert built["racing"][3]["driver-podium"]["live_from"] == "the task SQL at the newest timestamp"
    assert built["racing"][3]["driver-dnf-count"]["live_from"].startswith("the entities of the last test window")


def test_folder_maps_onto_a_spec(built):
    path, spec, _, _ = built["clinic"]
    assert is_relbench_folder(path) and not is_relbench_folder(path / "db")
    assert spec.name == "rel-clinic" and spec.source.kind == "relbench"
    assert spec.tables["visits"].foreign_keys[0].references == "patients"
    cost = spec.tasks["patient-cost"]
    assert (cost.type, cost.num_train_cutoffs, cost.num_eval_windows, cost.test_context,
            cost.on_future_entity, cost.label_database) == (
        "regression", "all", 3, "frozen", "withhold", "per_split")
    assert cost.remove_columns == (("patients", "risk_score"),)
    assert set(cost.relbench.label_files) == set(SPLITS) and cost.relbench.target_col == "cost"
    assert "autocomplete" in spec.refused_tasks["patient-age"]
    with pytest.raises(SpecError, match="'patient-flagged' is not trained by relgraph: external"):
        spec.task("patient-flagged")
    link = built["shop"][1].tasks["customer-item-purchase"]
    assert (link.type, link.target_table, link.relbench.task_type, link.relbench.eval_k) == (
        "link_prediction", "products", "recommendation", 10)
    # the training workers rebuild a TaskSpec from plain data
    assert TaskSpec(**asdict(cost)) == cost and TaskSpec(**asdict(link)) == link
    assert safe_name("driver-dnf-count") == "driver_dnf_count"


def test_unknown_keys_warn(built):
    with pytest.warns(RelBenchManifestWarning) as record:
        spec_from_relbench_folder(built["clinic"][0])
    text = " | ".join(str(w.message) for w in record)
    assert "manifest.yaml: unknown key 'homepage' ignored" in text
    assert "patient-emergency/manifest.yaml: unknown key 'metrics' ignored" in text


def test_legacy_link_prediction_spelling_is_accepted(tmp_path):
    spec = _load(write_shop_folder(tmp_path, link_task_type="link_prediction"))
    task = spec.tasks["customer-item-purchase"]
    assert task.type == "link_prediction" and task.relbench.task_type == "recommendation"


def test_printed_yaml_spec_is_the_same_dataset(built, tmp_path):
    """`relgraph import-relbench` prints a YAML spec that loads to the same tasks."""
    path, spec, _, _ = built["clinic"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RelBenchManifestWarning)
        text = relbench_spec_yaml(path)
    assert "# task patient-age left out: autocomplete" in text
    out = tmp_path / "clinic.yaml"
    out.write_text(text)
    again = load_dataset(out)
    assert again.tasks == spec.tasks and again.tables == spec.tables


def test_keys_need_not_be_relbench_row_numbers(built, tmp_path):
    """RelBench requires keys 0..n-1 in time order; relgraph does not: shifted keys give
    the same labels, shifted."""
    path = shutil.copytree(built["shop"][0], tmp_path / "rel-shop")
    for table, cols in (("customers", ["customer_id"]), ("transactions", ["customer_id"])):
        df = pd.read_parquet(path / "db" / f"{table}.parquet")
        for c in cols:
            df[c] = df[c] + 1000
        df.to_parquet(path / "db" / f"{table}.parquet", index=False)
    spec = _load(path)
    con = _warehouse(spec, tmp_path)
    task = spec.tasks["customer-churn"]
    build_task_table(con, spec, task)
    _, orig_spec, orig_con, _ = built["shop"]
    for split in SPLITS:
        shifted = [(e - 1000, c, y) for e, c, y in _ours(con, spec, task, split)]
        assert shifted == _ours(orig_con, orig_spec, orig_spec.tasks["customer-churn"], split)


def test_export_relbench_round_trip(tmp_path):
    """The synthetic shop exported as a RelBench folder: relbench loads it, relgraph run on
    the folder gives relbench's label tables, and those are relgraph's own labels of the
    original spec under RelBench's options (keys renumbered 0..n-1 in time order = the
    warehouse's __id)."""
    spec = load_dataset(REPO / "datasets" / "ecommerce.yaml")
    spec = dataclasses.replace(spec, source=dataclasses.replace(spec.source, scale=1000))
    con = _warehouse(spec, tmp_path)
    report = export_relbench(spec, con, tmp_path / "ecommerce")
    assert report["tasks"] == list(spec.tasks) and not report["refused"]
    assert "val_timestamp moved" in report["notes"][0]  # val + horizon == test: no row there
    folder = tmp_path / "ecommerce"
    back = _load(folder)
    assert back.tasks["customer_churn"].remove_columns == (
        ("products", "avg_rating"), ("products", "review_count"), ("orders", "status"))
    con2 = _warehouse(back, tmp_path)
    for name, task in back.tasks.items():
        build_task_table(con2, back, task)
        theirs = relbench_tables(folder, name)
        original = dataclasses.replace(
            spec.tasks[name], num_train_cutoffs="all", label_database="per_split",
            on_future_entity="withhold", val_cutoff=report["val_timestamp"].isoformat(),
            test_cutoff=report["test_timestamp"].isoformat())
        build_task_table(con, spec, original)
        for split in SPLITS:
            ours = _ours(con2, back, task, split)
            _assert_same(ours, _theirs(theirs[split], task), task.kind.ranks_targets, split)
            if task.kind.ranks_targets:
                rows = con.execute(f"SELECT __entity_id, cutoff, list(__target_id ORDER BY "
                                   f"__target_id) FROM task_{name} WHERE split = ? GROUP BY ALL",
                                   [split]).fetchall()
                before = sorted((e, pd.Timestamp(c), tuple(t)) for e, c, t in rows)
            else:
                rows = con.execute(f"SELECT __entity_id, cutoff, label FROM task_{name} "
                                   "WHERE split = ?", [split]).fetchall()
                before = sorted((e, pd.Timestamp(c), float(y)) for e, c, y in rows)
            _assert_same(ours, before, task.kind.ranks_targets, split)
    # what RelBench cannot express is refused with the reason
    late = dataclasses.replace(spec.tasks["customer_ltv"], test_cutoff="latest - 20d")
    report = export_relbench(dataclasses.replace(spec, tasks={**spec.tasks, "customer_ltv": late}),
                             con, tmp_path / "other")
    assert "one pair of split timestamps per dataset" in report["refused"]["customer_ltv"]
    composite = dataclasses.replace(spec, tables={**spec.tables, "customers": dataclasses.replace(
        spec.tables["customers"], primary_key=("customer_id", "signup_at"))})
    with pytest.raises(SpecError, match="customers has a composite primary key"):
        export_relbench(composite, con, tmp_path / "composite")


# ------------------------------------------------------------------ bad input
def _edit(path, fn):
    doc = yaml.safe_load(path.read_text())
    fn(doc)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


@pytest.fixture
def clinic(tmp_path, built):
    return shutil.copytree(built["clinic"][0], tmp_path / "rel-clinic")


@pytest.fixture
def shop(tmp_path, built):
    return shutil.copytree(built["shop"][0], tmp_path / "rel-shop")


def test_bad_folders_name_file_and_key(clinic):
    m = clinic / "manifest.yaml"
    cases = [
        (lambda: m.write_text("name: x\ntables: [unclosed\n"),
         r"manifest.yaml: not valid YAML \(line \d+"),
        (lambda: _edit(m, lambda d: d.pop("val_timestamp")),
         "manifest.yaml: missing required key 'val_timestamp'"),
        (lambda: (clinic / "db" / "visits.parquet").unlink(),
         r"manifest.yaml: tables.visits: no db/visits.parquet"),
        (lambda: _edit(m, lambda d: d["tables"]["visits"].update(time_col="visit_att")),
         r"tables.visits.time_col: column 'visit_att' is not in db/visits.parquet; did you mean visit_at\?"),
        (lambda: _edit(m, lambda d: d["tables"]["visits"].update(fkeys={"patient_id": "patient"})),
         "tables.visits.fkeys.patient_id: references table 'patient', which is not in the "
         "manifest; did you mean patients"),
        (lambda: _edit(clinic / "tasks" / "patient-cost" / "manifest.yaml",
                       lambda d: d.pop("timedelta")),
         "patient-cost/manifest.yaml: missing required key 'timedelta'"),
        (lambda: _edit(clinic / "tasks" / "patient-cost" / "manifest.yaml",
                       lambda d: d.update(task_type="regresion")),
         "patient-cost/manifest.yaml: task_type: 'regresion' is not one of .*did you mean regression"),
        (lambda: shutil.copytree(clinic / "tasks" / "patient-cost", clinic / "tasks" / "patient_cost"),
         "names 'patient-cost' and 'patient_cost' both become 'patient_cost'"),
    ]
    original = {p: p.read_bytes() for p in clinic.rglob("*") if p.is_file()}
    for make, message in cases:
        make()
        with pytest.raises(SpecError, match=message):
            _load(clinic)
        for p in list(clinic.rglob("*")):  # restore
            if p.is_file() and p not in original:
                p.unlink()
        for p, data in original.items():
            p.write_bytes(data)
    shutil.rmtree(clinic / "tasks" / "patient_cost", ignore_errors=True)
    (clinic / "manifest.yaml").unlink()
    with pytest.raises(SpecError, match="not a RelBench folder"):
        load_dataset(clinic)
    with pytest.raises(SpecError, match=r"manifest.yaml: no such file"):
        spec_from_relbench_folder(clinic)


def test_recommendation_with_many_windows_is_refused(shop):
    _edit(shop / "tasks" / "customer-item-purchase" / "manifest.yaml",
          lambda d: d.update(num_eval_timestamps=3))
    with pytest.raises(SpecError, match="customer-item-purchase/manifest.yaml: "
                                        "num_eval_timestamps: recommendation tasks take 1"):
        _load(shop)


@pytest.mark.parametrize("sql, message", [
    ("SELECT t.timestamp, c.customer_id, 1 AS churn FROM timestamps t JOIN customerz c ON TRUE",
     r"customer-churn/manifest.yaml: sql: .*customerz"),
    ("SELECT t.timestamp, c.customer_id, 1 AS churned FROM timestamps t JOIN customers c ON TRUE",
     r"customer-churn/manifest.yaml: sql: must return columns timestamp, customer_id, churn; "
     r".*'churn' missing; is it churned"),
    ("SELECT t.timestamp, c.customer_id, 1 AS churn FROM timestamps t JOIN customers c ON TRUE "
     "WHERE t.timestamp >= TIMESTAMP '2021-03-15'",
     r"the train split has no examples \(\d+ window\(s\), cutoffs 2020-.*: the label SQL "
     r"returned no rows for it\)"),
])
def test_bad_task_sql_names_the_manifest(shop, tmp_path, sql, message):
    _edit(shop / "tasks" / "customer-churn" / "manifest.yaml", lambda d: d.update(sql=sql))
    spec = _load(shop)
    con = _warehouse(spec, tmp_path)
    with pytest.raises(TaskError, match=message):
        build_task_table(con, spec, spec.tasks["customer-churn"])


def test_too_few_training_windows_are_refused_as_relbench_does(built):
    _, spec, con, _ = built["clinic"]
    task = spec.tasks["patient-cost"]
    h = timedelta(days=150)
    val = task_cutoffs(con, spec, task).earliest + 2 * h + timedelta(days=1)
    task = dataclasses.replace(task, horizon=h, val_cutoff=val.isoformat())
    with pytest.raises(TaskError, match=r"patient-cost/manifest.yaml: only 2 training cutoff\(s\).*"
                                        "RelBench needs at least 3"):
        task_cutoffs(con, spec, task)
