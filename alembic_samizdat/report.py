"""Machine-readable reports (``--format json``) and plan explanations (``samizdat explain``).

Every report is one JSON document described by ``report.schema.json`` (shipped in the package; see
:func:`schema`). The old SQL of an object comes from the ``sql`` field of its signature, and only from
signatures the catalog trusts (on objects whose owner the running role has the privileges of); nothing read from
the database is ever run.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, TextIO

from sqlalchemy import Connection, Engine

from .catalog import DatabaseState, read_state
from .execute import plan_asking_postgres
from .graph import Graph
from .keys import Key
from .planner import Action, Difference, DiffKind, Plan, Verb, diff, undeclared_dependency_warnings
from .registry import SamizdatRegistry

#: The report format; bump on an incompatible change (new optional fields are compatible).
VERSION = 1
FORMAT = "alembic-samizdat.report"

#: The action a sync takes for each kind of difference.
ACTION_OF_DIFFERENCE = {
    DiffKind.EXCESS_DB: "drop",
    DiffKind.EXCESS_CODE: "create",
    DiffKind.CHANGED: "recreate",
    DiffKind.DRIFTED: "recreate",
    DiffKind.UNPOPULATED: "refresh",
    DiffKind.GRANTS: "grant",
    DiffKind.ADOPTABLE: "adopt",
}

#: Stable names of the kinds of difference (the human texts may change; these do not).
DIFFERENCE_NAMES = {
    DiffKind.EXCESS_DB: "excess_in_database",
    DiffKind.EXCESS_CODE: "missing_from_database",
    DiffKind.CHANGED: "changed",
    DiffKind.DRIFTED: "drifted",
    DiffKind.UNPOPULATED: "unpopulated",
    DiffKind.GRANTS: "grants",
    DiffKind.ADOPTABLE: "adoptable",
}


def schema() -> dict[str, Any]:
    """The JSON Schema of every report (``alembic_samizdat/report.schema.json``)."""
    text = resources.files(__package__).joinpath("report.schema.json").read_text(encoding="utf-8")
    loaded: dict[str, Any] = json.loads(text)
    return loaded


def read_full_state(connection: Connection, registry: SamizdatRegistry, graph: Graph | None) -> DatabaseState:
    """The database state with the SQL recorded in trusted signatures, read in a transaction rolled back after."""
    began = not connection.in_transaction()
    try:
        return read_state(
            connection,
            registry.scope,
            graph.nodes if graph is not None else (),
            full_comments=True,
            trusted_owners=registry.trusted_owners,
        )
    finally:
        if began and connection.in_transaction():
            connection.rollback()


def old_sql(state: DatabaseState) -> dict[Key, str]:
    """The SQL each managed object was created from, as its (trusted) signature records it."""
    out: dict[Key, str] = {}
    for key, obj in state.managed.items():
        if obj.trusted and obj.signature is not None and obj.signature.sql is not None:
            out[key] = obj.signature.sql
    return out


def _identity(key: Key) -> dict[str, str]:
    return {"namespace": key.namespace, "schema": key.schema, "name": key.name, "extra": key.extra}


def _object(
    key: Key,
    kind: str,
    label: str,
    action: str,
    reason: str,
    *,
    difference: str | None = None,
    old: str | None = None,
    new: str | None = None,
    cause: Key | None = None,
    steps: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    return {
        "identity": _identity(key),
        "display": key.display(),
        "kind": kind,
        "label": label,
        "action": action,
        "reason": reason,
        "difference": difference,
        "cause": cause.display() if cause is not None else None,
        "old_sql": old,
        "new_sql": new,
        "steps": list(steps),
    }


def document(
    command: str,
    scope: str,
    objects: list[dict[str, Any]],
    *,
    exit_code: int = 0,
    dry_run: bool = False,
    committed: bool | None = None,
    warnings: Iterable[str] = (),
    notes: Iterable[str] = (),
) -> dict[str, Any]:
    """The top-level report."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "command": command,
        "scope": scope,
        "exit_code": exit_code,
        "dry_run": dry_run,
        "committed": committed,
        "objects": objects,
        "warnings": list(warnings),
        "notes": list(notes),
    }


def write(doc: Mapping[str, Any], out: TextIO) -> None:
    """One JSON document and a newline."""
    out.write(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    out.flush()


def diff_objects(differences: Iterable[Difference], graph: Graph, old: Mapping[Key, str]) -> list[dict[str, Any]]:
    """The objects of a diff, with the action a sync would take."""
    objects = []
    for d in differences:
        declared = graph.nodes.get(d.key)
        action = ACTION_OF_DIFFERENCE[d.what]
        objects.append(
            _object(
                d.key,
                d.kind,
                d.label,
                action,
                d.what.value + (f"; {d.note}" if d.note else ""),
                difference=DIFFERENCE_NAMES[d.what],
                old=old.get(d.key) if action in ("drop", "recreate") else None,
                new=declared.sql if declared is not None and action in ("create", "recreate") else None,
            )
        )
    return objects


@dataclass(frozen=True)
class DiffReport:
    """What ``diff --format json`` prints, with the exit code ``diff`` has."""

    document: dict[str, Any]
    exit_code: int


def diff_report(engine: Engine, registry: SamizdatRegistry) -> DiffReport:
    """Compare declarations and database (one catalog read) and build the report."""
    from .api import DiffResult

    graph = registry.graph()
    with engine.connect() as connection:
        state = read_full_state(connection, registry, graph)
    result = DiffResult(tuple(diff(graph, state)), tuple(undeclared_dependency_warnings(graph, state)))
    objects = diff_objects(result.differences, graph, old_sql(state))
    doc = document("diff", registry.scope, objects, exit_code=result.exit_code, warnings=result.warnings)
    return DiffReport(doc, result.exit_code)


def _step(action: Action, applied: bool | None) -> dict[str, Any]:
    return {"verb": action.verb.value, "reason": action.reason, "sql": action.sql, "applied": applied}


def plan_objects(plan: Plan, old: Mapping[Key, str], applied: Iterable[Action] | None = None) -> list[dict[str, Any]]:
    """One entry per object the plan touches, in the order of its first action; ``applied`` marks what ran."""
    done = None if applied is None else {id(a) for a in applied}
    differences = {d.key: d for d in plan.differences}
    grouped: dict[Key, list[Action]] = {}
    for action in plan.actions:
        grouped.setdefault(action.key, []).append(action)
    objects = []
    for key, actions in grouped.items():
        verbs = [a.verb for a in actions]
        verb = "recreate" if Verb.DROP in verbs and Verb.CREATE in verbs else verbs[0].value
        first = actions[0]
        declared = next((a.declared for a in actions if a.declared is not None), None)
        difference = differences.get(key)
        objects.append(
            _object(
                key,
                first.kind,
                first.label,
                verb,
                first.reason,
                difference=DIFFERENCE_NAMES[difference.what] if difference is not None else None,
                old=old.get(key) if Verb.DROP in verbs or Verb.REPLACE in verbs else None,
                new=declared.sql if declared is not None and (Verb.CREATE in verbs or Verb.REPLACE in verbs) else None,
                cause=first.cause,
                steps=[_step(a, None if done is None else id(a) in done) for a in actions],
            )
        )
    return objects


def refresh_objects(actions: Iterable[Action], concurrently: Mapping[Key, bool]) -> list[dict[str, Any]]:
    """The materialized views a refresh run refreshed."""
    out = []
    for action in actions:
        entry = _object(action.key, action.kind, action.label, "refresh", action.reason, steps=[_step(action, True)])
        entry["concurrently"] = concurrently.get(action.key, False)
        out.append(entry)
    return out


# --- explain --------------------------------------------------------------------------------------------------


def explain_plan(bind: Engine | Connection, registry: SamizdatRegistry) -> tuple[Plan, Graph, DatabaseState]:
    """The plan of the next sync, with the graph and the (full) state it came from; changes nothing."""
    graph = registry.graph()
    # PostgreSQL is asked which in-place replacements it accepts (tried and rolled back), as a sync does.
    if isinstance(bind, Engine):
        with bind.connect() as connection:
            state = read_full_state(connection, registry, graph)
            plan = plan_asking_postgres(connection, graph, state)
            connection.rollback()
    else:
        state = read_full_state(bind, registry, graph)
        plan = plan_asking_postgres(bind, graph, state)
    return plan, graph, state


def unified(old: str | None, new: str | None, name: str) -> str:
    """A unified diff of an object's SQL, as signed in the database and as declared now."""
    lines = difflib.unified_diff(
        (old or "").splitlines(keepends=True),
        (new or "").splitlines(keepends=True),
        fromfile=f"{name} (database)",
        tofile=f"{name} (declared)",
    )
    text = "".join(line if line.endswith("\n") else line + "\n" for line in lines)
    return text


def _headline(verbs: list[Verb], kind: str, key: Key, label: str) -> str:
    if Verb.DROP in verbs and Verb.CREATE in verbs:
        word = "recreated"
    else:
        word = {
            Verb.DROP: "dropped",
            Verb.CREATE: "created",
            Verb.REPLACE: "replaced in place",
            Verb.REFRESH: "refreshed",
            Verb.GRANT: "re-granted",
            Verb.ADOPT: "adopted",
        }[verbs[0]]
    named = f" ({label})" if label else ""
    return f"{kind} {key.display()}{named} is {word}"


def _why(action: Action, difference: Difference | None, graph: Graph, state: DatabaseState) -> str:
    if difference is None:
        return action.reason
    what = difference.what
    if what is DiffKind.EXCESS_DB:
        return "no longer declared"
    if what is DiffKind.EXCESS_CODE:
        return "missing from the database" + (f"; {difference.note}" if difference.note else "")
    if what is DiffKind.CHANGED:
        return "its declaration changed"
    if what is DiffKind.DRIFTED:
        return "changed by hand in the database since it was signed (drift)"
    if what is DiffKind.UNPOPULATED:
        return action.reason
    if what is DiffKind.GRANTS:
        obj = state.managed.get(action.key)
        declared = graph.nodes.get(action.key)
        have = sorted(obj.grants or ()) if obj is not None else []
        want = sorted(declared.grants) if declared is not None else []

        def shown(grants: list[tuple[str, str]]) -> str:
            return ", ".join(f"{privilege} to {role}" for role, privilege in grants) or "none"

        return f"grants differ: declared {shown(want)}; in the database {shown(have)}"
    return action.reason


def explain_text(plan: Plan, graph: Graph, state: DatabaseState, only: Sequence[str] = ()) -> str:
    """Why each object the plan touches is touched, with a diff of its SQL when it changed.

    ``only`` restricts the output to objects whose name, qualified name, display or class label is listed.
    """
    old = old_sql(state)
    differences = {d.key: d for d in plan.differences}
    grouped: dict[Key, list[Action]] = {}
    for action in plan.actions:
        grouped.setdefault(action.key, []).append(action)
    wanted = {w.strip() for w in only}
    blocks = []
    # Objects that differ themselves first, then what they bring along.
    ordered = sorted(grouped.items(), key=lambda item: item[1][0].cause is not None)
    for key, actions in ordered:
        first = actions[0]
        names = {key.name, f"{key.schema}.{key.name}", key.display(), first.label, first.label.rsplit(".", 1)[-1]}
        if wanted and not names & wanted:
            continue
        verbs = [a.verb for a in actions]
        lines = [_headline(verbs, first.kind, key, first.label)]
        difference = differences.get(key)
        lines.append(f"  because {_why(first, difference, graph, state)}")
        if first.cause is not None:
            reads = [d.display() for d in graph.deps.get(key, ()) if d in grouped]
            lines[-1] = f"  because {first.reason.removeprefix('recreated because ')}"
            if reads:
                lines.append(f"  it reads {', '.join(reads)}")
        for action in actions[1:]:
            if action.verb is Verb.REFRESH:
                lines.append(f"  then refreshed: {action.reason}")
            elif action.verb is Verb.GRANT:
                lines.append(f"  then re-granted: {action.reason}")
        declared = graph.nodes.get(key)
        if difference is not None and difference.what is DiffKind.CHANGED and declared is not None:
            if key in old:
                patch = unified(old[key], declared.sql, key.display())
                lines.append("")
                lines.extend("    " + line for line in patch.rstrip("\n").splitlines())
            else:
                lines.append("  (its previous SQL is not recorded in its signature)")
        blocks.append("\n".join(lines))
    if not blocks:
        return (
            "nothing to do: the database matches the declarations\n"
            if not wanted
            else "none of these objects is touched by the next sync\n"
        )
    for warning in plan.warnings:
        blocks.append(f"warning: {warning}")
    return "\n\n".join(blocks) + "\n"
