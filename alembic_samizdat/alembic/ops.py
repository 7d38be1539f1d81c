"""Alembic operations that carry their own SQL, frozen at autogenerate time.

A revision never changes when the classes change later: ``create_samizdat`` holds the rendered template and
the signature, ``drop_samizdat`` the ``DROP`` statement and the exact template and signature of the object it
drops (read from the signature in the database at autogenerate time), so downgrades rebuild what was there.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from alembic.operations import MigrateOperation, Operations
from sqlalchemy.exc import DBAPIError

from .. import statements
from ..declared import or_replace
from ..execute import collect_notices, translate_error
from ..keys import Key, Kind
from ..preserve import capture_statement, restore_statement
from ..privileges import PrivilegeContext
from ..signature import stamp_statement, with_sql

log = logging.getLogger("alembic.samizdat")


def run_sql(operations: Operations, sql: str, *, what: PrivilegeContext | None = None) -> None:
    """Run a batch verbatim online; print it in offline (``--sql``) mode.

    ``what`` describes the operation: a database error then raises :class:`ExecutionError` naming it (and
    :class:`InsufficientPrivilegeError`, naming the privilege too, for a statement refused for lack of one).
    """
    context = operations.migration_context
    if context.as_sql:
        context.impl.static_output(sql.rstrip() + "\n")
        return
    bind = operations.get_bind()
    try:
        # no_parameters: psycopg must not parse '%' or ':' in the user's SQL, and may send several statements.
        bind.exec_driver_sql(sql, execution_options={"no_parameters": True})
    except DBAPIError as exc:
        if what is None:
            raise
        label = f"{what.verb} {what.kind} {what.key.display() if what.key else ''}".rstrip()
        # Inside the migration's (now failed) transaction the server cannot be asked: the context tells.
        raise translate_error(
            exc, sql, subject=label, context=what, connection=bind, tail="The migration's transaction is rolled back"
        ) from exc


def _context(verb: str, kind: str, signature: str | None) -> PrivilegeContext:
    # The signature records the object's key; revisions written before it existed still run, with less detail.
    try:
        key = Key(*json.loads(signature)["key"]) if signature else None
    except (ValueError, KeyError, TypeError):
        key = None
    return PrivilegeContext(verb, key, kind)


def create_batch(kind: str, name: str, sql: str | None, signature: str | None, drop: str | None) -> str:
    """The template, then the signature comment (the object named as its DROP statement names it)."""
    sql, _, sign = _signed("create", kind, name, sql, signature, drop)
    return f"{sql}\n;\n{sign};"


def _signed(
    verb: str, kind: str, name: str, sql: str | None, signature: str | None, drop: str | None
) -> tuple[str, Key, str]:
    """(the template, the key its signature records, the statement that signs it) of a revision's operation."""
    if sql is None or signature is None or drop is None:
        raise RuntimeError(
            f"cannot {verb} {kind} {name}: this revision holds no definition for it (it was not recorded when the "
            "revision was generated); recreate it with `samizdat sync`"
        )
    comment = with_sql(signature, sql)
    # The key recorded in the signature finds the object again to fingerprint it (see signature.stamp_statement).
    key = Key(*json.loads(comment)["key"])
    return sql, key, stamp_statement(statements.target_of_drop(drop), key, comment)


class SamizdatDiff(tuple[str, str, str]):
    """One entry of ``alembic check``'s report: still the ``(operation, kind, name)`` tuple for programs,
    printed as a line of its own, a generated object naming the declared object it serves."""

    text: str

    def __new__(cls, operation: str, kind: str, name: str, generated_for: str | None = None) -> SamizdatDiff:
        made = super().__new__(cls, (operation, kind, name))
        verb = operation.removesuffix("_samizdat")
        # Execution order, which interleaves objects: the grouped report is the log above it.
        made.text = f"\n  {verb} {kind} {name}" + (f" (generated for {generated_for})" if generated_for else "")
        return made

    def __repr__(self) -> str:
        return self.text


@Operations.register_operation("create_samizdat")
class CreateSamizdatOp(MigrateOperation):
    """Create (and sign) one samizdat; materialized views are populated when ``with_data``."""

    #: The declared object this generated object serves (set by autogenerate, for reports only).
    generated_for: str | None = None

    def __init__(
        self,
        kind: str,
        name: str,
        sql: str | None,
        *,
        signature: str | None,
        drop: str | None,
        with_data: bool = False,
        grants: str | None = None,
        reason: str | None = None,
    ) -> None:
        self.kind = kind
        self.name = name
        self.sql = sql
        self.signature = signature
        self.drop = drop
        self.with_data = with_data
        self.grants = grants
        #: Why autogenerate wrote this operation (rendered as a comment, not an argument).
        self.reason = reason

    @classmethod
    def create_samizdat(
        cls,
        operations: Operations,
        kind: str,
        name: str,
        sql: str | None,
        *,
        signature: str | None,
        drop: str | None,
        with_data: bool = False,
        grants: str | None = None,
    ) -> Any:
        """``op.create_samizdat(kind, name, sql, signature=…, drop=…, with_data=…, grants=…)``."""
        op = cls(kind, name, sql, signature=signature, drop=drop, with_data=with_data, grants=grants)
        return operations.invoke(op)

    def reverse(self) -> DropSamizdatOp:
        """Dropping what this created (``drop`` was written at autogenerate time)."""
        return DropSamizdatOp(
            self.kind,
            self.name,
            self.drop,
            restore=self.sql,
            restore_signature=self.signature,
            restore_with_data=self.with_data,
        )

    def to_diff_tuple(self) -> tuple[str, str, str]:
        """What ``alembic check`` reports."""
        return SamizdatDiff("create_samizdat", self.kind, self.name, self.generated_for)


@Operations.register_operation("drop_samizdat")
class DropSamizdatOp(MigrateOperation):
    """Drop one samizdat (never ``CASCADE``); ``restore`` and ``restore_signature`` recreate it on downgrade."""

    #: The declared object this generated object serves (set by autogenerate, for reports only).
    generated_for: str | None = None

    def __init__(
        self,
        kind: str,
        name: str,
        drop: str | None,
        *,
        restore: str | None = None,
        restore_signature: str | None = None,
        restore_with_data: bool = False,
        reason: str | None = None,
    ) -> None:
        self.kind = kind
        self.name = name
        self.drop = drop
        self.restore = restore
        self.restore_signature = restore_signature
        self.restore_with_data = restore_with_data
        #: Why autogenerate wrote this operation (rendered as a comment, not an argument).
        self.reason = reason

    @classmethod
    def drop_samizdat(
        cls,
        operations: Operations,
        kind: str,
        name: str,
        drop: str | None,
        *,
        restore: str | None = None,
        restore_signature: str | None = None,
        restore_with_data: bool = False,
    ) -> Any:
        """``op.drop_samizdat(kind, name, drop, restore=…, restore_signature=…, restore_with_data=…)``."""
        op = cls(
            kind, name, drop, restore=restore, restore_signature=restore_signature, restore_with_data=restore_with_data
        )
        return operations.invoke(op)

    def reverse(self) -> CreateSamizdatOp:
        """Recreating the dropped object exactly as it was."""
        return CreateSamizdatOp(
            self.kind,
            self.name,
            self.restore,
            signature=self.restore_signature,
            drop=self.drop,
            with_data=self.restore_with_data,
        )

    def to_diff_tuple(self) -> tuple[str, str, str]:
        """What ``alembic check`` reports."""
        return SamizdatDiff("drop_samizdat", self.kind, self.name, self.generated_for)


@Operations.register_operation("replace_samizdat")
class ReplaceSamizdatOp(MigrateOperation):
    """Replace one samizdat in place (``CREATE OR REPLACE``) and sign it; what depends on it is untouched.

    ``sql`` is the object's template as ``create_samizdat`` holds it; its ``CREATE`` head becomes
    ``CREATE OR REPLACE`` when the operation runs. Autogenerate writes this operation only after PostgreSQL
    accepted the replacement, and the way back (``restore``), in a savepoint; otherwise it rebuilds the stack
    with drop and create operations.
    """

    def __init__(
        self,
        kind: str,
        name: str,
        sql: str | None,
        *,
        signature: str | None,
        drop: str | None,
        grants: str | None = None,
        restore: str | None = None,
        restore_signature: str | None = None,
        reason: str | None = None,
        refresh: str | None = None,
        restore_refresh: str | None = None,
    ) -> None:
        self.kind = kind
        self.name = name
        self.sql = sql
        self.signature = signature
        self.drop = drop
        self.grants = grants
        self.restore = restore
        self.restore_signature = restore_signature
        #: Why autogenerate wrote this operation (rendered as a comment, not an argument).
        self.reason = reason
        #: Refreshes of the materialized views above it, run right after it (a downgrade's replacement back:
        #: the upgrade's own refresh operations come after it, so in a downgrade they come before).
        self.refresh = refresh
        #: What :attr:`refresh` is for the way back (:meth:`reverse`).
        self.restore_refresh = restore_refresh

    @classmethod
    def replace_samizdat(
        cls,
        operations: Operations,
        kind: str,
        name: str,
        sql: str | None,
        *,
        signature: str | None,
        drop: str | None,
        grants: str | None = None,
        restore: str | None = None,
        restore_signature: str | None = None,
        refresh: str | None = None,
        restore_refresh: str | None = None,
    ) -> Any:
        """``op.replace_samizdat(kind, name, sql, signature=…, drop=…, restore=…, restore_signature=…)``."""
        op = cls(
            kind,
            name,
            sql,
            signature=signature,
            drop=drop,
            grants=grants,
            restore=restore,
            restore_signature=restore_signature,
            refresh=refresh,
            restore_refresh=restore_refresh,
        )
        return operations.invoke(op)

    def reverse(self) -> ReplaceSamizdatOp:
        """Replacing it in place with the definition it had before."""
        return ReplaceSamizdatOp(
            self.kind,
            self.name,
            self.restore,
            signature=self.restore_signature,
            drop=self.drop,
            restore=self.sql,
            restore_signature=self.signature,
            refresh=self.restore_refresh,
            restore_refresh=self.refresh,
        )

    def to_diff_tuple(self) -> tuple[str, str, str]:
        """What ``alembic check`` reports."""
        return ("replace_samizdat", self.kind, self.name)


def replace_batch(kind: str, name: str, sql: str | None, signature: str | None, drop: str | None) -> str:
    """``CREATE OR REPLACE …`` of the template, then the signature (recording the template as written)."""
    sql, key, sign = _signed("replace", kind, name, sql, signature, drop)
    replacing = or_replace(sql, Kind(kind), key)
    if replacing is None:
        raise RuntimeError(f"cannot replace {kind} {name} in place: its SQL does not start as its kind's CREATE does")
    return f"{replacing}\n;\n{sign};"


@Operations.register_operation("refresh_samizdat")
class RefreshSamizdatOp(MigrateOperation):
    """Refresh a materialized view that is unpopulated or whose last refresh failed."""

    #: The declared object this generated object serves (set by autogenerate, for reports only).
    generated_for: str | None = None

    #: Why autogenerate wrote it (rendered as a comment above the operation).
    reason: str | None = None

    def __init__(self, name: str, sql: str) -> None:
        self.name = name
        self.sql = sql

    @classmethod
    def refresh_samizdat(cls, operations: Operations, name: str, sql: str) -> Any:
        """``op.refresh_samizdat(name, sql)``."""
        return operations.invoke(cls(name, sql))

    def reverse(self) -> RefreshSamizdatOp:
        """Refreshing again on downgrade is harmless: the data follows the definition."""
        return self

    def to_diff_tuple(self) -> tuple[str, str, str]:
        """What ``alembic check`` reports."""
        return SamizdatDiff("refresh_samizdat", "matview", self.name, self.generated_for)


def _run_reporting(operations: Operations, sql: str) -> None:
    """Run a restore block, logging what it kept and lost (online; offline the server reports it)."""
    if operations.migration_context.as_sql:
        run_sql(operations, sql)
        return
    notices: list[tuple[str, str]] = []
    with collect_notices(operations.get_bind(), notices):
        run_sql(operations, sql)
    for severity, message in notices:
        (log.warning if severity == "WARNING" else log.info)("samizdat: %s", message)


#: Connection.info key: targets captured in this session, so creates of new objects skip the restore block.
_CAPTURED = "alembic_samizdat.captured"


def _captured(operations: Operations, target: str) -> bool:
    # Offline, the SQL must restore whatever it captured when it runs: always emit the (cheap) block.
    if operations.migration_context.as_sql:
        return True
    return target in operations.get_bind().info.get(_CAPTURED, set())


def _target(drop: str | None) -> str | None:
    return statements.target_of_drop(drop) if drop else None


@Operations.register_operation("regrant_samizdat")
class RegrantSamizdatOp(MigrateOperation):
    """Apply declared grants with GRANT / REVOKE (and update the signature); never recreates the object."""

    #: The declared object this generated object serves (set by autogenerate, for reports only).
    generated_for: str | None = None

    #: Why autogenerate wrote it (rendered as a comment above the operation).
    reason: str | None = None

    def __init__(self, kind: str, name: str, sql: str, *, reverse_sql: str | None = None) -> None:
        self.kind = kind
        self.name = name
        self.sql = sql
        self.reverse_sql = reverse_sql

    @classmethod
    def regrant_samizdat(
        cls, operations: Operations, kind: str, name: str, sql: str, *, reverse_sql: str | None = None
    ) -> Any:
        """``op.regrant_samizdat(kind, name, sql, reverse_sql=…)``."""
        return operations.invoke(cls(kind, name, sql, reverse_sql=reverse_sql))

    def reverse(self) -> RegrantSamizdatOp:
        """The inverse GRANT / REVOKE and the previous signature."""
        return RegrantSamizdatOp(self.kind, self.name, self.reverse_sql or "SELECT 1", reverse_sql=self.sql)

    def to_diff_tuple(self) -> tuple[str, str, str]:
        """What ``alembic check`` reports."""
        return SamizdatDiff("regrant_samizdat", self.kind, self.name, self.generated_for)


@Operations.implementation_for(RegrantSamizdatOp)
def _regrant(operations: Operations, op: RegrantSamizdatOp) -> None:
    run_sql(operations, op.sql.rstrip().rstrip(";") + ";")


@Operations.implementation_for(CreateSamizdatOp)
def _create(operations: Operations, op: CreateSamizdatOp) -> None:
    what = _context("create", op.kind, op.signature)
    run_sql(operations, create_batch(op.kind, op.name, op.sql, op.signature, op.drop), what=what)
    target = _target(op.drop)
    # Grants, owner, hand-made indexes and triggers captured when this object was dropped earlier in the run
    # (generated at upgrade time from the database being changed, never frozen into the revision).
    if target and capture_statement(op.kind, target) and _captured(operations, target):
        _run_reporting(operations, restore_statement(target) + ";")
    if op.grants:
        run_sql(operations, op.grants.rstrip().rstrip(";") + ";", what=what)
    if op.with_data and op.kind == "matview":
        run_sql(operations, statements.refresh_named(op.name) + ";", what=_context("refresh", op.kind, op.signature))


@Operations.implementation_for(ReplaceSamizdatOp)
def _replace(operations: Operations, op: ReplaceSamizdatOp) -> None:
    what = _context("replace", op.kind, op.signature)
    run_sql(operations, replace_batch(op.kind, op.name, op.sql, op.signature, op.drop), what=what)
    if op.grants:
        run_sql(operations, op.grants.rstrip().rstrip(";") + ";", what=what)
    if op.refresh:
        run_sql(operations, op.refresh.rstrip().rstrip(";") + ";", what=what)


@Operations.implementation_for(DropSamizdatOp)
def _drop(operations: Operations, op: DropSamizdatOp) -> None:
    if op.drop is None:
        raise RuntimeError(f"cannot drop {op.kind} {op.name}: this revision holds no DROP statement for it")
    what = _context("drop", op.kind, op.restore_signature)
    capture = capture_statement(op.kind, _target(op.drop) or "")
    if capture:
        run_sql(operations, capture + ";", what=what)
        if not operations.migration_context.as_sql:
            operations.get_bind().info.setdefault(_CAPTURED, set()).add(_target(op.drop))
    run_sql(operations, op.drop.rstrip().rstrip(";") + ";", what=what)


@Operations.implementation_for(RefreshSamizdatOp)
def _refresh(operations: Operations, op: RefreshSamizdatOp) -> None:
    run_sql(operations, op.sql.rstrip().rstrip(";") + ";")
