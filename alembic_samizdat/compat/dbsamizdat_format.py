"""DBSamizdat's signature format: how its comments start, what they record, and the hash it computes.

Read by the catalog (``--adopt dbsamizdat``) and the planner (is an adopted object unchanged?); knows nothing
of either.
"""

from __future__ import annotations

import hashlib
import json

from ..model import Samizdat, SamizdatFunction, SamizdatTrigger

#: How every DBSamizdat signature starts (it keeps "version" first for exactly this kind of prefix test).
DBSAMIZDAT_PREFIX = '{"dbsamizdat": {"version":'
#: Marks, in a parsed signature's hash, that the object was signed by DBSamizdat.
HASH_PREFIX = "dbsamizdat:"


def is_dbsamizdat(comment: str | None) -> bool:
    """Whether a comment is a DBSamizdat signature."""
    return comment is not None and comment.startswith(DBSAMIZDAT_PREFIX)


def dbsamizdat_hash_of_comment(comment: str) -> str | None:
    """The definition hash a DBSamizdat signature records, or ``None`` when it cannot be read."""
    try:
        body = json.loads(comment)
        value = body["dbsamizdat"]["definition_hash"]
    except (ValueError, KeyError, TypeError, RecursionError):
        return None
    return value if isinstance(value, str) else None


def dbsamizdat_hash(cls: type[Samizdat] | None) -> str | None:
    """The hash DBSamizdat 0.11 computes for a class declared the same way: md5 of the raw template, its
    identity and (functions) its creation identity, joined by ``|``."""
    if cls is None or cls.sql_template is None:
        return None
    own = getattr(cls, "definition_hash", None)
    if callable(own):
        # A class of the DBSamizdat compatibility import computes it exactly as DBSamizdat does.
        return str(own())
    schema = cls.schema
    if issubclass(cls, SamizdatFunction):
        name = cls.function_name if cls.function_name is not None else cls.__name__
        signature = cls.function_arguments_signature
        arguments = cls.function_arguments if cls.function_arguments is not None else signature
        identity = f'"{schema}"."{name}"({signature})'
        creation = f'"{schema}"."{name}"({arguments})'
    elif issubclass(cls, SamizdatTrigger):
        table_schema, table = cls.table()
        identity = f'"{table_schema}.{table}"."{cls.object_name()}"'
        creation = ""
    else:
        identity = f'"{schema}"."{cls.__name__}"'
        creation = ""
    return hashlib.md5("|".join((cls.sql_template, identity, creation)).encode("utf-8")).hexdigest()
