"""Shared fixtures: live database servers for the postgres and mysql source tests.

Point the tests at a server with RELGRAPH_TEST_PG_URI / RELGRAPH_TEST_MYSQL_URI. Where no
server answers, the tests that need one are skipped, except under CI=true, where a
missing server is a failure. Each test gets its own schema (PostgreSQL) or database
(MySQL) with a unique name, dropped afterwards.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

PG_URI_ENV = "RELGRAPH_TEST_PG_URI"
PG_URI_DEFAULT = "postgresql://postgres@127.0.0.1:5432/test"
MYSQL_URI_ENV = "RELGRAPH_TEST_MYSQL_URI"
MYSQL_URI_DEFAULT = "mysql://root@127.0.0.1:3306/test"


@dataclass
class ServerDatabase:
    """A fresh, empty namespace on a live server: `uri` (without password) reaches it,
    `password` is the one the configured URI carried, `name` is the schema (PostgreSQL) or
    database (MySQL), `connection` is an autocommit admin connection."""

    uri: str
    password: str | None
    name: str
    connection: Any


def _without_password(uri: str) -> tuple[str, str | None]:
    parts = urlsplit(uri)
    if parts.password is None:
        return uri, None
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username}@{host}")), parts.password


def _no_server(what: str, env: str, uri: str, reason: object) -> None:
    from pipeline.data.sources import redact_uri

    message = (f"no {what} server answers at {redact_uri(uri)} ({reason}); "
               f"set {env} to a URI of one to run this test")
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
def pg_database():
    psycopg = pytest.importorskip("psycopg")
    uri = os.environ.get(PG_URI_ENV, PG_URI_DEFAULT)
    try:
        con = psycopg.connect(uri, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        _no_server("PostgreSQL", PG_URI_ENV, uri, str(exc).strip().splitlines()[0])
    schema = f"relgraph_test_{uuid.uuid4().hex[:12]}"
    con.execute(f'CREATE SCHEMA "{schema}"')
    try:
        plain, password = _without_password(uri)
        yield ServerDatabase(uri=plain, password=password, name=schema, connection=con)
    finally:
        con.execute(f'DROP SCHEMA "{schema}" CASCADE')
        con.close()


@pytest.fixture
def mysql_database():
    pymysql = pytest.importorskip("pymysql")
    uri = os.environ.get(MYSQL_URI_ENV, MYSQL_URI_DEFAULT)
    parts = urlsplit(uri)
    try:
        con = pymysql.connect(host=parts.hostname or "localhost", port=parts.port or 3306,
                              user=parts.username or "root", password=parts.password or "",
                              charset="utf8mb4", autocommit=True, connect_timeout=5)
    except pymysql.MySQLError as exc:
        _no_server("MySQL", MYSQL_URI_ENV, uri, exc)
    name = f"relgraph_test_{uuid.uuid4().hex[:12]}"
    with con.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
    con.select_db(name)
    try:
        plain, password = _without_password(urlunsplit(parts._replace(path=f"/{name}")))
        yield ServerDatabase(uri=plain, password=password, name=name, connection=con)
    finally:
        with con.cursor() as cur:
            cur.execute(f"DROP DATABASE `{name}`")
        con.close()
