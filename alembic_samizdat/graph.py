"""The dependency graph of declared objects: resolve references, check them, order them.

Every check here runs before anything touches a database. Orders are deterministic (ties broken by identity)
and every query is O(V+E) (plus a log factor for the ordering heap).
"""

from __future__ import annotations

import heapq
import threading
from collections import OrderedDict, defaultdict, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from . import autorefresh, graph_cache
from .declared import Declared, declared_of, remember
from .errors import (
    CycleError,
    DanglingReferenceError,
    DeclarationError,
    DuplicateIdentityError,
    ManagedListedAsUnmanagedError,
    SelfDependencyError,
    TriggerTargetError,
)
from .identifiers import check_identifier, qualified
from .keys import Key, Kind, normalize_signature
from .model import Samizdat


def topological_order(nodes: Iterable[Key], deps: Mapping[Key, Iterable[Key]]) -> list[Key] | None:
    """Dependencies first; ties in identity order. ``None`` when ``deps`` has a cycle among ``nodes``.

    Edges to keys outside ``nodes`` are ignored, so the same helper orders any subset.
    """
    members = set(nodes)
    pending: dict[Key, int] = dict.fromkeys(members, 0)
    dependents: dict[Key, list[Key]] = defaultdict(list)
    for node in members:
        for dep in set(deps.get(node, ())):
            if dep in members and dep != node:
                pending[node] += 1
                dependents[dep].append(node)
    ready = [node for node, count in pending.items() if count == 0]
    heapq.heapify(ready)
    order: list[Key] = []
    while ready:
        node = heapq.heappop(ready)
        order.append(node)
        for child in dependents[node]:
            pending[child] -= 1
            if pending[child] == 0:
                heapq.heappush(ready, child)
    return order if len(order) == len(members) else None


def _find_cycle(nodes: Iterable[Key], deps: Mapping[Key, Iterable[Key]]) -> list[Key]:
    """One cycle among ``nodes`` (iterative DFS, so deep graphs cannot hit the recursion limit)."""
    state: dict[Key, int] = {}  # 1: on the stack, 2: done
    for start in sorted(nodes):
        if start in state:
            continue
        stack: list[tuple[Key, list[Key]]] = [(start, sorted(set(deps.get(start, ()))))]
        path = [start]
        state[start] = 1
        while stack:
            node, todo = stack[-1]
            if not todo:
                stack.pop()
                path.pop()
                state[node] = 2
                continue
            nxt = todo.pop()
            if nxt not in deps and nxt not in state:
                continue
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                stack.append((nxt, sorted(set(deps.get(nxt, ())))))
    return []


def reachable(starts: Iterable[Key], edges: Callable[[Key], Iterable[Key]]) -> set[Key]:
    """Every key reachable from ``starts`` (excluded unless reached again) by following ``edges``."""
    seen: set[Key] = set()
    queue = deque(starts)
    while queue:
        for nxt in edges(queue.popleft()):
            if nxt not in seen:
                seen.add(nxt)
                queue.append(nxt)
    return seen


@dataclass(frozen=True)
class Graph:
    """The checked dependency graph of one registry, generated sidekicks included."""

    nodes: Mapping[Key, Declared]
    #: For each node, the managed nodes it depends on.
    deps: Mapping[Key, tuple[Key, ...]]
    #: For each node, the managed nodes that depend on it.
    dependents: Mapping[Key, tuple[Key, ...]]
    #: Every node, dependencies first (deterministic).
    order: tuple[Key, ...]

    def ancestors(self, keys: Iterable[Key]) -> set[Key]:
        """Everything the given nodes depend on, directly or transitively."""
        return reachable(keys, lambda k: self.deps.get(k, ()))

    def descendants(self, keys: Iterable[Key]) -> set[Key]:
        """Everything that depends on the given nodes, directly or transitively."""
        return reachable(keys, lambda k: self.dependents.get(k, ()))

    def __len__(self) -> int:
        return len(self.nodes)


class _Resolver:
    """Resolves ``deps_on`` entries against the declared objects."""

    def __init__(self, declared: Iterable[Declared]) -> None:
        self.by_class: dict[type[Samizdat], Key] = {}
        self.by_name: dict[tuple[str, str], list[Key]] = defaultdict(list)
        self.keys: set[Key] = set()
        for item in declared:
            self.keys.add(item.key)
            if item.source is not None:
                self.by_class[item.source] = item.key
            self.by_name[(item.key.schema, item.key.name)].append(item.key)

    def resolve(self, owner: Declared, ref: object) -> Key:
        where = f"{owner.label}.deps_on entry {ref!r}"
        if isinstance(ref, type) and issubclass(ref, Samizdat):
            key = self.by_class.get(ref)
            if key is None:
                raise DanglingReferenceError(
                    f"{where}: class {ref.label()} is not registered; register it (or load its module) "
                    "in the same registry, or list the object in deps_on_unmanaged if we do not manage it"
                )
            return key
        if isinstance(ref, str):
            return self._by_name(where, owner.key.schema, check_identifier(ref, where), None)
        if isinstance(ref, tuple) and len(ref) == 3 and ref[2] is None:
            ref = ref[:2]  # the ``fq`` of a view: FQTuple(schema, name, None)
        if isinstance(ref, tuple) and len(ref) in (2, 3) and all(isinstance(part, str) for part in ref):
            schema = check_identifier(ref[0], where)
            name = check_identifier(ref[1], where)
            return self._by_name(where, schema, name, normalize_signature(ref[2]) if len(ref) == 3 else None)
        raise DeclarationError(
            f"{where}: expected a samizdat class, a name, or a (schema, name[, argument signature]) tuple"
        )

    def _by_name(self, where: str, schema: str, name: str, signature: str | None) -> Key:
        candidates = [
            k
            for k in self.by_name.get((schema, name), [])
            if k.namespace != "trigger" and (signature is None or (k.namespace == "function" and k.extra == signature))
        ]
        relations = [k for k in candidates if k.namespace == "relation"]
        if relations:
            return relations[0]
        if len(candidates) == 1:
            return candidates[0]
        shown = f"{qualified(schema, name)}" + (f"({signature})" if signature is not None else "")
        if not candidates:
            raise DanglingReferenceError(
                f"{where}: no registered samizdat is {shown}; fix the name, register the samizdat, or list "
                "the object in deps_on_unmanaged if we do not manage it"
            )
        raise DanglingReferenceError(
            f"{where}: {shown} names several function overloads; use a (schema, name, argument signature) "
            "tuple or the class itself"
        )


#: Graphs of the last few sets of classes (one per registry and scope in a typical process).
_GRAPHS: OrderedDict[tuple[type[Samizdat], ...], tuple[tuple[Declared, ...], Graph]] = OrderedDict()
_GRAPHS_KEPT = 8
_GRAPHS_LOCK = threading.Lock()


def graph_of(classes: Iterable[type[Samizdat]]) -> Graph:
    """:func:`build_graph`, memoized: the same classes, in the same order, declaring the same objects (see
    :func:`~alembic_samizdat.declared.declared_of`) give the same graph without building it again.

    Any other set of classes (one added, one replaced by a new class of the same name) or a class that changed
    builds a new graph; the last few graphs are kept.
    """
    key = tuple(classes)
    with _GRAPHS_LOCK:
        known = key in _GRAPHS
    stamp: bytes | None = None
    if not known:
        # The first build of these classes in this process: an earlier process may have left it (graph_cache).
        stamp, saved = graph_cache.load(key)
        if saved is not None:
            for cls, item in zip(key, saved[0], strict=True):
                remember(cls, item)
            with _GRAPHS_LOCK:
                _GRAPHS[key] = saved
            _forget_old_graphs()
            graph: Graph = saved[1]
            return graph
    declared = tuple(declared_of(cls) for cls in key)
    with _GRAPHS_LOCK:
        hit = _GRAPHS.get(key)
        if hit is not None:
            _GRAPHS.move_to_end(key)
    # Declarations are compared by identity: declared_of returns the very same object while a class is unchanged.
    if hit is not None and len(hit[0]) == len(declared) and all(a is b for a, b in zip(hit[0], declared, strict=True)):
        return hit[1]
    built = _build(declared)
    with _GRAPHS_LOCK:
        _GRAPHS[key] = (declared, built)
        _GRAPHS.move_to_end(key)
    _forget_old_graphs()
    if stamp is not None:
        graph_cache.save(key, stamp, declared, built)
    return built


def _forget_old_graphs() -> None:
    with _GRAPHS_LOCK:
        while len(_GRAPHS) > _GRAPHS_KEPT:
            _GRAPHS.popitem(last=False)


def build_graph(classes: Iterable[type[Samizdat]]) -> Graph:
    """Declare, resolve and check ``classes``; generate their sidekicks; return the ordered graph."""
    return _build([declared_of(cls) for cls in classes])


def _build(declared: Iterable[Declared]) -> Graph:
    declared = list(declared)
    _check_duplicates(declared)
    resolver = _Resolver(declared)
    deps: dict[Key, tuple[Key, ...]] = {}
    nodes = {item.key: item for item in declared}
    for item in declared:
        resolved: list[Key] = []
        for ref in item.refs:
            key = resolver.resolve(item, ref)
            if key == item.key:
                raise SelfDependencyError(f"{item.label} lists itself in deps_on; remove that entry")
            resolved.append(key)
        resolved.extend(k for k in item.implicit_deps if k in nodes)
        deps[item.key] = tuple(sorted(set(resolved)))
    _check_targets(declared, nodes)
    order = topological_order(nodes, deps)
    if order is None:
        cycle = _find_cycle(nodes, deps)
        raise CycleError([nodes[k].label for k in cycle])
    depth: dict[Key, int] = {}
    for key in order:
        depth[key] = 1 + max((depth[d] for d in deps[key]), default=-1)
    extra: list[Declared] = []
    readers: dict[Key, list[Key]] = defaultdict(list)
    if any(item.refresh_mode == "deferred" for item in declared):
        for child in order:
            for parent in deps[child]:
                readers[parent].append(child)
    for key in order:
        extra.extend(autorefresh.sidekicks(nodes[key], depth[key], _matviews_above(key, nodes, readers, order)))
    if extra:
        _check_duplicates([*declared, *extra])
        for item in extra:
            nodes[item.key] = item
            deps[item.key] = tuple(sorted(k for k in item.implicit_deps if k in nodes))
        order = topological_order(nodes, deps)
        assert order is not None, "sidekicks only depend on earlier nodes"
    dependents: dict[Key, list[Key]] = defaultdict(list)
    for key in order:
        for dep in deps[key]:
            dependents[dep].append(key)
    return Graph(nodes, deps, {k: tuple(v) for k, v in dependents.items()}, tuple(order))


def _matviews_above(
    key: Key, nodes: Mapping[Key, Declared], readers: Mapping[Key, list[Key]], order: list[Key]
) -> tuple[Key, ...]:
    """The materialized views reading a deferred view, directly or not (dependency order); () for the rest.

    A deferred view's marks name them too: once the worker refreshed the view, they are stale as well.
    """
    if nodes[key].refresh_mode != "deferred":
        return ()
    above = reachable([key], lambda k: readers.get(k, ()))
    return tuple(k for k in order if k in above and nodes[k].kind is Kind.MATVIEW)


def _check_duplicates(declared: Iterable[Declared]) -> None:
    seen: dict[Key, Declared] = {}
    for item in declared:
        other = seen.get(item.key)
        if other is not None:
            hint = (
                "give one another trigger_name (triggers on different tables may share a name)"
                if item.key.namespace == "trigger"
                else "rename one (functions and procedures may share a name only with different argument signatures)"
            )
            raise DuplicateIdentityError(
                f"{item.label} and {other.label} both declare {item.key.namespace} {item.key}; {hint}"
            )
        seen[item.key] = item


def _check_targets(declared: Iterable[Declared], nodes: Mapping[Key, Declared]) -> None:
    for item in declared:
        for schema, name in item.unmanaged:
            for namespace in ("relation", "function"):
                managed = nodes.get(Key(namespace, schema, name, ""))
                if managed is not None:
                    raise ManagedListedAsUnmanagedError(
                        f"{item.label}.deps_on_unmanaged lists {qualified(schema, name)}, which is the managed "
                        f"samizdat {managed.label}; move it to deps_on"
                    )
        if item.kind is Kind.TRIGGER and item.trigger_table is not None:
            target = nodes.get(Key("relation", *item.trigger_table))
            if target is not None and target.kind is Kind.MATVIEW:
                raise TriggerTargetError(
                    f"{item.label}: relation {qualified(*item.trigger_table)} is a materialized view "
                    f"({target.label}) and cannot have triggers; put the trigger on a table or a view"
                )
        for table in item.refresh_triggers:
            target = nodes.get(Key("relation", *table))
            if target is not None:
                raise TriggerTargetError(
                    f"{item.label}.refresh_triggers names {qualified(*table)}, which is a {target.kind.value} "
                    f"({target.label}); relation {qualified(*table)} cannot have refresh triggers. List the "
                    "tables it reads instead (a view is refreshed through its tables)"
                )
