"""Sending our statements, asking PostgreSQL before a run, and turning database errors into ours.

Each action's statements go to the server as one batch (:func:`run_batch`): one round trip, and (a property of
PostgreSQL's simple query protocol) one implicit transaction when no transaction is open. In-place replacements
are tried first in a transaction that is rolled back (:func:`probe_in_place`), and the swap's privilege is asked
(:func:`plan_checking_swaps`), so the plan says before it runs what happens to each object. Every database error
of a run, of the API and of the Alembic operations becomes one of ours in :func:`translate_error`. Applying a
whole plan under a discipline is :mod:`alembic_samizdat.apply`'s job.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from enum import StrEnum

from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from . import pinned
from .catalog import DatabaseState
from .declared import or_replace
from .errors import (
    ExecutionError,
    FunctionSignatureMismatchError,
    LockTimeoutError,
    SamizdatError,
    first_line,
)
from .graph import Graph
from .identifiers import qualified
from .keys import Key, Kind
from .planner import Action, Plan, Verb, plan_sync
from .preserve import MESSAGE_PREFIX
from .privileges import INSUFFICIENT_PRIVILEGE, PrivilegeContext, missing_privilege
from .swap import NO_CREATE_PRIVILEGE

#: The advisory lock that serialises concurrent runs against one database.
LOCK_KEY = int.from_bytes(hashlib.sha256(b"alembic_samizdat").digest()[:8], "big", signed=True)


class Discipline(StrEnum):
    """Transaction disciplines (as in DBSamizdat)."""

    #: Commit after every unit (a replacement, a refresh, or a rebuilt stack whole: see
    #: :func:`~alembic_samizdat.planner.checkpoint_units`); a failure leaves the units before it.
    CHECKPOINT = "checkpoint"
    #: One transaction for the whole run; a failure changes nothing.
    JUMBO = "jumbo"
    #: One transaction, rolled back at the end: shows what would happen, changes nothing.
    DRYRUN = "dryrun"


OnAction = Callable[[Action], None]


def sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of a database error, if any."""
    orig = getattr(exc, "orig", exc)
    # psycopg 3 and asyncpg say sqlstate, psycopg2 (a user's application engine) pgcode.
    state = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    return state if isinstance(state, str) else None


def lock_timeout_statement(seconds: float | None, *, local: bool) -> str | None:
    """``SET [LOCAL] lock_timeout``; ``None`` keeps the server's own setting."""
    if seconds is None:
        return None
    if seconds <= 0:
        raise SamizdatError(f"lock_timeout must be positive, not {seconds!r}")
    return f"SET {'LOCAL ' if local else ''}lock_timeout = {int(seconds * 1000)}"


#: How PostgreSQL refuses a ``CREATE OR REPLACE`` that dropping and creating would do: invalid_table_definition
#: (a view's columns renamed, retyped or dropped), invalid_function_definition (a function's result type, OUT
#: or argument names, defaults), wrong_object_type (a function became a procedure), feature_not_supported and
#: object_not_in_prerequisite_state (e.g. a constraint trigger).
REFUSED_IN_PLACE = frozenset({"42P16", "42P13", "42809", "0A000", "55000"})

#: The savepoint that lets a refused in-place replacement fall back inside a transaction.
REPLACE_SAVEPOINT = "samizdat_replace"


def probe_in_place(
    connection: Connection, plan: Plan, state: DatabaseState, *, both_ways: bool = False
) -> dict[Key, str]:
    """Ask PostgreSQL which in-place replacements of ``plan`` it refuses, in a transaction (or savepoint)
    that is always rolled back; ``both_ways`` also tries putting each previous definition back (what an Alembic
    downgrade does), in reverse order.

    The plan then shows what will happen (``replace`` or a rebuild, and why) before anything runs; the locks
    the tries take are held only for the tries.
    """
    replaces = [action for action in plan.actions if action.verb is Verb.REPLACE]
    if not replaces:
        return {}
    try:
        return _probe(connection, replaces, state, both_ways=both_ways)
    except SQLAlchemyError as exc:
        raise ExecutionError(
            f"trying the in-place replacements failed: {first_line(exc)}. Nothing was changed",
            sql=replaces[0].statements[0],
            action=replaces[0].describe(),
        ) from exc


def plan_asking_postgres(
    connection: Connection,
    graph: Graph,
    state: DatabaseState,
    *,
    force: Iterable[Key] = (),
    both_ways: bool = False,
    swap: bool = True,
) -> Plan:
    """:func:`~alembic_samizdat.planner.plan_sync`, with the replacements PostgreSQL refuses (see
    :func:`probe_in_place`) planned as rebuilds instead, and materialized views rebuilt rather than swapped
    when the running role may not create the schema a swap builds in (see :mod:`alembic_samizdat.swap`)."""
    refused: dict[Key, str] = {}
    made = plan_checking_swaps(connection, graph, state, force=force, refused=refused, swap=swap)
    while found := probe_in_place(connection, made, state, both_ways=both_ways):
        refused.update(found)
        made = plan_sync(graph, state, force=force, rebuild=refused, swap=swap)
    return made


def plan_checking_swaps(
    connection: Connection,
    graph: Graph,
    state: DatabaseState,
    *,
    force: Iterable[Key] = (),
    refused: dict[Key, str] | None = None,
    swap: bool = True,
) -> Plan:
    """:func:`~alembic_samizdat.planner.plan_sync`, with materialized views rebuilt rather than swapped when
    the running role may not create the schema a swap builds in; read-only (``diff`` uses it). The keys so
    rebuilt are added to ``refused``."""
    made = plan_sync(graph, state, force=force, rebuild=refused, swap=swap)
    builds = [action.key for action in made.actions if action.verb is Verb.BUILD]
    if not builds or may_create_schema(connection):
        return made
    rebuilt = {**(refused or {}), **dict.fromkeys(builds, NO_CREATE_PRIVILEGE)}
    if refused is not None:
        refused.update(rebuilt)
    return plan_sync(graph, state, force=force, rebuild=rebuilt)


def may_create_schema(connection: Connection) -> bool:
    """Whether the running role may create a schema in this database (what a swap needs)."""
    rows = pinned.query(
        connection, "SELECT pg_catalog.has_database_privilege(pg_catalog.current_database(), 'CREATE')", {}
    )
    return bool(rows[0][0])


def _probe(connection: Connection, replaces: list[Action], state: DatabaseState, *, both_ways: bool) -> dict[Key, str]:
    nested = connection.in_transaction() and not _autocommit(connection)
    send(connection, "SAVEPOINT samizdat_probe" if nested else "BEGIN")
    refused: dict[Key, str] = {}
    try:
        for action in replaces:
            why = _refusal(connection, action, action.statements[0])
            if why is not None:
                refused[action.key] = why
        for action in reversed(replaces) if both_ways else ():
            obj = state.managed[action.key]
            previous = obj.signature.sql if obj.signature is not None else None
            back = or_replace(previous, Kind(obj.kind), action.key) if previous is not None else None
            if action.key in refused or back is None:
                continue
            why = _refusal(connection, action, back)
            if why is not None:
                refused[action.key] = f"{why}, going back on downgrade"
    except BaseException:
        # A connection lost in the middle cannot roll back; the error that lost it is the one to report.
        with suppress(SQLAlchemyError):
            send(connection, "ROLLBACK TO SAVEPOINT samizdat_probe; RELEASE samizdat_probe" if nested else "ROLLBACK")
        raise
    send(connection, "ROLLBACK TO SAVEPOINT samizdat_probe; RELEASE samizdat_probe" if nested else "ROLLBACK")
    return refused


def _autocommit(connection: Connection) -> bool:
    return connection.get_execution_options().get("isolation_level") == "AUTOCOMMIT"


def _refusal(connection: Connection, action: Action, sql: str) -> str | None:
    send(connection, "SAVEPOINT samizdat_try")
    try:
        send(connection, sql)
    except DBAPIError as exc:
        send(connection, "ROLLBACK TO SAVEPOINT samizdat_try")
        if sqlstate(exc) == "55P03":
            # The run would wait for the same lock: report it now rather than wait twice.
            raise _describe_failure(action, exc, sql) from exc
        # Any other error (e.g. an object the plan creates first is missing here) is not a refusal: running
        # the plan reports it.
        return refusal_reason(exc) if sqlstate(exc) in REFUSED_IN_PLACE else None
    send(connection, "RELEASE samizdat_try")
    return None


def refusal_reason(exc: BaseException) -> str:
    """Why a replacement was refused, for the action that rebuilds instead."""
    return f"PostgreSQL refused to replace it in place ({first_line(exc)})"


#: duplicate_function, duplicate_table, duplicate_object.
_ALREADY_EXISTS = {"42723", "42P07", "42710"}


def _describe_failure(
    action: Action | None, exc: DBAPIError, sql: str, connection: Connection | None = None
) -> ExecutionError:
    return translate_error(
        exc,
        sql,
        subject=failed_subject(action),
        context=PrivilegeContext.of(action) if action is not None else PrivilegeContext(),
        action=action,
        connection=connection,
    )


def translate_error(
    exc: DBAPIError,
    sql: str,
    *,
    subject: str,
    context: PrivilegeContext,
    action: Action | None = None,
    connection: Connection | None = None,
    tail: str = "",
) -> ExecutionError:
    """The one translation of a database error into ours, for every front (sync, the API, Alembic operations):
    ``<subject> failed: <the server's first line>``, naming a missing privilege and the GRANT that fixes it, a
    lock wait that expired, or a name taken; ``tail`` says what became of the transaction."""
    message = f"{subject} failed: {first_line(exc)}"
    end = f". {tail}" if tail else ""
    described = action.describe() if action is not None else subject
    if sqlstate(exc) == INSUFFICIENT_PRIVILEGE:
        missing = missing_privilege(exc, context, connection)
        return missing.error(f"{message}. {missing.sentence()}{end}", sql=sql, action=described)
    if sqlstate(exc) == "55P03":
        return LockTimeoutError(
            message + " (lock_timeout expired while waiting for a lock on this object or one it reads; "
            f"another session holds it — retry later, or raise --lock-timeout){end}",
            sql=sql,
            action=described,
        )
    if _constraint_name_taken(action, exc):
        assert action is not None and action.declared is not None and action.declared.trigger_table is not None
        return ExecutionError(
            f"{message}: table {qualified(*action.declared.trigger_table)} already has a constraint named "
            f"{action.key.name!r}, and a constraint trigger's name is also a constraint name of its table. Set "
            "another trigger_name. Nothing of this action was kept",
            sql=sql,
            action=described,
        )
    if sqlstate(exc) in _ALREADY_EXISTS and action is not None and action.verb is Verb.CREATE:
        return ExecutionError(
            message + ": an object with this identity exists and is not signed by this registry's scope (the "
            "catalog query could not match it by name, e.g. a function whose argument types are spelt "
            "differently). Rename the samizdat, or drop the existing object yourself",
            sql=sql,
            action=described,
        )
    return ExecutionError(message + end, sql=sql, action=described if action is not None else "")


def failed_subject(action: Action | None) -> str:
    """What failed, for messages: ``create view "public"."v" (module.V; missing from the database)``."""
    if action is None:
        return "taking the advisory lock"
    why = f"; {action.reason}" if action.reason else ""
    return f"{action.verb.value} {action.kind} {action.key.display()} ({action.label}{why})"


def _constraint_name_taken(action: Action | None, exc: DBAPIError) -> bool:
    """A constraint trigger's create failed on pg_constraint's unique (table, type, name) index."""
    return (
        action is not None
        and action.verb is Verb.CREATE
        and action.kind == Kind.TRIGGER.value
        and action.declared is not None
        and sqlstate(exc) == "23505"
        and "pg_constraint" in str(getattr(exc, "orig", exc))
    )


def run_batch(connection: Connection, action: Action | None, sql: str) -> None:
    """Send one batch; turn a database error into an :class:`ExecutionError` naming the action."""
    try:
        send(connection, sql)
    except DBAPIError as exc:
        raise _describe_failure(action, exc, sql, connection) from exc


def send(connection: Connection, sql: str) -> None:
    """Send ``sql`` verbatim, as one simple-protocol batch.

    ``no_parameters`` makes SQLAlchemy call the cursor without parameters, so psycopg neither parses ``%``
    in user SQL nor switches to the extended protocol (which allows one statement only); events and
    ``echo`` still see the statement.
    """
    connection.exec_driver_sql(sql, execution_options={"no_parameters": True})


@contextmanager
def autocommit(connection: Connection, *, purpose: str = "sync") -> Iterator[Connection]:
    """The same connection in autocommit mode, restored afterwards."""
    if connection.in_transaction():
        if purpose == "refresh":
            hint = "refresh runs each view in its own transaction; pass an Engine or a Connection outside a transaction"
        else:
            hint = (
                "the checkpoint discipline commits after every unit; pass an Engine, a Connection outside a "
                "transaction, or use the jumbo discipline"
            )
        raise SamizdatError(f"this connection is inside a transaction: {hint}")
    # From the options, not get_isolation_level(): that asks the server (three round trips).
    previous = connection.get_execution_options().get("isolation_level", connection.default_isolation_level)
    connection.execution_options(isolation_level="AUTOCOMMIT")
    try:
        yield connection
    finally:
        # Statements run in the block left SQLAlchemy's (no-op) autobegun transaction open; end it so the
        # isolation level can be restored and the caller gets its connection back as it was.
        if connection.in_transaction():
            connection.rollback()
        connection.execution_options(isolation_level=previous)


def diagnose_function(connection: Connection, action: Action, *, in_autocommit: bool) -> ExecutionError | None:
    """After a failed function create, tell a signature mismatch from any other error.

    The create runs again in a transaction that is always rolled back; if it succeeds, the failure was the
    signature (``COMMENT ON FUNCTION`` found no function with the declared signature).
    """
    declared = action.declared
    if declared is None or declared.kind not in (Kind.FUNCTION, Kind.PROCEDURE):
        return None
    lookup = (
        "SELECT pg_get_function_identity_arguments(p.oid) FROM pg_proc p "
        "JOIN pg_namespace n ON n.oid = p.pronamespace "
        "WHERE n.nspname = :schema AND p.proname = :name AND p.xmin = pg_current_xact_id()::xid"
        # Without USAGE on the schema CREATE FUNCTION works but signing it does not: a missing privilege,
        # which the original error reports, not a signature mismatch.
        " AND has_schema_privilege(n.oid, 'USAGE')"
    )
    where = {"schema": declared.key.schema, "name": declared.key.name}
    try:
        if in_autocommit:
            connection.exec_driver_sql("BEGIN")
            try:
                send(connection, declared.sql)
                created = [str(r[0]) for r in pinned.query(connection, lookup, where)]
            finally:
                connection.exec_driver_sql("ROLLBACK")
        else:
            with connection.begin_nested() if connection.in_transaction() else connection.begin() as tx:
                send(connection, declared.sql)
                created = [str(r[0]) for r in pinned.query(connection, lookup, where)]
                tx.rollback()
    except Exception:
        return None
    if not created:
        return None
    return FunctionSignatureMismatchError(
        f"{declared.label}: PostgreSQL created {declared.kind.value} "
        f"{qualified(declared.key.schema, declared.key.name)}"
        f"({', '.join(created)}), but function_arguments_signature says ({declared.key.extra}). Make "
        "function_arguments_signature list the input argument types exactly as the function identifies them "
        "(OUT arguments and defaults excluded)",
        sql=action.sql,
        action=action.describe(),
    )


def create_failed(action: Action) -> bool:
    """Whether a failure of ``action`` could be a function signature mismatch."""
    return (
        action.verb is Verb.CREATE
        and action.declared is not None
        and action.declared.kind in (Kind.FUNCTION, Kind.PROCEDURE)
    )


@contextmanager
def collect_notices(connection: Connection, sink: list[tuple[str, str]]) -> Iterator[None]:
    """Collect the ``samizdat:`` NOTICEs and WARNINGs the server sends while the block runs.

    They report what :mod:`alembic_samizdat.preserve` kept or lost; other notices are left to psycopg.
    """
    raw = getattr(connection.connection, "driver_connection", None)
    add = getattr(raw, "add_notice_handler", None)
    if add is None:
        with _psycopg2_notices(raw, sink):
            yield
        return

    def handler(diag: object) -> None:
        message = str(getattr(diag, "message_primary", "") or "")
        if message.startswith(MESSAGE_PREFIX):
            sink.append((str(getattr(diag, "severity_nonlocalized", "") or ""), message[len(MESSAGE_PREFIX) :].strip()))

    add(handler)
    try:
        yield
    finally:
        with suppress(Exception):
            raw.remove_notice_handler(handler)  # type: ignore[union-attr]


class _NoticeSink(list[str]):
    """psycopg2 appends each notice to ``connection.notices`` as ``"SEVERITY:  text\\n"``; keep ours."""

    def __init__(self, sink: list[tuple[str, str]], others: list[str]) -> None:
        super().__init__()
        self.sink, self.others = sink, others

    def append(self, notice: str) -> None:
        severity, _, message = notice.partition(":")
        message = message.strip()
        if message.startswith(MESSAGE_PREFIX):
            self.sink.append((severity.strip(), message[len(MESSAGE_PREFIX) :].strip()))
        else:
            self.others.append(notice)


@contextmanager
def _psycopg2_notices(raw: object, sink: list[tuple[str, str]]) -> Iterator[None]:
    """:func:`collect_notices` on a psycopg2 connection (an application's engine); nothing on other drivers."""
    previous = getattr(raw, "notices", None)
    if not isinstance(previous, list):
        yield
        return
    raw.notices = _NoticeSink(sink, previous)  # type: ignore[attr-defined]
    try:
        yield
    finally:
        raw.notices = previous  # type: ignore[attr-defined]
