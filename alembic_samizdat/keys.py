"""Database identities of managed objects, shared by every phase (declare, inspect, plan, execute)."""

from __future__ import annotations

from enum import StrEnum
from typing import NamedTuple

from .identifiers import qualified, quote_ident


class Kind(StrEnum):
    """The kinds of database object that a samizdat can be."""

    VIEW = "view"
    MATVIEW = "matview"
    FUNCTION = "function"
    TRIGGER = "trigger"
    PROCEDURE = "procedure"

    @property
    def namespace(self) -> str:
        """Which PostgreSQL name space the kind lives in: views and materialized views share pg_class, functions
        and procedures pg_proc (a procedure and a function cannot have the same name and argument types)."""
        if self in (Kind.VIEW, Kind.MATVIEW):
            return "relation"
        return "function" if self is Kind.PROCEDURE else self.value

    @property
    def sql_name(self) -> str:
        """The kind as SQL spells it in ``DROP``/``COMMENT ON``."""
        return _SQL_NAMES[self]


_SQL_NAMES = {
    Kind.VIEW: "VIEW",
    Kind.MATVIEW: "MATERIALIZED VIEW",
    Kind.FUNCTION: "FUNCTION",
    Kind.TRIGGER: "TRIGGER",
    Kind.PROCEDURE: "PROCEDURE",
}


class Key(NamedTuple):
    """The identity of one database object.

    ``extra`` is the argument signature for a function or procedure (whitespace-normalised, as declared) and the
    table name for a trigger (whose ``schema`` is the table's schema); it is empty for views and materialized
    views.
    A tuple, so that hashing and ordering (done a lot by the graph and the planner) run in C.
    """

    namespace: str
    schema: str
    name: str
    extra: str = ""

    def display(self) -> str:
        """A precise, quoted rendering for messages: ``"s"."v"``, ``"s"."f"(int)``, ``"t" ON "s"."tbl"``."""
        if self.namespace == "function":
            return f"{qualified(self.schema, self.name)}({self.extra})"
        if self.namespace == "trigger":
            return f"{quote_ident(self.name)} ON {qualified(self.schema, self.extra)}"
        return qualified(self.schema, self.name)

    def __str__(self) -> str:
        return self.display()


def normalize_signature(signature: str) -> str:
    """Collapse whitespace in a function argument signature so that reformatting it is not a change."""
    return " ".join(signature.split())


def in_arguments(identity_args: str) -> str:
    """A function's identity arguments without its ``OUT`` ones, whitespace-normalised.

    PostgreSQL 14 and later print ``OUT`` arguments in ``pg_get_function_identity_arguments`` although a
    function (unlike a procedure) is identified by its input arguments alone, which is what
    ``function_arguments_signature`` declares.
    """
    parts: list[str] = []
    depth, quoted, start = 0, False, 0
    for index, char in enumerate(identity_args):
        if char == '"':
            quoted = not quoted
        elif not quoted and char == "(":
            depth += 1
        elif not quoted and char == ")":
            depth -= 1
        elif not quoted and depth == 0 and char == ",":
            parts.append(identity_args[start:index])
            start = index + 1
    parts.append(identity_args[start:])
    kept = [part for part in parts if part.split(None, 1)[:1] not in (["OUT"], ["out"])]
    return normalize_signature(",".join(kept)).replace(" ,", ",")
