"""One registry, many targets: tenant schemas of one database, and many databases, ``jobs`` at a time.

A *target* is one run of a command: the shared objects of a database, or one tenant schema of it. The targets of
one database run one after another (sync takes the database's advisory lock anyway); databases run on a thread
pool, each on its own engine with a small pool, so at most ``jobs`` databases are worked on at once and each holds
at most a few connections. A failed target is reported and the others go on; nothing is retried, and since every
command is idempotent (a sync that stopped midway is finished by the next one) running the same command again
finishes what is left.

Each tenant's objects are signed with the tenant in their signature (:func:`~.signature.tenant_scope`): a run for
tenant ``a`` reads only ``a``'s objects as its own, so a tenant that a run does not select is left alone, and a
nuke of one tenant drops that tenant's objects only.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, create_engine, make_url
from sqlalchemy.exc import DBAPIError

from . import api, pinned
from .drivers import cli_url
from .errors import FleetError, SamizdatError, UnmanagedDependentError, first_line
from .execute import Discipline
from .identifiers import check_identifier
from .refresh_plan import Concurrently, NodeRef
from .registry import SamizdatRegistry
from .tenants import PLACEHOLDER
from .urls import mask_url

#: ``application_name`` of the connections a fleet run opens (unless the URL sets one): lets a DBA see them.
APPLICATION_NAME = "samizdat fleet"
#: Connections one database's engine may hold: the commands use one at a time; the second is a margin, so that a
#: code path that ever needs two waits for none.
POOL_SIZE = 2

#: A command on one database for one registry (the shared one or a tenant's): a one-line result, and an exit
#: code (0 unless the command says otherwise, as diff does).
Operation = Callable[[Engine, SamizdatRegistry], tuple[str, int]]


@dataclass(frozen=True)
class Outcome:
    """How one target went."""

    #: The database, its password masked.
    database: str
    #: The tenant schema, or ``None`` for the shared objects.
    tenant: str | None
    ok: bool
    #: One line: what was done, or why it failed.
    message: str
    seconds: float
    #: The command's exit code for this target (1 when it failed; diff's 101/102/103 when it differs).
    code: int = 0

    @property
    def target(self) -> str:
        """How output names the target."""
        return self.database if self.tenant is None else f"{self.database} schema {self.tenant}"


@dataclass(frozen=True)
class FleetResult:
    """Every target's outcome, in the order the targets were given."""

    outcomes: tuple[Outcome, ...]

    @property
    def failed(self) -> tuple[Outcome, ...]:
        """The targets that failed."""
        return tuple(o for o in self.outcomes if not o.ok)

    @property
    def exit_code(self) -> int:
        """1 when a target failed; otherwise diff's code over every target (101/102/103), or 0."""
        if self.failed:
            return 1
        db = any(o.code in (101, 103) for o in self.outcomes)
        code = any(o.code in (102, 103) for o in self.outcomes)
        return (101 if db else 0) + (102 if code else 0) - (100 if db and code else 0) if (db or code) else 0

    def check(self) -> FleetResult:
        """Raise :class:`~alembic_samizdat.errors.FleetError` naming every failed target; else return self."""
        failed = self.failed
        if failed:
            listed = "; ".join(f"{o.target}: {o.message}" for o in failed)
            raise FleetError(
                f"{len(failed)} of {len(self.outcomes)} target(s) failed: {listed}. The others completed; run the "
                "same command again once fixed (it finishes what is left)",
                tuple(o.target for o in failed),
            )
        return self


@dataclass(frozen=True)
class Tenants:
    """Which tenant schemas a run covers, resolved on each database: names, ``LIKE`` patterns, or a query."""

    names: tuple[str, ...] = ()
    patterns: tuple[str, ...] = ()
    #: SQL returning schema names in its first column (the user's own SQL: it runs as written).
    query: str | None = None

    def __bool__(self) -> bool:
        return bool(self.names or self.patterns or self.query)

    def resolve(self, connection: Connection) -> list[str]:
        """The tenant schemas on this database, sorted, each once."""
        began = not connection.in_transaction()
        found = {check_identifier(n, "tenant schema") for n in self.names}
        if self.patterns:
            rows = pinned.query(
                connection,
                "SELECT n.nspname FROM pg_catalog.pg_namespace n "
                "WHERE n.nspname OPERATOR(pg_catalog.~~) ANY (:patterns)",
                {"patterns": list(self.patterns)},
            )
            found.update(str(r[0]) for r in rows)
        if self.query:
            try:
                rows = connection.exec_driver_sql(self.query).all()
            except DBAPIError as exc:
                raise SamizdatError(f"the tenant schemas query failed: {first_line(exc)}") from exc
            for row in rows:
                if not row or not isinstance(row[0], str):
                    raise SamizdatError(
                        f"the tenant schemas query must return schema names (text) in its first column; got {row!r}"
                    )
                found.add(check_identifier(row[0], "tenant schema from the query"))
        if began and connection.in_transaction():
            connection.rollback()  # only a transaction of our own: never the caller's (an Alembic migration's)
        return sorted(found)


def as_tenants(tenants: Tenants | Iterable[str] | None) -> Tenants:
    """:class:`Tenants` from names (or ``None``: no tenants)."""
    if tenants is None:
        return Tenants()
    if isinstance(tenants, Tenants):
        return tenants
    if isinstance(tenants, str):
        return Tenants(names=(tenants,))
    return Tenants(names=tuple(tenants))


def default_jobs() -> int:
    """Databases at a time when not told: the number of CPUs."""
    return max(1, os.cpu_count() or 1)


# ---------------------------------------------------------------------------------------------------- operations


def sync_operation(
    discipline: Discipline | str = Discipline.CHECKPOINT,
    lock_timeout: float | None = None,
    adopt: str | None = None,
    swap: bool = True,
) -> Operation:
    """``sync`` as an :data:`Operation`."""

    def run(engine: Engine, registry: SamizdatRegistry) -> tuple[str, int]:
        result = api.sync(engine, registry, discipline=discipline, lock_timeout=lock_timeout, adopt=adopt, swap=swap)
        lost = f"; {len(result.lost)} thing(s) not restored: {result.lost[0]}" if result.lost else ""
        return result.summary() + lost, 0

    return run


def diff_operation() -> Operation:
    """``diff`` as an :data:`Operation` (its code: 0, 101, 102 or 103)."""

    def run(engine: Engine, registry: SamizdatRegistry) -> tuple[str, int]:
        result = api.diff_database(engine, registry)
        if not result.differences:
            return "no differences", 0
        counts: dict[str, int] = {}
        for difference in result.differences:
            counts[difference.what.value] = counts.get(difference.what.value, 0) + 1
        return ", ".join(f"{n} {what}" for what, n in counts.items()), result.exit_code

    return run


def nuke_operation(discipline: Discipline | str = Discipline.JUMBO, lock_timeout: float | None = None) -> Operation:
    """``nuke`` as an :data:`Operation`."""

    def run(engine: Engine, registry: SamizdatRegistry) -> tuple[str, int]:
        result = api.nuke(engine, registry, discipline=discipline, lock_timeout=lock_timeout)
        return (result.summary() if result.plan.actions else "nothing signed here"), 0

    return run


def refresh_operation(
    belownodes: Iterable[NodeRef] | None = None,
    concurrently: Concurrently | str = Concurrently.AUTO,
) -> Operation:
    """``refresh`` (one view at a time, so that a database holds one connection) as an :data:`Operation`."""
    nodes = list(belownodes) if belownodes is not None else None

    def run(engine: Engine, registry: SamizdatRegistry) -> tuple[str, int]:
        if not len(registry.graph()):
            return "nothing to refresh", 0  # e.g. the shared part of a registry of TENANT classes only
        result = api.refresh(engine, registry, belownodes=nodes, concurrently=concurrently)
        return f"refreshed {len(result.refreshed)} materialized view(s)", 0

    return run


# ---------------------------------------------------------------------------------------------------- running


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, DBAPIError):
        text = first_line(exc)
    else:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        text = " ".join(lines) or type(exc).__name__
    return mask_url(text)


def run_database(
    engine: Engine,
    registry: SamizdatRegistry,
    operation: Operation,
    *,
    tenants: Tenants | Iterable[str] | None = None,
    shared: bool = True,
    database: str | None = None,
    on_outcome: Callable[[Outcome], None] | None = None,
    stop: threading.Event | None = None,
) -> list[Outcome]:
    """Run ``operation`` on one database: the shared objects (unless ``shared`` is false), then each tenant.

    Never raises for a failed target: its outcome says why. Declarations are the caller's to check first
    (:func:`check_declarations`), so that an error in them is one error, not one per target.
    """
    name = database if database is not None else mask_url(engine.url.render_as_string(hide_password=True))
    selection = as_tenants(tenants)
    outcomes: list[Outcome] = []

    def record(tenant: str | None, started: float, work: Callable[[], tuple[str, int]], hint: str = "") -> None:
        try:
            message, code = work()
            outcome = Outcome(name, tenant, True, message, time.monotonic() - started, code)
        except Exception as exc:
            failure = _one_line(exc)
            if hint and isinstance(exc, UnmanagedDependentError):
                failure += hint
            outcome = Outcome(name, tenant, False, failure, time.monotonic() - started, 1)
        outcomes.append(outcome)
        if on_outcome is not None:
            on_outcome(outcome)

    names: list[str] = []
    if selection:
        started = time.monotonic()
        try:
            with engine.connect() as connection:
                names.extend(selection.resolve(connection))
        except Exception as exc:
            message = f"finding the tenant schemas: {_one_line(exc)}"
            outcome = Outcome(name, None, False, message, time.monotonic() - started, 1)
            outcomes.append(outcome)
            if on_outcome is not None:
                on_outcome(outcome)
            return outcomes
    if shared:
        # With tenants, the dependents that stop a shared rebuild are most likely the tenants' own objects, which
        # the shared run does not manage: say what to do.
        hint = (
            " (when they are tenant objects: drop them first with `samizdat nuke --tenant-schemas …`, then sync; "
            "docs/fleets.md#limits)"
            if names
            else ""
        )
        record(None, time.monotonic(), lambda: operation(engine, registry), hint)
    for tenant in names:
        if stop is not None and stop.is_set():
            break  # interrupted: the targets not started are left for the next run
        record(tenant, time.monotonic(), lambda t=tenant: operation(engine, registry.for_tenant(t)))  # type: ignore[misc]
    return outcomes


def check_declarations(registry: SamizdatRegistry, tenants: Tenants | Iterable[str] | None) -> None:
    """Every declaration check, before any connection: the shared classes, and the TENANT classes (as they are
    in the placeholder tenant) when tenants are asked for."""
    registry.graph()
    if as_tenants(tenants) and registry.tenant_classes():
        registry.for_tenant(PLACEHOLDER).graph()


def engine_for(url: str, *, connect_timeout: float = 10, pool_size: int = POOL_SIZE) -> Engine:
    """The engine one database of a fleet is run on: a pool of ``pool_size`` connections and no overflow, so that
    the connections a run holds are bounded; ``connect_timeout`` seconds for a server that does not answer."""
    try:
        parsed = make_url(cli_url(url).render_as_string(hide_password=False))
    except Exception as exc:
        raise SamizdatError(mask_url(f"not a database URL: {url!r} ({exc})")) from exc
    args: dict[str, object] = {}
    if "connect_timeout" not in parsed.query:
        args["connect_timeout"] = max(1, round(connect_timeout))
    if "application_name" not in parsed.query:
        args["application_name"] = APPLICATION_NAME
    return create_engine(parsed, connect_args=args, pool_size=pool_size, max_overflow=0, pool_pre_ping=False)


def run_databases(
    urls: Sequence[str],
    registry: SamizdatRegistry,
    operation: Operation,
    *,
    jobs: int | None = None,
    tenants: Tenants | Iterable[str] | None = None,
    shared: bool = True,
    connect_timeout: float = 10,
    on_outcome: Callable[[Outcome], None] | None = None,
) -> FleetResult:
    """Run ``operation`` on every database of ``urls``, at most ``jobs`` (default: CPUs) at a time.

    Each database gets its own engine (at most :data:`POOL_SIZE` connections), disposed of when its targets are
    done. ``on_outcome`` sees each target as it finishes (from worker threads, one call at a time).
    """
    check_declarations(registry, tenants)
    lock = threading.Lock()
    stop = threading.Event()
    results: dict[int, list[Outcome]] = {}

    def tell(outcome: Outcome) -> None:
        if on_outcome is not None:
            with lock:
                on_outcome(outcome)

    def one(index: int, url: str) -> None:
        shown = mask_url(url)
        started = time.monotonic()
        try:
            engine = engine_for(url, connect_timeout=connect_timeout)
        except Exception as exc:
            outcome = Outcome(shown, None, False, _one_line(exc), time.monotonic() - started, 1)
            results[index] = [outcome]
            tell(outcome)
            return
        try:
            try:
                with engine.connect() as connection:
                    connection.exec_driver_sql("SELECT 1").close()
            except Exception as exc:
                outcome = Outcome(
                    shown, None, False, f"cannot connect: {_connection_reason(exc)}", time.monotonic() - started, 1
                )
                results[index] = [outcome]
                tell(outcome)
                return
            results[index] = run_database(
                engine, registry, operation, tenants=tenants, shared=shared, database=shown, on_outcome=tell, stop=stop
            )
        finally:
            engine.dispose()

    workers = max(1, min(jobs or default_jobs(), len(urls) or 1))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="samizdat-fleet") as pool:
        futures = [pool.submit(one, index, url) for index, url in enumerate(urls)]
        try:
            for future in futures:
                future.result()
        except BaseException:
            stop.set()
            for future in futures:
                future.cancel()
            raise
    return FleetResult(tuple(o for index in range(len(urls)) for o in results.get(index, [])))


def _connection_reason(exc: BaseException) -> str:
    """psycopg's multi-line connection failure as its one informative line."""
    orig = getattr(exc, "orig", exc)
    lines = [line.strip() for line in str(orig).splitlines() if line.strip()]
    reason = lines[0] if lines else type(orig).__name__
    return mask_url(reason.split("failed: ")[-1] if "failed: " in reason else reason)


# ---------------------------------------------------------------------------------------------------- Python API


def _registry(declarations: api.Declarations, scope: str | None) -> SamizdatRegistry:
    return api.as_registry(declarations, scope=scope)


def sync(
    bind: Engine | Sequence[str],  # a Connection is refused: see _call
    declarations: api.Declarations,
    *,
    tenants: Tenants | Iterable[str] | None = None,
    shared: bool = True,
    discipline: Discipline | str = Discipline.CHECKPOINT,
    scope: str | None = None,
    lock_timeout: float | None = None,
    jobs: int | None = None,
    on_outcome: Callable[[Outcome], None] | None = None,
) -> FleetResult:
    """Sync the shared objects and every tenant in ``tenants`` (names, or a :class:`Tenants` with ``LIKE``
    patterns or a query), on one engine or on every database URL of a list (``jobs`` at a time).

    Failures do not raise: see :attr:`FleetResult.failed`, or call :meth:`FleetResult.check`.
    """
    return _call(bind, declarations, sync_operation(discipline, lock_timeout), tenants, shared, scope, jobs, on_outcome)


def diff(
    bind: Engine | Sequence[str],
    declarations: api.Declarations,
    *,
    tenants: Tenants | Iterable[str] | None = None,
    shared: bool = True,
    scope: str | None = None,
    jobs: int | None = None,
    on_outcome: Callable[[Outcome], None] | None = None,
) -> FleetResult:
    """:func:`sync`'s targets compared with the declarations; :attr:`FleetResult.exit_code` is diff's."""
    return _call(bind, declarations, diff_operation(), tenants, shared, scope, jobs, on_outcome)


def nuke(
    bind: Engine | Sequence[str],
    declarations: api.Declarations,
    *,
    tenants: Tenants | Iterable[str] | None = None,
    shared: bool | None = None,
    discipline: Discipline | str = Discipline.JUMBO,
    scope: str | None = None,
    lock_timeout: float | None = None,
    jobs: int | None = None,
    on_outcome: Callable[[Outcome], None] | None = None,
) -> FleetResult:
    """Drop the objects of each tenant in ``tenants`` (and only theirs); the shared objects too only with
    ``shared=True`` (the default when no tenants are given)."""
    with_shared = shared if shared is not None else not as_tenants(tenants)
    operation = nuke_operation(discipline, lock_timeout)
    return _call(bind, declarations, operation, tenants, with_shared, scope, jobs, on_outcome)


def refresh(
    bind: Engine | Sequence[str],
    declarations: api.Declarations,
    *,
    tenants: Tenants | Iterable[str] | None = None,
    shared: bool = True,
    belownodes: Iterable[NodeRef] | None = None,
    concurrently: Concurrently | str = Concurrently.AUTO,
    scope: str | None = None,
    jobs: int | None = None,
    on_outcome: Callable[[Outcome], None] | None = None,
) -> FleetResult:
    """Refresh the materialized views of the shared objects and of each tenant."""
    operation = refresh_operation(belownodes, concurrently)
    return _call(bind, declarations, operation, tenants, shared, scope, jobs, on_outcome)


def _call(
    bind: Engine | Sequence[str],
    declarations: api.Declarations,
    operation: Operation,
    tenants: Tenants | Iterable[str] | None,
    shared: bool,
    scope: str | None,
    jobs: int | None,
    on_outcome: Callable[[Outcome], None] | None,
) -> FleetResult:
    registry = _registry(declarations, scope)
    if isinstance(bind, Engine):
        check_declarations(registry, tenants)
        return FleetResult(
            tuple(run_database(bind, registry, operation, tenants=tenants, shared=shared, on_outcome=on_outcome))
        )
    if isinstance(bind, str | Connection):
        # Each target commits on its own (a failed tenant must not undo the others): a caller's connection, and
        # the transaction it may hold, cannot give that.
        raise SamizdatError(
            f"give an Engine or a list of database URLs, not a {type(bind).__name__}: each target runs and commits "
            "on its own"
        )
    return run_databases(
        list(bind), registry, operation, jobs=jobs, tenants=tenants, shared=shared, on_outcome=on_outcome
    )
