"""The command line's answer to "is there anything to sync?", without SQLAlchemy.

Most runs of ``samizdat sync`` find nothing to do. :func:`alembic_samizdat.api.sync` learns that from one catalog
read without the lock (see ``nothing_to_do`` there); this module makes the very same read, with the same query
and the same comparison (:func:`~alembic_samizdat.catalog.read_state`, :func:`~alembic_samizdat.planner.in_sync`),
on a plain psycopg connection, so that a command that has nothing to do never imports SQLAlchemy nor pays its
first-connect queries. Whenever this module is not sure — a URL it does not parse exactly as SQLAlchemy would, a
failed connection, an error of any kind, or something to do — it answers "no", and the command takes the usual
path, which reads again under the lock and words every error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import parse_qsl, unquote

from .catalog import read_state
from .planner import in_sync
from .registry import SamizdatRegistry

if TYPE_CHECKING:
    import psycopg
    from sqlalchemy import Connection

# The URLs this module connects to by itself: one user, one host name or address (no list, no IPv6 brackets), a
# numeric port, and a query without "host" or "port" (SQLAlchemy splits those into lists). Anything else is left
# to SQLAlchemy. With at most one "@" and these character sets, every part is unambiguous, and SQLAlchemy's own
# parser reads the same parts (percent-decoding user, password and database, as here).
_URL = re.compile(
    r"(?P<scheme>postgres|postgresql|postgresql\+psycopg|postgresql\+psycopg2)://"
    r"(?:(?P<user>[^:/@?#\[\]]*)(?::(?P<password>[^@/?#\[\]]*))?@)?"
    r"(?P<host>[A-Za-z0-9._-]*)"
    r"(?::(?P<port>[0-9]{1,5}))?"
    r"(?:/(?P<database>[^?#/]*))?"
    r"(?:\?(?P<query>[^#]*))?\Z"
)
_QUERY_KEY = re.compile(r"[a-z_]+\Z")


def connect_arguments(url: str, *, connect_timeout: int) -> dict[str, Any] | None:
    """The keyword arguments SQLAlchemy's psycopg dialect would give ``psycopg.connect`` for ``url`` (with the
    CLI's ``connect_timeout`` unless the URL sets one), or ``None`` when ``url`` is not one this module reads."""
    if url.count("@") > 1:
        return None
    found = _URL.match(url)
    if found is None or "%" in (found.group("database") or ""):
        return None  # (SQLAlchemy versions differ in decoding a database name)
    out: dict[str, Any] = {}
    for part, keyword in (("host", "host"), ("user", "user"), ("password", "password"), ("database", "dbname")):
        value = found.group(part)
        if value:
            out[keyword] = unquote(value) if part != "host" else value
    if found.group("port"):
        out["port"] = int(found.group("port"))
    query = found.group("query")
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        keys = [key for key, _ in pairs]
        if len(set(keys)) != len(keys) or any(not _QUERY_KEY.match(k) or k in ("host", "port") for k in keys):
            return None
        out.update(pairs)
    out.setdefault("connect_timeout", connect_timeout)
    return out


@dataclass
class _Result:
    cursor: psycopg.Cursor[Any]

    def close(self) -> None:
        self.cursor.close()


class _Dialect:
    driver = "psycopg"


class _Connection:
    """What :func:`alembic_samizdat.pinned.query` uses of a SQLAlchemy connection, on a psycopg one: the
    batch goes to psycopg's ``execute`` without parameters, as SQLAlchemy's ``exec_driver_sql`` sends it."""

    dialect = _Dialect()

    def __init__(self, connection: psycopg.Connection[Any]) -> None:
        self._connection = connection

    def exec_driver_sql(self, sql: str, execution_options: object = None) -> _Result:
        cursor = self._connection.cursor()
        cursor.execute(sql)
        return _Result(cursor)


def nothing_to_sync(url: str, registry: SamizdatRegistry, *, connect_timeout: int, adopt: str | None) -> bool:
    """Whether a sync of ``registry`` at ``url`` would have nothing to do, as far as one catalog read without the
    lock can prove it (``False`` also means "not sure": sync the usual way)."""
    arguments = connect_arguments(url, connect_timeout=connect_timeout)
    if arguments is None:
        return False
    graph = registry.graph()
    import psycopg

    try:
        with psycopg.connect(**arguments, autocommit=True) as connection:
            state = read_state(
                cast("Connection", _Connection(connection)),
                registry.scope,
                graph.nodes,
                dependents=False,
                adopt=adopt,
                trusted_owners=registry.trusted_owners,
            )
    except psycopg.Error:
        return False  # the usual path connects and reads again, and says what failed
    return in_sync(graph, state)
