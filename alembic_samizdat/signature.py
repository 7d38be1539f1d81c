"""The signature: the JSON comment that marks an object as ours, with its scope and definition hash."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass

from . import statements
from .declared import Declared, declared_of
from .identifiers import qualified, quote_ident, quote_literal
from .keys import Key, Kind
from .pinned import PINNED_PATH, do_block

#: The first key of every signature; also what the catalog query filters on.
MARK = "alembic_samizdat"
#: The signature format; bump it when the layout changes, and teach :func:`parse` the old one.
FORMAT = 1
#: The prefix of every comment we write; cheap to test in SQL before parsing JSON in Python.
PREFIX = '{"' + MARK + '":'


#: Joins a registry's scope and a tenant schema into the scope of that tenant's run (see :func:`tenant_scope`).
#: A control character: no scope anybody types holds it, so a tenant's scope never equals a plain one.
TENANT_SEPARATOR = "\x1f"


def tenant_scope(scope: str, tenant: str) -> str:
    """The scope the objects of ``tenant`` are signed with: ``scope`` and the tenant, which the signature stores
    as two fields (``"scope"`` and ``"tenant"``), so signatures without a tenant read as before."""
    return f"{scope}{TENANT_SEPARATOR}{tenant}"


def split_scope(scope: str) -> tuple[str, str | None]:
    """``(scope, tenant)`` of a scope made by :func:`tenant_scope`; ``(scope, None)`` for any other."""
    base, sep, tenant = scope.partition(TENANT_SEPARATOR)
    return (base, tenant) if sep else (scope, None)


def tenant_prefix(scope: str) -> str | None:
    """How every signature of a tenant's scope begins (``None`` for a scope without a tenant): a tenant's run
    reads only its own tenant's signed objects, not every tenant's (see :func:`.catalog.read_state`)."""
    base, tenant = split_scope(scope)
    if tenant is None:
        return None
    head = json.dumps({MARK: FORMAT, "scope": base, "tenant": tenant}, separators=(",", ":"), ensure_ascii=True)
    return head[:-1] + ","


def shown_scope(scope: str) -> str:
    """A scope for messages: ``'default'``, or ``'default' (tenant 't1')``."""
    base, tenant = split_scope(scope)
    return repr(base) if tenant is None else f"{base!r} (tenant {tenant!r})"


@dataclass(frozen=True)
class Signature:
    """A parsed signature comment."""

    scope: str
    kind: Kind
    key: Key
    hash: str
    #: A refresh of this materialized view failed after it was signed: refresh it again.
    stale: bool = False
    #: The rendered template the object was created from.
    sql: str | None = None
    #: The grants declared when it was signed.
    grants: tuple[tuple[str, str], ...] = ()
    #: The managed objects it depended on when it was signed (as declared), so that objects no longer
    #: declared are still dropped dependents first, and a downgrade recreates them in their old order.
    deps: tuple[Key, ...] = ()
    #: The transaction id of the catalog row holding the definition when it was signed (see :mod:`.drift`).
    dx: str | None = None
    #: The fingerprint of the catalog's own definition when it was signed; ``None`` for objects signed
    #: without one (adopted objects): those are never reported as drifted.
    fp: str | None = None


class MalformedSignature(Exception):
    """A comment that starts like ours but cannot be read: treated as foreign, never trusted."""


def definition_hash(declared: Declared) -> str:
    """The hash of everything that shapes ``declared`` (computed once per declaration)."""
    cached = declared.__dict__.get("_definition_hash")
    if cached is None:
        placeholder = placeholder_declaration(declared)
        if placeholder is not None:
            # A tenant's object hashes as the same class in the placeholder tenant: one hash for every tenant,
            # so that an Alembic revision's signature fits each tenant it is applied to (docs/fleets.md).
            cached = definition_hash(placeholder)
            object.__setattr__(declared, "_definition_hash", cached)
            return cached
        canonical = json.dumps(declared.fingerprint(), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        cached = hashlib.sha256(canonical.encode()).hexdigest()
        # Declared is frozen; the cache is not part of its value, so it bypasses __setattr__ on purpose.
        object.__setattr__(declared, "_definition_hash", cached)
    return str(cached)


def placeholder_declaration(declared: Declared) -> Declared | None:
    """The declaration of ``declared``'s class expanded in :data:`~.tenants.PLACEHOLDER` when it was expanded for
    another tenant; ``None`` otherwise."""
    from .tenants import PLACEHOLDER, origin_of, tenant_of

    source = declared.source
    if source is None or tenant_of(source) in (None, PLACEHOLDER):
        return None
    origin = origin_of(source)
    if origin is None:
        return None
    from .tenants import expand

    return declared_of(expand(origin, PLACEHOLDER))


def signature_text(declared: Declared, scope: str, *, include_sql: bool = True, deps: Iterable[Key] = ()) -> str:
    """The JSON text of the comment signing ``declared`` for ``scope``; ``deps`` are its resolved dependencies.

    Without ``include_sql`` the text is what a revision script stores; :func:`with_sql` completes it.
    """
    key = declared.key
    base, tenant = split_scope(scope)
    body: dict[str, object] = {
        MARK: FORMAT,
        "scope": base,
        # Only tenant objects carry it: every signature written before tenants existed stays byte for byte.
        **({"tenant": tenant} if tenant is not None else {}),
        "kind": declared.kind.value,
        "key": [key.namespace, key.schema, key.name, key.extra],
        "hash": definition_hash(declared),
    }
    if declared.grants:
        # What we granted, so that grants dropped from the declaration are revoked (and only those).
        body["grants"] = [list(g) for g in declared.grants]
    recorded = sorted({tuple(k) for k in deps})
    if recorded:
        # Not part of the hash: only the order of drops (and of a downgrade's creates) reads it.
        body["deps"] = [list(k) for k in recorded]
    if include_sql:
        # The rendered template, so that an Alembic downgrade can restore exactly what was replaced.
        body["sql"] = declared.sql
    # MARK must come first (dicts keep insertion order) so that PREFIX matches.
    return json.dumps(body, separators=(",", ":"), ensure_ascii=True)


def with_sql(signature: str, sql: str) -> str:
    """Complete a signature stored without its SQL (see :func:`signature_text`)."""
    body = json.loads(signature)
    body["sql"] = sql
    return json.dumps(body, separators=(",", ":"), ensure_ascii=True)


def without_sql(signature: str) -> tuple[str, str | None]:
    """Split a signature into (the signature without its SQL, the SQL).

    The catalog stamps (``dx``, ``fp``) go too: they describe one database's object, and a revision script that
    recreates it stamps it afresh.
    """
    body = json.loads(signature)
    sql = body.pop("sql", None)
    body.pop("dx", None)
    body.pop("fp", None)
    return json.dumps(body, separators=(",", ":"), ensure_ascii=True), sql


def sign_statement(declared: Declared, scope: str, deps: Iterable[Key] = ()) -> str:
    """The statement that signs ``declared`` for ``scope`` (see :func:`stamp_statement`)."""
    return stamp_statement(declared.comment_target(), declared.key, signature_text(declared, scope, deps=deps))


#: The fingerprint of a function's definition as the catalog holds it; ``{oid}`` is the function's oid.
#: Evaluated with an empty search_path, so that every name prints schema-qualified and the text depends neither
#: on the session nor on oids (which a dump and restore changes).
FUNCTION_FINGERPRINT_SQL = "md5(pg_get_functiondef({oid}))"

#: The keys that :func:`stamp_statement` writes; they come before "sql" (which the catalog query cuts off).
DX_KEY = ',"dx":"'
FP_KEY = ',"fp":"'


def stamp_statement(target: str, key: Key, comment: str) -> str:
    """The statement that signs the object ``COMMENT ON {target}`` names with ``comment``.

    Drift (a definition changed by hand) is told by the catalog rows' transaction ids: signed in the transaction
    that created the object, the comment's ``pg_description`` row and the definition's row (the view's rule,
    the trigger) carry the same one until somebody rewrites the definition. So views, materialized views and
    triggers get a plain ``COMMENT``. A function's ``pg_proc`` row is also rewritten by GRANT, REVOKE and owner
    changes, so a function is signed by a ``DO`` block that adds the transaction id of that row (``dx``) and a
    fingerprint of its definition (``fp``), compared when the row has moved. Any ``dx``, ``fp`` or ``stale``
    already in ``comment`` (a downgrade restoring an old signature) is dropped: the object is new.
    """
    body = json.loads(comment)
    for stale_key in ("dx", "fp", "stale"):
        body.pop(stale_key, None)
    if key.namespace != "function":
        return statements.comment(target, json.dumps(body, separators=(",", ":"), ensure_ascii=True))
    sql = body.pop("sql", None)
    head = json.dumps(body, separators=(",", ":"), ensure_ascii=True)
    tail = ("," + json.dumps({"sql": sql}, separators=(",", ":"), ensure_ascii=True)[1:]) if sql is not None else "}"
    # The target is spelt out in the format string (its '%' doubled) so that a script reader sees what is signed.
    comment_on = quote_literal(f"COMMENT ON {target.replace('%', '%%')} IS %L")
    # COMMENT names the function by its declared argument types, which are the user's and resolve on the
    # session's search_path: the command is built while the path is pinned and run under the session's.
    as_session = f"PERFORM pg_catalog.set_config('search_path', samizdat_path, true); EXECUTE cmd; {_REPIN} "
    body_sql = (
        # Overloads share the name: COMMENT resolves the declared arguments (and fails as PostgreSQL fails when
        # they name no function); the overload is then found by the comment it carries.
        f"cmd := format({comment_on}, {quote_literal(head)}); {as_session}"
        "SELECT p.oid, p.xmin INTO o, x FROM pg_proc p "
        "JOIN pg_description d ON d.objoid = p.oid AND d.classoid = 'pg_proc'::regclass AND d.objsubid = 0 "
        f"WHERE p.pronamespace = {quote_literal(quote_ident(key.schema))}::regnamespace "
        f"AND p.proname = {quote_literal(key.name)} AND d.description = {quote_literal(head)}; "
        f"s := {quote_literal(head[:-1])}; "
        "IF o IS NOT NULL THEN "
        "PERFORM set_config('search_path', '', true); "
        f"f := {FUNCTION_FINGERPRINT_SQL.format(oid='o')}; "
        f"{_REPIN} "
        f"s := s || {quote_literal(DX_KEY)} || x::text || '\"' || {quote_literal(FP_KEY)} || f || '\"'; "
        "END IF; "
        f"cmd := format({comment_on}, s || {quote_literal(tail)}); {as_session}"
    )
    return do_block(
        body_sql, "o pg_catalog.oid; x pg_catalog.xid; f pg_catalog.text; s pg_catalog.text; cmd pg_catalog.text;\n"
    )


#: Pins search_path again inside a block of :func:`pinned.do_block`.
_REPIN = f"PERFORM pg_catalog.set_config('search_path', {quote_literal(PINNED_PATH)}, true);"


def is_ours(comment: str | None) -> bool:
    """Whether a comment claims to be one of our signatures (it may still be malformed)."""
    return comment is not None and comment.startswith(PREFIX)


def parse(comment: str) -> Signature:
    """Read one of our signatures; raise :class:`MalformedSignature` when it cannot be trusted."""
    try:
        body = json.loads(comment)
    except ValueError as exc:
        raise MalformedSignature(f"not valid JSON ({exc})") from None
    if not isinstance(body, dict):
        raise MalformedSignature("not a JSON object")
    if body.get(MARK) != FORMAT:
        raise MalformedSignature(f"unknown signature format {body.get(MARK)!r}")
    scope, kind, key, digest = body.get("scope"), body.get("kind"), body.get("key"), body.get("hash")
    if not isinstance(scope, str) or not isinstance(digest, str):
        raise MalformedSignature("scope and hash must be strings")
    tenant = body.get("tenant")
    if tenant is not None:
        if not isinstance(tenant, str) or not tenant or TENANT_SEPARATOR in tenant:
            raise MalformedSignature("tenant must be a non-empty string")
        scope = tenant_scope(scope, tenant)
    elif TENANT_SEPARATOR in scope:
        raise MalformedSignature("scope must not hold a tenant separator")
    try:
        parsed_kind = Kind(str(kind))
    except ValueError:
        raise MalformedSignature(f"unknown kind {kind!r}") from None
    if not (isinstance(key, list) and len(key) == 4 and all(isinstance(part, str) for part in key)):
        raise MalformedSignature("key must be a list of four strings")
    stale = body.get("stale", False)
    if not isinstance(stale, bool):
        raise MalformedSignature("stale must be true or false")
    sql = body.get("sql")
    if sql is not None and not isinstance(sql, str):
        raise MalformedSignature("sql must be a string")
    raw_grants = body.get("grants", [])
    if not (
        isinstance(raw_grants, list)
        and all(isinstance(g, list) and len(g) == 2 and all(isinstance(x, str) for x in g) for g in raw_grants)
    ):
        raise MalformedSignature("grants must be a list of [role, privilege] pairs")
    grants = tuple(sorted((str(g[0]), str(g[1])) for g in raw_grants))
    raw_deps = body.get("deps", [])
    if not (
        isinstance(raw_deps, list)
        and all(isinstance(d, list) and len(d) == 4 and all(isinstance(x, str) for x in d) for d in raw_deps)
    ):
        raise MalformedSignature("deps must be a list of keys")
    dx, fp = body.get("dx"), body.get("fp")
    if not (isinstance(dx, str | None) and isinstance(fp, str | None)):
        raise MalformedSignature("dx and fp must be strings")
    return Signature(
        scope, parsed_kind, Key(*key), digest, stale, sql, grants, tuple(Key(*d) for d in raw_deps), dx, fp
    )


#: What :func:`mark_stale_statement` appends to a signature.
STALE_SUFFIX = ',"stale":true}'


def mark_stale_statement(key: Key) -> str:
    """Mark a materialized view whose refresh failed, so that the next sync or refresh refreshes it again."""
    return _edit_comment(
        key, f"left(c, -1) || {quote_literal(STALE_SUFFIX)}", f"c NOT LIKE {quote_literal('%' + STALE_SUFFIX)}"
    )


def clear_stale_statement(key: Key) -> str:
    """Remove the mark of :func:`mark_stale_statement` (run with the successful refresh)."""
    return _edit_comment(
        key, f"replace(c, {quote_literal(STALE_SUFFIX)}, '}}')", f"c LIKE {quote_literal('%' + STALE_SUFFIX)}"
    )


def _edit_comment(key: Key, new_value: str, condition: str) -> str:
    # COMMENT takes only a literal, so the signature is edited in place in a DO block. The hash is kept as it
    # is in the database, so marking never makes a changed view look up to date.
    name = quote_literal(qualified(key.schema, key.name))
    return do_block(
        f"c := obj_description({name}::regclass, 'pg_class'); "
        f"IF left(c, {len(PREFIX)}) = {quote_literal(PREFIX)} AND {condition} THEN "
        f"EXECUTE format('COMMENT ON MATERIALIZED VIEW %s IS %L', {name}, {new_value}); "
        "END IF;",
        "c pg_catalog.text;\n",
    )
