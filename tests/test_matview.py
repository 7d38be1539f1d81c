"""The standalone materialized view helpers (alembic_samizdat.matview) on a real PostgreSQL."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import sqlalchemy as sa
from helpers import run_sql, scalar, statement_log
from sqlalchemy.ext.asyncio import create_async_engine

from alembic_samizdat import InvalidIdentifierError, SamizdatError
from alembic_samizdat.matview import (
    MatviewError,
    MatviewInfo,
    acreate_matview,
    adrop_matview,
    alist_matviews,
    amatview_refresh_task,
    arefresh_matview,
    create_matview,
    drop_matview,
    list_matviews,
    matview_refresh_task,
    quote_matview_name,
    refresh_matview,
)

INJECTION = "x; DROP TABLE t; --"


@pytest.fixture
def t_engine(engine: sa.Engine) -> sa.Engine:
    """A database holding table ``t (id int, label text)`` with two rows."""
    run_sql(engine, "CREATE TABLE t (id int PRIMARY KEY, label text)", "INSERT INTO t VALUES (1, 'a'), (2, 'b')")
    return engine


def test_create_refresh_list_drop(t_engine: sa.Engine) -> None:
    with t_engine.begin() as conn:
        # '%' and a trailing comment and semicolon reach the server as written.
        create_matview(conn, "pct", "SELECT id, label || '%' AS label FROM t WHERE label LIKE '%' -- all rows\n;")
        create_matview(conn, "empty", "SELECT id FROM t", with_data=False)
        create_matview(conn, "pct", "SELECT 1", if_not_exists=True)  # exists: a notice, no error
        assert list_matviews(conn) == [
            MatviewInfo("public", "empty", populated=False, has_unique_index=False),
            MatviewInfo("public", "pct", populated=True, has_unique_index=False),
        ]
    assert scalar(t_engine, "SELECT string_agg(label, ',' ORDER BY id) FROM pct") == "a%,b%"

    run_sql(t_engine, "INSERT INTO t VALUES (3, 'c')")
    with t_engine.begin() as conn:
        refresh_matview(conn, "pct")
        refresh_matview(conn, "public.empty")
    assert scalar(t_engine, "SELECT count(*) FROM pct") == 3
    assert scalar(t_engine, "SELECT count(*) FROM empty") == 3

    with t_engine.begin() as conn:
        drop_matview(conn, "pct")
        drop_matview(conn, "pct")  # if_exists by default
        drop_matview(conn, ("public", "empty"))
        assert list_matviews(conn) == []
        with pytest.raises(sa.exc.ProgrammingError, match="does not exist"):
            drop_matview(conn, "pct", if_exists=False)


def test_helpers_run_in_the_callers_transaction(t_engine: sa.Engine) -> None:
    with t_engine.connect() as conn:
        create_matview(conn, "mv", "SELECT id FROM t")
        assert [m.name for m in list_matviews(conn)] == ["mv"]
        conn.rollback()
        assert list_matviews(conn) == []


def test_odd_names_through_tuples_and_schemas(t_engine: sa.Engine) -> None:
    schema, name = "Odd Schema", 'we"ird.name; -- ünï'
    run_sql(t_engine, 'CREATE SCHEMA "Odd Schema"', "CREATE SCHEMA s")
    with t_engine.begin() as conn:
        create_matview(conn, (schema, name), "SELECT id FROM public.t")
        create_matview(conn, "s.Mixed_Case$1", "SELECT id FROM public.t", with_data=False)
        conn.exec_driver_sql(f"CREATE UNIQUE INDEX ON {quote_matview_name((schema, name))} (id)")
        assert list_matviews(conn, schema=schema) == [MatviewInfo(schema, name, True, True)]
        assert [(m.schema, m.name, m.populated) for m in list_matviews(conn, schema=None)] == [
            (schema, name, True),
            ("s", "Mixed_Case$1", False),  # names are taken literally: case is kept
        ]
        assert list_matviews(conn) == []  # public only
        refresh_matview(conn, (schema, name), concurrently=True)
        refresh_matview(conn, "s.Mixed_Case$1")
        assert list_matviews(conn, schema="s")[0].populated
        info = list_matviews(conn, schema=schema)[0]
        assert info.qualified_name == '"Odd Schema"."we""ird.name; -- ünï"' and info.can_refresh_concurrently
        drop_matview(conn, (schema, name))
        drop_matview(conn, "s.Mixed_Case$1")
        assert list_matviews(conn, schema=None) == []


def _helpers(conn: sa.Connection, name: Any) -> list[Any]:
    return [
        lambda: create_matview(conn, name, "SELECT 1"),
        lambda: refresh_matview(conn, name),
        lambda: refresh_matview(conn, name, concurrently=True),
        lambda: drop_matview(conn, name),
        lambda: drop_matview(conn, name, cascade=True),
    ]


@pytest.mark.parametrize(
    "bad",
    [
        INJECTION,
        'x"; DROP TABLE t; --',
        "",
        "a.b.c",
        ".a",
        "a.",
        "1abc",
        "a-b",
        "a b",
        "ünï",
        "mv\n",
        "x" * 64,
        "s." + "x" * 64,
        "a\x00b",
        ("public",),
        ("public", "t", "x"),
        ("public", ""),
        ("", "mv"),
        ("public", "a\x00"),
        ("public", "é" * 32),  # 64 bytes
        ("public", 1),
        42,
        None,
    ],
)
def test_bad_names_send_no_sql(t_engine: sa.Engine, bad: Any) -> None:
    with t_engine.connect() as conn, statement_log(t_engine) as log:
        for call in _helpers(conn, bad):
            with pytest.raises(InvalidIdentifierError):
                call()
        with pytest.raises(InvalidIdentifierError):
            matview_refresh_task(t_engine, bad)
    assert log.statements == []
    assert scalar(t_engine, "SELECT count(*) FROM t") == 2


def test_injection_in_a_quoted_tuple_stays_a_name(t_engine: sa.Engine) -> None:
    with t_engine.begin() as conn:
        create_matview(conn, ("public", INJECTION), "SELECT id FROM t")
        assert [m.name for m in list_matviews(conn)] == [INJECTION]
        refresh_matview(conn, ("public", INJECTION))
        drop_matview(conn, ("public", INJECTION))
    assert scalar(t_engine, "SELECT count(*) FROM t") == 2


def test_longest_plain_names_are_accepted(t_engine: sa.Engine) -> None:
    name = "m" * 63
    with t_engine.begin() as conn:
        create_matview(conn, f"public.{name}", "SELECT 1 AS one")
        assert [m.name for m in list_matviews(conn)] == [name]
        drop_matview(conn, name)


def test_concurrently_needs_a_usable_unique_index(t_engine: sa.Engine) -> None:
    run_sql(t_engine, "CREATE TABLE other (x int)")
    with t_engine.begin() as conn:
        create_matview(conn, "mv", "SELECT id, label FROM t")
        create_matview(conn, "unpopulated", "SELECT id FROM t", with_data=False)
        conn.exec_driver_sql("CREATE UNIQUE INDEX ON unpopulated (id)")
        # Neither an expression index nor a partial one is usable: PostgreSQL would refuse both.
        conn.exec_driver_sql("CREATE UNIQUE INDEX ON mv ((id + 0))")
        conn.exec_driver_sql("CREATE UNIQUE INDEX ON mv (id) WHERE id > 0")
        conn.exec_driver_sql("CREATE INDEX ON mv (id)")
        assert not any(m.has_unique_index for m in list_matviews(conn) if m.name == "mv")

    with t_engine.connect() as conn, statement_log(t_engine) as log:
        with pytest.raises(MatviewError, match="unique index on plain columns") as caught:
            refresh_matview(conn, "mv", concurrently=True)
        assert 'CREATE UNIQUE INDEX ON "public"."mv"' in str(caught.value)
        assert isinstance(caught.value, SamizdatError)
        with pytest.raises(MatviewError, match="not populated"):
            refresh_matview(conn, "unpopulated", concurrently=True)
        with pytest.raises(MatviewError, match="is a table"):
            refresh_matview(conn, "other", concurrently=True)
        with pytest.raises(MatviewError, match="no such relation"):
            refresh_matview(conn, "missing", concurrently=True)
        # Catalog reads only: no REFRESH was sent, so the transaction is still usable.
        assert log.statements and not any("REFRESH MATERIALIZED" in s.upper() for s in log.statements)
        assert conn.exec_driver_sql("SELECT 1").scalar() == 1
        conn.rollback()

    run_sql(t_engine, "INSERT INTO t VALUES (3, 'c')")
    with t_engine.begin() as conn:
        conn.exec_driver_sql("CREATE UNIQUE INDEX ON mv (id)")
        refresh_matview(conn, "unpopulated")
        refresh_matview(conn, "mv", concurrently=True)
        refresh_matview(conn, "unpopulated", concurrently=True)
        assert all(m.can_refresh_concurrently for m in list_matviews(conn))
    assert scalar(t_engine, "SELECT count(*) FROM mv") == 3


def test_drop_cascade(t_engine: sa.Engine) -> None:
    with t_engine.begin() as conn:
        create_matview(conn, "mv", "SELECT id FROM t")
        conn.exec_driver_sql("CREATE VIEW on_top AS SELECT * FROM mv")
    with t_engine.connect() as conn:
        with pytest.raises(sa.exc.DBAPIError, match="depend"):
            drop_matview(conn, "mv")
        conn.rollback()
        drop_matview(conn, "mv", cascade=True)
        conn.commit()
    assert scalar(t_engine, "SELECT to_regclass('on_top') IS NULL AND to_regclass('mv') IS NULL") is True


def test_refresh_task(t_engine: sa.Engine) -> None:
    with t_engine.begin() as conn:
        create_matview(conn, "mv", "SELECT id FROM t")
        create_matview(conn, "plain", "SELECT id FROM t")
        conn.exec_driver_sql("CREATE UNIQUE INDEX ON mv (id)")
    task = matview_refresh_task(t_engine, "mv")
    assert str(task) == 'refresh materialized view "mv" concurrently'
    run_sql(t_engine, "INSERT INTO t VALUES (3, 'c')")
    task()  # committed on its own connection: visible from another one
    assert scalar(t_engine, "SELECT count(*) FROM mv") == 3
    run_sql(t_engine, "INSERT INTO t VALUES (4, 'd')")
    task()  # runs again and again
    assert scalar(t_engine, "SELECT count(*) FROM mv") == 4

    with pytest.raises(MatviewError, match="unique index"):
        matview_refresh_task(t_engine, "plain")()
    matview_refresh_task(t_engine, "plain", concurrently=False)()
    assert scalar(t_engine, "SELECT count(*) FROM plain") == 4


def test_async_helpers(t_engine: sa.Engine, db_url: str) -> None:
    async def go() -> tuple[list[MatviewInfo], list[MatviewInfo], int]:
        aengine = create_async_engine(db_url)
        try:
            async with aengine.begin() as aconn:
                await acreate_matview(aconn, "amv", "SELECT id FROM t WHERE label LIKE '%'")
                await aconn.exec_driver_sql("CREATE UNIQUE INDEX ON amv (id)")
                await acreate_matview(aconn, "later", "SELECT id FROM t", with_data=False)
                before = await alist_matviews(aconn)
            async with aengine.begin() as aconn:
                await aconn.exec_driver_sql("INSERT INTO t VALUES (3, 'c')")
                await arefresh_matview(aconn, "amv", concurrently=True)
                await arefresh_matview(aconn, "public.later")
                with pytest.raises(MatviewError, match="unique index"):
                    await arefresh_matview(aconn, "later", concurrently=True)
            log_calls: list[str] = []
            sa.event.listen(aengine.sync_engine, "before_cursor_execute", lambda *a: log_calls.append(a[2]))
            async with aengine.connect() as aconn:
                with pytest.raises(InvalidIdentifierError):
                    await arefresh_matview(aconn, INJECTION)
                with pytest.raises(InvalidIdentifierError):
                    await acreate_matview(aconn, INJECTION, "SELECT 1")
                with pytest.raises(InvalidIdentifierError):
                    await adrop_matview(aconn, INJECTION)
            sent = len(log_calls)
            task = amatview_refresh_task(aengine, "amv")
            await aconn_insert(aengine)
            await task()
            async with aengine.begin() as aconn:
                after = await alist_matviews(aconn)
                assert (await aconn.exec_driver_sql("SELECT count(*) FROM amv")).scalar() == 4
                await adrop_matview(aconn, "later")
                await adrop_matview(aconn, ("public", "amv"))
                assert await alist_matviews(aconn, schema=None) == []
        finally:
            await aengine.dispose()
        return before, after, sent

    before, after, sent = asyncio.run(go())
    assert before == [MatviewInfo("public", "amv", True, True), MatviewInfo("public", "later", False, False)]
    assert after == [MatviewInfo("public", "amv", True, True), MatviewInfo("public", "later", True, False)]
    assert sent == 0
    assert scalar(t_engine, "SELECT count(*) FROM t") == 4


async def aconn_insert(aengine: Any) -> None:
    async with aengine.begin() as aconn:
        await aconn.exec_driver_sql("INSERT INTO t VALUES (4, 'd')")
