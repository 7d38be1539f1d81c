"""Sidekicks of materialized views with ``refresh_triggers``: a trigger function and one trigger per table.

Names are derived from the view's identity alone (plus its depth in the dependency graph), so they are
stable: adding, removing or renaming another view never renames these, and they always fit in 63 bytes.
PostgreSQL fires a table's triggers in name order; the zero-padded depth in the trigger name makes views
refresh after the views they read from.
"""

from __future__ import annotations

import hashlib

from . import statements
from .declared import Declared
from .errors import GraphError
from .identifiers import qualified, quote_ident, quote_literal
from .keys import Key, Kind
from .trigger_functions import definer_trigger_function, feeding_tables_guard

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
            f"        {statements.refresh(view.key.schema, view.key.name, concurrently=True)};\n"
            "    ELSE\n"
            f"        {statements.refresh(view.key.schema, view.key.name)};\n"
            "    END IF;\n"
        )
    else:
        body = f"    {statements.refresh(view.key.schema, view.key.name)};\n"
    plpgsql = f"\nBEGIN\n{feeding_tables_guard(view, 'refreshes')}{body}    RETURN NULL;\nEND;\n"
    # SECURITY DEFINER: a role allowed to write the table may refresh the view it feeds (REFRESH needs the view's
    # owner).
    function_sql = definer_trigger_function(qualified(fkey.schema, fkey.name), plpgsql)
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
