"""Tenant schemas under Alembic: one revision, applied to every tenant schema.

Autogenerate (``alembic -x tenants=PATTERN revision --autogenerate``) plans the TENANT classes against one
*representative* tenant (``-x tenant_representative=NAME``, else the first schema the pattern matches) and writes
their operations for the placeholder tenant :data:`~alembic_samizdat.tenants.PLACEHOLDER`; every other selected
tenant must need the very same operations, otherwise autogenerate (and so ``alembic check``) fails naming the
tenants that differ. ``alembic -x tenants=PATTERN upgrade head`` runs each such operation once per tenant, the
placeholder replaced by the tenant's name. Tenant names must be plain lowercase identifiers here (letters, digits,
``_``), which are spelt alike in SQL, literals and JSON.
"""

from __future__ import annotations

import copy
import logging
import re
import weakref
from collections.abc import Callable, Sequence
from typing import Any

from alembic.autogenerate.api import AutogenContext
from alembic.operations import MigrateOperation, Operations
from alembic.operations import ops as alembic_ops

from ..catalog import read_state
from ..errors import TenantError
from ..execute import plan_asking_postgres
from ..fleet import Tenants
from ..grouping import action_entries, grouped
from ..planner import Plan, plan_sync
from ..registry import SamizdatRegistry
from ..tenants import PLACEHOLDER
from . import ops
from .compare import _continue, find_registry, plan_to_ops

log = logging.getLogger("alembic.samizdat")

_QUOTED = f'"{PLACEHOLDER}"'
_PLAIN = re.compile(r"[a-z_][a-z0-9_]{0,62}\Z")
#: ``config.attributes`` keys that a program may set instead of ``-x`` arguments.
TENANTS_ATTRIBUTE = "samizdat_tenants"
REPRESENTATIVE_ATTRIBUTE = "samizdat_tenant_representative"


def _plain(name: str, where: str) -> str:
    if not _PLAIN.match(name):
        raise TenantError(
            f"{where} {name!r}: under Alembic, tenant schemas must be plain lowercase names (letters, digits, _); "
            "sync this one with `samizdat sync --tenant-schemas` instead"
        )
    return name


def requested(config: Any) -> tuple[tuple[str, ...], str | None]:
    """``(patterns, representative)`` from ``-x tenants=P1,P2`` / ``-x tenant_representative=NAME`` or from
    ``config.attributes``."""
    attributes = getattr(config, "attributes", {}) or {}
    patterns: tuple[str, ...] = ()
    representative: str | None = attributes.get(REPRESENTATIVE_ATTRIBUTE)
    given = attributes.get(TENANTS_ATTRIBUTE)
    if isinstance(given, str):
        patterns = tuple(p for p in given.split(",") if p)
    elif given is not None:
        patterns = tuple(given)
    for item in getattr(getattr(config, "cmd_opts", None), "x", None) or ():
        key, _, value = str(item).partition("=")
        if key == "tenants":
            patterns = tuple(p.strip() for p in value.split(",") if p.strip())
        elif key == "tenant_representative":
            representative = value.strip() or None
    return patterns, representative


def _swap(op: MigrateOperation, old: str, new: str) -> MigrateOperation:
    """A copy of ``op`` with the quoted name ``old`` replaced by ``new`` in every text it carries."""
    made = copy.copy(op)
    for name, value in vars(made).items():
        if isinstance(value, str) and old in value:
            setattr(made, name, value.replace(old, new))
    return made


def _for_tenants(op: MigrateOperation) -> bool:
    return any(isinstance(v, str) and _QUOTED in v for v in vars(op).values())


# The tenants of one migration run, found once (the pattern is matched when the first tenant operation runs).
_RESOLVED: weakref.WeakKeyDictionary[Any, list[str]] = weakref.WeakKeyDictionary()


def tenants_of(operations: Operations) -> list[str]:
    """The tenant schemas the running migration applies tenant operations to."""
    context = operations.migration_context
    found = _RESOLVED.get(context)
    if found is not None:
        return found
    patterns, _ = requested(context.config)
    if not patterns:
        raise TenantError(
            "this revision holds operations of TENANT classes: give the tenant schemas, e.g. "
            "`alembic -x tenants=tenant_% upgrade head` (LIKE patterns, comma-separated)"
        )
    if context.as_sql:
        # Offline there is no database to match patterns against: the names are taken as given.
        found = [_plain(p, "tenant schema") for p in patterns]
    else:
        found = [_plain(t, "tenant schema") for t in Tenants(patterns=patterns).resolve(operations.get_bind())]
        if not found:
            log.warning("samizdat: no schema matches -x tenants=%s: tenant operations skipped", ",".join(patterns))
    _RESOLVED[context] = found
    return found


def _per_tenant(original: Callable[[Operations, Any], None]) -> Callable[[Operations, Any], None]:
    def run(operations: Operations, op: Any) -> None:
        if not _for_tenants(op):
            original(operations, op)
            return
        for tenant in tenants_of(operations):
            original(operations, _swap(op, _QUOTED, f'"{tenant}"'))

    return run


def install() -> None:
    """Make every samizdat operation of a tenant run once per tenant (wrapping :mod:`.ops`' implementations)."""
    for op_class, implementation in (
        (ops.CreateSamizdatOp, ops._create),
        (ops.ReplaceSamizdatOp, ops._replace),
        (ops.DropSamizdatOp, ops._drop),
        (ops.RefreshSamizdatOp, ops._refresh),
        (ops.RegrantSamizdatOp, ops._regrant),
    ):
        # Written into the dispatcher directly: ``implementation_for(replace=True)`` needs Alembic 1.17.2.
        Operations._to_impl._registry[(op_class, "default")] = _per_tenant(implementation)


def _shape(plan: Plan, tenant: str) -> list[tuple[str, str, str, str]]:
    """What a plan does, with the tenant's name taken out: equal for two tenants needing the same revision."""
    return sorted(
        (a.verb.value, a.key.namespace, PLACEHOLDER if a.key.schema == tenant else a.key.schema, a.key.name)
        for a in plan.actions
    )


def compare_tenants(autogen_context: AutogenContext, upgrade_ops: alembic_ops.UpgradeOps, schemas: Any) -> Any:
    """Autogenerate comparator for the TENANT classes (after :func:`.compare.compare_samizdats`)."""
    registry = find_registry(autogen_context.metadata)
    connection = autogen_context.connection
    if registry is None or connection is None or not registry.tenant_classes():
        return _continue()
    if upgrade_ops in _DONE:
        return _continue()
    _DONE.add(upgrade_ops)
    config = autogen_context.migration_context.config
    patterns, representative = requested(config)
    if not patterns and representative is None:
        log.warning(
            "samizdat: %d TENANT class(es) left out: give -x tenants=PATTERN to autogenerate them",
            len(registry.tenant_classes()),
        )
        return _continue()
    tenants = Tenants(patterns=patterns).resolve(connection) if patterns else []
    chosen = representative or (tenants[0] if tenants else None)
    if chosen is None:
        raise TenantError(f"no schema matches -x tenants={','.join(patterns)}: no representative tenant to compare")
    chosen = _plain(chosen, "representative tenant")
    drops, creates, plan = _representative_ops(connection, registry, chosen)
    graph = registry.for_tenant(chosen).graph()
    for depth, line in grouped(action_entries(plan.actions, graph), graph):
        log.info("%s%s (every tenant, as in %s)", "    " * depth if depth else "Detected ", line, chosen)
    expected = _shape(plan, chosen)
    drifted = [t for t in tenants if t != chosen and _shape(_plan(connection, registry, t), t) != expected]
    if drifted:
        shown = ", ".join(drifted[:20]) + (f" and {len(drifted) - 20} more" if len(drifted) > 20 else "")
        raise TenantError(
            f"tenant schemas differ from the representative tenant {chosen}: {shown}. One revision fits tenants "
            "that are alike: bring them level first (`samizdat sync --tenant-schemas …`), or name another "
            "representative with -x tenant_representative=NAME"
        )
    upgrade_ops.ops[:0] = [_swap(op, f'"{chosen}"', _QUOTED) for op in drops]
    upgrade_ops.ops.extend(_swap(op, f'"{chosen}"', _QUOTED) for op in creates)
    return _continue()


_DONE: weakref.WeakSet[alembic_ops.UpgradeOps] = weakref.WeakSet()


def _plan(connection: Any, registry: SamizdatRegistry, tenant: str) -> Plan:
    own = registry.for_tenant(tenant)
    graph = own.graph()
    state = read_state(connection, own.scope, graph.nodes, trusted_owners=own.trusted_owners)
    return plan_sync(graph, state)


def _representative_ops(
    connection: Any, registry: SamizdatRegistry, tenant: str
) -> tuple[Sequence[Any], Sequence[Any], Plan]:
    own = registry.for_tenant(tenant)
    graph = own.graph()
    state = read_state(connection, own.scope, graph.nodes, trusted_owners=own.trusted_owners)
    first = plan_sync(graph, state)
    if any(action.key in state.managed for action in first.actions):
        state = read_state(connection, own.scope, graph.nodes, full_comments=True, trusted_owners=own.trusted_owners)
        plan = plan_asking_postgres(connection, graph, state, both_ways=True)
    else:
        plan = first
    drops, creates = plan_to_ops(plan, graph, state)
    return drops, creates, first


def register() -> None:
    """Install the per-tenant operations and register the comparator on Alembic's global registry."""
    install()
    from alembic.autogenerate import comparators

    try:
        from alembic.util import DispatchPriority

        comparators.dispatch_for("schema", priority=DispatchPriority.LAST)(compare_tenants)
    except ImportError:
        comparators.dispatch_for("schema")(compare_tenants)
