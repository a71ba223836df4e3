"""Predictive queries (pipeline/data/query.py).

(a) The synthetic shop's three tasks written as queries give the label tables of their
    hand-written SQL, through the project's own label-table code.
(b) Property: on random small schemas and random queries the compiled labels equal a
    plain evaluation of the same definition (pandas joins, Python three-valued logic), and
    the entity SQL (every condition) reads no row after the cutoff.
(c) Every error is one line, in the query's terms, at the right position.
"""

from __future__ import annotations

import dataclasses
import math
import random
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import pandas as pd
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from pipeline.data.spec import load_spec, parse_spec
from pipeline.data.tasks import build_task_table
from pipeline.data.query import QueryError, compile_query, parse_query, warehouse_columns

ROOT = Path(__file__).resolve().parents[1]

# -- (a) the shop's tasks --------------------------------------------------------------------

ACTIVE = "WHERE COUNT(orders.*, -90, 0, days) > 0"
SHOP_QUERIES = {
    "customer_churn":
        f"PREDICT COUNT(orders.*, 0, 30, days) = 0 FOR EACH customers.customer_id {ACTIVE}",
    # needs COALESCE: SUM over an empty window is NULL (no example), the SQL counts it as 0
    "customer_ltv":
        "PREDICT COALESCE(SUM(order_items.quantity * order_items.unit_price, 0, 30, days), 0) "
        f"FOR EACH customers.customer_id {ACTIVE}",
    "customer_next_products":
        "PREDICT LIST_DISTINCT(order_items.product_id, 0, 30, days) RANK TOP 10 "
        f"FOR EACH customers.customer_id {ACTIVE}",
}


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    """The synthetic shop at its smallest scale (1,000 customers) in a real warehouse."""
    from pipeline.data.sources import open_source
    from pipeline.data.warehouse import extract_table

    root = tmp_path_factory.mktemp("shop")
    spec = load_spec(ROOT / "datasets" / "ecommerce.yaml")
    spec = dataclasses.replace(spec, source=dataclasses.replace(spec.source, scale=1000))
    source = open_source(spec, root)
    con = duckdb.connect(str(root / "warehouse.duckdb"))
    for table in spec.extract_order():
        extract_table(con, spec, table, source.read(table), source.fingerprint(table))
    yield spec, con
    con.close()


def _rows(con, table):
    return con.execute(f'SELECT * FROM "{table}" ORDER BY ALL').fetchall()


def _same(a, b) -> bool:
    """Equal rows; floats equal up to the order of floating-point additions."""
    if len(a) != len(b):
        return False
    for ra, rb in zip(a, b):
        for x, y in zip(ra, rb):
            if isinstance(x, float) and isinstance(y, float):
                if not math.isclose(x, y, rel_tol=1e-12, abs_tol=1e-9):
                    return False
            elif x != y:
                return False
    return True


@pytest.mark.parametrize("name", list(SHOP_QUERIES))
def test_shop_tasks_as_queries_give_the_hand_written_label_tables(shop, name):
    spec, con = shop
    task = spec.tasks[name]
    compiled = compile_query(SHOP_QUERIES[name], spec, warehouse_columns(con, spec))
    assert (compiled.type, compiled.entity_table, compiled.target_table, compiled.horizon) == \
        (task.type, task.entity_table, task.target_table, task.horizon)
    as_query = dataclasses.replace(task, name=f"{name}_query", label_sql=compiled.label_sql,
                                   entity_sql=compiled.entity_sql)
    hand = build_task_table(con, spec, task)
    mine = build_task_table(con, spec, as_query)
    assert hand["live_entities"] == mine["live_entities"] > 0
    assert set(hand["splits"]) == set(mine["splits"]) == {"train", "val", "test"}
    for suffix in ("", "_live"):
        expected, got = _rows(con, f"task_{name}{suffix}"), _rows(con, f"task_{name}_query{suffix}")
        assert len(expected) > 0
        assert _same(expected, got), f"{name}{suffix}: {len(expected)} vs {len(got)} rows"


def test_ltv_needs_coalesce_to_keep_customers_who_buy_nothing(shop):
    """SUM over an empty window is NULL and a NULL label is no example: the bare SUM keeps
    only the buyers, COALESCE(..., 0) keeps everyone the hand-written SQL keeps."""
    spec, con = shop
    bare = compile_query(SHOP_QUERIES["customer_ltv"].replace("COALESCE(", "").replace(", 0) FOR",
                                                             " FOR"), spec)
    task = spec.tasks["customer_ltv"]
    build_task_table(con, spec, dataclasses.replace(task, name="ltv_bare", label_sql=bare.label_sql))
    build_task_table(con, spec, task)
    counts = "SELECT COUNT(*), COUNT(*) FILTER (label = 0) FROM "
    n_bare, zero_bare = con.execute(counts + "task_ltv_bare").fetchone()
    n_all, zero_all = con.execute(counts + "task_customer_ltv").fetchone()
    assert zero_bare == 0 and zero_all > 0 and n_bare == n_all - zero_all


def test_spec_fields_make_a_valid_task():
    """The lead's integration: a task's `query:` expands to the keys a spec spells out."""
    raw = {"name": "shop", "source": {"kind": "duckdb", "path": "x.duckdb"},
           "tables": {"customers": {"primary_key": "customer_id", "time_column": "signup_at"},
                      "products": {"primary_key": "product_id"},
                      "orders": {"primary_key": "order_id", "time_column": "ordered_at",
                                 "foreign_keys": {"customer_id": "customers",
                                                  "product_id": "products"}}}}
    tables = parse_spec(raw).tables
    for text, ttype in [(SHOP_QUERIES["customer_churn"], "binary_classification"),
                        ("PREDICT LIST_DISTINCT(orders.product_id, 0, 36, hours) RANK TOP 5 "
                         "FOR EACH customers.customer_id", "link_prediction")]:
        fields = compile_query(text, tables).spec_fields()
        task = {**fields, "val_cutoff": "latest - 60d", "test_cutoff": "latest - 30d"}
        spec = parse_spec({**raw, "tasks": {"t": task}})
        assert spec.tasks["t"].type == ttype
    assert spec.tasks["t"].horizon == timedelta(hours=36) and spec.tasks["t"].target_table == "products"


def test_language_details():
    tables = parse_spec({"name": "s", "source": {"kind": "duckdb", "path": "x"}, "tables": {
        "order": {"primary_key": "id", "time_column": "at"},
        "line items": {"time_column": "at", "foreign_keys": {"order id": "order"}}}}).tables
    # keywords in any case, quoted names (a keyword, a space), weeks, a window after 0
    c = compile_query('predict count("line items".*, 1, 2, weeks) > 0 for each "order".id', tables)
    assert c.horizon == timedelta(weeks=2) and c.type == "binary_classification"
    assert all(s in c.label_sql for s in ('"line items"', "INTERVAL 7 DAY", "INTERVAL 14 DAY"))
    c = compile_query('PREDICT AVG("line items".x, 7, 37, days) FOR EACH "order".id', tables)
    assert c.horizon == timedelta(days=37) and c.type == "regression"  # no label reaches validation
    parsed = parse_query("PREDICT CLASSIFY LAST(a.b, 0, 1, hours) FOR EACH a.(k, j) "
                         "WHERE NOT a.x IS NULL")
    assert parsed.kind == "classify" and parsed.entity_keys == ("k", "j")


# -- (b) the property ------------------------------------------------------------------------

BASE = datetime(2024, 1, 1)
CATEGORIES = ["a", "b", "ab", "ba"]
UNIT_HOURS = {"days": 24, "hours": 1}


@dataclass
class World:
    """A random shop: ent <- mid <- leaf -> look, ent -> grp (mid may hold two keys into ent)."""

    timed: dict[str, bool]
    helper: bool
    leaf_pk: bool
    rows: dict[str, list[dict]]
    cutoffs: list[datetime]

    def schema(self) -> dict[str, dict[str, str]]:
        cols = {"ent": {"ent_id": "BIGINT", "grp_id": "BIGINT", "x": "BIGINT", "cat": "VARCHAR"},
                "grp": {"grp_id": "BIGINT", "g": "BIGINT"},
                "mid": {"mid_id": "BIGINT", "owner": "BIGINT", "v": "BIGINT"},
                "leaf": {"mid_id": "BIGINT", "look_id": "BIGINT", "w": "BIGINT", "s": "VARCHAR"},
                "look": {"look_id": "BIGINT", "price": "BIGINT"}}
        if self.helper:
            cols["mid"]["helper"] = "BIGINT"
        if self.leaf_pk:
            cols["leaf"] = {"leaf_id": "BIGINT", **cols["leaf"]}
        for t, on in self.timed.items():
            if on:
                cols[t]["t"] = "TIMESTAMP"
        return cols

    def spec(self):
        mid_fks = {"owner": "ent", **({"helper": "ent"} if self.helper else {})}
        tables = {"ent": {"primary_key": "ent_id", "foreign_keys": {"grp_id": "grp"}},
                  "grp": {"primary_key": "grp_id"},
                  "mid": {"primary_key": "mid_id", "foreign_keys": mid_fks},
                  "leaf": {"foreign_keys": {"mid_id": "mid", "look_id": "look"},
                           **({"primary_key": "leaf_id"} if self.leaf_pk else {})},
                  "look": {"primary_key": "look_id"}}
        for t, on in self.timed.items():
            if on:
                tables[t]["time_column"] = "t"
        return parse_spec({"name": "w", "source": {"kind": "duckdb", "path": "x"}, "tables": tables})

    def load(self, con) -> None:
        for name, cols in self.schema().items():
            columns = ", ".join(f"{c} {t}" for c, t in cols.items())
            con.execute(f"CREATE OR REPLACE TABLE {name} ({columns})")
            if self.rows[name]:
                con.executemany(f"INSERT INTO {name} VALUES ({', '.join('?' for _ in cols)})",
                                [[r[c] for c in cols] for r in self.rows[name]])

    def frame(self, name: str) -> pd.DataFrame:
        cols = self.schema()[name]
        df = pd.DataFrame(self.rows[name], columns=list(cols))
        for c, t in cols.items():
            df[c] = df[c].astype({"BIGINT": "Int64", "VARCHAR": "string",
                                  "TIMESTAMP": "datetime64[us]"}[t])
        return df.rename(columns={c: f"{name}.{c}" for c in cols})


@st.composite
def worlds(draw) -> World:
    """Flags and sizes from hypothesis, rows from a seeded generator: times on a half-day
    grid over two weeks and cutoffs at midnight, so that ties and rows exactly on window
    boundaries are common; about one value in six is NULL."""
    timed = {"ent": draw(st.booleans()), "grp": draw(st.booleans()), "mid": True,
             "leaf": draw(st.booleans()), "look": draw(st.booleans())}
    helper, leaf_pk = draw(st.booleans()), draw(st.booleans())
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))
    n_ent, n_grp, n_look = rng.randint(1, 6), rng.randint(1, 3), rng.randint(1, 4)
    n_mid, n_leaf = rng.choice([0] + [10, 20, 30] * 4), rng.randint(0, 40)

    def num():
        return None if rng.random() < 0.15 else rng.randint(-3, 5)

    def cat():
        return None if rng.random() < 0.15 else rng.choice(CATEGORIES)

    def time(last=12):
        return BASE + timedelta(days=rng.randint(0, last), hours=rng.choice([0, 0, 12]))

    def maybe(n):
        return None if rng.random() < 0.1 else rng.randint(1, n)

    rows = {
        "ent": [{"ent_id": i, "grp_id": maybe(n_grp), "x": num(), "cat": cat(), "t": time(8)}
                for i in range(1, n_ent + 1)],
        "grp": [{"grp_id": i, "g": num(), "t": time()} for i in range(1, n_grp + 1)],
        "mid": [{"mid_id": i, "owner": maybe(n_ent), "helper": rng.randint(1, n_ent), "v": num(),
                 "t": time()} for i in range(1, n_mid + 1)],
        "leaf": [{"leaf_id": i, "mid_id": rng.randint(1, n_mid), "look_id": maybe(n_look),
                  "w": num(), "s": cat(), "t": time()} for i in range(1, (n_leaf if n_mid else 0) + 1)],
        "look": [{"look_id": i, "price": num(), "t": time()} for i in range(1, n_look + 1)],
    }
    days = rng.sample(range(3, 11), rng.randint(1, 2))
    return World(timed, helper, leaf_pk, rows, sorted(BASE + timedelta(days=d) for d in days))


# A query is written as nested tuples, rendered to text for the compiler and evaluated
# directly by the oracle:
#   ("col", table, column) ("num", n) ("str", s) ("bin", op, a, b) ("not", a)
#   ("isnull", a) ("in", a, values) ("like", a, pattern) ("coalesce", a, b)
#   ("agg", func, table, via, arg, filter, window)   arg "*" or an expression
ROW_COLUMNS = {"mid": ["mid.v", "ent.x"], "leaf": ["leaf.w", "mid.v", "look.price", "ent.x"],
               "grp": ["grp.g", "ent.x"]}


def numbers(draw, cols, lead=False):
    """A number from `cols`; `lead`: it starts with the aggregated table's column (cols[0]),
    since an aggregate runs over the first table it names."""
    col = ("col", *(cols[0] if lead else draw(st.sampled_from(cols))).split("."))
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return col
    op = draw(st.sampled_from(["+", "-", "*"]))
    if kind == 1:
        other = ("col", *draw(st.sampled_from(cols)).split("."))
    else:
        other = ("num", draw(st.integers(-2, 3)))
    return ("bin", op, col, other)


def row_condition(draw, cols, depth=0, lead=False):
    kind = 0 if lead else draw(st.integers(0, 3 if depth == 0 else 1))
    if kind == 0:
        return ("bin", draw(st.sampled_from(["=", "<>", "<", "<=", ">", ">="])),
                numbers(draw, cols, lead), ("num", draw(st.integers(-2, 4))))
    if kind == 1:
        return ("isnull", ("col", *draw(st.sampled_from(cols)).split(".")))
    if kind == 2:
        return ("not", row_condition(draw, cols, depth + 1))
    return ("bin", draw(st.sampled_from(["AND", "OR"])), row_condition(draw, cols, depth + 1),
            row_condition(draw, cols, depth + 1))


def window(draw, role):
    unit = draw(st.sampled_from(["days", "hours"]))
    step = 1 if unit == "days" else 12
    if role == "target":
        start = draw(st.integers(0, 3)) * step
        return (start, start + draw(st.integers(2, 8)) * step, unit)
    if draw(st.integers(0, 3)) == 0:
        return None
    end = -draw(st.integers(0, 4)) * step
    return (end - draw(st.integers(1, 10)) * step, end, unit)


def aggregate(draw, world, role, funcs, truth=True):
    tables = ["mid", "leaf"] + (["grp"] if world.timed["grp"] or role == "condition" else [])
    table = draw(st.sampled_from(tables))
    via = draw(st.sampled_from(["owner", "helper"])) if world.helper and table != "grp" else None
    func = draw(st.sampled_from(funcs))
    cols = ROW_COLUMNS[table]
    if func == "COUNT" and draw(st.booleans()):
        arg = "*"
    elif (func == "SUM" or func == "MAX" and truth) and draw(st.integers(0, 3)) == 0:
        arg = row_condition(draw, cols, 1, lead=True)
    else:
        arg = numbers(draw, cols, lead=True)
    filt = row_condition(draw, cols) if draw(st.booleans()) else None
    win = window(draw, role) if world.timed[table if table == "grp" else "mid"] else None
    return ("agg", func, table, via, arg, filt, win)


NUMERIC = ["COUNT", "COUNT_DISTINCT", "SUM", "AVG", "MIN", "MAX", "FIRST", "LAST"]


def condition(draw, world, depth=0):
    kind = draw(st.integers(0, 6 if depth == 0 else 5))
    if kind in (0, 1):
        agg = aggregate(draw, world, "condition", NUMERIC, truth=False)
        op = draw(st.sampled_from([">", ">=", "=", "<"]))
        return ("bin", op, agg, ("num", draw(st.integers(-1, 3))))
    if kind == 2:
        op = draw(st.sampled_from([">", "<=", "<>"]))
        return ("bin", op, ("col", "ent", "x"), ("num", draw(st.integers(-1, 3))))
    if kind == 3:
        values = draw(st.lists(st.sampled_from(["a", "b", "ab"]), min_size=1, max_size=2))
        return ("in", ("col", "ent", "cat"), tuple(values))
    if kind == 4:
        return ("like", ("col", "ent", "cat"), draw(st.sampled_from(["a%", "%a", "%b%", "b"])))
    if kind == 5:
        return ("bin", ">", ("col", "grp", "g"), ("num", draw(st.integers(-1, 3))))
    return ("bin", draw(st.sampled_from(["AND", "OR"])), ("not", condition(draw, world, 1))
            if draw(st.booleans()) else condition(draw, world, 1), condition(draw, world, 1))


@st.composite
def cases(draw):
    world = draw(worlds())
    kind = draw(st.sampled_from(["compare", "value", "coalesce", "difference", "classify", "rank"]))
    if kind == "compare":
        target = ("bin", draw(st.sampled_from(["=", ">", ">=", "<"])),
                  aggregate(draw, world, "target", NUMERIC, truth=False),
                  ("num", draw(st.integers(0, 3))))
    elif kind == "value":
        target = aggregate(draw, world, "target", NUMERIC)
    elif kind == "coalesce":
        target = ("coalesce", aggregate(draw, world, "target", NUMERIC[2:], truth=False), ("num", 0))
    elif kind == "difference":
        target = ("bin", "-", aggregate(draw, world, "target", ["COUNT", "SUM"]),
                  aggregate(draw, world, "target", ["COUNT", "MAX"], truth=False))
    else:
        via = draw(st.sampled_from(["owner", "helper"])) if world.helper else None
        column = "s" if kind == "classify" else "look_id"
        func = (draw(st.sampled_from(["FIRST", "LAST", "MIN", "MAX"])) if kind == "classify"
                else "LIST_DISTINCT")
        filt = row_condition(draw, ROW_COLUMNS["leaf"]) if draw(st.booleans()) else None
        target = ("agg", func, "leaf", via, ("col", "leaf", column), filt, window(draw, "target"))
    cond = condition(draw, world) if draw(st.integers(0, 3)) else None
    return world, kind, target, cond


def render(node) -> str:
    tag = node[0]
    if tag == "col":
        return f"{node[1]}.{node[2]}"
    if tag == "num":
        return str(node[1])
    if tag == "bin":
        return f"({render(node[2])} {node[1]} {render(node[3])})"
    if tag == "not":
        return f"NOT {render(node[1])}"
    if tag == "isnull":
        return f"{render(node[1])} IS NULL"
    if tag == "in":
        return f"{render(node[1])} IN ({', '.join(repr(v) for v in node[2])})"
    if tag == "like":
        return f"{render(node[1])} LIKE '{node[2]}'"
    if tag == "coalesce":
        return f"COALESCE({render(node[1])}, {render(node[2])})"
    _, func, table, via, arg, filt, win = node
    text = f"{table}.*" if arg == "*" else render(arg)
    if via:
        text += f" VIA mid.{via}"
    if filt is not None:
        text += f" WHERE {render(filt)}"
    if win is not None:
        text += f", {win[0]}, {win[1]}, {win[2]}"
    return f"{func}({text})"


def query_text(kind, target, cond) -> str:
    head = {"classify": "CLASSIFY ", "rank": ""}.get(kind, "")
    tail = " RANK TOP 5" if kind == "rank" else ""
    where = f" WHERE {render(cond)}" if cond is not None else ""
    return f"PREDICT {head}{render(target)}{tail} FOR EACH ent.ent_id{where}"


def value(node, env):
    """The value of `node` in one row (`env`: 'table.column' -> value), NULL as None."""
    tag = node[0]
    if tag == "col":
        return env[f"{node[1]}.{node[2]}"]
    if tag in ("num", "str"):
        return node[1]
    if tag == "agg":
        return env[id(node)]
    if tag == "not":
        v = value(node[1], env)
        return None if v is None else not v
    if tag == "isnull":
        return value(node[1], env) is None
    if tag == "coalesce":
        v = value(node[1], env)
        return v if v is not None else value(node[2], env)
    if tag in ("in", "like"):
        v = value(node[1], env)
        if v is None:
            return None
        if tag == "in":
            return v in node[2]
        return re.fullmatch(node[2].replace("%", ".*"), v) is not None
    op, a, b = node[1], value(node[2], env), value(node[3], env)
    if op == "AND":
        return False if False in (a, b) else (None if None in (a, b) else True)
    if op == "OR":
        return True if True in (a, b) else (None if None in (a, b) else False)
    if a is None or b is None:
        return None
    return {"+": lambda: a + b, "-": lambda: a - b, "*": lambda: a * b, "=": lambda: a == b,
            "<>": lambda: a != b, "<": lambda: a < b, "<=": lambda: a <= b, ">": lambda: a > b,
            ">=": lambda: a >= b}[op]()


def records(df: pd.DataFrame) -> list[dict]:
    out = df.astype(object).where(df.notna(), None).to_dict("records")
    for r in out:
        for k, v in r.items():
            if isinstance(v, pd.Timestamp):
                r[k] = v.to_pydatetime()
    return out


def path_rows(world: World, node, cutoffs: pd.DataFrame):
    """The rows an aggregate reads, per cutoff: (records, key column, time column the window
    is on, primary key column of the aggregated table)."""
    _, func, table, via, arg, filt, win = node
    ent = world.frame("ent")
    if table == "grp":
        df = ent.merge(world.frame("grp"), left_on="ent.grp_id", right_on="grp.grp_id")
        key, path = "ent.ent_id", ["grp"]
    else:
        df, key, path = world.frame("mid"), f"mid.{via or 'owner'}", ["mid"]
        if table == "leaf":
            df = world.frame("leaf").merge(df, left_on="leaf.mid_id", right_on="mid.mid_id")
            df = df.merge(world.frame("look"), how="left", left_on="leaf.look_id",
                          right_on="look.look_id")
            path = ["mid", "leaf"]
        df = df.merge(ent, left_on=key, right_on="ent.ent_id")
    df = df.merge(cutoffs, how="cross")
    hours = UNIT_HOURS[win[2]] if win else 24
    end = win[1] if win else 0
    visible = df["cutoff"] + pd.Timedelta(hours=max(end, 0) * hours)
    timed = [t for t in path if world.timed[t]]
    wtable = timed[-1] if timed else None
    keep = pd.Series(True, index=df.index)
    for t in timed:
        if t == wtable and win is not None:
            keep &= (df[f"{t}.t"] > df["cutoff"] + pd.Timedelta(hours=win[0] * hours)) & \
                    (df[f"{t}.t"] <= df["cutoff"] + pd.Timedelta(hours=win[1] * hours))
        else:
            keep &= df[f"{t}.t"] <= visible
    if table == "leaf" and world.timed["look"]:
        df.loc[~(df["look.t"] <= visible).fillna(False).astype(bool), "look.price"] = pd.NA
    rows = [r for r in records(df[keep]) if filt is None or value(filt, r) is True]
    pk = {"mid": "mid.mid_id", "grp": "grp.grp_id",
          "leaf": "leaf.leaf_id" if world.leaf_pk else None}[table]
    return rows, key, (f"{wtable}.t" if wtable else None), pk


def fold(node, rows, tcol, pk):
    func, arg = node[1], node[4]
    if func == "COUNT" and arg == "*":
        return len(rows)
    vals = [value(arg, r) for r in rows]
    present = [int(v) if isinstance(v, bool) and func in ("SUM", "AVG") else v
               for v in vals if v is not None]
    if func == "COUNT":
        return len(present)
    if func == "COUNT_DISTINCT":
        return len(set(present))
    if func in ("FIRST", "LAST"):
        def order(i):
            tie = (rows[i][pk],) if pk else (vals[i] is None, vals[i] if vals[i] is not None else 0)
            return ((rows[i][tcol],) if tcol else ()) + tie
        ranked = sorted(range(len(rows)), key=order)
        return vals[ranked[0 if func == "FIRST" else -1]] if ranked else None
    if not present:
        return None
    return {"SUM": sum, "MIN": min, "MAX": max, "AVG": lambda v: sum(v) / len(v)}[func](present)


def aggregates(node):
    if isinstance(node, tuple):
        if node[0] == "agg":
            yield node
        else:
            for child in node[1:]:
                yield from aggregates(child)


def oracle(world: World, kind, target, cond):
    """Label rows and live entities of the definition, evaluated without the compiler."""
    cutoffs = pd.DataFrame({"cutoff": pd.Series(world.cutoffs, dtype="datetime64[us]")})
    ent = world.frame("ent").merge(cutoffs, how="cross")
    if world.timed["ent"]:
        ent = ent[ent["ent.t"] <= ent["cutoff"]]
    ent = ent.merge(world.frame("grp"), how="left", left_on="ent.grp_id", right_on="grp.grp_id")
    if world.timed["grp"]:
        ent.loc[~(ent["grp.t"] <= ent["cutoff"]).fillna(False).astype(bool), "grp.g"] = pd.NA
    entities = records(ent)
    agg_values = {}
    for node in list(aggregates(target)) + list(aggregates(cond)):
        rows, key, tcol, pk = path_rows(world, node, cutoffs)
        groups: dict = {}
        for r in rows:
            groups.setdefault((r[key], r["cutoff"]), []).append(r)
        agg_values[id(node)] = (node, groups, tcol, pk)
    labels, live = [], []
    for e in entities:
        env = dict(e)
        cell = (e["ent.ent_id"], e["cutoff"])
        for ident, (node, groups, tcol, pk) in agg_values.items():
            if node[1] == "LIST_DISTINCT":
                continue
            empty = 0 if node[1] in ("COUNT", "COUNT_DISTINCT") else None
            env[ident] = fold(node, groups[cell], tcol, pk) if cell in groups else empty
        if cond is not None and value(cond, env) is not True:
            continue
        live.append(cell)
        if kind == "rank":
            _, groups, _, _ = agg_values[id(target)]
            targets = {value(target[4], r) for r in groups.get(cell, [])} - {None}
            labels += [cell + (t,) for t in sorted(targets)]
            continue
        v = value(target, env)
        if v is None:
            continue
        if kind == "classify":
            classes = sorted({r["s"] for r in world.rows["leaf"]} - {None})
            v = classes.index(v)
        elif isinstance(v, bool):
            v = int(v)
        else:
            v = float(v)
        labels.append(cell + (v,))
    return sorted(labels), sorted(live)


def run(con, sql, cutoffs, horizon):
    con.execute("CREATE OR REPLACE TEMP TABLE cutoffs (cutoff TIMESTAMP, window_end TIMESTAMP)")
    con.executemany("INSERT INTO cutoffs VALUES (?, ?)", [(c, c + horizon) for c in cutoffs])
    return sorted(con.execute(sql).fetchall())


def perturb_after(world: World, cutoff: datetime, rng: random.Random) -> World:
    """Every non-key column of every row after `cutoff` changed, and new rows after it."""
    rows = {t: [dict(r) for r in rs] for t, rs in world.rows.items()}
    keys = {"ent": "ent_id", "grp": "grp_id", "mid": "mid_id", "leaf": "leaf_id", "look": "look_id"}
    for t, rs in rows.items():
        if not world.timed[t]:
            continue
        for r in rs:
            if r["t"] > cutoff:
                for c in r:
                    if c not in (keys[t], "t"):
                        text = c in ("cat", "s")
                        r[c] = rng.choice(["a", "zz", None] if text else [None, 7, -5, 1])
                if t == "mid":
                    r["owner"] = r["helper"] = rng.randint(1, len(rows["ent"]))
                if t == "leaf":
                    r["mid_id"] = rng.randint(1, len(rows["mid"]))
    later = cutoff + timedelta(hours=rng.choice([1, 12, 24 * 9]))
    if world.timed["mid"]:
        rows["mid"].append({"mid_id": len(rows["mid"]) + 1, "owner": 1, "helper": 1, "v": 9, "t": later})
    if world.timed["leaf"] and rows["mid"]:
        rows["leaf"].append({"leaf_id": len(rows["leaf"]) + 1, "mid_id": 1, "look_id": 1, "w": 9,
                             "s": "new", "t": later})
    return dataclasses.replace(world, rows=rows)


@settings(max_examples=120, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=cases(), seed=st.integers(0, 2**16))
def test_compiled_labels_equal_the_definition_and_conditions_read_only_the_past(case, seed):
    world, kind, target, cond = case
    text = query_text(kind, target, cond)
    con = duckdb.connect()
    world.load(con)
    spec = world.spec()
    compiled = compile_query(text, spec, warehouse_columns(con, spec))
    expected_type = {"classify": "multiclass_classification", "rank": "link_prediction"}.get(kind)
    if expected_type:
        assert compiled.type == expected_type
    labels, live = oracle(world, kind, target, cond)
    values = len({r[-1] for r in labels})
    event(f"{kind}: " + ("no labels", "one label value", "several label values")[min(values, 2)])
    got = run(con, compiled.label_sql, world.cutoffs, compiled.horizon)
    assert _same(labels, got), f"{text}\nexpected {labels}\ngot      {got}"
    assert run(con, compiled.entity_sql, world.cutoffs, compiled.horizon) == live, text

    # no condition reads a row after the cutoff: change every later row, add later rows
    cutoff = world.cutoffs[0]
    before = run(con, compiled.entity_sql, [cutoff], compiled.horizon)
    changed = perturb_after(world, cutoff, random.Random(seed))
    con2 = duckdb.connect()
    changed.load(con2)
    assert run(con2, compiled.entity_sql, [cutoff], compiled.horizon) == before, text
    con.close()
    con2.close()


# -- (c) errors --------------------------------------------------------------------------------

ERR_TABLES = {
    "customers": {"primary_key": "customer_id", "time_column": "signup_at"},
    "orders": {"primary_key": "order_id", "time_column": "ordered_at",
               "foreign_keys": {"customer_id": "customers"}, "ignore_columns": ["status"]},
    "order_items": {"time_column": "ordered_at",
                    "foreign_keys": {"order_id": "orders", "product_id": "products"}},
    "products": {"primary_key": "product_id", "time_column": "created_at"},
    "notes": {"primary_key": "note_id", "foreign_keys": {"customer_id": "customers"}},
    "airports": {"primary_key": "code"},
    "flights": {"primary_key": "flight_id", "time_column": "departed_at",
                "foreign_keys": {"origin": "airports", "dest": "airports"}},
}
ERR_COLUMNS = {
    "customers": {"customer_id": "BIGINT", "signup_at": "TIMESTAMP", "age": "BIGINT",
                  "country": "VARCHAR", "email": "VARCHAR"},
    "orders": {"order_id": "BIGINT", "customer_id": "BIGINT", "ordered_at": "TIMESTAMP",
               "amount": "DOUBLE", "channel": "VARCHAR", "status": "VARCHAR"},
    "order_items": {"order_id": "BIGINT", "product_id": "BIGINT", "ordered_at": "TIMESTAMP",
                    "quantity": "BIGINT"},
    "products": {"product_id": "BIGINT", "created_at": "TIMESTAMP", "price": "DOUBLE"},
    "notes": {"note_id": "BIGINT", "customer_id": "BIGINT", "text": "VARCHAR"},
    "airports": {"code": "VARCHAR", "elevation": "DOUBLE"},
    "flights": {"flight_id": "BIGINT", "origin": "VARCHAR", "dest": "VARCHAR",
                "departed_at": "TIMESTAMP", "delay": "DOUBLE"},
}
C = "FOR EACH customers.customer_id"
COUNT30 = "COUNT(orders.*, 0, 30, days)"
ERRORS = [  # query, where the error points (the first occurrence of this text), message part
    (f"PREDICT {COUNT30} FOR customers.customer_id", "customers.customer_id",
     "unexpected 'customers'; expected EACH"),
    (f"PREDICT {COUNT30} {C} WHERE #", "#", "unexpected character '#'"),
    (f"PREDICT {COUNT30} FOR EACH", None, "the query ends too early; expected a name"),
    (f"PREDICT COUNT(ordrs.*, 0, 30, days) {C}", "ordrs", "no table 'ordrs'; did you mean orders?"),
    (f"PREDICT SUM(orders.amout, 0, 30, days) {C}", "orders.amout",
     "orders has no column 'amout'; did you mean amount?"),
    (f"PREDICT CONT(orders.*, 0, 30, days) {C}", "CONT", "no function 'CONT'"),
    (f"PREDICT {COUNT30} {C}", None, None),  # compiles: the list's sanity check
    (f"PREDICT COUNT(flights.*, 0, 30, days) {C}", "flights.*",
     "no foreign-key path of one or two steps from customers to flights"),
    ("PREDICT COUNT(flights.*, 0, 7, days) FOR EACH airports.code", "flights.*",
     "flights is linked to airports in 2 ways (flights.origin; flights.dest); name one inside the "
     "aggregate, e.g. COUNT(flights.* VIA flights.origin, ...)"),
    ("PREDICT COUNT(flights.* VIA flights.orign, 0, 7, days) FOR EACH airports.code", "flights.orign",
     "flights has no foreign key 'orign' (its foreign keys: origin, dest); did you mean origin?"),
    ("PREDICT AVG(flights.delay * airports.elevation VIA flights.origin, 0, 7, days) "
     "FOR EACH airports.code",
     None, None),
    ("PREDICT COUNT(orders.*, 0, 7, days) > 0 FOR EACH orders.order_id", "orders.*",
     "COUNT over orders, the entity itself"),
    (f"PREDICT COUNT(orders.*, 30, 0, days) {C}", "30, 0",
     "the window (30, 0, days) ends before it starts; write (start, end) with start < end, "
     "e.g. (0, 30, days)"),
    (f"PREDICT COUNT(orders.*, 5, 5, days) {C}", "5, 5", "the window (5, 5, days) is empty"),
    (f"PREDICT {COUNT30} {C} WHERE COUNT(orders.*, -10, 10, days) > 0", "-10, 10",
     "the window (-10, 10, days) reaches after the cutoff; a condition may only look at the past "
     "(end <= 0), or it would leak the label"),
    (f"PREDICT COUNT(orders.*, -30, 30, days) {C}", "-30, 30",
     "the target's window (-30, 30, days) starts before the cutoff"),
    (f"PREDICT COUNT(orders.*) {C}", "COUNT(orders",
     "the target's COUNT needs a window after the cutoff"),
    (f"PREDICT customers.age {C}", "customers.age", "the target needs an aggregate with a window"),
    (f"PREDICT COUNT(orders.*, 0, 1, months) {C}", "months",
     "the window's unit must be hours, days or weeks, not 'months'; months and years have no "
     "fixed length"),
    (f"PREDICT COUNT(orders.*, 0, 1.5, days) {C}", "1.5", "the window's end must be a whole number"),
    (f"PREDICT COUNT(orders.*, 0, 30) {C}", "0, 30", "COUNT's window is three values"),
    (f"PREDICT SUM(orders.channel, 0, 30, days) {C}", "orders.channel",
     "SUM needs numbers, but orders.channel is text; COUNT or COUNT_DISTINCT count it, "
     "CLASSIFY LAST(...) predicts it"),
    (f"PREDICT AVG(orders.*, 0, 30, days) {C}", "orders.*", "AVG needs a value"),
    (f"PREDICT LAST(orders.channel, 0, 30, days) {C}", "LAST(", "the target is text"),
    (f"PREDICT {COUNT30} {C} WHERE LAST(orders.status, -30, 0, days) = 'late'", "orders.status",
     "orders.status is in the spec's ignore_columns"),
    (f"PREDICT {COUNT30} FOR EACH customers.email", "customers.email",
     "FOR EACH names a table by its primary key: write customers.customer_id (not email)"),
    (f"PREDICT SUM(orders.amount WHERE COUNT(orders.*) > 1, 0, 30, days) {C}", "COUNT(orders.*) > 1",
     "COUNT inside another aggregate: aggregates cannot be nested"),
    (f"PREDICT COUNT(notes.*, 0, 30, days) {C}", "0, 30",
     "no table on the path customers -> notes has a time_column"),
    (f"PREDICT {COUNT30} {C} WHERE COUNT(notes.*) > 0", None, None),  # static rows need no window
    (f"PREDICT LIST_DISTINCT(order_items.product_id, 0, 30, days) {C}", "LIST_DISTINCT",
     "LIST_DISTINCT makes a link prediction task: add RANK TOP k"),
    (f"PREDICT {COUNT30} RANK TOP 10 {C}", "COUNT", "RANK TOP ranks the keys of LIST_DISTINCT"),
    (f"PREDICT LIST_DISTINCT(order_items.quantity, 0, 30, days) RANK TOP 10 {C}", "order_items.quantity",
     "LIST_DISTINCT needs a key: order_items.quantity is neither a foreign key nor "
     "the primary key of order_items"),
    (f"PREDICT LIST_DISTINCT(order_items.product_id, 0, 30, days) RANK TOP 0 {C}", "0 FOR",
     "RANK TOP needs a whole number of at least 1"),
    (f"PREDICT CLASSIFY {COUNT30} {C}", "COUNT", "CLASSIFY predicts a category"),
    (f"PREDICT CLASSIFY LAST(orders.amount, 0, 30, days) {C}", "LAST",
     "CLASSIFY needs a category, but orders.amount is a continuous number"),
    (f"PREDICT {COUNT30} {C} WHERE customers.age", "customers.age",
     "the WHERE condition must be true or false, but customers.age is a number"),
    (f"PREDICT {COUNT30} {C} WHERE customers.age = 'old'", "customers.age",
     "= compares customers.age, which is a number, with 'old', which is text"),
    (f"PREDICT SUM(amount, 0, 30, days) {C}", "amount", "'amount' needs its table"),
    (f"PREDICT {COUNT30} {C} WHERE products.price > 3", "products.price",
     "outside an aggregate only the columns of customers and of the tables it references can be used"),
    (f"PREDICT {COUNT30} {C} WHERE customers.country LIKE 7", "7", "unexpected '7'; expected a 'text'"),
    (f"PREDICT {COUNT30}\n{C}\nWHERE COUNT(orders.*, 0, 9, days) > 0", "0, 9",
     "the window (0, 9, days) reaches after the cutoff"),
]


@pytest.mark.parametrize("text,at,message", ERRORS, ids=[f"e{i}" for i in range(len(ERRORS))])
def test_errors_are_one_line_in_the_users_terms(text, at, message):
    tables = parse_spec({"name": "e", "source": {"kind": "duckdb", "path": "x"},
                         "tables": ERR_TABLES}).tables
    if message is None:
        compile_query(text, tables, ERR_COLUMNS)
        return
    with pytest.raises(QueryError) as info:
        compile_query(text, tables, ERR_COLUMNS)
    err = info.value
    assert "\n" not in str(err)
    assert message in str(err), str(err)
    pos = text.index(at) if at is not None else len(text)
    line = text.count("\n", 0, pos) + 1
    column = pos - (text.rfind("\n", 0, pos) + 1) + 1
    assert (err.line, err.column) == (line, column), str(err)
    where = f"line {line}, column {column}" if "\n" in text else f"column {column}"
    assert str(err).startswith(f"query, {where}: "), str(err)
