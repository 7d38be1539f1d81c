"""Exception classes raised by alembic-samizdat.

Every error the library raises derives from :class:`SamizdatError`, so a caller can catch the whole family or
one precise case. Messages name the object involved and say how to fix the problem.
"""

from __future__ import annotations

from collections.abc import Sequence


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
