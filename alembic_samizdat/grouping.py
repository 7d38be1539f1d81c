"""Changes shown per declared object, its generated objects (autorefresh functions and triggers) under it.

Users declare a materialized view with ``refresh_triggers``; the refresh function and triggers are ours. A
report that lists them as peers of what the user wrote reads as if the user had declared them.
"""

from __future__ import annotations

from collections.abc import Iterable

from .graph import Graph
from .keys import Key
from .planner import Action, Difference

#: The reason the planner gives an object recreated only because something it reads is.
_KNOCK_ON = "depends on "


def owner(key: Key, graph: Graph) -> Key | None:
    """The declared object that ``key`` was generated for, if it is a generated object."""
    node = graph.nodes.get(key)
    return node.generated_by if node is not None else None


def grouped(entries: Iterable[tuple[Key, str]], graph: Graph) -> list[tuple[int, str]]:
    """``(depth, line)``: each declared object's lines at depth 0 followed by those of its generated objects at
    depth 1, declared objects in dependency order (then what is no longer declared, in the order given). A
    declared object with no line of its own gets a header line."""
    own: dict[Key, list[str]] = {}
    generated: dict[Key, list[str]] = {}
    for key, line in entries:
        top = owner(key, graph)
        group = top if top is not None else key
        own.setdefault(group, [])
        generated.setdefault(group, [])
        (generated if top is not None else own)[group].append(line)
    rank = {key: n for n, key in enumerate(graph.order)}
    order = sorted(own, key=lambda k: rank.get(k, len(rank)))  # stable: undeclared keep their order
    out: list[tuple[int, str]] = []
    for group in order:
        lines = own[group]
        if not lines:
            node = graph.nodes[group]
            lines = [f"{node.kind.value} {group.display()} ({node.label}): its generated objects differ"]
        out.extend((0, line) for line in lines)
        out.extend((1, line) for line in generated[group])
    return out


def indented(entries: Iterable[tuple[Key, str]], graph: Graph, *, indent: str = "    ") -> list[str]:
    """:func:`grouped` as text lines."""
    return [indent * depth + line for depth, line in grouped(entries, graph)]


def action_entries(actions: Iterable[Action], graph: Graph) -> list[tuple[Key, str]]:
    """Lines for actions; a generated object's line is short (its group names the owner)."""
    out = []
    for action in actions:
        if owner(action.key, graph) is None:
            out.append((action.key, action.describe()))
            continue
        reason = "" if action.reason.startswith(_KNOCK_ON) else f": {action.reason}"
        out.append((action.key, f"{action.verb.value} {action.kind} {action.key.display()}{reason}"))
    return out


def difference_entries(differences: Iterable[Difference], graph: Graph) -> list[tuple[Key, str]]:
    """Lines for differences; a generated object's line leaves out the owner its group names."""
    return [
        (d.key, d.describe() if owner(d.key, graph) is None else f"{d.what.value}: {d.kind} {d.key.display()}")
        for d in differences
    ]
