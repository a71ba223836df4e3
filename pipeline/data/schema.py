"""The tables of a dataset: keys, time columns, foreign keys, and the error every
dataset problem raises. What the spec, the query compiler and the sources share."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class SpecError(ValueError):
    """A dataset spec that cannot be used; the message says where and why."""


def suggest(name: str, choices) -> str:
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


def read_yaml(path: Path) -> Any:
    """The YAML document in `path`; a SpecError naming the line and column it cannot read."""
    try:
        return yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError(f"{path}: not valid YAML{at}: {problem}") from None


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


