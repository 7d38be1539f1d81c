"""Quoting and validation of PostgreSQL identifiers and literals.

Names are always quoted by the library: whatever a user writes (mixed case, spaces, quotes, reserved words) is
taken literally, and the few names PostgreSQL cannot hold are refused before any SQL is sent.
"""

from __future__ import annotations

from .errors import InvalidIdentifierError

#: PostgreSQL's NAMEDATALEN - 1: longer names are silently truncated by the server, so we refuse them.
MAX_IDENTIFIER_BYTES = 63


def check_identifier(name: object, what: str) -> str:
    """Return ``name`` if PostgreSQL can hold it unchanged, else raise :class:`InvalidIdentifierError`.

    ``what`` describes where the name comes from (e.g. ``"schema of class Foo"``) for the message.
    """
    if not isinstance(name, str):
        raise InvalidIdentifierError(f"{what}: expected a string, got {type(name).__name__} {name!r}")
    if not name:
        raise InvalidIdentifierError(f"{what}: the name is empty; give it a non-empty name")
    if "\x00" in name:
        raise InvalidIdentifierError(f"{what}: {name!r} contains a NUL character, which PostgreSQL cannot store")
    size = len(name.encode("utf-8"))
    if size > MAX_IDENTIFIER_BYTES:
        raise InvalidIdentifierError(
            f"{what}: {name!r} is {size} bytes long; PostgreSQL would silently truncate it to "
            f"{MAX_IDENTIFIER_BYTES} bytes. Choose a shorter name"
        )
    return name


def quote_ident(name: str) -> str:
    """Quote one identifier, doubling embedded double quotes."""
    return '"' + name.replace('"', '""') + '"'


def qualified(schema: str, name: str) -> str:
    """Quote a schema-qualified name: ``"schema"."name"``."""
    return f"{quote_ident(schema)}.{quote_ident(name)}"


def quote_literal(value: str) -> str:
    """Quote a string literal that is safe whatever ``standard_conforming_strings`` says.

    The ``E''`` form fixes the meaning of backslashes, so the same text works in every session and in a
    migration file run by ``psql``.
    """
    if "\x00" in value:
        raise ValueError("PostgreSQL text cannot contain NUL characters")
    return "E'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def dollar_quote(body: str, tag: str = "samizdat") -> str:
    """``body`` between dollar quotes whose tag occurs nowhere in it (names and user SQL may hold any tag)."""
    candidate, serial = f"${tag}$", 0
    while candidate in body:
        serial += 1
        candidate = f"${tag}{serial}$"
    return f"{candidate}{body}{candidate}"
