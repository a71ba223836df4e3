"""Dataset specs: one YAML file describes a relational database and its tasks.

The shape is fixed by the design (tables with primary keys, time columns, foreign keys in
short or long form, policies, tasks). Loading validates everything that can be checked
without data; `DatasetSpec.check_columns` validates the rest once the source's columns are
known. Every error names the file, the table and the column, and suggests the closest
valid name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from pipeline.data.query import compile_query
from pipeline.data.schema import ForeignKey, SpecError, TableSpec, read_yaml, suggest
from pipeline.task_kinds import LOWER_IS_BETTER, TASK_KINDS, TaskKind

SOURCE_KINDS = ("synthetic", "parquet", "csv", "sqlite", "duckdb", "postgres", "mysql", "relbench")
ORPHAN_POLICIES = ("null", "drop", "fail")
DUPLICATE_POLICIES = ("fail", "keep_first", "keep_last")
SEMANTIC_TYPES = ("numeric", "categorical", "boolean", "timestamp", "text", "id")

_DATASET_KEYS = {"name", "source", "on_orphan", "on_duplicate_key", "tables", "tasks"}
_SOURCE_KEYS = {"kind", "path", "uri", "password_env", "schema", "scale", "seed", "options"}
_TABLE_KEYS = {
    "primary_key", "time_column", "foreign_keys", "ignore_columns", "column_types",
    "on_orphan", "on_duplicate_key", "source_table",
}
_TASK_KEYS = {
    "type", "entity_table", "target_table", "label_sql", "entity_sql", "horizon",
    "val_cutoff", "test_cutoff", "metric", "num_train_cutoffs", "num_classes",
    "num_eval_windows", "test_context", "on_future_entity", "label_database",
    "remove_columns", "relbench", "query",
}
# What a predictive query says itself (pipeline/data/query.py); a task with `query` gives none.
_QUERY_GIVES = ("type", "entity_table", "target_table", "label_sql", "entity_sql", "horizon")
_RELBENCH_KEYS = {
    "task_type", "time_col", "entity_col", "target_col", "dst_entity_col", "eval_k",
    "label_files", "dataset", "manifest",
}
# Dataset names become directory names and MLflow experiment parts: RelBench's `rel-f1`
# is fine, a slash or a leading dot is not.
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_SAFE = re.compile(r"[^A-Za-z0-9_]", flags=re.ASCII)
TEST_CONTEXTS = ("frozen", "rolling")
FUTURE_ENTITY_POLICIES = ("fail", "drop", "withhold")
LABEL_DATABASES = ("full", "per_split")
SPLIT_NAMES = ("train", "val", "test")


def safe_name(name: str, others=()) -> str:
    """`name` with every character outside [A-Za-z0-9_] replaced by `_` (`rel-f1` ->
    `rel_f1`), for places such as Dagster asset keys that accept nothing else.

    The mapping is one-to-one only within a set of names: pass the dataset's other names as
    `others` and a different name with the same safe form raises SpecError naming both.
    `check_safe_names` does that for a whole spec (parse_spec calls it).
    """
    safe = _SAFE.sub("_", str(name))
    for other in others:
        if str(other) != str(name) and _SAFE.sub("_", str(other)) == safe:
            raise SpecError(f"names '{name}' and '{other}' both become '{safe}' where only "
                            "letters, digits and _ are allowed (Dagster asset keys); rename one")
    return safe


def check_safe_names(names, where: str = "spec") -> dict[str, str]:
    """{name: safe_name(name)} for the names of one dataset (tables and tasks); SpecError
    when two different names share a safe form."""
    by_safe: dict[str, str] = {}
    out = {}
    for name in names:
        safe = _SAFE.sub("_", str(name))
        first = by_safe.setdefault(safe, str(name))
        if first != str(name):
            raise SpecError(f"{where}: names '{first}' and '{name}' both become '{safe}' where "
                            "only letters, digits and _ are allowed (Dagster asset keys); "
                            "rename one")
        out[str(name)] = safe
    return out


def _check_keys(where: str, given: dict, allowed: set[str]) -> None:
    for key in given:
        if key not in allowed:
            raise SpecError(f"{where}: unknown key '{key}'{suggest(key, allowed)}")


@dataclass(frozen=True)
class SourceSpec:
    kind: str
    path: Path | None = None
    uri: str | None = None
    password_env: str | None = None
    schema: str | None = None
    scale: int | None = None
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RelBenchTask:
    """A task whose label SQL and label files are in RelBench 3's form.

    The SQL reads `timestamps(timestamp)` (the split's cutoffs) instead of `cutoffs`, has
    `{timedelta}` replaced by the horizon as pandas writes it ('30 days 00:00:00'), and
    returns `time_col`, `entity_col` and `target_col` (recommendation: `time_col`,
    `entity_col` = the source entity column, and `dst_entity_col`, a LIST of destination
    keys). `label_files` maps a split to a parquet file of hosted labels in the same
    columns; a split with a file takes its labels from it, exactly as relbench does.
    `task_type` is RelBench's spelling (`recommendation` for relgraph's link_prediction),
    `dataset` the manifest's name and `manifest` the task manifest's path (for messages
    and prediction files).
    """

    task_type: str
    time_col: str
    entity_col: str
    target_col: str | None = None
    dst_entity_col: str | None = None
    eval_k: int | None = None
    label_files: dict[str, str] = field(default_factory=dict)
    dataset: str | None = None
    manifest: str | None = None

    def sql(self, sql: str, horizon: timedelta) -> str:
        """The task SQL as relbench runs it: `{timedelta}` replaced textually."""
        return sql.replace("{timedelta}", pandas_timedelta(horizon))


def pandas_timedelta(delta: timedelta) -> str:
    """`str(pd.Timedelta(delta))` without pandas: '30 days 00:00:00', '0 days 12:00:00',
    '1 days 00:00:00.500000'."""
    micros = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    sign = "-" if micros < 0 else ""
    days, rest = divmod(abs(micros), 86_400_000_000)
    if sign:  # pandas writes -1 days +23:00:00 for minus one hour
        days, rest = -(days + (1 if rest else 0)), (86_400_000_000 - rest) % 86_400_000_000
    secs, frac = divmod(rest, 1_000_000)
    h, m, sec = secs // 3600, secs % 3600 // 60, secs % 60
    clock = f"{h:02d}:{m:02d}:{sec:02d}" + (f".{frac:06d}" if frac else "")
    return f"{days} days {'+' if sign else ''}{clock}"


@dataclass(frozen=True)
class TaskSpec:
    """One predictive task. The split options (defaults keep relgraph's own rules):

    num_train_cutoffs  K, or "all": val_cutoff - k * horizon, k = 1, 2, ... while the
                       cutoff is at or after the earliest row (RelBench's rule)
    num_eval_windows   N: validation windows start at val_cutoff and step by the horizon,
                       at most N, the last starting no later than test_cutoff - horizon;
                       test windows start at test_cutoff, at most N, the last ending at or
                       before the newest row (one window, as before, when N is 1)
    test_context       frozen | rolling: which rows a test example's features may see
                       (stored and validated here; the graph side applies it)
    on_future_entity   fail | drop | withhold: an example whose entity row is created
                       after the example's cutoff stops the task, is dropped, or is kept
                       (and its entity's own columns hidden from it by the graph side)
    label_database     full | per_split: which database the label SQL sees. per_split is
                       RelBench's rule: train and validation labels on the tables cut at
                       test_cutoff (foreign keys into removed rows NULL), test labels on
                       the full tables, and in every split examples whose entity is not in
                       the entity table as cut at test_cutoff dropped (link prediction:
                       targets not in the cut target table pruned)
    remove_columns     (table, column) pairs hidden from this task's features
    relbench           the SQL and label files are in RelBench's form (RelBenchTask)
    query              the predictive query (`PREDICT ... FOR EACH ...`) its type, entity
                       table, horizon and SQL were compiled from (pipeline/data/query.py)
    """

    name: str
    type: str
    entity_table: str
    label_sql: str
    horizon: timedelta
    val_cutoff: str
    test_cutoff: str
    metric: str
    entity_sql: str | None = None
    target_table: str | None = None
    num_train_cutoffs: int | str = 6
    num_classes: int | None = None
    num_eval_windows: int = 1
    test_context: str = "frozen"
    on_future_entity: str = "fail"
    label_database: str = "full"
    remove_columns: tuple[tuple[str, str], ...] = ()
    relbench: RelBenchTask | None = None
    query: str | None = None       # the predictive query the SQL was compiled from

    def __post_init__(self):
        # Rebuilt from plain data (asdict / JSON, as the training workers do): nested
        # lists and dicts back to the types above.
        if isinstance(self.relbench, dict):
            object.__setattr__(self, "relbench", RelBenchTask(**self.relbench))
        object.__setattr__(self, "remove_columns",
                           tuple((str(t), str(c)) for t, c in self.remove_columns))

    @property
    def kind(self) -> TaskKind:
        """What this task's type means to every stage (pipeline/task_kinds.py)."""
        return TASK_KINDS[self.type]

    @property
    def lower_is_better(self) -> bool:
        return self.metric in LOWER_IS_BETTER


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    source: SourceSpec
    tables: dict[str, TableSpec]
    tasks: dict[str, TaskSpec]
    path: Path | None = None
    # Tasks the source defines but relgraph does not train, with the reason in one line
    # (a RelBench folder's autocomplete and external tasks).
    refused_tasks: dict[str, str] = field(default_factory=dict)

    def where(self) -> str:
        return str(self.path) if self.path else self.name

    def table(self, name: str) -> TableSpec:
        if name not in self.tables:
            raise SpecError(f"{self.where()}: no table '{name}'{suggest(name, self.tables)}")
        return self.tables[name]

    def task(self, name: str) -> TaskSpec:
        if name in self.refused_tasks:
            raise SpecError(f"{self.where()}: task '{name}' is not trained by relgraph: "
                            f"{self.refused_tasks[name]}")
        if name not in self.tasks:
            raise SpecError(f"{self.where()}: no task '{name}'{suggest(name, self.tasks)}")
        return self.tasks[name]

    def extract_order(self) -> list[str]:
        """Tables ordered so that every table comes after the tables it references."""
        order: list[str] = []
        state: dict[str, int] = {}

        def visit(name: str, path: tuple[str, ...]) -> None:
            if state.get(name) == 2:
                return
            if state.get(name) == 1:
                cycle = " -> ".join(path + (name,))
                raise SpecError(f"{self.where()}: foreign keys form a cycle ({cycle}); "
                                "break it by dropping one foreign key from the spec")
            state[name] = 1
            for fk in self.tables[name].foreign_keys:
                if fk.references != name:
                    visit(fk.references, path + (name,))
            state[name] = 2
            order.append(name)

        for name in self.tables:
            visit(name, ())
        return order

    def check_columns(self, columns: dict[str, list[str]]) -> None:
        """Check every column the spec names against the source's actual columns.

        `columns` maps each table (spec name) to its column names in the source.
        """
        problems = []
        for t in self.tables.values():
            if t.name not in columns:
                problems.append(f"table '{t.source_name}' is not in the source"
                                f"{suggest(t.source_name, columns)}")
                continue
            have = columns[t.name]
            named = list(t.primary_key) + list(t.ignore_columns) + list(t.column_types)
            named += [c for fk in t.foreign_keys for c in fk.columns]
            if t.time_column:
                named.append(t.time_column)
            for col in dict.fromkeys(named):
                if col not in have:
                    problems.append(f"{t.name}.{col}: no such column{suggest(col, have)}")
        for task in self.tasks.values():
            for table, col in task.remove_columns:
                have = columns.get(table)
                if have is not None and col not in have:
                    problems.append(f"task {task.name}.remove_columns: {table}.{col}: no such "
                                    f"column{suggest(col, have)}")
        if problems:
            raise SpecError(f"{self.where()}: " + "\n  ".join(problems))


def parse_duration(text: str | int, where: str = "") -> timedelta:
    """'30d', '12h', '2w', '90m' (minutes) or a plain number of days."""
    if isinstance(text, (int, float)):
        return timedelta(days=float(text))
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([dhwm]?)\s*", str(text))
    if not m:
        raise SpecError(f"{where}: cannot read duration '{text}' (use e.g. 30d, 12h, 2w)")
    value, unit = float(m.group(1)), m.group(2) or "d"
    return {"d": timedelta(days=value), "h": timedelta(hours=value),
            "w": timedelta(weeks=value), "m": timedelta(minutes=value)}[unit]


def resolve_time(expr: str, latest: datetime, where: str = "") -> datetime:
    """'latest - 60d', 'latest', or an ISO date/time such as '2025-10-01'."""
    text = str(expr).strip()
    m = re.fullmatch(r"latest\s*(?:([-+])\s*(\S+))?", text)
    if m:
        if not m.group(1):
            return latest
        delta = parse_duration(m.group(2), where)
        return latest - delta if m.group(1) == "-" else latest + delta
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise SpecError(f"{where}: cannot read time '{expr}' "
                        "(use 'latest - 60d' or an ISO date like 2025-10-01)") from None


def _as_columns(value, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise SpecError(f"{where}: expected a column name or a list of column names, got {value!r}")


def _parse_foreign_keys(raw, where: str) -> tuple[ForeignKey, ...]:
    if raw is None:
        return ()
    if isinstance(raw, dict):  # short form: column -> referenced table
        return tuple(ForeignKey((col,), str(ref)) for col, ref in raw.items())
    if isinstance(raw, list):
        fks = []
        for i, item in enumerate(raw):
            w = f"{where}.foreign_keys[{i}]"
            if not isinstance(item, dict) or "references" not in item or "columns" not in item:
                raise SpecError(f"{w}: expected {{columns: [...], references: table}}")
            _check_keys(w, item, {"columns", "references"})
            fks.append(ForeignKey(_as_columns(item["columns"], w), str(item["references"])))
        return tuple(fks)
    raise SpecError(f"{where}.foreign_keys: expected a mapping column -> table or a list")


def _policy(value, allowed, where: str, default: str) -> str:
    value = default if value is None else str(value)
    if value not in allowed:
        raise SpecError(f"{where}: '{value}' is not one of {', '.join(allowed)}"
                        f"{suggest(value, allowed)}")
    return value


def _positive(value, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SpecError(f"{where}: expected a whole number of at least 1, got {value!r}")
    return value


def _train_cutoffs(value, where: str) -> int | str:
    if value == "all":
        return "all"
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SpecError(f"{where}.num_train_cutoffs: expected a whole number of at least 1 "
                        f"or 'all', got {value!r}")
    return value


def _remove_columns(raw, tables: dict[str, TableSpec], where: str) -> tuple[tuple[str, str], ...]:
    """[[table, column], ...] or ["table.column", ...]; tables are checked here, columns
    by `DatasetSpec.check_columns` once the source is known."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise SpecError(f"{where}.remove_columns: expected a list of [table, column] pairs")
    out = []
    for item in raw:
        if isinstance(item, str) and "." in item:
            item = item.split(".", 1)
        if not (isinstance(item, (list, tuple)) and len(item) == 2):
            raise SpecError(f"{where}.remove_columns: expected [table, column], got {item!r}")
        table, col = str(item[0]), str(item[1])
        if table not in tables:
            raise SpecError(f"{where}.remove_columns: no table '{table}'{suggest(table, tables)}")
        out.append((table, col))
    return tuple(out)


def _relbench_form(raw, ttype: str, where: str) -> RelBenchTask | None:
    if raw is None:
        return None
    w = f"{where}.relbench"
    if not isinstance(raw, dict):
        raise SpecError(f"{w}: expected a mapping with time_col, entity_col and target_col "
                        "(or dst_entity_col)")
    _check_keys(w, raw, _RELBENCH_KEYS)
    ranks = TASK_KINDS[ttype].ranks_targets
    need = ["time_col", "entity_col", "dst_entity_col" if ranks else "target_col"]
    for key in need:
        if not raw.get(key):
            raise SpecError(f"{w}: missing required key '{key}'")
    files = raw.get("label_files") or {}
    if not isinstance(files, dict) or any(s not in SPLIT_NAMES for s in files):
        raise SpecError(f"{w}.label_files: expected a mapping of train, val and/or test to "
                        "parquet files")
    default_type = "recommendation" if ranks else ttype
    return RelBenchTask(
        task_type=str(raw.get("task_type") or default_type), time_col=str(raw["time_col"]),
        entity_col=str(raw["entity_col"]),
        target_col=str(raw["target_col"]) if raw.get("target_col") else None,
        dst_entity_col=str(raw["dst_entity_col"]) if raw.get("dst_entity_col") else None,
        eval_k=int(raw["eval_k"]) if raw.get("eval_k") else None,
        label_files={str(k): str(v) for k, v in files.items()},
        dataset=str(raw["dataset"]) if raw.get("dataset") else None,
        manifest=str(raw["manifest"]) if raw.get("manifest") else None)


def _compile_query(where: str, kraw: dict, tables: dict[str, TableSpec]) -> dict:
    """The task's keys with its predictive query compiled into type, entity table, label and
    entity SQL and horizon (the query's text kept as `query`)."""
    given = [k for k in _QUERY_GIVES if k in kraw]
    if given:
        raise SpecError(f"{where}: a task with a query takes {', '.join(given)} from the query; "
                        "remove them (or drop the query and write label_sql)")
    try:
        compiled = compile_query(str(kraw["query"]), tables)
    except SpecError as exc:
        raise SpecError(f"{where}.query: {exc}") from None
    return {**kraw, **compiled.spec_fields(), "query": str(kraw["query"])}


def task_from_query(spec: DatasetSpec, text: str, name: str = "query",
                    columns: dict[str, dict[str, str]] | None = None,
                    val_cutoff: str | None = None, test_cutoff: str | None = None) -> TaskSpec:
    """A task of `spec` from a predictive query alone (what `relgraph query` previews):
    `columns` (the warehouse's, `query.warehouse_columns`) checks names and types; the
    test window is the last horizon before the newest row and validation the one before,
    unless the cutoffs are given."""
    where = f"{spec.where()}: query"
    try:
        compiled = compile_query(text, spec, columns)
    except SpecError as exc:
        raise SpecError(f"{where}: {exc}") from None
    hours = int(compiled.horizon.total_seconds() // 3600)
    test_cutoff = test_cutoff or f"latest - {hours}h"
    val_cutoff = val_cutoff or f"latest - {2 * hours}h"
    for label, expr in (("val_cutoff", val_cutoff), ("test_cutoff", test_cutoff)):
        resolve_time(expr, datetime(2000, 1, 1), f"{where}.{label}")
    kind = TASK_KINDS[compiled.type]
    return TaskSpec(name=name, type=compiled.type, entity_table=compiled.entity_table,
                    label_sql=compiled.label_sql, entity_sql=compiled.entity_sql,
                    target_table=compiled.target_table, horizon=compiled.horizon,
                    val_cutoff=val_cutoff, test_cutoff=test_cutoff, metric=kind.default_metric,
                    query=text)


def parse_spec(raw: Any, path: Path | None = None) -> DatasetSpec:
    """Build and validate a DatasetSpec from the parsed YAML document."""
    where = str(path) if path else "spec"
    if not isinstance(raw, dict):
        raise SpecError(f"{where}: the top level must be a mapping with name, source, tables")
    _check_keys(where, raw, _DATASET_KEYS)
    for key in ("name", "source", "tables"):
        if key not in raw:
            raise SpecError(f"{where}: missing required key '{key}'")
    name = str(raw["name"])
    if not _NAME.match(name):
        raise SpecError(f"{where}: dataset name '{name}' must be letters, digits, _, - and . "
                        "(not starting with - or .)")

    src = raw["source"]
    if not isinstance(src, dict) or "kind" not in src:
        raise SpecError(f"{where}.source: expected a mapping with 'kind'")
    _check_keys(f"{where}.source", src, _SOURCE_KEYS)
    kind = _policy(src["kind"], SOURCE_KINDS, f"{where}.source.kind", "")
    if kind in ("postgres", "mysql") and not src.get("uri"):
        raise SpecError(f"{where}.source: kind {kind} needs 'uri' "
                        "(the password comes from the variable named by password_env)")
    if kind not in ("synthetic", "postgres", "mysql") and not src.get("path"):
        raise SpecError(f"{where}.source: kind {kind} needs 'path'")
    if src.get("uri") and re.search(r"://[^/@:]+:[^/@]+@", str(src["uri"])):
        raise SpecError(f"{where}.source.uri: do not write the password in the spec; "
                        "set password_env to the name of an environment variable instead")
    source = SourceSpec(
        kind=kind,
        path=Path(src["path"]) if src.get("path") else None,
        uri=src.get("uri"),
        password_env=src.get("password_env"),
        schema=src.get("schema"),
        scale=int(src["scale"]) if src.get("scale") is not None else None,
        seed=int(src.get("seed", 0)),
        options=dict(src.get("options") or {}),
    )

    on_orphan = _policy(raw.get("on_orphan"), ORPHAN_POLICIES, f"{where}.on_orphan", "null")
    on_dup = _policy(raw.get("on_duplicate_key"), DUPLICATE_POLICIES,
                     f"{where}.on_duplicate_key", "fail")

    if not isinstance(raw["tables"], dict) or not raw["tables"]:
        raise SpecError(f"{where}.tables: expected a mapping of at least one table")
    tables: dict[str, TableSpec] = {}
    for tname, traw in raw["tables"].items():
        w = f"{where}: table {tname}"
        traw = traw or {}
        if not isinstance(traw, dict):
            raise SpecError(f"{w}: expected a mapping")
        _check_keys(w, traw, _TABLE_KEYS)
        column_types = dict(traw.get("column_types") or {})
        for col, sem in column_types.items():
            if sem not in SEMANTIC_TYPES:
                raise SpecError(f"{tname}.{col}: column type '{sem}' is not one of "
                                f"{', '.join(SEMANTIC_TYPES)}{suggest(sem, SEMANTIC_TYPES)}")
        time_column = traw.get("time_column")
        tables[str(tname)] = TableSpec(
            name=str(tname),
            primary_key=_as_columns(traw.get("primary_key"), f"{w}.primary_key"),
            time_column=str(time_column) if time_column else None,
            foreign_keys=_parse_foreign_keys(traw.get("foreign_keys"), w),
            ignore_columns=_as_columns(traw.get("ignore_columns"), f"{w}.ignore_columns"),
            column_types=column_types,
            on_orphan=_policy(traw.get("on_orphan"), ORPHAN_POLICIES, f"{w}.on_orphan", on_orphan),
            on_duplicate_key=_policy(traw.get("on_duplicate_key"), DUPLICATE_POLICIES,
                                     f"{w}.on_duplicate_key", on_dup),
            source_table=traw.get("source_table"),
        )

    for t in tables.values():
        names = set()
        for fk in t.foreign_keys:
            w = f"{where}: {t.name}.{fk.name}"
            if fk.references not in tables:
                raise SpecError(f"{w}: references table '{fk.references}', which is not in the "
                                f"spec{suggest(fk.references, tables)}")
            ref = tables[fk.references]
            if not ref.primary_key:
                raise SpecError(f"{w}: references table '{ref.name}', which has no primary_key; "
                                "give it one or drop this foreign key")
            if len(fk.columns) != len(ref.primary_key):
                raise SpecError(f"{w}: {len(fk.columns)} column(s) reference {ref.name}'s "
                                f"{len(ref.primary_key)}-column primary key "
                                f"({', '.join(ref.primary_key)})")
            if fk.name in names:
                raise SpecError(f"{w}: two foreign keys with the same columns")
            names.add(fk.name)

    tasks: dict[str, TaskSpec] = {}
    for task_name, kraw in (raw.get("tasks") or {}).items():
        w = f"{where}: task {task_name}"
        if not isinstance(kraw, dict):
            raise SpecError(f"{w}: expected a mapping")
        _check_keys(w, kraw, _TASK_KEYS)
        if "query" in kraw:
            kraw = _compile_query(w, kraw, tables)
        for key in ("type", "entity_table", "label_sql", "horizon", "val_cutoff", "test_cutoff"):
            if key not in kraw:
                raise SpecError(f"{w}: missing required key '{key}'")
        ttype = _policy(kraw["type"], TASK_KINDS, f"{w}.type", "")
        kind = TASK_KINDS[ttype]
        entity = str(kraw["entity_table"])
        if entity not in tables:
            raise SpecError(f"{w}.entity_table: no table '{entity}'{suggest(entity, tables)}")
        if not tables[entity].primary_key:
            raise SpecError(f"{w}.entity_table: table '{entity}' has no primary_key")
        target = kraw.get("target_table")
        if kind.ranks_targets:
            if not target:
                raise SpecError(f"{w}: {ttype} needs target_table")
            if target not in tables:
                raise SpecError(f"{w}.target_table: no table '{target}'{suggest(target, tables)}")
            if len(tables[target].primary_key) != 1:
                raise SpecError(f"{w}.target_table: '{target}' needs a single-column primary key")
        metric = str(kraw.get("metric") or kind.default_metric)
        if metric not in kind.metrics:
            raise SpecError(f"{w}.metric: '{metric}' does not fit {ttype} "
                            f"(use one of {', '.join(kind.metrics)}){suggest(metric, kind.metrics)}")
        horizon = parse_duration(kraw["horizon"], f"{w}.horizon")
        if horizon <= timedelta(0):
            raise SpecError(f"{w}.horizon: must be positive")
        # Validate the cutoff expressions now (with a dummy 'latest') so typos fail at load.
        probe = datetime(2000, 1, 1)
        val = resolve_time(kraw["val_cutoff"], probe, f"{w}.val_cutoff")
        test = resolve_time(kraw["test_cutoff"], probe, f"{w}.test_cutoff")
        relative = "latest" in str(kraw["val_cutoff"]) and "latest" in str(kraw["test_cutoff"])
        if relative and val + horizon > test:
            raise SpecError(f"{w}: val_cutoff + horizon must not pass test_cutoff "
                            "(the validation label window would overlap the test one)")
        tasks[str(task_name)] = TaskSpec(
            name=str(task_name), type=ttype, entity_table=entity, label_sql=str(kraw["label_sql"]),
            horizon=horizon, val_cutoff=str(kraw["val_cutoff"]),
            test_cutoff=str(kraw["test_cutoff"]), metric=metric,
            entity_sql=kraw.get("entity_sql"), target_table=target,
            num_train_cutoffs=_train_cutoffs(kraw.get("num_train_cutoffs", 6), w),
            num_classes=int(kraw["num_classes"]) if kraw.get("num_classes") else None,
            num_eval_windows=_positive(kraw.get("num_eval_windows", 1), f"{w}.num_eval_windows"),
            test_context=_policy(kraw.get("test_context"), TEST_CONTEXTS,
                                 f"{w}.test_context", "frozen"),
            on_future_entity=_policy(kraw.get("on_future_entity"), FUTURE_ENTITY_POLICIES,
                                     f"{w}.on_future_entity", "fail"),
            label_database=_policy(kraw.get("label_database"), LABEL_DATABASES,
                                   f"{w}.label_database", "full"),
            remove_columns=_remove_columns(kraw.get("remove_columns"), tables, w),
            relbench=_relbench_form(kraw.get("relbench"), ttype, w),
            query=kraw.get("query"),
        )

    check_safe_names([*tables, *tasks], where)
    spec = DatasetSpec(name=name, source=source, tables=tables, tasks=tasks, path=path)
    spec.extract_order()  # fail early on foreign-key cycles
    return spec


def load_spec(path: str | Path) -> DatasetSpec:
    """Read and validate a dataset spec file (a RelBench folder: `pipeline.data.datasets`)."""
    path = Path(path)
    if path.is_dir():
        raise SpecError(f"{path}: a directory, not a dataset spec file; load a RelBench 3 "
                        "folder with pipeline.data.datasets.load_dataset")
    if not path.exists():
        raise SpecError(f"{path}: no such dataset spec file")
    raw = read_yaml(path)
    return parse_spec(raw, path)
