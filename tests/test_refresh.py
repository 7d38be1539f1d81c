"""Refreshing materialized views on a real PostgreSQL: order, parallel failures, stale marks, modes, async."""

from __future__ import annotations

import asyncio
import inspect
import threading

import pytest
import sqlalchemy as sa
from helpers import unique_role
from sqlalchemy.ext.asyncio import create_async_engine

from alembic_samizdat import SamizdatError, SamizdatMaterializedView, SamizdatRegistry, sync
from alembic_samizdat.api import diff_database, refresh, refresh_async
from alembic_samizdat.refresh_plan import ConcurrentRefreshError, UnknownNodeError, select_below
from alembic_samizdat.refresher import MissingViewError, RefreshError


def stack() -> SamizdatRegistry:
    """src table -> Low -> Mid -> High, plus Side (independent) and Fragile (fails when src holds 0)."""
    registry = SamizdatRegistry()

    @registry.register
    class Low(SamizdatMaterializedView):
        deps_on_unmanaged = {"src"}
        refresh_concurrently = True
        sql_template = "${preamble} SELECT x FROM src ${postamble}; CREATE UNIQUE INDEX ON ${samizdatname} (x)"

    @registry.register
    class Mid(SamizdatMaterializedView):
        deps_on = {Low}
        sql_template = '${preamble} SELECT sum(x) AS s FROM "Low" ${postamble}'

    @registry.register
    class High(SamizdatMaterializedView):
        deps_on = {Mid}
        sql_template = '${preamble} SELECT s * 10 AS t FROM "Mid" ${postamble}'

    @registry.register
    class Side(SamizdatMaterializedView):
        sql_template = "${preamble} SELECT count(*) AS n FROM generate_series(1, 10) ${postamble}"

    @registry.register
    class Fragile(SamizdatMaterializedView):
        deps_on_unmanaged = {"src"}
        sql_template = "${preamble} SELECT 100 / x AS y FROM src ${postamble}"

    return registry


@pytest.fixture
def synced(engine: sa.Engine) -> tuple[sa.Engine, SamizdatRegistry]:
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE src (x int); INSERT INTO src VALUES (1), (2)")
    registry = stack()
    sync(engine, registry)
    return engine, registry


def scalar(engine: sa.Engine, sql: str) -> object:
    with engine.connect() as conn:
        return conn.exec_driver_sql(sql).scalar()


@pytest.mark.parametrize("parallel", [False, True])
def test_refresh_in_dependency_order(synced: tuple[sa.Engine, SamizdatRegistry], parallel: bool) -> None:
    engine, registry = synced
    with engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO src VALUES (3)")
    result = refresh(engine, registry, parallel=parallel, jobs=3)
    assert scalar(engine, 'SELECT t FROM "High"') == 60  # (1+2+3) * 10: Low, then Mid, then High
    order = [k.name for k in result.refreshed]
    assert order.index("Low") < order.index("Mid") < order.index("High")
    assert sorted(order) == ["Fragile", "High", "Low", "Mid", "Side"]


def test_belownodes_selects_transitive_matviews_only(synced: tuple[sa.Engine, SamizdatRegistry]) -> None:
    engine, registry = synced
    graph = registry.graph()
    assert [k.name for k in select_below(graph, ["Mid"])] == ["Mid", "High"]
    assert {k.name for k in select_below(graph, ["public.src"])} == {"Low", "Mid", "High", "Fragile"}
    with pytest.raises(UnknownNodeError, match="nope"):
        select_below(graph, ["nope"])
    result = refresh(engine, registry, belownodes=["src"])
    assert "Side" not in {k.name for k in result.refreshed}


@pytest.mark.parametrize("parallel", [False, True])
def test_failure_is_reported_and_marked_stale(synced: tuple[sa.Engine, SamizdatRegistry], parallel: bool) -> None:
    engine, registry = synced
    with engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO src VALUES (0)")
    with pytest.raises(RefreshError) as caught:
        refresh(engine, registry, parallel=parallel, jobs=2)
    assert [f.key.name for f in caught.value.failures] == ["Fragile"]
    assert "division by zero" in str(caught.value)
    # The failed view is marked, so diff reports it and the next sync refreshes it once the data is fixed.
    assert "not populated" in [d.what.value for d in diff_database(engine, registry).differences]
    with engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM src WHERE x = 0")
    result = sync(engine, registry)
    # The failed view, and those the interrupted run never reached (they stayed marked), are refreshed.
    not_run = {label.rsplit(".", 1)[-1] for label in caught.value.not_run}
    assert {a.key.name for a in result.applied} == {"Fragile"} | not_run
    assert diff_database(engine, registry).differences == ()
    assert not sync(engine, registry).plan.actions


def test_parallel_failure_stops_new_work(synced: tuple[sa.Engine, SamizdatRegistry]) -> None:
    engine, registry = synced
    with engine.begin() as conn:  # Low now fails: Mid and High must not run
        conn.exec_driver_sql("INSERT INTO src VALUES (1)")
    with pytest.raises(RefreshError) as caught:
        refresh(engine, registry, parallel=True, jobs=2, belownodes=["Low"])
    assert "could not create unique index" in str(caught.value) or "duplicate" in str(caught.value)
    assert {"High", "Mid"} <= {name.rsplit(".", 1)[-1] for name in caught.value.not_run}


def test_concurrently_modes(synced: tuple[sa.Engine, SamizdatRegistry]) -> None:
    engine, registry = synced
    auto = refresh(engine, registry, belownodes=["Low"], concurrently="auto")
    low = next(k for k in auto.concurrently if k.name == "Low")
    assert auto.concurrently[low] is True  # populated, unique index, class asks for it
    assert not any(v for k, v in auto.concurrently.items() if k.name != "Low")
    with pytest.raises(ConcurrentRefreshError, match="Mid"):
        refresh(engine, registry, belownodes=["Low"], concurrently="always")
    never = refresh(engine, registry, belownodes=["Low"], concurrently="never")
    assert not any(never.concurrently.values())


def test_concurrently_auto_falls_back_with_a_note(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE src (x int)")
    registry = SamizdatRegistry()

    @registry.register
    class NoIndex(SamizdatMaterializedView):
        refresh_concurrently = True
        sql_template = "${preamble} SELECT x FROM src ${postamble}"

    sync(engine, registry)
    result = refresh(engine, registry)
    assert result.notes and "NoIndex" in result.notes[0] and "unique index" in result.notes[0]


def test_missing_view_is_a_clear_error(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE src (x int)")
    with pytest.raises(MissingViewError, match="samizdat sync"):
        refresh(engine, stack())


def test_parallel_runs_views_at_the_same_time(engine: sa.Engine) -> None:
    """Two independent slow views overlap in time on two connections (observed in pg_stat_activity)."""
    registry = SamizdatRegistry()
    for name in ("SlowA", "SlowB"):
        registry.register(
            type(
                name,
                (SamizdatMaterializedView,),
                {
                    "__module__": __name__,
                    "sql_template": "${preamble} SELECT 1 AS one FROM pg_sleep(0.6) ${postamble}",
                },
            )
        )
    sync(engine, registry)
    seen: list[int] = []
    stop = threading.Event()

    def watch() -> None:
        with engine.connect() as conn:
            while not stop.is_set():
                seen.append(
                    int(
                        conn.exec_driver_sql(
                            "SELECT count(*) FROM pg_stat_activity WHERE left(query, 25) = 'REFRESH MATERIALIZED VIEW' "
                            "AND state = 'active'"
                        ).scalar()
                        or 0
                    )
                )
                conn.rollback()
                stop.wait(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        refresh(engine, registry, parallel=True, jobs=2)
    finally:
        stop.set()
        watcher.join()
    assert max(seen) == 2


def test_async_refresh(synced: tuple[sa.Engine, SamizdatRegistry], db_url: str) -> None:
    engine, registry = synced
    with engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO src VALUES (4)")

    async def go() -> list[str]:
        async_engine = create_async_engine(db_url)
        try:
            result = await refresh_async(async_engine, registry, jobs=2)
        finally:
            await async_engine.dispose()
        return [k.name for k in result.refreshed]

    names = asyncio.run(go())
    assert names.index("Low") < names.index("Mid") < names.index("High")
    assert scalar(engine, 'SELECT t FROM "High"') == 70


@pytest.mark.parametrize("jobs", [1, 3])
def test_async_refresh_failure_is_reported_marked_and_retried(
    synced: tuple[sa.Engine, SamizdatRegistry], db_url: str, jobs: int
) -> None:
    """Under asyncio too: a failing refresh (division by zero in Fragile) raises RefreshError naming the view,
    which keeps the rows of its last good refresh and is marked stale in its signature (read from the catalog);
    diff flags it and whatever the run left unrefreshed, and the next sync refreshes exactly those."""
    engine, registry = synced
    with engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO src VALUES (0)")

    async def go() -> None:
        async_engine = create_async_engine(db_url)
        try:
            await refresh_async(async_engine, registry, jobs=jobs)
        finally:
            await async_engine.dispose()

    with pytest.raises(RefreshError) as caught:
        asyncio.run(go())
    error = caught.value
    assert [f.key.name for f in error.failures] == ["Fragile"]
    assert "division by zero" in str(error) and '"public"."Fragile"' in str(error)
    assert scalar(engine, 'SELECT count(*) FROM "Fragile"') == 2
    comment = str(scalar(engine, "SELECT obj_description('\"Fragile\"'::regclass, 'pg_class')"))
    assert comment.endswith(',"stale":true}'), comment
    not_run = {label.rsplit(".", 1)[-1].strip('"') for label in error.not_run}
    assert {d.key.name for d in diff_database(engine, registry).differences} == {"Fragile"} | not_run
    if "Low" not in not_run:
        assert scalar(engine, 'SELECT count(*) FROM "Low"') == 3  # refreshed: holds the new row
    with engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM src WHERE x = 0")
    assert {a.key.name for a in sync(engine, registry).applied} == {"Fragile"} | not_run
    assert diff_database(engine, registry).differences == ()


def test_async_refresh_of_a_missing_view_refreshes_nothing(
    synced: tuple[sa.Engine, SamizdatRegistry], db_url: str
) -> None:
    engine, registry = synced
    with engine.begin() as conn:
        conn.exec_driver_sql('DROP MATERIALIZED VIEW "Side"; INSERT INTO src VALUES (5)')

    async def go() -> None:
        async_engine = create_async_engine(db_url)
        try:
            await refresh_async(async_engine, registry)
        finally:
            await async_engine.dispose()

    with pytest.raises(MissingViewError, match="Side"):
        asyncio.run(go())
    assert scalar(engine, 'SELECT count(*) FROM "Low"') == 2  # not refreshed: the new row is not there


def test_next_sync_refreshes_the_views_above_a_failed_one(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE src (x int); INSERT INTO src VALUES (1), (2)")
    registry = SamizdatRegistry()

    @registry.register
    class Base(SamizdatMaterializedView):
        deps_on_unmanaged = {"src"}
        sql_template = "${preamble} SELECT 10 / x AS y FROM src ${postamble}"

    @registry.register
    class Above(SamizdatMaterializedView):
        deps_on = {Base}
        sql_template = '${preamble} SELECT sum(y) AS total FROM "Base" ${postamble}'

    sync(engine, registry)
    with engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO src VALUES (0)")
    with pytest.raises(RefreshError):
        refresh(engine, registry)
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE src SET x = 5 WHERE x = 0")
    applied = [a.key.name for a in sync(engine, registry).applied]
    assert applied == ["Base", "Above"]  # Above read the stale Base: refreshed after it
    assert scalar(engine, 'SELECT total FROM "Above"') == 10 + 5 + 2


def test_autorefresh_works_for_a_role_that_may_only_write_the_table(engine: sa.Engine, db_url: str) -> None:
    writer_role = unique_role("samizdat_writer")
    with engine.begin() as conn:
        conn.exec_driver_sql(
            f"CREATE TABLE src (x int); CREATE ROLE \"{writer_role}\" LOGIN PASSWORD 'samizdat-test';"
            f'GRANT USAGE ON SCHEMA public TO "{writer_role}"; GRANT INSERT ON src TO "{writer_role}"'
        )
    registry = SamizdatRegistry()

    @registry.register
    class Fed(SamizdatMaterializedView):
        deps_on_unmanaged = {"src"}
        refresh_triggers = {"src"}
        sql_template = "${preamble} SELECT count(*) AS n FROM src ${postamble}"

    sync(engine, registry)
    writer = sa.create_engine(sa.make_url(db_url).set(username=writer_role, password="samizdat-test"))
    try:
        with writer.begin() as conn:
            conn.exec_driver_sql("INSERT INTO src VALUES (1)")
    finally:
        writer.dispose()
        with engine.begin() as conn:
            conn.exec_driver_sql(f'DROP OWNED BY "{writer_role}"; DROP ROLE "{writer_role}"')
    assert scalar(engine, 'SELECT n FROM "Fed"') == 1


def test_refresh_inside_a_transaction_says_why(synced: tuple[sa.Engine, SamizdatRegistry]) -> None:
    engine, registry = synced
    with engine.connect() as conn:
        conn.exec_driver_sql("SELECT 1")
        with pytest.raises(SamizdatError, match="refresh runs each view in its own transaction") as caught:
            refresh(conn, registry)
        # Refused before anything was sent: the caller's transaction is still usable.
        assert conn.exec_driver_sql("SELECT 2").scalar() == 2
    assert type(caught.value) is SamizdatError


def test_cli_belownodes_before_the_url(synced: tuple[sa.Engine, SamizdatRegistry], db_url: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from alembic_samizdat.cli import main

    module = tmp_path / "stackmod.py"
    # Self-contained: the CLI imports the file by path, whatever the working directory and sys.path are.
    imports = "from alembic_samizdat import SamizdatMaterializedView, SamizdatRegistry\n\n"
    module.write_text(imports + inspect.getsource(stack) + "\nregistry = stack()\n")
    assert main(["refresh", "-q", "--belownodes", "Mid", db_url, str(module)]) == 0
