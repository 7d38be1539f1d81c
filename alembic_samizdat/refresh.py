"""Choosing which materialized views to refresh, and in which order (pure; O(V+E))."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from .errors import SamizdatError
from .graph import Graph, reachable
from .keys import Key, Kind
from .plan import Action, Verb, refresh_statement

#: A node given to ``belownodes``: a samizdat class name / table name, ``schema.name``, or a (schema, name) tuple.
NodeRef = str | tuple[str, str]


class UnknownNodeError(SamizdatError):
    """A ``belownodes`` entry names neither a samizdat nor a table that a samizdat reads."""


def _table_edges(graph: Graph) -> dict[tuple[str, str], list[Key]]:
    edges: dict[tuple[str, str], list[Key]] = defaultdict(list)
    for key, item in graph.nodes.items():
        for table in (*item.unmanaged, *item.refresh_triggers):
            edges[table].append(key)
        if item.trigger_table is not None:
            edges[item.trigger_table].append(key)
    return edges


def _candidates(ref: NodeRef) -> list[tuple[str, str]]:
    if isinstance(ref, tuple):
        return [ref]
    out = [("public", ref)]
    if "." in ref:
        schema, _, name = ref.partition(".")
        out.append((schema, name))
    return out


def select_below(graph: Graph, nodes: Iterable[NodeRef]) -> list[Key]:
    """Materialized views depending, directly or transitively, on any of ``nodes``; dependency order."""
    tables = _table_edges(graph)
    by_name: dict[tuple[str, str], list[Key]] = defaultdict(list)
    for key in graph.nodes:
        by_name[(key.schema, key.name)].append(key)
    starts: set[Key] = set()
    for ref in nodes:
        found = False
        for cand in _candidates(ref):
            if cand in by_name:
                starts.update(by_name[cand])
                found = True
            if cand in tables:
                starts.update(tables[cand])
                found = True
            if found:
                break
        if not found:
            raise UnknownNodeError(
                f"unknown node {ref!r}: no samizdat is called that and no samizdat reads a table of that name "
                "(through deps_on_unmanaged, refresh_triggers or a trigger's table); give a name, schema.name, "
                "or check the spelling"
            )
    selected = starts | reachable(starts, lambda k: graph.dependents.get(k, ()))
    return [k for k in graph.order if k in selected and graph.nodes[k].kind is Kind.MATVIEW]


def refresh_actions(graph: Graph, keys: Iterable[Key] | None = None) -> list[Action]:
    """Refresh actions for ``keys`` (default: every materialized view), in dependency order."""
    wanted = set(keys) if keys is not None else None
    return [
        Action(Verb.REFRESH, key, Kind.MATVIEW.value, graph.nodes[key].label, (refresh_statement(key),), "refresh")
        for key in graph.order
        if graph.nodes[key].kind is Kind.MATVIEW and (wanted is None or key in wanted)
    ]
