"""Standalone helpers for materialized views that the registry does not manage.

Create, refresh, drop and list materialized views on a SQLAlchemy :class:`~sqlalchemy.Connection` (or, with
the ``a``-prefixed twins, an :class:`~sqlalchemy.ext.asyncio.AsyncConnection`), and build a refresh task for
any scheduler. The helpers run inside the connection's transaction and never commit, except the task, which
opens, commits and closes a connection of its own.

Names are validated before any SQL is sent and always quoted, so they are taken literally (case included):

- a string ``"name"`` or ``"schema.name"``: each part must match ``[A-Za-z_][A-Za-z0-9_$]*`` and be at most 63
  bytes; a bare name is found through ``search_path``, as PostgreSQL does;
- a ``(schema, name)`` tuple: any characters but NUL, at most 63 bytes each.

Anything else raises :class:`~alembic_samizdat.errors.InvalidIdentifierError`. SQL given to
:func:`create_matview` is passed verbatim (``%`` and ``$`` included): it is code, never user input.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine

from . import pinned, statements
from .errors import (
    InvalidIdentifierError,
    MatviewError,
)
from .identifiers import MAX_IDENTIFIER_BYTES, check_identifier, qualified, quote_ident, quote_literal

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

__all__ = [
    "MatviewError",
    "MatviewInfo",
    "MatviewName",
    "MatviewRefreshTask",
    "acreate_matview",
    "adrop_matview",
    "alist_matviews",
    "amatview_refresh_task",
    "arefresh_matview",
    "create_matview",
    "drop_matview",
    "list_matviews",
    "matview_refresh_task",
    "quote_matview_name",
    "refresh_matview",
]

#: A materialized view's name: ``"name"``, ``"schema.name"`` or a ``(schema, name)`` tuple.
MatviewName = str | tuple[str, str]

_PLAIN_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")


@dataclass(frozen=True)
class MatviewInfo:
    """One materialized view, as the catalog describes it."""

    schema: str
    name: str
    #: Whether it holds data (``WITH DATA`` or refreshed since); an unpopulated view cannot be queried.
    populated: bool
    #: Whether it has a unique index usable by ``REFRESH … CONCURRENTLY``: valid, btree, on plain columns
    #: only (no expressions), without a ``WHERE`` clause.
    has_unique_index: bool

    @property
    def can_refresh_concurrently(self) -> bool:
        """Whether PostgreSQL accepts ``REFRESH MATERIALIZED VIEW CONCURRENTLY`` on it now."""
        return self.populated and self.has_unique_index

    @property
    def qualified_name(self) -> str:
        """The quoted, schema-qualified name: ``"schema"."name"``."""
        return qualified(self.schema, self.name)


def quote_matview_name(name: MatviewName) -> str:
    """Validate ``name`` (see the module's documentation) and return it quoted for SQL.

    Raises :class:`~alembic_samizdat.errors.InvalidIdentifierError` for anything else.
    """
    if isinstance(name, tuple):
        if len(name) != 2:
            raise InvalidIdentifierError(
                f"materialized view name {name!r}: a tuple must be (schema, name), got {len(name)} element(s)"
            )
        schema = check_identifier(name[0], f"schema of materialized view {name!r}")
        relname = check_identifier(name[1], f"name of materialized view {name!r}")
        return qualified(schema, relname)
    if not isinstance(name, str):
        raise InvalidIdentifierError(
            f"materialized view name: expected a string or a (schema, name) tuple, got {type(name).__name__} {name!r}"
        )
    parts = name.split(".")
    if len(parts) > 2 or not all(_PLAIN_IDENTIFIER.fullmatch(part) for part in parts):
        raise InvalidIdentifierError(
            f"materialized view name {name!r} is not a plain identifier: give 'name' or 'schema.name', each part "
            "a letter or underscore followed by letters, digits, underscores or $; for any other name pass a "
            "(schema, name) tuple, which is quoted"
        )
    too_long = [part for part in parts if len(part.encode()) > MAX_IDENTIFIER_BYTES]
    if too_long:
        raise InvalidIdentifierError(
            f"materialized view name {name!r}: {too_long[0]!r} is longer than {MAX_IDENTIFIER_BYTES} bytes; "
            "PostgreSQL would silently truncate it. Choose a shorter name"
        )
    return qualified(parts[0], parts[1]) if len(parts) == 2 else quote_ident(parts[0])


def _send(conn: Connection, sql: str) -> None:
    # No parameter parsing: '%' in user SQL reaches the server untouched; events and echo still see it.
    conn.exec_driver_sql(sql, execution_options={"no_parameters": True})


# A unique index REFRESH … CONCURRENTLY can use (PostgreSQL's is_usable_unique_index): unique, valid,
# immediate, btree, no predicate, and only plain user columns (no expressions, no system columns).
_USABLE_UNIQUE_INDEX = """
EXISTS (SELECT 1 FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid JOIN pg_am am ON am.oid = ic.relam
        WHERE i.indrelid = c.oid AND i.indisunique AND i.indisvalid AND i.indimmediate AND am.amname = 'btree'
          AND i.indpred IS NULL AND i.indexprs IS NULL AND i.indnatts > 0
          AND 0 < ALL (CAST(i.indkey AS int2[])))
"""

_ONE_SQL = f"""
SELECT n.nspname, c.relname, c.relkind::text, c.relispopulated, {_USABLE_UNIQUE_INDEX}
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = CAST(current_setting('alembic_samizdat.target') AS oid)
"""

_LIST_SQL = f"""
SELECT m.schemaname, m.matviewname, m.ispopulated, {_USABLE_UNIQUE_INDEX}
FROM pg_matviews m
JOIN pg_namespace n ON n.nspname = m.schemaname
JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = m.matviewname
WHERE CAST(:schema AS text) IS NULL OR m.schemaname = CAST(:schema AS text)
ORDER BY m.schemaname, m.matviewname
"""

_RELKINDS = {
    "r": "a table",
    "p": "a partitioned table",
    "v": "a view",
    "f": "a foreign table",
    "S": "a sequence",
    "i": "an index",
    "I": "a partitioned index",
    "c": "a composite type",
    "t": "a TOAST table",
}


def create_matview(
    conn: Connection,
    name: MatviewName,
    select_sql: str,
    *,
    with_data: bool = True,
    if_not_exists: bool = False,
) -> None:
    """``CREATE MATERIALIZED VIEW [IF NOT EXISTS] name AS <select_sql> WITH [NO] DATA``.

    ``select_sql`` is sent verbatim (a trailing ``;`` is dropped). With ``with_data=False`` the view is
    created empty and cannot be queried until :func:`refresh_matview` populates it. Runs in the connection's
    transaction; commit it yourself.
    """
    target = quote_matview_name(name)
    if not isinstance(select_sql, str) or not select_sql.strip().rstrip(";").strip():
        raise MatviewError(f"create_matview {target}: select_sql is empty; give the query that defines the view")
    body = select_sql.rstrip().rstrip(";").rstrip()
    head = "CREATE MATERIALIZED VIEW IF NOT EXISTS" if if_not_exists else "CREATE MATERIALIZED VIEW"
    # Newlines around the user's SQL: a trailing "-- comment" must not swallow the WITH clause.
    _send(conn, f"{head} {target} AS\n{body}\nWITH {'DATA' if with_data else 'NO DATA'}")


def _check_concurrently(conn: Connection, target: str) -> None:
    # The name is the caller's: it is looked up on the session's search_path (a qualified call, so nothing on
    # that path can stand in for the function); the query itself runs pinned (see pinned.py).
    lookup = (
        "SELECT pg_catalog.set_config('alembic_samizdat.target', COALESCE(CAST(CAST(pg_catalog.to_regclass("
        f"{quote_literal(target)}) AS pg_catalog.oid) AS pg_catalog.text), '0'), false)"
    )
    found = pinned.query(conn, _ONE_SQL, before=lookup)
    row = found[0] if found else None
    if row is None:
        raise MatviewError(f"cannot refresh {target}: no such relation (check the name, schema and search_path)")
    schema, relname, relkind, populated, usable = row
    shown = qualified(str(schema), str(relname))
    if relkind != "m":
        raise MatviewError(
            f"cannot refresh {shown}: it is {_RELKINDS.get(str(relkind), 'not a materialized view')}, "
            "not a materialized view"
        )
    if not usable:
        raise MatviewError(
            f"cannot refresh materialized view {shown} concurrently: it has no unique index on plain columns. "
            f"Add one (no expressions, no WHERE clause), e.g. CREATE UNIQUE INDEX ON {shown} (id), or refresh "
            "without concurrently. Nothing was refreshed"
        )
    if not populated:
        raise MatviewError(
            f"cannot refresh materialized view {shown} concurrently: it is not populated yet. Refresh it once "
            "without concurrently first. Nothing was refreshed"
        )


def refresh_matview(conn: Connection, name: MatviewName, *, concurrently: bool = False) -> None:
    """``REFRESH MATERIALIZED VIEW [CONCURRENTLY] name``, in the connection's transaction (commit it yourself).

    With ``concurrently=True`` the catalog is checked first: a view that has no unique index on plain columns,
    or that is not populated, raises :class:`MatviewError` (nothing is refreshed). ``CONCURRENTLY`` keeps the
    view readable during the refresh at the cost of a slower, diffing refresh.
    """
    target = quote_matview_name(name)
    if concurrently:
        _check_concurrently(conn, target)
    _send(conn, statements.refresh_named(target, concurrently=concurrently))


def drop_matview(conn: Connection, name: MatviewName, *, if_exists: bool = True, cascade: bool = False) -> None:
    """``DROP MATERIALIZED VIEW [IF EXISTS] name [CASCADE]``, in the connection's transaction.

    Without ``cascade`` (the default) PostgreSQL refuses when other objects depend on the view.
    """
    target = quote_matview_name(name)
    _send(conn, statements.drop_matview_named(target, if_exists=if_exists, cascade=cascade))


def list_matviews(conn: Connection, *, schema: str | None = "public") -> list[MatviewInfo]:
    """The materialized views of ``schema`` (``None``: every schema), ordered by schema and name (one query)."""
    if schema is not None:
        check_identifier(schema, "list_matviews schema")
    rows = pinned.query(conn, _LIST_SQL, {"schema": schema})
    return [MatviewInfo(str(r[0]), str(r[1]), bool(r[2]), bool(r[3])) for r in rows]


async def acreate_matview(
    aconn: AsyncConnection,
    name: MatviewName,
    select_sql: str,
    *,
    with_data: bool = True,
    if_not_exists: bool = False,
) -> None:
    """:func:`create_matview` on an ``AsyncConnection``."""
    quote_matview_name(name)  # refuse a bad name before touching the connection
    await aconn.run_sync(create_matview, name, select_sql, with_data=with_data, if_not_exists=if_not_exists)


async def arefresh_matview(aconn: AsyncConnection, name: MatviewName, *, concurrently: bool = False) -> None:
    """:func:`refresh_matview` on an ``AsyncConnection``: the event loop is never blocked."""
    quote_matview_name(name)
    await aconn.run_sync(refresh_matview, name, concurrently=concurrently)


async def adrop_matview(
    aconn: AsyncConnection, name: MatviewName, *, if_exists: bool = True, cascade: bool = False
) -> None:
    """:func:`drop_matview` on an ``AsyncConnection``."""
    quote_matview_name(name)
    await aconn.run_sync(drop_matview, name, if_exists=if_exists, cascade=cascade)


async def alist_matviews(aconn: AsyncConnection, *, schema: str | None = "public") -> list[MatviewInfo]:
    """:func:`list_matviews` on an ``AsyncConnection``."""
    return await aconn.run_sync(list_matviews, schema=schema)


@dataclass(frozen=True)
class MatviewRefreshTask:
    """A zero-argument callable refreshing one view: give it to any scheduler (APScheduler, Celery beat, cron
    wrappers, a thread). Each call opens a connection of its own, refreshes, commits and closes it; errors
    propagate to the scheduler.
    """

    engine: Engine
    name: MatviewName
    concurrently: bool = True

    def __call__(self) -> None:
        """Refresh the view now, in a transaction of its own."""
        with self.engine.begin() as conn:
            refresh_matview(conn, self.name, concurrently=self.concurrently)

    def __str__(self) -> str:
        mode = " concurrently" if self.concurrently else ""
        return f"refresh materialized view {quote_matview_name(self.name)}{mode}"


def matview_refresh_task(engine: Engine, name: MatviewName, *, concurrently: bool = True) -> MatviewRefreshTask:
    """A zero-argument callable that refreshes ``name`` on a connection of its own and commits.

    The name is validated now, so a bad one fails when the job is scheduled rather than when it first runs.
    ``concurrently`` defaults to ``True`` (readers are never blocked); the view then needs a unique index on
    plain columns and must be populated, else each run raises :class:`MatviewError`.
    """
    quote_matview_name(name)
    return MatviewRefreshTask(engine, name, concurrently)


def amatview_refresh_task(
    engine: AsyncEngine, name: MatviewName, *, concurrently: bool = True
) -> Callable[[], Awaitable[None]]:
    """:func:`matview_refresh_task` for asyncio schedulers: a zero-argument coroutine function on an
    ``AsyncEngine``.
    """
    quote_matview_name(name)

    async def refresh_task() -> None:
        async with engine.begin() as aconn:
            await arefresh_matview(aconn, name, concurrently=concurrently)

    refresh_task.__qualname__ = refresh_task.__name__ = f"refresh_matview[{quote_matview_name(name)}]"
    return refresh_task
