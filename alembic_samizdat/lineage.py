"""Lineage: what an object reads and what reads it, from the declarations and from ``pg_depend``.

Nodes are named by their quoted display (``"public"."orders"``, ``"public"."f"(integer)``, ``"t" ON "s"."tbl"``),
so that declared and catalog edges about the same object meet. The catalog knows dependencies that declarations
do not (tables read by a view, down to their columns; hand-made views reading ours) and declarations know some
that the catalog does not (calls in a SQL function's body), so both are merged.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from sqlalchemy import Connection

from . import pinned
from .errors import UnknownObjectError
from .graph import Graph
from .identifiers import qualified, quote_ident
from .keys import Key


@dataclass
class Node:
    """One object of the lineage graph."""

    name: str
    kind: str
    #: The declaring class, for managed objects.
    label: str = ""
    #: Other names a user may give: the bare name, ``schema.name``, the class and its module path.
    aliases: set[str] = field(default_factory=set)


@dataclass
class Lineage:
    """Objects and "reads" edges (reader → read), with the columns read where the catalog knows them."""

    nodes: dict[str, Node] = field(default_factory=dict)
    #: reader → read → columns (empty: the whole object, or columns unknown).
    reads: dict[str, dict[str, set[str]]] = field(default_factory=lambda: defaultdict(dict))
    #: Where each edge was learnt: "declared", "catalog" or both.
    sources: dict[tuple[str, str], set[str]] = field(default_factory=lambda: defaultdict(set))

    def add_node(self, name: str, kind: str, label: str = "", aliases: Iterable[str] = ()) -> None:
        """Add or complete a node (a declared label wins over the catalog's none)."""
        node = self.nodes.get(name)
        if node is None:
            node = self.nodes[name] = Node(name, kind, label)
        elif label and not node.label:
            node.label = label
        node.aliases.update(a for a in aliases if a)
        if label:
            node.aliases.update((label, label.rsplit(".", 1)[-1]))

    def add_edge(self, reader: str, read: str, source: str, columns: Iterable[str] = ()) -> None:
        """``reader`` reads ``read``."""
        if reader == read:
            return
        self.reads[reader].setdefault(read, set()).update(c for c in columns if c)
        self.sources[(reader, read)].add(source)

    def readers(self) -> dict[str, set[str]]:
        """read → its readers."""
        out: dict[str, set[str]] = defaultdict(set)
        for reader, reads in self.reads.items():
            for read in reads:
                out[read].add(reader)
        return out

    def find(self, wanted: str) -> str:
        """The node named ``wanted``: its display, ``schema.name``, bare name, or class."""
        if wanted in self.nodes:
            return wanted
        hits = sorted(name for name, node in self.nodes.items() if wanted in node.aliases)
        if len(hits) == 1:
            return hits[0]
        if not hits:
            raise UnknownObjectError(
                f"no object {wanted!r} in the declarations or the database; name it as schema.name, by its class, "
                "or as `samizdat diff` prints it"
            )
        raise UnknownObjectError(f"{wanted!r} is ambiguous: {', '.join(hits)}; give its schema or signature")


def _aliases(schema: str, name: str) -> tuple[str, str]:
    return (name, f"{schema}.{name}")


def _table_name(schema: str, name: str) -> str:
    return qualified(schema, name)


def from_graph(graph: Graph, lineage: Lineage | None = None) -> Lineage:
    """The edges the declarations give: ``deps_on``, ``deps_on_unmanaged`` and triggers' tables."""
    out = lineage if lineage is not None else Lineage()
    for key, item in graph.nodes.items():
        out.add_node(key.display(), item.kind.value, item.label, _aliases(key.schema, key.name))
    for key, item in graph.nodes.items():
        reader = key.display()
        for dep in graph.deps.get(key, ()):
            out.add_edge(reader, dep.display(), "declared")
        for schema, name in item.unmanaged:
            table = _table_name(schema, name)
            out.add_node(table, "table", aliases=_aliases(schema, name))
            out.add_edge(reader, table, "declared")
        if item.trigger_table is not None:
            table = _table_name(*item.trigger_table)
            out.add_node(table, "table", aliases=_aliases(*item.trigger_table))
            out.add_edge(reader, table, "declared")
    return out


#: Every dependency between user objects that means "reads": a view's or materialized view's rule on the
#: relations and columns it reads, a function's (BEGIN ATOMIC body) or trigger's on what it uses, a trigger on its
#: table. Rows: reader (kind, schema, name, extra) and read (kind, schema, name, extra, column).
_DEPENDS_SQL = """
WITH edges AS (
    SELECT CASE WHEN d.classid = 'pg_rewrite'::regclass THEN 'pg_class'::regclass ELSE d.classid END AS cls,
           CASE WHEN d.classid = 'pg_rewrite'::regclass THEN r.ev_class ELSE d.objid END AS obj,
           d.refclassid AS refcls, d.refobjid AS ref, d.refobjsubid AS refsub
    FROM pg_depend d
    LEFT JOIN pg_rewrite r ON d.classid = 'pg_rewrite'::regclass AND r.oid = d.objid
    WHERE d.classid IN ('pg_rewrite'::regclass, 'pg_proc'::regclass, 'pg_trigger'::regclass)
      AND d.refclassid IN ('pg_class'::regclass, 'pg_proc'::regclass)
      AND d.deptype IN ('n', 'a')
      AND d.objid >= 16384 AND d.refobjid >= 16384
      AND NOT (d.classid = 'pg_rewrite'::regclass AND r.ev_class = d.refobjid)
),
named AS (
    SELECT e.*,
           CASE WHEN e.cls = 'pg_class'::regclass THEN (SELECT ARRAY[c.relkind::text, n.nspname::text, c.relname::text, '']
                    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = e.obj)
                WHEN e.cls = 'pg_proc'::regclass THEN (SELECT ARRAY['p' || p.prokind::text, n.nspname::text, p.proname::text,
                    pg_get_function_identity_arguments(p.oid)]
                    FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE p.oid = e.obj)
                ELSE (SELECT ARRAY['trigger', n.nspname::text, t.tgname::text, c.relname::text]
                    FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
                    WHERE t.oid = e.obj AND NOT t.tgisinternal) END AS reader,
           CASE WHEN e.refcls = 'pg_class'::regclass THEN (SELECT ARRAY[c.relkind::text, n.nspname::text, c.relname::text, '',
                    coalesce((SELECT a.attname::text FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum = e.refsub
                              AND e.refsub > 0), '')]
                    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = e.ref)
                ELSE (SELECT ARRAY['p' || p.prokind::text, n.nspname::text, p.proname::text,
                    pg_get_function_identity_arguments(p.oid), '']
                    FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE p.oid = e.ref) END AS read
    FROM edges e
)
SELECT reader, read FROM named
WHERE reader IS NOT NULL AND read IS NOT NULL
  AND reader[2] NOT IN ('pg_catalog', 'information_schema') AND reader[2] NOT LIKE 'pg\\_toast%'
  AND read[1] NOT IN ('i', 'S', 'c', 't')
"""

_RELKINDS = {
    "r": "table",
    "p": "table",
    "v": "view",
    "m": "matview",
    "f": "foreign table",
    "pf": "function",
    "pa": "function",
    "pw": "function",
    "pp": "procedure",
    "trigger": "trigger",
}


def _display(kind: str, schema: str, name: str, extra: str) -> str:
    if kind.startswith("p"):
        return f"{qualified(schema, name)}({extra})"
    if kind == "trigger":
        return f"{quote_ident(name)} ON {qualified(schema, extra)}"
    return qualified(schema, name)


def from_catalog(connection: Connection, lineage: Lineage | None = None) -> Lineage:
    """The edges ``pg_depend`` records between user objects, read once (search_path pinned)."""
    out = lineage if lineage is not None else Lineage()
    began = not connection.in_transaction()
    try:
        rows = pinned.query(connection, _DEPENDS_SQL)
    finally:
        if began and connection.in_transaction():
            connection.rollback()
    for reader, read in rows:
        rkind, rschema, rname, rextra = (str(x) for x in reader)
        kind, schema, name, extra, column = (str(x) for x in read)
        if rkind == "trigger" and kind in ("r", "p", "v", "f") and column:
            column = ""  # a trigger's column dependencies are its UPDATE OF list, not reads
        reader_name = _display(rkind, rschema, rname, rextra)
        read_name = _display(kind, schema, name, extra)
        out.add_node(reader_name, _RELKINDS.get(rkind, rkind), aliases=_aliases(rschema, rname))
        out.add_node(read_name, _RELKINDS.get(kind, kind), aliases=_aliases(schema, name))
        out.add_edge(reader_name, read_name, "catalog", [column])
    return out


def _merge_functions(lineage: Lineage, graph: Graph) -> None:
    """Map catalog function names (PostgreSQL's argument rendering) onto declared ones (the declared rendering)."""
    declared: dict[tuple[str, str], list[Key]] = defaultdict(list)
    for key in graph.nodes:
        if key.namespace == "function":
            declared[(key.schema, key.name)].append(key)
    renames: dict[str, str] = {}
    for name, node in list(lineage.nodes.items()):
        if node.kind not in ("function", "procedure") or node.label:
            continue
        for (schema, fname), keys in declared.items():
            if name.startswith(qualified(schema, fname) + "(") and len(keys) == 1:
                renames[name] = keys[0].display()
    if not renames:
        return
    for old, _new in renames.items():
        lineage.nodes.pop(old, None)
    reads: dict[str, dict[str, set[str]]] = defaultdict(dict)
    sources: dict[tuple[str, str], set[str]] = defaultdict(set)
    for reader, targets in lineage.reads.items():
        for read, columns in targets.items():
            a, b = renames.get(reader, reader), renames.get(read, read)
            reads[a].setdefault(b, set()).update(columns)
            sources[(a, b)] |= lineage.sources[(reader, read)]
    lineage.reads, lineage.sources = reads, sources


def build(graph: Graph | None, connection: Connection | None) -> Lineage:
    """The merged lineage of the declarations (if any) and the catalog (if connected)."""
    lineage = Lineage()
    if graph is not None:
        from_graph(graph, lineage)
    if connection is not None:
        from_catalog(connection, lineage)
        if graph is not None:
            _merge_functions(lineage, graph)
    return lineage


@dataclass(frozen=True)
class Walk:
    """The part of the lineage reachable from one object."""

    root: str
    #: (reader, read, depth) edges in the order found (breadth first).
    edges: tuple[tuple[str, str, int], ...]
    direction: str


def walk(lineage: Lineage, root: str, *, direction: str, depth: int | None) -> Walk:
    """Breadth-first from ``root``: ``up`` follows what it reads, ``down`` what reads it."""
    readers = lineage.readers()
    seen = {root}
    frontier = [root]
    edges: list[tuple[str, str, int]] = []
    level = 0
    while frontier and (depth is None or level < depth):
        level += 1
        nxt: list[str] = []
        for node in frontier:
            around = sorted(lineage.reads.get(node, {})) if direction == "up" else sorted(readers.get(node, ()))
            for other in around:
                edges.append((node, other, level) if direction == "up" else (other, node, level))
                if other not in seen:
                    seen.add(other)
                    nxt.append(other)
        frontier = nxt
    return Walk(root, tuple(edges), direction)


def _describe(lineage: Lineage, name: str) -> str:
    node = lineage.nodes.get(name)
    if node is None:
        return name
    label = f", {node.label}" if node.label else ""
    return f"{name} ({node.kind}{label})"


def _tree_line(
    lineage: Lineage, w: Walk, children: dict[str, list[str]], child: str, indent: int, shown: set[str], parent: str
) -> str:
    reader, read = (parent, child) if w.direction == "up" else (child, parent)
    columns = sorted(lineage.reads.get(reader, {}).get(read, ()))
    cols = f" [columns: {', '.join(columns)}]" if columns else ""
    again = " …" if child in shown and children.get(child) else ""
    return f"{'  ' * indent}{_describe(lineage, child)}{cols}{again}"


def render_text(lineage: Lineage, walks: Iterable[Walk]) -> str:
    """Indented trees, one per direction."""
    lines: list[str] = []
    for w in walks:
        if not lines:
            lines.append(_describe(lineage, w.root))
        lines.append("  reads:" if w.direction == "up" else "  read by:")
        children: dict[str, list[str]] = defaultdict(list)
        for reader, read, _ in w.edges:
            parent, child = (reader, read) if w.direction == "up" else (read, reader)
            if child not in children[parent]:
                children[parent].append(child)
        if not children.get(w.root):
            lines.append("    (nothing)")
        shown: set[str] = set()
        # Depth first, iteratively (a long chain of views must not hit the recursion limit).
        stack = [(child, 2, w.root) for child in reversed(children.get(w.root, []))]
        while stack:
            child, indent, parent = stack.pop()
            lines.append(_tree_line(lineage, w, children, child, indent, shown, parent))
            if child not in shown:
                shown.add(child)
                stack.extend((grandchild, indent + 1, child) for grandchild in reversed(children.get(child, [])))
    return "\n".join(lines) + "\n"


def render_json(lineage: Lineage, walks: Iterable[Walk]) -> str:
    """``{"object", "nodes", "edges"}``: the walked part of the lineage."""
    walks = list(walks)
    root = walks[0].root
    edges = {(reader, read) for w in walks for reader, read, _ in w.edges}
    names = {root} | {n for edge in edges for n in edge}
    doc = {
        "object": root,
        "nodes": [
            {"name": n, "kind": lineage.nodes[n].kind, "label": lineage.nodes[n].label or None}
            for n in sorted(names)
            if n in lineage.nodes
        ],
        "edges": [
            {
                "reader": reader,
                "reads": read,
                "columns": sorted(lineage.reads.get(reader, {}).get(read, ())),
                "source": sorted(lineage.sources.get((reader, read), ())),
            }
            for reader, read in sorted(edges)
        ],
    }
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def render_dot(lineage: Lineage, walks: Iterable[Walk]) -> str:
    """A GraphViz digraph, arrows from what is read to its readers (data flows along them)."""
    walks = list(walks)
    root = walks[0].root
    edges = sorted({(reader, read) for w in walks for reader, read, _ in w.edges})
    names = sorted({root} | {n for edge in edges for n in edge})

    def q(text: str) -> str:
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'

    lines = ["digraph lineage {", "  rankdir=LR;", "  node [shape=box];"]
    for n in names:
        node = lineage.nodes.get(n)
        kind = node.kind if node else "?"
        style = ", style=bold" if n == root else ""
        dashed = "" if node is not None and node.label else ", style=dashed" if n != root else ""
        label = q(n)[:-1] + "\\n" + kind + '"'
        lines.append(f"  {q(n)} [label={label}{style}{dashed}];")
    for reader, read in edges:
        columns = sorted(lineage.reads.get(reader, {}).get(read, ()))
        label = f" [label={q(', '.join(columns))}]" if columns else ""
        lines.append(f"  {q(read)} -> {q(reader)}{label};")
    lines.append("}")
    return "\n".join(lines) + "\n"
