"""Running our own SQL where no other role can reach it through ``search_path``.

PostgreSQL resolves function and operator names when it parses a statement, over every schema on the session's
``search_path``, and picks the *closest* match: a role that may create objects in ``public`` can add
``public.json_build_array(name, text)`` or ``public.=(oid, regclass)``, which beat ``pg_catalog``'s own (which
take ``"any"`` or need a cast), and have it run with the privileges of whoever parses the statement. Setting
``search_path`` inside the statement is too late.

So every statement the library writes itself (catalog reads, ``DO`` blocks, helpers) runs with ``search_path``
pinned to ``pg_catalog, pg_temp`` by a statement of its own, sent before it in the same batch, and the session's
own path is put back after it. The user's template SQL is the user's: it runs under the session's path, as
written. Batches go over the simple query protocol, where PostgreSQL parses each statement only when the one
before it has run, and which runs the whole batch in one (implicit) transaction when none is open, so
``set_config(…, true)`` never outlives it.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Mapping, Sequence
from contextlib import suppress
from typing import TYPE_CHECKING, Any

from .identifiers import dollar_quote, quote_literal

if TYPE_CHECKING:  # not at run time: the CLI's no-op check runs without SQLAlchemy (see quick.py)
    from sqlalchemy import Connection

#: The only schemas in which our statements look names up. ``pg_temp`` last: never a function or operator.
PINNED_PATH = "pg_catalog, pg_temp"

#: A custom setting holding the session's path while ours is pinned (transaction-local, like the pin itself).
_SAVED = "alembic_samizdat.search_path"

#: Saves the session's path, then pins ours. Every name is qualified: this runs under the session's path.
PIN = (
    f"SELECT pg_catalog.set_config('{_SAVED}', pg_catalog.current_setting('search_path'), true); "
    f"SELECT pg_catalog.set_config('search_path', '{PINNED_PATH}', true)"
)
#: Puts the session's path back (a no-op path stays as it was pinned only until the transaction ends).
UNPIN = f"SELECT pg_catalog.set_config('search_path', pg_catalog.current_setting('{_SAVED}'), true)"

#: Result sets that :data:`PIN` produces before the statement it protects.
PIN_RESULTS = 2


def wrap(sql: str) -> str:
    """``sql`` (our own statements, no rows wanted) between :data:`PIN` and :data:`UNPIN`, as one batch."""
    return f"{PIN};\n{sql};\n{UNPIN}"


#: A ``:name`` placeholder (not the second colon of a ``::`` cast).
_PLACEHOLDER = re.compile(r"(?<![:\w]):([a-z_]+)\b")


def literal(value: object) -> str:
    """The SQL literal of a Python value (quoted by the library; casts qualified)."""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        return str(value)
    if value is None:
        return "NULL"
    if isinstance(value, str):
        return quote_literal(value)
    if isinstance(value, list | tuple):
        return f"CAST(ARRAY[{', '.join(quote_literal(str(v)) for v in value)}] AS pg_catalog.text[])"
    raise TypeError(f"no SQL literal for {value!r}")


def inline(sql: str, params: Mapping[str, object]) -> str:
    """``sql`` with every ``:name`` replaced by the literal of ``params[name]``."""
    return _PLACEHOLDER.sub(lambda m: literal(params[m.group(1)]), sql)


def query(
    connection: Connection, sql: str, params: Mapping[str, object] | None = None, *, before: str = ""
) -> Sequence[Any]:
    """The rows of one query of ours, run with ``search_path`` pinned (one round trip on psycopg 3).

    Values are written in as literals: a batch of several statements has no bound parameters. ``before`` is one
    statement (no rows wanted; every name in it qualified) that runs under the session's own path first, e.g. to
    look up a name the caller gave.
    """
    text = inline(sql, params or {})
    if connection.dialect.driver != "psycopg":
        return _query_in_steps(connection, text, before)
    batch = wrap(text)
    skip = PIN_RESULTS
    if before:
        batch = f"{before};\n{batch}"
        skip += 1
    result = connection.exec_driver_sql(batch, execution_options={"no_parameters": True})
    cursor = result.cursor
    try:
        assert cursor is not None
        adapted = getattr(cursor, "_cursor", None)
        if adapted is not None and inspect.iscoroutinefunction(getattr(adapted, "fetchall", None)):
            # An AsyncEngine's cursor (psycopg's AsyncCursor inside SQLAlchemy's adapter). Its own nextset()
            # cannot be used: 2.1's awaits psycopg's nextset(), which is not a coroutine; 2.0's passes it on
            # without reading the next set's rows, so its fetchall() would return the pin's. Step psycopg's
            # cursor itself: it holds every result set already.
            for _ in range(skip):
                moved = adapted.nextset()
                if inspect.isawaitable(moved):
                    _await(moved)
            return list(_await(adapted.fetchall()))
        for _ in range(skip):
            cursor.nextset()
        return list(cursor.fetchall())
    finally:
        result.close()


def _query_in_steps(connection: Connection, text: str, before: str) -> Sequence[Any]:
    """:func:`query` for drivers that give no access to a batch's middle result (psycopg2 returns the last one;
    asyncpg sends one statement at a time): the path is pinned for the session around the query and put back
    after it, in a few more round trips. A failed query in a transaction undoes the pin with the transaction."""
    options = {"no_parameters": True}
    if before:
        connection.exec_driver_sql(before, execution_options=options)
    session_path = connection.exec_driver_sql(
        "SELECT pg_catalog.current_setting('search_path')", execution_options=options
    ).scalar()
    connection.exec_driver_sql(
        f"SELECT pg_catalog.set_config('search_path', '{PINNED_PATH}', false)", execution_options=options
    ).close()
    try:
        return list(connection.exec_driver_sql(text, execution_options=options).all())
    finally:
        with suppress(Exception):
            connection.exec_driver_sql(
                f"SELECT pg_catalog.set_config('search_path', {literal(str(session_path))}, false)",
                execution_options=options,
            ).close()


def _await(awaitable: Any) -> Any:
    """Run a coroutine from inside SQLAlchemy's greenlet bridge (the name changed in SQLAlchemy 2.1)."""
    from sqlalchemy import util

    bridge = getattr(util, "await_", None) or util.await_only
    return bridge(awaitable)


def do_block(body: str, declare: str = "") -> str:
    """A ``DO`` block of ours: it pins ``search_path`` first and puts the session's back at the end.

    ``body`` runs inside a block labelled ``samizdat``: leave it early with ``EXIT samizdat;`` (never
    ``RETURN``, which would skip putting the path back). Variables in ``declare`` are compiled before the pin:
    qualify their types (``pg_catalog.oid``). An error ends the transaction (or subtransaction), which undoes
    the pin with everything else.
    """
    text = (
        "DECLARE samizdat_path pg_catalog.text := pg_catalog.current_setting('search_path');\n"
        f"{declare}"
        "BEGIN\n"
        f"PERFORM pg_catalog.set_config('search_path', '{PINNED_PATH}', true);\n"
        "<<samizdat>>\nBEGIN\n"
        f"{body}\n"
        "END;\n"
        "PERFORM pg_catalog.set_config('search_path', samizdat_path, true);\n"
        "END"
    )
    return f"DO {dollar_quote(text)}"
