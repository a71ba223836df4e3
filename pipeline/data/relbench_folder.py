"""A RelBench 3 folder as a dataset.

A RelBench 3 dataset is a folder (relbench 3.0.2, `relbench/manifest.py`, `load.py`):

    DIR/manifest.yaml               name, val_timestamp, test_timestamp,
                                    tables: {<table>: {pkey, time_col, fkeys: {col: table}}}
    DIR/db/<table>.parquet          one file per table
    DIR/tasks/<task>/manifest.yaml  kind (forecast | autocomplete | external), task_type,
                                    entity_table/entity_col/target_col/time_col, or
                                    src_/dst_entity_table/_col and eval_k for recommendation,
                                    timedelta, num_eval_timestamps, remove_columns, and DuckDB
                                    `sql` over `timestamps(timestamp)` with `{timedelta}`
    DIR/tasks/<task>/{train,val,test}.parquet   optional hosted labels

`spec_from_relbench_folder(DIR)` maps it onto a relgraph `DatasetSpec` (and
`relbench_spec_dict` onto the YAML document, which `relbench_spec_yaml` prints): the
tables with their keys and time columns (source kind `relbench`), and every forecast task
as a `TaskSpec` with RelBench's split rules: `num_eval_windows` = num_eval_timestamps,
`num_train_cutoffs: all`, `test_context: frozen`, `on_future_entity: withhold`,
`label_database: per_split`, the task SQL unchanged in RelBench's form (`relbench:` says
which columns it returns, and which hosted label files replace it), and `remove_columns`.
`recommendation` (and the older spelling `link_prediction`) becomes relgraph's
link_prediction with the destination table as `target_table`.

Names stay as the folder spells them (`rel-f1`, `driver-dnf`); the task's name is its
directory's, as relbench's `load_task` has it. Keys need not be 0..n-1 for relgraph (RelBench
itself requires them and so does `export_relbench`'s output).

Kinds relgraph does not train (autocomplete, external) and task types it has no kind for
(multilabel_classification) are left out of the spec and listed, with a one-line reason,
in `DatasetSpec.refused_tasks`. Keys relbench ignores get a `RelBenchManifestWarning`.
Everything wrong with the folder raises `SpecError` in one line naming the file and key.
"""

from __future__ import annotations

import warnings
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from pipeline.data.schema import read_yaml, suggest
from pipeline.data.spec import DatasetSpec, SpecError, pandas_timedelta, parse_spec, safe_name

__all__ = [
    "MANIFEST", "RelBenchManifestWarning", "is_relbench_folder", "spec_from_relbench_folder",
    "relbench_spec_dict", "relbench_spec_yaml", "export_relbench", "safe_name",
]

MANIFEST = "manifest.yaml"
SPLITS = ("train", "val", "test")

_DATASET_KEYS = {"name", "val_timestamp", "test_timestamp", "description",
                 "manifest_version", "tables"}
_TABLE_KEYS = {"pkey", "time_col", "fkeys"}
_TASK_KEYS = {"name", "kind", "task_type", "description", "entity_table", "entity_col",
              "target_col", "time_col", "src_entity_table", "src_entity_col",
              "dst_entity_table", "dst_entity_col", "eval_k", "timedelta",
              "num_eval_timestamps", "remove_columns", "sql", "evaluator", "extra_files",
              "manifest_version"}
# RelBench's task_type -> relgraph's task type
TASK_TYPES = {
    "binary_classification": "binary_classification",
    "regression": "regression",
    "multiclass_classification": "multiclass_classification",
    "recommendation": "link_prediction",
    "link_prediction": "link_prediction",  # older hosted manifests; relbench 3.0.2 refuses it
}
REFUSED_TYPES = {
    "multilabel_classification": "multilabel classification is not a relgraph task kind yet",
}
REFUSED_KINDS = {
    "autocomplete": "autocomplete tasks (predict a column of an existing row) are not trained "
                    "by relgraph yet",
    "external": "external tasks (labels and evaluation built outside RelBench) are not trained "
                "by relgraph yet",
}


class RelBenchManifestWarning(UserWarning):
    """Something in a RelBench folder that relbench ignores and relgraph reports."""


def is_relbench_folder(path: str | Path) -> bool:
    """A directory holding `manifest.yaml`."""
    path = Path(path)
    return path.is_dir() and (path / MANIFEST).is_file()


# ------------------------------------------------------------------------------ reading


def _warn(message: str) -> None:
    warnings.warn(message, RelBenchManifestWarning, stacklevel=3)



def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise SpecError(f"{path}: no such file (a RelBench folder holds manifest.yaml, "
                        "db/<table>.parquet and tasks/<task>/manifest.yaml)")
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    return raw


def _unknown_keys(path: Path, where: str, raw: dict, known: set[str]) -> None:
    for key in raw:
        if key not in known:
            _warn(f"{path}: {where}unknown key '{key}' ignored (as relbench does)"
                  f"{suggest(key, known)}")


def _timestamp(path: Path, key: str, value) -> datetime:
    import pandas as pd

    try:
        ts = pd.Timestamp(value)
    except (ValueError, TypeError):
        ts = None
    if ts is None or ts is pd.NaT:
        raise SpecError(f"{path}: {key}: cannot read {value!r} as a time")
    return ts.to_pydatetime()


def _timedelta(path: Path, value) -> timedelta:
    import pandas as pd

    try:
        delta = pd.Timedelta(value).to_pytimedelta()
    except (ValueError, TypeError):
        delta = None
    if delta is None or delta != delta or delta <= timedelta(0):
        raise SpecError(f"{path}: timedelta: cannot read {value!r} as a positive duration "
                        "(RelBench writes e.g. '30 days')")
    return delta


def _duration_text(delta: timedelta) -> str:
    """A relgraph duration ('30d', '12h', '90m') for a RelBench timedelta."""
    seconds = delta.total_seconds()
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds / 86_400!r}d"


def _columns(path: Path) -> list[str]:
    import pyarrow.parquet as pq

    try:
        return list(pq.read_schema(path).names)
    except Exception as exc:  # noqa: BLE001 -- any unreadable file, in one line
        raise SpecError(f"{path}: not a readable parquet file ({str(exc).splitlines()[0]})") from None


def _require(path: Path, raw: dict, keys, why: str = "") -> None:
    for key in keys:
        if raw.get(key) in (None, "", [], {}):
            raise SpecError(f"{path}: missing required key '{key}'{why}")


def _tables(root: Path, path: Path, raw: dict) -> tuple[dict, dict[str, list[str]]]:
    tables_raw = raw.get("tables")
    if not isinstance(tables_raw, dict) or not tables_raw:
        raise SpecError(f"{path}: tables: expected a mapping of at least one table")
    columns: dict[str, list[str]] = {}
    tables: dict[str, dict] = {}
    for name, t in tables_raw.items():
        name = str(name)
        t = t or {}
        if not isinstance(t, dict):
            raise SpecError(f"{path}: tables.{name}: expected a mapping with pkey, time_col, fkeys")
        _unknown_keys(path, f"tables.{name}: ", t, _TABLE_KEYS)
        parquet = root / "db" / f"{name}.parquet"
        if not parquet.is_file():
            raise SpecError(f"{path}: tables.{name}: no db/{name}.parquet in {root}")
        have = columns[name] = _columns(parquet)
        entry: dict[str, Any] = {}
        for key, out in (("pkey", "primary_key"), ("time_col", "time_column")):
            col = t.get(key)
            if col is None:
                continue
            if not isinstance(col, str):
                raise SpecError(f"{path}: tables.{name}.{key}: RelBench keys are single columns, "
                                f"got {col!r}")
            if col not in have:
                raise SpecError(f"{path}: tables.{name}.{key}: column '{col}' is not in "
                                f"db/{name}.parquet{suggest(col, have)}")
            entry[out] = col
        fkeys = t.get("fkeys") or {}
        if not isinstance(fkeys, dict):
            raise SpecError(f"{path}: tables.{name}.fkeys: expected a mapping column -> table")
        for col, ref in fkeys.items():
            if str(ref) not in tables_raw:
                raise SpecError(f"{path}: tables.{name}.fkeys.{col}: references table '{ref}', "
                                f"which is not in the manifest{suggest(ref, tables_raw)}")
            if col not in have:
                raise SpecError(f"{path}: tables.{name}.fkeys.{col}: column '{col}' is not in "
                                f"db/{name}.parquet{suggest(col, have)}")
            if not (tables_raw[ref] or {}).get("pkey"):
                raise SpecError(f"{path}: tables.{name}.fkeys.{col}: references table '{ref}', "
                                "which has no pkey")
        if fkeys:
            entry["foreign_keys"] = {str(c): str(r) for c, r in fkeys.items()}
        tables[name] = entry
    return tables, columns


def _task(root: Path, task_dir: Path, tables: dict, columns: dict[str, list[str]],
          dataset: str, val: datetime, test: datetime) -> tuple[dict | None, str | None]:
    """(relgraph task entry, None) for a forecast task, (None, reason) for one relgraph
    refuses."""
    path = task_dir / MANIFEST
    raw = _read_yaml(path)
    _unknown_keys(path, "", raw, _TASK_KEYS)
    name = task_dir.name
    if raw.get("name") not in (None, name):
        _warn(f"{path}: name '{raw['name']}' differs from the directory's; relbench and relgraph "
              f"call the task '{name}'")
    kind = str(raw.get("kind") or "forecast")
    if kind in REFUSED_KINDS:
        return None, f"{kind}: {REFUSED_KINDS[kind]}"
    if kind != "forecast":
        raise SpecError(f"{path}: kind: '{kind}' is not one of forecast, autocomplete, external")
    ttype = str(raw.get("task_type") or "")
    if ttype in REFUSED_TYPES:
        return None, f"{ttype}: {REFUSED_TYPES[ttype]}"
    if ttype not in TASK_TYPES:
        raise SpecError(f"{path}: task_type: '{ttype}' is not one of "
                        f"{', '.join(TASK_TYPES)}{suggest(ttype, TASK_TYPES)}")
    rtype = TASK_TYPES[ttype]
    link = rtype == "link_prediction"
    if link:
        _require(path, raw, ["src_entity_table", "src_entity_col", "dst_entity_table",
                             "dst_entity_col", "eval_k", "time_col", "timedelta", "sql"])
        entity_table, entity_col = str(raw["src_entity_table"]), str(raw["src_entity_col"])
    else:
        _require(path, raw, ["entity_table", "entity_col", "target_col", "time_col",
                             "timedelta", "sql"])
        entity_table, entity_col = str(raw["entity_table"]), str(raw["entity_col"])
    key = "src_entity_table" if link else "entity_table"
    for k, table in [(key, entity_table)] + ([("dst_entity_table", str(raw["dst_entity_table"]))]
                                             if link else []):
        if table not in tables:
            raise SpecError(f"{path}: {k}: no table '{table}' in the dataset manifest"
                            f"{suggest(table, tables)}")
        if "primary_key" not in tables[table]:
            raise SpecError(f"{path}: {k}: table '{table}' has no pkey")
    delta = _timedelta(path, raw["timedelta"])
    if val + delta > test:
        raise SpecError(f"{path}: timedelta: {raw['timedelta']} is longer than test_timestamp - "
                        f"val_timestamp ({test - val}); relbench refuses it too")
    n_eval = raw.get("num_eval_timestamps", 1)
    if isinstance(n_eval, bool) or not isinstance(n_eval, int) or n_eval < 1:
        raise SpecError(f"{path}: num_eval_timestamps: expected a whole number of at least 1, "
                        f"got {n_eval!r}")
    if link and n_eval != 1:
        raise SpecError(f"{path}: num_eval_timestamps: recommendation tasks take 1 "
                        f"(relbench 3.0.2 refuses {n_eval})")
    removed = []
    for item in raw.get("remove_columns") or []:
        if not (isinstance(item, (list, tuple)) and len(item) == 2):
            raise SpecError(f"{path}: remove_columns: expected [table, column], got {item!r}")
        table, col = str(item[0]), str(item[1])
        if table not in columns or col not in columns[table]:
            _warn(f"{path}: remove_columns: {table}.{col} is not in the dataset; ignored "
                  "(as relbench does)")
            continue
        removed.append([table, col])
    files = {split: str(task_dir / f"{split}.parquet") for split in SPLITS
             if (task_dir / f"{split}.parquet").is_file()}
    form = {"task_type": "recommendation" if link else ttype, "time_col": str(raw["time_col"]),
            "entity_col": entity_col}
    if link:
        form.update(dst_entity_col=str(raw["dst_entity_col"]), eval_k=int(raw["eval_k"]))
    else:
        form["target_col"] = str(raw["target_col"])
    form.update(label_files=files, dataset=dataset, manifest=str(path))
    entry = {
        "type": rtype, "entity_table": entity_table,
        **({"target_table": str(raw["dst_entity_table"])} if link else {}),
        "label_sql": str(raw["sql"]), "horizon": _duration_text(delta),
        "val_cutoff": val.isoformat(), "test_cutoff": test.isoformat(),
        "num_train_cutoffs": "all", "num_eval_windows": n_eval, "test_context": "frozen",
        "on_future_entity": "withhold", "label_database": "per_split",
        **({"remove_columns": removed} if removed else {}),
        "relbench": form,
    }
    return entry, None


def relbench_spec_dict(path: str | Path) -> tuple[dict, dict[str, str]]:
    """The relgraph dataset-spec document of a RelBench folder, and the tasks it leaves
    out ({task: reason})."""
    root = Path(path)
    mpath = root / MANIFEST
    raw = _read_yaml(mpath)
    _unknown_keys(mpath, "", raw, _DATASET_KEYS)
    _require(mpath, raw, ["name", "val_timestamp", "test_timestamp", "tables"])
    name = str(raw["name"])
    val = _timestamp(mpath, "val_timestamp", raw["val_timestamp"])
    test = _timestamp(mpath, "test_timestamp", raw["test_timestamp"])
    if val >= test:
        raise SpecError(f"{mpath}: val_timestamp ({val}) must come before test_timestamp ({test})")
    tables, columns = _tables(root, mpath, raw)
    tasks: dict[str, dict] = {}
    refused: dict[str, str] = {}
    tasks_dir = root / "tasks"
    for task_dir in sorted(tasks_dir.iterdir()) if tasks_dir.is_dir() else []:
        if not task_dir.is_dir():
            continue
        if not (task_dir / MANIFEST).is_file():
            _warn(f"{task_dir}: no {MANIFEST}; not a task (ignored)")
            continue
        entry, reason = _task(root, task_dir, tables, columns, name, val, test)
        if entry is None:
            refused[task_dir.name] = reason
        else:
            tasks[task_dir.name] = entry
    doc = {"name": name, "source": {"kind": "relbench", "path": str(root)},
           "tables": tables, "tasks": tasks}
    return doc, refused


def spec_from_relbench_folder(path: str | Path) -> DatasetSpec:
    """The relgraph DatasetSpec of a RelBench 3 folder (see the module's docstring)."""
    import dataclasses

    root = Path(path)
    doc, refused = relbench_spec_dict(root)
    spec = parse_spec(doc, root)
    return dataclasses.replace(spec, refused_tasks=refused)


class _Dumper(yaml.SafeDumper):
    """SQL as block scalars."""


_Dumper.add_representer(str, lambda d, s: d.represent_scalar(
    "tag:yaml.org,2002:str", s, style="|" if "\n" in s else None))


def relbench_spec_yaml(path: str | Path) -> str:
    """The relgraph YAML spec equivalent to a RelBench folder (what `relgraph
    import-relbench DIR` prints): add policies, ignored columns or tasks of your own and
    load it with `load_spec`. Tasks relgraph leaves out are listed as comments."""
    doc, refused = relbench_spec_dict(path)
    text = yaml.dump(doc, Dumper=_Dumper, sort_keys=False, width=4096)
    head = (f"# relgraph spec of the RelBench folder {path}\n"
            "# (tasks keep RelBench's rules: windows, all-history training, frozen test context)\n")
    for task, reason in refused.items():
        head += f"# task {task} left out: {reason}\n"
    return head + text


# ------------------------------------------------------------------------------ writing


def _relbench_sql(spec: DatasetSpec, task) -> tuple[str, dict]:
    """A relgraph task's label SQL in RelBench's form, and the task manifest's columns.

    relgraph's SQL reads `cutoffs(cutoff, window_end)` and returns the entity key, `cutoff`
    and `label` (link prediction: one row per target key); RelBench's reads
    `timestamps(timestamp)` and returns `timestamp`, the entity column and the target (a
    LIST of destination keys). The original runs unchanged inside."""
    from pipeline.data.sqlutil import q

    pk = spec.tables[task.entity_table].primary_key[0]
    inner = task.label_sql.strip().rstrip(";")
    head = ("WITH cutoffs AS (SELECT t.\"timestamp\" AS cutoff, "
            "t.\"timestamp\" + INTERVAL '{timedelta}' AS window_end FROM timestamps t)\n")
    if task.kind.ranks_targets:
        tkey = spec.tables[task.target_table].primary_key[0]
        dst = tkey if tkey != pk else f"dst_{tkey}"
        sql = (f"{head}SELECT s.cutoff AS \"timestamp\", s.{q(pk)} AS {q(pk)}, "
               f"LIST(DISTINCT s.{q(tkey)} ORDER BY s.{q(tkey)}) AS {q(dst)}\n"
               f"FROM (\n{inner}\n) s\nWHERE s.{q(tkey)} IS NOT NULL\nGROUP BY s.cutoff, s.{q(pk)}\n")
        cols = {"task_type": "recommendation", "src_entity_table": task.entity_table,
                "src_entity_col": pk, "dst_entity_table": task.target_table,
                "dst_entity_col": dst, "time_col": "timestamp", "eval_k": 10}
    else:
        sql = (f"{head}SELECT s.cutoff AS \"timestamp\", s.{q(pk)} AS {q(pk)}, s.label AS label\n"
               f"FROM (\n{inner}\n) s\n")
        cols = {"task_type": task.type, "entity_table": task.entity_table, "entity_col": pk,
                "target_col": "label", "time_col": "timestamp"}
    return sql, cols


def export_relbench(spec: DatasetSpec, con, out_dir: str | Path) -> dict:
    """Write a relgraph dataset (its warehouse, `con`) and its tasks as a RelBench 3 folder.

    Keys are normalised as RelBench requires: rows of timed tables sorted by time, primary
    keys 0..n-1 in row order (the warehouse's `__id`), foreign keys rewritten to them
    (NULL for an orphan). Each task's SQL is wrapped into RelBench's form (`timestamps`,
    `{timedelta}`, a LIST of destinations for link prediction); the spec's ignore_columns
    and the task's remove_columns become its `remove_columns`. RelBench has one pair of
    split timestamps per dataset: the first task's; a task with other cutoffs, a link
    prediction task with several windows, or one whose SQL reads a column RelBench would
    remove before running it, is left out with the reason. Composite keys, which RelBench
    cannot express, refuse the whole export.

    relbench also refuses a dataset whose first validation window ends after the newest row
    before test_timestamp; relgraph's usual `val_cutoff = test_cutoff - horizon` does unless
    a row sits exactly at the test cutoff, so val_timestamp is then moved back to that row's
    time minus the longest horizon (said in `notes`).

    Returns {"folder", "tables": {table: rows}, "tasks": [...], "refused": {task: reason},
    "val_timestamp", "test_timestamp", "notes": [...]}.
    """
    import re

    from pipeline.data.sqlutil import q
    from pipeline.data.tasks import task_cutoffs
    from pipeline.data.warehouse import FK_PREFIX, ID

    out = Path(out_dir)
    where = spec.where()
    for t in spec.tables.values():
        if len(t.primary_key) > 1:
            raise SpecError(f"{where}: table {t.name} has a composite primary key "
                            f"({', '.join(t.primary_key)}); RelBench keys are single columns, so "
                            "the dataset cannot be exported")
        for fk in t.foreign_keys:
            if len(fk.columns) > 1:
                raise SpecError(f"{where}: {t.name}.{fk.name} is a composite foreign key; "
                                "RelBench keys are single columns, so the dataset cannot be exported")
        if "/" in t.name or t.name.startswith("."):
            raise SpecError(f"{where}: table name '{t.name}' cannot be a file name db/<table>.parquet")

    tasks, refused = [], {}
    stamps = None
    for task in spec.tasks.values():
        cuts = task_cutoffs(con, spec, task)
        if stamps is None:
            stamps = (cuts.val, cuts.test)
        if (cuts.val, cuts.test) != stamps:
            refused[task.name] = (f"its cutoffs ({cuts.val}, {cuts.test}) differ from the "
                                  f"dataset's ({stamps[0]}, {stamps[1]}); RelBench has one "
                                  "pair of split timestamps per dataset")
            continue
        if task.kind.ranks_targets and task.num_eval_windows != 1:
            refused[task.name] = "RelBench allows recommendation tasks only one evaluation window"
            continue
        removed = [(t.name, c) for t in spec.tables.values() for c in t.ignore_columns]
        removed += [rc for rc in task.remove_columns if rc not in removed]
        read = [f"{t}.{c}" for t, c in removed
                if re.search(rf"(?<![\w\"]){re.escape(c)}(?![\w\"])|\"{re.escape(c)}\"", task.label_sql)]
        if read:
            refused[task.name] = (f"its SQL reads {', '.join(read)}, which RelBench removes "
                                  "before running the SQL (ignore_columns / remove_columns)")
            continue
        tasks.append((task, removed))
    from pipeline.data.tasks import time_bounds

    latest = time_bounds(con, spec)[1]
    if stamps is None:  # no task: nothing to split by, RelBench-like defaults
        stamps = (latest - timedelta(days=60), latest - timedelta(days=30))
    notes = []
    if tasks:
        # relbench refuses a dataset whose first validation window ends after the newest
        # row before test_timestamp (task_base.py:205-210), which relgraph's usual
        # val_cutoff = test_cutoff - horizon hits unless a row sits exactly at the test
        # cutoff: move val_timestamp back to that row's time minus the longest horizon
        longest = max(task.horizon for task, _ in tasks)
        cut_latest = time_bounds(con, spec, upto=stamps[1])[1]
        if stamps[0] + longest > cut_latest:
            moved = cut_latest - longest
            notes.append(f"val_timestamp moved from {stamps[0]} to {moved}: RelBench needs the "
                         f"first validation window to end at or before the newest row before "
                         f"test_timestamp ({cut_latest})")
            stamps = (moved, stamps[1])
        if stamps[1] + longest > latest:
            raise SpecError(f"{where}: the first test window ({stamps[1]}, {stamps[1] + longest}] "
                            f"ends after the newest row ({latest}); RelBench refuses such a "
                            "dataset, so it cannot be exported (move test_cutoff earlier)")

    (out / "db").mkdir(parents=True, exist_ok=True)
    db = con.execute("SELECT current_database()").fetchall()[0][0]
    counts = {}
    manifest_tables = {}
    for t in spec.tables.values():
        rel = f"{q(db)}.main.{q(t.name)}"
        fk_of = {fk.columns[0]: fk for fk in t.foreign_keys}
        internal = {ID} | {FK_PREFIX + fk.name for fk in t.foreign_keys}
        cols = [r[0] for r in con.execute(f"DESCRIBE {rel}").fetchall() if r[0] not in internal]
        select = []
        for c in cols:
            if t.primary_key and c == t.primary_key[0]:
                select.append(f"{q(ID)} AS {q(c)}")
            elif c in fk_of:
                select.append(f"{q(FK_PREFIX + fk_of[c].name)} AS {q(c)}")
            else:
                select.append(q(c))
        target = out / "db" / f"{t.name}.parquet"
        con.execute(f"COPY (SELECT {', '.join(select)} FROM {rel} ORDER BY {q(ID)}) "
                    f"TO '{str(target).replace(chr(39), chr(39) * 2)}' (FORMAT parquet)")
        counts[t.name] = con.execute(f"SELECT count(*) FROM {rel}").fetchall()[0][0]
        manifest_tables[t.name] = {
            "pkey": t.primary_key[0] if t.primary_key else None, "time_col": t.time_column,
            "fkeys": {fk.columns[0]: fk.references for fk in t.foreign_keys}}
    manifest = {"name": spec.name, "manifest_version": 1,
                "description": f"{spec.name}, exported by relgraph from {where}",
                "val_timestamp": str(stamps[0]), "test_timestamp": str(stamps[1]),
                "tables": manifest_tables}
    (out / MANIFEST).write_text(yaml.dump(manifest, Dumper=_Dumper, sort_keys=False, width=4096))

    written = []
    for task, removed in tasks:
        sql, cols = _relbench_sql(spec, task)
        doc = {"name": task.name, "kind": "forecast", **cols,
               "description": f"relgraph task {task.name} ({task.type})",
               "timedelta": pandas_timedelta(task.horizon),
               "num_eval_timestamps": task.num_eval_windows,
               **({"remove_columns": [list(rc) for rc in removed]} if removed else {}),
               "manifest_version": 1, "sql": sql}
        task_dir = out / "tasks" / task.name
        task_dir.mkdir(parents=True, exist_ok=True)
        (task_dir / MANIFEST).write_text(yaml.dump(doc, Dumper=_Dumper, sort_keys=False, width=4096))
        written.append(task.name)
    return {"folder": str(out), "tables": counts, "tasks": written, "refused": refused,
            "val_timestamp": stamps[0], "test_timestamp": stamps[1], "notes": notes}
