"""The autogenerate comparator: the same plan as ``samizdat sync``, emitted as operations in the revision.

It runs after Alembic's own table comparator, so it can place its operations where PostgreSQL needs them:
drops before every table operation, creates after them. Samizdats that read a table this revision drops or
alters (``deps_on_unmanaged``, trigger and refresh-trigger tables) are dropped first and recreated last, with
their dependents. Tables of ORM models mapped onto managed views are left out of table autogenerate.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Iterable
from typing import Any

from alembic.autogenerate.api import AutogenContext
from alembic.operations import ops as alembic_ops
from sqlalchemy import MetaData

from .. import statements
from ..catalog import DatabaseState, read_state
from ..deferred import MARKS_TABLE
from ..execute import plan_asking_postgres
from ..graph import Graph
from ..grouping import action_entries, grouped, owner
from ..keys import Key, Kind
from ..planner import Action, Plan, Verb, in_sync, plan_sync
from ..registry import SamizdatRegistry
from ..signature import without_sql
from .ops import CreateSamizdatOp, DropSamizdatOp, RefreshSamizdatOp, RegrantSamizdatOp, ReplaceSamizdatOp

log = logging.getLogger("alembic.samizdat")

#: Revisions already handled: the comparator may be registered both as a plugin and the legacy way.
_DONE: weakref.WeakSet[alembic_ops.UpgradeOps] = weakref.WeakSet()


def find_registry(metadata: MetaData | Iterable[MetaData] | None) -> SamizdatRegistry | None:
    """The registry attached to ``target_metadata`` (a MetaData or a sequence of them)."""
    if metadata is None:
        return None
    candidates = [metadata] if isinstance(metadata, MetaData) else list(metadata)
    for md in candidates:
        found = SamizdatRegistry.from_metadata(md)
        if found is not None:
            return found
    return None


def _table_key(schema: str | None, name: str, default_schema: str) -> tuple[str, str]:
    return (schema or default_schema, name)


def _drop_view_mapped_tables(
    upgrade_ops: alembic_ops.UpgradeOps, relations: set[tuple[str, str]], default: str
) -> None:
    """ORM models whose table is a managed view: never create (or index) a table for them; nor drop a marks table."""
    kept: list[Any] = []
    table_ops = (
        alembic_ops.CreateTableOp,
        alembic_ops.DropTableOp,
        alembic_ops.CreateIndexOp,
        alembic_ops.ModifyTableOps,
    )
    for op in upgrade_ops.ops:
        if isinstance(op, table_ops) and (
            _table_key(op.schema, op.table_name, default) in relations
            # Deferred autorefresh's marks tables are the tool's, never the metadata's (see deferred.py).
            or op.table_name == MARKS_TABLE
        ):
            continue
        kept.append(op)
    upgrade_ops.ops = kept


def _managed_relations(graph: Graph) -> set[tuple[str, str]]:
    return {(k.schema, k.name) for k, item in graph.nodes.items() if item.kind.namespace == "relation"}


def exclude_view_mapped_tables(
    autogen_context: AutogenContext, upgrade_ops: alembic_ops.UpgradeOps, schemas: Any
) -> Any:
    """Runs before Alembic's table comparator: ORM tables on managed views are left out of the comparison
    (as an ``include_object`` filter would), so Alembic neither plans nor logs "Detected added table" for them.

    ``compare_samizdats`` still removes such ops afterwards, for Alembic versions without comparator priorities.
    """
    registry = find_registry(autogen_context.metadata)
    filters = getattr(autogen_context, "_object_filters", None)
    if registry is None or not isinstance(filters, list) or any(f is _SKIP_MARK for f in filters):
        return _continue()
    connection = autogen_context.connection
    default = (connection.dialect.default_schema_name if connection is not None else None) or "public"
    relations = _managed_relations(registry.graph())

    def include(obj: Any, name: Any, type_: str, reflected: bool, compare_to: Any) -> bool:
        if type_ == "table" and not reflected:
            return _table_key(getattr(obj, "schema", None), str(name), default) not in relations
        return True

    filters.extend([_SKIP_MARK, include])
    return _continue()


def _SKIP_MARK(*_: Any) -> bool:
    """Marks an AutogenContext whose filters already leave out view-mapped tables."""
    return True


def _altered_tables(upgrade_ops: alembic_ops.UpgradeOps, default: str) -> set[tuple[str, str]]:
    """Tables this revision drops, or whose columns it drops or alters."""
    out: set[tuple[str, str]] = set()
    for op in upgrade_ops.ops:
        if isinstance(op, alembic_ops.DropTableOp) or (
            isinstance(op, alembic_ops.ModifyTableOps)
            and any(isinstance(sub, alembic_ops.DropColumnOp | alembic_ops.AlterColumnOp) for sub in op.ops)
        ):
            out.add(_table_key(op.schema, op.table_name, default))
    return out


def _readers(graph: Graph, tables: set[tuple[str, str]]) -> set[Key]:
    readers = set()
    for key, item in graph.nodes.items():
        read = {*item.unmanaged, *item.refresh_triggers}
        if item.trigger_table is not None:
            read.add(item.trigger_table)
        if read & tables:
            readers.add(key)
    return readers


def _above(graph: Graph, key: Key) -> set[Key]:
    """Every declared object that reads ``key``, directly or through others."""
    readers: dict[Key, set[Key]] = {}
    for node, deps in graph.deps.items():
        for dep in deps:
            readers.setdefault(dep, set()).add(node)
    found: set[Key] = set()
    todo = [key]
    while todo:
        for reader in readers.get(todo.pop(), ()):
            if reader not in found:
                found.add(reader)
                todo.append(reader)
    return found


def plan_to_ops(plan: Plan, graph: Graph, state: DatabaseState) -> tuple[list[Any], list[Any]]:
    """(drop ops, create-and-refresh ops) of a plan, in execution order: each action's fields, mapped to an
    operation (operations are data, as in Alembic)."""
    drops: list[Any] = []
    creates: list[Any] = []
    created = {a.key for a in plan.actions if a.verb is Verb.CREATE}
    for action in plan.actions:
        name = action.key.display()
        before = len(drops) + len(creates)
        if action.verb is Verb.DROP:
            restore, restore_signature = _restore(action)
            declared = graph.nodes.get(action.key)
            with_data = action.kind == Kind.MATVIEW.value and (declared.with_data if declared else True)
            drops.append(
                DropSamizdatOp(
                    action.kind,
                    name,
                    action.drop,
                    restore=restore,
                    restore_signature=restore_signature,
                    restore_with_data=with_data,
                    reason=action.reason,
                )
            )
        elif action.verb is Verb.CREATE:
            assert action.declared is not None
            item = action.declared
            creates.append(
                CreateSamizdatOp(
                    item.kind.value,
                    name,
                    item.sql,
                    signature=action.signature(),
                    drop=action.drop,
                    with_data=item.kind is Kind.MATVIEW and item.with_data,
                    grants="\n;\n".join(action.grants) or None,
                    reason=action.reason,
                )
            )
        elif action.verb is Verb.REPLACE:
            assert action.declared is not None
            item = action.declared
            restore, restore_signature = _restore(action)
            # The way back must refresh what reads it after replacing it; the upgrade's refresh operations run
            # after this one, so in the downgrade they run before it.
            above = _above(graph, action.key)
            refreshes = [
                a.sql for a in plan.actions if a.verb is Verb.REFRESH and a.key in above and a.key not in created
            ]
            creates.append(
                ReplaceSamizdatOp(
                    item.kind.value,
                    name,
                    item.sql,
                    signature=action.signature(),
                    drop=action.drop,
                    grants="\n;\n".join(action.grants) or None,
                    restore=restore,
                    restore_signature=restore_signature,
                    reason=action.reason,
                    restore_refresh="\n;\n".join(refreshes) or None,
                )
            )
        elif action.verb is Verb.GRANT:
            undo = list(action.undo)
            if action.old is not None and action.old.comment is not None:
                undo.append(statements.comment(action.old.comment_target(), action.old.comment))
            regrant = RegrantSamizdatOp(action.kind, name, action.sql, reverse_sql="\n;\n".join(undo) + "\n;")
            regrant.reason = action.reason
            creates.append(regrant)
        elif action.key not in created:
            refresh = RefreshSamizdatOp(name, action.sql)
            refresh.reason = action.reason
            creates.append(refresh)
        top = owner(action.key, graph)
        if top is not None and len(drops) + len(creates) > before:
            made = drops[-1] if action.verb is Verb.DROP else creates[-1]
            made.generated_for = graph.nodes[top].label
    return drops, creates


def _restore(action: Action) -> tuple[str | None, str | None]:
    """(SQL, signature) the downgrade recreates the old object from: what its signature recorded."""
    obj = action.old
    if obj is None or obj.comment is None or obj.signature is None:
        return None, None
    signature, sql = without_sql(obj.comment)
    return sql, signature


def compare_samizdats(autogen_context: AutogenContext, upgrade_ops: alembic_ops.UpgradeOps, schemas: Any) -> Any:
    """Autogenerate comparator for the ``schema`` target."""
    if upgrade_ops in _DONE:
        return _continue()
    _DONE.add(upgrade_ops)
    registry = find_registry(autogen_context.metadata)
    connection = autogen_context.connection
    if registry is None or connection is None:
        return _continue()
    graph = registry.graph()
    default = connection.dialect.default_schema_name or "public"
    relations = _managed_relations(graph)
    _drop_view_mapped_tables(upgrade_ops, relations, default)
    force = _readers(graph, _altered_tables(upgrade_ops, default))
    if not force and in_sync(
        graph,
        read_state(connection, registry.scope, graph.nodes, dependents=False, trusted_owners=registry.trusted_owners),
    ):
        # Nothing to do for the samizdats (most revisions only touch tables): one read without the pg_depend walk
        # tells it, as a sync's first read does, and the plan is empty. As with a sync that has nothing to do,
        # warnings about undeclared catalog dependencies come only with a plan that does something.
        return _continue()
    # Signatures without their SQL first: that is all a revision needs unless it drops, recreates or re-grants
    # an object that exists (the downgrade restores it from the SQL its signature recorded). Then, and only
    # then, read again in full and plan from that, so the ops come from one consistent read.
    state = read_state(connection, registry.scope, graph.nodes, trusted_owners=registry.trusted_owners)
    # No swap of materialized views in revisions: a build would have to run before the revision's table
    # operations, which may add what the new definition reads; the rebuild populates in the revision's
    # transaction, so readers wait but never fail (docs/deploying.md).
    plan = plan_sync(graph, state, force=force, swap=False)
    if any(action.key in state.managed for action in plan.actions):
        state = read_state(
            connection, registry.scope, graph.nodes, full_comments=True, trusted_owners=registry.trusted_owners
        )
        # Replace in place, or rebuild: PostgreSQL is asked now, there and back (see execute.probe_in_place).
        plan = plan_asking_postgres(connection, graph, state, force=force, both_ways=True, swap=False)
    for warning in plan.warnings:
        log.warning("samizdat: %s", warning)
    drops, creates = plan_to_ops(plan, graph, state)
    for depth, line in grouped(action_entries(plan.actions, graph), graph):
        log.info("%s%s", "    " * depth if depth else "Detected ", line)
    upgrade_ops.ops[:0] = drops
    upgrade_ops.ops.extend(creates)
    return _continue()


def _continue() -> Any:
    try:
        from alembic.util import PriorityDispatchResult

        return PriorityDispatchResult.CONTINUE
    except ImportError:  # Alembic < 1.18 ignores the return value
        return None


def register_legacy_comparator() -> None:
    """Register on Alembic's global comparator registry (works in every env.py, plugin system or not)."""
    from alembic.autogenerate import comparators

    try:
        from alembic.util import DispatchPriority

        comparators.dispatch_for("schema", priority=DispatchPriority.LAST)(compare_samizdats)
        comparators.dispatch_for("schema", priority=DispatchPriority.FIRST)(exclude_view_mapped_tables)
    except ImportError:
        # Before 1.18 comparators run in registration order, and Alembic's own were registered first.
        comparators.dispatch_for("schema")(compare_samizdats)
