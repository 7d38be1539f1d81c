"""The harness of the convergence properties (``test_convergence``, ``test_convergence_alembic``).

Random workloads converge: property-based tests of ``sync`` on a real PostgreSQL.

Hypothesis generates registries (views, materialized views with indexes after the postamble, functions with
overloads, trigger functions, triggers on tables and ``INSTEAD OF`` triggers on managed views, autorefresh through
``refresh_triggers``) whose SQL really reads what ``deps_on`` declares, with mixed-case, quoted, unicode and
63-byte names spread over several schemas, and then random edit sequences. After every step the catalog itself is
read and compared with the declarations (never the plan): the set of signed objects, their definitions (a token in
every template shows up in the catalog), their signature hashes, indexes, population, triggers and the generated
autorefresh sidekicks. A second sync must have nothing to do and ``diff_database`` must exit 0.

Every database also holds objects that are not ours: tables, a user's view on a table, a user's trigger, another
scope's samizdats and sometimes a user's view on top of one of ours. They are never dropped or altered (compared
by oid and definition); a step that must drop something under a user's view raises ``UnmanagedDependentError`` and
changes nothing.

Profiles: ``HYPOTHESIS_PROFILE=ci`` (default, 200 examples per property, derandomized: every run draws the same
examples, so a run's coverage and result do not change from one run to the next) or ``long`` (2,000 random
examples; failing ones are kept under ``.hypothesis/examples`` at the repository root and replayed first next time).
"""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from helpers import catalog_snapshot
from hypothesis import HealthCheck, Phase, event, note, settings
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase

from alembic_samizdat import (
    Discipline,
    SamizdatFunction,
    SamizdatMaterializedView,
    SamizdatRegistry,
    SamizdatTrigger,
    SamizdatView,
    UnmanagedDependentError,
    diff_database,
    sync,
)
from alembic_samizdat.model import Samizdat
from alembic_samizdat.signature import definition_hash

# --- Hypothesis profiles ----------------------------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]
_SUPPRESS = [
    HealthCheck.function_scoped_fixture,  # one database per test, reset between examples
    HealthCheck.too_slow,
    HealthCheck.data_too_large,
    HealthCheck.filter_too_much,
]
settings.register_profile(
    "ci",
    max_examples=200,
    deadline=None,
    # The same examples on every run (seeded from the test's name): CI's coverage and verdict are reproducible.
    # Rare branches get explicit @example cases instead of the luck of the draw.
    derandomize=True,
    database=None,
    suppress_health_check=_SUPPRESS,
    print_blob=True,
    # No shrinking here: each example costs a few database round trips, so shrinking one failure takes Hypothesis'
    # full five minutes, and again on every run that replays it. The failing example is saved either way; the
    # "long" profile shrinks it (and the notes print every step's registry, shrunk or not).
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target],
)
settings.register_profile(
    "long",
    parent=settings.get_profile("ci"),
    max_examples=2000,
    phases=tuple(Phase),
    derandomize=False,
    database=DirectoryBasedExampleDatabase(str(REPO / ".hypothesis" / "examples")),
)
# Applied to these tests only (loading it globally would change the settings of every other test module).
PROFILE = settings(
    settings.get_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci")), deadline=None, suppress_health_check=_SUPPRESS
)

# --- the world the registries live in ---------------------------------------------------------------------------

#: Generated schemas (created and dropped by the tests): plain, mixed case with a dot, 63 bytes of unicode.
SCHEMAS = ("sz_plain", "Sz Mixed.Case", "sz_" + "ü" * 30)
#: Base tables (not ours), one set per schema.
TABLES = ("t1", "Tbl Two")
BASE = tuple((s, t) for s in SCHEMAS for t in TABLES)

#: Function identity signatures as PostgreSQL prints them, the full argument list when it differs, and a call.
ARGS: tuple[tuple[str, str | None, str], ...] = (
    ("", None, ""),
    ("integer", None, "1::integer"),
    ("integer, integer", None, "1::integer, 2::integer"),
    ("text", None, "'a'::text"),
    ("bigint", None, "1::bigint"),
    ("x integer, y text", None, "1::integer, 'a'::text"),
    ("n numeric, m integer", "n numeric, m integer DEFAULT 2", "1::numeric, 2::integer"),
)
ARG_CALL = {sig: call for sig, _, call in ARGS}
ARG_FULL = {sig: full for sig, full, _ in ARGS}

#: Trigger conditions; some are spelt in another order than PostgreSQL prints them.
TABLE_CONDITIONS = (
    "AFTER INSERT",
    "BEFORE INSERT OR UPDATE",
    "AFTER UPDATE OR INSERT",
    "AFTER INSERT OR DELETE",
    "BEFORE DELETE",
    "AFTER DELETE OR UPDATE",
)
VIEW_CONDITIONS = ("INSTEAD OF INSERT", "INSTEAD OF UPDATE", "INSTEAD OF DELETE OR INSERT")

NAME_STYLES = ("lower", "mixed", "space", "unicode", "quote", "dot", "long", "long_unicode")

PREFIX = '{"alembic_samizdat":'


def q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def qq(schema: str, name: str) -> str:
    return f"{q(schema)}.{q(name)}"


def make_name(style: str, serial: int) -> str:
    """A name unique to ``serial`` (never reused), in one of several awkward styles; at most 63 bytes."""
    suffix = f"~{serial}"
    if style == "long":
        return "L" + "x" * (62 - len(suffix)) + suffix
    if style == "long_unicode":
        room = 63 - len(suffix)
        return "é" * (room // 2) + "y" * (room % 2) + suffix
    stem = {
        "lower": "obj",
        "mixed": "MixedCase",
        "space": "with space",
        "unicode": "Grüße",
        "quote": 'say "hi"',
        "dot": "a.b",
    }[style]
    return stem + suffix


# --- the model: plain data from which registries are built ------------------------------------------------------

Ident = tuple[str, str, str, str]


@dataclass
class Obj:
    uid: int
    #: view | matview | function (returns integer) | trigfunc (returns trigger) | trigger
    kind: str
    schema: str
    #: The object's name (``function_name`` for functions).
    name: str
    rev: int = 0
    #: Samizdats this one reads (uid -> how deps_on refers to it); always earlier uids, so never a cycle.
    deps: dict[int, str] = field(default_factory=dict)
    #: Base tables read (deps_on_unmanaged).
    reads: tuple[tuple[str, str], ...] = ()
    args: str = ""
    #: Materialized views: indexes after the postamble ("unique" / "plain").
    indexes: tuple[str, ...] = ()
    concurrently: bool = False
    refresh_tables: tuple[tuple[str, str], ...] = ()
    #: Triggers: a base table, or the uid of a managed view (INSTEAD OF).
    target: tuple[str, str] | int | None = None
    target_style: str = "class"
    condition: str = ""

    @property
    def relation(self) -> bool:
        return self.kind in ("view", "matview")

    @property
    def callable(self) -> bool:
        return self.kind == "function"


@dataclass
class Model:
    objs: dict[int, Obj] = field(default_factory=dict)
    next_uid: int = 0
    serial: int = 0

    def copy(self) -> Model:
        return copy.deepcopy(self)

    def fresh_name(self, style: str) -> str:
        self.serial += 1
        return make_name(style, self.serial)

    def ident(self, o: Obj) -> Ident:
        if o.relation:
            return ("relation", o.schema, o.name, "")
        if o.kind in ("function", "trigfunc"):
            return ("function", o.schema, o.name, o.args)
        schema, table = self.trigger_table(o)
        return ("trigger", schema, o.name, table)

    def trigger_table(self, o: Obj) -> tuple[str, str]:
        if isinstance(o.target, int):
            view = self.objs[o.target]
            return (view.schema, view.name)
        assert o.target is not None
        return o.target

    def describe(self) -> str:
        lines = []
        for o in self.objs.values():
            extra = f" deps={o.deps}" if o.deps else ""
            if o.kind == "matview":
                extra += f" idx={o.indexes} conc={o.concurrently} rt={o.refresh_tables}"
            if o.kind == "trigger":
                extra += f" on={o.target}/{o.target_style} {o.condition!r}"
            if o.reads:
                extra += f" reads={o.reads}"
            lines.append(f"  {o.uid}: {o.kind} {o.schema!r}.{o.name!r}({o.args}) rev={o.rev}{extra}")
        return "\n".join(lines) or "  (empty)"


def token(o: Obj) -> str:
    return f"tok:{o.uid}:{o.rev}"


def template(model: Model, o: Obj) -> str:
    """The SQL of ``o``: it reads exactly what its deps say, and carries a token that the catalog shows."""
    calls = [
        f"{qq(d.schema, d.name)}({ARG_CALL[d.args]})" for d in (model.objs[u] for u in sorted(o.deps)) if d.callable
    ]
    if o.relation:
        parts = ["0::bigint"]
        for uid in sorted(o.deps):
            d = model.objs[uid]
            parts.append(f"(SELECT count(*) FROM {qq(d.schema, d.name)})" if d.relation else "0")
        parts.extend(calls)
        parts.extend(f"(SELECT count(*) FROM {qq(s, t)})" for s, t in o.reads)
        sql = f"${{preamble}}\nSELECT '{token(o)}'::text AS tag, ({' + '.join(parts)})::bigint AS n\n${{postamble}}"
        for i, kind in enumerate(o.indexes):
            unique = "UNIQUE " if kind == "unique" else ""
            sql += f";\nCREATE {unique}INDEX ON ${{samizdatname}} ({('tag', 'n')[i % 2]})"
        return sql
    if o.kind == "function":
        body = " + ".join(["1", *calls])
        return f"${{preamble}} RETURNS integer LANGUAGE sql AS $$ SELECT {body} /* {token(o)} */ $$"
    if o.kind == "trigfunc":
        performs = "".join(f"    PERFORM {call};\n" for call in calls)
        return (
            f"${{preamble}} RETURNS trigger LANGUAGE plpgsql AS $$\nBEGIN\n    -- {token(o)}\n{performs}"
            "    RETURN NEW;\nEND\n$$"
        )
    (fn,) = (model.objs[u] for u in o.deps)
    return f"${{preamble}} FOR EACH ROW EXECUTE FUNCTION {qq(fn.schema, fn.name)}('{token(o)}')"


def fingerprint(model: Model, o: Obj) -> tuple[Any, ...]:
    """Everything that shapes the object in the database (what a signature hash must cover)."""
    table = model.trigger_table(o) if o.kind == "trigger" else None
    return (o.kind, template(model, o), o.condition, table, o.args, o.concurrently, tuple(sorted(o.refresh_tables)))


def _table_ref(owner_schema: str, table: tuple[str, str]) -> str | tuple[str, str]:
    return table[1] if table[0] == owner_schema else table


def build(model: Model) -> SamizdatRegistry:
    """Fresh classes for the model (deps first: deps always have smaller uids), in a new registry."""
    classes: dict[int, type[Samizdat]] = {}
    registry = SamizdatRegistry()

    def ref(owner: Obj, uid: int, style: str) -> Any:
        d, cls = model.objs[uid], classes[uid]
        if style == "class":
            return cls
        if style == "fq":
            return cls.fq
        if d.relation:
            return d.name if style == "name" and d.schema == owner.schema else (d.schema, d.name)
        return (d.schema, d.name, d.args)

    for uid in sorted(model.objs):
        o = model.objs[uid]
        ns: dict[str, Any] = {
            "sql_template": template(model, o),
            "schema": o.schema,
            "__module__": "gen",
            "deps_on": {ref(o, u, s) for u, s in o.deps.items()},
            "deps_on_unmanaged": {_table_ref(o.schema, t) for t in o.reads},
        }
        if o.relation:
            base: type[Samizdat] = SamizdatView if o.kind == "view" else SamizdatMaterializedView
            class_name = o.name
            if o.kind == "matview":
                ns["refresh_concurrently"] = o.concurrently
                ns["refresh_triggers"] = {_table_ref(o.schema, t) for t in o.refresh_tables}
        elif o.kind in ("function", "trigfunc"):
            base, class_name = SamizdatFunction, f"{o.kind}_{uid}"
            ns["function_name"] = o.name
            ns["function_arguments_signature"] = o.args
            if ARG_FULL[o.args] is not None:
                ns["function_arguments"] = ARG_FULL[o.args]
        else:
            base, class_name = SamizdatTrigger, o.name
            ns["condition"] = o.condition
            if isinstance(o.target, int):
                if o.target_style == "class":
                    ns["on_table"] = classes[o.target]
                else:
                    view = model.objs[o.target]
                    ns["on_table"] = (view.schema, view.name)
                    ns["deps_on"] = {*ns["deps_on"], classes[o.target]}
            else:
                assert o.target is not None
                ns["on_table"] = _table_ref(o.schema, o.target)
        ns["__qualname__"] = class_name
        classes[uid] = type(class_name, (base,), ns)
        registry.register(classes[uid])
    return registry


# --- drawing registries and edits -------------------------------------------------------------------------------

Draw = Callable[[st.SearchStrategy[Any]], Any]

REL_STYLES = ("class", "name", "tuple", "fq")
FN_STYLES = ("class", "tuple", "fq")


def draw_deps(draw: Draw, candidates: list[Obj], most: int) -> dict[int, str]:
    if not candidates:
        return {}
    chosen = draw(st.lists(st.sampled_from([c.uid for c in candidates]), max_size=most, unique=True))
    by_uid = {c.uid: c for c in candidates}
    return {u: draw(st.sampled_from(REL_STYLES if by_uid[u].relation else FN_STYLES)) for u in chosen}


def draw_matview_options(draw: Draw, o: Obj) -> None:
    o.indexes = tuple(draw(st.lists(st.sampled_from(("unique", "plain")), max_size=2)))
    o.concurrently = "unique" in o.indexes and draw(st.booleans())
    o.refresh_tables = tuple(sorted(draw(st.lists(st.sampled_from(BASE), max_size=2, unique=True))))


def draw_object(draw: Draw, model: Model) -> Obj:
    """A new object (appended to the model) that may depend on any earlier one."""
    uid = model.next_uid
    model.next_uid += 1
    earlier = list(model.objs.values())
    kind = draw(st.sampled_from(("view", "matview", "function", "trigfunc", "trigger")))
    trigfuncs = [o for o in earlier if o.kind == "trigfunc"]
    if kind == "trigger" and not trigfuncs:
        kind = "trigfunc"
    schema = draw(st.sampled_from(SCHEMAS))
    o = Obj(uid, kind, schema, model.fresh_name(draw(st.sampled_from(NAME_STYLES))))
    if o.relation:
        o.deps = draw_deps(draw, [e for e in earlier if e.relation or e.callable], 3)
        o.reads = tuple(sorted(draw(st.lists(st.sampled_from(BASE), max_size=2, unique=True))))
        if kind == "matview":
            draw_matview_options(draw, o)
    elif kind in ("function", "trigfunc"):
        # An overload: the name of an existing function of this schema, with a signature it does not have yet.
        groups: dict[str, set[str]] = {}
        for e in earlier:
            if e.kind in ("function", "trigfunc") and e.schema == schema:
                groups.setdefault(e.name, set()).add(e.args)
        all_args = [sig for sig, _, _ in ARGS] if kind == "function" else [""]
        joinable = sorted(name for name, used in groups.items() if set(all_args) - used)
        if joinable and draw(st.booleans()):
            o.name = draw(st.sampled_from(joinable))
            o.args = draw(st.sampled_from(sorted(set(all_args) - groups[o.name])))
        else:
            o.args = draw(st.sampled_from(all_args))
        o.deps = draw_deps(draw, [e for e in earlier if e.callable], 2)
    else:
        fn = draw(st.sampled_from(trigfuncs))
        o.deps = {fn.uid: draw(st.sampled_from(FN_STYLES))}
        views = [e for e in earlier if e.kind == "view"]
        if views and draw(st.booleans()):
            o.target = draw(st.sampled_from(views)).uid
            o.target_style = draw(st.sampled_from(("class", "tuple")))
            o.condition = draw(st.sampled_from(VIEW_CONDITIONS))
        else:
            o.target = draw(st.sampled_from(BASE))
            o.condition = draw(st.sampled_from(TABLE_CONDITIONS))
    model.objs[uid] = o
    return o


def draw_model(draw: Draw) -> Model:
    """Mostly 1–15 objects, one registry in ten up to 60."""
    big = draw(st.integers(0, 9)) == 9
    count = draw(st.integers(1, 60 if big else 15))
    model = Model()
    for _ in range(count):
        draw_object(draw, model)
    event("objects: " + ("1-5" if count <= 5 else "6-15" if count <= 15 else "16-60"))
    return model


def remove(model: Model, uid: int) -> None:
    """Remove an object; its readers stop reading it, its triggers go with it."""
    todo = [uid]
    while todo:
        gone = todo.pop()
        if gone not in model.objs:
            continue
        del model.objs[gone]
        for o in list(model.objs.values()):
            if o.kind == "trigger" and (gone in o.deps or o.target == gone):
                todo.append(o.uid)
            else:
                o.deps.pop(gone, None)


def compatible_dep(owner: Obj, dep: Obj) -> bool:
    if dep.uid >= owner.uid or dep.uid in owner.deps:
        return False
    if owner.relation:
        return dep.relation or dep.callable
    if owner.kind in ("function", "trigfunc"):
        return dep.callable
    return False


def draw_edit(draw: Draw, model: Model, world: World) -> str:
    """Apply one random edit to ``model`` (or, for user_* edits, to the database); describe it."""
    objs = list(model.objs.values())
    by_kind: dict[str, list[Obj]] = {}
    for o in objs:
        by_kind.setdefault(o.kind, []).append(o)
    relations = [o for o in objs if o.relation]
    targeted = {o.target for o in objs if o.kind == "trigger"}
    swappable = [s for s in SCHEMAS if sum(1 for o in relations if o.schema == s) >= 2]
    dep_owners = [o for o in objs if any(compatible_dep(o, d) for d in objs)]
    applicable = {
        "template": bool(objs),
        "condition": bool(by_kind.get("trigger")),
        "refresh": bool(by_kind.get("matview")),
        "add": len(objs) < 60,
        "remove": bool(objs),
        "rename": bool(objs),
        "swap": bool(swappable),
        "add_dep": bool(dep_owners),
        "drop_dep": any(o.deps and o.kind != "trigger" for o in objs),
        "kind": any(o.kind == "matview" or (o.kind == "view" and o.uid not in targeted) for o in relations),
        "user_view": any(o.relation or o.callable for o in objs),
        "user_drop": bool(world.user_views),
    }
    op = draw(st.sampled_from([name for name, ok in applicable.items() if ok]))
    event(f"edit: {op}")
    if op == "template":
        o = draw(st.sampled_from(objs))
        o.rev += 1
        return f"template of {o.uid}"
    if op == "condition":
        o = draw(st.sampled_from(by_kind["trigger"]))
        pool = VIEW_CONDITIONS if isinstance(o.target, int) else TABLE_CONDITIONS
        o.condition = draw(st.sampled_from([c for c in pool if c != o.condition]))
        return f"condition of {o.uid}: {o.condition}"
    if op == "refresh":
        o = draw(st.sampled_from(by_kind["matview"]))
        what = draw(st.sampled_from(("concurrently", "tables", "indexes")))
        if what == "concurrently":
            o.concurrently = not o.concurrently
            if o.concurrently and "unique" not in o.indexes:
                o.indexes = (*o.indexes, "unique")
        elif what == "tables":
            o.refresh_tables = tuple(sorted(draw(st.lists(st.sampled_from(BASE), max_size=3, unique=True))))
        else:
            o.indexes = tuple(draw(st.lists(st.sampled_from(("unique", "plain")), max_size=2)))
            o.concurrently = o.concurrently and "unique" in o.indexes
        return f"refresh options of {o.uid}: {what}"
    if op == "add":
        o = draw_object(draw, model)
        return f"add {o.uid}"
    if op == "remove":
        o = draw(st.sampled_from(objs))
        remove(model, o.uid)
        return f"remove {o.uid}"
    if op == "rename":
        o = draw(st.sampled_from(objs))
        o.name = model.fresh_name(draw(st.sampled_from(NAME_STYLES)))
        if o.kind != "trigger" and draw(st.booleans()):
            o.schema = draw(st.sampled_from(SCHEMAS))
        return f"rename {o.uid} to {o.schema}.{o.name}"
    if op == "swap":
        schema = draw(st.sampled_from(swappable))
        a, b = draw(
            st.lists(
                st.sampled_from([o for o in relations if o.schema == schema]),
                min_size=2,
                max_size=2,
                unique_by=lambda o: o.uid,
            )
        )
        a.name, b.name = b.name, a.name
        return f"swap names of {a.uid} and {b.uid}"
    if op == "add_dep":
        o = draw(st.sampled_from(dep_owners))
        d = draw(st.sampled_from([d for d in objs if compatible_dep(o, d)]))
        o.deps[d.uid] = draw(st.sampled_from(REL_STYLES if d.relation else FN_STYLES))
        return f"{o.uid} now depends on {d.uid}"
    if op == "drop_dep":
        o = draw(st.sampled_from([o for o in objs if o.deps and o.kind != "trigger"]))
        gone = draw(st.sampled_from(sorted(o.deps)))
        del o.deps[gone]
        return f"{o.uid} no longer depends on {gone}"
    if op == "kind":
        o = draw(st.sampled_from([o for o in relations if o.kind == "matview" or o.uid not in targeted]))
        if o.kind == "matview":
            o.kind, o.indexes, o.concurrently, o.refresh_tables = "view", (), False, ()
        else:
            o.kind = "matview"
            draw_matview_options(draw, o)
        return f"{o.uid} is now a {o.kind}"
    if op == "user_view":
        o = draw(st.sampled_from([o for o in objs if o.relation or o.callable]))
        world.add_user_view(model, o, draw(st.sampled_from(SCHEMAS)))
        return f"user view on top of {o.uid}"
    name = draw(st.sampled_from(sorted(world.user_views)))
    world.drop_user_view(name)
    return f"user drops {name}"


# --- the other objects in every database ------------------------------------------------------------------------

S0, S1, S2 = SCHEMAS


class oth_view(SamizdatView):
    schema = S1
    deps_on_unmanaged = {"t1"}
    sql_template = f"${{preamble}} SELECT id, v FROM {qq(S1, 't1')} ${{postamble}}"


class oth_func(SamizdatFunction):
    schema = S0
    function_arguments_signature = "integer"
    sql_template = "${preamble} RETURNS integer LANGUAGE sql AS $$ SELECT $1 + 1 $$"


class OthMat(SamizdatMaterializedView):
    schema = S0
    deps_on_unmanaged = {"t1"}
    refresh_triggers = {"t1"}
    refresh_concurrently = True
    sql_template = f"${{preamble}} SELECT count(*) AS c FROM {qq(S0, 't1')} ${{postamble}}; CREATE UNIQUE INDEX ON ${{samizdatname}} (c)"


class oth_tf(SamizdatFunction):
    schema = S2
    sql_template = "${preamble} RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$"


class oth_trigger(SamizdatTrigger):
    schema = S2
    on_table = "Tbl Two"
    condition = "AFTER INSERT"
    deps_on = {oth_tf}
    sql_template = f"${{preamble}} FOR EACH ROW EXECUTE FUNCTION {qq(S2, 'oth_tf')}()"


OTHER = SamizdatRegistry(scope="other")
OTHER.register_all(oth_view, oth_func, OthMat, oth_tf, oth_trigger)


def reset_sql() -> list[str]:
    statements = ["DROP SCHEMA IF EXISTS " + ", ".join(q(s) for s in SCHEMAS) + " CASCADE"]
    for schema in SCHEMAS:
        statements += [
            f"CREATE SCHEMA {q(schema)}",
            f"CREATE TABLE {qq(schema, 't1')} (id int PRIMARY KEY, v int)",
            f"INSERT INTO {qq(schema, 't1')} VALUES (1, 10), (2, 20)",
            f'CREATE TABLE {qq(schema, "Tbl Two")} (id int, "Val" text)',
            f"INSERT INTO {qq(schema, 'Tbl Two')} VALUES (1, 'one')",
        ]
    statements += [
        f"CREATE VIEW {qq(S0, 'user base view')} AS SELECT id, v * 2 AS w FROM {qq(S0, 't1')}",
        f"CREATE FUNCTION {qq(S1, 'user_fn')}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$",
        f"CREATE TRIGGER user_trigger AFTER INSERT ON {qq(S1, 't1')} FOR EACH ROW EXECUTE FUNCTION {qq(S1, 'user_fn')}()",
    ]
    return statements


# --- reading the catalog ----------------------------------------------------------------------------------------

CATALOG_SQL = {
    "relation": """
        SELECT c.oid::bigint AS oid, n.nspname AS schema, c.relname AS name, c.relkind::text AS relkind,
               obj_description(c.oid, 'pg_class') AS comment,
               CASE WHEN c.relkind IN ('v', 'm') THEN pg_get_viewdef(c.oid) END AS definition,
               c.relispopulated AS populated,
               i.indrelid::bigint AS table_oid, i.indisunique AS is_unique,
               CASE WHEN c.relkind = 'i'
                    THEN replace(pg_get_indexdef(c.oid), 'INDEX ' || quote_ident(c.relname) || ' ON', 'INDEX ON')
               END AS indexdef,
               (SELECT string_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod), ', ' ORDER BY a.attnum)
                FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped) AS columns
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        LEFT JOIN pg_index i ON i.indexrelid = c.oid
        WHERE n.nspname = ANY(CAST(:schemas AS text[])) AND c.relkind IN ('r', 'v', 'm', 'i', 'S', 'p', 'f')""",
    "function": """
        SELECT p.oid::bigint AS oid, n.nspname AS schema, p.proname AS name,
               pg_get_function_identity_arguments(p.oid) AS args, pg_get_function_result(p.oid) AS result,
               p.prosrc AS source, obj_description(p.oid, 'pg_proc') AS comment
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname = ANY(CAST(:schemas AS text[]))""",
    "trigger": """
        SELECT t.oid::bigint AS oid, n.nspname AS schema, c.relname AS "table", t.tgname AS name,
               pg_get_triggerdef(t.oid) AS definition, t.tgfoid::bigint AS function_oid, t.tgenabled::text AS enabled,
               obj_description(t.oid, 'pg_trigger') AS comment
        FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE NOT t.tgisinternal AND n.nspname = ANY(CAST(:schemas AS text[]))""",
}


def signature_of(comment: str | None, scope: str = "default") -> dict[str, Any] | None:
    if comment is None or not comment.startswith(PREFIX):
        return None
    body = json.loads(comment)
    return body if body.get("scope") == scope else None


@dataclass
class Catalog:
    """Every object in the generated schemas, split into ours (signed by scope "default") and everything else."""

    ours: dict[Ident, dict[str, Any]]
    our_indexes: dict[int, list[dict[str, Any]]]
    foreign: frozenset[tuple[Any, ...]]
    functions_by_oid: dict[int, dict[str, Any]]


def read_catalog(conn: sa.Connection) -> Catalog:
    found = {
        cat: [dict(r._mapping) for r in conn.execute(sa.text(sql), {"schemas": list(SCHEMAS)})]
        for cat, sql in CATALOG_SQL.items()
    }
    ours: dict[Ident, dict[str, Any]] = {}
    foreign: set[tuple[Any, ...]] = set()
    for cat, rows in found.items():
        for row in rows:
            sig = signature_of(row["comment"])
            if sig is None or (cat == "relation" and row["relkind"] not in ("v", "m")):
                continue
            if cat == "relation":
                ident: Ident = ("relation", row["schema"], row["name"], "")
            elif cat == "function":
                ident = ("function", row["schema"], row["name"], row["args"])
            else:
                ident = ("trigger", row["schema"], row["name"], row["table"])
            assert ident not in ours, ident
            ours[ident] = {**row, "signature": sig}
    our_oids = {row["oid"] for row in ours.values()}
    our_indexes: dict[int, list[dict[str, Any]]] = {}
    for cat, rows in found.items():
        for row in rows:
            if row["oid"] in our_oids and (cat != "relation" or row["relkind"] in ("v", "m")):
                continue
            if cat == "relation" and row["relkind"] == "i" and row["table_oid"] in our_oids:
                our_indexes.setdefault(row["table_oid"], []).append(row)
                continue
            foreign.add((cat, *sorted(row.items())))
    functions_by_oid = {row["oid"]: row for row in found["function"]}
    return Catalog(ours, our_indexes, frozenset(foreign), functions_by_oid)


def events(condition: str) -> tuple[str, frozenset[str]]:
    """``AFTER UPDATE OR INSERT`` -> ("AFTER", {"INSERT", "UPDATE"}), whatever order the events are in."""
    for timing in ("BEFORE", "AFTER", "INSTEAD OF"):
        if condition.startswith(timing + " "):
            return timing, frozenset(e.strip() for e in condition[len(timing) + 1 :].split(" OR "))
    raise AssertionError(condition)


_TRIGGERDEF = re.compile(r" (BEFORE|AFTER|INSTEAD OF) (.*?) ON ")
_REFRESH = re.compile(r"REFRESH MATERIALIZED VIEW( CONCURRENTLY)? (.*);")


def normalized(catalog: Catalog) -> list[tuple[Any, ...]]:
    """Our objects without oids (and index names): equal for equal declarations, whatever the history."""
    out: list[tuple[Any, ...]] = []
    for ident, row in catalog.ours.items():
        data = {k: v for k, v in row.items() if k not in ("oid", "function_oid", "table_oid", "signature")}
        if isinstance(data.get("comment"), str):
            # The transaction id a signature records differs with history; the fingerprint next to it must not.
            data["comment"] = re.sub(r',"dx":"[0-9]+"', "", data["comment"])
        if ident[0] == "trigger":
            fn = catalog.functions_by_oid[row["function_oid"]]
            data["function"] = (fn["schema"], fn["name"], fn["args"])
        if ident[0] == "relation":
            data["indexes"] = sorted((i["indexdef"], i["is_unique"]) for i in catalog.our_indexes.get(row["oid"], []))
        out.append((ident, sorted(data.items())))
    return sorted(out)


# --- the world: one database, reset between examples ------------------------------------------------------------


class World:
    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        #: User views on top of our objects: name -> (schema, the identity of ours it reads).
        self.user_views: dict[str, tuple[str, Ident]] = {}
        #: Objects of ours changed by hand since the last sync (drift): the next sync recreates them.
        self.hand_edited: set[Ident] = set()
        self.foreign: frozenset[tuple[Any, ...]] = frozenset()
        self.counter = 0
        self.resets = 0

    def catalog(self) -> Catalog:
        with self.engine.connect() as conn:
            return read_catalog(conn)

    def reset(self) -> None:
        self.resets += 1
        if self.resets % 25 == 0:
            # A fresh server process now and then: a session that has seen thousands of short-lived names keeps
            # growing caches and gets slower (measured: ~1 GB and seconds per statement after ~45 minutes).
            self.engine.dispose()
        with self.engine.begin() as conn:
            conn.exec_driver_sql(";\n".join(reset_sql()))
        result = sync(self.engine, OTHER)
        assert result.applied == result.plan.actions
        self.user_views = {}
        self.hand_edited = set()
        self.foreign = self.catalog().foreign

    def hand_edit(self, model: Model, target: Obj) -> None:
        """Change one of our objects behind the tool's back, the ways users do: a view replaced (same columns),
        a function altered, a trigger disabled."""
        if target.kind == "view":
            with self.engine.begin() as conn:
                definition = conn.execute(
                    sa.text("SELECT pg_get_viewdef(CAST(:v AS regclass))"), {"v": qq(target.schema, target.name)}
                ).scalar()
                body = str(definition).strip().rstrip(";")
                conn.exec_driver_sql(
                    f"CREATE OR REPLACE VIEW {qq(target.schema, target.name)} AS SELECT * FROM ({body}) AS hand",
                    execution_options={"no_parameters": True},
                )
        elif target.kind in ("function", "trigfunc"):
            statement = f"ALTER FUNCTION {qq(target.schema, target.name)}({target.args}) COST 7"
            with self.engine.begin() as conn:
                conn.exec_driver_sql(statement, execution_options={"no_parameters": True})
        else:
            schema, table = model.trigger_table(target)
            with self.engine.begin() as conn:
                conn.exec_driver_sql(
                    f"ALTER TABLE {qq(schema, table)} DISABLE TRIGGER {q(target.name)}",
                    execution_options={"no_parameters": True},
                )
        self.hand_edited.add(model.ident(target))

    def add_user_view(self, model: Model, target: Obj, schema: str) -> None:
        self.counter += 1
        name = f"user top {self.counter}"
        if target.relation:
            body = f"SELECT * FROM {qq(target.schema, target.name)}"
        else:
            body = f"SELECT {qq(target.schema, target.name)}({ARG_CALL[target.args]}) AS x"
        with self.engine.begin() as conn:
            conn.exec_driver_sql(f"CREATE VIEW {qq(schema, name)} AS {body}")
        self.user_views[name] = (schema, model.ident(target))
        self.foreign = self.catalog().foreign

    def drop_user_view(self, name: str) -> None:
        schema, _ = self.user_views.pop(name)
        with self.engine.begin() as conn:
            conn.exec_driver_sql(f"DROP VIEW {qq(schema, name)}")
        self.foreign = self.catalog().foreign

    def blockers(self, old: Model, new: Model) -> list[str]:
        """User views that read something the step must drop: changed, removed, or below either."""
        old_fp = {old.ident(o): fingerprint(old, o) for o in old.objs.values()}
        new_fp = {new.ident(o): fingerprint(new, o) for o in new.objs.values()}
        dependents: dict[Ident, set[Ident]] = {}
        for model in (old, new):
            for o in model.objs.values():
                reads = [model.objs[u] for u in o.deps]
                if o.kind == "trigger" and isinstance(o.target, int):
                    reads.append(model.objs[o.target])
                for d in reads:
                    dependents.setdefault(model.ident(d), set()).add(model.ident(o))
        changed = {i for i, fp in old_fp.items() if new_fp.get(i) != fp} | (self.hand_edited & set(old_fp))
        # Replaced in place (every view here keeps its columns, hand edits included): a view, function or
        # trigger that stays the same kind, unless something it reads or read is dropped.
        old_kind = {old.ident(o): o.kind for o in old.objs.values()}
        new_kind = {new.ident(o): o.kind for o in new.objs.values()}
        replaceable = {
            i
            for i in changed
            if old_kind[i] == new_kind.get(i) and old_kind[i] in ("view", "function", "trigfunc", "trigger")
        }
        old_reads: dict[Ident, set[Ident]] = {}
        for o in old.objs.values():
            reads = [old.objs[u] for u in o.deps]
            if o.kind == "trigger" and isinstance(o.target, int):
                reads.append(old.objs[o.target])
            old_reads[old.ident(o)] = {old.ident(d) for d in reads}
        doomed = changed - replaceable
        while True:
            todo = list(doomed)
            while todo:
                for nxt in dependents.get(todo.pop(), ()):
                    if nxt in old_fp and nxt not in doomed:
                        doomed.add(nxt)
                        todo.append(nxt)
            tied = {i for i in replaceable - doomed if old_reads[i] & doomed}
            if not tied:
                break
            doomed |= tied
        return sorted(name for name, (_, target) in self.user_views.items() if target in doomed)

    def step(self, old: Model, new: Model, discipline: Discipline, dry_first: bool) -> None:
        registry = build(new)
        blockers = self.blockers(old, new)
        note(f"blockers: {blockers}")
        if dry_first and not blockers:
            before = catalog_snapshot(self.engine)
            dry = sync(self.engine, registry, discipline=Discipline.DRYRUN)
            assert dry.applied == dry.plan.actions and not dry.committed
            assert catalog_snapshot(self.engine) == before, "a dry run changed the database"
        if blockers:
            event("a user's view stopped a sync")
            before = catalog_snapshot(self.engine)
            with pytest.raises(UnmanagedDependentError) as raised:
                sync(self.engine, registry, discipline=discipline)
            assert catalog_snapshot(self.engine) == before, "a refused sync changed the database"
            for name in blockers:
                assert name in str(raised.value)
            # The user gets out of the way (the documented fix), and the step goes on.
            for name in blockers:
                self.drop_user_view(name)
        result = sync(self.engine, registry, discipline=discipline)
        assert result.committed and result.applied == result.plan.actions, result.summary()
        # Every hand-edited object still declared was recreated (drift is reported, and sync puts it back).
        recreated = {tuple(a.key) for a in result.applied if a.verb.value in ("create", "replace")}
        kept = {new.ident(o) for o in new.objs.values()}
        assert self.hand_edited & kept <= recreated, f"not put back: {sorted((self.hand_edited & kept) - recreated)}"
        self.hand_edited = set()
        self.verify(new, registry)

    def verify(self, model: Model, registry: SamizdatRegistry) -> None:
        catalog = self.catalog()
        assert catalog.foreign == self.foreign, describe_foreign_change(self.foreign, catalog.foreign)
        check_catalog(model, registry, catalog)
        # Idempotent, judged by the catalog too: a second sync changes no oid, definition or privilege.
        settled = catalog_snapshot(self.engine, oids=True)
        again = sync(self.engine, registry)
        assert again.plan.actions == (), [a.describe() for a in again.plan.actions]
        assert catalog_snapshot(self.engine, oids=True) == settled, "a second sync changed the catalog"
        assert diff_database(self.engine, registry).exit_code == 0


def describe_foreign_change(before: frozenset[Any], after: frozenset[Any]) -> str:
    return f"objects that are not ours changed: gone {sorted(before - after)}; new {sorted(after - before)}"


def check_catalog(model: Model, registry: SamizdatRegistry, catalog: Catalog) -> None:
    """The catalog holds exactly the declared objects, complete, with their definitions and signatures."""
    graph = registry.graph()
    hashes = {(k.namespace, k.schema, k.name, k.extra): definition_hash(n) for k, n in graph.nodes.items()}
    assert set(catalog.ours) == set(hashes), (
        f"missing {sorted(set(hashes) - set(catalog.ours))}; excess {sorted(set(catalog.ours) - set(hashes))}"
    )
    for ident, row in catalog.ours.items():
        sig = row["signature"]
        assert sig["hash"] == hashes[ident], f"{ident} signed with another hash"
        assert tuple(sig["key"]) == ident and not sig.get("stale", False), (ident, sig)
    declared = {model.ident(o): o for o in model.objs.values()}
    generated = {i for i in catalog.ours if i[2].startswith("samizdat_")}
    assert set(catalog.ours) - generated == set(declared)
    oid_of = {ident: row["oid"] for ident, row in catalog.ours.items()}
    for ident, o in declared.items():
        row = catalog.ours[ident]
        assert row["signature"]["kind"] == o.kind.replace("trigfunc", "function")
        if o.relation:
            assert row["relkind"] == ("v" if o.kind == "view" else "m")
            assert f"'{token(o)}'::text" in row["definition"], (ident, row["definition"])
            indexes = catalog.our_indexes.get(row["oid"], [])
            assert sorted("unique" if i["is_unique"] else "plain" for i in indexes) == sorted(o.indexes), ident
            assert row["populated"], f"{ident} is not populated"
        elif o.kind in ("function", "trigfunc"):
            assert token(o) in row["source"]
            assert row["result"] == ("integer" if o.kind == "function" else "trigger")
        else:
            (fn,) = (model.objs[u] for u in o.deps)
            assert row["function_oid"] == oid_of[model.ident(fn)]
            assert f"'{token(o)}'" in row["definition"]
            found = _TRIGGERDEF.search(row["definition"])
            assert found is not None and events(f"{found[1]} {found[2]}") == events(o.condition), row["definition"]
    check_sidekicks(model, catalog)


def check_sidekicks(model: Model, catalog: Catalog) -> None:
    """One refresh function per autorefreshed view, one trigger per table, firing readers after what they read."""
    refreshes: dict[int, tuple[Ident, bool]] = {}
    for ident, row in catalog.ours.items():
        if ident[0] == "function" and ident[2].startswith("samizdat_"):
            found = _REFRESH.search(row["source"])
            assert found is not None, row["source"]
            view = next(o for o in model.objs.values() if o.kind == "matview" and qq(o.schema, o.name) == found[2])
            assert ident[1] == view.schema and ident[3] == ""
            refreshes[row["oid"]] = (model.ident(view), bool(found[1]))
    expected_views = {model.ident(o): o.concurrently for o in model.objs.values() if o.refresh_tables}
    assert sorted(refreshes.values()) == sorted(expected_views.items())
    fired: dict[tuple[str, str], list[tuple[str, Ident]]] = {}
    for ident, row in catalog.ours.items():
        if ident[0] == "trigger" and ident[2].startswith("samizdat_"):
            view_ident, _ = refreshes[row["function_oid"]]
            fired.setdefault((ident[1], ident[3]), []).append((ident[2], view_ident))
    expected = {
        (table, model.ident(o)) for o in model.objs.values() if o.kind == "matview" for table in o.refresh_tables
    }
    assert {(table, view) for table, lst in fired.items() for _, view in lst} == expected
    assert sum(len(v) for v in fired.values()) == len(expected)
    # PostgreSQL fires a table's triggers in name (byte) order: a view must refresh after every view it reads.
    ancestors = ancestors_of(model)
    for lst in fired.values():
        order = [view for _, view in sorted(lst, key=lambda item: item[0].encode())]
        for i, early in enumerate(order):
            for late in order[i + 1 :]:
                assert late not in ancestors[early], f"{early} refreshes before {late}, which it reads"


def ancestors_of(model: Model) -> dict[Ident, set[Ident]]:
    out: dict[Ident, set[Ident]] = {}
    for uid in sorted(model.objs):
        o = model.objs[uid]
        found: set[Ident] = set()
        for dep in o.deps:
            d = model.objs[dep]
            found |= {model.ident(d)} | out[model.ident(d)]
        out[model.ident(o)] = found
    return out


def exercise(engine: sa.Engine, model: Model) -> None:
    """Use what was created, then roll back: DML fires every trigger (autorefresh included), and every view and
    materialized view is read (so every function it calls runs)."""
    with engine.connect() as conn, conn.begin() as tx:
        for schema in SCHEMAS:
            conn.exec_driver_sql(
                f"INSERT INTO {qq(schema, 't1')} VALUES (100, 1); UPDATE {qq(schema, 't1')} SET v = v + 1; "
                f"DELETE FROM {qq(schema, 't1')} WHERE id = 1; "
                f"INSERT INTO {qq(schema, 'Tbl Two')} VALUES (100, 'x'); UPDATE {qq(schema, 'Tbl Two')} SET id = 3; "
                f"DELETE FROM {qq(schema, 'Tbl Two')} WHERE id = 3"
            )
        handled: dict[str, set[str]] = {}
        for o in model.objs.values():
            if o.kind == "trigger" and isinstance(o.target, int):
                handled.setdefault(qq(*model.trigger_table(o)), set()).update(events(o.condition)[1])
        dml = {
            "INSERT": "INSERT INTO {} (tag, n) VALUES ('x', 1)",
            "UPDATE": "UPDATE {} SET n = 2",
            "DELETE": "DELETE FROM {}",
        }
        for view, verbs in handled.items():
            conn.exec_driver_sql("; ".join(dml[verb].format(view) for verb in sorted(verbs)))
        relations = [qq(o.schema, o.name) for o in model.objs.values() if o.relation]
        if relations:
            conn.exec_driver_sql("SELECT " + ", ".join(f"(SELECT count(*) FROM {r})" for r in relations))
        tx.rollback()
