"""Keeping what users attach to managed objects across a drop and recreate.

Right before a managed object is dropped, a ``DO`` block reads the catalog and stores, in a session-local
temporary table, the statements that rebuild what PostgreSQL would drop with it and our template does not
create: privileges (object and column GRANTs, with GRANT OPTION), the owner, indexes on a materialized view,
triggers someone added by hand, column comments, per-column statistics targets of indexes. Right after the
object is created again, a second ``DO`` block runs them. The capture reads the database being changed (grants
differ between environments), so nothing of it is frozen into revisions; both blocks are plain SQL, so the same
happens under ``psql -1 -f`` and ``alembic upgrade --sql``.

What can no longer be restored (an index on a column that is gone, an owner the running role may not set) is
not dropped silently: it is reported with a WARNING naming the object and the statement, and the run goes on
(the object itself is what was asked for). Everything restored is reported with a NOTICE. Both start with
``samizdat:``.

Not kept (documented): rules, extended statistics, security labels and publication membership of the object.
"""

from __future__ import annotations

from .identifiers import quote_literal
from .keys import Kind
from .pinned import do_block
from .statements import read_target

#: The temporary table that carries captured statements from the drop to the create (same session).
KEEP_TABLE = "pg_temp.samizdat_keep"
#: Prefix of the NOTICE/WARNING messages the blocks raise, so fronts can pick them out.
MESSAGE_PREFIX = "samizdat:"

#: Indexes the template created were made in the transaction that created the view (the same xmin as its
#: rewrite rule, which REFRESH never rewrites); hand-made ones later. Only the latter are carried over, so an
#: index the new template no longer creates is gone, as declared.
_NOT_FROM_TEMPLATE = "NOT i.xmin = (SELECT r.xmin FROM pg_rewrite r WHERE r.ev_class = obj LIMIT 1)"


def capture_statement(kind: str, target: str) -> str | None:
    """The ``DO`` block that records what to restore for the object ``target`` (as ``DROP`` names it, without
    ``DROP``: ``VIEW "s"."v"``, ``FUNCTION "s"."f"(integer)``); ``None`` for kinds with nothing to keep."""
    label = quote_literal(target)
    head = (
        f"    CREATE TEMP TABLE IF NOT EXISTS samizdat_keep (target text, what text, stmt text, ord int);\n"
        f"    DELETE FROM {KEEP_TABLE} WHERE target = {label};\n"
    )
    if kind in (Kind.VIEW.value, Kind.MATVIEW.value):
        read = read_target(kind, target)
        if read is None:
            return None
        name, kind_sql = read.name, read.sql_kind
        body = f"""    obj := to_regclass({quote_literal(name)});
    IF obj IS NULL THEN EXIT samizdat; END IF;
    INSERT INTO {KEEP_TABLE}
    SELECT {label}, 'owner ' || quote_ident(r.rolname),
           format('ALTER {kind_sql} %s OWNER TO %I', {quote_literal(name)}, r.rolname), 1
    FROM pg_class c JOIN pg_roles r ON r.oid = c.relowner
    WHERE c.oid = obj AND r.rolname <> current_user;
    INSERT INTO {KEEP_TABLE}
    SELECT {label}, 'grant ' || a.privilege_type || ' to ' || coalesce(quote_ident(g.rolname), 'PUBLIC'),
           format('GRANT %s ON %s TO %s%s', a.privilege_type, {quote_literal(name)},
                  coalesce(quote_ident(g.rolname), 'PUBLIC'),
                  CASE WHEN a.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END), 2
    FROM pg_class c CROSS JOIN LATERAL aclexplode(c.relacl) a LEFT JOIN pg_roles g ON g.oid = a.grantee
    WHERE c.oid = obj AND a.grantee <> c.relowner;
    INSERT INTO {KEEP_TABLE}
    SELECT {label}, 'grant ' || a.privilege_type || ' (' || quote_ident(att.attname) || ') to '
           || coalesce(quote_ident(g.rolname), 'PUBLIC'),
           format('GRANT %s (%I) ON %s TO %s%s', a.privilege_type, att.attname, {quote_literal(name)},
                  coalesce(quote_ident(g.rolname), 'PUBLIC'),
                  CASE WHEN a.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END), 3
    FROM pg_attribute att CROSS JOIN LATERAL aclexplode(att.attacl) a LEFT JOIN pg_roles g ON g.oid = a.grantee
    WHERE att.attrelid = obj AND att.attacl IS NOT NULL;
    INSERT INTO {KEEP_TABLE}
    SELECT {label}, 'index ' || quote_ident(n.nspname) || '.' || quote_ident(ic.relname),
           pg_get_indexdef(i.indexrelid), 4
    FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid JOIN pg_namespace n ON n.oid = ic.relnamespace
    WHERE i.indrelid = obj AND {_NOT_FROM_TEMPLATE};
    INSERT INTO {KEEP_TABLE}
    SELECT {label}, 'statistics of index ' || quote_ident(ic.relname) || ' column ' || a.attnum,
           format('ALTER INDEX %I.%I ALTER COLUMN %s SET STATISTICS %s', n.nspname, ic.relname, a.attnum,
                  a.attstattarget), 5
    FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid JOIN pg_namespace n ON n.oid = ic.relnamespace
    JOIN pg_attribute a ON a.attrelid = ic.oid AND a.attnum > 0
    WHERE i.indrelid = obj AND a.attstattarget > 0 AND {_NOT_FROM_TEMPLATE};
    INSERT INTO {KEEP_TABLE}
    SELECT {label}, 'trigger ' || quote_ident(t.tgname), pg_get_triggerdef(t.oid), 6
    FROM pg_trigger t
    WHERE t.tgrelid = obj AND NOT t.tgisinternal
      AND coalesce(left(obj_description(t.oid, 'pg_trigger'), 20), '') <> '{{"alembic_samizdat":';
    INSERT INTO {KEEP_TABLE}
    SELECT {label}, 'comment on column ' || quote_ident(att.attname),
           format('COMMENT ON COLUMN %s.%I IS %L', {quote_literal(name)}, att.attname, d.description), 7
    FROM pg_description d JOIN pg_attribute att ON att.attrelid = d.objoid AND att.attnum = d.objsubid
    WHERE d.objoid = obj AND d.classoid = 'pg_class'::regclass AND d.objsubid > 0;
"""
    elif kind in (Kind.FUNCTION.value, Kind.PROCEDURE.value):
        read = read_target(kind, target)
        if read is None:
            return None
        # ALTER FUNCTION and GRANT … ON FUNCTION refuse a procedure, and the other way round.
        routine, schema, name, args = read.sql_kind, read.schema, read.routine, read.arguments
        body = f"""    SELECT p.oid INTO obj FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
    WHERE n.nspname = {quote_literal(schema)} AND p.proname = {quote_literal(name)}
      AND pg_get_function_identity_arguments(p.oid) = {quote_literal(args)};
    IF obj IS NULL THEN EXIT samizdat; END IF;
    INSERT INTO {KEEP_TABLE}
    SELECT {label}, 'owner ' || quote_ident(r.rolname),
           format('ALTER {routine} %s OWNER TO %I', obj::regprocedure, r.rolname), 1
    FROM pg_proc p JOIN pg_roles r ON r.oid = p.proowner
    WHERE p.oid = obj AND r.rolname <> current_user;
    -- A function is executable by PUBLIC by default; a stored ACL replaces that default exactly.
    INSERT INTO {KEEP_TABLE}
    SELECT {label}, 'privileges', format('REVOKE ALL ON {routine} %s FROM PUBLIC', obj::regprocedure), 2
    FROM pg_proc p WHERE p.oid = obj AND p.proacl IS NOT NULL;
    INSERT INTO {KEEP_TABLE}
    SELECT {label}, 'grant EXECUTE to ' || coalesce(quote_ident(g.rolname), 'PUBLIC'),
           format('GRANT EXECUTE ON {routine} %s TO %s%s', obj::regprocedure,
                  coalesce(quote_ident(g.rolname), 'PUBLIC'),
                  CASE WHEN a.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END), 3
    FROM pg_proc p CROSS JOIN LATERAL aclexplode(p.proacl) a LEFT JOIN pg_roles g ON g.oid = a.grantee
    WHERE p.oid = obj AND a.grantee <> p.proowner;
"""
    else:
        return None
    return do_block(head + body, "obj pg_catalog.oid;\n")


def restore_statement(target: str) -> str:
    """The ``DO`` block that replays what :func:`capture_statement` recorded for ``target``.

    Each statement runs in its own subtransaction: one that no longer applies is reported and skipped.
    Indexes whose name exists again (the template created them) are skipped.
    """
    label = quote_literal(target)
    return do_block(
        f"""    IF to_regclass('{KEEP_TABLE}') IS NULL THEN EXIT samizdat; END IF;
    FOR k IN SELECT what, stmt FROM {KEEP_TABLE} WHERE target = {label} ORDER BY ord, what LOOP
        IF k.what LIKE 'index %' AND to_regclass(substr(k.what, 7)) IS NOT NULL THEN
            CONTINUE;
        END IF;
        BEGIN
            EXECUTE k.stmt;
            RAISE NOTICE '{MESSAGE_PREFIX} kept % of %', k.what, {label};
        EXCEPTION WHEN OTHERS THEN
            RAISE WARNING '{MESSAGE_PREFIX} lost % of %: % (it was: %)', k.what, {label}, SQLERRM, k.stmt;
        END;
    END LOOP;
    DELETE FROM {KEEP_TABLE} WHERE target = {label};""",
        "k record;\n",
    )
