"""The refresh worker of deferred autorefresh: ``LISTEN``, debounce, refresh what is marked stale.

Views with ``refresh_mode = "deferred"`` are only *marked* stale by the writes to their tables (see
:mod:`alembic_samizdat.deferred`). A worker waits for the marks' notifications, lets writes go quiet for
``debounce`` seconds (but waits no longer than ``max_delay`` after the first mark), then refreshes every marked
view in dependency order with the scheduler that ``samizdat refresh --parallel`` uses, consuming the marks in
each view's refresh transaction. Marks written while no worker ran are found at start; a dropped connection or
a restarted server is reconnected to, and whatever was marked meanwhile is caught up.

Use :func:`run_worker` (blocking; stops on SIGTERM/SIGINT in the main thread, or when ``stop`` is set),
:func:`run_worker_async` (the same on asyncio: cancel the task to stop it), :class:`Worker` for finer control
(``refresh_round`` runs one catch-up round) and :func:`stale_views` for what is waiting now.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import psycopg
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError

from . import pinned
from .api import Declarations, as_registry
from .deferred import (
    DEFAULT_DEBOUNCE,
    DEFAULT_MAX_DELAY,
    MARKS_TABLE,
    channel,
    consume_and_refresh_statement,
    marks_table,
)
from .errors import NoDeferredViewsError, RefreshError, SamizdatError, first_line
from .graph import Graph
from .identifiers import quote_ident
from .keys import Key, Kind
from .planner import Action, Verb
from .refresh_plan import Concurrently, Schedule, choose_concurrently
from .refresher import RefreshResult, _Run, read_view_states, refresh_serial, refresh_threaded
from .registry import SamizdatRegistry
from .signature import clear_stale_statement

__all__ = [
    "NoDeferredViewsError",
    "Refreshed",
    "RoundResult",
    "StaleView",
    "Worker",
    "run_worker",
    "run_worker_async",
    "stale_views",
]

log = logging.getLogger("alembic_samizdat.worker")

#: How often the worker looks at the marks even without a notification (a safety net; seconds).
DEFAULT_POLL = 60.0
#: Longest sleep between reconnection attempts (seconds).
MAX_BACKOFF = 5.0
#: Longest blocking wait, so that a stop request is seen promptly (seconds).
_SLICE = 0.2


@dataclass(frozen=True)
class StaleView:
    """A materialized view marked stale and not refreshed yet."""

    key: Key
    label: str
    #: Marks waiting (at most one per writing transaction).
    marks: int
    #: Seconds since the first write that marked it.
    stale_seconds: float
    #: Seconds since the last one.
    last_write_seconds: float


@dataclass(frozen=True)
class Refreshed:
    """One refresh done by the worker."""

    key: Key
    label: str
    #: How long the refresh took.
    seconds: float
    #: From the first write that marked the view to its fresh data being committed.
    lag: float
    marks: int


@dataclass
class RoundResult:
    """What one round refreshed."""

    refreshed: list[Refreshed] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def deferred_schemas(graph: Graph) -> list[str]:
    """The schemas whose marks tables the deferred views of ``graph`` write."""
    return sorted(
        {k.schema for k, item in graph.nodes.items() if item.kind is Kind.MATVIEW and item.refresh_mode == "deferred"}
    )


_TABLES_SQL = f"""
SELECT n.nspname, pg_has_role(c.relowner, 'USAGE') OR pg_get_userbyid(c.relowner) = ANY (:trusted_owners)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relname = '{MARKS_TABLE}' AND c.relkind = 'r' AND n.nspname = ANY (:schemas)
"""


def _read_marks(connection: Connection, registry: SamizdatRegistry) -> dict[Key, tuple[int, float, float]]:
    """Per marked view of ``registry``: (marks, seconds since the first, seconds since the last)."""
    graph = registry.graph()
    schemas = deferred_schemas(graph)
    if not schemas:
        return {}
    tables = pinned.query(
        connection, _TABLES_SQL, {"schemas": schemas, "trusted_owners": sorted(registry.trusted_owners)}
    )
    # Marks tables of roles we do not act for are not read: their rows could name any view.
    trusted = sorted(str(r[0]) for r in tables if r[1])
    if not trusted:
        return {}
    selects = [
        "SELECT view_schema, view_name, count(*)::int, "
        "extract(epoch FROM clock_timestamp() - min(marked_at))::float8, "
        "extract(epoch FROM clock_timestamp() - max(marked_at))::float8 "
        f"FROM {marks_table(schema)} GROUP BY view_schema, view_name"
        for schema in trusted
    ]
    rows = pinned.query(connection, "\nUNION ALL\n".join(selects))
    known = {(k.schema, k.name): k for k, item in graph.nodes.items() if item.kind is Kind.MATVIEW}
    out: dict[Key, tuple[int, float, float]] = {}
    for schema, name, count, first, last in rows:
        key = known.get((str(schema), str(name)))
        if key is None:
            continue  # a view of another registry, or no longer declared: not ours to refresh
        had = out.get(key)
        if had is None:
            out[key] = (int(count), float(first), float(last))
        else:
            out[key] = (had[0] + int(count), max(had[1], float(first)), min(had[2], float(last)))
    return out


def stale_views(bind: Engine | Connection, declarations: Declarations, *, scope: str | None = None) -> list[StaleView]:
    """The views of ``declarations`` marked stale now, in dependency order, with how long they have been."""
    registry = as_registry(declarations, scope=scope)
    graph = registry.graph()
    if isinstance(bind, Engine):
        with bind.connect() as connection:
            marks = _read_marks(connection, registry)
            connection.rollback()
    else:
        marks = _read_marks(bind, registry)
    return [StaleView(k, graph.nodes[k].label, *marks[k]) for k in graph.order if k in marks]


class _WorkerRun(_Run):
    """A refresh run that consumes marks instead of signing views stale, and stops starting views on request."""

    def __init__(self, *args: Any, stop: threading.Event, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stop = stop
        self.started_at: dict[Key, float] = {}
        self.finished_at: dict[Key, float] = {}

    def next_ready(self) -> Key | None:
        if self.stop.is_set():
            return None
        key = super().next_ready()
        if key is not None:
            self.started_at[key] = time.perf_counter()
        return key

    def succeeded(self, key: Key) -> None:
        self.finished_at[key] = time.perf_counter()
        super().succeeded(key)


class Worker:
    """Refreshes the deferred materialized views of ``declarations`` (and the views above them) when marked.

    ``engine``: a SQLAlchemy ``Engine`` (``postgresql+psycopg://``). ``jobs``: connections refreshing
    independent views at once. ``on_refresh`` is called after each refresh (besides the log line).
    """

    def __init__(
        self,
        engine: Engine,
        declarations: Declarations,
        *,
        scope: str | None = None,
        debounce: float = DEFAULT_DEBOUNCE,
        max_delay: float = DEFAULT_MAX_DELAY,
        jobs: int = 1,
        poll: float = DEFAULT_POLL,
        on_refresh: Callable[[Refreshed], None] | None = None,
    ) -> None:
        if debounce < 0 or max_delay < 0 or poll <= 0:
            raise SamizdatError("debounce and max_delay must be 0 or more seconds, and poll more than 0")
        if jobs < 1:
            raise SamizdatError(f"jobs must be 1 or more, not {jobs}")
        if engine.dialect.driver != "psycopg":
            # LISTEN is read through psycopg 3's notifies(); the other drivers have no equivalent we use.
            raise SamizdatError(
                f"the worker needs an engine on psycopg 3 (postgresql+psycopg://), not {engine.dialect.driver!r}: "
                "create one with sqlalchemy.create_engine(url.set(drivername='postgresql+psycopg'))"
            )
        self.engine = engine
        self.registry = as_registry(declarations, scope=scope)
        self.graph = self.registry.graph()
        self.schemas = deferred_schemas(self.graph)
        if not self.schemas:
            raise NoDeferredViewsError(
                "no materialized view of these declarations has refresh_mode = 'deferred': the worker would have "
                "nothing to do. Set refresh_mode = 'deferred' (with refresh_triggers) on a view and sync"
            )
        self.debounce = debounce
        self.max_delay = max(max_delay, debounce)
        self.jobs = jobs
        self.poll = poll
        self.on_refresh = on_refresh
        self.stop_event = threading.Event()
        self._listener: Any = None

    # -- control ----------------------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the worker to stop: no new refresh starts; refreshes running now finish (or roll back)."""
        self.stop_event.set()

    @contextmanager
    def signals_stop(self) -> Iterator[None]:
        """SIGTERM and SIGINT stop the worker (main thread only), the previous handlers are restored after."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum: int, frame: FrameType | None) -> None:
            if self.stop_event.is_set():
                raise KeyboardInterrupt  # a second signal: abandon the refresh in progress (it rolls back)
            log.info("stopping: %s received", signal.Signals(signum).name)
            self.stop_event.set()

        previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    # -- one round --------------------------------------------------------------------------------------

    def refresh_round(self) -> RoundResult:
        """Refresh every view marked stale now (dependency order), consuming its marks; one round."""
        began = time.perf_counter()
        with self.engine.connect() as connection:
            marks = _read_marks(connection, self.registry)
            keys = [k for k in self.graph.order if k in marks]
            states = (
                read_view_states(connection, keys, self.registry.scope, self.registry.trusted_owners) if keys else {}
            )
            connection.rollback()
        result = RoundResult()
        if not keys:
            return result
        chosen, notes = choose_concurrently(self.graph, keys, states, Concurrently.AUTO)
        result.notes = notes
        run = _WorkerRun(self.graph, Schedule(self.graph, keys), chosen, states, None, None, stop=self.stop_event)
        # Marks, not signatures, say what is stale: nothing is marked before the run (see deferred.py).
        run.premark = ""
        run.actions = {
            k: Action(
                Verb.REFRESH,
                k,
                Kind.MATVIEW.value,
                self.graph.nodes[k].label,
                (consume_and_refresh_statement(k, concurrently=chosen.get(k, False)), clear_stale_statement(k)),
                "marked stale (deferred refresh)",
            )
            for k in keys
        }
        failure: RefreshError | None = None
        try:
            if self.jobs > 1 and len(keys) > 1:
                refresh_threaded(self.engine, run, RefreshResult(), self.jobs)
            else:
                with self.engine.connect() as connection:
                    refresh_serial(connection, run, RefreshResult())
        except RefreshError as exc:
            failure = exc
        for key in run.done:
            count, first, _ = marks[key]
            seconds = run.finished_at[key] - run.started_at[key]
            done = Refreshed(key, self.graph.nodes[key].label, seconds, first + run.finished_at[key] - began, count)
            result.refreshed.append(done)
            log.info(
                "refreshed %s in %.3f s, %.3f s after the first write (%d mark(s))",
                key.display(),
                done.seconds,
                done.lag,
                done.marks,
            )
            if self.on_refresh is not None:
                self.on_refresh(done)
        result.seconds = time.perf_counter() - began
        if failure is not None:
            raise failure
        return result

    # -- the loop ---------------------------------------------------------------------------------------

    def _listen(self) -> None:
        self._close_listener()
        raw = self.engine.raw_connection()
        try:
            driver = raw.driver_connection
            assert driver is not None
            driver.autocommit = True
            for schema in self.schemas:
                driver.execute(f"LISTEN {quote_ident(channel(schema))}")
        except BaseException:
            raw.invalidate()
            raise
        self._listener = raw

    def _close_listener(self) -> None:
        if self._listener is not None:
            with suppress(Exception):
                self._listener.invalidate()  # never back to the pool: it is still listening
            self._listener = None

    def _wait(self, timeout: float) -> bool:
        """Whether a notification came within ``timeout`` seconds (waits in short slices to see stop)."""
        end = time.monotonic() + max(0.0, timeout)
        driver = self._listener.driver_connection
        while True:
            remaining = end - time.monotonic()
            got = False
            for _ in driver.notifies(timeout=max(0.0, min(_SLICE, remaining)), stop_after=1):
                got = True
            if got:
                # Drain what else is queued: one wake-up is enough.
                for _ in driver.notifies(timeout=0):
                    pass
                return True
            if remaining <= 0 or self.stop_event.is_set():
                return False

    def _pending(self) -> tuple[float, float] | None:
        """(monotonic time of the first mark waiting, of the last one), or None when nothing waits."""
        with self.engine.connect() as connection:
            marks = _read_marks(connection, self.registry)
            connection.rollback()
        if not marks:
            return None
        now = time.monotonic()
        return now - max(m[1] for m in marks.values()), now - min(m[2] for m in marks.values())

    def run(self) -> None:
        """Work until :meth:`stop` (or a signal, see :meth:`signals_stop`): catch up, then listen and refresh."""
        backoff = 0.2
        log.info(
            "worker started: %d schema(s) of deferred views, debounce %.2f s, max delay %.2f s, %d job(s)",
            len(self.schemas),
            self.debounce,
            self.max_delay,
            self.jobs,
        )
        try:
            while not self.stop_event.is_set():
                try:
                    self._listen()
                    self._serve()
                    backoff = 0.2
                except (DBAPIError, psycopg.Error, OSError) as exc:
                    log.warning("connection lost (%s); reconnecting in %.1f s", first_line(exc), backoff)
                except RefreshError as exc:
                    log.error("%s; retrying in %.1f s", exc, backoff)
                except SamizdatError as exc:
                    log.error("%s; retrying in %.1f s", exc, backoff)
                self._close_listener()
                self.engine.dispose()
                if self.stop_event.wait(backoff):
                    break
                backoff = min(MAX_BACKOFF, backoff * 2)
        finally:
            self._close_listener()
        log.info("worker stopped")

    def _serve(self) -> None:
        """Listen and refresh until stopped; connection errors propagate (the caller reconnects)."""
        # Listening first, then reading the marks: nothing committed in between goes unseen.
        pending = self._pending()
        first, last = pending if pending else (None, None)
        last_look = time.monotonic()
        while not self.stop_event.is_set():
            now = time.monotonic()
            if first is None or last is None:
                if self._wait(min(self.poll - (now - last_look), 1.0)):
                    first = last = time.monotonic()
                elif time.monotonic() - last_look >= self.poll:
                    pending, last_look = self._pending(), time.monotonic()
                    first, last = pending if pending else (None, None)
                continue
            due = min(last + self.debounce, first + self.max_delay)
            if now < due:
                if self._wait(due - now):
                    last = time.monotonic()
                continue
            self.refresh_round()
            # Whatever came during the round is in the marks; the queued notifications add nothing.
            self._wait(0)
            pending, last_look = self._pending(), time.monotonic()
            first, last = pending if pending else (None, None)


def run_worker(
    engine: Engine,
    declarations: Declarations,
    *,
    scope: str | None = None,
    debounce: float = DEFAULT_DEBOUNCE,
    max_delay: float = DEFAULT_MAX_DELAY,
    jobs: int = 1,
    stop: threading.Event | None = None,
    handle_signals: bool = True,
) -> None:
    """Run a :class:`Worker` until SIGTERM/SIGINT (when ``handle_signals`` and in the main thread) or ``stop``."""
    worker = Worker(engine, declarations, scope=scope, debounce=debounce, max_delay=max_delay, jobs=jobs)
    if stop is not None:
        worker.stop_event = stop
    if handle_signals:
        with worker.signals_stop():
            worker.run()
    else:
        worker.run()


async def run_worker_async(
    engine: Engine,
    declarations: Declarations,
    *,
    scope: str | None = None,
    debounce: float = DEFAULT_DEBOUNCE,
    max_delay: float = DEFAULT_MAX_DELAY,
    jobs: int = 1,
) -> None:
    """:func:`run_worker` for asyncio services: the worker runs in a thread, so it never blocks the event loop.

    Cancel the task to stop it: no new refresh starts, the running one finishes, then the task ends.
    """
    worker = Worker(engine, declarations, scope=scope, debounce=debounce, max_delay=max_delay, jobs=jobs)
    thread = asyncio.ensure_future(asyncio.to_thread(worker.run))
    try:
        await asyncio.shield(thread)
    except asyncio.CancelledError:
        worker.stop()
        await thread
        raise
