"""GraphViz rendering of a registry's dependency graph, with DBSamizdat's legend.

Tables are yellow houses, views grey boxes, materialized views red boxes, functions green hexagons (procedures
teal ones), triggers purple arrow boxes. Black edges join managed objects; red edges start at an unmanaged
object; blue dotted edges with a ball head mark autorefresh (the generated trigger and function are left out).
"""

from __future__ import annotations

from .graph import Graph
from .keys import Key, Kind

_STYLE = {
    Kind.VIEW: 'shape=box, style=filled, fillcolor="#cccccc"',
    Kind.MATVIEW: 'shape=box, style=filled, fillcolor="#ff6666"',
    Kind.FUNCTION: 'shape=hexagon, style=filled, fillcolor="#66cc66"',
    Kind.PROCEDURE: 'shape=hexagon, style=filled, fillcolor="#66cccc"',
    Kind.TRIGGER: 'shape=cds, style=filled, fillcolor="#cc99ff"',
}
_TABLE = 'shape=house, style=filled, fillcolor="#ffee66"'


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _node_id(key: Key) -> str:
    return _quote(f"{key.namespace}:{key.schema}.{key.name}({key.extra})")


def _table_id(table: tuple[str, str]) -> str:
    return _quote(f"table:{table[0]}.{table[1]}")


def to_dot(graph: Graph) -> str:
    """The graph in the ``dot`` language (sidekicks omitted, as in DBSamizdat)."""
    lines = ["digraph samizdat {", "    rankdir=LR;", '    node [fontname="sans-serif"];']
    tables: set[tuple[str, str]] = set()
    edges: list[str] = []
    for key in graph.order:
        item = graph.nodes[key]
        if item.generated_by is not None:
            continue
        label = f"{key.schema}.{key.name}" + (f"({key.extra})" if key.namespace == "function" else "")
        if key.namespace == "trigger":
            label = f"{key.name}\\non {key.schema}.{key.extra}"
        lines.append(f"    {_node_id(key)} [label={_quote(label)}, {_STYLE[item.kind]}];")
        for dep in graph.deps.get(key, ()):
            if graph.nodes[dep].generated_by is None:
                edges.append(f"    {_node_id(dep)} -> {_node_id(key)} [color=black];")
        sources = set(item.unmanaged)
        if item.trigger_table is not None and Key("relation", *item.trigger_table) not in graph.nodes:
            sources.add(item.trigger_table)
        for table in sorted(sources):
            tables.add(table)
            edges.append(f"    {_table_id(table)} -> {_node_id(key)} [color=red];")
        for table in item.refresh_triggers:
            tables.add(table)
            edges.append(
                f'    {_table_id(table)} -> {_node_id(key)} [color=blue, style=dotted, arrowhead=dot, label="⟳"];'
            )
    for table in sorted(tables):
        lines.append(f"    {_table_id(table)} [label={_quote(f'{table[0]}.{table[1]}')}, {_TABLE}];")
    lines.extend(edges)
    lines.append("}")
    return "\n".join(lines) + "\n"
