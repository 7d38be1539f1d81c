"""Questions about SQLAlchemy objects answered without importing SQLAlchemy.

Importing SQLAlchemy costs a command line a large part of its start-up; code that only needs to recognise one of
its objects asks here. An object of a SQLAlchemy class can exist only once the module defining that class has
been imported, so "not imported" proves "not one of them".
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, TypeGuard

if TYPE_CHECKING:
    from sqlalchemy import MetaData


def is_dbapi_error(exc: BaseException) -> bool:
    """Whether ``exc`` is SQLAlchemy's ``DBAPIError`` (a database error raised through SQLAlchemy)."""
    module = sys.modules.get("sqlalchemy.exc")
    return module is not None and isinstance(exc, module.DBAPIError)


def is_metadata(value: object) -> TypeGuard[MetaData]:
    """Whether ``value`` is a SQLAlchemy ``MetaData``."""
    module = sys.modules.get("sqlalchemy.sql.schema")
    return module is not None and isinstance(value, module.MetaData)
