"""Reading the database state: one catalog query returns every signed object, name clashes and dependents."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, NamedTuple

from . import pinned, statements
from . import signature as sig
from .compat.dbsamizdat_format import DBSAMIZDAT_PREFIX, HASH_PREFIX, dbsamizdat_hash_of_comment, is_dbsamizdat
from .errors import CatalogReadError
from .identifiers import qualified, quote_ident
from .keys import Key, Kind, in_arguments, normalize_signature
from .sa_lazy import is_dbapi_error

if TYPE_CHECKING:  # not at run time: the CLI's no-op check reads the catalog without SQLAlchemy (see quick.py)
    from sqlalchemy import Connection

#: Kinds whose identity includes argument types.
_ROUTINES = frozenset({"function", "procedure"})

_KINDS = {
    "view": Kind.VIEW,
    "matview": Kind.MATVIEW,
    "function": Kind.FUNCTION,
    "procedure": Kind.PROCEDURE,
    "trigger": Kind.TRIGGER,
}

#: One round trip: signed views, materialized views, functions and triggers; objects whose names a
#: declaration wants (to refuse clashes); and every object that depends on a signed one.
_CATALOG_SQL = """
WITH pin AS MATERIALIZED (
    -- Fingerprints are taken with an empty search_path (see signature.stamp_statement); the last branch of the
    -- query puts the session's own back, so the caller's transaction never sees the change.
    SELECT current_setting('search_path') AS old, set_config('search_path', '', true) AS pinned
),
wanted_rel AS (SELECT * FROM unnest(CAST(:rel_schemas AS text[]), CAST(:rel_names AS text[])) AS w(s, n)),
wanted_fn AS (SELECT * FROM unnest(CAST(:fn_schemas AS text[]), CAST(:fn_names AS text[])) AS w(s, n)),
wanted_tg AS (
    SELECT * FROM unnest(CAST(:tg_schemas AS text[]), CAST(:tg_tables AS text[]), CAST(:tg_names AS text[]))
    AS w(s, t, n)
),
objs AS (
    SELECT 'pg_class'::regclass AS classid, c.oid, c.reltype AS rowtype,
           CASE c.relkind WHEN 'v' THEN 'view' WHEN 'm' THEN 'matview' WHEN 'r' THEN 'table'
                WHEN 'p' THEN 'table' WHEN 'f' THEN 'foreign table' WHEN 'S' THEN 'sequence'
                WHEN 'i' THEN 'index' ELSE 'relation' END AS kind,
           n.nspname AS schema, c.relname AS name, ''::text AS extra, d.description,
           c.relispopulated AS populated,
           CASE WHEN (left(d.description, :plen) = :prefix OR (:adopt AND left(d.description, :dlen) = :dprefix)) THEN (
               SELECT coalesce(json_agg(json_build_array(coalesce(r.rolname, 'PUBLIC'), a.privilege_type)), '[]')
               FROM aclexplode(c.relacl) a LEFT JOIN pg_roles r ON r.oid = a.grantee
               WHERE a.grantee <> c.relowner)::text END AS acl,
           -- Something a recreate would lose that preserve.py carries over (read only when planning removals);
           -- DBSamizdat's objects being adopted keep theirs like ours.
           :dependents AND (left(d.description, :plen) = :prefix OR (:adopt AND left(d.description, :dlen) = :dprefix)) AND (
               c.relacl IS NOT NULL OR c.relowner <> (SELECT oid FROM pg_roles WHERE rolname = current_user)
               OR EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND NOT i.xmin = (
                   SELECT r.xmin FROM pg_rewrite r WHERE r.ev_class = c.oid LIMIT 1))
               OR EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = c.oid AND NOT t.tgisinternal)
               OR EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attacl IS NOT NULL)
               OR EXISTS (SELECT 1 FROM pg_description cd
                          WHERE cd.objoid = c.oid AND cd.classoid = 'pg_class'::regclass AND cd.objsubid > 0)
           ) AS keeps,
           NULL::text AS fp, {moved_relation} AS moved,
           {trusted_relation} AS trusted, pg_get_userbyid(c.relowner) AS owner, false AS is_constraint
    FROM pg_class c
    JOIN pg_namespace n ON n.oid = c.relnamespace
    LEFT JOIN pg_description d
        ON d.objoid = c.oid AND d.classoid = 'pg_class'::regclass AND d.objsubid = 0
    LEFT JOIN pg_rewrite rw ON rw.ev_class = c.oid AND rw.rulename = '_RETURN'
    WHERE c.relnamespace NOT IN ({system})
      AND ((c.relkind IN ('v', 'm') AND (left(d.description, :plen) = :prefix
                                         OR (:adopt AND left(d.description, :dlen) = :dprefix)))
           OR (n.nspname, c.relname) IN (SELECT s, n FROM wanted_rel))
    UNION ALL
    SELECT 'pg_proc'::regclass, p.oid, 0::oid, CASE p.prokind WHEN 'p' THEN 'procedure' ELSE 'function' END,
           n.nspname, p.proname,
           pg_get_function_identity_arguments(p.oid), d.description, true,
           CASE WHEN NOT (left(d.description, :plen) = :prefix OR (:adopt AND left(d.description, :dlen) = :dprefix)) THEN NULL
                WHEN p.proacl IS NULL THEN '[["PUBLIC", "EXECUTE"]]'  -- the default of a new function
                ELSE (SELECT coalesce(json_agg(json_build_array(coalesce(r.rolname, 'PUBLIC'), a.privilege_type)), '[]')
                      FROM aclexplode(p.proacl) a LEFT JOIN pg_roles r ON r.oid = a.grantee
                      WHERE a.grantee <> p.proowner)::text END,
           :dependents AND (left(d.description, :plen) = :prefix OR (:adopt AND left(d.description, :dlen) = :dprefix))
               AND (p.proacl IS NOT NULL OR p.proowner <> (SELECT oid FROM pg_roles WHERE rolname = current_user)),
           {fp_function}, {moved_function},
           {trusted_function}, pg_get_userbyid(p.proowner), false
    FROM pg_proc p
    JOIN pg_namespace n ON n.oid = p.pronamespace
    LEFT JOIN pg_description d
        ON d.objoid = p.oid AND d.classoid = 'pg_proc'::regclass AND d.objsubid = 0
    WHERE p.pronamespace NOT IN ({system})
      AND (left(d.description, :plen) = :prefix OR (:adopt AND left(d.description, :dlen) = :dprefix)
           OR (n.nspname, p.proname) IN (SELECT s, n FROM wanted_fn))
    UNION ALL
    SELECT 'pg_trigger'::regclass, t.oid, 0::oid, 'trigger', n.nspname, t.tgname, c.relname,
           d.description, true, NULL::text, false, NULL::text, {moved_trigger},
           -- A trigger has no owner: its table's owner is who may comment on it.
           {trusted_relation}, pg_get_userbyid(c.relowner), t.tgconstraint <> 0
    FROM pg_trigger t
    JOIN pg_class c ON c.oid = t.tgrelid
    JOIN pg_namespace n ON n.oid = c.relnamespace
    LEFT JOIN pg_description d
        ON d.objoid = t.oid AND d.classoid = 'pg_trigger'::regclass AND d.objsubid = 0
    WHERE NOT t.tgisinternal AND c.relnamespace NOT IN ({system})
      AND (left(d.description, :plen) = :prefix OR (:adopt AND left(d.description, :dlen) = :dprefix)
           OR (n.nspname, c.relname, t.tgname) IN (SELECT s, t, n FROM wanted_tg))
),
signed AS (
    SELECT * FROM objs
    WHERE left(description, :plen) = :prefix OR (:adopt AND left(description, :dlen) = :dprefix)
),
deps AS (
    SELECT DISTINCT o.classid AS ref_classid, o.oid AS ref_oid,
           CASE WHEN dep.classid = 'pg_rewrite'::regclass THEN 'pg_class'::regclass ELSE dep.classid::regclass END AS dep_classid,
           CASE WHEN dep.classid = 'pg_rewrite'::regclass THEN r.ev_class ELSE dep.objid END AS dep_oid,
           CASE WHEN dep.classid = 'pg_rewrite'::regclass THEN 0 ELSE dep.objsubid END AS dep_subid,
           dep.deptype = 'a' AS dep_auto
    FROM signed o
    JOIN pg_depend dep
        ON (dep.refclassid = o.classid AND dep.refobjid = o.oid)
        OR (o.rowtype <> 0 AND dep.refclassid = 'pg_type'::regclass AND dep.refobjid = o.rowtype)
    LEFT JOIN pg_rewrite r ON dep.classid = 'pg_rewrite'::regclass AND r.oid = dep.objid
    WHERE (dep.deptype = 'n' OR (dep.deptype = 'a' AND dep.classid = 'pg_trigger'::regclass))
      AND NOT (dep.classid = 'pg_rewrite'::regclass AND r.ev_class = o.oid)
      AND NOT (dep.classid = 'pg_type'::regclass)
)
SELECT 'obj' AS row, classid::text AS classid, oid::bigint AS oid, kind, schema, name, extra,
       {short_description} AS description,
       populated, NULL AS dep_classid, NULL::bigint AS dep_oid, NULL AS dep_desc, NULL::bool AS dep_auto, acl, keeps,
       fp, moved, trusted, owner, is_constraint
FROM objs
UNION ALL
SELECT 'dep', d.ref_classid::text, d.ref_oid::bigint, NULL, NULL, NULL, NULL, NULL, NULL,
       d.dep_classid::text, d.dep_oid::bigint,
       -- Signed dependents are matched by oid; only the others need a description for messages. Whether one is
       -- signed is read from its own comment (an index lookup each), not by joining the signed CTE, which the
       -- planner cannot estimate and once scanned per dependent (150 ms at N = 1,000).
       CASE WHEN NOT (
                (left(dd.description, :plen) = :prefix OR (:adopt AND left(dd.description, :dlen) = :dprefix))
                AND (d.dep_classid <> 'pg_class'::regclass
                     OR EXISTS (SELECT 1 FROM pg_class k WHERE k.oid = d.dep_oid AND k.relkind IN ('v', 'm'))))
                OR dd.description IS NULL
            THEN pg_describe_object(d.dep_classid, d.dep_oid, d.dep_subid) END,
       d.dep_auto, NULL, NULL, NULL, NULL, NULL, NULL, NULL
FROM deps d
LEFT JOIN pg_description dd ON dd.objoid = d.dep_oid AND dd.classoid = d.dep_classid AND dd.objsubid = 0
WHERE :dependents
UNION ALL
-- Runs last (Append runs its branches in order, and set_config keeps the query serial): restores search_path.
SELECT 'pin', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
       NULL, NULL, NULL
FROM pin WHERE set_config('search_path', pin.old, true) IS NULL
"""


def short_signature_sql(column: str) -> str:
    """SQL of ``column`` (a comment) with the ``"sql"`` member of our signature cut off, unless ``:full``.

    Only downgrades need the SQL: without it there is less to send and to parse. JSON escapes quotes inside
    strings, so the first ``,"sql":`` is the key itself. The cut happens only when exactly that one string
    member and the closing brace follow: a comment with anything after our object (trailing text) reaches the
    parser whole, to be refused there. Placeholders: :data:`SHORT_SIGNATURE_PARAMS` and ``:full``.
    """
    return (
        f"CASE WHEN :full OR left({column}, :plen) <> :prefix OR strpos({column}, :sql_key) = 0 "
        f"OR substr({column}, strpos({column}, :sql_key)) !~ :sql_tail THEN {column} "
        f"ELSE left({column}, strpos({column}, :sql_key) - 1) "
        f"|| CASE WHEN right({column}, :slen) = :stale THEN :stale ELSE '}}' END END"
    )


#: The values of :func:`short_signature_sql`'s placeholders.
SHORT_SIGNATURE_PARAMS: dict[str, object] = {
    "prefix": sig.PREFIX,
    "plen": len(sig.PREFIX),
    "sql_key": ',"sql":',
    # One JSON string (escapes included), then the stale mark or nothing, then the end of the object.
    "sql_tail": '^,"sql":"(?:[^"\\\\]|\\\\.)*"(?:,"stale":true)?}$',
    "stale": sig.STALE_SUFFIX,
    "slen": len(sig.STALE_SUFFIX),
}


def _fingerprint_column(oid: str, description: str, xmin: str) -> str:
    # Nested CASEs, because only CASE promises the order of evaluation: the fingerprint is computed only for
    # signed functions that carry one and whose pg_proc row was rewritten since signing; pin is evaluated
    # (and search_path emptied) before the first fingerprint.
    return (
        f"CASE WHEN left({description}, :plen) = :prefix AND strpos({description}, :fp_key) > 0 THEN "
        f"CASE WHEN strpos({description}, :dx_key || {xmin}::text || '\"') = 0 THEN "
        f"CASE WHEN (SELECT pinned FROM pin) IS NOT NULL THEN "
        f"{sig.FUNCTION_FINGERPRINT_SQL.format(oid=oid)} END END END"
    )


def _moved_column(xmin: str) -> str:
    # The definition's row was written by a later transaction than our signature (see signature.stamp_statement).
    # Ids are compared by age, which is exact for rows less than 2^31 transactions apart.
    return f"(left(d.description, :plen) = :prefix AND {xmin} <> d.xmin AND age({xmin}) < age(d.xmin))"


# Nothing of ours lives in the system schemas, which hold most rows of pg_class, pg_proc and pg_description:
# skipping them up front lets the planner look descriptions up by index instead of hashing them all.
_SYSTEM_SCHEMAS = "'pg_catalog'::regnamespace, 'information_schema'::regnamespace, 'pg_toast'::regnamespace"


def _trusted_column(owner: str) -> str:
    # The running role's own objects are the common case: answered without looking roles up.
    return (
        f"({owner} = (SELECT oid FROM pg_roles WHERE rolname = current_user) "
        f"OR pg_has_role({owner}, 'MEMBER') OR pg_get_userbyid({owner}) = ANY (:trusted_owners))"
    )


CATALOG_SQL = (
    _CATALOG_SQL.replace("{system}", _SYSTEM_SCHEMAS)
    .replace("{trusted_relation}", _trusted_column("c.relowner"))
    .replace("{short_description}", short_signature_sql("description"))
    .replace("{trusted_function}", _trusted_column("p.proowner"))
    .replace("{moved_relation}", _moved_column("rw.xmin"))
    .replace("{fp_function}", _fingerprint_column("p.oid", "d.description", "p.xmin"))
    .replace("{moved_function}", _moved_column("p.xmin"))
    .replace("{moved_trigger}", _moved_column("t.xmin"))
)


@dataclass(frozen=True)
class DbObject:
    """One object found in the catalog."""

    #: Identity as we match it against declarations (a function's ``extra`` comes from its signature).
    key: Key
    #: The catalog's kind: ``view``, ``matview``, ``function``, ``trigger``, or e.g. ``table`` for a clash.
    kind: str
    classid: str
    oid: int
    comment: str | None
    #: Our parsed signature, when the comment is a readable one of ours.
    signature: sig.Signature | None
    #: Why a comment that looks like ours was not trusted.
    malformed: str | None
    populated: bool
    #: The identity arguments as PostgreSQL prints them (functions only).
    identity_args: str = ""
    #: Privileges granted to others than the owner, as (role, privilege); ``None`` when not read.
    grants: frozenset[tuple[str, str]] | None = None
    #: Carries something a drop would lose (grants, owner, indexes, triggers, column comments); ``None``
    #: when not read (then capture and restore always run).
    keeps: bool | None = None
    #: A function's fingerprint as the catalog holds it now; read only when its pg_proc row was rewritten after
    #: signing (``None`` otherwise).
    fingerprint: str | None = None
    #: The definition's catalog row was written after the signature (see :func:`signature.stamp_statement`).
    moved: bool = False
    #: The running role has the privileges of the object's owner (a trigger's: its table's owner). Only then can
    #: a signature on it be ours, and only then may adopt sign it.
    trusted: bool = True
    #: The owner's role name (a trigger's: its table's owner), when read.
    owner: str | None = None
    #: A constraint trigger (``CREATE CONSTRAINT TRIGGER``); DBSamizdat's definition hash does not cover it.
    constraint_trigger: bool = False

    @property
    def drifted(self) -> bool:
        """Changed by hand since we signed it (``CREATE OR REPLACE``, ``ALTER FUNCTION``, a trigger disabled…)."""
        if self.signature is None:
            return False
        if self.signature.fp is not None:
            return self.fingerprint is not None and self.fingerprint != self.signature.fp
        return self.moved

    @property
    def ref(self) -> tuple[str, int]:
        """The catalog reference ``(classid, oid)``."""
        return (self.classid, self.oid)

    def describe(self) -> str:
        """The object for messages."""
        if self.kind in ("function", "procedure"):
            return f"{self.kind} {qualified(self.key.schema, self.key.name)}({self.identity_args})"
        return f"{self.kind} {self.key.display()}"

    def drop_statement(self) -> str:
        """``DROP …`` built from the catalog's own names, never ``CASCADE``."""
        self.comment_target()  # refuses kinds we never drop
        return statements.drop(self.kind, self.key, self.identity_args if self.kind in _ROUTINES else None)

    def comment_target(self) -> str:
        """The object as ``COMMENT ON`` names it, from the catalog's own names (a function's arguments as
        PostgreSQL renders them, which is valid SQL)."""
        if self.kind not in {k.value for k in Kind}:
            raise ValueError(f"we never drop a {self.kind}")
        return statements.target(self.kind, self.key, self.identity_args if self.kind in _ROUTINES else None)


@dataclass(frozen=True)
class Dependent:
    """An object that depends on a signed one, as ``pg_depend`` says."""

    classid: str
    oid: int
    description: str
    #: PostgreSQL drops it with the object on its own (e.g. a trigger on a view): kept by capture and restore.
    auto: bool = False

    @property
    def ref(self) -> tuple[str, int]:
        """The catalog reference ``(classid, oid)``."""
        return (self.classid, self.oid)


@dataclass(frozen=True)
class DatabaseState:
    """What the catalog says, split by who owns what."""

    scope: str
    #: Objects signed by this scope, by the key they were declared with.
    managed: Mapping[Key, DbObject]
    #: Every other object the query saw: other scopes, unsigned objects that a declaration's name hits,
    #: malformed signatures.
    others: tuple[DbObject, ...]
    #: Dependents of every signed object, by the signed object's ``(classid, oid)``.
    dependents: Mapping[tuple[str, int], tuple[Dependent, ...]] = field(default_factory=dict)

    def managed_by_ref(self) -> dict[tuple[str, int], DbObject]:
        """Managed objects by catalog reference."""
        return {obj.ref: obj for obj in self.managed.values()}


def read_state(
    connection: Connection,
    scope: str,
    wanted: Iterable[Key] = (),
    *,
    dependents: bool = True,
    full_comments: bool = False,
    adopt: str | None = None,
    trusted_owners: Iterable[str] = (),
) -> DatabaseState:
    """Read the database state in one round trip; ``wanted`` are declared identities checked for clashes.

    ``dependents=False`` skips the pg_depend walk (enough to learn that nothing needs doing);
    ``full_comments`` keeps the SQL recorded in signatures (for restores). A signature counts only on an
    object whose owner the running role has the privileges of, or whose owner is one of ``trusted_owners``.
    """
    wanted_list = list(wanted)
    rel: tuple[list[str], list[str]] = ([], [])
    fn: tuple[list[str], list[str]] = ([], [])
    tg: tuple[list[str], list[str], list[str]] = ([], [], [])
    for key in wanted_list:
        if key.namespace == "relation":
            rel[0].append(key.schema)
            rel[1].append(key.name)
        elif key.namespace == "function":
            fn[0].append(key.schema)
            fn[1].append(key.name)
        else:
            tg[0].append(key.schema)
            tg[1].append(key.extra)
            tg[2].append(key.name)
    params = {
        **SHORT_SIGNATURE_PARAMS,
        "rel_schemas": rel[0],
        "rel_names": rel[1],
        "fn_schemas": fn[0],
        "fn_names": fn[1],
        "tg_schemas": tg[0],
        "tg_tables": tg[1],
        "tg_names": tg[2],
        "full": full_comments,
        "adopt": adopt == "dbsamizdat",
        "dprefix": DBSAMIZDAT_PREFIX,
        "dlen": len(DBSAMIZDAT_PREFIX),
        "dependents": dependents,
        "trusted_owners": sorted(trusted_owners),
        "dx_key": sig.DX_KEY,
        "fp_key": sig.FP_KEY,
    }
    narrow = sig.tenant_prefix(scope)
    if narrow is not None:
        # A tenant's run: other tenants' objects are not read (nor their dependents walked), so a run over T
        # tenants reads each tenant's objects once instead of all of them T times.
        params.update(prefix=narrow, plen=len(narrow))
    try:
        # Sent with its values written in as literals (psycopg caches the parsing of placeholders only for
        # queries under 4 kB, and this one is longer), behind a pinned search_path (see pinned.py).
        rows = pinned.query(connection, CATALOG_SQL, params)
    except Exception as exc:
        if not is_dbapi_error(exc):
            raise
        orig = getattr(exc, "orig", exc)
        reason = (str(orig).strip().splitlines() or [type(orig).__name__])[0]
        raise CatalogReadError(f"reading the catalog failed: {reason}. Nothing was changed by this run") from exc
    return build_state(scope, rows, adopt_keys=wanted_list if adopt else None)


def _adopted(
    comment: str, namespace: str, kind: str, schema: str, name: str, extra: str, scope: str, keys: list[Key]
) -> sig.Signature | None:
    """A DBSamizdat signature read as one of ours (``--adopt dbsamizdat``), keyed like the declaration."""
    digest = dbsamizdat_hash_of_comment(comment)
    if digest is None or kind not in _KINDS:
        return None
    key = Key(namespace, schema, name, extra if namespace == "trigger" else "")
    if namespace == "function":
        # DBSamizdat's signature text is not PostgreSQL's: match the declared overload by its printed types,
        # or the only declared function of that name.
        same = [k for k in keys if k.namespace == "function" and (k.schema, k.name) == (schema, name)]
        printed = normalize_signature(extra).lower()
        exact = [k for k in same if k.extra.lower() in (printed, in_arguments(printed))]
        chosen = exact or (same if len(same) == 1 else [])
        key = chosen[0] if chosen else Key(namespace, schema, name, extra)
    return sig.Signature(scope, _KINDS[kind], key, HASH_PREFIX + digest)


# Kept by comment text: a signature is an immutable value of its text, and most runs read the same comments
# again (a JSON parse per object is most of the Python cost of a no-op read).
@lru_cache(maxsize=65536)
def parse_comment(comment: str) -> sig.Signature | str:
    """The signature in ``comment``, or why it cannot be trusted."""
    try:
        return sig.parse(comment)
    except sig.MalformedSignature as exc:
        return str(exc)
    except RecursionError:
        # One hostile comment (JSON nested thousands deep) must not stop the run: the object is unreadable.
        return "nested too deeply to read"


@lru_cache(maxsize=4096)
def _grants(acl: str) -> frozenset[tuple[str, str]]:
    # Most objects carry the same few ACLs ('[]', PUBLIC EXECUTE): parsed once each.
    return frozenset((str(g[0]), str(g[1])) for g in json.loads(acl))


class CatalogRow(NamedTuple):
    """One row of :data:`CATALOG_SQL`, by name: an ``obj`` row (a signed object, or an object a declared name
    hits), a ``dep`` row (an object that depends on a signed one), or a ``pin`` row (the search_path pin's
    result). Columns a row does not carry are ``None``; hand-made rows (tests) may stop after the ones they need."""

    row: str
    classid: str | None = None
    oid: int | None = None
    kind: str | None = None
    schema: str | None = None
    name: str | None = None
    extra: str | None = None
    comment: str | None = None
    populated: bool | None = None
    #: ``dep`` rows: the dependent object, and whether PostgreSQL drops it with the signed one on its own.
    dep_classid: str | None = None
    dep_oid: int | None = None
    dep_description: str | None = None
    dep_auto: bool | None = None
    #: ``obj`` rows, read for signed objects: the ACL, whether a drop would lose something, the fingerprint
    #: (only when the row was rewritten after signing), whether it was rewritten after signing, whether the
    #: running role has the owner's privileges, the owner, and whether a trigger is a constraint trigger.
    acl: str | None = None
    keeps: bool | None = None
    fingerprint: str | None = None
    moved: bool | None = None
    trusted: bool | None = None
    owner: str | None = None
    is_constraint: bool | None = None


def build_state(scope: str, rows: Iterable[Sequence[object]], *, adopt_keys: list[Key] | None = None) -> DatabaseState:
    """Turn catalog rows into a :class:`DatabaseState` (pure; split out so it is testable without a server)."""
    managed: dict[Key, DbObject] = {}
    others: list[DbObject] = []
    deps: dict[tuple[str, int], list[Dependent]] = defaultdict(list)
    for raw in rows:
        row = raw if isinstance(raw, CatalogRow) else CatalogRow(*raw)  # type: ignore[arg-type]
        if row.row == "pin":
            continue
        classid, oid = str(row.classid), int(row.oid or 0)
        if row.row == "dep":
            deps[(classid, oid)].append(
                # Signed dependents come undescribed (they are matched by oid): "" rather than the text "None".
                Dependent(
                    str(row.dep_classid), int(row.dep_oid or 0), str(row.dep_description or ""), bool(row.dep_auto)
                )
            )
            continue
        kind, schema, name, extra = str(row.kind), str(row.schema), str(row.name), str(row.extra)
        comment = row.comment
        populated = bool(row.populated)
        namespace = "relation" if classid == "pg_class" else "function" if classid == "pg_proc" else kind
        signature: sig.Signature | None = None
        malformed: str | None = None
        key_extra = extra
        if sig.is_ours(comment):
            assert comment is not None
            parsed = parse_comment(comment)
            if isinstance(parsed, sig.Signature):
                signature = parsed
            else:
                malformed = parsed
        elif adopt_keys is not None and is_dbsamizdat(comment):
            assert comment is not None
            signature = _adopted(comment, namespace, kind, schema, name, extra, scope, adopt_keys)
        trusted = row.trusted is None or bool(row.trusted)
        if signature is not None and not trusted:
            # Anyone may sign an object of their own with a text copied from our source: a signature counts
            # only on an object whose owner's privileges the running role has (it could have made it).
            malformed = (
                f"signed, but owned by role {quote_ident(str(row.owner))}, whose privileges the running role does "
                "not have: not trusted as ours (a copied signature?)"
            )
            signature = None
        if signature is not None:
            real = (namespace, schema, name)
            claimed = (signature.key.namespace, signature.key.schema, signature.key.name)
            if namespace == "function":
                key_extra = signature.key.extra
            if real != claimed or (namespace == "trigger" and signature.key.extra != extra):
                # Renamed behind our back: still ours, but under its real name, so it reads as excess.
                key_extra = extra if namespace != "function" else signature.key.extra + "\x00renamed"
        obj = DbObject(
            Key(namespace, schema, name, key_extra),
            kind,
            classid,
            oid,
            comment,
            signature,
            malformed,
            populated,
            extra if namespace == "function" else "",
            _grants(str(row.acl)) if row.acl is not None else None,
            None if row.keeps is None else bool(row.keeps),
            None if row.fingerprint is None else str(row.fingerprint),
            bool(row.moved),
            trusted,
            None if row.owner is None else str(row.owner),
            bool(row.is_constraint),
        )
        if signature is not None and signature.scope == scope and kind in _KINDS:
            managed[obj.key] = obj
        else:
            others.append(obj)
    return DatabaseState(scope, managed, tuple(others), {k: tuple(v) for k, v in deps.items()})
