"""The Python API: sync, diff, nuke, refresh and plan on a SQLAlchemy ``Engine`` or ``Connection``.

Every front (CLI, Alembic) goes through these functions; they read the catalog once, plan with the pure
planner, and apply the plan under the chosen transaction discipline.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine, MetaData
from sqlalchemy.exc import DBAPIError

from .adopt import ADOPTABLE, AdoptResult, adopt_unsigned
from .catalog import DatabaseState, read_state
from .errors import CatalogReadError, ExecutionError, Interrupted, SamizdatError, first_line
from .execute import (
    LOCK_KEY,
    Discipline,
    OnAction,
    apply_actions,
    apply_in_transaction,
    autocommit,
    collect_notices,
    create_failed,
    diagnose_function,
    lock_timeout_statement,
    plan_asking_postgres,
    refused_in_place,
    run_batch,
    send,
)
from .graph import Graph
from .keys import Key
from .model import Samizdat
from .planner import (
    Action,
    Difference,
    DiffKind,
    Plan,
    checkpoint_units,
    diff,
    in_sync,
    plan_nuke,
    plan_sync,
    undeclared_dependency_warnings,
)
from .refresh_plan import Concurrently, NodeRef, Schedule, all_matviews, choose_concurrently, select_below
from .refresher import (
    Progress,
    RefreshResult,
    _Run,
    default_jobs,
    read_view_states,
    refresh_asyncio,
    refresh_serial,
    refresh_threaded,
)
from .registry import SamizdatRegistry

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

Bind = Engine | Connection
OnPlan = Callable[[Plan], None]
Declarations = SamizdatRegistry | MetaData | Iterable[str | type[Samizdat]]


def as_registry(declarations: Declarations, *, scope: str | None = None) -> SamizdatRegistry:
    """A registry from a registry, a ``MetaData`` holding one, or modules/classes to load."""
    if isinstance(declarations, SamizdatRegistry):
        registry = declarations
    elif isinstance(declarations, MetaData):
        found = SamizdatRegistry.from_metadata(declarations)
        if found is None:
            raise SamizdatError("this MetaData has no SamizdatRegistry; create one with SamizdatRegistry(metadata)")
        registry = found
    else:
        registry = SamizdatRegistry(scope=scope or "default")
        for item in declarations:
            if isinstance(item, str):
                registry.load(item)
            else:
                registry.register(item)
        return registry
    return registry.with_scope(scope) if scope is not None else registry


@contextmanager
def _connected(bind: Bind) -> Iterator[Connection]:
    if isinstance(bind, Engine):
        with bind.connect() as connection:
            yield connection
    else:
        yield bind


@contextmanager
def _read_only(connection: Connection) -> Iterator[None]:
    """Catalog reads: end the transaction they began, but never one the caller had open."""
    began = not connection.in_transaction()
    try:
        yield
    finally:
        if began and connection.in_transaction():
            connection.rollback()


@dataclass(frozen=True)
class SyncResult:
    """What a sync (or nuke) found and did."""

    plan: Plan
    discipline: Discipline
    #: Actions that completed (in a dry run: that ran and were rolled back).
    applied: tuple[Action, ...]
    #: Whether the applied actions are in the database now.
    committed: bool
    #: What was kept across recreates (grants, owners, indexes, triggers…), one line each.
    kept: tuple[str, ...] = ()
    #: What could not be restored after a recreate, with the reason and the statement it was.
    lost: tuple[str, ...] = ()

    @property
    def differences(self) -> tuple[Difference, ...]:
        """What differed before the run."""
        return self.plan.differences

    @property
    def warnings(self) -> tuple[str, ...]:
        """Things worth fixing that did not stop the run."""
        return self.plan.warnings

    def summary(self) -> str:
        """One line: what was done."""
        if not self.plan.actions:
            return "nothing to do: the database matches the declarations"
        counts: dict[str, int] = {}
        for action in self.applied:
            counts[action.verb.value] = counts.get(action.verb.value, 0) + 1
        done = ", ".join(f"{n} {verb}" for verb, n in counts.items()) or "nothing"
        tail = " (dry run: rolled back)" if self.discipline is Discipline.DRYRUN else ""
        return f"{done}{tail}"


@dataclass(frozen=True)
class DiffResult:
    """The differences between declarations and database, with DBSamizdat's exit code."""

    differences: tuple[Difference, ...]
    warnings: tuple[str, ...] = field(default=())

    @property
    def exit_code(self) -> int:
        """0 same; 101 excess in the database; 102 excess in code; 103 both (a changed object counts as both)."""
        db = any(
            d.what in (DiffKind.EXCESS_DB, DiffKind.CHANGED, DiffKind.DRIFTED, DiffKind.GRANTS)
            for d in self.differences
        )
        code = any(
            d.what in (DiffKind.EXCESS_CODE, DiffKind.CHANGED, DiffKind.DRIFTED, DiffKind.UNPOPULATED, DiffKind.GRANTS)
            for d in self.differences
        )
        return (101 if db else 0) + (102 if code else 0) - (100 if db and code else 0) if (db or code) else 0


def _lock_and_read(
    connection: Connection,
    graph: Graph | None,
    registry: SamizdatRegistry,
    *,
    session_lock: bool,
    adopt: str | None = None,
) -> DatabaseState:
    # Qualified: this runs under the session's search_path (see pinned.py).
    lock = (
        f"SELECT pg_catalog.pg_advisory_lock({LOCK_KEY})"
        if session_lock
        else f"SELECT pg_catalog.pg_advisory_xact_lock({LOCK_KEY})"
    )
    run_batch(connection, None, lock)
    return read_state(
        connection,
        registry.scope,
        graph.nodes if graph is not None else (),
        adopt=adopt,
        trusted_owners=registry.trusted_owners,
    )


def _run(
    bind: Bind,
    registry: SamizdatRegistry,
    graph: Graph | None,
    discipline: Discipline,
    lock_timeout: float | None,
    on_action: OnAction | None,
    on_plan: OnPlan | None = None,
    adopt: str | None = None,
) -> SyncResult:
    """:func:`_run_inner`, collecting what capture-and-restore reported."""
    notices: list[tuple[str, str]] = []
    with _connected(bind) as connection, collect_notices(connection, notices):
        result = _run_inner(connection, registry, graph, discipline, lock_timeout, on_action, on_plan, adopt)
    if not notices:
        return result
    kept = tuple(m for severity, m in notices if severity != "WARNING")
    lost = tuple(m for severity, m in notices if severity == "WARNING")
    return replace(result, kept=kept, lost=lost)


def _run_inner(
    bind: Bind,
    registry: SamizdatRegistry,
    graph: Graph | None,
    discipline: Discipline,
    lock_timeout: float | None,
    on_action: OnAction | None,
    on_plan: OnPlan | None = None,
    adopt: str | None = None,
) -> SyncResult:
    """Lock, read, plan (sync when ``graph`` is given, else nuke) and apply under ``discipline``."""
    discipline = Discipline(discipline)

    def make_plan(state: DatabaseState, connection: Connection) -> Plan:
        made = plan_nuke(state) if graph is None else plan_asking_postgres(connection, graph, state)
        if on_plan is not None:
            on_plan(made)
        return made

    def nothing_to_do(connection: Connection) -> Plan | None:
        # Most runs change nothing: one catalog read, no lock. Anything to do (or any doubt) is planned again
        # under the advisory lock, so concurrent runs never act on each other's half-finished state.
        if graph is None:
            return None
        state = read_state(
            connection,
            registry.scope,
            graph.nodes,
            dependents=False,
            adopt=adopt,
            trusted_owners=registry.trusted_owners,
        )
        if not in_sync(graph, state):
            return None  # planned (or refused) under the lock, from a full read
        quick = Plan((), ())
        if on_plan is not None:
            on_plan(quick)
        return quick

    with _connected(bind) as connection:
        if discipline is Discipline.CHECKPOINT:
            with autocommit(connection) as conn:
                quick = nothing_to_do(conn)
                if quick is not None:
                    return SyncResult(quick, discipline, (), True)
                setting = lock_timeout_statement(lock_timeout, local=False)
                if setting:
                    run_batch(conn, None, setting)
                applied: list[Action] = []
                try:
                    state = _lock_and_read(conn, graph, registry, session_lock=True, adopt=adopt)
                    plan = first = make_plan(state, conn)
                    refused: dict[Key, str] = {}
                    while True:
                        try:
                            for unit in checkpoint_units(plan.actions):
                                applied.extend(_apply_unit(conn, unit, on_action))
                            break
                        except _UnitFailed as failed:
                            action, exc = failed.action, failed.error
                            why = refused_in_place(action, exc)
                            if why is not None and graph is not None and action.key not in refused:
                                # The unit was rolled back whole; what committed before it stays, the rest is
                                # planned again from the database with this object rebuilt.
                                refused[action.key] = why
                                state = read_state(
                                    conn,
                                    registry.scope,
                                    graph.nodes,
                                    adopt=adopt,
                                    trusted_owners=registry.trusted_owners,
                                )
                                plan = plan_sync(graph, state, rebuild=refused)
                                continue
                            better = (
                                diagnose_function(conn, action, in_autocommit=True) if create_failed(action) else None
                            )
                            if better is not None:
                                raise better from exc.__cause__
                            raise exc from exc.__cause__
                    return SyncResult(_as_run(first, applied, refused), discipline, tuple(applied), True)
                except ExecutionError as exc:
                    if not isinstance(exc, CatalogReadError):
                        exc.tell_state(checkpoint_state(len(applied)))
                    raise
                except KeyboardInterrupt as exc:
                    raise Interrupted(checkpoint_state(len(applied), interrupted=True)) from exc
                finally:
                    try:
                        conn.exec_driver_sql(f"SELECT pg_catalog.pg_advisory_unlock({LOCK_KEY})")
                        if setting:
                            conn.exec_driver_sql("RESET lock_timeout")
                    except Exception:
                        pass
        nested = connection.in_transaction()
        tx = connection.begin_nested() if nested else connection.begin()
        failed_action: Action | None = None
        try:
            quick = nothing_to_do(connection)
            if quick is not None:
                tx.rollback()
                return SyncResult(quick, discipline, (), discipline is Discipline.JUMBO)
            setting = lock_timeout_statement(lock_timeout, local=True)
            if setting:
                run_batch(connection, None, setting)
            state = _lock_and_read(connection, graph, registry, session_lock=False, adopt=adopt)
            plan = first = make_plan(state, connection)
            applied = []
            refused = {}
            pending = list(plan.actions)
            while pending:
                action = failed_action = pending.pop(0)
                try:
                    apply_in_transaction(connection, action)
                except ExecutionError as exc:
                    why = refused_in_place(action, exc)
                    if why is None or graph is None or action.key in refused:
                        raise
                    # Rolled back to the savepoint: plan the rest again, from inside this transaction.
                    refused[action.key] = why
                    state = read_state(
                        connection, registry.scope, graph.nodes, adopt=adopt, trusted_owners=registry.trusted_owners
                    )
                    plan = plan_sync(graph, state, rebuild=refused)
                    pending = list(plan.actions)
                    continue
                applied.append(action)
                if on_action is not None:
                    on_action(action)
            plan = _as_run(first, applied, refused)
            failed_action = None
            if discipline is Discipline.DRYRUN:
                tx.rollback()
            else:
                try:
                    tx.commit()
                except DBAPIError as exc:
                    error = ExecutionError(f"committing the run failed: {first_line(exc)}")
                    error.tell_state(
                        "PostgreSQL keeps a transaction only when its COMMIT completes, so nothing of this run should "
                        "be in the database; `samizdat diff` shows the state, and sync again applies the run"
                    )
                    raise error from exc
        except ExecutionError as exc:
            tx.rollback()
            if failed_action is not None and create_failed(failed_action):
                better = diagnose_function(connection, failed_action, in_autocommit=False)
                if better is not None:
                    better.tell_state(one_transaction_state(discipline, nested))
                    raise better from exc.__cause__
            if not isinstance(exc, CatalogReadError):
                exc.tell_state(one_transaction_state(discipline, nested))
            raise
        except KeyboardInterrupt as exc:
            with suppress(Exception):
                tx.rollback()
            raise Interrupted(one_transaction_state(discipline, nested, interrupted=True)) from exc
        except BaseException:
            tx.rollback()
            raise
        return SyncResult(plan, discipline, tuple(applied), discipline is Discipline.JUMBO)


def checkpoint_state(kept: int, *, interrupted: bool = False) -> str:
    """What is in the database after a ``checkpoint`` run stopped with ``kept`` actions done."""
    if not kept:
        return "Nothing was applied; sync again does the whole run" if interrupted else "Nothing was applied"
    done = f"The {kept} earlier action(s) of this run are applied and kept (checkpoint)"
    if interrupted:
        return f"{done}, the one under way was rolled back; sync again to finish the job"
    return f"{done}; sync again to finish the job once this is fixed"


def one_transaction_state(discipline: Discipline, nested: bool, *, interrupted: bool = False) -> str:
    """What is in the database after a ``jumbo`` or ``dryrun`` run stopped: nothing of it."""
    if discipline is Discipline.DRYRUN:
        return "Nothing was applied (dry run)"
    where = "rolled back to where this run began (a savepoint)" if nested else "rolled back"
    tail = "; sync again does the whole run" if interrupted else ""
    return f"Nothing was applied: the whole run (jumbo: one transaction) was {where}{tail}"


def _as_run(first: Plan, applied: list[Action], refused: dict[Key, str]) -> Plan:
    """The plan as it ran: the first one, or, after a refused in-place replacement, the actions that ran."""
    return Plan(first.differences, tuple(applied), first.warnings) if refused else first


class _UnitFailed(Exception):
    def __init__(self, action: Action, error: ExecutionError) -> None:
        super().__init__(str(error))
        self.action, self.error = action, error


def _apply_unit(connection: Connection, unit: tuple[Action, ...], on_action: OnAction | None) -> list[Action]:
    """Run one checkpoint unit (see :func:`planner.checkpoint_units`) on an autocommit connection."""
    if len(unit) == 1:
        try:
            return apply_actions(connection, unit, on_action=on_action)
        except ExecutionError as exc:
            raise _UnitFailed(unit[0], exc) from exc.__cause__
    # Several actions, one transaction: sent one by one so that a failure names its action.
    try:
        run_batch(connection, unit[0], "BEGIN")
    except ExecutionError as exc:
        raise _UnitFailed(unit[0], exc) from exc.__cause__
    try:
        for action in unit:
            try:
                run_batch(connection, action, action.sql)
            except ExecutionError as exc:
                exc.args = (f"{exc.args[0]}; the {len(unit)} actions of its transaction were rolled back",)
                raise _UnitFailed(action, exc) from exc.__cause__
        try:
            send(connection, "COMMIT")
        except DBAPIError as exc:
            error = ExecutionError(
                f"committing {len(unit)} actions ({unit[0].describe()} … {unit[-1].describe()}) failed: "
                f"{first_line(exc)}. None of them were kept; the next sync does them again",
                sql="COMMIT",
                action=unit[-1].describe(),
            )
            raise _UnitFailed(unit[-1], error) from exc
    except BaseException:
        with suppress(Exception):
            send(connection, "ROLLBACK")
        raise
    for action in unit:
        if on_action is not None:
            on_action(action)
    return list(unit)


def sync(
    bind: Bind,
    declarations: Declarations,
    *,
    discipline: Discipline | str = Discipline.CHECKPOINT,
    scope: str | None = None,
    lock_timeout: float | None = None,
    on_action: OnAction | None = None,
    on_plan: OnPlan | None = None,
    adopt: str | None = None,
) -> SyncResult:
    """Make the database match the declarations.

    ``discipline``: ``checkpoint`` (commit per unit: a replacement, a refresh, or a rebuilt stack whole, so
    readers never find an object missing), ``jumbo`` (one transaction) or ``dryrun`` (one transaction, rolled
    back). Changed views, functions and triggers are replaced in place when PostgreSQL accepts it (see
    docs/deploying.md). ``lock_timeout`` (seconds) bounds every lock wait; by default the server's
    setting applies. ``adopt="dbsamizdat"`` takes over objects DBSamizdat signed (unchanged ones are only
    re-signed; see :mod:`alembic_samizdat.adopt`). ``on_plan`` sees the plan before it runs, ``on_action`` each completed action. Raises a :class:`~alembic_samizdat.errors.SamizdatError` subclass on any problem.
    """
    registry = as_registry(declarations, scope=scope)
    graph = registry.graph()
    if adopt is not None and adopt not in ADOPTABLE:
        raise SamizdatError(f"adopt={adopt!r}: can adopt objects of {', '.join(ADOPTABLE)} only")
    return _run(bind, registry, graph, Discipline(discipline), lock_timeout, on_action, on_plan, adopt)


def nuke(
    bind: Bind,
    declarations: Declarations | None = None,
    *,
    discipline: Discipline | str = Discipline.CHECKPOINT,
    scope: str | None = None,
    lock_timeout: float | None = None,
    on_action: OnAction | None = None,
    on_plan: OnPlan | None = None,
) -> SyncResult:
    """Drop every object signed by the registry's scope (never anything else), dependents first."""
    registry = as_registry(declarations if declarations is not None else [], scope=scope)
    return _run(bind, registry, None, Discipline(discipline), lock_timeout, on_action, on_plan)


def plan(bind: Bind, declarations: Declarations, *, scope: str | None = None) -> Plan:
    """The plan a sync would run now, without running it.

    Replacements in place are tried in a savepoint that is rolled back (PostgreSQL decides which it accepts),
    so they take their objects' locks for as long as the tries last.
    """
    registry = as_registry(declarations, scope=scope)
    graph = registry.graph()
    with _connected(bind) as connection, _read_only(connection):
        state = read_state(connection, registry.scope, graph.nodes, trusted_owners=registry.trusted_owners)
        # Replacements are tried (and rolled back) so that the plan says replace or rebuild as a sync would.
        return plan_asking_postgres(connection, graph, state)


def diff_database(bind: Bind, declarations: Declarations, *, scope: str | None = None) -> DiffResult:
    """Compare declarations and database; see :attr:`DiffResult.exit_code`."""
    registry = as_registry(declarations, scope=scope)
    graph = registry.graph()
    with _connected(bind) as connection, _read_only(connection):
        state = read_state(connection, registry.scope, graph.nodes, trusted_owners=registry.trusted_owners)
    return DiffResult(tuple(diff(graph, state)), tuple(undeclared_dependency_warnings(graph, state)))


def _prepare_refresh(
    connection: Connection,
    registry: SamizdatRegistry,
    belownodes: Iterable[NodeRef] | None,
    concurrently: Concurrently | str,
    on_action: OnAction | None,
    progress: Progress | None,
) -> tuple[_Run, RefreshResult]:
    graph = registry.graph()
    keys = select_below(graph, belownodes) if belownodes is not None else all_matviews(graph)
    states = read_view_states(connection, keys, registry.scope, registry.trusted_owners) if keys else {}
    chosen, notes = choose_concurrently(graph, keys, states, Concurrently(concurrently))
    run = _Run(graph, Schedule(graph, keys), chosen, states, on_action, progress)
    return run, RefreshResult(notes=notes, concurrently=chosen)


def refresh(
    bind: Bind,
    declarations: Declarations,
    *,
    belownodes: Iterable[NodeRef] | None = None,
    parallel: bool = False,
    jobs: int | None = None,
    concurrently: Concurrently | str = Concurrently.AUTO,
    scope: str | None = None,
    on_action: OnAction | None = None,
    progress: Progress | None = None,
) -> RefreshResult:
    """Refresh materialized views in dependency order, each in its own transaction.

    ``belownodes`` limits the run to views that depend, directly or transitively, on the given samizdats or
    tables. ``parallel`` runs up to ``jobs`` (default: the number of cores) refreshes at once, each view
    starting as soon as the views it reads are done. ``concurrently``: ``auto`` (the class's
    ``refresh_concurrently`` when PostgreSQL allows it), ``always`` or ``never``. Failures raise
    :class:`~alembic_samizdat.refresher.RefreshError` listing every failed view.
    """
    registry = as_registry(declarations, scope=scope)
    with _connected(bind) as connection, _read_only(connection):
        run, result = _prepare_refresh(connection, registry, belownodes, concurrently, on_action, progress)
    with _connected(bind) as connection:
        if parallel and len(run.schedule.order) > 1:
            return refresh_threaded(connection.engine, run, result, jobs or default_jobs())
        return refresh_serial(connection, run, result)


async def refresh_async(
    engine: AsyncEngine,
    declarations: Declarations,
    *,
    belownodes: Iterable[NodeRef] | None = None,
    jobs: int | None = 1,
    concurrently: Concurrently | str = Concurrently.AUTO,
    scope: str | None = None,
    on_action: OnAction | None = None,
    progress: Progress | None = None,
) -> RefreshResult:
    """:func:`refresh` for asyncio services, on an ``AsyncEngine`` (``postgresql+psycopg://`` or
    ``postgresql+asyncpg://``): never blocks
    the event loop. ``jobs`` > 1 refreshes independent views at once on that many connections.
    """
    registry = as_registry(declarations, scope=scope)
    async with engine.connect() as connection:
        run, result = await connection.run_sync(
            lambda sync: _prepare_refresh(sync, registry, belownodes, concurrently, on_action, progress)
        )
        await connection.rollback()
    return await refresh_asyncio(engine, run, result, max(1, jobs or default_jobs()))


def adopt(bind: Bind, declarations: Declarations, *, scope: str | None = None) -> AdoptResult:
    """Sign objects that exist unsigned (e.g. created by alembic_utils) when they match their declaration.

    All or nothing, in one transaction: any difference raises
    :class:`~alembic_samizdat.adopt.AdoptionRefusedError` with a diff per object and signs nothing.
    """
    registry = as_registry(declarations, scope=scope)
    graph = registry.graph()
    with _connected(bind) as connection:
        nested = connection.in_transaction()
        tx = connection.begin_nested() if nested else connection.begin()
        try:
            result = adopt_unsigned(connection, graph, registry.scope)
        except BaseException:
            tx.rollback()
            raise
        tx.commit()
        return result
