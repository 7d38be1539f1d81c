"""Helpers for users' own test suites (see also the pytest plugin, :mod:`alembic_samizdat.pytest_plugin`)."""

from __future__ import annotations

from sqlalchemy import Connection, Engine

from . import report
from .api import Declarations, as_registry
from .planner import DiffKind, diff


class SamizdatsOutOfSync(AssertionError):
    """:func:`assert_in_sync` found differences; the message lists them, with a diff of changed SQL."""


def assert_in_sync(bind: Engine | Connection, declarations: Declarations, *, scope: str | None = None) -> None:
    """Fail (with :class:`SamizdatsOutOfSync`) unless the database matches the declarations.

    The message says, for each object that differs, how, and for a changed one shows a unified diff of the SQL it
    was created from against the declared SQL, e.g. to check that migrations brought the samizdats along::

        command.upgrade(alembic_config, "head")
        assert_in_sync(engine, registry)
    """
    registry = as_registry(declarations, scope=scope)
    graph = registry.graph()
    if isinstance(bind, Engine):
        with bind.connect() as connection:
            state = report.read_full_state(connection, registry, graph)
    else:
        state = report.read_full_state(bind, registry, graph)
    differences = diff(graph, state)
    if not differences:
        return
    old = report.old_sql(state)
    lines = [f"the database differs from the declarations in {len(differences)} object(s):"]
    for difference in differences:
        lines.append(f"  {difference.describe()}")
        declared = graph.nodes.get(difference.key)
        if difference.what is DiffKind.CHANGED and declared is not None and difference.key in old:
            patch = report.unified(old[difference.key], declared.sql, difference.key.display())
            lines.extend(f"      {line}" for line in patch.rstrip("\n").splitlines())
    raise SamizdatsOutOfSync("\n".join(lines))
