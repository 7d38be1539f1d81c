"""Sidekicks of materialized views with ``refresh_triggers``: a trigger function and one trigger per table.

Names are derived from the view's identity alone (plus its depth in the dependency graph), so they are
stable: adding, removing or renaming another view never renames these, and they always fit in 63 bytes.
PostgreSQL fires a table's triggers in name order; the zero-padded depth in the trigger name makes views
refresh after the views they read from.
"""

from __future__ import annotations

import hashlib

from .declared import Declared
from .errors import GraphError
from .identifiers import dollar_quote, qualified, quote_ident, quote_literal
from .keys import Key, Kind

#: Deepest view whose trigger names still sort in dependency order (four digits).
MAX_DEPTH = 9999
#: Every generated name starts with this, so users can recognise (and never clash with) them.
PREFIX = "samizdat_"


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:16]


def function_key(view: Key) -> Key:
    """The trigger function that refreshes ``view``; it lives in the view's schema."""
    return Key("function", view.schema, f"{PREFIX}refresh_{_digest(view.schema, view.name)}", "")


def trigger_name(view: Key, table: tuple[str, str], depth: int) -> str:
    """The name of the trigger on ``table`` that refreshes ``view`` (depth first: name order is fire order)."""
    if depth > MAX_DEPTH:
        raise GraphError(
            f"{view.display()} is {depth} levels deep; autorefresh triggers keep dependency order only up to "
            f"{MAX_DEPTH} levels (PostgreSQL fires triggers in name order)"
        )
    return f"{PREFIX}r{depth:04d}_{_digest(view.schema, view.name, *table)}"


def sidekicks(view: Declared, depth: int, above: tuple[Key, ...] = ()) -> list[Declared]:
    """The trigger function and triggers that keep ``view`` fresh, as declarations of their own.

    ``above``: the materialized views reading ``view`` (a deferred view marks them stale with it).
    """
    if not view.refresh_triggers:
        return []
    if view.refresh_mode == "deferred":
        from .deferred import deferred_sidekicks

        return deferred_sidekicks(view, above)
    fkey = function_key(view.key)
    target = qualified(view.key.schema, view.key.name)
    if view.refresh_concurrently:
        # CONCURRENTLY only when PostgreSQL allows it right now (populated, unique index on plain columns):
        # a write to the table must never fail because of how the view is refreshed.
        body = (
            "    IF EXISTS (SELECT 1 FROM pg_class c JOIN pg_index i ON i.indrelid = c.oid\n"
            f"               WHERE c.oid = {quote_literal(target)}::regclass AND c.relispopulated\n"
            "                 AND i.indisunique AND i.indisvalid AND i.indpred IS NULL AND i.indexprs IS NULL) THEN\n"
            f"        REFRESH MATERIALIZED VIEW CONCURRENTLY {target};\n"
            "    ELSE\n"
            f"        REFRESH MATERIALIZED VIEW {target};\n"
            "    END IF;\n"
        )
    else:
        body = f"    REFRESH MATERIALIZED VIEW {target};\n"
    # Anyone with USAGE on the schema could attach the function to a trigger on a table of theirs and make the
    # view's owner refresh (and lock) it at will: it refuses to run for any table but the declared ones.
    feeds = ", ".join(f"{quote_literal(qualified(*t))}::regclass::oid" for t in view.refresh_triggers)
    shown = quote_literal(target)
    guard = (
        f"    IF TG_RELID NOT IN ({feeds}) THEN\n"
        "        RAISE EXCEPTION 'samizdat: % refreshes % only for the tables in its refresh_triggers, not for %',\n"
        f"            TG_NAME, {shown}, TG_RELID::regclass;\n"
        "    END IF;\n"
    )
    function_name = qualified(fkey.schema, fkey.name)
    plpgsql = f"\nBEGIN\n{guard}{body}    RETURN NULL;\nEND;\n"
    function_sql = (
        # SECURITY DEFINER: a role allowed to write the table may refresh the view it feeds (REFRESH needs the
        # view's owner); names in the body are qualified and search_path is pinned. Firing a trigger needs no
        # EXECUTE, so nobody is granted it.
        f"CREATE FUNCTION {function_name}() RETURNS trigger LANGUAGE plpgsql "
        f"SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS {dollar_quote(plpgsql)};\n"
        f"REVOKE ALL ON FUNCTION {function_name}() FROM PUBLIC"
    )
    out = [
        Declared(
            fkey,
            Kind.FUNCTION,
            f"refresh function of {view.label}",
            function_sql,
            implicit_deps=(view.key,),
            generated_by=view.key,
        )
    ]
    for table in view.refresh_triggers:
        name = trigger_name(view.key, table, depth)
        condition = "AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE"
        sql = (
            f"CREATE TRIGGER {quote_ident(name)} {condition} ON {qualified(*table)} "
            f"FOR EACH STATEMENT EXECUTE FUNCTION {qualified(fkey.schema, fkey.name)}()"
        )
        out.append(
            Declared(
                Key("trigger", table[0], name, table[1]),
                Kind.TRIGGER,
                f"refresh trigger of {view.label} on {qualified(*table)}",
                sql,
                implicit_deps=(fkey,),
                unmanaged=(table,),
                condition=condition,
                trigger_table=table,
                generated_by=view.key,
            )
        )
    return out
