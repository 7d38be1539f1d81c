"""A seeded, reproducible workload of N samizdats for the benchmark.

The mix follows DESIGN.md §7: 60 % views, 20 % materialized views, 10 % functions, 10 % triggers. Every object
after the first few depends on 1–3 earlier ones, and every declared dependency is real in the SQL: a view
selects from (joins) the relations it depends on and calls the functions it depends on; a function calls its
functions; a trigger function calls a scalar function; a trigger executes its trigger function and calls
scalar functions in its ``WHEN`` clause. Roots read ``generate_series(1, 1000)`` or one of a few base tables
(created by :meth:`Workload.setup_sql`, which the benchmark runs first), so every relation has the ids 1–1000.

Two guards keep the workload realistic rather than pathological:

* a view inlines its view dependencies when PostgreSQL plans it, so a view's *inline cost* (base relations
  scanned once the views below it are expanded, up to materialized views) is capped;
* the same holds for SQL functions, which PostgreSQL inlines too.

One workload renders as two modules with the same objects:

* an alembic-samizdat module (``from alembic_samizdat import …``), whose templates take ``$`` literally;
* a DBSamizdat module (``from dbsamizdat import …``), whose templates are read with :class:`string.Template`,
  so every literal ``$`` is written ``$$`` there (``$$`` bodies become ``$$$$``, ``$1`` becomes ``$$1``).

Variants change one object's SQL (a constant in it): the root view with the most dependents, a view in the
middle of the graph, or the root function with the most dependents.

Run ``python bench/workload.py --n 1000 --out DIR`` to write the files and print the graph's statistics.
"""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

Kind = Literal["view", "matview", "function", "trigger_function", "trigger"]
Variant = Literal["root_view", "mid_view", "root_function"]
Flavour = Literal["samizdat", "dbsamizdat", "compat"]

VARIANTS: tuple[Variant, ...] = ("root_view", "mid_view", "root_function")
DEFAULT_SEED = 20240611
ROWS = 1000
#: At most this many base relations scanned by a fully inlined view (materialized views count as one).
VIEW_INLINE_CAP = 12
#: At most this many function bodies in a fully inlined SQL function.
FUNCTION_INLINE_CAP = 12
#: Share of relation dependencies picked among the most recent relations (the rest: uniformly among all).
RECENT_SHARE = 0.5
RECENT_WINDOW = 40
#: Probability that a view, materialized view or scalar function (after the first ones) is a root.
ROOT_SHARE = 0.04

_PREFIX: dict[Kind, str] = {
    "view": "v",
    "matview": "mv",
    "function": "f",
    "trigger_function": "tf",
    "trigger": "tg",
}

_IMPORTS: dict[Flavour, str] = {
    "samizdat": "alembic_samizdat",
    "dbsamizdat": "dbsamizdat",
    "compat": "alembic_samizdat.compat.dbsamizdat",
}

_BASES: dict[Kind, str] = {
    "view": "SamizdatView",
    "matview": "SamizdatMaterializedView",
    "function": "SamizdatFunction",
    "trigger_function": "SamizdatFunction",
    "trigger": "SamizdatTrigger",
}


@dataclass(frozen=True)
class Obj:
    """One generated object."""

    index: int
    name: str
    kind: Kind
    #: Managed dependencies (indexes of earlier objects), in the order the SQL uses them.
    deps: tuple[int, ...]
    #: A constant in the SQL; variants change it.
    salt: int
    #: The base table a root relation reads, or the table a trigger is on.
    table: str | None = None

    @property
    def is_relation(self) -> bool:
        """Views and materialized views."""
        return self.kind in ("view", "matview")


@dataclass
class Workload:
    """N objects, the base tables they need, and how to render them."""

    n: int
    seed: int
    objects: list[Obj]
    tables: list[str]
    depth: list[int] = field(default_factory=list)
    dependents: list[list[int]] = field(default_factory=list)
    _targets: dict[str, Obj] = field(default_factory=dict, repr=False)
    _descendant_counts: list[int] | None = field(default=None, repr=False)

    # -- graph facts --------------------------------------------------------------------------------------

    def descendants(self, index: int) -> set[int]:
        """Every object depending, directly or transitively, on ``index``."""
        seen: set[int] = set()
        todo = [index]
        while todo:
            for nxt in self.dependents[todo.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    def descendant_count(self, index: int) -> int:
        """``len(self.descendants(index))``, computed once for every object (bitsets, linear in the edges)."""
        if self._descendant_counts is None:
            below = [0] * len(self.objects)
            for obj in reversed(self.objects):  # dependents always come later
                mask = 0
                for nxt in self.dependents[obj.index]:
                    mask |= below[nxt] | (1 << nxt)
                below[obj.index] = mask
            self._descendant_counts = [mask.bit_count() for mask in below]
        return self._descendant_counts[index]

    def target(self, variant: Variant) -> Obj:
        """The object a variant changes."""
        if variant not in self._targets:
            self._targets[variant] = self._find_target(variant)
        return self._targets[variant]

    def _find_target(self, variant: Variant) -> Obj:
        objs = self.objects
        if variant == "root_view":
            roots = [o for o in objs if o.kind == "view" and not o.deps]
            return max(roots, key=lambda o: (self.descendant_count(o.index), -o.index))
        if variant == "root_function":
            roots = [o for o in objs if o.kind == "function" and not o.deps]
            return max(roots, key=lambda o: (self.descendant_count(o.index), -o.index))
        top = max(self.depth)
        mids = [
            o
            for o in objs
            if o.kind == "view" and top / 3 <= self.depth[o.index] <= 2 * top / 3 and self.dependents[o.index]
        ]
        if not mids:
            mids = [o for o in objs if o.kind == "view" and self.dependents[o.index]] or [
                o for o in objs if o.kind == "view"
            ]
        mids.sort(key=lambda o: (self.descendant_count(o.index), o.index))
        return mids[len(mids) // 2]

    def expected_recreated(self, variant: Variant) -> int:
        """Objects a sync must recreate for the variant: the target and everything declared on top of it."""
        return 1 + self.descendant_count(self.target(variant).index)

    def count(self, kind: Kind) -> int:
        """How many objects of ``kind``."""
        return sum(1 for o in self.objects if o.kind == kind)

    def busiest_table(self) -> str:
        """The base table with the most materialized views depending on it (for ``--belownodes``)."""
        best: tuple[int, str] | None = None
        for table in self.tables:
            starts = [o.index for o in self.objects if o.table == table]
            below: set[int] = set(starts)
            for start in starts:
                below |= self.descendants(start)
            score = (sum(1 for i in below if self.objects[i].kind == "matview"), table)
            if best is None or score[0] > best[0]:
                best = score
        assert best is not None
        return best[1]

    def below(self, table: str) -> list[str]:
        """Names of the materialized views depending, directly or transitively, on ``table``."""
        starts = [o.index for o in self.objects if o.table == table]
        below: set[int] = set(starts)
        for start in starts:
            below |= self.descendants(start)
        return [self.objects[i].name for i in sorted(below) if self.objects[i].kind == "matview"]

    def dbsamizdat_paths(self) -> int:
        """How many items DBSamizdat's loader yields (it walks every dependency path of every class)."""
        paths = [0] * len(self.objects)
        for o in self.objects:
            paths[o.index] = 1 + sum(paths[d] for d in o.deps)
        return sum(paths)

    def stats(self) -> dict[str, object]:
        """Facts about the graph, for humans."""
        out: dict[str, object] = {"n": self.n, "seed": self.seed}
        for kind in _PREFIX:
            out[kind] = self.count(kind)
        out["tables"] = len(self.tables)
        out["roots"] = sum(1 for o in self.objects if not o.deps)
        out["max depth"] = max(self.depth)
        out["edges"] = sum(len(o.deps) for o in self.objects)
        out["dbsamizdat loader paths"] = self.dbsamizdat_paths()
        for variant in VARIANTS:
            target = self.target(variant)
            out[variant] = (
                f"{target.name} (depth {self.depth[target.index]}, recreates {self.expected_recreated(variant)})"
            )
        table = self.busiest_table()
        out["belownodes"] = f"{table} ({len(self.below(table))} matviews)"
        return out

    # -- rendering ------------------------------------------------------------------------------------------

    def setup_sql(self) -> str:
        """The base tables (with rows) that root relations read and triggers sit on; run before any sync."""
        parts = []
        for i, table in enumerate(self.tables):
            parts.append(
                f"CREATE TABLE {table} (id integer PRIMARY KEY, val integer NOT NULL);\n"
                f"INSERT INTO {table} SELECT g, (g * {i + 3}) % 101 FROM generate_series(1, {ROWS}) AS g;\n"
                f"ANALYZE {table};"
            )
        return "\n".join(parts) + "\n"

    def _salt(self, obj: Obj, variant: Variant | None) -> int:
        if variant is not None and self.target(variant).index == obj.index:
            return obj.salt + 1
        return obj.salt

    def body(self, obj: Obj, variant: Variant | None = None) -> str:
        """The SQL after ``${preamble}`` (and before ``${postamble}``), with literal ``$`` signs."""
        objs = self.objects
        salt = self._salt(obj, variant)
        funcs = [objs[d] for d in obj.deps if objs[d].kind == "function"]
        rels = [objs[d] for d in obj.deps if objs[d].is_relation]
        if obj.kind in ("view", "matview"):
            if rels:
                source = f'"public"."{rels[0].name}" AS d0'
                for i, rel in enumerate(rels[1:], 1):
                    source += f'\nJOIN "public"."{rel.name}" AS d{i} ON d{i}.id = d0.id'
                terms = [f"d{i}.val" for i in range(len(rels))]
                ident = "d0.id"
            elif obj.table is not None:
                source = f'"public"."{obj.table}" AS t'
                terms = ["t.val"]
                ident = "t.id"
            else:
                source = f"generate_series(1, {ROWS}) AS g"
                terms = [f"g * {obj.index % 89 + 2}"]
                ident = "g"
            terms += [f'"public"."{f.name}"({ident})' for f in funcs]
            return f"SELECT {ident} AS id, ({' + '.join(terms)} + {salt}) % 1000 AS val\nFROM {source}"
        if obj.kind == "function":
            calls = [f'"public"."{f.name}"($1)' for f in funcs] or [f"$1 * {obj.index % 13 + 2}"]
            return (
                "RETURNS integer LANGUAGE sql IMMUTABLE PARALLEL SAFE\n"
                f"AS $$ SELECT ({' + '.join(calls)} + {salt}) % 1000 $$"
            )
        if obj.kind == "trigger_function":
            added = "".join(f' + "public"."{f.name}"(NEW.id)' for f in funcs)
            return (
                "RETURNS trigger LANGUAGE plpgsql\nAS $$\nBEGIN\n"
                f"    NEW.val := (coalesce(NEW.val, 0){added} + {salt}) % 1000;\n"
                "    RETURN NEW;\nEND\n$$"
            )
        trigger_function = next(objs[d] for d in obj.deps if objs[d].kind == "trigger_function")
        when = " + ".join(f'"public"."{f.name}"(NEW.id)' for f in funcs)
        condition = f"WHEN ({when} > -{salt + 1})\n" if when else ""
        return f'FOR EACH ROW\n{condition}EXECUTE FUNCTION "public"."{trigger_function.name}"()'

    def template(self, obj: Obj, flavour: Flavour, variant: Variant | None = None) -> str:
        """The ``sql_template`` of ``obj``; for DBSamizdat (and the compat classes) ``$`` is written ``$$``."""
        body = self.body(obj, variant)
        if flavour != "samizdat":
            body = body.replace("$", "$$")
        if obj.kind == "matview":
            index = "CREATE UNIQUE INDEX ON ${samizdatname} (id)"
            # The postamble ends the statement in both tools (WITH NO DATA;): the index follows it directly.
            return f"${{preamble}}\n{body}\n${{postamble}}\n{index}"
        return f"${{preamble}}\n{body}\n${{postamble}}"

    def module(self, flavour: Flavour, variant: Variant | None = None) -> str:
        """The Python module declaring every object, for alembic-samizdat or DBSamizdat."""
        lines = [
            f'"""Benchmark workload: N={self.n}, seed={self.seed}, variant={variant or "base"} ({flavour})."""',
            "",
            f"from {_IMPORTS[flavour]} import (",
            "    SamizdatFunction,",
            "    SamizdatMaterializedView,",
            "    SamizdatTrigger,",
            "    SamizdatView,",
            ")",
            "",
        ]
        for obj in self.objects:
            lines.append("")
            lines.append(f"class {obj.name}({_BASES[obj.kind]}):")
            if obj.deps:
                lines.append(f"    deps_on = {{{', '.join(self.objects[d].name for d in obj.deps)}}}")
            if obj.table is not None:
                lines.append(f"    deps_on_unmanaged = {{{obj.table!r}}}")
            if obj.kind == "function":
                lines.append('    function_arguments_signature = "integer"')
            if obj.kind == "trigger":
                lines.append(f"    on_table = {obj.table!r}")
                lines.append('    condition = "BEFORE INSERT OR UPDATE"')
            template = self.template(obj, flavour, variant)
            assert '"""' not in template and "\\" not in template
            lines.append(f'    sql_template = """\n{template}\n"""')
            lines.append("")
        return "\n".join(lines)

    def write(self, directory: Path, flavours: Iterable[Flavour] = ("samizdat", "dbsamizdat")) -> WorkloadFiles:
        """Write setup SQL and the modules (base and every variant) into ``directory``."""
        return _write_files(
            directory,
            self.setup_sql(),
            (
                (
                    flavour,
                    variant or "base",
                    f"{_SHORT[flavour]}_n{self.n}_{variant or 'base'}.py",
                    self.module(flavour, variant),
                )
                for flavour in flavours
                for variant in (None, *VARIANTS)
            ),
        )


@dataclass(frozen=True)
class WorkloadFiles:
    """Where :meth:`Workload.write` put things."""

    directory: Path
    setup_sql: Path
    modules: dict[tuple[Flavour, str], Path]

    def module(self, flavour: Flavour, variant: Variant | None = None) -> Path:
        """The module file of a flavour and variant (None: the base workload)."""
        return self.modules[(flavour, variant or "base")]


@dataclass(frozen=True)
class HeavyWorkload:
    """A wide stack of CPU-heavy materialized views, for comparing serial and parallel refreshes.

    ``width`` independent materialized views at the bottom, each aggregating ``rows``² generated rows with some
    floating-point arithmetic (about 0.4 s of CPU each at ``rows`` = 1000 on the benchmark's machine), then
    ``width // 3`` materialized views each joining three of them, one materialized view joining those, and a
    plain view on top. Everything above the bottom level is cheap: the parallel refresh can only win on the
    bottom level, as a real wide stack would.
    """

    width: int = 12
    rows: int = 1000

    @property
    def n(self) -> int:
        """How many objects."""
        return self.width + self.middle + 2

    @property
    def middle(self) -> int:
        """Materialized views of the second level."""
        return max(1, self.width // 3)

    def objects(self) -> list[tuple[str, Kind, list[str], str]]:
        """(name, kind, dependency names, SQL body) of every object, bottom up."""
        out: list[tuple[str, Kind, list[str], str]] = []
        bottom = [f"hv{i:02d}" for i in range(self.width)]
        for i, name in enumerate(bottom):
            body = (
                f"SELECT (a.a * {self.rows} + b.b) % 100 AS k,\n"
                f"       sum(sqrt((a.a * {self.rows} + b.b)::float8) * sin((a.a + b.b + {i})::float8)) AS v\n"
                f"FROM generate_series(1, {self.rows}) AS a(a) CROSS JOIN generate_series(1, {self.rows}) AS b(b)\n"
                "GROUP BY 1"
            )
            out.append((name, "matview", [], body))
        middle = [f"hm{i:02d}" for i in range(self.middle)]
        for i, name in enumerate(middle):
            deps = [bottom[(3 * i + j) % self.width] for j in range(3)]
            source = f'"public"."{deps[0]}" AS d0'
            for j, dep in enumerate(deps[1:], 1):
                source += f'\nJOIN "public"."{dep}" AS d{j} ON d{j}.k = d0.k'
            terms = " + ".join(f"d{j}.v" for j in range(len(deps)))
            out.append((name, "matview", deps, f"SELECT d0.k, {terms} AS v\nFROM {source}"))
        union = "\nUNION ALL\n".join(f'SELECT k, v FROM "public"."{m}"' for m in middle)
        out.append(("htop", "matview", middle, f"SELECT k, sum(v) AS v FROM (\n{union}\n) AS u GROUP BY k"))
        out.append(("hview", "view", ["htop"], 'SELECT k, v, v / 2 AS half FROM "public"."htop"'))
        return out

    def module(self, flavour: Flavour) -> str:
        """The module declaring the stack (no literal ``$``: the same SQL serves every flavour)."""
        lines = [
            f'"""Benchmark workload: a wide stack of CPU-heavy materialized views (width {self.width}, '
            f'{self.rows}² rows each) ({flavour})."""',
            "",
            f"from {_IMPORTS[flavour]} import SamizdatMaterializedView, SamizdatView",
            "",
        ]
        for name, kind, deps, body in self.objects():
            lines += ["", f"class {name}({_BASES[kind]}):"]
            if deps:
                lines.append(f"    deps_on = {{{', '.join(deps)}}}")
            lines.append(f'    sql_template = """\n${{preamble}}\n{body}\n${{postamble}}\n"""')
            lines.append("")
        return "\n".join(lines)

    def setup_sql(self) -> str:
        """No base tables."""
        return "SELECT 1;\n"

    def matviews(self) -> list[str]:
        """Names of the materialized views."""
        return [name for name, kind, _, _ in self.objects() if kind == "matview"]

    def stats(self) -> dict[str, object]:
        """Facts about the stack, for humans."""
        return {
            "bottom (CPU-heavy)": f"{self.width} matviews of {self.rows}² rows",
            "second level": f"{self.middle} matviews",
            "top": "1 matview + 1 view",
        }

    def write(self, directory: Path, flavours: Iterable[Flavour] = ("samizdat", "dbsamizdat")) -> WorkloadFiles:
        """Write the (empty) setup SQL and one module per flavour."""
        return _write_files(
            directory,
            self.setup_sql(),
            (
                (flavour, "base", f"{_SHORT[flavour]}_heavy_w{self.width}.py", self.module(flavour))
                for flavour in flavours
            ),
        )


#: File name prefixes of the flavours.
_SHORT: dict[str, str] = {"samizdat": "sz", "dbsamizdat": "dbsz", "compat": "compat"}


def _write_files(directory: Path, setup_sql: str, modules: Iterable[tuple[Flavour, str, str, str]]) -> WorkloadFiles:
    """Write ``setup.sql`` and each (flavour, variant, file name, text) module into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    setup = directory / "setup.sql"
    setup.write_text(setup_sql, encoding="utf-8")
    written: dict[tuple[Flavour, str], Path] = {}
    for flavour, variant, name, text in modules:
        path = directory / name
        path.write_text(text, encoding="utf-8")
        written[(flavour, variant)] = path
    return WorkloadFiles(directory, setup, written)


def _kinds(n: int, rng: random.Random) -> list[Kind]:
    views = round(n * 0.6)
    matviews = round(n * 0.2)
    functions = max(2, round(n * 0.1))
    triggers = max(1, n - views - matviews - functions)
    views = n - matviews - functions - triggers
    trigger_functions = max(1, functions // 3)
    counts: dict[Kind, int] = {
        "view": views,
        "matview": matviews,
        "function": functions - trigger_functions,
        "trigger_function": trigger_functions,
        "trigger": triggers,
    }
    kinds: list[Kind] = [kind for kind, count in counts.items() for _ in range(count)]
    # The first objects are roots of each kind the rest builds on; the rest is shuffled.
    head: list[Kind] = ["view", "function", "matview", "trigger_function"]
    for kind in head:
        kinds.remove(kind)
    rng.shuffle(kinds)
    # A trigger needs a trigger function before it: the head holds one.
    return head + kinds


def _pick_distinct(rng: random.Random, pool: Sequence[int], count: int, recent: bool) -> list[int]:
    chosen: list[int] = []
    for _ in range(count * 4):
        if len(chosen) == count or not pool:
            break
        if recent and rng.random() < RECENT_SHARE:
            cand = pool[-1 - min(len(pool) - 1, int(rng.random() * RECENT_WINDOW))]
        else:
            cand = pool[int(rng.random() * len(pool))]
        if cand not in chosen:
            chosen.append(cand)
    return chosen


def generate(n: int, seed: int = DEFAULT_SEED, *, tables: int | None = None) -> Workload:
    """The workload of ``n`` objects for ``seed`` (the same arguments always give the same workload)."""
    if n < 8:
        raise ValueError("the workload needs at least 8 objects")
    rng = random.Random(f"{seed}:{n}")
    kinds = _kinds(n, rng)
    table_count = tables if tables is not None else max(2, min(4, n // 100 + 2))
    table_names = [f"bench_t{i}" for i in range(table_count)]
    objects: list[Obj] = []
    depth: list[int] = []
    cost: list[int] = []  # inline cost: relations scanned (views) or bodies (functions)
    relations: list[int] = []
    functions: list[int] = []
    trigger_functions: list[int] = []
    width = len(str(n - 1))
    for index, kind in enumerate(kinds):
        name = f"{_PREFIX[kind]}{index:0{width}d}"
        salt = rng.randrange(1, 500)
        deps: list[int] = []
        table: str | None = None
        root = index < 4 or rng.random() < ROOT_SHARE
        if kind in ("view", "matview"):
            if root or not relations:
                if rng.random() < 0.5:
                    table = table_names[int(rng.random() * len(table_names))]
            else:
                want = rng.choice((1, 2, 3))
                n_funcs = sum(1 for _ in range(want) if functions and rng.random() < 0.25)
                n_funcs = min(n_funcs, want - 1)
                rels = _pick_distinct(rng, relations, want - n_funcs, recent=True)
                # Keep the inlined query small: drop the most expensive view dependencies over the cap.
                while len(rels) > 1 and sum(cost[r] for r in rels) > VIEW_INLINE_CAP:
                    rels.remove(max(rels, key=lambda r: cost[r]))
                if sum(cost[r] for r in rels) > VIEW_INLINE_CAP:
                    matviews = [r for r in relations if objects[r].kind == "matview"]
                    rels = [matviews[-1 - int(rng.random() * min(len(matviews), RECENT_WINDOW))]]
                deps = rels + _pick_distinct(rng, functions, n_funcs, recent=False)
            relation_cost = 1 + sum(cost[d] for d in deps if objects[d].kind == "view")
            cost.append(1 if kind == "matview" else relation_cost)
            relations.append(index)
        elif kind == "function":
            if not (root or not functions):
                want = rng.choice((1, 2, 3))
                deps = _pick_distinct(rng, functions, want, recent=False)
                while len(deps) > 1 and 1 + sum(cost[d] for d in deps) > FUNCTION_INLINE_CAP:
                    deps.remove(max(deps, key=lambda d: cost[d]))
                if 1 + sum(cost[d] for d in deps) > FUNCTION_INLINE_CAP:
                    deps = []
            cost.append(1 + sum(cost[d] for d in deps))
            functions.append(index)
        elif kind == "trigger_function":
            if functions and index >= 4:
                deps = _pick_distinct(rng, functions, rng.choice((1, 2)), recent=False)
            cost.append(1)
            trigger_functions.append(index)
        else:
            table = table_names[int(rng.random() * len(table_names))]
            deps = [trigger_functions[int(rng.random() * len(trigger_functions))]]
            deps += _pick_distinct(rng, functions, rng.choice((0, 1, 2)), recent=False)
            cost.append(1)
        objects.append(Obj(index, name, kind, tuple(deps), salt, table))
        depth.append(1 + max((depth[d] for d in deps), default=-1))
    dependents: list[list[int]] = [[] for _ in objects]
    for obj in objects:
        for dep in obj.deps:
            dependents[dep].append(obj.index)
    return Workload(n, seed, objects, table_names, depth, dependents)


def main(argv: Sequence[str] | None = None) -> int:
    """Write a workload and print its statistics."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--out", type=Path, default=None, help="write the modules and setup SQL here")
    args = parser.parse_args(argv)
    workload = generate(args.n, args.seed)
    for key, value in workload.stats().items():
        print(f"{key:>24}: {value}")
    if args.out is not None:
        files = workload.write(args.out, ("samizdat", "dbsamizdat", "compat"))
        print(f"wrote {len(files.modules)} modules and {files.setup_sql}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
