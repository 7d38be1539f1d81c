"""Deferred autorefresh and the worker, on a real PostgreSQL.

The views count ``src``'s rows; ``Counted.r`` reads a sequence once per refresh, so it says how many times the
view was refreshed (a refresh the test can count without trusting the worker's own report).
"""

from __future__ import annotations

import asyncio
import io
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stdout
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from helpers import make_registry, matview, rows, run_sql, scalar

from alembic_samizdat import SamizdatError, SamizdatRegistry
from alembic_samizdat.api import diff_database, sync
from alembic_samizdat.cli import main
from alembic_samizdat.deferred import LOCK_NAMESPACE, MARKS_TABLE, view_lock_key
from alembic_samizdat.errors import DeclarationError, ExecutionError
from alembic_samizdat.registry import registry_from_modules
from alembic_samizdat.worker import NoDeferredViewsError, Worker, run_worker_async, stale_views

PASSWORD = "samizdat-test"

MODULE = """
from alembic_samizdat import SamizdatMaterializedView


class Counted(SamizdatMaterializedView):
    sql_template = '''${{preamble}}
        SELECT count(*) AS n, (SELECT nextval('refreshes')) AS r,
               (SELECT count(*) FROM pg_sleep(CASE WHEN (SELECT slow FROM knobs) THEN {sleep} ELSE 0 END)) AS s
        FROM src ${{postamble}}'''
    refresh_triggers = {{"src"}}
    refresh_mode = "deferred"


class Above(SamizdatMaterializedView):
    deps_on = {{Counted}}
    sql_template = '${{preamble}} SELECT n FROM "Counted" ${{postamble}}'
"""


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Wait for ``predicate``; fail naming ``what`` if it never holds (a hang, not a slow run)."""
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.05)


def counts(engine: sa.Engine) -> tuple[int, int, int]:
    """(rows in src, rows Counted says, rows Above says)."""
    return (
        int(scalar(engine, "SELECT count(*) FROM src")),
        int(scalar(engine, 'SELECT n FROM "Counted"')),
        int(scalar(engine, 'SELECT n FROM "Above"')),
    )


def fresh(engine: sa.Engine) -> bool:
    real, counted, above = counts(engine)
    return real == counted == above


def refreshes(engine: sa.Engine) -> int:
    return int(scalar(engine, 'SELECT r FROM "Counted"'))


def insert(engine: sa.Engine, n: int = 1) -> None:
    """``n`` single-row inserts, each in its own transaction."""
    with engine.connect() as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        for _ in range(n):
            conn.exec_driver_sql("INSERT INTO src VALUES (1)")


@pytest.fixture
def module(tmp_path: Path) -> Path:
    path = tmp_path / f"deferred_{uuid.uuid4().hex[:8]}.py"
    path.write_text(MODULE.format(sleep=3))
    return path


@pytest.fixture
def stack(engine: sa.Engine, module: Path) -> SamizdatRegistry:
    run_sql(
        engine,
        "CREATE TABLE src (x int)",
        "CREATE SEQUENCE refreshes",
        "CREATE TABLE knobs (slow bool)",
        "INSERT INTO knobs VALUES (false)",
    )
    registry = registry_from_modules([str(module)])
    sync(engine, registry)
    return registry


@contextmanager
def running(engine: sa.Engine, registry: SamizdatRegistry, **options: Any) -> Iterator[Worker]:
    """A worker in a thread, on an engine of its own, stopped (and joined) at the end."""
    options.setdefault("debounce", 0.2)
    options.setdefault("max_delay", 5.0)
    own = sa.create_engine(engine.url)
    worker = Worker(own, registry, **options)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        yield worker
    finally:
        worker.stop()
        thread.join(20)
        own.dispose()
        assert not thread.is_alive(), "the worker did not stop"


def test_writes_only_mark_and_diff_sees_no_difference(engine: sa.Engine, stack: SamizdatRegistry) -> None:
    assert counts(engine) == (0, 0, 0)
    with engine.begin() as conn:
        # Three statements, one transaction: one mark per view, not three.
        for _ in range(3):
            conn.exec_driver_sql("INSERT INTO src VALUES (1)")
    insert(engine, 2)
    assert counts(engine) == (5, 0, 0)  # not refreshed by the writes
    stale = stale_views(engine, stack)
    assert [(v.key.name, v.marks) for v in stale] == [("Counted", 3), ("Above", 3)]
    assert all(v.stale_seconds >= v.last_write_seconds >= 0 for v in stale)
    assert diff_database(engine, stack).differences == ()
    # A rolled-back write leaves no mark.
    with engine.connect() as conn:
        conn.exec_driver_sql("INSERT INTO src VALUES (1)")
        conn.rollback()
    assert [v.marks for v in stale_views(engine, stack)] == [3, 3]


def test_worker_catches_up_on_marks_written_while_none_ran(engine: sa.Engine, stack: SamizdatRegistry) -> None:
    insert(engine, 5)
    before = refreshes(engine)
    with running(engine, stack):
        wait_until(lambda: fresh(engine), "the views are fresh")
        wait_until(lambda: not stale_views(engine, stack), "the marks are consumed")
    assert counts(engine) == (5, 5, 5)
    assert refreshes(engine) == before + 1


def test_burst_of_1000_inserts_makes_a_handful_of_refreshes(engine: sa.Engine, stack: SamizdatRegistry) -> None:
    before = refreshes(engine)
    with running(engine, stack, debounce=0.5, max_delay=10.0):
        insert(engine, 1000)
        wait_until(lambda: fresh(engine), "the views are fresh after the burst")
        wait_until(lambda: not stale_views(engine, stack), "the marks are consumed")
    assert counts(engine) == (1000, 1000, 1000)
    done = refreshes(engine) - before
    # Immediate autorefresh would have refreshed 1,000 times; a pause of the writer longer than the debounce (a
    # loaded machine) may add a refresh during the burst.
    assert 1 <= done <= 10, done


def test_status_and_worker_on_the_command_line(
    engine: sa.Engine, stack: SamizdatRegistry, db_url: str, module: Path
) -> None:
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["status", db_url, str(module)]) == 0
    assert "no materialized view is marked stale" in out.getvalue()
    insert(engine, 2)
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["status", db_url, str(module)]) == 0
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and lines[0].startswith('stale "public"."Counted"') and "2 mark(s)" in lines[0]
    assert lines[1].startswith('stale "public"."Above"')
    # The worker runs until SIGTERM, then exits 0 with nothing left marked.
    proc = worker_process(db_url, module)
    try:
        wait_until(lambda: fresh(engine), "the CLI worker refreshed the views")
        wait_until(lambda: not stale_views(engine, stack), "the marks are consumed")
        proc.send_signal(signal.SIGTERM)
        stdout, _ = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0
    assert 'refreshed "public"."Counted" in ' in stdout and "after the first write" in stdout
    assert "worker stopped" in stdout


def worker_process(db_url: str, module: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "alembic_samizdat.cli", "worker", db_url, str(module), "--debounce", "0.1", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def refreshing(engine: sa.Engine) -> bool:
    """Whether another session is running a worker's refresh now."""
    return bool(
        scalar(
            engine,
            "SELECT count(*) FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND state = 'active' "
            "AND query LIKE '%REFRESH MATERIALIZED VIEW%'",
        )
    )


def test_killing_the_worker_mid_refresh_leaves_the_views_marked(
    engine: sa.Engine, stack: SamizdatRegistry, db_url: str, module: Path
) -> None:
    run_sql(engine, "UPDATE knobs SET slow = true")
    insert(engine, 3)
    proc = worker_process(db_url, module)
    try:
        wait_until(lambda: refreshing(engine), "the worker started refreshing")
        proc.kill()
        proc.wait(10)
        # The server notices a dead client only when it writes to it: end its sessions as a crash would.
        run_sql(
            engine,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
    finally:
        proc.kill()
    assert counts(engine) == (3, 0, 0)
    assert [v.marks for v in stale_views(engine, stack)] == [3, 3]  # rolled back with the refresh
    run_sql(engine, "UPDATE knobs SET slow = false")
    with running(engine, stack):
        wait_until(lambda: fresh(engine), "another worker refreshed everything")
        wait_until(lambda: not stale_views(engine, stack), "the marks are consumed")
    assert counts(engine) == (3, 3, 3)


def test_worker_reconnects_after_its_connections_are_dropped(engine: sa.Engine, stack: SamizdatRegistry) -> None:
    with running(engine, stack) as worker:
        insert(engine, 1)
        wait_until(lambda: fresh(engine), "first refresh")
        wait_until(lambda: not stale_views(engine, stack), "the marks are consumed")
        assert worker._listener is not None
        listening = {
            r[0]
            for r in rows(
                engine,
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()",
            )
        } - {r[0] for r in rows(engine, "SELECT pg_backend_pid()")}
        assert listening
        # As a server restart does: every session of the worker ends; the writes go on meanwhile.
        pids = ",".join(str(pid) for pid in listening)
        run_sql(engine, f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid IN ({pids})")
        insert(engine, 4)
        wait_until(lambda: fresh(engine), "refreshed after reconnecting")
        assert counts(engine) == (5, 5, 5)
        insert(engine, 1)
        wait_until(lambda: fresh(engine), "listening again after reconnecting")
    assert not stale_views(engine, stack)


def test_two_workers_never_refresh_one_view_at_once_and_lose_no_mark(
    engine: sa.Engine, stack: SamizdatRegistry
) -> None:
    key = stack.lookup("Counted").key()
    with engine.connect() as holder:
        # Hold the view's refresh lock as a third worker refreshing it would.
        holder.exec_driver_sql(f"SELECT pg_advisory_lock({LOCK_NAMESPACE}, {view_lock_key(key)})")
        holder.commit()
        with running(engine, stack) as first, running(engine, stack, jobs=2) as second:
            assert first is not second
            insert(engine, 3)
            wait_until(
                lambda: bool(
                    scalar(engine, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
                ),
                "a worker waits for the view's lock",
            )
            assert counts(engine) == (3, 0, 0)
            assert [v.marks for v in stale_views(engine, stack)] == [3, 3]
            holder.exec_driver_sql(f"SELECT pg_advisory_unlock({LOCK_NAMESPACE}, {view_lock_key(key)})")
            holder.commit()
            wait_until(lambda: fresh(engine), "fresh once the lock is released")
            for _ in range(5):
                insert(engine, 40)
            wait_until(lambda: counts(engine) == (203, 203, 203), "fresh after bursts under two workers")
            wait_until(lambda: not stale_views(engine, stack), "every mark consumed")


def test_stop_during_a_refresh_finishes_it_and_keeps_later_marks(engine: sa.Engine, stack: SamizdatRegistry) -> None:
    run_sql(engine, "UPDATE knobs SET slow = true")
    insert(engine, 2)
    with running(engine, stack) as worker:
        wait_until(lambda: refreshing(engine), "the worker started refreshing")
        insert(engine, 1)  # marked during the refresh: must be refreshed again, not forgotten
        worker.stop()
    # The refresh of Counted finished or was abandoned; nothing the worker did not refresh is unmarked.
    real, _, above = counts(engine)
    assert real == 3
    marked = {v.key.name for v in stale_views(engine, stack)}
    assert "Counted" in marked  # the write during the refresh
    if above != real:
        assert "Above" in marked
    run_sql(engine, "UPDATE knobs SET slow = false")
    with running(engine, stack):
        wait_until(lambda: fresh(engine), "fresh after a restart")


def test_async_worker_refreshes_and_stops_on_cancel(engine: sa.Engine, stack: SamizdatRegistry) -> None:
    async def scenario() -> None:
        task = asyncio.ensure_future(run_worker_async(engine, stack, debounce=0.1))
        await asyncio.to_thread(insert, engine, 3)
        for _ in range(600):
            if await asyncio.to_thread(fresh, engine):
                break
            await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert counts(engine) == (3, 3, 3)


def test_writer_without_privileges_marks_through_the_trigger(engine: sa.Engine, stack: SamizdatRegistry) -> None:
    role = f"writer_{uuid.uuid4().hex[:8]}"
    run_sql(engine, f"CREATE ROLE {role} LOGIN PASSWORD '{PASSWORD}'", f"GRANT INSERT ON src TO {role}")
    try:
        url = engine.url.set(username=role, password=PASSWORD)
        writer = sa.create_engine(url)
        try:
            insert(writer, 2)
            with pytest.raises(sa.exc.ProgrammingError, match="permission denied"):
                scalar(writer, f"SELECT count(*) FROM {MARKS_TABLE}")
            fn = scalar(engine, "SELECT proname FROM pg_proc WHERE proname LIKE 'samizdat\\_mark\\_%'")
            with pytest.raises(sa.exc.ProgrammingError, match="permission denied"):
                scalar(writer, f'SELECT "{fn}"()')
        finally:
            writer.dispose()
        assert [v.marks for v in stale_views(engine, stack)] == [2, 2]
        secdef, config, public = rows(
            engine,
            "SELECT prosecdef, proconfig, has_function_privilege('public', oid, 'EXECUTE') FROM pg_proc "
            "WHERE proname LIKE 'samizdat\\_mark\\_%'",
        )[0]
        assert secdef and config == ["search_path=pg_catalog, pg_temp"] and not public
    finally:
        run_sql(engine, f"DROP OWNED BY {role}", f"DROP ROLE {role}")


def test_switching_modes_is_a_normal_change(engine: sa.Engine) -> None:
    run_sql(engine, "CREATE TABLE src (x int)")
    immediate = matview("V", "SELECT count(*) AS n FROM src", refresh_triggers={"src"})
    sync(engine, make_registry(immediate))
    insert(engine, 1)
    assert scalar(engine, 'SELECT n FROM "V"') == 1
    deferred = matview("V", "SELECT count(*) AS n FROM src", refresh_triggers={"src"}, refresh_mode="deferred")
    oid = scalar(engine, "SELECT to_regclass('\"V\"')::oid")
    result = sync(engine, make_registry(deferred))
    assert {a.key.namespace for a in result.applied} == {"function", "trigger"}  # the view stays as it is
    assert scalar(engine, "SELECT to_regclass('\"V\"')::oid") == oid
    assert diff_database(engine, make_registry(deferred)).differences == ()
    insert(engine, 1)
    assert scalar(engine, 'SELECT n FROM "V"') == 1
    assert [v.marks for v in stale_views(engine, make_registry(deferred))] == [1]
    sync(engine, make_registry(immediate))
    insert(engine, 1)
    assert scalar(engine, 'SELECT n FROM "V"') == 3
    assert scalar(engine, "SELECT count(*) FROM pg_proc WHERE proname LIKE 'samizdat\\_mark\\_%'") == 0


def test_a_marks_table_of_another_role_is_refused(engine: sa.Engine) -> None:
    suffix = uuid.uuid4().hex[:8]
    deployer, squatter = f"deployer_{suffix}", f"squatter_{suffix}"
    run_sql(
        engine,
        f"CREATE ROLE {deployer} LOGIN PASSWORD '{PASSWORD}'",
        f"CREATE ROLE {squatter} LOGIN PASSWORD '{PASSWORD}'",
        f"GRANT CREATE ON SCHEMA public TO {deployer}, {squatter}",
    )
    engines = [sa.create_engine(engine.url.set(username=r, password=PASSWORD)) for r in (deployer, squatter)]
    try:
        run_sql(engines[0], "CREATE TABLE src (x int)")
        run_sql(engines[1], f"CREATE TABLE {MARKS_TABLE} (view_schema text, view_name text, marked_at timestamptz)")
        deferred = matview("V", "SELECT count(*) AS n FROM src", refresh_triggers={"src"}, refresh_mode="deferred")
        with pytest.raises(ExecutionError, match=r"samizdat_marks.* belongs to a role"):
            sync(engines[0], make_registry(deferred), discipline="jumbo")
        assert scalar(engine, "SELECT to_regclass('\"V\"')") is None  # nothing was left behind
    finally:
        for made in engines:
            made.dispose()
        run_sql(engine, f"DROP OWNED BY {deployer}, {squatter}", f"DROP ROLE {deployer}", f"DROP ROLE {squatter}")


@pytest.mark.parametrize(
    ("attrs", "message"),
    [
        ({"refresh_mode": "later", "refresh_triggers": {"src"}}, "refresh_mode must be 'immediate'"),
        ({"refresh_mode": "deferred"}, "needs refresh_triggers"),
    ],
)
def test_bad_refresh_mode_is_refused_before_any_sql(attrs: dict[str, Any], message: str) -> None:
    with pytest.raises(DeclarationError, match=message):
        make_registry(matview("V", "SELECT 1 AS n", **attrs)).graph()


def test_worker_without_deferred_views_says_so(engine: sa.Engine) -> None:
    with pytest.raises(NoDeferredViewsError, match="refresh_mode = 'deferred'"):
        Worker(engine, make_registry(matview("V", "SELECT 1 AS n")))


def test_generated_sql_is_immune_to_search_path(engine: sa.Engine) -> None:
    """A co-tenant's functions on the writer's search_path are not what the marking function calls."""
    run_sql(
        engine,
        "CREATE TABLE src (x int)",
        "CREATE SCHEMA evil",
        "CREATE FUNCTION evil.pg_notify(text, text) RETURNS void LANGUAGE sql AS 'SELECT NULL'",
        "CREATE FUNCTION evil.set_config(text, text, boolean) RETURNS text LANGUAGE sql AS 'SELECT NULL::text'",
    )
    deferred = matview("V", "SELECT count(*) AS n FROM src", refresh_triggers={"src"}, refresh_mode="deferred")
    sync(engine, make_registry(deferred))
    with engine.connect() as conn:
        conn.exec_driver_sql("SET search_path = evil, public, pg_catalog")
        conn.exec_driver_sql("INSERT INTO src VALUES (1)")
        conn.commit()
    assert [v.marks for v in stale_views(engine, make_registry(deferred))] == [1]


ALEMBIC_MODULE = """
from sqlalchemy import Column, Integer, MetaData, Table

from alembic_samizdat import SamizdatMaterializedView, SamizdatRegistry

metadata = MetaData()
registry = SamizdatRegistry(metadata)
Table("src", metadata, Column("x", Integer))


@registry.register
class Totals(SamizdatMaterializedView):
    refresh_triggers = {{"src"}}
    refresh_mode = "{mode}"
    sql_template = "${{preamble}} SELECT count(*) AS n FROM src ${{postamble}}"
"""


def test_alembic_creates_and_switches_deferred_triggers(
    tmp_path: Path, db_url: str, engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    from alembic import command
    from helpers import alembic_project

    name = f"deferred_shop_{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = alembic_project(tmp_path, name)

    def write(mode: str) -> SamizdatRegistry:
        (tmp_path / f"{name}.py").write_text(ALEMBIC_MODULE.format(mode=mode))
        sys.modules.pop(name, None)
        return registry_from_modules([name])

    try:
        deferred = write("deferred")
        command.revision(cfg, message="deferred", autogenerate=True)
        command.upgrade(cfg, "head")
        insert(engine, 2)
        assert scalar(engine, 'SELECT n FROM "Totals"') == 0
        assert [v.marks for v in stale_views(engine, deferred)] == [2]
        Worker(engine, deferred).refresh_round()
        assert scalar(engine, 'SELECT n FROM "Totals"') == 2
        command.check(cfg)  # the deferred sidekicks match the declarations
        immediate = write("immediate")
        command.revision(cfg, message="immediate", autogenerate=True)
        command.upgrade(cfg, "head")
        insert(engine, 1)
        assert scalar(engine, 'SELECT n FROM "Totals"') == 3
        assert diff_database(engine, immediate).differences == ()
        command.downgrade(cfg, "-1")
        insert(engine, 1)
        assert scalar(engine, 'SELECT n FROM "Totals"') == 3  # deferred again: marked, not refreshed
        assert [v.marks for v in stale_views(engine, deferred)] == [1]
    finally:
        sys.modules.pop(name, None)


def test_a_view_added_above_later_is_marked_too(engine: sa.Engine) -> None:
    run_sql(engine, "CREATE TABLE src (x int)")
    base = matview("V", "SELECT count(*) AS n FROM src", refresh_triggers={"src"}, refresh_mode="deferred")
    sync(engine, make_registry(base))
    insert(engine, 1)
    top = matview("W", 'SELECT n FROM "V"', deps_on={base})
    both = make_registry(base, top)
    sync(engine, both)  # replaces V's marking function: its marks now name W too
    assert diff_database(engine, both).differences == ()
    insert(engine, 1)
    assert [(v.key.name, v.marks) for v in stale_views(engine, both)] == [("V", 2), ("W", 1)]
    Worker(engine, both).refresh_round()
    assert (scalar(engine, 'SELECT n FROM "V"'), scalar(engine, 'SELECT n FROM "W"')) == (2, 2)
    assert stale_views(engine, both) == []


def test_worker_on_another_driver_says_which_it_needs(db_url: str) -> None:
    pytest.importorskip("psycopg2")
    other = sa.create_engine(sa.make_url(db_url).set(drivername="postgresql+psycopg2"))
    try:
        with pytest.raises(SamizdatError, match=r"needs an engine on psycopg 3"):
            Worker(other, make_registry(matview("V", "SELECT 1 AS n", refresh_triggers={"t"}, refresh_mode="deferred")))
    finally:
        other.dispose()


def test_worker_goes_on_after_a_real_server_restart(module: Path) -> None:
    """A server of its own, restarted (fast shutdown, every session ends) under a running worker: writes made
    after the restart are refreshed, and marks are never lost."""
    from alembic_samizdat.pgserver import start_throwaway_server

    major = os.environ.get("SAMIZDAT_TEST_PG_MAJOR")
    server = start_throwaway_server(int(major) if major else None)
    try:
        # Pre-ping: the test's own pooled connections die with the restart too.
        engine = sa.create_engine(server.url, pool_pre_ping=True)
        run_sql(
            engine,
            "CREATE TABLE src (x int)",
            "CREATE SEQUENCE refreshes",
            "CREATE TABLE knobs (slow bool)",
            "INSERT INTO knobs VALUES (false)",
        )
        registry = registry_from_modules([str(module)])
        sync(engine, registry)
        with running(engine, registry):
            insert(engine, 1)
            wait_until(lambda: fresh(engine), "first refresh")
            server.restart()
            insert(engine, 3)
            wait_until(lambda: fresh(engine), "refreshed after the server restarted", timeout=60)
            assert counts(engine) == (4, 4, 4)
        assert not stale_views(engine, registry)
        engine.dispose()
    finally:
        server.stop()


def test_run_worker_refreshes_until_its_stop_event_is_set(engine: sa.Engine, stack: SamizdatRegistry) -> None:
    """The plain function (what a deployment script calls): it runs until ``stop`` is set, without signals."""
    from alembic_samizdat.worker import run_worker

    stop = threading.Event()
    own = sa.create_engine(engine.url)
    thread = threading.Thread(
        target=run_worker,
        args=(own, stack),
        kwargs={"debounce": 0.2, "max_delay": 5.0, "stop": stop, "handle_signals": False},
        daemon=True,
    )
    thread.start()
    try:
        insert(engine, 2)
        wait_until(lambda: fresh(engine), "refreshed by run_worker")
    finally:
        stop.set()
        thread.join(20)
        own.dispose()
    assert not thread.is_alive(), "run_worker did not return after stop was set"
    assert not stale_views(engine, stack)
