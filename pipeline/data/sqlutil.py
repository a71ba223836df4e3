"""Quoting for identifiers that reach SQL: names may hold quotes, spaces or keywords."""

from __future__ import annotations

from collections.abc import Iterable


def q(name: str) -> str:
    """A DuckDB identifier: wrapped in double quotes, embedded quotes doubled."""
    return '"' + str(name).replace('"', '""') + '"'


def q_list(names: Iterable[str], prefix: str = "") -> str:
    """Comma-separated quoted identifiers, each optionally qualified (`prefix` like 'o.')."""
    return ", ".join(prefix + q(n) for n in names)
