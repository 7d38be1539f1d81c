"""Taking over objects that DBSamizdat created and signed, without downtime.

``samizdat sync --adopt dbsamizdat`` reads DBSamizdat's signatures (``{"dbsamizdat": {"version": 1,
"definition_hash": …}}``) as if they were ours: an object whose DBSamizdat hash equals what DBSamizdat itself would
compute for the declared class is unchanged, so it is only re-signed (no drop, no downtime); any other one is
replaced like a changed object, and DBSamizdat objects no longer declared (its refresh triggers, for instance)
are dropped. Without the flag such objects are foreign: never touched, and a declaration that needs one's name
stops with an error that mentions the flag.
"""

from __future__ import annotations

import hashlib
import json

from .model import Samizdat, SamizdatFunction, SamizdatTrigger

#: How every DBSamizdat signature starts (it keeps "version" first for exactly this kind of prefix test).
DBSAMIZDAT_PREFIX = '{"dbsamizdat": {"version":'
#: Marks, in a parsed signature's hash, that the object was signed by DBSamizdat.
HASH_PREFIX = "dbsamizdat:"
#: The tools whose objects ``--adopt`` can take over.
ADOPTABLE = ("dbsamizdat",)


def is_dbsamizdat(comment: str | None) -> bool:
    """Whether a comment is a DBSamizdat signature."""
    return comment is not None and comment.startswith(DBSAMIZDAT_PREFIX)


def dbsamizdat_hash_of_comment(comment: str) -> str | None:
    """The definition hash a DBSamizdat signature records, or ``None`` when it cannot be read."""
    try:
        body = json.loads(comment)
        value = body["dbsamizdat"]["definition_hash"]
    except (ValueError, KeyError, TypeError):
        return None
    return value if isinstance(value, str) else None


def dbsamizdat_hash(cls: type[Samizdat] | None) -> str | None:
    """The hash DBSamizdat 0.11 computes for a class declared the same way: md5 of the raw template, its
    identity and (functions) its creation identity, joined by ``|``."""
    if cls is None or cls.sql_template is None:
        return None
    schema = cls.schema
    if issubclass(cls, SamizdatFunction):
        name = cls.function_name if cls.function_name is not None else cls.__name__
        signature = cls.function_arguments_signature
        arguments = cls.function_arguments if cls.function_arguments is not None else signature
        identity = f'"{schema}"."{name}"({signature})'
        creation = f'"{schema}"."{name}"({arguments})'
    elif issubclass(cls, SamizdatTrigger):
        table_schema, table = cls.table()
        identity = f'"{table_schema}.{table}"."{cls.__name__}"'
        creation = ""
    else:
        identity = f'"{schema}"."{cls.__name__}"'
        creation = ""
    return hashlib.md5("|".join((cls.sql_template, identity, creation)).encode("utf-8")).hexdigest()
