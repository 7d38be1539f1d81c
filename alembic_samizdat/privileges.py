"""Telling which privilege a statement lacked (SQLSTATE 42501), for errors that name it and the fix.

The server says "permission denied for schema x" or "must be owner of view y"; this module turns that, what the
failed statement was doing and (when the connection can still answer) a question or two to the catalog into a
:class:`MissingPrivilege`: the privilege, the role, and the GRANT that fixes it. See docs/privileges.md.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection

from . import pinned
from .errors import InsufficientPrivilegeError, first_line
from .identifiers import qualified, quote_ident
from .keys import Key

if TYPE_CHECKING:
    from .planner import Action


#: insufficient_privilege: PostgreSQL raises both "permission denied for …" and "must be owner of …" with it.
INSUFFICIENT_PRIVILEGE = "42501"

_RELATION_KINDS = "table|view|materialized view|sequence|foreign table|index|relation"
# The server's English messages (lc_messages); any other wording falls back to a hint that quotes the message.
_PRIVILEGE_MESSAGES = (
    ("schema", re.compile(r"permission denied for schema (?P<name>.+)")),
    ("relation", re.compile(rf"permission denied for (?P<kind>{_RELATION_KINDS}) (?P<name>.+)")),
    ("routine", re.compile(r"permission denied for (?P<kind>function|procedure|routine) (?P<name>.+)")),
    ("language", re.compile(r"permission denied for language (?P<name>.+)")),
    ("temporary", re.compile(r'permission denied to create temporary tables in database "?(?P<name>.*?)"?')),
    ("database", re.compile(r"permission denied for database (?P<name>.+)")),
    (
        "owner",
        re.compile(
            rf"must be owner of (?P<kind>{_RELATION_KINDS}|function|procedure|routine|schema|type|language|database)"
            r" (?P<name>.+)"
        ),
    ),
    ("member", re.compile(r'must be (?:able to SET ROLE|member of role) "?(?P<name>.+?)"?')),
)

#: Runs one query on a connection that can still answer and returns its first row, or ``None``.
Ask = Callable[[str, tuple[Any, ...]], tuple[Any, ...] | None]


@dataclass(frozen=True)
class PrivilegeContext:
    """What a statement that failed with SQLSTATE 42501 was doing: enough to tell which privilege was missing."""

    #: ``create``, ``drop``, ``refresh``, ``grant``, ``adopt``, or ``mark`` (refresh marking views stale).
    verb: str = ""
    key: Key | None = None
    #: The kind of ``key``: ``view``, ``matview``, ``function`` or ``trigger``.
    kind: str = ""
    #: Relations the statement names, as (schema, name): the server prints bare names, these qualify them.
    relations: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(cls, action: Action) -> PrivilegeContext:
        """The context of a planned action."""
        declared = action.declared
        relations: tuple[tuple[str, str], ...] = ()
        if declared is not None:
            relations = (*declared.unmanaged, *declared.refresh_triggers)
            if declared.trigger_table is not None:
                relations = (*relations, declared.trigger_table)
        return cls(action.verb.value, action.key, action.kind, relations)


@dataclass(frozen=True)
class MissingPrivilege:
    """The privilege a role lacked, and how to grant it."""

    #: E.g. ``CREATE on schema "reports"``, ``ownership of view "public"."x"``.
    privilege: str
    #: Why the command needs it (may be empty), e.g. `` (only the table's owner may drop a trigger)``.
    why: str
    #: What to do, e.g. ``GRANT CREATE ON SCHEMA "reports" TO "migrator", or run as a role that has it``.
    fix: str
    #: The role that ran the statement, when known.
    role: str | None
    #: How the sentence names that role: ``role "migrator"``, ``session user "migrator"``, ``the role running it``.
    who: str

    def sentence(self) -> str:
        """``Role "m" lacks CREATE on schema "s"; fix: GRANT …`` (first letter capitalised)."""
        text = f"{self.who} lacks {self.privilege}{self.why}; fix: {self.fix}"
        return text[:1].upper() + text[1:]

    def error(self, message: str, *, sql: str, action: str) -> InsufficientPrivilegeError:
        """The error to raise: ``message`` (which should include :meth:`sentence`) with this privilege's parts."""
        return InsufficientPrivilegeError(
            message, sql=sql, action=action, privilege=self.privilege, role=self.role, fix=self.fix
        )


def _asker(connection: Connection | None) -> tuple[Ask | None, str | None, int]:
    """A way to ask the server more about a failure, the session user, and the server version.

    A psycopg connection in autocommit mode and outside a transaction answers itself (the checkpoint
    discipline and refresh run so). In an aborted transaction every query would fail, so a second connection of
    the same engine (same URL and options, so the same role) answers instead; without one, the messages rely on
    what the failed statement was doing.
    """
    try:
        raw: Any = connection.connection.driver_connection if connection is not None else None
        info = raw.info
        session = info.parameter_status("session_authorization")
        version = int(info.server_version)
    except Exception:
        return None, None, 0

    def ask(query: str, params: tuple[Any, ...]) -> tuple[Any, ...] | None:
        # Behind a pinned search_path (see pinned.py), values written in as literals.
        sql = query.replace("%s", "{}").format(*(pinned.literal(p) for p in params))
        try:
            if raw.autocommit and raw.info.transaction_status == 0:  # 0: psycopg.pq.TransactionStatus.IDLE
                cursor = raw.execute(pinned.wrap(sql))
                for _ in range(pinned.PIN_RESULTS):
                    cursor.nextset()
                row = cursor.fetchone()
            else:
                assert connection is not None
                with connection.engine.connect() as other:
                    found = pinned.query(other, sql)
                    other.rollback()
                row = found[0] if found else None
        except Exception:
            return None
        return tuple(row) if row is not None else None

    return ask, session if isinstance(session, str) else None, version


def _qualify(name: str, context: PrivilegeContext) -> tuple[str, str] | None:
    """The (schema, name) of a relation the server named bare, when the context names exactly one such."""
    key = context.key
    if key is not None and key.namespace == "relation" and key.name == name:
        return key.schema, name
    if key is not None and key.namespace == "trigger" and key.extra == name:
        return key.schema, name
    found = {r for r in context.relations if r[1] == name}
    return found.pop() if len(found) == 1 else None


def _relation_owner(ask: Ask | None, relation: tuple[str, str] | None) -> str | None:
    if ask is None or relation is None:
        return None
    row = ask(
        "SELECT pg_get_userbyid(c.relowner) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = %s",
        relation,
    )
    return str(row[0]) if row and row[0] is not None else None


def missing_privilege(
    exc: BaseException,
    context: PrivilegeContext,
    connection: Connection | None = None,
    *,
    role: str | None = None,
    server_version: int = 0,
) -> MissingPrivilege:
    """Which privilege a statement that failed with SQLSTATE 42501 lacked, from the server's message and context.

    With a ``connection`` that can still answer (autocommit, outside a transaction) the server is asked for
    the current role, the schema privileges it holds and the owner of the object; otherwise the message relies
    on the context. ``role`` and ``server_version`` stand in when no connection is given (asyncio).
    """
    ask, session, version = _asker(connection)
    version = version or server_version
    if role is None and ask is not None:
        row = ask("SELECT current_user", ())
        role = str(row[0]) if row else None
    if role is not None:
        who = f"role {quote_ident(role)}"
    elif session is not None:
        # Inside a transaction the server cannot be asked; a SET ROLE would make current_user differ.
        who = f"session user {quote_ident(session)}"
    else:
        who = "the role running it"
    runner = role or session
    grantee = quote_ident(runner) if runner else "<role>"
    message = first_line(exc)
    key = context.key

    def result(privilege: str, fix: str, why: str = "") -> MissingPrivilege:
        return MissingPrivilege(privilege, why, fix, runner, who)

    def ownership(kind: str, relation: tuple[str, str] | None, printed: str, why: str = "") -> MissingPrivilege:
        target = qualified(*relation) if relation is not None else printed
        owner = _relation_owner(ask, relation)
        if owner is not None:
            fix = f"run as {quote_ident(owner)}, or make {grantee} a member of it: GRANT {quote_ident(owner)} TO {grantee}"
        else:
            fix = f"run as its owner, or make {grantee} a member of the owner's role: GRANT <owner> TO {grantee}"
        return result(f"ownership of {kind} {target}", fix, why)

    for what, pattern in _PRIVILEGE_MESSAGES:
        match = pattern.fullmatch(message)
        if match is None:
            continue
        name = match["name"]
        kind = match.groupdict().get("kind") or ""
        if what == "schema":
            needed = ["USAGE"]
            if context.verb == "create" and context.kind != "trigger" and key is not None and key.schema == name:
                needed.append("CREATE")
            missing = needed
            if ask is not None:
                row = ask(
                    "SELECT has_schema_privilege(current_user, oid, 'USAGE'), "
                    "has_schema_privilege(current_user, oid, 'CREATE') FROM pg_namespace WHERE nspname = %s",
                    (name,),
                )
                if row is not None:
                    lacking = [p for p, has in zip(("USAGE", "CREATE"), row, strict=True) if not has and p in needed]
                    missing = lacking or needed
            schema = quote_ident(name)
            return result(
                f"{' and '.join(missing)} on schema {schema}",
                f"GRANT {', '.join(missing)} ON SCHEMA {schema} TO {grantee}, or run as a role that has it",
            )
        if what == "relation":
            relation = _qualify(name, context)
            target = qualified(*relation) if relation is not None else quote_ident(name)
            if context.kind == "trigger" and key is not None and key.namespace == "trigger" and key.extra == name:
                return ownership(
                    "table",
                    relation,
                    target,
                    " (creating a trigger needs TRIGGER on the table, and signing it with COMMENT ON TRIGGER needs "
                    "the table's owner)",
                )
            if key is not None and key.namespace == "relation" and key.name == name:
                if context.verb == "refresh" and version >= 170000:
                    fix = f"GRANT MAINTAIN ON {target} TO {grantee}, or run as its owner"
                    return result(f"MAINTAIN or ownership of materialized view {target} to refresh it", fix)
                return ownership(kind, relation, target)
            if kind == "sequence":
                return result(f"USAGE on sequence {target}", f"GRANT USAGE ON SEQUENCE {target} TO {grantee}")
            if context.verb in ("refresh", "create") and context.kind == "matview":
                # REFRESH (and populating after CREATE) runs the query as the view's owner.
                owner = _relation_owner(ask, (key.schema, key.name) if key is not None else None)
                reader = quote_ident(owner) if owner is not None else grantee
                return result(
                    f"SELECT on {kind} {target}",
                    f"GRANT SELECT ON {target} TO {reader}",
                    " (populating a materialized view runs its query as the view's owner)",
                )
            return result(f"SELECT on {kind} {target}", f"GRANT SELECT ON {target} TO {grantee}")
        if what == "routine":
            return result(f"EXECUTE on {kind} {name}", f"GRANT EXECUTE ON {kind.upper()} {name} TO {grantee}")
        if what == "language":
            return result(f"USAGE on language {name}", f"GRANT USAGE ON LANGUAGE {quote_ident(name)} TO {grantee}")
        if what == "temporary":
            database = quote_ident(name)
            return result(
                f"TEMPORARY on database {database}",
                f"GRANT TEMPORARY ON DATABASE {database} TO {grantee}",
                " (what is kept across a drop and recreate, such as grants and indexes, waits in a temporary table)",
            )
        if what == "database":
            database = quote_ident(name)
            return result(f"CREATE on database {database}", f"GRANT CREATE ON DATABASE {database} TO {grantee}")
        if what == "owner":
            trigger_table = context.kind == "trigger" and kind in ("relation", "table")
            relation = _qualify(name, context) if kind in _RELATION_KINDS.split("|") else None
            printed = qualified(*relation) if relation is not None else name
            if trigger_table:
                return ownership(
                    "table",
                    relation,
                    printed,
                    " (only the table's owner may drop a trigger on it or set the trigger's comment, which is how "
                    "samizdat signs it; the TRIGGER privilege is not enough)",
                )
            if context.verb == "mark":
                return ownership(
                    kind,
                    relation,
                    printed,
                    " (before refreshing, samizdat refresh marks each view stale in its signature comment, so that "
                    "an interrupted run is retried, and only the owner may change a comment"
                    + ("; MAINTAIN is not enough)" if version >= 170000 else ")"),
                )
            if context.verb == "refresh" and kind == "materialized view":
                if version >= 170000:
                    return ownership(
                        kind,
                        relation,
                        printed,
                        " (the refresh also clears the view's stale mark, a comment, which only the owner may "
                        "change; MAINTAIN is not enough)",
                    )
                return ownership(kind, relation, printed, " to refresh it")
            return ownership(kind if kind != "relation" else "table", relation, printed)
        if what == "member":
            return result(f"membership in role {quote_ident(name)}", f"GRANT {quote_ident(name)} TO {grantee}")
    return result(
        "a privilege",
        f"grant {grantee} what the server's message names, or run as a role that has it",
        " (the server's message above names it)",
    )
