"""Deferred autorefresh: triggers that only mark materialized views stale, for ``samizdat worker`` to refresh.

A write to a table in a deferred view's ``refresh_triggers`` fires a statement-level trigger whose function
inserts one *mark* per view (the view and every materialized view reading it) into the marks table of the
view's schema, and sends ``pg_notify`` on that schema's channel; both happen once per transaction (a
transaction-local setting remembers it), so a write pays an insert of a few rows, not a refresh.

Marks are rows, written by the writing transaction: they become visible exactly when the data that made them
does, and vanish with it on a rollback. The worker consumes a view's marks by deleting them *in the
transaction that refreshes the view*, before the ``REFRESH``: every mark it deletes was committed before the
refresh's snapshot was taken, so the refresh sees its data; a mark committed later is not deleted and causes
another refresh; a refresh that fails or is killed rolls the delete back, so no view is ever left looking
fresh when it is not. A transaction-scoped advisory lock per view keeps two workers from refreshing the same
view at once.

The marks table is created by the sidekick function's own statement (``CREATE TABLE`` when it does not
exist), owned by the role that syncs, written only through the SECURITY DEFINER marking function, and readable
by nobody else (``REVOKE ALL … FROM PUBLIC``). Another role's table of that name is refused, never written.
"""

from __future__ import annotations

import hashlib

from . import statements
from .declared import Declared
from .identifiers import qualified, quote_ident, quote_literal
from .keys import Key, Kind
from .pinned import do_block
from .trigger_functions import definer_trigger_function, feeding_tables_guard

#: The worker's default quiet time before a round, and its longest wait after the first mark (seconds).
DEFAULT_DEBOUNCE = 1.0
DEFAULT_MAX_DELAY = 30.0
#: The table holding the marks, one per schema that holds a deferred view.
MARKS_TABLE = "samizdat_marks"
#: Every generated name starts with this (as in :mod:`.autorefresh`).
PREFIX = "samizdat_"
#: The comment on the marks table; it never reads as a signature (it is not JSON).
MARKS_COMMENT = "alembic_samizdat: materialized views marked stale, waiting for `samizdat worker` (docs/refresh.md)"
#: The advisory lock namespace of per-view refresh locks (the first key of the two-int form).
LOCK_NAMESPACE = 0x5A4D


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:16]


def channel(schema: str) -> str:
    """The ``NOTIFY`` channel on which marks in ``schema``'s marks table are announced (fits in 63 bytes)."""
    return f"{PREFIX}marks_{_digest(schema)}"


def marks_table(schema: str) -> str:
    """The quoted marks table of ``schema``."""
    return qualified(schema, MARKS_TABLE)


def mark_function_key(view: Key) -> Key:
    """The trigger function that marks ``view`` stale; it lives in the view's schema."""
    return Key("function", view.schema, f"{PREFIX}mark_{_digest(view.schema, view.name)}", "")


def mark_trigger_name(view: Key, table: tuple[str, str]) -> str:
    """The name of the trigger on ``table`` that marks ``view`` (differs from the immediate trigger's)."""
    return f"{PREFIX}m_{_digest(view.schema, view.name, *table)}"


def view_lock_key(view: Key) -> int:
    """The second key of the advisory lock that a worker holds while refreshing ``view`` (a signed int4)."""
    value = int(_digest(view.schema, view.name)[:8], 16)
    return value - (1 << 32) if value >= 1 << 31 else value


def create_marks_table_statement(schema: str) -> str:
    """Create ``schema``'s marks table unless it exists; refuse one that a role we do not act for owns."""
    table = marks_table(schema)
    name = quote_literal(table)
    body = (
        f"IF pg_catalog.to_regclass({name}) IS NULL THEN\n"
        f"    CREATE TABLE {table} (view_schema pg_catalog.text NOT NULL, view_name pg_catalog.text NOT NULL,\n"
        "        marked_at pg_catalog.timestamptz NOT NULL);\n"
        f"    CREATE INDEX ON {table} (view_schema, view_name);\n"
        f"    REVOKE ALL ON TABLE {table} FROM PUBLIC;\n"
        f"    COMMENT ON TABLE {table} IS {quote_literal(MARKS_COMMENT)};\n"
        "ELSIF NOT pg_catalog.pg_has_role((SELECT c.relowner FROM pg_catalog.pg_class c\n"
        f"                                  WHERE c.oid = pg_catalog.to_regclass({name})), 'USAGE') THEN\n"
        "    RAISE EXCEPTION 'samizdat: % exists and belongs to a role whose privileges % does not have', "
        f"{name}, current_user\n"
        "        USING HINT = 'deferred autorefresh keeps its marks there: drop or rename that table, or sync as its "
        "owner';\n"
        "END IF;"
    )
    return do_block(body)


def deferred_sidekicks(view: Declared, above: tuple[Key, ...]) -> list[Declared]:
    """The marking function (with the marks table) and one trigger per table of ``refresh_triggers``."""
    fkey = mark_function_key(view.key)
    function_name = qualified(fkey.schema, fkey.name)
    # The same guard as the immediate function's: attached to another table, it refuses to run.
    guard = feeding_tables_guard(view, "marks")
    marked = (view.key, *above)
    rows = ", ".join(f"({quote_literal(k.schema)}, {quote_literal(k.name)}, statement_timestamp())" for k in marked)
    # A transaction-local setting: the first statement of a transaction marks, the others find it set.
    once = quote_literal(f"samizdat.m_{_digest(view.key.schema, view.key.name)}")
    plpgsql = (
        f"\nBEGIN\n{guard}"
        f"    IF current_setting({once}, true) IS DISTINCT FROM '1' THEN\n"
        f"        PERFORM set_config({once}, '1', true);\n"
        f"        INSERT INTO {marks_table(view.key.schema)} (view_schema, view_name, marked_at) VALUES {rows};\n"
        f"        PERFORM pg_notify({quote_literal(channel(view.key.schema))}, '');\n"
        "    END IF;\n"
        "    RETURN NULL;\nEND;\n"
    )
    # SECURITY DEFINER: whoever may write the table may mark the view (the marks table is ours alone).
    function_sql = (
        f"{create_marks_table_statement(view.key.schema)};\n{definer_trigger_function(function_name, plpgsql)}"
    )
    out = [
        Declared(
            fkey,
            Kind.FUNCTION,
            f"mark function of {view.label} (deferred refresh)",
            function_sql,
            implicit_deps=(view.key,),
            generated_by=view.key,
        )
    ]
    condition = "AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE"
    for table in view.refresh_triggers:
        name = mark_trigger_name(view.key, table)
        out.append(
            Declared(
                Key("trigger", table[0], name, table[1]),
                Kind.TRIGGER,
                f"mark trigger of {view.label} on {qualified(*table)} (deferred refresh)",
                f"CREATE TRIGGER {quote_ident(name)} {condition} ON {qualified(*table)} "
                f"FOR EACH STATEMENT EXECUTE FUNCTION {function_name}()",
                implicit_deps=(fkey,),
                unmanaged=(table,),
                condition=condition,
                trigger_table=table,
                generated_by=view.key,
            )
        )
    return out


def consume_and_refresh_statement(view: Key, *, concurrently: bool) -> str:
    """One view's refresh by the worker, as one transaction: lock, delete the marks, refresh.

    The marks are deleted first so that each one deleted was committed before the ``REFRESH`` took its
    snapshot; marks committed later stay for the next round. The lock waits for another worker refreshing the
    same view; a view without marks left (that worker consumed them) is not refreshed again.
    """
    table = marks_table(view.schema)
    refresh = statements.refresh(view.schema, view.name, concurrently=concurrently)
    body = (
        f"PERFORM pg_catalog.pg_advisory_xact_lock({LOCK_NAMESPACE}, {view_lock_key(view)});\n"
        f"DELETE FROM {table} WHERE view_schema = {quote_literal(view.schema)} "
        f"AND view_name = {quote_literal(view.name)};\n"
        "IF NOT FOUND THEN EXIT samizdat; END IF;\n"
        f"EXECUTE {quote_literal(refresh)};"
    )
    return do_block(body)
