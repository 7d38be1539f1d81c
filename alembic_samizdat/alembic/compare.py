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

from ..catalog import DatabaseState, read_state
from ..execute import plan_asking_postgres
from ..graph import Graph
from ..identifiers import quote_literal
from ..keys import Key, Kind
from ..planner import Plan, Verb, grant_changes, grant_statements, plan_sync
from ..registry import SamizdatRegistry
from ..signature import signature_text, without_sql
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
    """ORM models whose table is a managed view: never create (or index) a table for them."""
    kept: list[Any] = []
    table_ops = (
        alembic_ops.CreateTableOp,
        alembic_ops.DropTableOp,
        alembic_ops.CreateIndexOp,
        alembic_ops.ModifyTableOps,
    )
    for op in upgrade_ops.ops:
        if isinstance(op, table_ops) and _table_key(op.schema, op.table_name, default) in relations:
            continue
        kept.append(op)
    upgrade_ops.ops = kept


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


def plan_to_ops(plan: Plan, graph: Graph, state: DatabaseState) -> tuple[list[Any], list[Any]]:
    """(drop ops, create-and-refresh ops) of a plan, in execution order."""
    drops: list[Any] = []
    creates: list[Any] = []
    created = {a.key for a in plan.actions if a.verb is Verb.CREATE}
    for action in plan.actions:
        name = action.key.display()
        if action.verb is Verb.DROP:
            obj = state.managed[action.key]
            restore, restore_signature = None, None
            if obj.comment is not None and obj.signature is not None:
                restore_signature, restore = without_sql(obj.comment)
            declared = graph.nodes.get(action.key)
            with_data = action.kind == Kind.MATVIEW.value and (declared.with_data if declared else True)
            drops.append(
                DropSamizdatOp(
                    action.kind,
                    name,
                    obj.drop_statement(),
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
                    signature=signature_text(item, state.scope, include_sql=False, deps=graph.deps.get(item.key, ())),
                    drop=item.drop_statement(),
                    with_data=item.kind is Kind.MATVIEW and item.with_data,
                    grants="\n;\n".join(st for st in action.statements if st.startswith(("GRANT ", "REVOKE "))) or None,
                    reason=action.reason,
                )
            )
        elif action.verb is Verb.REPLACE:
            assert action.declared is not None
            item = action.declared
            obj = state.managed[action.key]
            restore, restore_signature = None, None
            if obj.comment is not None and obj.signature is not None:
                restore_signature, restore = without_sql(obj.comment)
            creates.append(
                ReplaceSamizdatOp(
                    item.kind.value,
                    name,
                    item.sql,
                    signature=signature_text(item, state.scope, include_sql=False, deps=graph.deps.get(item.key, ())),
                    drop=item.drop_statement(),
                    grants="\n;\n".join(st for st in action.statements if st.startswith(("GRANT ", "REVOKE "))) or None,
                    restore=restore,
                    restore_signature=restore_signature,
                    reason=action.reason,
                )
            )
        elif action.verb is Verb.GRANT:
            assert action.declared is not None
            obj = state.managed[action.key]
            to_grant, to_revoke, _ = grant_changes(action.declared, obj)
            undo = grant_statements(action.declared, to_revoke, to_grant)
            if obj.comment is not None:
                undo.append(f"COMMENT ON {obj.comment_target()} IS {quote_literal(obj.comment)}")
            creates.append(RegrantSamizdatOp(action.kind, name, action.sql, reverse_sql="\n;\n".join(undo) + "\n;"))
        elif action.key not in created:
            creates.append(RefreshSamizdatOp(name, action.sql))
    return drops, creates


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
    relations = {(k.schema, k.name) for k, item in graph.nodes.items() if item.kind.namespace == "relation"}
    _drop_view_mapped_tables(upgrade_ops, relations, default)
    force = _readers(graph, _altered_tables(upgrade_ops, default))
    # Signatures without their SQL first: that is all a revision needs unless it drops, recreates or re-grants
    # an object that exists (the downgrade restores it from the SQL its signature recorded). Then, and only
    # then, read again in full and plan from that, so the ops come from one consistent read.
    state = read_state(connection, registry.scope, graph.nodes)
    plan = plan_sync(graph, state, force=force)
    if any(action.key in state.managed for action in plan.actions):
        state = read_state(connection, registry.scope, graph.nodes, full_comments=True)
        # Replace in place, or rebuild: PostgreSQL is asked now, there and back (see execute.probe_in_place).
        plan = plan_asking_postgres(connection, graph, state, force=force, both_ways=True)
    for warning in plan.warnings:
        log.warning("samizdat: %s", warning)
    drops, creates = plan_to_ops(plan, graph, state)
    for op in drops + creates:
        log.info("Detected %s of %s %s", type(op).__name__.removesuffix("SamizdatOp").lower(), op_kind(op), op.name)
    upgrade_ops.ops[:0] = drops
    upgrade_ops.ops.extend(creates)
    return _continue()


def op_kind(op: Any) -> str:
    """The kind an op acts on, for log lines."""
    return str(getattr(op, "kind", "matview"))


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
    except ImportError:
        # Before 1.18 comparators run in registration order, and Alembic's own were registered first.
        comparators.dispatch_for("schema")(compare_samizdats)
