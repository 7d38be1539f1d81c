"""The Python API: sync, diff, nuke, refresh and plan on a SQLAlchemy ``Engine`` or ``Connection``.

Every front (CLI, Alembic) goes through these functions; they read the catalog once, plan with the pure
planner, and apply the plan under the chosen transaction discipline.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine, MetaData
from sqlalchemy.exc import DBAPIError

from .adopt import ADOPTABLE, AdoptResult, adopt_unsigned
from .apply import Applier, SwapTiming
from .catalog import DatabaseState, read_state
from .errors import CatalogReadError, ExecutionError, Interrupted, SamizdatError, first_line
from .execute import (
    LOCK_KEY,
    Discipline,
    OnAction,
    autocommit,
    collect_notices,
    create_failed,
    diagnose_function,
    lock_timeout_statement,
    plan_asking_postgres,
    plan_checking_swaps,
    run_batch,
)
from .graph import Graph
from .keys import Key
from .model import Samizdat
from .planner import (
    Action,
    Difference,
    DiffKind,
    Plan,
    diff,
    in_sync,
    outcomes,
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
    #: The materialized views swapped in (see :mod:`alembic_samizdat.swap`): build time and lock time.
    swaps: tuple[SwapTiming, ...] = ()

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
    #: What the next sync does about each changed object: "replaced in place…", "recreated (why)…"
    #: (PostgreSQL is not asked here; ``samizdat explain`` asks it).
    next_sync: Mapping[Key, str] = field(default_factory=dict)

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
    swap: bool = True,
) -> SyncResult:
    """:func:`_run_inner`, collecting what capture-and-restore reported."""
    notices: list[tuple[str, str]] = []
    with _connected(bind) as connection, collect_notices(connection, notices):
        result = _run_inner(connection, registry, graph, discipline, lock_timeout, on_action, on_plan, adopt, swap)
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
    swap: bool = True,
) -> SyncResult:
    """Lock, read, plan (sync when ``graph`` is given, else nuke) and apply under ``discipline``."""
    discipline = Discipline(discipline)

    def make_plan(state: DatabaseState, connection: Connection) -> Plan:
        made = plan_nuke(state) if graph is None else plan_asking_postgres(connection, graph, state, swap=swap)
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

    def replan(refused: dict[Key, str]) -> Plan:
        # What committed (or ran, inside the run's transaction) stays; the rest is planned again from the database.
        assert graph is not None
        state = read_state(
            applier.connection, registry.scope, graph.nodes, adopt=adopt, trusted_owners=registry.trusted_owners
        )
        return plan_sync(graph, state, rebuild=refused, swap=swap)

    with _connected(bind) as connection:
        applier = Applier(connection, discipline, lock_timeout, on_action)
        if discipline is Discipline.CHECKPOINT:
            with autocommit(connection) as conn:
                quick = nothing_to_do(conn)
                if quick is not None:
                    return SyncResult(quick, discipline, (), True)
                setting = lock_timeout_statement(lock_timeout, local=False)
                if setting:
                    run_batch(conn, None, setting)
                try:
                    state = _lock_and_read(conn, graph, registry, session_lock=True, adopt=adopt)
                    ran = applier.apply(make_plan(state, conn), replan if graph is not None else None)
                    return SyncResult(ran, discipline, tuple(applier.applied), True, swaps=applier.swaps)
                except ExecutionError as exc:
                    better = _diagnosed(conn, applier.failed, exc, in_autocommit=True)
                    if not isinstance(better, CatalogReadError):
                        better.tell_state(checkpoint_state(len(applier.applied)))
                    if better is not exc:
                        raise better from exc.__cause__
                    raise
                except KeyboardInterrupt as exc:
                    raise Interrupted(checkpoint_state(len(applier.applied), interrupted=True)) from exc
                finally:
                    try:
                        conn.exec_driver_sql(f"SELECT pg_catalog.pg_advisory_unlock({LOCK_KEY})")
                        if setting:
                            conn.exec_driver_sql("RESET lock_timeout")
                    except Exception:
                        pass
        nested = connection.in_transaction()
        tx = connection.begin_nested() if nested else connection.begin()
        try:
            quick = nothing_to_do(connection)
            if quick is not None:
                tx.rollback()
                return SyncResult(quick, discipline, (), discipline is Discipline.JUMBO)
            setting = lock_timeout_statement(lock_timeout, local=True)
            if setting:
                run_batch(connection, None, setting)
            state = _lock_and_read(connection, graph, registry, session_lock=False, adopt=adopt)
            ran = applier.apply(make_plan(state, connection), replan if graph is not None else None)
            if discipline is Discipline.DRYRUN:
                tx.rollback()
                applier.ended(kept=False)
            else:
                try:
                    tx.commit()
                    applier.ended(kept=True)
                except DBAPIError as exc:
                    error = ExecutionError(f"committing the run failed: {first_line(exc)}")
                    error.tell_state(
                        "PostgreSQL keeps a transaction only when its COMMIT completes, so nothing of this run should "
                        "be in the database; `samizdat diff` shows the state, and sync again applies the run"
                    )
                    raise error from exc
        except ExecutionError as exc:
            tx.rollback()
            better = _diagnosed(connection, applier.failed, exc, in_autocommit=False)
            if not isinstance(better, CatalogReadError):
                better.tell_state(one_transaction_state(discipline, nested))
            if better is not exc:
                raise better from exc.__cause__
            raise
        except KeyboardInterrupt as exc:
            with suppress(Exception):
                tx.rollback()
            raise Interrupted(one_transaction_state(discipline, nested, interrupted=True)) from exc
        except BaseException:
            tx.rollback()
            raise
        return SyncResult(ran, discipline, tuple(applier.applied), discipline is Discipline.JUMBO, swaps=applier.swaps)


def _diagnosed(
    connection: Connection, failed: Action | None, exc: ExecutionError, *, in_autocommit: bool
) -> ExecutionError:
    """``exc``, or a better error when a function create failed on its declared signature."""
    if failed is None or not create_failed(failed):
        return exc
    return diagnose_function(connection, failed, in_autocommit=in_autocommit) or exc


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
    swap: bool = True,
) -> SyncResult:
    """Make the database match the declarations.

    ``discipline``: ``checkpoint`` (commit per unit: a replacement, a refresh, or a rebuilt stack whole, so
    readers never find an object missing), ``jumbo`` (one transaction) or ``dryrun`` (one transaction, rolled
    back). Changed views, functions and triggers are replaced in place when PostgreSQL accepts it (see
    docs/deploying.md). ``lock_timeout`` (seconds) bounds every lock wait; by default the server's
    setting applies. A changed materialized view is built beside the old one and swapped in, so
    readers wait for the swap and not for the populate; ``swap=False`` rebuilds it in place instead (no second
    copy on disk meanwhile; readers wait for the populate). ``adopt="dbsamizdat"`` takes over objects DBSamizdat signed (unchanged ones are only
    re-signed; see :mod:`alembic_samizdat.adopt`). ``on_plan`` sees the plan before it runs, ``on_action`` each completed action. Raises a :class:`~alembic_samizdat.errors.SamizdatError` subclass on any problem.
    """
    registry = as_registry(declarations, scope=scope)
    graph = registry.graph()
    if adopt is not None and adopt not in ADOPTABLE:
        raise SamizdatError(f"adopt={adopt!r}: can adopt objects of {', '.join(ADOPTABLE)} only")
    return _run(bind, registry, graph, Discipline(discipline), lock_timeout, on_action, on_plan, adopt, swap)


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
        differences = tuple(diff(graph, state))
        next_sync: dict[Key, str] = {}
        if any(d.what in _REBUILDING for d in differences):
            try:
                next_sync = outcomes(plan_checking_swaps(connection, graph, state))
            except SamizdatError as exc:
                # The sync would stop before doing anything (a clash, a user's object in the way): say so.
                next_sync = dict.fromkeys((d.key for d in differences), f"the next sync stops: {first_line(exc)}")
    return DiffResult(differences, tuple(undeclared_dependency_warnings(graph, state)), next_sync)


#: Differences whose sync may replace or recreate the object (the others are created, refreshed or re-granted).
_REBUILDING = (DiffKind.CHANGED, DiffKind.DRIFTED, DiffKind.EXCESS_DB)


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
