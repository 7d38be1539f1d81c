"""DBSamizdat's ``dbsamizdat.util`` helpers that modules use in their templates, behaving as in DBSamizdat 0.11.

They paste names between double quotes without escaping, exactly as DBSamizdat does, because their output is
what existing modules write into their SQL. The library itself quotes every identifier it generates.
"""

from __future__ import annotations

import math
from typing import Any

from ...template import dbsamizdat_sqlfmt

__all__ = ["db_object_identity", "fqify_node", "honest_cursor", "nodenamefmt", "sqlfmt"]


def fqify_node(node: Any) -> Any:
    """``"name"`` → ``("public", "name")``; ``"schema.name"`` → ``("schema", "name")``; anything else unchanged."""
    if isinstance(node, str):
        first, _, rest = node.partition(".")
        return (first, rest) if rest else ("public", first)
    return node


def nodenamefmt(node: Any) -> str:
    """How DBSamizdat names a node: ``name`` in public, ``schema.name`` elsewhere, plus ``(args)`` if any."""
    if isinstance(node, str):
        return node
    if isinstance(node, tuple):
        schema, name, *args = node
        identifier = f"{schema}.{name}" if schema not in {"public", None} else str(name)
        if args and args[0]:
            return f"{identifier}({args[0]})"
        return identifier
    return str(node)


def db_object_identity(thing: Any) -> str:
    """``"schema"."name"`` (functions: ``"schema"."name"(args)``), from a node or a name."""
    schema, name, *args = fqify_node(thing)
    suffix = f"({args[0]})" if args else ""
    return f'"{schema}"."{name}"{suffix}'


def sqlfmt(text: str, indent_with: str = "", number_lines: bool = False) -> str:
    """DBSamizdat's SQL tidying (see :func:`alembic_samizdat.template.dbsamizdat_sqlfmt`), optionally indented
    and with line numbers as its error messages show them."""
    tidy = dbsamizdat_sqlfmt(text)
    if not indent_with and not number_lines:
        return tidy
    lines = tidy[:-1].split("\n")
    width = max(1, math.ceil(math.log10(len(lines) or 1)))
    out = []
    for number, line in enumerate(lines, 1):
        prefix = f"{number:<{width}}:" if number_lines else ""
        out.append(prefix + (indent_with + line if line else ""))
    return "\n".join(out) + "\n"


def honest_cursor(cursor: Any) -> Any:
    """The psycopg cursor under wrappers (Django's, debug cursors…), found through their ``cursor`` attribute."""
    import psycopg

    if isinstance(cursor, psycopg.Cursor):
        return cursor
    inner = getattr(cursor, "cursor", None)
    if inner is None or inner is cursor:
        raise ValueError("Quest for an actual PsycoPG cursor was unfruitful :-/")
    return honest_cursor(inner)
