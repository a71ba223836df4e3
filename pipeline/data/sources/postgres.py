"""A live PostgreSQL database, streamed with COPY ... TO STDOUT (FORMAT csv).

The server sends one CopyData message per row; rows are gathered `batch_size` at a time
and each batch is parsed by Arrow's CSV reader with column types fixed from the catalog,
so every batch has the same schema and no value becomes a Python object:

    smallint, integer, bigint        int16, int32, int64
    real, double precision           float32, float64
    numeric                          float64 (exact decimals are not needed as features)
    boolean                          bool
    date                             date32
    timestamp                        timestamp[us]
    timestamptz                      timestamp[us, tz=UTC]
    anything else (text, varchar,    string, as PostgreSQL prints it
    uuid, json, enums, arrays, ...)

COPY's CSV marks NULL as an unquoted empty field and the empty string as "", so the two
stay apart. The password comes from the caller (the spec's `password_env`), never from the
URI, and is scrubbed from every message.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit

import psycopg
import pyarrow as pa
import pyarrow.csv as pacsv

from pipeline.data.sources import (
    DEFAULT_BATCH_SIZE, SourceError, TableNames, check_batch_size, host_port, quote_ident,
    redact_uri, scrub, suggest,
)
from pipeline.data.spec import TableSpec

ARROW_TYPES = {
    "smallint": pa.int16(),
    "integer": pa.int32(),
    "bigint": pa.int64(),
    "real": pa.float32(),
    "double precision": pa.float64(),
    "numeric": pa.float64(),
    "boolean": pa.bool_(),
    "date": pa.date32(),
    "timestamp without time zone": pa.timestamp("us"),
    "timestamp with time zone": pa.timestamp("us", tz="UTC"),
}
_AUTH_FAILURES = ("password authentication failed", "no password supplied", "authentication failed")


class PostgresSource(TableNames):
    """Tables and views of one schema (default: the connection's current schema)."""

    def __init__(self, uri: str, *, password: str | None = None, schema: str | None = None,
                 tables: Mapping[str, TableSpec] | None = None, where: str | None = None,
                 hint: str = "pass another uri", connect_timeout: int = 10):
        self.uri = uri
        self._password = password
        # Scrubbed from messages too: a password in an overriding URI from the environment.
        self._secret = password or urlsplit(uri).password
        self._schema = schema
        self.hint = hint
        self.connect_timeout = connect_timeout
        super().__init__(where or f"postgres source {redact_uri(uri)}", tables)

    def _connect(self) -> psycopg.Connection:
        extra = {"password": self._password} if self._password is not None else {}
        try:
            con = psycopg.connect(self.uri, autocommit=True, connect_timeout=self.connect_timeout,
                                  client_encoding="UTF8", **extra)
        except psycopg.Error as exc:
            reason = scrub(str(exc).strip(), self._secret)
            at = f"PostgreSQL at {host_port(self.uri, 5432)} ({redact_uri(self.uri)})"
            if any(s in reason for s in _AUTH_FAILURES):
                raise SourceError(f"{self.where}: {at} refused the login: {reason}. Put the password "
                                  "in an environment variable and name it in source.password_env") from None
            raise SourceError(f"{self.where}: cannot connect to {at}: {reason}. {self.hint}") from None
        return con

    def _current_schema(self, con: psycopg.Connection) -> str:
        if self._schema:
            return self._schema
        return con.execute("SELECT current_schema()").fetchall()[0][0]

    def source_tables(self) -> list[str]:
        with self._connect() as con:
            schema = self._current_schema(con)
            rows = con.execute("SELECT table_name FROM information_schema.tables "
                               "WHERE table_schema = %s ORDER BY table_name", (schema,)).fetchall()
            if not rows:
                schemas = [r[0] for r in con.execute(
                    "SELECT nspname FROM pg_namespace WHERE nspname NOT LIKE 'pg\\_%' "
                    "AND nspname <> 'information_schema' ORDER BY 1").fetchall()]
                if schema not in schemas:
                    raise SourceError(f"{self.where}: the database has no schema '{schema}'"
                                      f"{suggest(schema, schemas)} (it has: {', '.join(schemas)}); "
                                      "set source.schema")
        return [r[0] for r in rows]

    def _column_types(self, con: psycopg.Connection, schema: str, name: str) -> list[tuple[str, str]]:
        return con.execute("SELECT column_name, data_type FROM information_schema.columns "
                           "WHERE table_schema = %s AND table_name = %s ORDER BY ordinal_position",
                           (schema, name)).fetchall()

    def columns(self, table: str) -> list[str]:
        name = self.source_name(table)
        with self._connect() as con:
            return [c for c, _ in self._column_types(con, self._current_schema(con), name)]

    def read(self, table: str, batch_size: int = DEFAULT_BATCH_SIZE) -> pa.RecordBatchReader:
        batch_size = check_batch_size(batch_size)
        name = self.source_name(table)
        con = self._connect()
        try:
            schema_name = self._current_schema(con)
            cols = self._column_types(con, schema_name, name)
            con.execute("SET DateStyle = 'ISO, YMD'; SET extra_float_digits = 3")
        except BaseException:
            con.close()
            raise
        schema = pa.schema([(c, ARROW_TYPES.get(t, pa.string())) for c, t in cols])
        # timestamptz prints in the session's zone; AT TIME ZONE 'UTC' prints the UTC wall
        # time instead, which parses as naive and is then labelled UTC.
        select = ", ".join(
            f"{quote_ident(c)} AT TIME ZONE 'UTC'" if t == "timestamp with time zone" else quote_ident(c)
            for c, t in cols)
        sql = f"COPY (SELECT {select} FROM {quote_ident(schema_name)}.{quote_ident(name)}) TO STDOUT (FORMAT csv)"
        parsed = pa.schema([f.with_type(pa.timestamp("us")) if f.type == pa.timestamp("us", tz="UTC") else f
                            for f in schema])
        options = dict(
            read_options=pacsv.ReadOptions(column_names=schema.names, use_threads=False),
            parse_options=pacsv.ParseOptions(newlines_in_values=True),
            convert_options=pacsv.ConvertOptions(
                column_types=parsed, null_values=[""], strings_can_be_null=True,
                quoted_strings_can_be_null=False, true_values=["t"], false_values=["f"]),
        )

        def parse(rows: list) -> pa.RecordBatch:
            data = pacsv.read_csv(pa.py_buffer(b"".join(rows)), **options)
            return data.cast(schema).combine_chunks().to_batches()[0]

        def batches():
            try:
                with con.cursor() as cursor, cursor.copy(sql) as copy:
                    rows: list = []
                    for row in copy:
                        rows.append(row)
                        if len(rows) == batch_size:
                            yield parse(rows)
                            rows = []
                    if rows:
                        yield parse(rows)
            except psycopg.Error as exc:
                raise SourceError(f"{self.where}: reading {schema_name}.{name} failed: "
                                  f"{scrub(str(exc), self._secret)}") from None
            except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:  # e.g. timestamp 'infinity'
                raise SourceError(f"{self.where}: {schema_name}.{name}: a value does not fit its "
                                  f"column type: {exc}") from None
            finally:
                con.close()

        return pa.RecordBatchReader.from_batches(schema, batches())

    def fingerprint(self, table: str) -> str:
        name = self.source_name(table)
        time_col = self.time_column(table)
        latest = f", max({quote_ident(time_col)})::text" if time_col else ""
        with self._connect() as con:
            row = con.execute(f"SELECT count(*){latest} FROM "
                              f"{quote_ident(self._current_schema(con))}.{quote_ident(name)}").fetchall()[0]
        return f"rows={row[0]}" + (f" max({time_col})={row[1]}" if time_col else "")
