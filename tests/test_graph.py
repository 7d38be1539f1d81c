"""The dependency graph and signatures read from comments, without a database (the planner: test_planner.py)."""

from __future__ import annotations

import itertools
import random
import time

import pytest
from helpers import function, make_registry, matview, trigger, view

from alembic_samizdat import (
    CycleError,
    DanglingReferenceError,
    DeclarationError,
    DuplicateIdentityError,
    ManagedListedAsUnmanagedError,
    SamizdatFunction,
    SamizdatView,
    SelfDependencyError,
    TriggerTargetError,
)
from alembic_samizdat.autorefresh import PREFIX, function_key, trigger_name
from alembic_samizdat.keys import Key, Kind

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
