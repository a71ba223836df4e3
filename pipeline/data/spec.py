"""Dataset specs: one YAML file describes a relational database and its tasks.

The shape is fixed by the design (tables with primary keys, time columns, foreign keys in
short or long form, policies, tasks). Loading validates everything that can be checked
without data; `DatasetSpec.check_columns` validates the rest once the source's columns are
known. Every error names the file, the table and the column, and suggests the closest
valid name.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

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
}
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class SpecError(ValueError):
    """A dataset spec that cannot be used; the message says where and why."""


def _suggest(name: str, choices) -> str:
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


def _check_keys(where: str, given: dict, allowed: set[str]) -> None:
    for key in given:
        if key not in allowed:
            raise SpecError(f"{where}: unknown key '{key}'{_suggest(key, allowed)}")


@dataclass(frozen=True)
class ForeignKey:
    """`columns` of the owning table reference the primary key of table `references`.

    `name` is the edge type of the graph (`rev_<name>` for the reverse direction): the
    column for a single-column key, the columns joined by `__` for a composite one.
    """

    columns: tuple[str, ...]
    references: str

    @property
    def name(self) -> str:
        return "__".join(self.columns)


@dataclass(frozen=True)
class TableSpec:
    name: str
    primary_key: tuple[str, ...] = ()
    time_column: str | None = None
    foreign_keys: tuple[ForeignKey, ...] = ()
    ignore_columns: tuple[str, ...] = ()
    column_types: dict[str, str] = field(default_factory=dict)
    on_orphan: str = "null"
    on_duplicate_key: str = "fail"
    source_table: str | None = None

    @property
    def source_name(self) -> str:
        """The table's name in the source (defaults to its name in the spec)."""
        return self.source_table or self.name

    @property
    def key_columns(self) -> set[str]:
        """Columns that identify rows or point at rows: never features."""
        cols = set(self.primary_key)
        for fk in self.foreign_keys:
            cols.update(fk.columns)
        return cols


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
class TaskSpec:
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
    num_train_cutoffs: int = 6
    num_classes: int | None = None

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

    def where(self) -> str:
        return str(self.path) if self.path else self.name

    def table(self, name: str) -> TableSpec:
        if name not in self.tables:
            raise SpecError(f"{self.where()}: no table '{name}'{_suggest(name, self.tables)}")
        return self.tables[name]

    def task(self, name: str) -> TaskSpec:
        if name not in self.tasks:
            raise SpecError(f"{self.where()}: no task '{name}'{_suggest(name, self.tasks)}")
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
                                f"{_suggest(t.source_name, columns)}")
                continue
            have = columns[t.name]
            named = list(t.primary_key) + list(t.ignore_columns) + list(t.column_types)
            named += [c for fk in t.foreign_keys for c in fk.columns]
            if t.time_column:
                named.append(t.time_column)
            for col in dict.fromkeys(named):
                if col not in have:
                    problems.append(f"{t.name}.{col}: no such column{_suggest(col, have)}")
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
                        f"{_suggest(value, allowed)}")
    return value


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
        raise SpecError(f"{where}: dataset name '{name}' must be letters, digits and _")

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
                                f"{', '.join(SEMANTIC_TYPES)}{_suggest(sem, SEMANTIC_TYPES)}")
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
                                f"spec{_suggest(fk.references, tables)}")
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
        for key in ("type", "entity_table", "label_sql", "horizon", "val_cutoff", "test_cutoff"):
            if key not in kraw:
                raise SpecError(f"{w}: missing required key '{key}'")
        ttype = _policy(kraw["type"], TASK_KINDS, f"{w}.type", "")
        kind = TASK_KINDS[ttype]
        entity = str(kraw["entity_table"])
        if entity not in tables:
            raise SpecError(f"{w}.entity_table: no table '{entity}'{_suggest(entity, tables)}")
        if not tables[entity].primary_key:
            raise SpecError(f"{w}.entity_table: table '{entity}' has no primary_key")
        target = kraw.get("target_table")
        if kind.ranks_targets:
            if not target:
                raise SpecError(f"{w}: {ttype} needs target_table")
            if target not in tables:
                raise SpecError(f"{w}.target_table: no table '{target}'{_suggest(target, tables)}")
            if len(tables[target].primary_key) != 1:
                raise SpecError(f"{w}.target_table: '{target}' needs a single-column primary key")
        metric = str(kraw.get("metric") or kind.default_metric)
        if metric not in kind.metrics:
            raise SpecError(f"{w}.metric: '{metric}' does not fit {ttype} "
                            f"(use one of {', '.join(kind.metrics)}){_suggest(metric, kind.metrics)}")
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
            num_train_cutoffs=int(kraw.get("num_train_cutoffs", 6)),
            num_classes=int(kraw["num_classes"]) if kraw.get("num_classes") else None,
        )

    spec = DatasetSpec(name=name, source=source, tables=tables, tasks=tasks, path=path)
    spec.extract_order()  # fail early on foreign-key cycles
    return spec


def load_spec(path: str | Path) -> DatasetSpec:
    """Read and validate a dataset spec file."""
    path = Path(path)
    if not path.exists():
        raise SpecError(f"{path}: no such dataset spec file")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError(f"{path}: not valid YAML{at}: {problem}") from None
    return parse_spec(raw, path)
