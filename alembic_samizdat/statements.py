"""The statement text of every kind of object: how each kind is named, dropped, commented on, granted on and
refreshed. The one place that knows it, so that a new kind is added here and nowhere else.

Names are always quoted here (never pasted); arguments of functions and procedures are PostgreSQL's own
rendering of the argument types (or the declared signature, whitespace-normalised), which is valid SQL.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from .identifiers import qualified, quote_ident, quote_literal
from .keys import Key, Kind


def target(kind: Kind | str, key: Key, arguments: str | None = None) -> str:
    """The object as ``DROP``, ``COMMENT ON`` and ``ALTER`` name it: ``VIEW "s"."v"``, ``FUNCTION "s"."f"(integer)``,
    ``TRIGGER "t" ON "s"."tbl"``. ``arguments`` overrides the key's argument signature (the catalog's rendering)."""
    kind = Kind(kind)
    if kind is Kind.TRIGGER:
        return f"TRIGGER {quote_ident(key.name)} ON {qualified(key.schema, key.extra)}"
    if kind in (Kind.FUNCTION, Kind.PROCEDURE):
        args = key.extra if arguments is None else arguments
        return f"{kind.sql_name} {qualified(key.schema, key.name)}({args})"
    return f"{kind.sql_name} {qualified(key.schema, key.name)}"


def drop(kind: Kind | str, key: Key, arguments: str | None = None) -> str:
    """``DROP …`` of one object, never ``CASCADE``."""
    return f"DROP {target(kind, key, arguments)}"


def comment(on: str, text: str) -> str:
    """``COMMENT ON <on> IS '<text>'``; ``on`` as :func:`target` gives it."""
    return f"COMMENT ON {on} IS {quote_literal(text)}"


def grant_target(kind: Kind | str, key: Key) -> str:
    """The object as ``GRANT … ON`` names it (views and materialized views are tables to GRANT)."""
    kind = Kind(kind)
    if kind in (Kind.FUNCTION, Kind.PROCEDURE):
        return target(kind, key)
    return f"TABLE {qualified(key.schema, key.name)}"


def grant(kind: Kind | str, key: Key, role: str, privilege: str) -> str:
    """``GRANT <privilege> ON … TO <role>`` (``PUBLIC`` for everyone)."""
    return f"GRANT {privilege} ON {grant_target(kind, key)} TO {_grantee(role)}"


def revoke(kind: Kind | str, key: Key, role: str, privilege: str) -> str:
    """``REVOKE <privilege> ON … FROM <role>``."""
    return f"REVOKE {privilege} ON {grant_target(kind, key)} FROM {_grantee(role)}"


def _grantee(role: str) -> str:
    return "PUBLIC" if role == "PUBLIC" else quote_ident(role)


def refresh(schema: str, name: str, *, concurrently: bool = False) -> str:
    """``REFRESH MATERIALIZED VIEW [CONCURRENTLY] "s"."v"``."""
    return f"REFRESH MATERIALIZED VIEW{' CONCURRENTLY' if concurrently else ''} {qualified(schema, name)}"


def refresh_named(name: str, *, concurrently: bool = False) -> str:
    """:func:`refresh` of a view already named as SQL (quoted, or a ``regclass`` rendering)."""
    return f"REFRESH MATERIALIZED VIEW{' CONCURRENTLY' if concurrently else ''} {name}"


def set_schema(kind: Kind | str, key: Key, schema: str) -> str:
    """``ALTER … SET SCHEMA``: move the object ``key`` names into ``schema`` (a relation keeps its name, indexes
    and rules)."""
    return f"ALTER {target(kind, key)} SET SCHEMA {quote_ident(schema)}"


def drop_matview_named(name: str, *, if_exists: bool, cascade: bool) -> str:
    """``DROP MATERIALIZED VIEW [IF EXISTS] name [CASCADE]`` of a view named as SQL (the helpers for views that
    are not ours: ``CASCADE`` only when the caller asks for it)."""
    head = "DROP MATERIALIZED VIEW IF EXISTS" if if_exists else "DROP MATERIALIZED VIEW"
    return f"{head} {name}{' CASCADE' if cascade else ''}"


def target_of_drop(statement: str) -> str:
    """The :func:`target` a ``DROP`` statement of :func:`drop` names: revisions written before they recorded
    the object's key carry only that statement."""
    return statement.strip().rstrip(";").removeprefix("DROP ")


class Target(NamedTuple):
    """A :func:`target` read back: the kind as SQL spells it, the object as SQL names it (quoted), and for a
    function or procedure its schema, name and argument types."""

    sql_kind: str
    name: str
    schema: str = ""
    routine: str = ""
    arguments: str = ""


_ROUTINE = re.compile(r'^(FUNCTION|PROCEDURE)\s+("(?:[^"]|"")+")\.("(?:[^"]|"")+")\((.*)\)\s*;?\s*$', re.S)


def read_target(kind: Kind | str, on: str) -> Target | None:
    """Read back a :func:`target` of ``kind`` (capture and restore take the object as a revision names it);
    ``None`` when it is not one."""
    kind = Kind(kind)
    if kind in (Kind.VIEW, Kind.MATVIEW):
        head = f"{kind.sql_name} "
        return Target(kind.sql_name, on[len(head) :]) if on.startswith(head) else None
    if kind in (Kind.FUNCTION, Kind.PROCEDURE):
        match = _ROUTINE.match(on)
        if match is None:
            return None
        schema, name = (_unquote(match.group(i)) for i in (2, 3))
        return Target(match.group(1), on, schema, name, match.group(4))
    return None


def _unquote(ident: str) -> str:
    return ident[1:-1].replace('""', '"')
