"""Choosing which materialized views to refresh, how, and in which order (pure; O(V+E)).

The I/O lives in :mod:`alembic_samizdat.refresher`; this module decides selection (``belownodes``), the
``CONCURRENTLY`` mode of each view, and the DAG schedule that both the threaded and the asyncio runners use.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from .errors import ConcurrentRefreshError, UnknownNodeError
from .graph import Graph, reachable
from .keys import Key, Kind
from .planner import Action, Verb, refresh_statement
from .signature import clear_stale_statement

#: A node given to ``belownodes``: a samizdat or table name, ``schema.name``, or a (schema, name) tuple.
NodeRef = str | tuple[str, str]


class Concurrently(StrEnum):
    """When to use ``REFRESH … CONCURRENTLY``."""

    #: When the class sets ``refresh_concurrently`` and PostgreSQL allows it; otherwise plain, with a note.
    AUTO = "auto"
    #: For every selected view; an error (before any refresh) when one cannot be.
    ALWAYS = "always"
    #: Never.
    NEVER = "never"


@dataclass(frozen=True)
class ViewState:
    """What the catalog says about a materialized view, as far as refreshing goes."""

    populated: bool
    #: Has a unique index on plain columns without a predicate (what CONCURRENTLY needs).
    unique_index: bool
    #: A refresh failed since the last successful one (the signature says so).
    stale: bool = False

    @property
    def can_refresh_concurrently(self) -> bool:
        """Whether PostgreSQL accepts ``REFRESH … CONCURRENTLY`` on it now."""
        return self.populated and self.unique_index


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
    """Materialized views depending, directly or transitively, on any of ``nodes`` (themselves included when
    they are materialized views); dependency order. Tables link to the samizdats that read them through
    ``deps_on_unmanaged``, ``refresh_triggers`` and trigger tables.
    """
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
                "(through deps_on_unmanaged, refresh_triggers or a trigger's table); give a name or schema.name"
            )
    selected = starts | reachable(starts, lambda k: graph.dependents.get(k, ()))
    return [k for k in graph.order if k in selected and graph.nodes[k].kind is Kind.MATVIEW]


def all_matviews(graph: Graph) -> list[Key]:
    """Every materialized view, dependency order."""
    return [k for k in graph.order if graph.nodes[k].kind is Kind.MATVIEW]


def choose_concurrently(
    graph: Graph, keys: Iterable[Key], states: Mapping[Key, ViewState], mode: Concurrently
) -> tuple[dict[Key, bool], list[str]]:
    """For each view: refresh concurrently or not; plus notes on requests that could not be honoured."""
    chosen: dict[Key, bool] = {}
    notes: list[str] = []
    refused: list[str] = []
    for key in keys:
        state = states.get(key, ViewState(populated=False, unique_index=False))
        wanted = mode is Concurrently.ALWAYS or (mode is Concurrently.AUTO and graph.nodes[key].refresh_concurrently)
        why = "it is not populated yet" if not state.populated else "it has no unique index on plain columns"
        if wanted and not state.can_refresh_concurrently:
            if mode is Concurrently.ALWAYS:
                refused.append(f"{graph.nodes[key].label} ({why})")
            else:
                notes.append(f"{graph.nodes[key].label}: refreshed without CONCURRENTLY because {why}")
        chosen[key] = wanted and state.can_refresh_concurrently
    if refused:
        raise ConcurrentRefreshError(
            "cannot refresh concurrently: "
            + "; ".join(refused)
            + ". Add a unique index on plain columns to the template (after ${postamble}) and populate the view "
            "first, or use --concurrently auto. Nothing was refreshed"
        )
    return chosen, notes


def refresh_action(graph: Graph, key: Key, *, concurrently: bool, clear_stale: bool) -> Action:
    """One refresh; clearing the ``stale`` mark of an earlier failure in the same transaction."""
    statements = [refresh_statement(key, concurrently=concurrently)]
    if clear_stale:
        statements.append(clear_stale_statement(key))
    return Action(Verb.REFRESH, key, Kind.MATVIEW.value, graph.nodes[key].label, tuple(statements), "refresh")


class Schedule:
    """The DAG of the selected views: a view is ready once every selected view it reads (directly or through
    unselected objects) is done. Shared by the threaded and the asyncio runners.
    """

    def __init__(self, graph: Graph, keys: Iterable[Key]) -> None:
        selected = set(keys)
        self.order = [k for k in graph.order if k in selected]
        # Nearest selected ancestors, propagated in topological order: O(V+E) set unions.
        nearest: dict[Key, frozenset[Key]] = {}
        for key in graph.order:
            found: set[Key] = set()
            for dep in graph.deps.get(key, ()):
                found |= {dep} if dep in selected else nearest.get(dep, frozenset())
            nearest[key] = frozenset(found)
        self.waits_for = {k: set(nearest[k]) for k in self.order}
        self.unblocks: dict[Key, list[Key]] = defaultdict(list)
        for key in self.order:
            for dep in self.waits_for[key]:
                self.unblocks[dep].append(key)
        self._pending = {k: len(self.waits_for[k]) for k in self.order}
        self._position = {k: i for i, k in enumerate(self.order)}
        self.ready: list[Key] = [k for k in self.order if self._pending[k] == 0]

    def done(self, key: Key) -> list[Key]:
        """Record ``key`` as refreshed; return views that became ready (in dependency order)."""
        newly = []
        for child in self.unblocks.get(key, ()):
            self._pending[child] -= 1
            if self._pending[child] == 0:
                newly.append(child)
        newly.sort(key=self._position.__getitem__)
        return newly

    def blocked_by(self, failed: Iterable[Key]) -> list[Key]:
        """Views that can no longer run because they read (transitively) a failed view."""
        out = reachable(failed, lambda k: self.unblocks.get(k, ()))
        return [k for k in self.order if k in out]
