"""The generated trigger functions' common shape: run as their owner, search_path pinned, EXECUTE granted to
nobody, and refusing to run for any table but the ones they were generated for (docs/security.md)."""

from __future__ import annotations

from .declared import Declared
from .identifiers import dollar_quote, qualified, quote_literal


def feeding_tables_guard(view: Declared, verb: str) -> str:
    """The first lines of a generated trigger function's body: it refuses to run for any table but ``view``'s
    ``refresh_triggers``. Anyone with USAGE on the schema could otherwise attach it to a table of theirs and make
    the view's owner ``verb`` (refresh, mark) the view at will."""
    feeds = ", ".join(f"{quote_literal(qualified(*t))}::regclass::oid" for t in view.refresh_triggers)
    return (
        f"    IF TG_RELID NOT IN ({feeds}) THEN\n"
        f"        RAISE EXCEPTION 'samizdat: % {verb} % only for the tables in its refresh_triggers, not for %',\n"
        f"            TG_NAME, {quote_literal(qualified(view.key.schema, view.key.name))}, TG_RELID::regclass;\n"
        "    END IF;\n"
    )


def definer_trigger_function(name: str, plpgsql: str) -> str:
    """``CREATE FUNCTION name() RETURNS trigger`` running ``plpgsql`` as its owner (SECURITY DEFINER) with
    search_path pinned; nobody is granted EXECUTE (firing a trigger needs none; attaching one to a table does)."""
    return (
        f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql "
        f"SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS {dollar_quote(plpgsql)};\n"
        f"REVOKE ALL ON FUNCTION {name}() FROM PUBLIC"
    )
