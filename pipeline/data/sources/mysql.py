"""A live MySQL or MariaDB database, streamed with PyMySQL's unbuffered SSCursor.

PyMySQL is asked not to decode values (no datetime or Decimal objects per value): each
batch of `batch_size` rows arrives as text, is transposed, and every column is cast by
Arrow in one call, to the type the catalog (information_schema.columns) gives it:

    tinyint(1) / BOOLEAN             bool
    tinyint ... bigint [unsigned]    int8 ... int64 [uint8 ... uint64]; mediumint -> int32
    year                             int16
    bit                              uint64
    float, double                    float32, float64
    decimal                          float64
    date                             date32
    datetime                         timestamp[us]
    timestamp                        timestamp[us, tz=UTC] (the session runs in UTC)
    binary, varbinary, *blob         binary
    anything else (char, varchar,    string
    text, enum, set, json, time)

MySQL's zero dates ('0000-00-00') are read as NULL. The password comes from the caller
(the spec's `password_env`), never from the URI, and is scrubbed from every message.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import unquote, urlsplit

import pyarrow as pa
import pyarrow.compute as pc
import pymysql
import pymysql.converters
import pymysql.cursors

from pipeline.data.sources import (
    DEFAULT_BATCH_SIZE, SourceError, TableNames, check_batch_size, host_port, quote_ident,
    redact_uri, scrub,
)
from pipeline.data.spec import TableSpec

_INTEGERS = {"tinyint": 8, "smallint": 16, "mediumint": 32, "int": 32, "integer": 32, "bigint": 64}
_SIGNED = {8: pa.int8(), 16: pa.int16(), 32: pa.int32(), 64: pa.int64()}
_UNSIGNED = {8: pa.uint8(), 16: pa.uint16(), 32: pa.uint32(), 64: pa.uint64()}
_FIXED = {
    "year": pa.int16(), "bit": pa.uint64(), "float": pa.float32(), "double": pa.float64(),
    "real": pa.float64(), "decimal": pa.float64(), "numeric": pa.float64(), "date": pa.date32(),
    "datetime": pa.timestamp("us"), "timestamp": pa.timestamp("us", tz="UTC"),
    "binary": pa.binary(), "varbinary": pa.binary(), "tinyblob": pa.binary(), "blob": pa.binary(),
    "mediumblob": pa.binary(), "longblob": pa.binary(),
}
# Keep PyMySQL's encoders (for query parameters) but drop its per-value decoders.
_NO_DECODERS = {k: v for k, v in pymysql.converters.conversions.items() if not isinstance(k, int)}
_CANNOT_CONNECT = 2003
_ACCESS_DENIED = 1045


def arrow_type(data_type: str, column_type: str) -> pa.DataType:
    """Arrow type of a column from information_schema's DATA_TYPE and COLUMN_TYPE."""
    data_type, column_type = data_type.lower(), column_type.lower()
    if data_type == "tinyint" and column_type.startswith("tinyint(1)"):
        return pa.bool_()
    if data_type in _INTEGERS:
        return (_UNSIGNED if "unsigned" in column_type else _SIGNED)[_INTEGERS[data_type]]
    return _FIXED.get(data_type, pa.string())


def _column(values: tuple, typ: pa.DataType) -> pa.Array:
    """One column of text (bytes for binary types) -> Arrow array of `typ`."""
    if typ == pa.binary():
        return pa.array(values, pa.binary())
    text = pa.array(values, pa.string())
    if pa.types.is_timestamp(typ) or typ == pa.date32():
        # Zero dates are MySQL's stand-in for "no date".
        text = pc.if_else(pc.starts_with(text, "0000-00-00"), None, text)
        parsed = pc.cast(text, pa.timestamp("us"))
        return parsed.cast(typ) if pa.types.is_timestamp(typ) else pc.cast(parsed, typ, safe=False)
    if typ == pa.bool_():
        return pc.not_equal(pc.cast(text, pa.int64()), 0)
    return pc.cast(text, typ)


class MySQLSource(TableNames):
    """Tables and views of one MySQL / MariaDB database (the URI's path, or `database`)."""

    def __init__(self, uri: str, *, password: str | None = None, database: str | None = None,
                 tables: Mapping[str, TableSpec] | None = None, where: str | None = None,
                 hint: str = "pass another uri", connect_timeout: int = 10):
        self.uri = uri
        parts = urlsplit(uri)
        # The spec keeps passwords out of URIs, but an overriding URI from the environment
        # may carry one.
        self._password = password if password is not None else (
            unquote(parts.password) if parts.password else None)
        self.hint = hint
        self.connect_timeout = connect_timeout
        if parts.scheme.split("+")[0] not in ("mysql", "mariadb"):
            raise SourceError(f"{where or 'mysql source'}: URI {redact_uri(uri)} should start "
                              "with mysql:// (mysql://user@host:3306/database)")
        self.database = database or unquote(parts.path.lstrip("/"))
        if not self.database:
            raise SourceError(f"{where or 'mysql source'}: URI {redact_uri(uri)} names no database "
                              "(mysql://user@host:3306/database), and source.schema is not set")
        self._params = dict(host=parts.hostname or "localhost", port=parts.port or 3306,
                            user=unquote(parts.username or "root"), database=self.database)
        super().__init__(where or f"mysql source {redact_uri(uri)}", tables)

    def _connect(self, cursorclass=pymysql.cursors.Cursor) -> pymysql.connections.Connection:
        try:
            con = pymysql.connect(**self._params, password=self._password or "", charset="utf8mb4",
                                  conv=_NO_DECODERS, cursorclass=cursorclass,
                                  connect_timeout=self.connect_timeout, autocommit=True)
        except pymysql.MySQLError as exc:
            code = exc.args[0] if exc.args else None
            reason = scrub(" ".join(str(a) for a in exc.args[1:]) or str(exc), self._password)
            at = f"MySQL at {host_port(self.uri, 3306)} ({redact_uri(self.uri)})"
            if code == _ACCESS_DENIED:
                raise SourceError(f"{self.where}: {at} refused the login: {reason}. Put the password "
                                  "in an environment variable and name it in source.password_env") from None
            if code == _CANNOT_CONNECT:
                raise SourceError(f"{self.where}: cannot connect to {at}: {reason}. {self.hint}") from None
            raise SourceError(f"{self.where}: {at}: {reason}") from None
        with con.cursor() as cur:
            cur.execute("SET time_zone = '+00:00'")
        return con

    def source_tables(self) -> list[str]:
        con = self._connect()
        try:
            with con.cursor() as cur:
                cur.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = %s "
                            "ORDER BY table_name", (self.database,))
                return [r[0] for r in cur.fetchall()]
        finally:
            con.close()

    def _column_types(self, con, name: str) -> list[tuple[str, str, str]]:
        with con.cursor() as cur:
            cur.execute("SELECT column_name, data_type, column_type FROM information_schema.columns "
                        "WHERE table_schema = %s AND table_name = %s ORDER BY ordinal_position",
                        (self.database, name))
            return list(cur.fetchall())

    def columns(self, table: str) -> list[str]:
        name = self.source_name(table)
        con = self._connect()
        try:
            return [c for c, _, _ in self._column_types(con, name)]
        finally:
            con.close()

    def read(self, table: str, batch_size: int = DEFAULT_BATCH_SIZE) -> pa.RecordBatchReader:
        batch_size = check_batch_size(batch_size)
        name = self.source_name(table)
        con = self._connect(pymysql.cursors.SSCursor)
        try:
            cols = self._column_types(con, name)
            schema = pa.schema([(c, arrow_type(d, t)) for c, d, t in cols])
            # bit values are raw bytes on the wire; as integers they cast like any other.
            select = ", ".join(f"CAST({quote_ident(c, '`')} AS UNSIGNED)" if d.lower() == "bit"
                               else quote_ident(c, "`") for c, d, _ in cols)
            cursor = con.cursor()
            cursor.execute(f"SELECT {select} FROM {quote_ident(name, '`')}")
        except BaseException:
            con.close()
            raise

        def batches():
            finished = False
            try:
                while rows := cursor.fetchmany(batch_size):
                    arrays = []
                    for field, values in zip(schema, zip(*rows)):
                        try:
                            arrays.append(_column(values, field.type))
                        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
                            raise SourceError(f"{self.where}: {name}.{field.name}: {exc}") from None
                    yield pa.RecordBatch.from_arrays(arrays, schema=schema)
                finished = True
            except pymysql.MySQLError as exc:
                raise SourceError(f"{self.where}: reading {name} failed: "
                                  f"{scrub(str(exc), self._password)}") from None
            finally:
                self._close_stream(con, cursor, finished)

        return pa.RecordBatchReader.from_batches(schema, batches())

    def _close_stream(self, con, cursor, finished: bool) -> None:
        """Close an unbuffered read. One abandoned midway would otherwise make the client
        read the rest of the table before closing, so the server is told to stop it first."""
        if not finished and con.open:
            try:
                killer = self._connect()
                try:
                    with killer.cursor() as cur:
                        cur.execute("KILL QUERY %s", (con.thread_id(),))
                finally:
                    killer.close()
            except (SourceError, pymysql.MySQLError):
                pass  # then closing reads the rest: slower, still correct
        try:
            cursor.close()
        except pymysql.MySQLError:
            pass  # the query was stopped on purpose
        con.close()

    def fingerprint(self, table: str) -> str:
        name = self.source_name(table)
        time_col = self.time_column(table)
        latest = f", CAST(max({quote_ident(time_col, '`')}) AS CHAR)" if time_col else ""
        con = self._connect()
        try:
            with con.cursor() as cur:
                cur.execute(f"SELECT count(*){latest} FROM {quote_ident(name, '`')}")
                row = cur.fetchall()[0]
        finally:
            con.close()
        return f"rows={row[0]}" + (f" max({time_col})={row[1]}" if time_col else "")
