"""Predictive queries: a task in one line, compiled to the label and entity SQL that
relgraph runs for hand-written tasks (the `cutoffs(cutoff, window_end)` contract of
pipeline/data/tasks.py).

    PREDICT COUNT(orders.*, 0, 30, days) = 0
    FOR EACH customers.customer_id
    WHERE COUNT(orders.*, -90, 0, days) > 0

Grammar (keywords and function names in any case; a name that is a keyword, or holds
odd characters, is written in double quotes: "order"):

    query     := PREDICT target FOR EACH entity [WHERE expr]
    target    := expr                        regression; binary classification when expr
                                             is true/false (a comparison, AND, ...)
               | CLASSIFY aggregate          multiclass (FIRST, LAST, MIN or MAX of a column)
               | aggregate RANK TOP k        link prediction (LIST_DISTINCT of a key)
    entity    := table.key | table.(key, key, ...)     the table's primary key
    aggregate := AGG(argument [VIA table.fk]... [WHERE expr] [, start, end, unit])
    AGG       := COUNT | COUNT_DISTINCT | SUM | AVG | MIN | MAX | FIRST | LAST | LIST_DISTINCT
    argument  := table.* | expr
    unit      := hours | days | weeks
    expr      := expr OR expr | expr AND expr | NOT expr
               | sum (= | != | <> | < | <= | > | >=) sum
               | sum [NOT] IN (literal, ...) | sum [NOT] LIKE 'pattern' | sum IS [NOT] NULL
               | sum
    sum       := sum + product | sum - product | product
    product   := product * unary | product / unary | unary
    unary     := - unary | number | 'text' | TRUE | FALSE | NULL | column | aggregate
               | COALESCE(expr, expr) | ( expr )
    column    := table.column | table.fk.column | table.fk.fk.column

Meaning:

- An aggregate runs over the rows of the first table its argument names (`F`), joined to
  the entity along a foreign-key path of one or two steps, either direction (customers
  <- orders <- order_items). The shortest path is taken; when two are equally short (two
  foreign keys into one table), name one with `VIA table.fk` (`VIA flights.origin`).
  Inside, columns of the path's tables and of tables `F` references (one or two steps,
  `order_items.quantity * products.price`, or `flights.origin.elevation` to name the key)
  may be used.
- The window `(start, end, unit)` is relative to the cutoff, start exclusive and end
  inclusive: a row counts when cutoff + start < time <= cutoff + end. Time is `F`'s
  time column, or that of the nearest table before it on the path. Positive offsets are
  the future: the target's windows must lie after the cutoff (0 <= start), a condition's
  before it (end <= 0). A condition's aggregate may leave the window out: every row up
  to the cutoff.
- A row is read only once it exists: every table on the path and every table looked up
  is restricted to rows with time <= cutoff + max(end, 0), so a condition never reads a
  row after the cutoff (nor one of its `ignore_columns`, which may know the future).
- Empty windows: COUNT and COUNT_DISTINCT give 0, every other aggregate NULL. An entity
  whose target is NULL has no example at that cutoff; `COALESCE(SUM(...), 0)` keeps it.
- FIRST and LAST take the row with the earliest / latest time, ties broken by `F`'s
  primary key (by the value itself when `F` has none); NULL values count as values.
- Entities exist at a cutoff when their time column, if any, is <= the cutoff. Outside
  aggregates, the entity's own columns and those of tables it references (rows existing
  at the cutoff) may be used. The condition is evaluated at the cutoff and a NULL
  condition is false. Division by zero gives NULL.
- The horizon is the end of the target's window (its length when it starts at 0), so
  that no training label reaches into validation.
- CLASSIFY numbers the column's distinct values 0, 1, ... in sorted order
  (`CompiledQuery.classes_sql` lists them).

`compile_query(text, spec, columns)` returns the SQL and the task's type, entity, target
table and horizon (`CompiledQuery.spec_fields()`: the task keys a spec would spell out);
errors are `QueryError`s, one line naming the position.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from datetime import timedelta
from typing import Any, NoReturn

import duckdb
from lark import Lark, Token, Transformer, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedInput, UnexpectedToken, VisitError

from pipeline.data.schema import ForeignKey, SpecError, TableSpec, suggest
from pipeline.data.sqlutil import q

GRAMMAR = r"""
start: _PREDICT target _FOR _EACH entity (_WHERE expr)?

target: _CLASSIFY expr              -> classify
      | expr _RANK _TOP NUMBER      -> rank
      | expr                        -> plain

entity: name "." name                        -> entity_one
      | name "." "(" name ("," name)* ")"    -> entity_many

?expr: and_expr
     | expr _OR and_expr                     -> or_
?and_expr: not_expr
     | and_expr _AND not_expr                -> and_
?not_expr: predicate
     | NOT not_expr                          -> not_
?predicate: sum
     | sum COMPOP sum                        -> compare
     | sum _IN "(" item ("," item)* ")"      -> in_
     | sum NOT _IN "(" item ("," item)* ")"  -> not_in
     | sum _LIKE STRING                      -> like
     | sum NOT _LIKE STRING                  -> not_like
     | sum _IS NULL                          -> is_null
     | sum _IS NOT NULL                      -> is_not_null
?sum: product
     | sum PLUS product                      -> arith
     | sum MINUS product                     -> arith
?product: unary
     | product STAR unary                    -> arith
     | product SLASH unary                   -> arith
?unary: atom
     | MINUS unary                           -> neg
?atom: literal
     | name ("." name)+                      -> column
     | name                                  -> word
     | name "(" args ")"                     -> call
     | "(" expr ")"
?literal: NUMBER                             -> number
     | STRING                                -> string
     | TRUE                                  -> true
     | FALSE                                 -> false
     | NULL                                  -> null
?item: literal
     | MINUS NUMBER                          -> negative
args: arg via* filter? ("," expr)*
?arg: expr
     | name "." STAR                         -> star
via: _VIA name "." name
     | _VIA name "." "(" name ("," name)* ")"
filter: _WHERE expr
name: NAME | QNAME

_PREDICT: "PREDICT"i
_FOR: "FOR"i
_EACH: "EACH"i
_WHERE: "WHERE"i
_CLASSIFY: "CLASSIFY"i
_RANK: "RANK"i
_TOP: "TOP"i
_VIA: "VIA"i
_OR: "OR"i
_AND: "AND"i
_IN: "IN"i
_LIKE: "LIKE"i
_IS: "IS"i
NOT: "NOT"i
NULL: "NULL"i
TRUE: "TRUE"i
FALSE: "FALSE"i
COMPOP: /<>|!=|<=|>=|=|<|>/
PLUS: "+"
MINUS: "-"
STAR: "*"
SLASH: "/"
NUMBER: /\d+(\.\d+)?/
STRING: /'([^']|'')*'/
NAME: /[a-z_][a-z0-9_]*/i
QNAME: /"([^"]|"")+"/
%ignore /\s+/
"""

AGGREGATES = ("COUNT", "COUNT_DISTINCT", "SUM", "AVG", "MIN", "MAX", "FIRST", "LAST",
              "LIST_DISTINCT")
_COUNTS = ("COUNT", "COUNT_DISTINCT")
_CATEGORY_AGGREGATES = ("FIRST", "LAST", "MIN", "MAX")
_UNITS = {"hour": ("HOUR", 1), "hours": ("HOUR", 1), "day": ("DAY", 24),
          "days": ("DAY", 24), "week": ("WEEK", 168), "weeks": ("WEEK", 168)}
_KIND_WORDS = {"number": "a number", "boolean": "true/false", "text": "text",
               "time": "a timestamp", "other": "a nested value", "null": "NULL"}
_TERMINAL_WORDS = {"NAME": "a name", "QNAME": "a name", "NUMBER": "a number",
                   "STRING": "a 'text'", "COMPOP": "a comparison", "$END": "the end"}


class QueryError(SpecError):
    """A predictive query that cannot be compiled. The message is one line that names
    the position (`column 17`, or `line 2, column 5` in a query of several lines)."""

    def __init__(self, message: str, text: str, pos: int):
        pos = max(0, min(pos, len(text)))
        line = text.count("\n", 0, pos) + 1
        column = pos - (text.rfind("\n", 0, pos) + 1) + 1
        where = f"line {line}, column {column}" if "\n" in text.strip() else f"column {column}"
        super().__init__(f"query, {where}: {message}")
        self.reason, self.pos, self.line, self.column = message, pos, line, column


# -- the parsed form ------------------------------------------------------------------------


@dataclass(frozen=True)
class Expr:
    """A node of a parsed query; `pos` is its offset in the query text."""

    pos: int


@dataclass(frozen=True)
class Literal(Expr):
    sql: str       # as DuckDB reads it
    kind: str      # number | text | boolean | null
    value: Any


@dataclass(frozen=True)
class Column(Expr):
    parts: tuple[str, ...]     # table, foreign key..., column


@dataclass(frozen=True)
class Star(Expr):
    table: str


@dataclass(frozen=True)
class Word(Expr):
    """A bare name: only the unit of a window is one."""

    name: str


@dataclass(frozen=True)
class Unary(Expr):
    op: str                    # "-" or "NOT"
    operand: Expr


@dataclass(frozen=True)
class Binary(Expr):
    op: str                    # + - * / = <> < <= > >= AND OR
    left: Expr
    right: Expr


@dataclass(frozen=True)
class InList(Expr):
    operand: Expr
    items: tuple[Literal, ...]
    negated: bool


@dataclass(frozen=True)
class Like(Expr):
    operand: Expr
    pattern: str
    negated: bool


@dataclass(frozen=True)
class IsNull(Expr):
    operand: Expr
    negated: bool


@dataclass(frozen=True)
class Via:
    pos: int
    table: str
    columns: tuple[str, ...]


@dataclass(frozen=True)
class Call(Expr):
    name: str                  # as written
    args: tuple[Expr, ...]     # the argument, then the window's start, end and unit
    via: tuple[Via, ...]
    filter: Expr | None


@dataclass(frozen=True)
class Query:
    """A parsed query: `kind` is value, classify or rank (`top_k` for rank)."""

    text: str
    kind: str
    target: Expr
    top_k: int | None
    entity_table: str
    entity_keys: tuple[str, ...]
    entity_pos: int
    condition: Expr | None


def _walk(node: Any) -> Iterator[Any]:
    """Every node under `node` (itself included), in the order they were written."""
    yield node
    if isinstance(node, (Expr, Via)):
        for f in fields(node):
            value = getattr(node, f.name)
            for child in (value if isinstance(value, tuple) else (value,)):
                if isinstance(child, (Expr, Via)):
                    yield from _walk(child)


def _text(tok: Token) -> str:
    if tok.type == "QNAME":
        return tok.value[1:-1].replace('""', '"')
    return tok.value


def _sql_text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


@v_args(meta=True)
class _Build(Transformer):
    """Lark's tree -> the dataclasses above."""

    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def name(self, meta, c):
        return (_text(c[0]), c[0].start_pos)

    def start(self, meta, c):
        kind, target, top_k = c[0]
        table, keys, pos = c[1]
        return Query(self.text, kind, target, top_k, table, keys, pos, c[2] if len(c) > 2 else None)

    def classify(self, meta, c):
        return ("classify", c[0], None)

    def rank(self, meta, c):
        k = c[1]
        if "." in k.value or int(k.value) < 1:
            raise QueryError(f"RANK TOP needs a whole number of at least 1, not {k.value}",
                             self.text, k.start_pos)
        return ("rank", c[0], int(k.value))

    def plain(self, meta, c):
        return ("value", c[0], None)

    def entity_one(self, meta, c):
        return (c[0][0], (c[1][0],), c[0][1])

    def entity_many(self, meta, c):
        return (c[0][0], tuple(n for n, _ in c[1:]), c[0][1])

    def or_(self, meta, c):
        return Binary(meta.start_pos, "OR", c[0], c[1])

    def and_(self, meta, c):
        return Binary(meta.start_pos, "AND", c[0], c[1])

    def not_(self, meta, c):
        return Unary(meta.start_pos, "NOT", c[1])

    def compare(self, meta, c):
        op = "<>" if c[1].value == "!=" else c[1].value
        return Binary(meta.start_pos, op, c[0], c[2])

    def in_(self, meta, c):
        return InList(meta.start_pos, c[0], tuple(c[1:]), False)

    def not_in(self, meta, c):
        return InList(meta.start_pos, c[0], tuple(c[2:]), True)

    def like(self, meta, c):
        return Like(meta.start_pos, c[0], c[1].value[1:-1].replace("''", "'"), False)

    def not_like(self, meta, c):
        return Like(meta.start_pos, c[0], c[2].value[1:-1].replace("''", "'"), True)

    def is_null(self, meta, c):
        return IsNull(meta.start_pos, c[0], False)

    def is_not_null(self, meta, c):
        return IsNull(meta.start_pos, c[0], True)

    def arith(self, meta, c):
        return Binary(meta.start_pos, c[1].value, c[0], c[2])

    def neg(self, meta, c):
        return Unary(meta.start_pos, "-", c[1])

    def number(self, meta, c):
        text = c[0].value
        return Literal(meta.start_pos, text, "number", float(text) if "." in text else int(text))

    def negative(self, meta, c):
        lit = self.number(meta, c[1:])
        return Literal(meta.start_pos, "-" + lit.sql, "number", -lit.value)

    def string(self, meta, c):
        value = c[0].value[1:-1].replace("''", "'")
        return Literal(meta.start_pos, _sql_text(value), "text", value)

    def true(self, meta, c):
        return Literal(meta.start_pos, "TRUE", "boolean", True)

    def false(self, meta, c):
        return Literal(meta.start_pos, "FALSE", "boolean", False)

    def null(self, meta, c):
        return Literal(meta.start_pos, "NULL", "null", None)

    def column(self, meta, c):
        return Column(c[0][1], tuple(n for n, _ in c))

    def word(self, meta, c):
        return Word(c[0][1], c[0][0])

    def star(self, meta, c):
        return Star(c[0][1], c[0][0])

    def via(self, meta, c):
        return Via(c[0][1], c[0][0], tuple(n for n, _ in c[1:]))

    def filter(self, meta, c):
        return ("filter", c[0])

    def args(self, meta, c):
        vias = tuple(x for x in c[1:] if isinstance(x, Via))
        filt = next((x[1] for x in c[1:] if isinstance(x, tuple)), None)
        rest = tuple(x for x in c[1:] if isinstance(x, Expr))
        return (c[0],) + rest, vias, filt

    def call(self, meta, c):
        (name, pos), (args, vias, filt) = c
        return Call(pos, name, args, vias, filt)


@functools.cache
def _parser() -> Lark:
    return Lark(GRAMMAR, parser="lalr", propagate_positions=True)


def _expected(names: set[str]) -> str:
    terminals = {t.name: t for t in _parser().terminals}
    words = set()
    for name in names:
        if name in _TERMINAL_WORDS:
            words.add(_TERMINAL_WORDS[name])
        elif name in terminals and terminals[name].pattern.type == "str":
            words.add(terminals[name].pattern.value.upper())
    ordered = sorted(words, key=lambda w: (not w[0].isalpha() or w.startswith("a "), w))
    return ", ".join(ordered[:10]) + (", ..." if len(ordered) > 10 else "")


def _syntax_error(text: str, exc: UnexpectedInput) -> QueryError:
    pos = exc.pos_in_stream if exc.pos_in_stream is not None and exc.pos_in_stream >= 0 else len(text)
    if isinstance(exc, UnexpectedCharacters):
        return QueryError(f"unexpected character {text[pos]!r}", text, pos)
    if isinstance(exc, UnexpectedToken) and exc.token.type != "$END":
        expected = _expected(set(exc.accepts or exc.expected))
        return QueryError(f"unexpected {exc.token.value!r}; expected {expected}", text, pos)
    expected = _expected(set(getattr(exc, "expected", None) or ()))
    return QueryError("the query ends too early" + (f"; expected {expected}" if expected else ""),
                      text, len(text))


def parse_query(text: str) -> Query:
    """Parse a predictive query (see the module's grammar); raises QueryError."""
    try:
        tree = _parser().parse(text)
    except UnexpectedInput as exc:
        raise _syntax_error(text, exc) from None
    try:
        return _Build(text).transform(tree)
    except VisitError as exc:
        if isinstance(exc.orig_exc, QueryError):
            raise exc.orig_exc from None
        raise


# -- the warehouse's shape ----------------------------------------------------------------


def _kind(duck_type: str) -> str:
    """A DuckDB type's kind: number, boolean, text, time or other."""
    t = duck_type.upper()
    if t.startswith(("INTERVAL", "STRUCT", "MAP", "UNION")) or t.endswith("]"):
        return "other"
    if t.startswith("BOOL"):
        return "boolean"
    if t.startswith(("TINYINT", "SMALLINT", "INT", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT",
                     "UINTEGER", "UBIGINT", "UHUGEINT", "FLOAT", "DOUBLE", "REAL", "DECIMAL",
                     "NUMERIC")):
        return "number"
    if t.startswith(("VARCHAR", "TEXT", "STRING", "CHAR", "BPCHAR", "UUID", "ENUM")):
        return "text"
    if t.startswith(("TIMESTAMP", "DATE", "TIME")):
        return "time"
    return "other"


def warehouse_columns(con: duckdb.DuckDBPyConnection, tables: Any) -> dict[str, dict[str, str]]:
    """Column name -> DuckDB type of every spec table in the warehouse (relgraph's own
    `__` columns left out): the `columns` argument of `compile_query`."""
    names = set(_tables_of(tables))
    rows = con.execute("""SELECT table_name, column_name, data_type FROM information_schema.columns
                          WHERE table_schema = current_schema() AND table_catalog = current_database()
                          ORDER BY table_name, ordinal_position""").fetchall()
    out: dict[str, dict[str, str]] = {}
    for table, column, dtype in rows:
        if table in names and not column.startswith("__"):
            out.setdefault(table, {})[column] = dtype
    return out


def _tables_of(spec: Any) -> Mapping[str, TableSpec]:
    return spec.tables if hasattr(spec, "tables") else spec



# -- compilation -------------------------------------------------------------------------------


@dataclass(frozen=True)
class CompiledQuery:
    """A query compiled against a spec's tables.

    `label_sql` and `entity_sql` read the warehouse and `cutoffs(cutoff, window_end)` as
    hand-written task SQL does: label SQL returns the entity's key column(s), `cutoff` and
    `label` (link prediction: the target table's key instead of `label`); entity SQL the
    key column(s) and `cutoff` of the entities live at each cutoff.
    """

    query: Query
    type: str
    entity_table: str
    entity_keys: tuple[str, ...]
    target_table: str | None
    horizon: timedelta
    label_sql: str
    entity_sql: str
    top_k: int | None = None
    classes_sql: str | None = None    # multiclass: (code, value) of every class

    @property
    def horizon_text(self) -> str:
        """The horizon as the spec writes it (`30d`, `36h`)."""
        hours = int(self.horizon.total_seconds()) // 3600
        return f"{hours // 24}d" if hours % 24 == 0 else f"{hours}h"

    def spec_fields(self) -> dict[str, Any]:
        """The task keys a spec would otherwise spell out, in the spec's own shape."""
        out = {"type": self.type, "entity_table": self.entity_table, "label_sql": self.label_sql,
               "entity_sql": self.entity_sql, "horizon": self.horizon_text}
        if self.target_table:
            out["target_table"] = self.target_table
        return out


@dataclass(frozen=True)
class _Val:
    sql: str
    kind: str                                  # number | boolean | text | time | other | null | unknown
    source: tuple[str, str] | None = None      # (table, column) of a plain column


@dataclass(frozen=True)
class _Hop:
    owner: str          # the table that holds the foreign key
    fk: ForeignKey
    up: bool            # True: from the owner to the referenced table
    to: str

    def describe(self) -> str:
        return f"{self.owner}.{self.fk.name}"


@dataclass(frozen=True)
class _Window:
    start: int | None   # None: every row up to the cutoff
    end: int
    unit: str           # HOUR | DAY | WEEK
    hours: int          # per unit
    pos: int


def _bound(offset: int, unit: str) -> str:
    """The cutoff moved by `offset` units, as SQL."""
    cut = f"{q('t')}.{q('cutoff')}"
    if offset == 0:
        return cut
    if unit == "WEEK":
        offset, unit = offset * 7, "DAY"
    return f"({cut} {'+' if offset > 0 else '-'} INTERVAL {abs(offset)} {unit})"


@dataclass
class _Scope:
    """Where names are resolved: the entity at a cutoff (role target or condition), or the
    rows of one aggregate (role rows)."""

    role: str
    base: str                                   # alias that lookups start from
    names: dict[str, str]                       # table -> alias
    aliases: dict[str, str]                     # alias -> table
    visible: str                                # rows looked up must have time <= this
    past: bool                                  # ignore_columns may not be read
    prefix: str
    joins: dict[str, str] = field(default_factory=dict)        # alias -> JOIN clause
    lookups: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)
    ctes: list[str] = field(default_factory=list)
    windows: list[_Window] = field(default_factory=list)


@dataclass
class _Rows:
    """The rows of one aggregate: FROM/JOIN lines over `cutoffs` and the path, the entity
    key they group by, the filter, the window and the (alias, column) it is on."""

    scope: _Scope
    keys: list[str]
    lines: list[str]
    where: list[str]
    window: _Window | None
    timecol: tuple[str, str] | None


class _Compiler:
    """One query against one spec: resolves names, checks types and windows, and writes
    one CTE per aggregate (grouped by the entity's key and the cutoff) that the label and
    entity SELECTs LEFT JOIN to the (cutoff, entity) rows."""

    def __init__(self, query: Query, tables: Mapping[str, TableSpec],
                 columns: Mapping[str, Mapping[str, str]] | None):
        self.query, self.tables, self.columns = query, tables, columns
        self.ctes: dict[str, str] = {}            # name -> body
        self.cte_names: dict[str, str] = {}       # body -> name
        self.entity_lookups: dict[tuple[str, str], tuple[str, str]] = {}

    def fail(self, pos: int, message: str) -> NoReturn:
        raise QueryError(message, self.query.text, pos)

    # -- names ----------------------------------------------------------------------------

    def table(self, name: str, pos: int) -> TableSpec:
        if name not in self.tables:
            self.fail(pos, f"no table '{name}'{suggest(name, self.tables)}")
        return self.tables[name]

    def column_kind(self, table: str, column: str, pos: int) -> str:
        cols = (self.columns or {}).get(table)
        if cols is None:
            return "unknown"
        if column not in cols:
            self.fail(pos, f"{table} has no column '{column}'{suggest(column, cols)}")
        return _kind(cols[column])

    def foreign_key(self, table: str, name: str, pos: int) -> ForeignKey:
        fks = self.tables[table].foreign_keys
        for fk in fks:
            if fk.name == name:
                return fk
        choices = [fk.name for fk in fks]
        listed = f"its foreign keys: {', '.join(choices)}" if choices else "it has none"
        self.fail(pos, f"{table} has no foreign key '{name}' ({listed}){suggest(name, choices)}")

    def entity(self) -> TableSpec:
        qy = self.query
        e = self.table(qy.entity_table, qy.entity_pos)
        if not e.primary_key:
            self.fail(qy.entity_pos, f"{e.name} has no primary_key in the spec; FOR EACH needs "
                                     "a table whose rows have a key")
        if sorted(qy.entity_keys) != sorted(e.primary_key):
            key = ", ".join(e.primary_key)
            named = ", ".join(qy.entity_keys)
            form = f"{e.name}.{key}" if len(e.primary_key) == 1 else f"{e.name}.({key})"
            self.fail(qy.entity_pos, f"FOR EACH names a table by its primary key: write {form} "
                                     f"(not {named})")
        return e

    # -- scopes and lookups -------------------------------------------------------------------

    def join_lookup(self, scope: _Scope, src: str, fk: ForeignKey) -> str:
        """Alias of the row that `src`'s foreign key `fk` references (a LEFT JOIN that only
        sees rows with time <= the scope's `visible`)."""
        registry = scope.lookups if scope.role == "rows" else self.entity_lookups
        key = (src, fk.name)
        if key not in registry:
            alias = f"{scope.prefix}{len(registry)}"
            ref = self.tables[fk.references]
            on = [f"{q(alias)}.{q(p)} = {q(src)}.{q(c)}" for c, p in zip(fk.columns, ref.primary_key)]
            if ref.time_column:
                on.append(f"{q(alias)}.{q(ref.time_column)} <= {scope.visible}")
            registry[key] = (alias, f"LEFT JOIN {q(ref.name)} AS {q(alias)} ON {' AND '.join(on)}")
        alias, clause = registry[key]
        scope.aliases[alias] = fk.references
        scope.joins.setdefault(alias, clause)
        return alias

    def lookup_path(self, scope: _Scope, table: str, pos: int) -> str:
        """Alias of `table` reached from the scope's base by following foreign keys."""
        base_table = scope.aliases[scope.base]
        found: list[tuple[ForeignKey, ...]] = []
        for fk1 in self.tables[base_table].foreign_keys:
            if fk1.references == table:
                found.append((fk1,))
        if not found:
            for fk1 in self.tables[base_table].foreign_keys:
                for fk2 in self.tables[fk1.references].foreign_keys:
                    if fk2.references == table:
                        found.append((fk1, fk2))
        if len(found) > 1:
            ways = [f"{base_table}." + ".".join(fk.name for fk in p) for p in found]
            self.fail(pos, f"{base_table} references {table} in {len(found)} ways "
                           f"({', '.join(ways)}); name one, e.g. {ways[0]}.<column>")
        if not found:
            if scope.role == "rows":
                self.fail(pos, f"{table} is neither on this aggregate's path nor referenced by "
                               f"{base_table}; an aggregate reads the tables on its path and those "
                               f"{base_table} references")
            self.fail(pos, f"outside an aggregate only the columns of {base_table} and of the "
                           f"tables it references can be used; {table} is neither: aggregate it, "
                           f"e.g. COUNT({table}.*, -30, 0, days) > 0")
        alias = scope.base
        for fk in found[0]:
            alias = self.join_lookup(scope, alias, fk)
        return alias

    def column(self, node: Column, scope: _Scope) -> _Val:
        table = node.parts[0]
        self.table(table, node.pos)
        alias = scope.names.get(table)
        if alias is None:
            alias = self.lookup_path(scope, table, node.pos)
        current = table
        for name in node.parts[1:-1]:
            fk = self.foreign_key(current, name, node.pos)
            alias = self.join_lookup(scope, alias, fk)
            current = fk.references
        col = node.parts[-1]
        kind = self.column_kind(current, col, node.pos)
        if scope.past and col in self.tables[current].ignore_columns:
            self.fail(node.pos, f"{current}.{col} is in the spec's ignore_columns (it may hold "
                                "values from after the cutoff), so a condition cannot read it")
        return _Val(f"{q(alias)}.{q(col)}", kind, source=(current, col))

    # -- expressions ----------------------------------------------------------------------

    def expect(self, val: _Val, kinds: tuple[str, ...], node: Expr, what: str) -> None:
        if val.kind not in kinds + ("unknown", "null"):
            self.fail(node.pos, f"{what}, but {self.show(node)} is {_KIND_WORDS[val.kind]}")

    def show(self, node: Expr) -> str:
        if isinstance(node, Column):
            return ".".join(node.parts)
        if isinstance(node, Call):
            return f"{node.name.upper()}(...)"
        if isinstance(node, Literal):
            return node.sql
        return "this expression"

    def expr(self, node: Expr, scope: _Scope) -> _Val:
        if isinstance(node, Literal):
            return _Val(node.sql, node.kind)
        if isinstance(node, Column):
            return self.column(node, scope)
        if isinstance(node, Star):
            self.fail(node.pos, f"{node.table}.* stands for whole rows: only COUNT({node.table}.*, ...) "
                                "and COUNT_DISTINCT take it")
        if isinstance(node, Word):
            self.bare_word(node, scope.names)
        if isinstance(node, Unary):
            inner = self.expr(node.operand, scope)
            if node.op == "NOT":
                self.expect(inner, ("boolean",), node.operand, "NOT needs a condition")
                return _Val(f"(NOT {inner.sql})", "boolean")
            self.expect(inner, ("number",), node.operand, "- needs a number")
            return _Val(f"(-{inner.sql})", "number")
        if isinstance(node, Binary):
            return self.binary(node, scope)
        if isinstance(node, InList):
            val = self.expr(node.operand, scope)
            for item in node.items:
                self.comparable(val, _Val(item.sql, item.kind), node.operand, item, "IN")
            items = ", ".join(i.sql for i in node.items)
            return _Val(f"({val.sql} {'NOT IN' if node.negated else 'IN'} ({items}))", "boolean")
        if isinstance(node, Like):
            val = self.expr(node.operand, scope)
            self.expect(val, ("text",), node.operand, "LIKE compares text")
            return _Val(f"({val.sql} {'NOT LIKE' if node.negated else 'LIKE'} "
                        f"{_sql_text(node.pattern)})", "boolean")
        if isinstance(node, IsNull):
            val = self.expr(node.operand, scope)
            return _Val(f"({val.sql} IS {'NOT NULL' if node.negated else 'NULL'})", "boolean")
        if isinstance(node, Call):
            return self.call(node, scope)
        raise AssertionError(node)

    def bare_word(self, node: Word, tables) -> NoReturn:
        owners = [t for t in dict.fromkeys(tables) if node.name in (self.columns or {}).get(t, {})]
        hint = f"; did you mean {owners[0]}.{node.name}?" if owners else ""
        self.fail(node.pos, f"'{node.name}' needs its table: write table.column{hint}")

    def comparable(self, a: _Val, b: _Val, na: Expr, nb: Expr, op: str) -> None:
        kinds = {a.kind, b.kind}
        if kinds & {"unknown", "null"} or len(kinds) == 1 or kinds == {"time", "text"}:
            return
        self.fail(na.pos, f"{op} compares {self.show(na)}, which is {_KIND_WORDS[a.kind]}, "
                          f"with {self.show(nb)}, which is {_KIND_WORDS[b.kind]}")

    def binary(self, node: Binary, scope: _Scope) -> _Val:
        left, right = self.expr(node.left, scope), self.expr(node.right, scope)
        if node.op in ("AND", "OR"):
            self.expect(left, ("boolean",), node.left, f"{node.op} joins conditions")
            self.expect(right, ("boolean",), node.right, f"{node.op} joins conditions")
            return _Val(f"({left.sql} {node.op} {right.sql})", "boolean")
        if node.op in ("+", "-", "*", "/"):
            self.expect(left, ("number",), node.left, f"{node.op} needs numbers")
            self.expect(right, ("number",), node.right, f"{node.op} needs numbers")
            if node.op == "/":
                return _Val(f"({left.sql} / NULLIF({right.sql}, 0))", "number")
            return _Val(f"({left.sql} {node.op} {right.sql})", "number")
        self.comparable(left, right, node.left, node.right, node.op)
        return _Val(f"({left.sql} {node.op} {right.sql})", "boolean")

    def call(self, node: Call, scope: _Scope) -> _Val:
        func = node.name.upper()
        if func == "COALESCE":
            if len(node.args) != 2 or node.via or node.filter is not None:
                self.fail(node.pos, "COALESCE takes two values: COALESCE(value, value if NULL)")
            a, b = self.expr(node.args[0], scope), self.expr(node.args[1], scope)
            self.comparable(a, b, node.args[0], node.args[1], "COALESCE")
            return _Val(f"COALESCE({a.sql}, {b.sql})", a.kind if a.kind != "null" else b.kind)
        if func not in AGGREGATES:
            self.fail(node.pos, f"no function '{node.name}' (aggregates: {', '.join(AGGREGATES)}; "
                                f"and COALESCE){suggest(func, AGGREGATES + ('COALESCE',))}")
        if scope.role == "rows":
            self.fail(node.pos, f"{func} inside another aggregate: aggregates cannot be nested")
        if func == "LIST_DISTINCT":
            self.fail(node.pos, "LIST_DISTINCT makes a link prediction task and stands alone: "
                                "PREDICT LIST_DISTINCT(table.key, 0, 30, days) RANK TOP 10 FOR EACH ...")
        return self.aggregate(node, func, scope)

    # -- aggregates ---------------------------------------------------------------------------

    def window(self, node: Call, func: str, role: str) -> _Window | None:
        extra = node.args[1:]
        if not extra:
            if role == "target":
                self.fail(node.pos, f"the target's {func} needs a window after the cutoff, "
                                    f"e.g. {func}(..., 0, 30, days)")
            return None
        if len(extra) != 3:
            self.fail(extra[0].pos, f"{func}'s window is three values: start, end, unit "
                                    f"(e.g. 0, 30, days); got {len(extra)}")
        start, end = (self.offset(x, which) for x, which in zip(extra, ("start", "end")))
        unit = extra[2]
        if not isinstance(unit, Word) or unit.name.lower() not in _UNITS:
            shown = unit.name if isinstance(unit, Word) else self.show(unit)
            fixed = ("; months and years have no fixed length" if isinstance(unit, Word)
                     and unit.name.lower().rstrip("s") in ("month", "year") else "")
            self.fail(unit.pos, f"the window's unit must be hours, days or weeks, not '{shown}'{fixed}")
        sql_unit, hours = _UNITS[unit.name.lower()]
        w = _Window(start, end, sql_unit, hours, extra[0].pos)
        span = f"({start}, {end}, {unit.name})"
        if end < start:
            self.fail(w.pos, f"the window {span} ends before it starts; write (start, end) "
                             f"with start < end, e.g. ({end}, {start}, {unit.name})")
        if end == start:
            self.fail(w.pos, f"the window {span} is empty: it starts where it ends")
        if role == "target" and start < 0:
            self.fail(w.pos, f"the target's window {span} starts before the cutoff; a label "
                             "looks only after it (0 <= start); put conditions on the past in WHERE")
        if role == "condition" and end > 0:
            self.fail(w.pos, f"the window {span} reaches after the cutoff; a condition may "
                             "only look at the past (end <= 0), or it would leak the label")
        return w

    def offset(self, node: Expr, which: str) -> int:
        value = None
        if isinstance(node, Literal) and node.kind == "number":
            value = node.value
        elif isinstance(node, Unary) and node.op == "-" and isinstance(node.operand, Literal) \
                and node.operand.kind == "number":
            value = -node.operand.value
        if not isinstance(value, int):
            self.fail(node.pos, f"the window's {which} must be a whole number of units "
                                f"(negative: before the cutoff), not {self.show(node)}")
        return value

    def steps(self, table: str) -> Iterator[_Hop]:
        for fk in self.tables[table].foreign_keys:
            yield _Hop(table, fk, True, fk.references)
        for other in self.tables.values():
            for fk in other.foreign_keys:
                if fk.references == table:
                    yield _Hop(other.name, fk, False, other.name)

    def path(self, entity: str, target: str, vias: tuple[Via, ...], pos: int,
             func: str) -> tuple[_Hop, ...]:
        named = set()
        for via in vias:
            self.table(via.table, via.pos)
            fk = self.foreign_key(via.table, "__".join(via.columns), via.pos)
            named.add((via.table, fk.name))
        paths: list[tuple[_Hop, ...]] = []
        for h1 in self.steps(entity):
            paths.append((h1,))
            for h2 in self.steps(h1.to):
                if (h2.owner, h2.fk.name) != (h1.owner, h1.fk.name):
                    paths.append((h1, h2))
        paths = [p for p in paths if p[-1].to == target
                 and named <= {(h.owner, h.fk.name) for h in p}]
        if not paths:
            if target == entity:
                self.fail(pos, f"{func} over {entity}, the entity itself: an aggregate runs over "
                               "a table linked to the entity by a foreign key")
            via = f" using {', '.join(f'{t}.{k}' for t, k in sorted(named))}" if named else ""
            self.fail(pos, f"no foreign-key path of one or two steps from {entity} to "
                           f"{target}{via}")
        shortest = min(len(p) for p in paths)
        paths = [p for p in paths if len(p) == shortest]
        if len(paths) > 1:
            # One foreign key of a table into itself: prefer the rows that point here.
            fks = {frozenset((h.owner, h.fk.name) for h in p) for p in paths}
            if len(fks) == 1:
                paths = [max(paths, key=lambda p: sum(not h.up for h in p))]
        if len(paths) > 1:
            ways = [" then ".join(h.describe() for h in p) for p in paths]
            self.fail(pos, f"{target} is linked to {entity} in {len(paths)} ways "
                           f"({'; '.join(ways)}); name one inside the aggregate, "
                           f"e.g. {func}({target}.* VIA {paths[0][0].describe()}, ...)")
        return paths[0]

    def first_table(self, node: Call, func: str) -> tuple[str, int]:
        for n in _walk(node.args[0]):
            if isinstance(n, (Column, Star)):
                return (n.parts[0] if isinstance(n, Column) else n.table), n.pos
        for n in _walk(node.args[0]):
            if isinstance(n, Word):
                self.bare_word(n, self.tables)
        self.fail(node.pos, f"{func} needs a table to run over, e.g. {func}(orders.*, ...) "
                            f"or {func}(orders.amount, ...)")

    def rows(self, node: Call, func: str, role: str) -> _Rows:
        """The joined rows an aggregate reads, per cutoff."""
        window = self.window(node, func, role)
        e = self.tables[self.query.entity_table]
        f_name, f_pos = self.first_table(node, func)
        self.table(f_name, f_pos)
        hops = self.path(e.name, f_name, node.via, f_pos, func)
        later = {h.to for h in hops}
        mentions = {n.parts[0] for n in _walk(node) if isinstance(n, Column)}
        with_entity = hops[0].up or (e.name in mentions and e.name not in later)
        aliases = {"p0": e.name} if with_entity else {}
        names = {e.name: "p0"} if with_entity else {}
        for i, hop in enumerate(hops, 1):
            aliases[f"p{i}"] = hop.to
            names[hop.to] = f"p{i}"
        timed = [i for i in range(len(hops), 0, -1) if self.tables[hops[i - 1].to].time_column]
        w_index = timed[0] if timed else None
        if window is not None and w_index is None:
            route = " -> ".join([e.name] + [h.to for h in hops])
            self.fail(window.pos, f"no table on the path {route} has a time_column, so the window "
                                  f"has no time to measure; leave the window out to use all rows")
        end = window.end if window else 0
        visible = _bound(max(end, 0), window.unit if window else "DAY")
        scope = _Scope("rows", f"p{len(hops)}", names, aliases, visible, past=end <= 0, prefix="l")
        lines = [f"FROM {q('cutoffs')} AS {q('t')}"]
        if with_entity:
            lines.append(f"CROSS JOIN {q(e.name)} AS {q('p0')}")
        for i, hop in enumerate(hops, 1):
            table, cur, prev = self.tables[hop.to], f"p{i}", f"p{i - 1}"
            on = []
            if i > 1 or with_entity:
                # up: the previous row holds the key; down: this row does
                owner, parent = (prev, cur) if hop.up else (cur, prev)
                pk = self.tables[aliases[parent]].primary_key
                on += [f"{q(owner)}.{q(c)} = {q(parent)}.{q(p)}" for c, p in zip(hop.fk.columns, pk)]
            if table.time_column:
                col = f"{q(cur)}.{q(table.time_column)}"
                if i == w_index and window is not None:
                    if window.start is not None:
                        on.append(f"{col} > {_bound(window.start, window.unit)}")
                    on.append(f"{col} <= {_bound(window.end, window.unit)}")
                else:
                    on.append(f"{col} <= {visible}")
            lines.append(f"JOIN {q(table.name)} AS {q(cur)} ON {' AND '.join(on) or 'TRUE'}")
        if with_entity:
            keys = [f"{q('p0')}.{q(k)}" for k in e.primary_key]
        else:
            keys = [f"{q('p1')}.{q(c)}" for c in hops[0].fk.columns]
        where = []
        if node.filter is not None:
            cond = self.expr(node.filter, scope)
            self.expect(cond, ("boolean",), node.filter, f"the WHERE inside {func} must be a condition")
            where.append(cond.sql)
        timecol = (f"p{w_index}", self.tables[hops[w_index - 1].to].time_column) if w_index else None
        return _Rows(scope, keys, lines, where, window, timecol)

    def aggregate(self, node: Call, func: str, outer: _Scope) -> _Val:
        rows = self.rows(node, func, outer.role)
        scope, window = rows.scope, rows.window
        arg = node.args[0]
        f_alias = scope.base
        f_table = self.tables[scope.aliases[f_alias]]
        if isinstance(arg, Star):
            if arg.table != f_table.name:
                raise AssertionError(arg)
            if func == "COUNT":
                sql, kind, source = "COUNT(*)", "number", None
            elif func == "COUNT_DISTINCT":
                if not f_table.primary_key:
                    self.fail(arg.pos, f"COUNT_DISTINCT({arg.table}.*) needs a primary key, which "
                                       f"{arg.table} has not; count a column instead")
                cols = ", ".join(f"{q(f_alias)}.{q(k)}" for k in f_table.primary_key)
                sql = f"COUNT(DISTINCT ({cols}))" if len(f_table.primary_key) > 1 else \
                    f"COUNT(DISTINCT {cols})"
                kind, source = "number", None
            else:
                self.fail(arg.pos, f"{func} needs a value, e.g. {func}({arg.table}.<column>, ...); "
                                   f"{arg.table}.* only counts rows")
        else:
            val = self.expr(arg, scope)
            source = val.source
            sql, kind = self.fold(func, val, arg, f_alias, f_table, rows.timecol)
        if window is not None:
            outer.windows.append(window)
        body = self.cte_body(rows, f"{sql} AS {q('value')}")
        alias = self.add_cte(body, outer)
        e = self.tables[self.query.entity_table]
        on = [f"{q(alias)}.{q(f'__k{j}')} = {q('e')}.{q(k)}" for j, k in enumerate(e.primary_key)]
        on.append(f"{q(alias)}.{q('cutoff')} = {q('t')}.{q('cutoff')}")
        outer.joins[alias] = f"LEFT JOIN {q('__' + alias)} AS {q(alias)} ON {' AND '.join(on)}"
        value = f"{q(alias)}.{q('value')}"
        if func in _COUNTS:
            value = f"COALESCE({value}, 0)"
        return _Val(value, kind, source=source)

    def fold(self, func: str, val: _Val, arg: Expr, f_alias: str, f_table: TableSpec,
             timecol: tuple[str, str] | None) -> tuple[str, str]:
        """The SQL aggregate of `val` and the kind of its result."""
        what = self.show(arg)
        if func == "COUNT":
            return f"COUNT({val.sql})", "number"
        if func == "COUNT_DISTINCT":
            return f"COUNT(DISTINCT {val.sql})", "number"
        if func in ("SUM", "AVG"):
            if val.kind not in ("number", "boolean", "unknown"):
                alt = ("; COUNT or COUNT_DISTINCT count it, CLASSIFY LAST(...) predicts it"
                       if val.kind == "text" else "")
                self.fail(arg.pos, f"{func} needs numbers, but {what} is {_KIND_WORDS[val.kind]}{alt}")
            if func == "AVG":
                return f"AVG(CAST({val.sql} AS DOUBLE))", "number"
            inner = f"CAST({val.sql} AS INTEGER)" if val.kind == "boolean" else val.sql
            return f"SUM({inner})", "number"
        if func in ("MIN", "MAX"):
            if val.kind in ("other", "null"):
                self.fail(arg.pos, f"{func} needs values that can be ordered, but {what} is "
                                   f"{_KIND_WORDS[val.kind]}")
            return f"{func}({val.sql})", val.kind
        if func in ("FIRST", "LAST"):
            order = [f"{q(timecol[0])}.{q(timecol[1])}"] if timecol else []
            order += [f"{q(f_alias)}.{q(k)}" for k in f_table.primary_key] or [val.sql]
            by = ", ".join(f"{o} ASC NULLS LAST" for o in order)
            return f"{func}({val.sql} ORDER BY {by})", val.kind
        raise AssertionError(func)

    def cte_body(self, rows: _Rows, value: str, distinct: bool = False) -> str:
        """One aggregate's CTE: the entity key (`__k0`, ...), `cutoff` and `value`, grouped
        (or, for a list of targets, distinct)."""
        keys = ", ".join(f"{k} AS {q(f'__k{j}')}" for j, k in enumerate(rows.keys))
        out = [f"SELECT {'DISTINCT ' if distinct else ''}{keys}, {q('t')}.{q('cutoff')} AS "
               f"{q('cutoff')}, {value}"]
        out += rows.lines + list(rows.scope.joins.values())
        if rows.where:
            out.append("WHERE " + " AND ".join(rows.where))
        if not distinct:
            out.append(f"GROUP BY {', '.join(rows.keys)}, {q('t')}.{q('cutoff')}")
        return "\n".join(out)

    def add_cte(self, body: str, outer: _Scope) -> str:
        if body not in self.cte_names:
            name = f"a{len(self.ctes)}"
            self.cte_names[body] = name
            self.ctes[name] = body
        name = self.cte_names[body]
        if name not in outer.ctes:
            outer.ctes.append(name)
        return name

    # -- the query --------------------------------------------------------------------------

    def entity_scope(self, role: str) -> _Scope:
        e = self.tables[self.query.entity_table]
        return _Scope(role, "e", {e.name: "e"}, {"e": e.name}, f"{q('t')}.{q('cutoff')}",
                      past=role == "condition", prefix="x")

    def compile(self) -> CompiledQuery:
        qy = self.query
        e = self.entity()
        cond = self.entity_scope("condition")
        where: list[str] = []
        if qy.condition is not None:
            val = self.expr(qy.condition, cond)
            self.expect(val, ("boolean",), qy.condition, "the WHERE condition must be true or false")
            where.append(val.sql)
        live = list(where)
        target = self.entity_scope("target")
        target_table = classes_sql = None
        if qy.kind == "rank":
            ttype = "link_prediction"
            target_table, select = self.rank_target(qy.target, target)
        else:
            if qy.kind == "classify":
                node = qy.target
                if not (isinstance(node, Call) and node.name.upper() in _CATEGORY_AGGREGATES
                        and isinstance(node.args[0], Column)):
                    self.fail(node.pos, "CLASSIFY predicts a category: CLASSIFY LAST(table.column, "
                                        "0, 30, days) (or FIRST, MIN, MAX of a column)")
            elif isinstance(qy.target, Call) and qy.target.name.upper() == "LIST_DISTINCT":
                self.fail(qy.target.pos, "LIST_DISTINCT makes a link prediction task: add RANK TOP k "
                                         "(e.g. RANK TOP 10) after it")
            val = self.expr(qy.target, target)
            if not target.windows:
                self.fail(qy.target.pos, "the target needs an aggregate with a window after the cutoff, "
                                         "e.g. COUNT(orders.*, 0, 30, days)")
            if qy.kind == "classify":
                ttype = "multiclass_classification"
                classes_sql, label = self.classes(val, target)
            elif val.kind == "boolean":
                ttype, label = "binary_classification", f"CAST({val.sql} AS INTEGER)"
            elif val.kind in ("number", "unknown"):
                ttype, label = "regression", f"CAST({val.sql} AS DOUBLE)"
            else:
                self.fail(qy.target.pos, f"the target is {_KIND_WORDS[val.kind]}; predict a number, a "
                                         "comparison (> 0, = 0, ...) or a category with CLASSIFY "
                                         "LAST(...)")
            select = f"{label} AS {q('label')}"
            where = where + [f"{label} IS NOT NULL"]
        hours = max(w.end * w.hours for w in target.windows)
        keys = ", ".join(f"{q('e')}.{q(k)}" for k in e.primary_key)
        label_sql = self.select(f"{keys}, {q('t')}.{q('cutoff')}, {select}", e,
                                [cond, target], where)
        entity_sql = self.select(f"{keys}, {q('t')}.{q('cutoff')}", e, [cond], live)
        return CompiledQuery(query=qy, type=ttype, entity_table=e.name,
                             entity_keys=tuple(e.primary_key), target_table=target_table,
                             horizon=timedelta(hours=hours), label_sql=label_sql,
                             entity_sql=entity_sql, top_k=qy.top_k, classes_sql=classes_sql)

    def classes(self, val: _Val, target: _Scope) -> tuple[str, str]:
        """Multiclass labels: the column's distinct values numbered 0, 1, ... in order."""
        table, column = val.source
        dtype = (self.columns or {}).get(table, {}).get(column, "").upper()
        if dtype in ("DOUBLE", "FLOAT", "REAL"):
            self.fail(self.query.target.pos, f"CLASSIFY needs a category, but {table}.{column} is a "
                                             "continuous number; predict it bare (regression)")
        col = q(column)
        classes_sql = (f"SELECT CAST(ROW_NUMBER() OVER (ORDER BY {q('value')}) - 1 AS INTEGER) AS "
                       f"{q('code')}, {q('value')} FROM (SELECT DISTINCT {col} AS {q('value')} "
                       f"FROM {q(table)} WHERE {col} IS NOT NULL)")
        body = f"SELECT {q('code')}, {q('value')} FROM ({classes_sql})"
        name = self.add_cte(body, target)
        target.joins[name] = (f"LEFT JOIN {q('__' + name)} AS {q(name)} ON {q(name)}.{q('value')} "
                              f"= {val.sql}")
        return classes_sql, f"{q(name)}.{q('code')}"

    def rank_target(self, node: Expr, target: _Scope) -> tuple[str, str]:
        """Link prediction: (target table, the SELECT of its key) from LIST_DISTINCT."""
        if not (isinstance(node, Call) and node.name.upper() == "LIST_DISTINCT"):
            self.fail(node.pos, "RANK TOP ranks the keys of LIST_DISTINCT: PREDICT "
                                "LIST_DISTINCT(order_items.product_id, 0, 30, days) RANK TOP 10 ...")
        rows = self.rows(node, "LIST_DISTINCT", "target")
        arg = node.args[0]
        if not isinstance(arg, Column):
            self.fail(arg.pos, "LIST_DISTINCT lists a key column, e.g. "
                               "LIST_DISTINCT(order_items.product_id, 0, 30, days)")
        val = self.column(arg, rows.scope)
        table, column = val.source
        spec = self.tables[table]
        refs = [fk.references for fk in spec.foreign_keys if fk.columns == (column,)]
        if refs:
            target_table = refs[0]
        elif spec.primary_key == (column,):
            target_table = table
        else:
            self.fail(arg.pos, f"LIST_DISTINCT needs a key: {table}.{column} is neither a foreign "
                               f"key nor the primary key of {table}")
        tkey = self.tables[target_table].primary_key
        if len(tkey) != 1:
            self.fail(arg.pos, f"link prediction needs a target with a one-column key; "
                               f"{target_table}'s key is {', '.join(tkey)}")
        e = self.tables[self.query.entity_table]
        if tkey[0] in e.primary_key:
            self.fail(arg.pos, f"the target's key column '{tkey[0]}' has the entity key's name; "
                               "a label table cannot hold both (rename one in the source)")
        target.windows.append(rows.window)
        rows.where.append(f"{val.sql} IS NOT NULL")
        body = self.cte_body(rows, f"{val.sql} AS {q('value')}", distinct=True)
        alias = self.add_cte(body, target)
        on = [f"{q(alias)}.{q(f'__k{j}')} = {q('e')}.{q(k)}" for j, k in enumerate(e.primary_key)]
        on.append(f"{q(alias)}.{q('cutoff')} = {q('t')}.{q('cutoff')}")
        target.joins[alias] = f"JOIN {q('__' + alias)} AS {q(alias)} ON {' AND '.join(on)}"
        return target_table, f"{q(alias)}.{q('value')} AS {q(tkey[0])}"

    def select(self, columns: str, e: TableSpec, scopes: list[_Scope], where: list[str]) -> str:
        ctes = [n for s in scopes for n in s.ctes]
        ctes = list(dict.fromkeys(ctes))
        out = []
        if ctes:
            parts = [f"{q('__' + n)} AS (\n  " + self.ctes[n].replace("\n", "\n  ") + "\n)"
                     for n in ctes]
            out.append("WITH " + ",\n".join(parts))
        out.append(f"SELECT {columns}")
        out.append(f"FROM {q('cutoffs')} AS {q('t')}")
        if e.time_column:
            out.append(f"JOIN {q(e.name)} AS {q('e')} ON {q('e')}.{q(e.time_column)} <= "
                       f"{q('t')}.{q('cutoff')}")
        else:
            out.append(f"CROSS JOIN {q(e.name)} AS {q('e')}")
        joins: dict[str, str] = {}
        for s in scopes:
            joins.update(s.joins)
        out += list(joins.values())
        if where:
            out.append("WHERE " + "\n  AND ".join(where))
        return "\n".join(out)


def compile_query(text: str, spec: Any,
                  columns: Mapping[str, Mapping[str, str]] | None = None) -> CompiledQuery:
    """Compile a predictive query against a spec's tables.

    `spec` is a DatasetSpec or its `tables` mapping (name -> TableSpec). `columns` maps
    each table to {column: DuckDB type} (`warehouse_columns(con, spec)`); with it, column
    names are checked (with suggestions) and aggregates checked against the column types,
    and a bare FIRST/LAST/MIN/MAX of a boolean column is binary classification. Without
    it, columns are taken on trust and types come from the query's form alone.
    """
    query = parse_query(text)
    return _Compiler(query, _tables_of(spec), columns).compile()
