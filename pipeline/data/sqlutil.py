"""Quoting for what reaches SQL: names may hold quotes, spaces or keywords; text may hold quotes."""

from __future__ import annotations

from collections.abc import Iterable


def q(name: str) -> str:
    """A DuckDB identifier: wrapped in double quotes, embedded quotes doubled."""
    return '"' + str(name).replace('"', '""') + '"'


def q_list(names: Iterable[str], prefix: str = "") -> str:
    """Comma-separated quoted identifiers, each optionally qualified (`prefix` like 'o.')."""
    return ", ".join(prefix + q(n) for n in names)


def literal(text: str) -> str:
    """A DuckDB string literal: wrapped in single quotes, embedded quotes doubled."""
    return "'" + str(text).replace("'", "''") + "'"
