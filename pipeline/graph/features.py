"""Column typing and feature encoding: a warehouse table -> x_num, x_cat, x_text, x_ts.

Two steps, so that validation and test rows never shape an encoder:

1. `fit_encoders` infers each column's semantic type from DuckDB statistics (types,
   distinct counts, string lengths, words per value; `TableSpec.column_types` overrides)
   and fits the statistics (medians, IQRs, vocabularies) on the rows with
   time <= fit_cutoff only (static tables: all rows). The result is plain data
   (`Encoders.to_dict()` is JSON) so it can be saved, logged and compared.
2. `encode_table` applies the frozen encoders to every row. DuckDB computes the
   per-value arithmetic in parallel; its Arrow batches are copied once, straight into
   preallocated row-major arrays, which become tensors without another copy.

Encodings (the graph contract's blocks):

- numeric: x' = clip((x - median) / IQR, -clip, clip), 0 where missing, plus a 0/1
  missing indicator when the fitted rows had missing values (IQR = 0 falls back to the
  standard deviation, then to 1). Booleans are 0/1 numerics with the same indicator.
- categorical: code k in 1..K for the K most frequent values seen at least
  `min_frequency` times (K <= max_categories), 0 for null and out-of-vocabulary. A column
  with millions of distinct values is therefore a top-K categorical; the note says so.
- timestamp: epoch seconds as float64, NaN where null (the model makes them relative to
  the seed's cutoff).
- text: word n-gram counts hashed into `text_dim` buckets per column, log(1 + count),
  computed in DuckDB (split, unnest, md5 bucket, group by); or, when
  `FeatureConfig.sentence_model` names a local sentence-transformers model, its embedding.

Key columns, `__*` columns, the time column and `ignore_columns` are never features;
all-null and constant columns are dropped with the reason recorded in `Encoders`.
"""

from __future__ import annotations

import contextlib
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Iterator, NamedTuple

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from pipeline.data.spec import DatasetSpec, TableSpec
from pipeline.data.sqlutil import literal, q as quote

FEATURE_KINDS = ("numeric", "boolean", "categorical", "timestamp", "text")
ENCODERS_FORMAT = 1
BATCH_ROWS = 1 << 20

_INTEGER_TYPES = {"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT",
                  "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT", "UHUGEINT"}
_FLOAT_TYPES = {"FLOAT", "DOUBLE"}
_TIME_TYPES = {"TIMESTAMP", "TIMESTAMP WITH TIME ZONE", "DATE", "TIMESTAMP_S",
               "TIMESTAMP_MS", "TIMESTAMP_NS"}
# Unicode letters and digits make words; everything else separates them.
_WORD_SPLIT = r"[^\pL\pN]+"


@dataclass(frozen=True)
class FeatureConfig:
    """How columns are typed and encoded. Every field has a working default.

    Args:
        max_categories: at most this many values per categorical column (K above).
        min_frequency: a value enters a vocabulary only if it occurs this often among
            the fitted rows (in tables of fewer than 100 * min_frequency rows the bar is
            max(2, rows // 100), so small lookup tables keep their repeated values).
        text_dim: hash buckets per text column.
        ngram_range: (smallest, largest) word n-gram hashed for text, inclusive.
        clip: robust-scaled numerics are clipped to [-clip, clip].
        quantile_rows: medians and IQRs of tables with more fitted rows than this come
            from every k-th row by `__id` (k = ceil(rows / quantile_rows)): exact
            quantiles need a sort per column, and a million rows pin them down. The
            sample depends only on fitted rows, so later rows still cannot move it.
        text_min_words: a string column whose values average at least this many words
            is text rather than categorical.
        id_unique_ratio: a short string column with at least this fraction of distinct
            values (and `id_min_rows` values) is an identifier, not a feature.
        id_min_rows: below this many non-null values no column is called an identifier
            (in small tables every value is unique by chance).
        sentence_model: local path or name of a sentence-transformers model; when set,
            text columns are embedded with it instead of hashed (needs the
            `sentence_transformers` package and the model on disk).
        threads: DuckDB threads while fitting and encoding; None keeps the connection's.
    """

    max_categories: int = 1000
    min_frequency: int = 5
    text_dim: int = 64
    ngram_range: tuple[int, int] = (1, 2)
    clip: float = 5.0
    quantile_rows: int = 1_000_000
    text_min_words: float = 3.0
    id_unique_ratio: float = 0.95
    id_min_rows: int = 1000
    sentence_model: str | None = None
    threads: int | None = None

    def __post_init__(self) -> None:
        lo, hi = self.ngram_range
        if not 1 <= lo <= hi:
            raise ValueError(f"FeatureConfig.ngram_range {self.ngram_range}: need 1 <= low <= high")
        if min(self.max_categories, self.min_frequency, self.text_dim, self.quantile_rows) < 1:
            raise ValueError("FeatureConfig: max_categories, min_frequency, text_dim and "
                             "quantile_rows must be >= 1")

    def output_settings(self) -> dict:
        """The settings that change encoded values (threads only changes speed)."""
        out = asdict(self)
        out.pop("threads")
        out["ngram_range"] = list(self.ngram_range)
        return out


class ColumnType(NamedTuple):
    """The semantic type of one column (a SEMANTIC_TYPES name, or "dropped") and why."""

    kind: str
    reason: str


@dataclass
class ColumnEncoder:
    """A fitted encoder for one column: plain data, JSON-serializable."""

    name: str
    kind: str
    source_type: str
    reason: str
    center: float = 0.0
    scale: float = 1.0
    nan_indicator: bool = False
    vocabulary: list[str] = field(default_factory=list)
    text_dim: int = 0
    note: str = ""


@dataclass
class TableEncoders:
    table: str
    temporal: bool
    fit_rows: int
    columns: list[ColumnEncoder]
    dropped: dict[str, str]

    def of_kind(self, *kinds: str) -> list[ColumnEncoder]:
        return [c for c in self.columns if c.kind in kinds]


@dataclass
class Encoders:
    """Every table's fitted encoders plus the settings and cutoff they were fitted with."""

    fit_cutoff: str
    config: dict
    tables: dict[str, TableEncoders]
    format: int = ENCODERS_FORMAT

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> Encoders:
        if raw.get("format") != ENCODERS_FORMAT:
            raise ValueError(f"encoders format {raw.get('format')} is not {ENCODERS_FORMAT}; "
                             "refit them (rebuild the graph)")
        tables = {
            name: TableEncoders(
                table=t["table"], temporal=t["temporal"], fit_rows=t["fit_rows"],
                columns=[ColumnEncoder(**c) for c in t["columns"]], dropped=dict(t["dropped"]))
            for name, t in raw["tables"].items()
        }
        return cls(fit_cutoff=raw["fit_cutoff"], config=dict(raw["config"]), tables=tables)


def utc_naive(moment: datetime) -> datetime:
    """The warehouse keeps naive UTC timestamps; aware datetimes are converted to it."""
    if moment.tzinfo is not None:
        return moment.astimezone(timezone.utc).replace(tzinfo=None)
    return moment


def fit_filter(table: TableSpec, fit_cutoff: datetime) -> str:
    """SQL condition selecting the rows encoders may learn from.

    Rows with a NULL time count as always visible, like rows of static tables.
    """
    if not table.time_column:
        return "TRUE"
    cutoff = utc_naive(fit_cutoff).isoformat(sep=" ")
    col = quote(table.time_column)
    return f"({col} IS NULL OR {col} <= TIMESTAMP {literal(cutoff)})"


@contextlib.contextmanager
def duckdb_threads(con: duckdb.DuckDBPyConnection, threads: int | None) -> Iterator[None]:
    """Run a block with DuckDB's thread count set, then put the caller's setting back."""
    if threads is None:
        yield
        return
    before = con.execute("SELECT current_setting('threads')").fetchall()[0][0]
    con.execute(f"SET threads = {int(threads)}")
    try:
        yield
    finally:
        con.execute(f"SET threads = {int(before)}")


def table_columns(con: duckdb.DuckDBPyConnection, table: str) -> list[tuple[str, str]]:
    """(column, DuckDB type) of the clean warehouse table `main.<table>`, in order."""
    rows = con.execute(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_catalog = current_database() AND table_schema = 'main' AND table_name = ? "
        "ORDER BY ordinal_position", [table]).fetchall()
    if not rows:
        raise ValueError(f"{table}: no table main.{quote(table)} in the warehouse; extract it first")
    return [(str(c), str(t)) for c, t in rows]


def candidate_columns(table: TableSpec, columns: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The columns that may become features: never keys, `__*`, the time column or ignored."""
    never = set(table.key_columns) | set(table.ignore_columns)
    if table.time_column:
        never.add(table.time_column)
    return [(c, t) for c, t in columns if c not in never and not c.startswith("__")]


def _value_expr(col: str, source_type: str, kind: str) -> str:
    """SQL giving the column's values in the type that `kind` encodes."""
    c = quote(col)
    numeric_source = (source_type in _INTEGER_TYPES or source_type in _FLOAT_TYPES
                      or source_type.startswith("DECIMAL") or source_type == "BOOLEAN")
    if kind == "numeric":
        return f"CAST({c} AS DOUBLE)" if numeric_source else f"TRY_CAST({c} AS DOUBLE)"
    if kind == "boolean":
        inner = c if source_type == "BOOLEAN" else f"TRY_CAST({c} AS BOOLEAN)"
        return f"CAST({inner} AS DOUBLE)"
    if kind == "timestamp":
        if source_type == "TIMESTAMP WITH TIME ZONE":
            return c
        if source_type in _TIME_TYPES:
            return f"CAST({c} AS TIMESTAMP)"
        if source_type in _INTEGER_TYPES or source_type in _FLOAT_TYPES \
                or source_type.startswith("DECIMAL"):
            return f"to_timestamp(CAST({c} AS DOUBLE))"
        return f"TRY_CAST({c} AS TIMESTAMP)"
    return f"CAST({c} AS VARCHAR)"  # categorical, text


def _natural_kind(source_type: str) -> str | None:
    """The kind a column's DuckDB type suggests before looking at values (None: unsupported)."""
    if source_type == "BOOLEAN":
        return "boolean"
    if source_type in _INTEGER_TYPES or source_type in _FLOAT_TYPES or source_type.startswith("DECIMAL"):
        return "numeric"
    if source_type in _TIME_TYPES:
        return "timestamp"
    if source_type == "VARCHAR" or source_type.startswith("ENUM"):
        return "categorical"
    if source_type == "UUID":
        return "id"
    return None


def infer_types(con: duckdb.DuckDBPyConnection, table: TableSpec, fit_cutoff: datetime,
                config: FeatureConfig = FeatureConfig()) -> dict[str, ColumnType]:
    """The semantic type of every candidate column, from statistics of the fitted rows.

    Returns {column: ColumnType(kind, reason)} where kind is one of FEATURE_KINDS, "id"
    (an identifier: not a feature) or "dropped" (all null, constant, unsupported type).
    One scan of the table computes, per column: non-null count, min, max, approximate
    distinct count and, for strings, mean length and mean words per value.
    """
    cols = candidate_columns(table, table_columns(con, table.name))
    out: dict[str, ColumnType] = {}
    probes: list[tuple[str, str, str, str]] = []  # column, source type, kind, reason
    for col, stype in cols:
        override = table.column_types.get(col)
        natural = _natural_kind(stype)
        if override:
            probes.append((col, stype, override, f"column_types override: {override}"))
        elif natural is None:
            out[col] = ColumnType("dropped", f"unsupported DuckDB type {stype}; set "
                                  "column_types or ignore_columns for it")
        else:
            probes.append((col, stype, natural, f"DuckDB type {stype}"))
    if not probes:
        return out

    select = ["count(*)"]
    for col, stype, kind, _ in probes:
        e = _value_expr(col, stype, kind) if kind != "id" else quote(col)
        select += [f"count({e})", f"min({e}) = max({e})", f"approx_count_distinct({e})"]
        if kind == "numeric" and stype in _INTEGER_TYPES:
            select.append(f"min({e}) >= 0 AND max({e}) <= 1")
        else:
            select.append("NULL")
        if kind in ("categorical", "text"):
            select += [f"avg(length({e}))",
                       f"avg(length({e}) - length(replace({e}, ' ', '')) + 1)"]
        else:
            select += ["NULL", "NULL"]
    stats = con.execute(f"SELECT {', '.join(select)} FROM main.{quote(table.name)} "
                        f"WHERE {fit_filter(table, fit_cutoff)}").fetchall()[0]
    rows = int(stats[0])
    where = "rows up to fit_cutoff" if table.time_column else "rows"
    for i, (col, stype, kind, reason) in enumerate(probes):
        nn, constant, distinct, zero_one, mean_len, mean_words = stats[1 + 6 * i: 7 + 6 * i]
        overridden = col in table.column_types
        if nn == 0:
            out[col] = ColumnType("dropped", f"all null in the {rows} {where}"
                                  + (f" (as {kind})" if overridden else ""))
        elif constant and nn == rows:
            out[col] = ColumnType("dropped", f"constant in the {rows} {where}")
        elif overridden or kind in ("boolean", "timestamp", "id"):
            out[col] = ColumnType(kind, reason)
        elif kind == "numeric":
            out[col] = (ColumnType("boolean", f"{reason} with only 0 and 1") if zero_one
                        else ColumnType("numeric", reason))
        elif mean_words >= config.text_min_words:
            out[col] = ColumnType("text", f"{reason}, {mean_words:.1f} words per value on average")
        elif nn >= config.id_min_rows and distinct >= config.id_unique_ratio * nn:
            out[col] = ColumnType("id", f"{reason}, ~{distinct} distinct in {nn} values: "
                                  "unique per row, looks like an identifier")
        else:
            out[col] = ColumnType("categorical", f"{reason}, ~{distinct} distinct values, "
                                  f"{mean_len:.1f} characters on average")
    return out


def _fit_numeric(con, table: TableSpec, fit_cutoff: datetime, cols: list[ColumnEncoder],
                 fit_rows: int, config: FeatureConfig) -> None:
    """Medians, IQRs (and standard deviations as the fallback scale) in one scan.

    Missing values are counted over every fitted row; the quantiles over every k-th row
    when there are more than `config.quantile_rows` (see FeatureConfig).
    """
    if not cols:
        return
    stride = -(-fit_rows // config.quantile_rows)
    sampled = f"AND __id % {stride} = 0" if stride > 1 else ""
    select = []
    for c in cols:
        x = _value_expr(c.name, c.source_type, c.kind)
        finite = f"FILTER (WHERE isfinite({x}) {sampled})"
        select += [f"quantile_cont({x}, [0.25, 0.5, 0.75]) {finite}",
                   f"stddev_pop({x}) {finite}",
                   f"count(*) FILTER (WHERE NOT coalesce(isfinite({x}), false))"]
    stats = con.execute(f"SELECT {', '.join(select)} FROM main.{quote(table.name)} "
                        f"WHERE {fit_filter(table, fit_cutoff)}").fetchall()[0]
    for i, c in enumerate(cols):
        quantiles, std, missing = stats[3 * i: 3 * i + 3]
        c.nan_indicator = bool(missing)
        if c.kind == "boolean":
            continue  # already 0/1: no centering or scaling
        if quantiles is None:  # every value infinite: only the indicator carries information
            continue
        q1, median, q3 = quantiles
        iqr = q3 - q1
        c.center = float(median)
        if iqr > 0:
            c.scale = float(iqr)
        elif std and std > 0:
            c.scale = float(std)
            c.note = "IQR is 0: scaled by the standard deviation"
        else:
            c.scale = 1.0


def _fit_vocabulary(con, table: TableSpec, fit_cutoff: datetime, c: ColumnEncoder,
                    config: FeatureConfig, fit_rows: int) -> None:
    """The top `max_categories` values occurring at least `min_frequency` times (lowered
    for small tables, see FeatureConfig). Ties in frequency are broken by the value, so
    the vocabulary is deterministic.
    """
    min_frequency = min_count(config, fit_rows)
    v = _value_expr(c.name, c.source_type, c.kind)
    rows = con.execute(
        f"WITH f AS (SELECT {v} AS v, count(*) AS n FROM main.{quote(table.name)} "
        f"WHERE {fit_filter(table, fit_cutoff)} AND {v} IS NOT NULL GROUP BY 1) "
        f"SELECT (SELECT count(*) FROM f), (SELECT sum(n) FROM f), "
        f"list(v ORDER BY n DESC, v), sum(n) "
        f"FROM (SELECT v, n FROM f WHERE n >= ? ORDER BY n DESC, v LIMIT ?)",
        [min_frequency, config.max_categories]).fetchall()[0]
    distinct, total, vocab, covered = rows
    c.vocabulary = list(vocab or [])
    if distinct > len(c.vocabulary) and c.vocabulary:
        c.note = (f"{distinct} distinct values: top {len(c.vocabulary)} kept "
                  f"(seen >= {min_frequency} times), covering "
                  f"{100.0 * covered / total:.1f}% of non-null values; the rest is code 0")


def min_count(config: FeatureConfig, fit_rows: int) -> int:
    """How often a value must occur to enter a vocabulary of a table with fit_rows rows."""
    return min(config.min_frequency, max(2, fit_rows // 100))


def fit_encoders(con: duckdb.DuckDBPyConnection, spec: DatasetSpec, fit_cutoff: datetime,
                 config: FeatureConfig = FeatureConfig()) -> Encoders:
    """Type every column and fit its encoder on rows with time <= fit_cutoff.

    Static tables use all their rows. Nothing after fit_cutoff is read, so changing or
    adding later rows leaves the result identical.
    """
    # Loaded up front so a missing package fails before any fitting, and once per call.
    model = _sentence_model(config.sentence_model) if config.sentence_model else None
    tables: dict[str, TableEncoders] = {}
    with duckdb_threads(con, config.threads):
        for name, tspec in spec.tables.items():
            types = dict(table_columns(con, name))
            fit_rows = con.execute(f"SELECT count(*) FROM main.{quote(name)} "
                                   f"WHERE {fit_filter(tspec, fit_cutoff)}").fetchall()[0][0]
            columns: list[ColumnEncoder] = []
            dropped: dict[str, str] = {}
            for col, ctype in infer_types(con, tspec, fit_cutoff, config).items():
                if ctype.kind == "dropped":
                    dropped[col] = ctype.reason
                elif ctype.kind == "id":
                    dropped[col] = f"identifier, not a feature ({ctype.reason})"
                else:
                    columns.append(ColumnEncoder(col, ctype.kind, types[col], ctype.reason))
            _fit_numeric(con, tspec, fit_cutoff, [c for c in columns if c.kind in ("numeric", "boolean")],
                         fit_rows, config)
            for c in columns:
                if c.kind == "categorical":
                    _fit_vocabulary(con, tspec, fit_cutoff, c, config, fit_rows)
                    if not c.vocabulary:
                        dropped[c.name] = (f"no value occurs {min_count(config, fit_rows)} times "
                                           f"in the {fit_rows} fitted rows")
                elif c.kind == "text":
                    c.text_dim = (model.get_sentence_embedding_dimension() if model is not None
                                  else config.text_dim)
            columns = [c for c in columns if c.name not in dropped]
            tables[name] = TableEncoders(name, bool(tspec.time_column), int(fit_rows), columns, dropped)
    return Encoders(fit_cutoff=utc_naive(fit_cutoff).isoformat(), config=config.output_settings(),
                    tables=tables)


def _num_exprs(c: ColumnEncoder, clip: float) -> list[str]:
    """FLOAT SQL for a numeric/boolean column: the scaled value, then its missing flag."""
    x = _value_expr(c.name, c.source_type, c.kind)
    if c.kind == "boolean":
        value = f"CASE WHEN isfinite({x}) THEN {x} ELSE 0 END"
    else:
        center = f"CAST({literal(repr(c.center))} AS DOUBLE)"
        scale = f"CAST({literal(repr(c.scale))} AS DOUBLE)"
        value = (f"CASE WHEN isfinite({x}) THEN least(greatest(({x} - {center}) / {scale}, "
                 f"{-clip!r}), {clip!r}) ELSE 0 END")
    exprs = [f"CAST({value} AS FLOAT)"]
    if c.nan_indicator:
        exprs.append(f"CAST(NOT coalesce(isfinite({x}), false) AS FLOAT)")
    return exprs


def row_index(ids: np.ndarray, start: int) -> slice | np.ndarray:
    """Where a batch's rows go: a slice when its __id values are start, start+1, ...

    DuckDB keeps insertion order for plain scans, so that is the normal case; any other
    order is still placed correctly by indexing with the ids themselves.
    """
    end = start + len(ids)
    if len(ids) and ids[0] == start and ids[-1] == end - 1 and np.array_equal(ids, np.arange(start, end)):
        return slice(start, end)
    return ids


def table_size(con: duckdb.DuckDBPyConnection, table: str) -> int:
    """Row count N of `main.<table>`, checking that `__id` spans 0..N-1.

    (min, max and count come from DuckDB's statistics; a distinct count would cost a
    hash table over every id, and the warehouse numbers rows with row_number anyway.)
    """
    n, low, high = con.execute(
        f"SELECT count(*), min(__id), max(__id) FROM main.{quote(table)}").fetchall()[0]
    if n and (low != 0 or high != n - 1):
        raise ValueError(f"{table}: __id must be dense 0..N-1 (N = {n}, got min {low}, max {high}); "
                         "rebuild the warehouse")
    return int(n)


def encode_table(con: duckdb.DuckDBPyConnection, spec: DatasetSpec, table: str,
                 encoders: Encoders) -> dict[str, torch.Tensor]:
    """Encode every row of `table` with the frozen encoders.

    Returns (N = rows, node i = `__id` i):
        x_num float32 [N, Fn], x_cat int64 [N, Fc], x_text float32 [N, Ft],
        x_ts float64 [N, Fts].
    """
    spec.table(table)
    if table not in encoders.tables:
        raise ValueError(f"{table}: no fitted encoders (fitted tables: {', '.join(encoders.tables)})")
    enc = encoders.tables[table]
    clip = float(encoders.config["clip"])
    n = table_size(con, table)

    num_exprs = [e for c in enc.of_kind("numeric", "boolean") for e in _num_exprs(c, clip)]
    cats = enc.of_kind("categorical")
    stamps = enc.of_kind("timestamp")
    texts = enc.of_kind("text")
    x_num = np.empty((n, len(num_exprs)), np.float32)
    x_cat = np.empty((n, len(cats)), np.int64)
    x_ts = np.empty((n, len(stamps)), np.float64)
    x_text = np.zeros((n, sum(c.text_dim for c in texts)), np.float32)

    select = ["__id"] + num_exprs
    select += [_value_expr(c.name, c.source_type, c.kind) for c in cats]
    select += [f"CAST(epoch_us({_value_expr(c.name, c.source_type, c.kind)}) AS DOUBLE) / 1e6"
               for c in stamps]
    if len(select) > 1:
        vocabs: dict[pa.DataType, list[pa.Array]] = {}
        reader = con.sql(f"SELECT {', '.join(select)} FROM main.{quote(table)}").to_arrow_reader(BATCH_ROWS)
        start, fn, fc = 0, len(num_exprs), len(cats)
        for batch in reader:
            rows = row_index(batch.column(0).to_numpy(), start)
            for j in range(fn):
                x_num[rows, j] = batch.column(1 + j).to_numpy()
            for j, c in enumerate(cats):
                values = batch.column(1 + fn + j)
                if values.type not in vocabs:
                    vocabs[values.type] = [pa.array(c.vocabulary, type=values.type) for c in cats]
                codes = pc.index_in(values, value_set=vocabs[values.type][j])
                x_cat[rows, j] = pc.fill_null(pc.add(codes, 1), 0).to_numpy()
            for j in range(len(stamps)):
                x_ts[rows, j] = batch.column(1 + fn + fc + j).to_numpy(zero_copy_only=False)
            start += batch.num_rows

    offset = 0
    ngrams = tuple(encoders.config["ngram_range"])
    model_name = encoders.config.get("sentence_model")
    model = _sentence_model(model_name) if model_name and texts else None
    for c in texts:
        block = x_text[:, offset: offset + c.text_dim]
        if model is not None:
            _embed_text(con, table, c, model, block)
        else:
            _hash_text(con, table, c, ngrams, block)
        offset += c.text_dim

    return {"x_num": torch.from_numpy(x_num), "x_cat": torch.from_numpy(x_cat),
            "x_text": torch.from_numpy(x_text), "x_ts": torch.from_numpy(x_ts)}


def text_hash_sql(relation: str, key: str, value: str, dim: int, ngrams: tuple[int, int]) -> str:
    """SQL for hashed n-gram counts of the text `value` in `relation`: (key, bucket, log(1 + count)).

    Values are lower-cased and split into words at every run of non-letters/digits;
    n-grams are words joined by one space; bucket = (md5_number(ngram) >> 64) mod dim,
    md5_number being the md5 digest read as a little-endian 128-bit integer. md5 rather
    than DuckDB's hash(), so buckets never change with the DuckDB version a model is
    later scored with (the top 64 bits as UBIGINT: modulo on 128-bit integers is 20x slower).
    """
    lists = []
    for size in range(ngrams[0], ngrams[1] + 1):
        if size == 1:
            lists.append("w")
        else:  # w[i] || ' ' || w[i + 1] || ...: indexing, no list slice per n-gram
            gram = " || ' ' || ".join(f"w[i + {k}]" for k in range(size))
            lists.append(f"[{gram} for i in range(1, len(w) - {size - 2})]")
    return (
        f"WITH words AS (SELECT {key} AS k, [t for t in regexp_split_to_array(lower({value}), "
        f"{literal(_WORD_SPLIT)}) if t <> ''] AS w FROM {relation} WHERE {value} IS NOT NULL), "
        f"grams AS (SELECT k, unnest({' || '.join(lists)}) AS g FROM words) "
        f"SELECT k, CAST(CAST(md5_number(g) >> 64 AS UBIGINT) % {int(dim)} AS INTEGER) AS b, "
        f"CAST(ln(1 + count(*)) AS FLOAT) FROM grams GROUP BY 1, 2"
    )


def _hash_text(con, table: str, c: ColumnEncoder, ngrams: tuple[int, int], block: np.ndarray,
               dedupe: bool | None = None) -> None:
    """Fill `block` [N, text_dim] with hashed n-gram features.

    Text columns often repeat values (titles, templated messages): when at most half the
    values are distinct (`dedupe` None decides so from DuckDB's estimate), each distinct
    value is hashed once and rows pick up its vector; otherwise every row is hashed.
    Both give the same numbers.
    """
    v = _value_expr(c.name, c.source_type, c.kind)
    rel = f"main.{quote(table)}"
    if dedupe is None:
        distinct, present = con.execute(f"SELECT approx_count_distinct({v}), count({v}) FROM {rel}").fetchall()[0]
        dedupe = distinct <= present // 2
    if not dedupe:
        for batch in con.sql(text_hash_sql(rel, "__id", v, c.text_dim, ngrams)).to_arrow_reader(BATCH_ROWS):
            block[batch.column(0).to_numpy(), batch.column(1).to_numpy()] = batch.column(2).to_numpy()
        return
    values = con.sql(f"SELECT DISTINCT {v} AS v FROM {rel} WHERE {v} IS NOT NULL").to_arrow_table()
    if values.num_rows == 0:
        return
    vectors = np.zeros((values.num_rows, c.text_dim), np.float32)
    view = f"__relgraph_text_{uuid.uuid4().hex}"
    con.register(view, values.append_column("i", pa.array(np.arange(values.num_rows))))
    try:
        k, b, x = con.sql(text_hash_sql(quote(view), "i", "v", c.text_dim, ngrams)).to_arrow_table().columns
    finally:
        con.unregister(view)
    vectors[k.to_numpy(), b.to_numpy()] = x.to_numpy()
    lookup = values.column(0).combine_chunks()
    start = 0
    # small batches: each one's gathered vectors are a temporary [rows, text_dim] array
    for batch in con.sql(f"SELECT __id, {v} FROM {rel}").to_arrow_reader(1 << 16):
        rows = row_index(batch.column(0).to_numpy(), start)
        index = pc.index_in(batch.column(1), value_set=lookup)
        # nulls index row 0 here and are then zeroed: one gather, no boolean selection
        picked = vectors[pc.fill_null(index, 0).to_numpy()]
        picked[~pc.is_valid(index).to_numpy(zero_copy_only=False)] = 0.0
        block[rows] = picked
        start += batch.num_rows


def _sentence_model(name: str):
    """The optional sentence-transformers model, from local files only (no downloads)."""
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise ValueError(f"FeatureConfig.sentence_model is '{name}' but the sentence_transformers "
                         "package is not installed; install it, or leave sentence_model unset "
                         "to use hashed n-grams") from None
    return SentenceTransformer(name, local_files_only=True)


def _embed_text(con, table: str, c: ColumnEncoder, model, block: np.ndarray) -> None:
    """Fill `block` [N, dim] with sentence embeddings (zeros for null), batch by batch."""
    v = _value_expr(c.name, c.source_type, c.kind)
    query = f"SELECT __id, {v} FROM main.{quote(table)} WHERE {v} IS NOT NULL"
    for batch in con.sql(query).to_arrow_reader(BATCH_ROWS):
        block[batch.column(0).to_numpy()] = model.encode(
            batch.column(1).to_pylist(), batch_size=256, convert_to_numpy=True)


def feature_meta(encoders: Encoders) -> dict:
    """Per table: {"num": Fn, "cat": [cardinalities], "text": Ft, "ts": Fts, "temporal": bool,
    "names": {"num": [...], "cat": [...], "text": [...], "ts": [...]}} (names are for people).

    A categorical's cardinality counts code 0 (null / out of vocabulary): len(vocabulary) + 1.
    """
    meta = {}
    for name, enc in encoders.tables.items():
        num_names = []
        for c in enc.of_kind("numeric", "boolean"):
            num_names.append(c.name)
            if c.nan_indicator:
                num_names.append(f"{c.name}__is_missing")
        cats = enc.of_kind("categorical")
        texts = enc.of_kind("text")
        stamps = enc.of_kind("timestamp")
        meta[name] = {
            "num": len(num_names),
            "cat": [len(c.vocabulary) + 1 for c in cats],
            "text": sum(c.text_dim for c in texts),
            "ts": len(stamps),
            "temporal": enc.temporal,
            "names": {
                "num": num_names,
                "cat": [c.name for c in cats],
                "text": [f"{c.name}#{i}" for c in texts for i in range(c.text_dim)],
                "ts": [c.name for c in stamps],
            },
        }
    return meta


def describe(encoders: Encoders) -> str:
    """A short human summary: per table, the kinds kept and every drop with its reason."""
    lines = []
    for name, enc in encoders.tables.items():
        kinds = {k: [c.name for c in enc.of_kind(k)] for k in FEATURE_KINDS}
        kept = "; ".join(f"{k}: {', '.join(v)}" for k, v in kinds.items() if v) or "no features"
        lines.append(f"{name} ({enc.fit_rows} fitted rows): {kept}")
        lines += [f"  dropped {col}: {why}" for col, why in enc.dropped.items()]
        lines += [f"  note {c.name}: {c.note}" for c in enc.columns if c.note]
    return "\n".join(lines)

