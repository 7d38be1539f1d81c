"""Running refreshes: serially on one connection, in parallel on a bounded pool of connections, or on asyncio.

The three runners share :class:`~alembic_samizdat.refresh_plan.Schedule`: a view starts as soon as every view it
reads is done (not level by level), longest remaining chain first. On a failure no new view is started, the
running ones finish, the failed view is marked stale (so the next sync or refresh retries it) and every
failure is reported in one :class:`RefreshError`. Nothing is swallowed.
"""

from __future__ import annotations

import asyncio
import heapq
import os
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import suppress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError

from . import pinned
from .catalog import SHORT_SIGNATURE_PARAMS, parse_comment, short_signature_sql
from .errors import (  # noqa: F401  (defined in errors; importable here too)
    CatalogReadError,
    ExecutionError,
    ForeignViewError,
    InsufficientPrivilegeError,
    MissingViewError,
    RefreshError,
    RefreshFailure,
    SamizdatError,
    first_line,
)
from .execute import autocommit, send, sqlstate
from .graph import Graph
from .identifiers import qualified
from .keys import Key
from .planner import Action
from .privileges import INSUFFICIENT_PRIVILEGE, PrivilegeContext, missing_privilege
from .refresh_plan import Schedule, ViewState, refresh_action
from .signature import PREFIX, Signature, mark_stale_statement

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

#: Called after each view: (done, total, the view just finished or None, seconds elapsed).
Progress = Callable[[int, int, str | None, float], None]
OnAction = Callable[[Action], None]


@dataclass
class RefreshResult:
    """What a refresh run did."""

    refreshed: list[Key] = field(default_factory=list)
    #: Requests that could not be honoured as asked (e.g. CONCURRENTLY without a unique index).
    notes: list[str] = field(default_factory=list)
    concurrently: dict[Key, bool] = field(default_factory=dict)
    seconds: float = 0.0


STATES_SQL = f"""
SELECT n.nspname, c.relname, c.relispopulated,
       EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisunique AND i.indisvalid
               AND i.indpred IS NULL AND i.indexprs IS NULL),
       {short_signature_sql("d.description")},
       c.relowner = (SELECT oid FROM pg_roles WHERE rolname = current_user) OR pg_has_role(c.relowner, 'MEMBER')
           OR pg_get_userbyid(c.relowner) = ANY (:trusted_owners),
       pg_get_userbyid(c.relowner)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_description d ON d.objoid = c.oid AND d.classoid = 'pg_class'::regclass AND d.objsubid = 0
WHERE c.relkind = 'm'
  AND (n.nspname, c.relname) IN (SELECT * FROM unnest(CAST(:schemas AS text[]), CAST(:names AS text[])))
"""


def read_view_states(
    connection: Connection, keys: Iterable[Key], scope: str, trusted_owners: Iterable[str] = ()
) -> dict[Key, ViewState]:
    """Populated / unique index / stale for each view, in one query; missing views, and views that are not ours
    (no signature of ``scope`` that reads as one, or an owner we do not trust: see :mod:`.catalog`), are an error.
    """
    wanted = list(keys)
    try:
        rows = pinned.query(
            connection,
            STATES_SQL,
            {
                **SHORT_SIGNATURE_PARAMS,
                "full": False,
                "schemas": [k.schema for k in wanted],
                "names": [k.name for k in wanted],
                "trusted_owners": sorted(trusted_owners),
            },
        )
    except DBAPIError as exc:
        raise CatalogReadError(
            f"reading the materialized views failed: {first_line(exc)}; nothing was refreshed"
        ) from exc
    states: dict[Key, ViewState] = {}
    foreign: list[str] = []
    for r in rows:
        name = qualified(str(r[0]), str(r[1]))
        parsed = parse_comment(str(r[4])) if r[4] is not None and str(r[4]).startswith(PREFIX) else None
        if not isinstance(parsed, Signature) or parsed.scope != scope:
            reason = parsed if isinstance(parsed, str) else "no signature of this scope"
            foreign.append(f"{name} ({reason})")
        elif not r[5]:
            foreign.append(f"{name} (owned by role {r[6]!r}, whose privileges the running role does not have)")
        stale = isinstance(parsed, Signature) and parsed.stale
        states[Key("relation", str(r[0]), str(r[1]))] = ViewState(bool(r[2]), bool(r[3]), stale)
    missing = [k.display() for k in wanted if k not in states]
    if missing:
        raise MissingViewError(
            f"materialized view(s) not in the database: {', '.join(missing)}; run `samizdat sync` first"
        )
    if foreign:
        raise ForeignViewError(
            f"not refreshing materialized view(s) we did not create: {', '.join(foreign)}. Nothing was refreshed; "
            "`samizdat sync` reports the clash (or pass trusted_owners / --trust-owner for a deployer role)"
        )
    return states


def _priorities(schedule: Schedule) -> dict[Key, tuple[int, int]]:
    # Longest chain of views still to come, so the critical path starts first; then dependency order.
    chain: dict[Key, int] = {}
    for key in reversed(schedule.order):
        chain[key] = 1 + max((chain[c] for c in schedule.unblocks.get(key, ())), default=0)
    return {k: (-chain[k], i) for i, k in enumerate(schedule.order)}


class _Run:
    """Bookkeeping shared by the runners: ready queue, results, progress, failures."""

    def __init__(
        self,
        graph: Graph,
        schedule: Schedule,
        chosen: dict[Key, bool],
        states: dict[Key, ViewState],
        on_action: OnAction | None,
        progress: Progress | None,
    ) -> None:
        self.graph = graph
        self.schedule = schedule
        # Every selected view is marked stale before the run and unmarked by its own refresh, in the same
        # transaction: a run killed half way leaves the unrefreshed views marked for the next sync or refresh.
        self.actions = {
            k: refresh_action(graph, k, concurrently=chosen.get(k, False), clear_stale=True) for k in schedule.order
        }
        self.premark = "\n;\n".join(mark_stale_statement(k) for k in schedule.order)
        self.priority = _priorities(schedule)
        self.ready = [(self.priority[k], k) for k in schedule.ready]
        heapq.heapify(self.ready)
        self.done: list[Key] = []
        self.failures: list[RefreshFailure] = []
        self.on_action = on_action
        self.progress = progress
        self.started = time.perf_counter()

    def next_ready(self) -> Key | None:
        if self.failures or not self.ready:
            return None
        return heapq.heappop(self.ready)[1]

    def succeeded(self, key: Key) -> None:
        self.done.append(key)
        for child in self.schedule.done(key):
            heapq.heappush(self.ready, (self.priority[child], child))
        if self.on_action is not None:
            self.on_action(self.actions[key])
        if self.progress is not None:
            self.progress(len(self.done), len(self.schedule.order), self.graph.nodes[key].label, self.elapsed)

    def failed(self, key: Key, exc: BaseException) -> None:
        action = self.actions[key]
        message = first_line(exc.__cause__ if isinstance(exc, ExecutionError) and exc.__cause__ else exc)
        if isinstance(exc, InsufficientPrivilegeError):
            # The error's text is a sentence of its own; here it explains the server's message in parentheses.
            text = str(exc)
            message += f" ({text[:1].lower()}{text[1:]})"
        self.failures.append(RefreshFailure(key, action.label, message, action.sql))

    def privilege_error(
        self,
        key: Key,
        exc: BaseException,
        connection: Connection | None = None,
        *,
        role: str | None = None,
        server_version: int = 0,
    ) -> InsufficientPrivilegeError:
        """What a refresh of ``key`` that failed with SQLSTATE 42501 lacked (reported by :meth:`failed`)."""
        item = self.graph.nodes[key]
        context = PrivilegeContext("refresh", key, item.kind.value, (*item.unmanaged, *item.refresh_triggers))
        missing = missing_privilege(exc, context, connection, role=role, server_version=server_version)
        return missing.error(missing.sentence(), sql=self.actions[key].sql, action=self.actions[key].describe())

    def premark_error(
        self,
        exc: BaseException,
        connection: Connection | None = None,
        *,
        role: str | None = None,
        server_version: int = 0,
    ) -> ExecutionError:
        """The error of a failed :attr:`premark` (nothing was refreshed)."""
        message = f"marking the views to refresh failed: {first_line(exc)}"
        if sqlstate(exc) != INSUFFICIENT_PRIVILEGE:
            return ExecutionError(f"{message}; nothing was refreshed", sql=self.premark)
        views = tuple((k.schema, k.name) for k in self.schedule.order)
        context = PrivilegeContext("mark", None, "matview", views)
        missing = missing_privilege(exc, context, connection, role=role, server_version=server_version)
        return missing.error(
            f"{message}. {missing.sentence()}. Nothing was refreshed",
            sql=self.premark,
            action="mark the views to refresh",
        )

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def finish(self, result: RefreshResult) -> RefreshResult:
        result.refreshed = list(self.done)
        result.seconds = self.elapsed
        if self.failures:
            finished = set(self.done) | {f.key for f in self.failures}
            not_run = [self.graph.nodes[k].label for k in self.schedule.order if k not in finished]
            raise RefreshError(self.failures, not_run, len(self.done))
        return result


def _refresh_one(connection: Connection, run: _Run, key: Key) -> None:
    """Refresh in one implicit transaction; on failure mark the view stale in another."""
    try:
        send(connection, run.actions[key].sql)
    except Exception as exc:
        # The refresh error is what we report; if marking fails too, the view stays unrefreshed anyway.
        with suppress(Exception):
            send(connection, mark_stale_statement(key))
        if sqlstate(exc) == INSUFFICIENT_PRIVILEGE:
            raise run.privilege_error(key, exc, connection) from exc
        raise


def _premark(connection: Connection, run: _Run) -> None:
    try:
        send(connection, run.premark)
    except DBAPIError as exc:
        raise run.premark_error(exc, connection) from exc


async def _role_and_version(raw: Any) -> tuple[str | None, int]:
    """``current_user`` and the server version of an asyncio psycopg connection in autocommit mode.

    What :func:`~alembic_samizdat.privileges.missing_privilege` asks a synchronous connection itself.
    """
    try:
        version = int(raw.info.server_version)
        row = await (await raw.execute("SELECT current_user")).fetchone()
    except Exception:
        return None, 0
    return (str(row[0]) if row else None), version


def refresh_serial(connection: Connection, run: _Run, result: RefreshResult) -> RefreshResult:
    """One view after another on ``connection``; stops at the first failure."""
    with autocommit(connection, purpose="refresh") as conn:
        if run.premark:
            _premark(conn, run)
        while (key := run.next_ready()) is not None:
            try:
                _refresh_one(conn, run, key)
            except Exception as exc:
                run.failed(key, exc)
            else:
                run.succeeded(key)
    return run.finish(result)


def refresh_threaded(engine: Engine, run: _Run, result: RefreshResult, jobs: int) -> RefreshResult:
    """Up to ``jobs`` views at once, each worker thread on its own connection."""
    local = threading.local()
    opened: list[Connection] = []
    lock = threading.Lock()

    def work(key: Key) -> None:
        conn: Connection | None = getattr(local, "connection", None)
        if conn is None:
            conn = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            local.connection = conn
            with lock:
                opened.append(conn)
        _refresh_one(conn, run, key)

    if run.premark:
        with engine.connect() as first, autocommit(first, purpose="refresh") as conn:
            _premark(conn, run)
    try:
        with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="samizdat-refresh") as pool:
            running: dict[Future[None], Key] = {}
            while True:
                while len(running) < jobs and (key := run.next_ready()) is not None:
                    running[pool.submit(work, key)] = key
                if not running:
                    break
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    key = running.pop(future)
                    exc = future.exception()
                    if exc is not None:
                        run.failed(key, exc)
                    else:
                        run.succeeded(key)
    finally:
        for conn in opened:
            conn.close()
    return run.finish(result)


async def refresh_asyncio(engine: AsyncEngine, run: _Run, result: RefreshResult, jobs: int) -> RefreshResult:
    """Up to ``jobs`` views at once on asyncio, each worker on its own connection."""
    idle: list[object] = []
    opened: list[object] = []

    async def work(key: Key) -> None:
        if idle:
            raw = idle.pop()
        else:
            conn = await engine.connect()
            opened.append(conn)
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            raw = (await conn.get_raw_connection()).driver_connection
        try:
            try:
                # The driver's own execute without parameters: no '%' parsing, several statements allowed.
                await raw.execute(run.actions[key].sql)  # type: ignore[attr-defined]
            except Exception as exc:
                with suppress(Exception):
                    await raw.execute(mark_stale_statement(key))  # type: ignore[attr-defined]
                if sqlstate(exc) == INSUFFICIENT_PRIVILEGE:
                    role, version = await _role_and_version(raw)
                    raise run.privilege_error(key, exc, role=role, server_version=version) from exc
                raise
        finally:
            idle.append(raw)

    if run.premark:
        async with engine.connect() as first:
            await first.execution_options(isolation_level="AUTOCOMMIT")
            raw_first = (await first.get_raw_connection()).driver_connection
            try:
                await raw_first.execute(run.premark)  # type: ignore[union-attr]
            except Exception as failure:
                # The same error as the other runners give (psycopg's own error reaches here unwrapped).
                if sqlstate(failure) is None:
                    raise
                role, version = await _role_and_version(raw_first)
                raise run.premark_error(failure, role=role, server_version=version) from failure
    try:
        running: dict[asyncio.Task[None], Key] = {}
        while True:
            while len(running) < jobs and (key := run.next_ready()) is not None:
                running[asyncio.ensure_future(work(key))] = key
            if not running:
                break
            finished, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            for task in finished:
                key = running.pop(task)
                exc = task.exception()
                if exc is not None:
                    run.failed(key, exc)
                else:
                    run.succeeded(key)
    finally:
        for conn in opened:
            await conn.close()  # type: ignore[attr-defined]
    return run.finish(result)


def default_jobs() -> int:
    """The default pool size: the number of cores."""
    return max(1, os.cpu_count() or 1)


def describe_view(key: Key) -> str:
    """The quoted name of a view, for messages."""
    return qualified(key.schema, key.name)
