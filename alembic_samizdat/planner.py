"""The planner: declared graph × database state → differences and an ordered plan. Pure: no I/O.

Rules: a changed view, function or trigger is replaced in place (``CREATE OR REPLACE``), its dependents
untouched; when that cannot be (a materialized view, a kind change, or PostgreSQL refusing the replacement,
see :func:`plan_sync`'s ``rebuild``) the object is dropped and recreated with everything that depends on it
(through ``deps_on`` and through the catalog's dependency edges), drops and creates of one stack forming one
unit (see :func:`checkpoint_units`); drops never cascade, so an object we do not manage that depends on one we
must drop stops the plan before anything changes; a declared name taken by an object we did not sign stops it
too. A changed materialized view is built beside the old one and swapped in (see :mod:`~alembic_samizdat.swap`)
when nothing below it changes too; a materialized view that is recreated while it held rows is populated in its
stack's unit, so it is never seen unpopulated. Materialized views that are new, or found unpopulated, are
refreshed last, in dependency order.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum

from . import statements as stmt
from .catalog import DatabaseState, DbObject
from .compat.dbsamizdat_format import HASH_PREFIX, dbsamizdat_hash, is_dbsamizdat
from .declared import Declared
from .errors import NameClashError, UnmanagedDependentError
from .graph import Graph, reachable, topological_order
from .keys import Key, Kind, in_arguments, normalize_signature
from .preserve import capture_statement, restore_statement
from .signature import (
    clear_stale_statement,
    definition_hash,
    mark_stale_statement,
    shown_scope,
    sign_statement,
    signature_text,
)
from .swap import SWAPPED, Build, build_beside


class Verb(StrEnum):
    """What an action does."""

    DROP = "drop"
    CREATE = "create"
    #: ``CREATE OR REPLACE``: the object keeps its identity and its dependents stay as they are.
    REPLACE = "replace"
    REFRESH = "refresh"
    GRANT = "grant"
    ADOPT = "adopt"
    #: Build and populate a changed materialized view beside the old one (see :mod:`alembic_samizdat.swap`);
    #: its ``create`` then moves it into place.
    BUILD = "build"


class DiffKind(StrEnum):
    """How one object differs between code and database."""

    EXCESS_DB = "excess in the database"
    EXCESS_CODE = "missing from the database"
    CHANGED = "changed"
    DRIFTED = "changed by hand since it was signed"
    UNPOPULATED = "not populated"
    GRANTS = "grants differ"
    ADOPTABLE = "signed by DBSamizdat, unchanged"


@dataclass(frozen=True)
class Difference:
    """One object that differs, and why."""

    what: DiffKind
    key: Key
    kind: str
    label: str
    #: What else a reader should know, e.g. that an object of this name is DBSamizdat's.
    note: str = ""

    def describe(self) -> str:
        """A line for humans: ``changed view "public"."v" (module.V)``."""
        note = f"; {self.note}" if self.note else ""
        return f"{self.what.value}: {self.kind} {self.key.display()} ({self.label}){note}"


@dataclass(frozen=True)
class Action:
    """One step of a plan; its statements run together (one round trip, one transaction at checkpoints)."""

    verb: Verb
    key: Key
    kind: str
    label: str
    statements: tuple[str, ...]
    reason: str
    declared: Declared | None = None
    #: A drop that first captures what users attached to the object (see preserve.py), to restore at its create.
    captures: bool = False
    #: Actions sharing a unit number commit together under ``checkpoint`` (see :func:`checkpoint_units`).
    unit: int | None = None
    #: The object whose recreate or drop brings this one along (``None`` when the object itself differs).
    cause: Key | None = None
    # What the fronts need besides the statements (the Alembic comparator maps these to operations):
    #: The object as the catalog has it, for drops, replacements and re-grants.
    old: DbObject | None = None
    #: The object's ``DROP`` statement: for a drop, the one it runs; for a create or a replacement, the one
    #: that undoes it.
    drop: str | None = None
    #: The GRANT and REVOKE statements among ``statements``.
    grants: tuple[str, ...] = ()
    #: For a re-grant: the GRANT and REVOKE statements that undo it.
    undo: tuple[str, ...] = ()
    #: The signature scope and resolved dependencies the object is signed with (see :meth:`signature`).
    scope: str | None = None
    deps: tuple[Key, ...] = ()

    @property
    def sql(self) -> str:
        """The statements as one batch."""
        return "\n;\n".join(self.statements) + "\n;"

    def signature(self) -> str | None:
        """The signature the object gets, without its SQL (as a revision stores it); ``None`` for drops."""
        if self.declared is None or self.scope is None:
            return None
        return signature_text(self.declared, self.scope, include_sql=False, deps=self.deps)

    def describe(self) -> str:
        """``create view "public"."v" (module.V): missing from the database``."""
        label = f" ({self.label})" if self.label else ""
        return f"{self.verb.value} {self.kind} {self.key.display()}{label}: {self.reason}"


@dataclass(frozen=True)
class Plan:
    """The differences found and the ordered actions that remove them."""

    differences: tuple[Difference, ...]
    actions: tuple[Action, ...]
    warnings: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.actions)

    def script(self) -> str:
        """A self-contained SQL script of the plan, for ``psql -1 -f`` on a database in the same state."""
        lines = [f"-- alembic-samizdat plan: {len(self.actions)} action(s)"]
        for action in self.actions:
            lines.append(f"\n-- {action.describe()}")
            lines.append(action.sql)
        return "\n".join(lines) + "\n"


def _label(declared: Declared | None, obj: DbObject | None) -> str:
    if declared is not None:
        return declared.label
    return "no longer declared" if obj is not None else "?"


def _stale(obj: DbObject) -> bool:
    return obj.signature is not None and obj.signature.stale


def _signed_deps(obj: DbObject) -> tuple[Key, ...]:
    return obj.signature.deps if obj.signature is not None else ()


def _signature_matches(obj: DbObject, declared: Declared) -> bool:
    return obj.signature is not None and obj.signature.hash == definition_hash(declared)


def _clashes(graph: Graph, state: DatabaseState) -> list[str]:
    problems = []
    for other in state.others:
        for key in declared_hits(graph, other):
            if key in state.managed:
                continue
            item = graph.nodes[key]
            if not other.trusted and other.comment is not None and other.malformed is not None:
                owner = (
                    f"it carries a signature but is owned by role {other.owner!r}, whose privileges the running role "
                    "does not have, so it is not trusted as ours (anyone can copy a signature onto their own object)"
                )
                fix = "if it is yours, run as a member of its owner's role; otherwise drop it or use another name"
            elif other.signature is not None:
                owner = f"it is signed by scope {other.signature.scope!r}"
                fix = "use another name, or sync it from that scope's registry"
            elif is_dbsamizdat(other.comment):
                owner = "it is signed by DBSamizdat"
                fix = "take DBSamizdat's objects over with `samizdat sync --adopt dbsamizdat` (API: adopt='dbsamizdat')"
            elif other.malformed is not None:
                owner = f"its comment looks like our signature but cannot be read ({other.malformed})"
                fix = "fix or remove the comment (COMMENT ON … IS NULL) if the object is yours to replace"
            else:
                owner = "we did not create it (it has no signature)"
                fix = "rename one of them, or drop the existing object yourself if it should be replaced"
            problems.append(
                f"{item.label} wants {item.key.display()}, but {other.describe()} exists and {owner}; {fix}"
            )
    return problems


def _as_function_identity(printed: str) -> str:
    """A procedure's identity arguments as PostgreSQL prints a function's: without ``IN`` and without the OUT
    arguments (PostgreSQL prints every mode of a procedure's arguments, and its OUT ones, since version 14)."""
    kept = [arg.removeprefix("in ") for arg in printed.split(", ") if not arg.startswith("out ")]
    return ", ".join(kept)


def declared_hits(graph: Graph, other: DbObject) -> list[Key]:
    key = other.key
    if key.namespace == "relation":
        hit = Key("relation", key.schema, key.name)
        return [hit] if hit in graph.nodes else []
    if key.namespace == "trigger":
        return [key] if key in graph.nodes else []
    printed = normalize_signature(other.identity_args).lower()
    if other.kind == "procedure":
        printed = _as_function_identity(printed)
    # PostgreSQL 14+ prints a function's OUT arguments too; the declared signature holds the input ones only.
    forms = (printed, in_arguments(printed))
    return [
        k
        for k in graph.nodes
        if k.namespace == "function" and (k.schema, k.name) == (key.schema, key.name) and k.extra.lower() in forms
    ]


def grant_changes(
    item: Declared, obj: DbObject | None
) -> tuple[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...], bool]:
    """(to grant, to revoke, signature to update) for a declared object as it is in the database.

    Only grants this registry declared (now, or when it signed the object) are ever revoked; any other grant
    is left alone.
    """
    if not item.grants and (obj is None or obj.signature is None or not obj.signature.grants):
        return (), (), False  # nothing declared, now or when signed: the common case, answered at once
    desired = set(item.grants)
    previous = set(obj.signature.grants) if obj is not None and obj.signature is not None else set()
    if obj is None or obj.grants is None:
        return tuple(sorted(desired)), (), False
    current = set(obj.grants)
    return tuple(sorted(desired - current)), tuple(sorted((previous - desired) & current)), previous != desired


def grant_statements(
    item: Declared, to_grant: Iterable[tuple[str, str]], to_revoke: Iterable[tuple[str, str]]
) -> list[str]:
    """GRANT / REVOKE statements for ``item``."""
    out = [stmt.grant(item.kind, item.key, role, privilege) for role, privilege in to_grant]
    out += [stmt.revoke(item.kind, item.key, role, privilege) for role, privilege in to_revoke]
    return out


#: How a reason reads after the name of the object that caused a dependent's recreate.
_ROOT_PHRASES = {
    DiffKind.CHANGED.value: "changed",
    DiffKind.DRIFTED.value: "was changed by hand in the database (drift)",
    DiffKind.EXCESS_DB.value: "is dropped (no longer declared)",
    "reads a table that this migration alters": "reads a table that this migration alters",
}

#: Said of a declared object whose name an object signed by DBSamizdat holds.
DBSAMIZDAT_NOTE = (
    "the database holds DBSamizdat's object of this name: `samizdat sync --adopt dbsamizdat` takes it over"
)


def diff(graph: Graph, state: DatabaseState) -> list[Difference]:
    """The objects that differ between code and database, in a stable order."""
    out: list[Difference] = []
    theirs = {k for other in state.others if is_dbsamizdat(other.comment) for k in declared_hits(graph, other)}
    for key in graph.order:
        item = graph.nodes[key]
        obj = state.managed.get(key)
        if obj is None:
            note = DBSAMIZDAT_NOTE if key in theirs else ""
            out.append(Difference(DiffKind.EXCESS_CODE, key, item.kind.value, item.label, note))
        elif obj.signature is not None and obj.signature.hash.startswith(HASH_PREFIX):
            same = obj.signature.hash == HASH_PREFIX + (dbsamizdat_hash(item.source) or "")
            # DBSamizdat's hash leaves is_constraint out (it compares it apart): a flipped one is a change.
            same = same and obj.constraint_trigger == item.is_constraint
            out.append(Difference(DiffKind.ADOPTABLE if same else DiffKind.CHANGED, key, item.kind.value, item.label))
        elif not _signature_matches(obj, item):
            out.append(Difference(DiffKind.CHANGED, key, item.kind.value, item.label))
        elif obj.drifted:
            out.append(Difference(DiffKind.DRIFTED, key, item.kind.value, item.label))
        elif item.kind is Kind.MATVIEW and ((not obj.populated and item.with_data) or _stale(obj)):
            out.append(Difference(DiffKind.UNPOPULATED, key, item.kind.value, item.label))
        elif grant_changes(item, obj) != ((), (), False):
            out.append(Difference(DiffKind.GRANTS, key, item.kind.value, item.label))
    for key in sorted(state.managed):
        if key not in graph.nodes:
            out.append(Difference(DiffKind.EXCESS_DB, key, state.managed[key].kind, "no longer declared"))
    return out


def in_sync(graph: Graph, state: DatabaseState) -> bool:
    """Whether :func:`plan_sync` would have nothing to do (and nothing to refuse), without building the plan.

    Every action of a plan answers a difference (a refresh too: an unpopulated or stale view is one), so no
    differences and no clashes mean an empty plan; working that out costs a fraction of planning a big change.
    """
    return not _clashes(graph, state) and not diff(graph, state)


def outcomes(plan: Plan) -> dict[Key, str]:
    """What the next sync does about each object that differs, in a phrase: replaced in place, or recreated
    (and why), with how many objects above it come along; for ``diff``."""
    along: dict[Key, int] = defaultdict(int)
    by_key: dict[Key, dict[Verb, Action]] = defaultdict(dict)
    for action in plan.actions:
        by_key[action.key][action.verb] = action
        if action.verb is Verb.DROP and action.cause is not None:
            along[action.cause] += 1
    found: dict[Key, str] = {}
    for difference in plan.differences:
        key = difference.key
        verbs = by_key.get(key, {})
        tail = f"; {along[key]} object(s) above it recreated with it" if along.get(key) else ""
        if Verb.REPLACE in verbs:
            found[key] = (
                "replaced in place, objects that depend on it untouched, if PostgreSQL accepts the new definition "
                "(`samizdat explain` asks it)"
            )
        elif Verb.BUILD in verbs:
            found[key] = f"recreated: built beside the old one and swapped in{tail}"
        elif Verb.CREATE in verbs and Verb.DROP in verbs:
            why = verbs[Verb.CREATE].reason
            because = why.partition("; recreated because ")[2] or _REBUILT_KINDS.get(difference.kind, "")
            found[key] = f"recreated ({because}){tail}" if because else f"recreated{tail}"
        elif Verb.DROP in verbs:
            found[key] = f"dropped{tail}"
        elif Verb.CREATE in verbs:
            found[key] = "created"
    return found


#: Why a kind is recreated rather than replaced, when PostgreSQL was not asked.
_REBUILT_KINDS = {
    Kind.MATVIEW.value: "a materialized view cannot be replaced in place",
}


#: Why an object is replaced in place (shown by ``sync -v`` and in revisions).
REPLACED_IN_PLACE = "replaced in place, objects that depend on it untouched"


def in_place_candidates(graph: Graph, state: DatabaseState, differences: Iterable[Difference]) -> set[Key]:
    """Changed objects that ``CREATE OR REPLACE`` may replace (PostgreSQL has the last word when it runs)."""
    out = set()
    for d in differences:
        if d.what not in (DiffKind.CHANGED, DiffKind.DRIFTED):
            continue
        item = graph.nodes[d.key]
        obj = state.managed[d.key]
        # A constraint trigger cannot become a plain one (or the reverse) by CREATE OR REPLACE.
        if item.replace_sql is not None and obj.kind == item.kind.value and not obj.constraint_trigger:
            out.add(d.key)
    return out


def plan_sync(
    graph: Graph,
    state: DatabaseState,
    *,
    force: Iterable[Key] = (),
    rebuild: Mapping[Key, str] | None = None,
    in_place: bool = True,
    swap: bool = True,
) -> Plan:
    """The plan that makes the database match ``graph``; raises before anything when it cannot be done safely.

    ``force`` names managed objects to drop and recreate even when unchanged (with their dependents), e.g.
    because a migration alters a table they read. ``rebuild`` names changed objects that must be dropped and
    recreated rather than replaced in place, with the reason (PostgreSQL refused ``CREATE OR REPLACE``);
    ``in_place=False`` rebuilds every changed object; ``swap=False`` rebuilds a changed materialized view
    without building it beside the old one first.
    """
    clashes = _clashes(graph, state)
    if clashes:
        raise NameClashError("; ".join(clashes))
    differences = diff(graph, state)
    managed = state.managed
    by_ref = state.managed_by_ref()

    def catalog_dependents(key: Key) -> list[Key]:
        return [by_ref[d.ref].key for d in state.dependents.get(managed[key].ref, ()) if d.ref in by_ref]

    start = {d.key for d in differences if d.what in (DiffKind.CHANGED, DiffKind.DRIFTED, DiffKind.EXCESS_DB)}
    reasons: dict[Key, str] = {d.key: d.what.value for d in differences}
    #: How each object itself differs, for the reasons of what is dropped because of it.
    differs = dict(reasons)
    for key, why in (rebuild or {}).items():
        if key in start:
            reasons[key] = f"{reasons[key]}; recreated because {why}"
    for key in force:
        if key in managed and key not in start:
            start.add(key)
            reasons[key] = "reads a table that this migration alters"
    candidates = in_place_candidates(graph, state, differences) - set(force) - set(rebuild or ()) if in_place else set()
    start -= candidates

    causes: dict[Key, Key] = {}

    def root_reason(key: Key) -> str:
        seen = {key}
        while key in causes and causes[key] not in seen:
            key = causes[key]
            seen.add(key)
        own = differs.get(key, reasons[key])
        return f"{key.display()} {_ROOT_PHRASES.get(own, own)}"

    def drop_next(key: Key) -> list[Key]:
        declared_deps = [d for d in graph.dependents.get(key, ()) if d in managed]
        found = declared_deps + catalog_dependents(key)
        for dep in found:
            if dep not in reasons:
                causes[dep] = key
                via = "" if key not in causes else ", which is recreated too"
                reasons[dep] = f"recreated because {root_reason(key)} (it depends on {key.display()}{via})"
        return found

    to_drop = start | reachable(start, drop_next)
    while True:
        # A candidate whose old definition read something dropped here (PostgreSQL records no dependency for
        # the calls in a SQL function's body) goes with it, so that no order leaves it calling a missing object.
        tied = {k for k in candidates - to_drop if set(_signed_deps(managed[k])) & to_drop}
        if not tied:
            break
        to_drop |= tied | reachable(tied, drop_next)
    # A candidate that something below it makes recreate anyway is recreated with it.
    replaced = candidates - to_drop
    # Materialized views above a replacement hold data of the old definition until refreshed: the replacement
    # marks them stale in its own transaction, so a run that stops before the refresh leaves it to the next.
    outdated = {
        k
        for k in reachable(replaced, lambda k: graph.dependents.get(k, ()))
        if graph.nodes[k].kind is Kind.MATVIEW and k in managed and k not in to_drop and managed[k].populated
    }
    # Dropped and created again: what users attached to them is captured and restored (preserve.py).
    recreated = {k for k in to_drop if k in graph.nodes and managed[k].keeps is not False}
    swaps = _swaps(graph, state, start - set(force) - set(rebuild or ()), to_drop | replaced) if swap else {}
    # Readers of a materialized view that held rows must never find it empty: populated in its stack's unit,
    # when every materialized view it reads is populated by then (else it is refreshed after them, as before).
    populate_in_unit: list[Key] = []
    ready: dict[Key, bool] = {}
    for k in graph.order:
        item = graph.nodes[k]
        below_ready = all(ready.get(d, True) for d in graph.deps.get(k, ()))
        if item.kind is not Kind.MATVIEW or k in swaps:
            ready[k] = below_ready
        elif k in to_drop or k not in managed:
            if k in to_drop and below_ready and item.with_data and managed[k].populated:
                populate_in_unit.append(k)
                ready[k] = True
            else:
                ready[k] = False
        else:
            ready[k] = managed[k].populated
    _refuse_unmanaged_dependents(to_drop, state, recreated)
    drop_deps: dict[Key, set[Key]] = defaultdict(set)
    for key in to_drop:
        for dep in catalog_dependents(key):
            if dep in to_drop:
                drop_deps[dep].add(key)
        for dep in graph.deps.get(key, ()):
            if dep in to_drop:
                drop_deps[key].add(dep)
        # What it depended on when signed: PostgreSQL records no dependency for calls in a SQL function's body,
        # and an object no longer declared has no deps_on left; a downgrade recreates in the reverse order.
        signed = managed[key].signature
        for dep in signed.deps if signed is not None else ():
            if dep in to_drop:
                drop_deps[key].add(dep)
    order = topological_order(to_drop, drop_deps)
    if order is None:
        # Declarations contradict the catalog; the catalog is what DROP obeys.
        catalog_only: dict[Key, set[Key]] = defaultdict(set)
        for key in to_drop:
            for dep in catalog_dependents(key):
                if dep in to_drop:
                    catalog_only[dep].add(key)
        order = topological_order(to_drop, catalog_only) or sorted(to_drop)
    adopts: list[Action] = [
        # Unchanged since DBSamizdat created it: only our signature replaces DBSamizdat's, nothing is dropped.
        Action(
            Verb.ADOPT,
            d.key,
            d.kind,
            d.label,
            (sign_statement(graph.nodes[d.key], state.scope, graph.deps.get(d.key, ())),),
            d.what.value,
        )
        for d in differences
        if d.what is DiffKind.ADOPTABLE and d.key not in to_drop
    ]
    drops: list[Action] = []
    for key in reversed(order):
        obj = managed[key]
        capture = capture_statement(obj.kind, obj.comment_target()) if key in recreated else None
        drops.append(
            Action(
                Verb.DROP,
                key,
                obj.kind,
                _label(graph.nodes.get(key), obj),
                (capture, obj.drop_statement()) if capture else (obj.drop_statement(),),
                reasons[key],
                captures=capture is not None,
                cause=causes.get(key),
                old=obj,
                drop=obj.drop_statement(),
            )
        )
    to_create = [k for k in graph.order if k not in managed or k in to_drop or k in replaced]
    # Creation follows deps_on, and also catalog edges that deps_on forgot (they were warned about).
    create_deps: dict[Key, set[Key]] = {k: set(graph.deps.get(k, ())) for k in to_create}
    for key in to_create:
        if key in managed:
            for dependent in catalog_dependents(key):
                if dependent in create_deps:
                    create_deps[dependent].add(key)
    to_create = topological_order(to_create, create_deps) or to_create
    scope = state.scope
    creates: list[Action] = []
    for key in to_create:
        item = graph.nodes[key]
        statements: tuple[str, ...]
        if key in replaced:
            assert item.replace_sql is not None
            # Grants, owner and whatever users attached stay with the object; only declared grants change.
            to_grant, to_revoke, _ = grant_changes(item, managed[key])
            above = sorted(reachable([key], lambda k: graph.dependents.get(k, ())) & outdated)
            grants = tuple(grant_statements(item, to_grant, to_revoke))
            statements = (
                item.replace_sql,
                sign_statement(item, scope, graph.deps.get(key, ())),
                *grants,
                *(mark_stale_statement(k) for k in above),
            )
            why = f"{reasons[key]}: {REPLACED_IN_PLACE}"
            creates.append(
                Action(
                    Verb.REPLACE,
                    key,
                    item.kind.value,
                    item.label,
                    statements,
                    why,
                    item,
                    old=managed[key],
                    drop=item.drop_statement(),
                    grants=grants,
                    scope=scope,
                    deps=tuple(graph.deps.get(key, ())),
                )
            )
            continue
        build = swaps.get(key)
        head = build.move_in(item) if build is not None else (item.sql,)
        statements = (*head, sign_statement(item, scope, graph.deps.get(key, ())))
        if key in recreated and capture_statement(managed[key].kind, managed[key].comment_target()):
            statements = (*statements, restore_statement(managed[key].comment_target()))
        grants = ()
        if item.grants or key in managed:
            # After the restore: declared grants win, grants no longer declared are revoked.
            old_signature = managed[key].signature if key in managed else None
            previous = set(old_signature.grants) if old_signature is not None else set()
            revoke = sorted(previous - set(item.grants))
            grants = tuple(grant_statements(item, item.grants, revoke))
            statements = (*statements, *grants)
        creates.append(
            Action(
                Verb.CREATE,
                key,
                item.kind.value,
                item.label,
                statements,
                f"{reasons[key]}: {SWAPPED}" if build is not None else reasons.get(key, "missing from the database"),
                item,
                cause=causes.get(key),
                drop=item.drop_statement(),
                grants=grants,
                scope=scope,
                deps=tuple(graph.deps.get(key, ())),
            )
        )
    builds = [
        Action(
            Verb.BUILD, key, Kind.MATVIEW.value, graph.nodes[key].label, build.statements(), SWAPPED, graph.nodes[key]
        )
        for key, build in swaps.items()
    ]
    populates = [
        Action(
            Verb.REFRESH,
            key,
            Kind.MATVIEW.value,
            graph.nodes[key].label,
            (refresh_statement(key),),
            "populate in the transaction that recreates it, so that readers never find it empty",
            graph.nodes[key],
        )
        for key in populate_in_unit
    ]
    actions = adopts + _by_unit(drops, creates, drop_deps, create_deps, builds, populates)
    creating = set(to_create)
    populated_in_unit = set(swaps) | set(populate_in_unit)
    # A view being refreshed makes every materialized view that reads it (through any chain) out of date.
    refreshed_below: dict[Key, bool] = {}
    for key in graph.order:
        item = graph.nodes[key]
        upstream = any(refreshed_below.get(d, False) for d in graph.deps.get(key, ()))
        # A view or function replaced in place changes what a materialized view above it holds.
        refreshed_below[key] = upstream or key in replaced
        if item.kind is not Kind.MATVIEW:
            continue
        if upstream and key not in creating and managed[key].populated and not _stale(managed[key]):
            actions.append(
                Action(
                    Verb.REFRESH,
                    key,
                    item.kind.value,
                    item.label,
                    (refresh_statement(key), clear_stale_statement(key))
                    if key in outdated
                    else (refresh_statement(key),),
                    "reads a materialized view refreshed, or an object replaced, below it",
                    item,
                )
            )
            refreshed_below[key] = True
            continue
        if not item.with_data and (key in creating or not managed[key].populated):
            continue
        if key in populated_in_unit:
            refreshed_below[key] = True
            continue
        if key in creating:
            why, statements = "populate after create", (refresh_statement(key),)
        elif not managed[key].populated:
            why, statements = "not populated (a refresh failed or never ran)", (refresh_statement(key),)
        elif _stale(managed[key]):
            why = "its last refresh failed"
            statements = (refresh_statement(key), clear_stale_statement(key))
        else:
            continue
        refreshed_below[key] = True
        actions.append(Action(Verb.REFRESH, key, item.kind.value, item.label, statements, why, item))
    for key in graph.order:
        item = graph.nodes[key]
        if key in creating or key not in managed:
            continue
        to_grant, to_revoke, resign = grant_changes(item, managed[key])
        if to_grant or to_revoke or resign:
            grants = tuple(grant_statements(item, to_grant, to_revoke))
            statements = (*grants, sign_statement(item, scope, graph.deps.get(key, ())))
            actions.append(
                Action(
                    Verb.GRANT,
                    key,
                    item.kind.value,
                    item.label,
                    statements,
                    "grants differ",
                    item,
                    old=managed[key],
                    grants=grants,
                    undo=tuple(grant_statements(item, to_revoke, to_grant)),
                    scope=scope,
                    deps=tuple(graph.deps.get(key, ())),
                )
            )
    return Plan(tuple(differences), tuple(actions), tuple(undeclared_dependency_warnings(graph, state)))


def _swaps(graph: Graph, state: DatabaseState, changed: set[Key], moving: set[Key]) -> dict[Key, Build]:
    """The changed materialized views to build beside the old ones: those that held rows and read nothing that
    changes in this run (the build reads what exists before the drops)."""
    found: dict[Key, Build] = {}
    for key in changed:
        item = graph.nodes.get(key)
        obj = state.managed.get(key)
        if item is None or obj is None or item.kind is not Kind.MATVIEW or obj.kind != Kind.MATVIEW.value:
            continue
        if not item.with_data or not obj.populated:
            continue
        below = reachable([key], lambda k: graph.deps.get(k, ()))
        if below & moving or set(_signed_deps(obj)) & moving:
            continue
        # The build reads what is below it now: an empty materialized view there would fail it.
        if any(
            graph.nodes[k].kind is Kind.MATVIEW and not (k in state.managed and state.managed[k].populated)
            for k in below
            if k in graph.nodes
        ):
            continue
        build = build_beside(item)
        if build is not None:
            found[key] = build
    return found


def _by_unit(
    drops: list[Action],
    creates: list[Action],
    drop_deps: Mapping[Key, Iterable[Key]],
    create_deps: Mapping[Key, Iterable[Key]],
    builds: Sequence[Action] = (),
    populates: Sequence[Action] = (),
) -> list[Action]:
    """Drops and creates regrouped so that each connected stack comes whole: its builds (see
    :mod:`~alembic_samizdat.swap`), its drops, its creates, then the populates of its materialized views.

    A stack is the objects linked by any ordering constraint of the plan (a drop that must precede another, a
    create that must follow another, the drop and the create of one object), so stacks can run in any order,
    and each one is a ``checkpoint`` unit: nothing of it is ever missing between two commits.
    """
    parent: dict[Key, Key] = {}

    def find(key: Key) -> Key:
        root = key
        while parent.get(root, root) != root:
            root = parent[root]
        while key != root:
            parent[key], key = root, parent.get(key, key)
        return root

    members = {a.key for a in drops} | {a.key for a in creates}
    for edges in (drop_deps, create_deps):
        for key in members:
            for dep in edges.get(key, ()):
                if dep in members:
                    parent[find(dep)] = find(key)
    numbers: dict[Key, int] = {}
    for action in drops + creates:
        numbers.setdefault(find(action.key), len(numbers))
    grouped: dict[int, list[Action]] = defaultdict(list)
    # Within a stack: builds first (before any lock that readers wait for), each list already in a valid order.
    for action in [*builds, *drops, *creates, *populates]:
        number = numbers[find(action.key)]
        grouped[number].append(replace(action, unit=number))
    return [action for number in sorted(grouped) for action in grouped[number]]


def checkpoint_units(actions: Sequence[Action]) -> list[tuple[Action, ...]]:
    """The actions grouped into the transactions of the ``checkpoint`` discipline.

    Actions of one stack (same ``unit``: a replaced object and everything that had to be dropped for it)
    commit together, so a reader never finds an object missing between a drop and its create, and a failure
    leaves whole stacks. Other actions (refreshes, grants) are their own transaction. A captured drop is
    also held to its create when actions carry no unit: what was captured lives in the session, so a session
    that died between the two would lose it.
    """
    ends: dict[Key, int] = {}
    for index, action in enumerate(actions):
        if action.verb is Verb.CREATE:
            ends[action.key] = index
    units: list[tuple[Action, ...]] = []
    index = 0
    while index < len(actions):
        end, probe = index, index
        while probe <= end:
            inner = actions[probe]
            if inner.unit is not None:
                while end + 1 < len(actions) and actions[end + 1].unit == inner.unit:
                    end += 1
            if inner.verb is Verb.DROP and inner.captures:
                # Grow the span until no capture inside it is restored after it.
                end = max(end, ends.get(inner.key, probe))
            probe += 1
        units.append(tuple(actions[index : end + 1]))
        index = end + 1
    return units


def refresh_statement(key: Key, *, concurrently: bool = False) -> str:
    """``REFRESH MATERIALIZED VIEW [CONCURRENTLY] "s"."v"``."""
    return stmt.refresh(key.schema, key.name, concurrently=concurrently)


def _refuse_unmanaged_dependents(to_drop: Iterable[Key], state: DatabaseState, keeps: set[Key] | None = None) -> None:
    by_ref = state.managed_by_ref()
    problems = []
    for key in sorted(to_drop):
        obj = state.managed[key]
        for dep in state.dependents.get(obj.ref, ()):
            if dep.ref in by_ref:
                continue
            if dep.auto and dep.classid == "pg_trigger" and keeps and obj.key in keeps:
                continue  # a hand-made trigger on one of our views: captured before the drop, recreated after
            problems.append(f"{dep.description or _signed_elsewhere(state, dep.ref)} depends on {obj.describe()}")
    if problems:
        raise UnmanagedDependentError(
            "cannot proceed: these objects are not managed by this registry and would be dropped with objects "
            "that must be dropped or recreated: "
            + "; ".join(problems)
            + ". Nothing was changed. Drop them yourself (and recreate them afterwards), or declare them as "
            "samizdats in this registry"
        )


def _signed_elsewhere(state: DatabaseState, ref: tuple[str, int]) -> str:
    """A dependent signed by another scope (or tenant), which the catalog leaves undescribed."""
    other = next((o for o in state.others if o.ref == ref), None)
    if other is None or other.signature is None:
        return "an object signed by another scope"
    return f"{other.describe()} (signed by scope {shown_scope(other.signature.scope)})"


def undeclared_dependency_warnings(graph: Graph, state: DatabaseState) -> list[str]:
    """Catalog dependencies between managed objects that ``deps_on`` does not declare."""
    by_ref = state.managed_by_ref()
    out = []
    for key, obj in sorted(state.managed.items()):
        if key not in graph.nodes:
            continue
        for dep in state.dependents.get(obj.ref, ()):
            dependent = by_ref.get(dep.ref)
            if dependent is None or dependent.key not in graph.nodes:
                continue
            dkey = dependent.key
            if key in graph.deps.get(dkey, ()) or key in graph.ancestors([dkey]):
                continue
            out.append(
                f"{graph.nodes[dkey].label} depends on {graph.nodes[key].label} in the database, but its deps_on "
                f"does not say so; add {graph.nodes[key].label.rsplit('.', 1)[-1]} to its deps_on"
            )
    return out


def plan_nuke(state: DatabaseState) -> Plan:
    """Drop every object signed by this scope, dependents first; refuse when something unmanaged depends on one."""
    managed = state.managed
    _refuse_unmanaged_dependents(managed, state)
    by_ref = state.managed_by_ref()
    drop_deps: dict[Key, set[Key]] = defaultdict(set)
    for key, obj in managed.items():
        for dep in state.dependents.get(obj.ref, ()):
            if dep.ref in by_ref:
                drop_deps[by_ref[dep.ref].key].add(key)
    order = topological_order(managed, drop_deps) or sorted(managed)
    differences = tuple(Difference(DiffKind.EXCESS_DB, k, managed[k].kind, "nuke") for k in sorted(managed))
    actions = tuple(
        Action(Verb.DROP, k, managed[k].kind, "", (managed[k].drop_statement(),), f"nuke of scope {state.scope!r}")
        for k in reversed(order)
    )
    return Plan(differences, actions)
