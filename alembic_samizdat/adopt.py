"""Taking over objects that other tools created: DBSamizdat's (signed) and alembic_utils' (unsigned).

``samizdat sync --adopt dbsamizdat`` reads DBSamizdat's signatures (``{"dbsamizdat": {"version": 1,
"definition_hash": …}}``) as if they were ours: an object whose DBSamizdat hash equals what DBSamizdat itself would
compute for the declared class is unchanged, so it is only re-signed (no drop, no downtime); any other one is
replaced like a changed object, and DBSamizdat objects no longer declared (its refresh triggers, for instance)
are dropped. Without the flag such objects are foreign: never touched, and a declaration that needs one's name
stops with an error that mentions the flag.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection

from . import pinned
from .catalog import DbObject, read_state
from .compat.dbsamizdat_format import (  # noqa: F401  (their old home: kept importable)
    DBSAMIZDAT_PREFIX,
    HASH_PREFIX,
    dbsamizdat_hash,
    dbsamizdat_hash_of_comment,
    is_dbsamizdat,
)
from .errors import (
    AdoptionRefusedError,
)
from .execute import send
from .graph import Graph
from .identifiers import qualified, quote_ident
from .keys import Key
from .planner import declared_hits
from .signature import sign_statement

#: The tools whose objects ``--adopt`` can take over.
ADOPTABLE = ("dbsamizdat",)


@dataclass(frozen=True)
class AdoptResult:
    """What ``adopt_unsigned`` signed, and what it did not find."""

    adopted: tuple[Key, ...]
    missing: tuple[Key, ...]


_DEFINITION = {
    "relation": "SELECT pg_get_viewdef(to_regclass(:ident))",
    "function": (
        "SELECT pg_get_functiondef(p.oid) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
        "WHERE n.nspname = :schema AND p.proname = :name AND pg_get_function_identity_arguments(p.oid) = :args"
    ),
    "trigger": (
        "SELECT pg_get_triggerdef(t.oid) FROM pg_trigger t WHERE t.tgname = :name AND t.tgrelid = to_regclass(:table)"
    ),
}


def _definition(connection: Connection, obj: DbObject) -> str | None:
    key = obj.key
    params = {
        "ident": qualified(key.schema, key.name),
        "schema": key.schema,
        "name": key.name,
        "args": obj.identity_args,
        "table": qualified(key.schema, key.extra) if key.namespace == "trigger" else "",
    }
    rows = pinned.query(connection, _DEFINITION[key.namespace], params)
    value = rows[0][0] if rows else None
    return None if value is None else str(value)


def _indexes(connection: Connection, obj: DbObject) -> set[str]:
    """The definitions of a relation's indexes (what a template may create after ``${postamble}``)."""
    if obj.key.namespace != "relation":
        return set()
    found = pinned.query(
        connection,
        "SELECT pg_get_indexdef(i.indexrelid) FROM pg_index i WHERE i.indrelid = to_regclass(:ident)",
        {"ident": qualified(obj.key.schema, obj.key.name)},
    )
    return {str(row[0]) for row in found}


def _rename(obj: DbObject, temporary: str) -> str:
    if obj.kind == "trigger":
        # Renaming a constraint trigger keeps its pg_constraint row's name, which the declared one needs; nothing
        # depends on a trigger, so it is dropped instead (in the savepoint that is rolled back).
        return obj.drop_statement()
    target = obj.comment_target()
    return f"ALTER {target} RENAME TO {quote_ident(temporary)}"


def _index_renames(connection: Connection, obj: DbObject, temporary: str) -> list[str]:
    """The statements moving a relation's indexes aside with it: a template may give one the same name again."""
    if obj.key.namespace != "relation":
        return []
    indexes = [
        row[0]
        for row in pinned.query(
            connection,
            "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "WHERE i.indrelid = to_regclass(:ident) ORDER BY 1",
            {"ident": qualified(obj.key.schema, obj.key.name)},
        )
    ]
    return [
        f"ALTER INDEX {qualified(obj.key.schema, str(name))} RENAME TO {quote_ident(f'{temporary}_{n}')}"
        for n, name in enumerate(indexes)
    ]


def adopt_unsigned(connection: Connection, graph: Graph, scope: str) -> AdoptResult:
    """Sign unsigned objects (e.g. created by alembic_utils) whose definition equals the declared one.

    For each declared object whose name is taken by an object without a signature, the declared object is
    created next to it (the existing one and its indexes renamed for a moment, in a savepoint that is always
    rolled back) and PostgreSQL's own renderings of both definitions are compared; every index the template
    creates (after ``${postamble}``) must exist too, while indexes made by hand do not stand in the way. All
    equal: every one is signed, nothing else changes. Any difference: nothing is signed and
    :class:`AdoptionRefusedError` carries a diff per object.
    Runs in the caller's transaction (commit it to keep the signatures).
    """
    state = read_state(connection, scope, graph.nodes)
    candidates: list[tuple[Key, DbObject]] = []
    for other in state.others:
        if other.signature is not None or other.malformed is not None or is_dbsamizdat(other.comment):
            continue
        if other.kind not in ("view", "matview", "function", "procedure", "trigger"):
            continue
        for key in declared_hits(graph, other):
            if key not in state.managed:
                candidates.append((key, other))
    untrusted = {
        f"{graph.nodes[key].label} {key.display()}": (
            f"{obj.describe()} is owned by role {obj.owner!r}, whose privileges the running role does not have: "
            "signing it would make it ours although we could not have created it. Run adopt as a member of that role"
        )
        for key, obj in candidates
        if not obj.trusted
    }
    if untrusted:
        raise AdoptionRefusedError(
            untrusted, f"{len(untrusted)} object(s) belong to roles whose privileges the running role does not have"
        )
    # Only adoption needs these: imported here so that every command importing the catalog does not pay for them.
    import difflib
    import uuid

    differences: dict[str, str] = {}
    for key, obj in candidates:
        item = graph.nodes[key]
        before, indexes = _definition(connection, obj), _indexes(connection, obj)
        savepoint = connection.begin_nested()
        try:
            temporary = "samizdat_adopt_" + uuid.uuid4().hex[:12]
            for statement in (*_index_renames(connection, obj, temporary), _rename(obj, temporary)):
                send(connection, statement)
            send(connection, item.sql)
            after, created = _definition(connection, obj), _indexes(connection, obj)
        finally:
            savepoint.rollback()
        # Every index the template creates must exist; others (made by hand) are kept by any later replacement.
        if before != after or item.kind.value != obj.kind or created - indexes:
            diff = difflib.unified_diff(
                [*(before or "").splitlines(), *sorted(created & indexes)],
                [*(after or "").splitlines(), *sorted(created)],
                "in the database",
                "declared",
                lineterm="",
            )
            differences[f"{item.label} {key.display()}"] = "\n".join(diff) or f"{obj.kind} vs {item.kind.value}"
    if differences:
        raise AdoptionRefusedError(differences)
    for key, _ in candidates:
        send(connection, sign_statement(graph.nodes[key], scope, graph.deps.get(key, ())))
    found = {key for key, _ in candidates}
    missing = tuple(k for k in graph.order if k not in found and k not in state.managed)
    return AdoptResult(tuple(k for k in graph.order if k in found), missing)
