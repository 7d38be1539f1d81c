"""The dependency graph and the pure planner, without a database."""

from __future__ import annotations

import itertools
import random
import time

import pytest
from helpers import dep_row, function, make_registry, matview, obj_row, state_of, trigger, view

from alembic_samizdat import (
    CycleError,
    DanglingReferenceError,
    DeclarationError,
    DuplicateIdentityError,
    ManagedListedAsUnmanagedError,
    NameClashError,
    SamizdatFunction,
    SamizdatMaterializedView,
    SamizdatTrigger,
    SamizdatView,
    SelfDependencyError,
    TriggerTargetError,
    UnmanagedDependentError,
)
from alembic_samizdat.api import DiffResult
from alembic_samizdat.autorefresh import PREFIX, function_key, trigger_name
from alembic_samizdat.declared import declare
from alembic_samizdat.keys import Key, Kind
from alembic_samizdat.planner import Action, DiffKind, Verb, checkpoint_units, diff, plan_nuke, plan_sync

# --- deps_on forms --------------------------------------------------------------------------------------------


class Base(SamizdatView):
    sql_template = "${preamble} SELECT 1 AS x ${postamble}"


class OtherSchemaBase(SamizdatView):
    schema = "other"
    sql_template = "${preamble} SELECT 1 AS x ${postamble}"


class add_one(SamizdatFunction):
    function_arguments_signature = "x integer, label text"
    sql_template = "${preamble} RETURNS integer LANGUAGE sql AS $$ SELECT x + 1 $$"


class add_one_int(SamizdatFunction):
    function_name = "add_one"
    function_arguments_signature = "x integer"
    sql_template = "${preamble} RETURNS integer LANGUAGE sql AS $$ SELECT x + 1 $$"


def _deps(*classes, of):
    graph = make_registry(*classes).graph()
    return graph, {k.name if not k.extra else f"{k.name}({k.extra})" for k in graph.deps[of.key()]}


def test_deps_on_class() -> None:
    class Top(SamizdatView):
        deps_on = {Base}
        sql_template = '${preamble} SELECT x FROM "Base" ${postamble}'

    graph, deps = _deps(Base, Top, of=Top)
    assert deps == {"Base"}
    assert graph.order.index(Base.key()) < graph.order.index(Top.key())


def test_deps_on_bare_string_resolves_in_the_same_schema() -> None:
    class Same(SamizdatView):
        schema = "other"
        deps_on = {"OtherSchemaBase"}
        sql_template = "${preamble} SELECT 1 ${postamble}"

    _, deps = _deps(Base, OtherSchemaBase, Same, of=Same)
    assert deps == {"OtherSchemaBase"}
    assert make_registry(OtherSchemaBase, Same).graph().deps[Same.key()] == (OtherSchemaBase.key(),)

    class Wrong(SamizdatView):
        deps_on = {"OtherSchemaBase"}  # lives in "other", Wrong in "public"
        sql_template = "${preamble} SELECT 1 ${postamble}"

    with pytest.raises(DanglingReferenceError, match="OtherSchemaBase"):
        make_registry(OtherSchemaBase, Wrong).graph()


def test_deps_on_two_tuple() -> None:
    class Cross(SamizdatView):
        deps_on = {("other", "OtherSchemaBase")}
        sql_template = "${preamble} SELECT 1 ${postamble}"

    graph = make_registry(OtherSchemaBase, Cross).graph()
    assert graph.deps[Cross.key()] == (OtherSchemaBase.key(),)


def test_deps_on_fq_of_another_class() -> None:
    class ByFq(SamizdatView):
        deps_on = {OtherSchemaBase.fq, add_one.fq}
        sql_template = "${preamble} SELECT 1 ${postamble}"

    graph = make_registry(OtherSchemaBase, add_one, ByFq).graph()
    assert set(graph.deps[ByFq.key()]) == {OtherSchemaBase.key(), add_one.key()}


def test_deps_on_three_tuple_picks_the_overload_and_ignores_whitespace() -> None:
    class Uses(SamizdatView):
        deps_on = {("public", "add_one", "  x   integer,\n\tlabel  text ")}
        sql_template = "${preamble} SELECT 1 ${postamble}"

    class UsesOther(SamizdatView):
        deps_on = {("public", "add_one", "x integer")}
        sql_template = "${preamble} SELECT 1 ${postamble}"

    graph = make_registry(add_one, add_one_int, Uses, UsesOther).graph()
    assert graph.deps[Uses.key()] == (add_one.key(),)
    assert graph.deps[UsesOther.key()] == (add_one_int.key(),)


def test_ambiguous_overload_name_is_a_dangling_reference() -> None:
    class Vague(SamizdatView):
        deps_on = {"add_one"}
        sql_template = "${preamble} SELECT 1 ${postamble}"

    with pytest.raises(DanglingReferenceError, match="overload"):
        make_registry(add_one, add_one_int, Vague).graph()
    # a single function by bare name is fine
    assert make_registry(add_one, Vague).graph().deps[Vague.key()] == (add_one.key(),)


def test_three_tuple_with_wrong_signature_is_dangling() -> None:
    class Bad(SamizdatView):
        deps_on = {("public", "add_one", "text")}
        sql_template = "${preamble} SELECT 1 ${postamble}"

    with pytest.raises(DanglingReferenceError, match=r'"public"\."add_one"\(text\)'):
        make_registry(add_one, Bad).graph()


def test_dangling_references() -> None:
    class Unregistered(SamizdatView):
        sql_template = "${preamble} SELECT 1 ${postamble}"

    class ByClass(SamizdatView):
        deps_on = {Unregistered}
        sql_template = "${preamble} SELECT 1 ${postamble}"

    class ByName(SamizdatView):
        deps_on = {"nothing_here"}
        sql_template = "${preamble} SELECT 1 ${postamble}"

    class ByTuple(SamizdatView):
        deps_on = {("nope", "Base")}
        sql_template = "${preamble} SELECT 1 ${postamble}"

    with pytest.raises(DanglingReferenceError, match=r"ByClass.*Unregistered.*not registered"):
        make_registry(Base, ByClass).graph()
    with pytest.raises(DanglingReferenceError, match=r"ByName.*nothing_here"):
        make_registry(Base, ByName).graph()
    with pytest.raises(DanglingReferenceError, match=r"ByTuple"):
        make_registry(Base, ByTuple).graph()


def test_malformed_deps_on_entries() -> None:
    class NotASet(SamizdatView):
        deps_on = "Base"  # a bare string instead of a set
        sql_template = "${preamble} SELECT 1 ${postamble}"

    class BadEntry(SamizdatView):
        deps_on = {42}
        sql_template = "${preamble} SELECT 1 ${postamble}"

    class FourTuple(SamizdatView):
        deps_on = {("a", "b", "c", "d")}
        sql_template = "${preamble} SELECT 1 ${postamble}"

    for cls in (NotASet, BadEntry, FourTuple):
        with pytest.raises(DeclarationError, match=cls.__name__):
            make_registry(Base, cls).graph()


def test_trigger_names_are_not_deps_on_targets() -> None:
    trig = trigger("Base", on_table="tbl", condition="AFTER INSERT", schema="public")

    class Reader(SamizdatView):
        deps_on = {"Base"}
        sql_template = "${preamble} SELECT 1 ${postamble}"

    graph = make_registry(Base, trig, Reader).graph()
    assert graph.deps[Reader.key()] == (Base.key(),)


def test_self_dependency() -> None:
    class Narcissus(SamizdatView):
        deps_on = {"Narcissus"}
        sql_template = "${preamble} SELECT 1 ${postamble}"

    with pytest.raises(SelfDependencyError, match="Narcissus"):
        make_registry(Narcissus).graph()


# --- cycles ---------------------------------------------------------------------------------------------------


def test_cycle_message_shows_the_path() -> None:
    a = view("A", "SELECT 1", deps_on={"B"})
    b = view("B", "SELECT 1", deps_on={"A"})
    with pytest.raises(CycleError) as info:
        make_registry(a, b).graph()
    assert info.value.cycle in (["dyn.A", "dyn.B", "dyn.A"], ["dyn.B", "dyn.A", "dyn.B"])
    assert "dyn.A -> dyn.B -> dyn.A" in str(info.value) or "dyn.B -> dyn.A -> dyn.B" in str(info.value)


def test_cycle_message_shows_only_the_cycle_not_the_tail() -> None:
    entry = view("Entry", "SELECT 1", deps_on={"X"})
    x = view("X", "SELECT 1", deps_on={"Y"})
    y = view("Y", "SELECT 1", deps_on={"Z"})
    z = view("Z", "SELECT 1", deps_on={"X"})
    with pytest.raises(CycleError) as info:
        make_registry(entry, x, y, z).graph()
    cycle = info.value.cycle
    assert cycle[0] == cycle[-1]
    assert sorted(cycle[:-1]) == ["dyn.X", "dyn.Y", "dyn.Z"]
    # each element depends on the next
    nxt = {"dyn.X": "dyn.Y", "dyn.Y": "dyn.Z", "dyn.Z": "dyn.X"}
    assert all(nxt[a] == b for a, b in itertools.pairwise(cycle))


N_LONG = 3000


def _chain(n: int, *, closed: bool) -> list[type]:
    classes = []
    for i in range(n):
        deps = {f"v{i - 1:05d}"} if i > 0 else ({f"v{n - 1:05d}"} if closed else set())
        classes.append(view(f"v{i:05d}", "SELECT 1", deps_on=deps))
    return classes


def test_long_cycle_is_reported_without_recursion_error() -> None:
    classes = _chain(N_LONG, closed=True)
    start = time.perf_counter()
    with pytest.raises(CycleError) as info:
        make_registry(*classes).graph()
    assert time.perf_counter() - start < 10
    assert len(info.value.cycle) == N_LONG + 1


def test_long_acyclic_chain_orders() -> None:
    classes = _chain(N_LONG, closed=False)
    shuffled = classes[:]
    random.Random(4).shuffle(shuffled)
    graph = make_registry(*shuffled).graph()
    assert [k.name for k in graph.order] == [f"v{i:05d}" for i in range(N_LONG)]
    assert len(graph.descendants([classes[0].key()])) == N_LONG - 1
    assert len(graph.ancestors([classes[-1].key()])) == N_LONG - 1


def test_long_chain_reverse_names_orders_by_dependency() -> None:
    # names sort opposite to dependency order: the order must follow the dependencies
    classes = [
        view(f"w{i:05d}", "SELECT 1", deps_on={f"w{i + 1:05d}"} if i < N_LONG - 1 else set()) for i in range(N_LONG)
    ]
    graph = make_registry(*classes).graph()
    assert [k.name for k in graph.order] == [f"w{i:05d}" for i in reversed(range(N_LONG))]


# --- duplicates and targets -----------------------------------------------------------------------------------


def test_duplicate_identity_same_schema_and_name() -> None:
    one = view("Same", "SELECT 1")
    two = matview("Same", "SELECT 2")
    with pytest.raises(DuplicateIdentityError, match="Same"):
        make_registry(one, two).graph()


def test_function_overloads_are_not_duplicates() -> None:
    graph = make_registry(add_one, add_one_int).graph()
    assert len(graph) == 2


def test_same_name_in_two_schemas_is_fine() -> None:
    a = view("Same", "SELECT 1")
    b = view("Same", "SELECT 1", schema="other")
    assert len(make_registry(a, b).graph()) == 2


def test_user_function_clashing_with_a_sidekick_is_a_duplicate() -> None:
    mv = matview("Fresh", "SELECT 1 AS x", refresh_triggers={"tbl"})
    sidekick = function_key(mv.key())
    clash = function(
        "clash",
        "${preamble} RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$",
        function_name=sidekick.name,
    )
    with pytest.raises(DuplicateIdentityError, match=sidekick.name):
        make_registry(mv, clash).graph()


def test_managed_listed_as_unmanaged() -> None:
    reader = view("Reader", "SELECT 1", deps_on_unmanaged={"Base"})
    with pytest.raises(ManagedListedAsUnmanagedError, match=r"Reader.*Base"):
        make_registry(Base, reader).graph()
    # a plain table is fine
    ok = view("Reader2", "SELECT 1", deps_on_unmanaged={"a_table", ("s", "t")})
    assert make_registry(Base, ok).graph().nodes[ok.key()].unmanaged == (("public", "a_table"), ("s", "t"))


def test_trigger_on_a_managed_matview_is_refused() -> None:
    mv = matview("Mat", "SELECT 1 AS x")
    by_class = trigger("on_mat", on_table=mv, condition="AFTER INSERT")
    by_name = trigger("on_mat2", on_table="Mat", condition="AFTER INSERT")
    for trig in (by_class, by_name):
        with pytest.raises(TriggerTargetError, match="materialized view"):
            make_registry(mv, trig).graph()


def test_instead_of_trigger_on_a_managed_view_is_allowed_and_depends_on_it() -> None:
    v = view("Editable", "SELECT 1 AS x")
    trig = trigger("edit", on_table=v, condition="INSTEAD OF INSERT")
    graph = make_registry(v, trig).graph()
    assert graph.deps[trig.key()] == (v.key(),)


def test_refresh_triggers_naming_a_managed_view_or_matview_is_refused() -> None:
    v = view("Plain", "SELECT 1 AS x")
    lower = matview("Lower", "SELECT 1 AS x")
    on_view = matview("M1", "SELECT 1 AS x", deps_on={v}, refresh_triggers={"Plain"})
    on_mat = matview("M2", "SELECT 1 AS x", deps_on={lower}, refresh_triggers={("public", "Lower")})
    with pytest.raises(TriggerTargetError, match=r'"public"\."Plain"'):
        make_registry(v, on_view).graph()
    with pytest.raises(TriggerTargetError, match=r'"public"\."Lower"'):
        make_registry(lower, on_mat).graph()


# --- order, ancestors, descendants ----------------------------------------------------------------------------


def _diamond():
    root = view("root", "SELECT 1")
    left = view("left", "SELECT 1", deps_on={root})
    right = view("right", "SELECT 1", deps_on={"root"})
    top = matview("top", "SELECT 1", deps_on={left, ("public", "right")})
    lone = view("lone", "SELECT 1")
    fn = function("fn", "${preamble} RETURNS int LANGUAGE sql AS $$ SELECT 1 $$", deps_on={top})
    return [root, left, right, top, lone, fn]


def test_order_is_deterministic_and_independent_of_registration_order() -> None:
    classes = _diamond()
    reference = make_registry(*classes).graph().order
    assert make_registry(*classes).graph().order == reference
    rng = random.Random(7)
    for _ in range(10):
        shuffled = classes[:]
        rng.shuffle(shuffled)
        assert make_registry(*shuffled).graph().order == reference
    names = [k.name for k in reference]
    assert names.index("root") < names.index("left") < names.index("top") < names.index("fn")
    assert names.index("right") < names.index("top")


def test_ancestors_and_descendants() -> None:
    root, left, right, top, lone, fn = _diamond()
    graph = make_registry(root, left, right, top, lone, fn).graph()
    assert graph.ancestors([top.key()]) == {root.key(), left.key(), right.key()}
    assert graph.descendants([root.key()]) == {left.key(), right.key(), top.key(), fn.key()}
    assert graph.descendants([lone.key()]) == set()
    assert graph.ancestors([root.key()]) == set()
    assert graph.descendants([left.key(), right.key()]) == {top.key(), fn.key()}


# --- autorefresh sidekicks ------------------------------------------------------------------------------------


def _trigger_keys(graph) -> set[Key]:
    return {k for k in graph.nodes if k.namespace == "trigger" and k.name.startswith(PREFIX)}


def test_autorefresh_sidekicks_are_generated() -> None:
    mv = matview("Fresh", "SELECT 1 AS x", refresh_triggers={"a", ("s", "b")})
    graph = make_registry(mv).graph()
    fkey = function_key(mv.key())
    assert fkey in graph.nodes
    triggers = _trigger_keys(graph)
    assert {(k.schema, k.extra) for k in triggers} == {("public", "a"), ("s", "b")}
    for key in triggers:
        assert graph.deps[key] == (fkey,)
    assert graph.deps[fkey] == (mv.key(),)
    assert graph.order.index(mv.key()) < graph.order.index(fkey)


def test_autorefresh_trigger_names_are_stable_when_other_matviews_come_and_go() -> None:
    mine = matview("mine", "SELECT 1 AS x", refresh_triggers={"t"})
    before = _trigger_keys(make_registry(mine).graph())
    others = [matview(f"a{i}", "SELECT 1 AS x", refresh_triggers={"t"}) for i in range(5)]
    after = _trigger_keys(make_registry(*others, mine).graph())
    assert before <= after
    assert len(after) == 6
    removed = _trigger_keys(make_registry(others[0], mine).graph())
    assert before <= removed


def test_autorefresh_names_fit_for_a_63_byte_view_name() -> None:
    long_name = "m" * 61 + "é"
    assert len(long_name.encode()) == 63
    mv = matview(long_name, "SELECT 1 AS x", refresh_triggers={("s" * 63, "t" * 63)})
    graph = make_registry(mv).graph()
    for key in graph.nodes:
        assert len(key.name.encode()) <= 63
    assert len(function_key(mv.key()).name.encode()) <= 63
    assert len(trigger_name(mv.key(), ("s" * 63, "t" * 63), 9999).encode()) <= 63


def test_autorefresh_trigger_names_sort_in_dependency_order() -> None:
    lower = matview("zzz_lower", "SELECT 1 AS x", refresh_triggers={"t"})
    middle = view("mid", "SELECT 1 AS x", deps_on={lower})
    upper = matview("aaa_upper", "SELECT 1 AS x", deps_on={middle}, refresh_triggers={"t"})
    graph = make_registry(lower, middle, upper).graph()
    by_owner = {graph.nodes[k].generated_by.name: k.name for k in _trigger_keys(graph)}
    assert by_owner["zzz_lower"] < by_owner["aaa_upper"]


# --- the pure planner on hand-built states --------------------------------------------------------------------


class PBase(SamizdatView):
    sql_template = "${preamble} SELECT 1 AS x ${postamble}"


class PTop(SamizdatView):
    deps_on = {PBase}
    sql_template = '${preamble} SELECT x FROM "PBase" ${postamble}'


class PMat(SamizdatMaterializedView):
    deps_on = {PTop}
    sql_template = '${preamble} SELECT x FROM "PTop" ${postamble}'


class PFunc(SamizdatFunction):
    function_arguments_signature = "integer"
    sql_template = "${preamble} RETURNS integer LANGUAGE sql AS $$ SELECT $1 $$"


class PTrig(SamizdatTrigger):
    on_table = "tbl"
    condition = "AFTER INSERT"
    sql_template = "${preamble} FOR EACH ROW EXECUTE FUNCTION f()"


P_CLASSES = (PBase, PTop, PMat, PFunc, PTrig)


def _declared():
    return {cls: declare(cls) for cls in P_CLASSES}


def _in_sync_rows(scope: str = "default", **overrides):
    decl = _declared()
    out = []
    for oid, cls in enumerate(P_CLASSES, start=100):
        out.append(obj_row(decl[cls], oid=oid, scope=scope, **overrides.get(cls.__name__, {})))
    # PTop depends on PBase, PMat on PTop (through their rewrite rules)
    out.append(dep_row("pg_class", 100, "pg_class", 101, "view PTop"))
    out.append(dep_row("pg_class", 101, "pg_class", 102, "materialized view PMat"))
    return out


def test_plan_from_empty_creates_everything_in_order_then_refreshes() -> None:
    graph = make_registry(*P_CLASSES).graph()
    plan = plan_sync(graph, state_of([]))
    creates = [a.key.name for a in plan.actions if a.verb is Verb.CREATE]
    assert creates == [k.name for k in graph.order]
    assert [a.verb for a in plan.actions][-1] is Verb.REFRESH
    assert [a.key.name for a in plan.actions if a.verb is Verb.REFRESH] == ["PMat"]
    assert all(d.what is DiffKind.EXCESS_CODE for d in plan.differences)
    for action in plan.actions:
        if action.verb is Verb.CREATE:
            # Functions are signed by a block that fingerprints them (see test_drift); it names them all the same.
            assert action.declared is not None
            target = action.declared.comment_target()
            if action.declared.kind is Kind.FUNCTION:
                assert action.statements[1].startswith("DO $samizdat$")
                assert f"COMMENT ON {target} IS %L" in action.statements[1]
            else:
                assert action.statements[1].startswith(f"COMMENT ON {target} IS ")
    assert DiffResult(tuple(plan.differences)).exit_code == 102


def test_plan_in_sync_is_empty() -> None:
    graph = make_registry(*P_CLASSES).graph()
    state = state_of(_in_sync_rows())
    plan = plan_sync(graph, state)
    assert plan.actions == () and plan.differences == () and not plan
    assert DiffResult(()).exit_code == 0


def test_plan_changed_root_recreates_dependents_in_order_without_cascade() -> None:
    rows = _in_sync_rows()
    decl = _declared()
    # an old version of PBase, signed with the old hash
    old = type("PBase", (SamizdatView,), {"sql_template": "${preamble} SELECT 2 AS x ${postamble}", "__module__": "m"})
    rows[0] = obj_row(declare(old), oid=100)
    graph = make_registry(*P_CLASSES).graph()
    # First choice: replace it in place; the materialized view above it then holds old data and is refreshed.
    in_place = plan_sync(graph, state_of(rows))
    assert [(a.verb.value, a.key.name) for a in in_place.actions] == [("replace", "PBase"), ("refresh", "PMat")]
    assert in_place.actions[0].statements[0].startswith('CREATE OR REPLACE VIEW "public"."PBase" AS')
    # When PostgreSQL refuses that (or in_place=False), the stack is rebuilt.
    plan = plan_sync(graph, state_of(rows), rebuild={PBase.key(): "refused"})
    assert [(a.verb, a.key) for a in plan_sync(graph, state_of(rows), in_place=False).actions] == [
        (a.verb, a.key) for a in plan.actions
    ]
    assert "recreated because refused" in plan.actions[3].reason
    summary = [(a.verb.value, a.key.name) for a in plan.actions]
    assert summary == [
        ("drop", "PMat"),
        ("drop", "PTop"),
        ("drop", "PBase"),
        ("create", "PBase"),
        ("create", "PTop"),
        ("create", "PMat"),
        ("refresh", "PMat"),
    ]
    assert {d.key.name: d.what for d in plan.differences} == {"PBase": DiffKind.CHANGED}
    for action in plan.actions:
        assert "CASCADE" not in action.sql.upper()
    assert plan.actions[0].statements[-1] == 'DROP MATERIALIZED VIEW "public"."PMat"'
    assert DiffResult(tuple(plan.differences)).exit_code == 103
    assert decl[PBase].sql != declare(old).sql


def test_plan_excess_in_database_is_dropped() -> None:
    rows = _in_sync_rows()
    graph = make_registry(PBase, PTop, PMat, PFunc).graph()  # PTrig no longer declared
    plan = plan_sync(graph, state_of(rows))
    assert [(a.verb.value, a.key.name) for a in plan.actions] == [("drop", "PTrig")]
    assert plan.actions[0].statements == ('DROP TRIGGER "PTrig" ON "public"."tbl"',)
    assert [d.what for d in plan.differences] == [DiffKind.EXCESS_DB]
    assert DiffResult(tuple(plan.differences)).exit_code == 101


def test_plan_unpopulated_matview_is_refreshed_only() -> None:
    rows = _in_sync_rows(PMat={"populated": False})
    plan = plan_sync(make_registry(*P_CLASSES).graph(), state_of(rows))
    assert [(a.verb.value, a.key.name) for a in plan.actions] == [("refresh", "PMat")]
    assert [d.what for d in plan.differences] == [DiffKind.UNPOPULATED]


def test_plan_refuses_unmanaged_dependents_naming_them() -> None:
    rows = _in_sync_rows()
    old = type("PBase", (SamizdatView,), {"sql_template": "${preamble} SELECT 2 AS x ${postamble}", "__module__": "m"})
    rows[0] = obj_row(declare(old), oid=100)
    rows.append(dep_row("pg_class", 101, "pg_class", 999, "view users_own_view"))
    # Replaced in place, a view keeps its dependents: only a rebuild has to refuse.
    graph = make_registry(*P_CLASSES).graph()
    assert [a.verb for a in plan_sync(graph, state_of(rows)).actions] == [Verb.REPLACE, Verb.REFRESH]
    with pytest.raises(UnmanagedDependentError, match="users_own_view"):
        plan_sync(graph, state_of(rows), rebuild={PBase.key(): "PostgreSQL refused"})


def test_plan_nuke_drops_dependents_first_and_refuses_unmanaged() -> None:
    rows = _in_sync_rows()
    plan = plan_nuke(state_of(rows))
    names = [a.key.name for a in plan.actions]
    assert set(names) == {"PBase", "PTop", "PMat", "PFunc", "PTrig"}
    assert names.index("PMat") < names.index("PTop") < names.index("PBase")
    assert all(a.verb is Verb.DROP for a in plan.actions)
    rows.append(dep_row("pg_class", 102, "pg_class", 999, "view users_own_view"))
    with pytest.raises(UnmanagedDependentError, match="users_own_view"):
        plan_nuke(state_of(rows))


def test_other_scopes_and_unsigned_objects_are_ignored_unless_names_clash() -> None:
    graph = make_registry(PBase).graph()
    other_scope = obj_row(declare(PTop), oid=200, scope="someone_else")
    unsigned = obj_row(None, oid=201, kind="view", schema="public", name="handmade", comment=None)
    malformed = obj_row(
        None, oid=202, kind="view", schema="public", name="broken", comment='{"alembic_samizdat": broken'
    )
    state = state_of([other_scope, unsigned, malformed])
    assert state.managed == {}
    assert {o.key.name for o in state.others} == {"PTop", "handmade", "broken"}
    assert next(o for o in state.others if o.key.name == "broken").malformed
    plan = plan_sync(graph, state)
    assert [(a.verb.value, a.key.name) for a in plan.actions] == [("create", "PBase")]
    nuke = plan_nuke(state)
    assert nuke.actions == ()


@pytest.mark.parametrize(
    ("comment", "expected"),
    [
        (None, "no signature"),
        ('{"alembic_samizdat": broken', "cannot be read"),
        ("scope:other", "signed by scope 'other'"),
    ],
)
def test_name_clash_is_refused(comment, expected) -> None:
    if comment == "scope:other":
        row = obj_row(declare(PBase), oid=300, scope="other")
    else:
        row = obj_row(None, oid=300, kind="table", schema="public", name="PBase", comment=comment)
    with pytest.raises(NameClashError, match=expected):
        plan_sync(make_registry(PBase).graph(), state_of([row]))


def test_function_name_clash_is_checked_against_the_printed_signature() -> None:
    clash = obj_row(None, oid=1, kind="function", schema="public", name="PFunc", extra="integer", comment=None)
    with pytest.raises(NameClashError, match="PFunc"):
        plan_sync(make_registry(PFunc).graph(), state_of([clash]))
    other_overload = obj_row(None, oid=1, kind="function", schema="public", name="PFunc", extra="text", comment=None)
    plan = plan_sync(make_registry(PFunc).graph(), state_of([other_overload]))
    assert [a.verb for a in plan.actions] == [Verb.CREATE]


def test_condition_change_is_a_change() -> None:
    rows = _in_sync_rows()
    changed = type(
        "PTrig",
        (SamizdatTrigger,),
        {
            "on_table": "tbl",
            "condition": "AFTER INSERT OR UPDATE",
            "sql_template": PTrig.sql_template,
            "__module__": __name__,
        },
    )
    assert changed.sql_template == PTrig.sql_template
    graph = make_registry(PBase, PTop, PMat, PFunc, changed).graph()
    differences = diff(graph, state_of(rows))
    assert [(d.what, d.key.name) for d in differences] == [(DiffKind.CHANGED, "PTrig")]


def test_undeclared_catalog_dependent_is_recreated_and_warned_about() -> None:
    lower = view("lower", "SELECT 1 AS x")
    hidden = view("hidden", 'SELECT x FROM "lower"')  # no deps_on
    old_lower = view("lower", "SELECT 2 AS x")
    rows = [
        obj_row(declare(old_lower), oid=1),
        obj_row(declare(hidden), oid=2),
        dep_row("pg_class", 1, "pg_class", 2, "view hidden"),
    ]
    plan = plan_sync(make_registry(lower, hidden).graph(), state_of(rows), in_place=False)
    verbs = [(a.verb.value, a.key.name) for a in plan.actions]
    assert verbs.index(("drop", "hidden")) < verbs.index(("drop", "lower"))
    assert ("create", "hidden") in verbs
    assert any("dyn.hidden" in w and "deps_on" in w and "lower" in w for w in plan.warnings)
    # PostgreSQL needs "lower" before the view that reads it, whatever deps_on says
    assert verbs.index(("create", "lower")) < verbs.index(("create", "hidden"))


def test_matview_turned_into_view_is_dropped_as_a_matview() -> None:
    as_mat = matview("shape", "SELECT 1 AS x")
    as_view = view("shape", "SELECT 1 AS x")
    plan = plan_sync(make_registry(as_view).graph(), state_of([obj_row(declare(as_mat), oid=1)]))
    assert [a.statements[-1] for a in plan.actions if a.verb is Verb.DROP] == [
        'DROP MATERIALIZED VIEW "public"."shape"'
    ]
    assert [a.key.name for a in plan.actions if a.verb is Verb.CREATE] == ["shape"]


def _act(verb: Verb, name: str, *, captures: bool = False) -> Action:
    return Action(verb, Key("relation", "s", name), "view", name, ("SELECT 1",), "test", captures=captures)


def test_checkpoint_units_join_a_captured_drop_to_its_create() -> None:
    drop, create, refresh = Verb.DROP, Verb.CREATE, Verb.REFRESH
    actions = [
        _act(drop, "z"),
        _act(drop, "y", captures=True),
        _act(drop, "x"),
        _act(drop, "w", captures=True),
        _act(create, "w"),
        _act(create, "x"),
        _act(create, "y"),
        _act(create, "z"),
        _act(drop, "v", captures=True),
        _act(create, "u"),
        _act(create, "v"),
        _act(refresh, "m"),
    ]
    units = [[f"{a.verb.value[0]}{a.key.name}" for a in unit] for unit in checkpoint_units(actions)]
    # y's span (drop y .. create y) contains w's, which ends inside it; v's span is separate; the rest alone.
    assert units == [
        ["dz"],
        ["dy", "dx", "dw", "cw", "cx", "cy"],
        ["cz"],
        ["dv", "cu", "cv"],
        ["rm"],
    ]
    # An overlapping capture that ends later stretches the unit.
    overlap = [_act(drop, "a", captures=True), _act(drop, "b", captures=True), _act(create, "a"), _act(create, "b")]
    assert [len(u) for u in checkpoint_units(overlap)] == [4]
    # Nothing captured: every action is its own transaction, as DBSamizdat's checkpoint.
    plain = [_act(drop, "a"), _act(create, "a"), _act(create, "b")]
    assert [len(u) for u in checkpoint_units(plain)] == [1, 1, 1]
    # A captured drop that is not recreated (no longer declared) stays alone.
    assert [len(u) for u in checkpoint_units([_act(drop, "gone", captures=True), _act(create, "b")])] == [1, 1]


def test_reading_the_same_comments_twice_gives_the_same_verdicts() -> None:
    # Parsed signatures are kept by comment text: the second read must trust and distrust exactly as the first.
    good = obj_row(None, oid=1, kind="view", schema="public", name="v", comment=None)
    declared = make_registry(*P_CLASSES).graph().nodes
    base = next(k for k in declared if k.name == "PBase")
    signed = obj_row(declared[base], oid=2)
    broken = obj_row(None, oid=3, kind="view", schema="public", name="b", comment='{"alembic_samizdat": [')
    for _ in range(2):
        state = state_of([good, signed, broken])
        assert list(state.managed) == [base]
        assert state.managed[base].signature is not None
        by_name = {o.key.name: o for o in state.others}
        assert by_name["b"].malformed is not None and by_name["b"].signature is None
        assert by_name["v"].signature is None and by_name["v"].malformed is None


# --- signatures that cannot be trusted ----------------------------------------------------------------------------

_GOOD = {"alembic_samizdat": 1, "scope": "default", "kind": "view", "key": ["relation", "public", "v", ""], "hash": "h"}


@pytest.mark.parametrize(
    ("comment", "says"),
    [
        ('{"alembic_samizdat":1,', "not valid JSON"),
        ("[1]", "not a JSON object"),
        ({**_GOOD, "alembic_samizdat": 99}, "unknown signature format 99"),
        ({k: v for k, v in _GOOD.items() if k != "scope"}, "scope and hash must be strings"),
        ({**_GOOD, "hash": 7}, "scope and hash must be strings"),
        ({**_GOOD, "kind": "table"}, "unknown kind 'table'"),
        ({**_GOOD, "key": ["relation", "public", "v"]}, "key must be a list of four strings"),
        ({**_GOOD, "key": ["relation", "public", "v", 1]}, "key must be a list of four strings"),
        ({**_GOOD, "stale": "yes"}, "stale must be true or false"),
        ({**_GOOD, "sql": 5}, "sql must be a string"),
        ({**_GOOD, "grants": [["reader"]]}, r"grants must be a list of \[role, privilege\] pairs"),
        ({**_GOOD, "grants": "reader"}, r"grants must be a list of \[role, privilege\] pairs"),
        ({**_GOOD, "deps": [["relation", "public", "w"]]}, "deps must be a list of keys"),
        ({**_GOOD, "dx": 5}, "dx and fp must be strings"),
        ({**_GOOD, "fp": ["x"]}, "dx and fp must be strings"),
    ],
)
def test_malformed_signature_says_what_is_wrong(comment: object, says: str) -> None:
    import json

    from alembic_samizdat.signature import MalformedSignature, parse

    text = comment if isinstance(comment, str) else json.dumps(comment)
    with pytest.raises(MalformedSignature, match=says):
        parse(text)


def test_well_formed_signature_reads_every_field() -> None:
    import json

    from alembic_samizdat.signature import parse

    body = {
        **_GOOD,
        "stale": True,
        "sql": "SELECT 1",
        "grants": [["writer", "SELECT"], ["reader", "SELECT"]],
        "deps": [["relation", "public", "w", ""]],
        "dx": "12",
        "fp": "ab",
    }
    signature = parse(json.dumps(body))
    assert (signature.scope, signature.kind, signature.key, signature.hash) == (
        "default",
        Kind.VIEW,
        Key("relation", "public", "v", ""),
        "h",
    )
    assert signature.stale is True and signature.sql == "SELECT 1"
    assert signature.grants == (("reader", "SELECT"), ("writer", "SELECT"))
    assert signature.deps == (Key("relation", "public", "w", ""),)
