"""Memoized declarations and graphs: a repeated call reuses them, and no change to the classes is ever missed.

Nothing here measures time (the benchmark does, in bench/); the tests check what is reused and, above all, that a
changed class, a new class, another set of classes or another scope never gets a stale graph or plan.
"""

from __future__ import annotations

import sqlalchemy as sa
from helpers import make_registry, matview, relation_oid, scalar, view, view_definition

from alembic_samizdat import SamizdatRegistry, SamizdatView, api
from alembic_samizdat.declared import declare, declared_of
from alembic_samizdat.graph import build_graph, graph_of
from alembic_samizdat.signature import definition_hash

# --- without a database -----------------------------------------------------------------------------------------


def test_an_unchanged_registry_reuses_its_graph_and_declarations() -> None:
    base = view("memo_base", "SELECT 1 AS one")
    top = view("memo_top", 'SELECT one FROM "public"."memo_base"', deps_on={base})
    registry = make_registry(base, top)
    graph = registry.graph()
    assert registry.graph() is graph
    # Another registry with the same classes (a CLI run, api.sync on a list of classes) gets it too.
    assert make_registry(base, top).graph() is graph
    assert declared_of(top) is declared_of(top)
    # The memoized graph is the graph build_graph makes.
    fresh = build_graph([base, top])
    assert fresh.order == graph.order and dict(fresh.deps) == dict(graph.deps)


def test_reassigning_an_attribute_builds_the_graph_again() -> None:
    cls = view("memo_reassigned", "SELECT 1 AS one")
    registry = make_registry(cls)
    before = registry.graph()
    old_hash = definition_hash(before.nodes[cls.key()])
    cls.sql_template = "${preamble} SELECT 2 AS two ${postamble}"
    after = registry.graph()
    assert after is not before
    assert "SELECT 2 AS two" in after.nodes[cls.key()].sql
    assert definition_hash(after.nodes[cls.key()]) != old_hash
    assert after.nodes[cls.key()] == declare(cls)


def test_changing_a_dependency_set_in_place_is_seen() -> None:
    a = view("memo_a", "SELECT 1 AS one")
    b = view("memo_b", "SELECT 1 AS one")
    top = view("memo_dep_top", 'SELECT one FROM "public"."memo_a"', deps_on={a})
    registry = make_registry(a, b, top)
    assert registry.graph().deps[top.key()] == (a.key(),)
    top.deps_on.add(b)  # type: ignore[attr-defined]
    assert set(registry.graph().deps[top.key()]) == {a.key(), b.key()}
    top.deps_on.discard(a)  # type: ignore[attr-defined]
    assert registry.graph().deps[top.key()] == (b.key(),)


def test_changing_nested_grants_in_place_is_seen() -> None:
    cls = view("memo_grants", "SELECT 1 AS one", grants={"reporting": {"SELECT"}})
    registry = make_registry(cls)
    assert registry.graph().nodes[cls.key()].grants == (("reporting", "SELECT"),)
    cls.grants["reporting"].add("INSERT")  # type: ignore[index]
    assert registry.graph().nodes[cls.key()].grants == (("reporting", "INSERT"), ("reporting", "SELECT"))
    cls.grants["auditor"] = ["SELECT"]  # type: ignore[index]
    assert ("auditor", "SELECT") in registry.graph().nodes[cls.key()].grants


def test_changing_an_inherited_attribute_is_seen() -> None:
    class Base(SamizdatView):
        __abstract__ = True
        deps_on_unmanaged = {"memo_t1"}

    class Child(Base):
        sql_template = "${preamble} SELECT 1 AS one ${postamble}"

    registry = make_registry(Child)
    assert registry.graph().nodes[Child.key()].unmanaged == (("public", "memo_t1"),)
    Base.deps_on_unmanaged.add("memo_t2")  # type: ignore[attr-defined]
    assert registry.graph().nodes[Child.key()].unmanaged == (("public", "memo_t1"), ("public", "memo_t2"))
    Base.schema = "elsewhere"
    assert registry.graph().nodes[Child.key()].key.schema == "elsewhere"


def test_an_overridden_classmethod_assigned_later_is_seen() -> None:
    cls = view("memo_method", "SELECT 1 AS one")
    registry = make_registry(cls)
    assert registry.graph().nodes[cls.key()].sql.startswith('CREATE VIEW "public"."memo_method" AS')
    cls.preamble = classmethod(lambda c: f"CREATE OR REPLACE VIEW {c.db_object_identity} AS")  # type: ignore[method-assign, assignment]
    assert registry.graph().nodes[cls.key()].sql.startswith("CREATE OR REPLACE VIEW")


def test_registering_a_class_builds_the_graph_again() -> None:
    first = view("memo_first", "SELECT 1 AS one")
    registry = make_registry(first)
    before = registry.graph()
    second = view("memo_second", "SELECT 1 AS one")
    registry.register(second)
    after = registry.graph()
    assert after is not before
    assert set(after.nodes) == {first.key(), second.key()}
    assert set(before.nodes) == {first.key()}  # a graph already handed out never changes


def test_a_new_class_with_the_same_name_is_a_new_declaration() -> None:
    old = view("memo_same_name", "SELECT 1 AS one")
    graph = graph_of([old])
    new = view("memo_same_name", "SELECT 2 AS two")
    assert old.key() == new.key()
    replaced = graph_of([new])
    assert replaced is not graph
    assert "SELECT 2 AS two" in replaced.nodes[new.key()].sql
    assert "SELECT 1 AS one" in graph_of([old]).nodes[old.key()].sql


def test_the_order_of_the_classes_is_part_of_the_key() -> None:
    a = view("memo_order_a", "SELECT 1 AS one")
    b = view("memo_order_b", "SELECT 1 AS one")
    assert graph_of([a, b]).order == graph_of([b, a]).order  # same graph either way: order is by identity
    assert graph_of([a, b]) is graph_of([a, b])


def test_a_declaration_error_is_never_memoized() -> None:
    cls = view("memo_broken", "SELECT 1 AS one")
    cls.sql_template = "SELECT 1"  # no ${preamble}
    registry = make_registry(cls)
    for _ in range(2):
        try:
            registry.graph()
        except Exception as exc:  # the same error every time, not a memoized graph
            assert "preamble" in str(exc)
        else:
            raise AssertionError("a broken template must fail every time")
    cls.sql_template = "${preamble} SELECT 1 AS one ${postamble}"
    assert cls.key() in registry.graph().nodes


def test_scopes_share_the_graph_but_not_the_signature() -> None:
    cls = view("memo_scoped", "SELECT 1 AS one")
    registry = make_registry(cls, scope="one")
    other = registry.with_scope("two")
    assert other.graph() is registry.graph()
    assert other.scope == "two" and registry.scope == "one"


# --- on a database: no stale plan -------------------------------------------------------------------------------


def test_a_changed_class_is_recreated_on_the_next_sync(engine: sa.Engine) -> None:
    cls = view("memo_live", "SELECT 1 AS one")
    registry = make_registry(cls)
    api.sync(engine, registry)
    assert not api.plan(engine, registry).actions
    oid = relation_oid(engine, "public", "memo_live")
    cls.sql_template = "${preamble} SELECT 2 AS one ${postamble}"
    result = api.sync(engine, registry)
    assert [a.verb.value for a in result.applied] == ["replace"]
    assert relation_oid(engine, "public", "memo_live") == oid
    assert scalar(engine, 'SELECT one FROM "public"."memo_live"') == 2
    assert not api.plan(engine, registry).actions


def test_a_dependency_added_in_place_orders_the_next_sync(engine: sa.Engine) -> None:
    low = view("memo_low", "SELECT 1 AS id")
    high = view("memo_high", 'SELECT id FROM "public"."memo_low"', deps_on=set())
    registry = make_registry(high, low)
    # Without the edge, identity order creates memo_high first, which fails: memo_low does not exist yet.
    assert [k.name for k in registry.graph().order] == ["memo_high", "memo_low"]
    high.deps_on.add(low)  # type: ignore[attr-defined]  # in place: no assignment for the metaclass to count
    result = api.sync(engine, registry)
    assert [(a.verb.value, a.key.name) for a in result.applied] == [("create", "memo_low"), ("create", "memo_high")]
    assert "memo_low" in (view_definition(engine, "memo_high") or "")


def test_a_registry_with_a_new_class_creates_it(engine: sa.Engine) -> None:
    first = view("memo_one", "SELECT 1 AS one")
    registry = make_registry(first)
    api.sync(engine, registry)
    second = matview("memo_two", 'SELECT one FROM "public"."memo_one"', deps_on={first})
    registry.register(second)
    result = api.sync(engine, registry)
    assert [(a.verb.value, a.key.name) for a in result.applied] == [("create", "memo_two"), ("refresh", "memo_two")]


def test_another_scope_plans_for_its_own_signatures(engine: sa.Engine) -> None:
    cls = view("memo_scope_view", "SELECT 1 AS one")
    mine = SamizdatRegistry(scope="mine")
    mine.register(cls)
    api.sync(engine, mine)
    assert not api.plan(engine, mine).actions
    # Same classes, same graph, another scope: the object is someone else's there, so the plan refuses.
    theirs = mine.with_scope("theirs")
    assert theirs.graph() is mine.graph()
    try:
        api.plan(engine, theirs)
    except Exception as exc:
        assert "mine" in str(exc)
    else:
        raise AssertionError("a plan for another scope must see the object as signed by 'mine'")
    assert not api.plan(engine, mine).actions
