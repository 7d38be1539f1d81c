"""Exception classes raised by alembic-samizdat.

Every error the library raises derives from :class:`SamizdatError`, so a caller can catch the whole family or
one precise case. Messages name the object involved and say how to fix the problem.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


class SamizdatError(Exception):
    """Base class of every error raised by alembic-samizdat."""


class DeclarationError(SamizdatError):
    """A samizdat class is declared wrongly (bad attribute, template or name)."""


class TemplateError(DeclarationError):
    """A ``sql_template`` is missing a placeholder, or holds one that the library does not know."""


class InvalidIdentifierError(DeclarationError):
    """A name cannot be used as a PostgreSQL identifier (empty, NUL, longer than 63 bytes)."""


class ModuleLoadError(SamizdatError):
    """A module or ``.py`` file holding samizdat classes could not be imported."""


class GraphError(SamizdatError):
    """The declared objects do not form a valid dependency graph."""


class CycleError(GraphError):
    """The declared dependencies form a cycle; ``cycle`` holds the path, first node repeated at the end."""

    def __init__(self, cycle: Sequence[str]) -> None:
        self.cycle = list(cycle)
        super().__init__(
            "dependency cycle (each depends on the next): "
            + " -> ".join(self.cycle)
            + "; remove one of these deps_on entries (a samizdat cannot depend on its own dependents)"
        )


class SelfDependencyError(GraphError):
    """A samizdat lists itself in its own ``deps_on``."""


class DanglingReferenceError(GraphError):
    """A ``deps_on`` entry names no registered samizdat."""


class DuplicateIdentityError(GraphError):
    """Two declarations (generated sidekicks included) would create the same database object."""


class ManagedListedAsUnmanagedError(GraphError):
    """A managed samizdat is also listed in ``deps_on_unmanaged``."""


class TriggerTargetError(GraphError):
    """A trigger, or a refresh trigger, is declared on a relation that cannot have it."""


class DatabaseStateError(SamizdatError):
    """The database holds something that stops the plan before anything is changed."""


class NameClashError(DatabaseStateError):
    """A declared object's name is taken by an object that we did not sign (or that another scope signed)."""


class UnmanagedDependentError(DatabaseStateError):
    """An object that must be dropped has a dependent that we do not manage; we never drop it for you."""


class ExecutionError(SamizdatError):
    """A statement failed while applying a plan; ``sql`` holds it and ``__cause__`` the database error.

    ``database_state`` says what of the run is in the database now (it depends on the transaction discipline:
    nothing under ``jumbo``, the earlier actions under ``checkpoint``); the message ends with it.
    """

    def __init__(self, message: str, *, sql: str = "", action: str = "") -> None:
        self.sql = sql
        self.action = action
        self.database_state = ""
        super().__init__(message)

    def tell_state(self, sentence: str) -> None:
        """Record what is in the database now and end the message with it (once)."""
        if self.database_state:
            return
        self.database_state = sentence
        self.args = (f"{str(self.args[0]).rstrip('. ')}. {sentence}", *self.args[1:])


class CatalogReadError(ExecutionError):
    """Reading the catalog failed (e.g. the connection was lost); nothing was changed by this run."""


class FunctionSignatureMismatchError(ExecutionError):
    """The function PostgreSQL created has another identity than ``function_arguments_signature`` says."""


class InsufficientPrivilegeError(ExecutionError):
    """A statement failed because the role running it lacks a privilege (SQLSTATE 42501).

    PostgreSQL reports both ``permission denied for …`` and ``must be owner of …`` this way. The message names
    the action, the missing privilege, the role and the fix; the same parts are in ``privilege`` (e.g.
    ``CREATE on schema "reports"``), ``role`` (the role that ran the statement; inside a failed transaction,
    where the server cannot be asked, the session user; ``None`` when neither is known) and ``fix`` (e.g.
    ``GRANT CREATE ON SCHEMA "reports" TO "migrator", or run as a role that has it``). Nothing of the failed
    action was kept.
    """

    def __init__(
        self,
        message: str,
        *,
        sql: str = "",
        action: str = "",
        privilege: str = "",
        role: str | None = None,
        fix: str = "",
    ) -> None:
        self.privilege = privilege
        self.role = role
        self.fix = fix
        super().__init__(message, sql=sql, action=action)


class LockTimeoutError(ExecutionError):
    """A lock could not be taken within the configured ``lock_timeout``."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (``KeyboardInterrupt``) during a sync or nuke; ``database_state`` says what of the run was kept."""

    def __init__(self, database_state: str) -> None:
        self.database_state = database_state
        super().__init__(database_state)


class ConnectionFailedError(SamizdatError):
    """The database could not be reached."""


def first_line(exc: BaseException) -> str:
    """The server's primary message (or the exception's first line), without psycopg's extra lines."""
    orig = getattr(exc, "orig", exc)
    diag = getattr(orig, "diag", None)
    primary = getattr(diag, "message_primary", None) if diag is not None else None
    text = primary or str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__
    return str(text)


class _Named(Protocol):
    """What an error needs of an object's identity (a :class:`~alembic_samizdat.keys.Key`): keeps this module
    at the bottom of the package, importing nothing of it."""

    def display(self) -> str: ...


@dataclass(frozen=True)
class RefreshFailure:
    """One view whose refresh failed."""

    #: The view's :class:`~alembic_samizdat.keys.Key`.
    key: _Named
    label: str
    message: str
    sql: str


class RefreshError(ExecutionError):
    """One or more refreshes failed; ``failures`` has each, ``not_run`` the views left unrefreshed."""

    def __init__(self, failures: Sequence[RefreshFailure], not_run: Sequence[str], done: int) -> None:
        self.failures = list(failures)
        self.not_run = list(not_run)
        lines = "; ".join(f"{f.label} {f.key.display()}: {f.message}" for f in self.failures)
        tail = f"; not refreshed because of it: {', '.join(self.not_run)}" if self.not_run else ""
        super().__init__(
            f"{len(self.failures)} refresh(es) failed ({done} succeeded): {lines}{tail}. Failed views are marked "
            "stale; the next sync or refresh retries them",
            sql=self.failures[0].sql if self.failures else "",
        )


class MissingViewError(SamizdatError):
    """A view to refresh does not exist in the database yet."""


class ForeignViewError(SamizdatError):
    """A view to refresh exists, but we did not create it (no signature, or an owner we do not trust)."""


class UnknownNodeError(SamizdatError):
    """A ``belownodes`` entry names neither a samizdat nor a table that a samizdat reads."""


class UnknownObjectError(SamizdatError):
    """``samizdat deps`` was given a name that neither the declarations nor the catalog know (or several)."""


class ConcurrentRefreshError(SamizdatError):
    """``concurrently="always"`` was asked for a view that PostgreSQL cannot refresh concurrently."""


class MatviewError(SamizdatError):
    """A materialized view cannot be handled as asked (e.g. refreshed ``CONCURRENTLY``); nothing was changed."""


class ThrowawayServerError(SamizdatError):
    """The throwaway PostgreSQL server could not be found, installed, started or used."""


class ColumnDriftError(SamizdatError):
    """A model declares columns that its view does not have (or has with an incompatible type)."""


class NoDeferredViewsError(SamizdatError):
    """The worker was given declarations without any materialized view in ``refresh_mode = "deferred"``."""


class AlembicConfigError(SamizdatError):
    """The Alembic configuration could not give a database and a registry."""


class AdoptionRefusedError(SamizdatError):
    """``samizdat adopt`` found existing objects whose definition differs from the declaration."""

    def __init__(self, differences: dict[str, str], reason: str | None = None) -> None:
        self.differences = differences
        names = ", ".join(differences)
        super().__init__(
            f"not adopting anything: {len(differences)} object(s) differ from their declaration ({names}); make the "
            "classes produce the same definition (see the diff), or let `samizdat sync` replace them after dropping "
            "them yourself"
            if reason is None
            else f"not adopting anything: {reason} ({names})"
        )


class TenantError(DeclarationError):
    """A class with ``schema = TENANT`` used where one schema is needed, or a shared class depending on one."""


class FleetError(SamizdatError):
    """Some targets of a run over many databases or tenant schemas failed; the message lists them."""

    def __init__(self, message: str, failed: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.failed = failed


class UnusableUrlError(SamizdatError):
    """A database URL the tool cannot connect with; the message says what to write instead."""
