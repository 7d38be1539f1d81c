"""SQLAlchemy ORM models on managed views.

A plain declarative class on the registry's ``MetaData`` whose ``__tablename__`` is a managed view's name just
works: the Alembic comparator leaves it out of table autogenerate, and :func:`real_tables` leaves it out of
``create_all``. :func:`check_model_columns` verifies that the columns a model declares exist on the view with
compatible types (use it in a test, or at start-up).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, MetaData, Table, inspect

from .errors import (
    ColumnDriftError,
)
from .registry import SamizdatRegistry


def managed_relations(registry: SamizdatRegistry) -> set[tuple[str, str]]:
    """(schema, name) of every managed view and materialized view."""
    graph = registry.graph()
    return {(k.schema, k.name) for k, item in graph.nodes.items() if item.kind.namespace == "relation"}


def real_tables(metadata: MetaData, *, default_schema: str = "public") -> list[Table]:
    """The tables of ``metadata`` that are real tables, not ORM mappings of managed views (for ``create_all``)."""
    registry = SamizdatRegistry.from_metadata(metadata)
    views = managed_relations(registry) if registry is not None else set()
    return [t for t in metadata.sorted_tables if (t.schema or default_schema, t.name) not in views]


def _table_of(model: Any) -> Table:
    table = getattr(model, "__table__", model)
    if not isinstance(table, Table):
        raise TypeError(f"expected a mapped class or a Table, not {model!r}")
    return table


def check_model_columns(connection: Connection, model: Any) -> None:
    """Raise :class:`ColumnDriftError` naming every column of ``model`` that its view lacks or types differently."""
    table = _table_of(model)
    inspector = inspect(connection)
    try:
        reflected = {c["name"]: c for c in inspector.get_columns(table.name, schema=table.schema)}
    except Exception as exc:  # NoSuchTableError and friends: one clear message
        raise ColumnDriftError(f"{table.fullname}: no such view or table in the database ({exc})") from exc
    problems: list[str] = []
    for column in table.columns:
        found = reflected.get(column.name)
        if found is None:
            problems.append(f"column {column.name!r} is missing (the view has {', '.join(sorted(reflected))})")
            continue
        if not _compatible(column.type, found["type"]):
            problems.append(f"column {column.name!r} is {found['type']} in the database, {column.type} in the model")
    if problems:
        raise ColumnDriftError(f"model {table.fullname} does not match the database: " + "; ".join(problems))


def _compatible(declared: Any, actual: Any) -> bool:
    try:
        return bool(declared.python_type is actual.python_type or issubclass(actual.python_type, declared.python_type))
    except NotImplementedError:
        return True
