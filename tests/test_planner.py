"""The pure planner on hand-built database states, without a database: what it drops, creates, replaces,
swaps, refreshes and refuses, and in which units."""

from __future__ import annotations

import pytest
from helpers import dep_row, make_registry, matview, obj_row, state_of, view

from alembic_samizdat import (
    NameClashError,
    SamizdatFunction,
    SamizdatMaterializedView,
    SamizdatTrigger,
    SamizdatView,
    UnmanagedDependentError,
)
from alembic_samizdat.api import DiffResult
from alembic_samizdat.declared import declare
from alembic_samizdat.keys import Key, Kind
from alembic_samizdat.planner import Action, DiffKind, Verb, checkpoint_units, diff, plan_nuke, plan_sync

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


# --- materialized views: swapped in, or populated in their unit ------------------------------------------------


def _mat_stack(factor: int, below_select: str = "SELECT 1 AS x", *, after: str = ""):
    base = view("base", below_select)
    mat = matview("mat", f'SELECT x * {factor} AS y FROM "base"', deps_on={base}, after=after)
    top = view("top", 'SELECT y FROM "mat"', deps_on={mat})
    upper = matview("upper", 'SELECT count(*) AS n FROM "top"', deps_on={top})
    return [base, mat, top, upper]


def _state_for(classes, *, populated: bool = True):
    rows = [obj_row(declare(cls), oid=oid, populated=populated) for oid, cls in enumerate(classes, start=1)]
    rows += [dep_row("pg_class", i, "pg_class", i + 1, "x") for i in range(1, len(classes))]
    return state_of(rows)


def _steps(plan) -> list[tuple[str, str, int | None]]:
    return [(a.verb.value, a.key.name, a.unit) for a in plan.actions]


def test_a_changed_matview_is_built_first_then_swapped_in_one_unit() -> None:
    plan = plan_sync(make_registry(*_mat_stack(2)).graph(), _state_for(_mat_stack(1)))
    steps = _steps(plan)
    assert steps[0][:2] == ("build", "mat")
    assert {unit for _, _, unit in steps} == {steps[0][2]}  # one unit: build, drops, creates, populate
    assert [s[:2] for s in steps[1:]] == [
        ("drop", "upper"),
        ("drop", "top"),
        ("drop", "mat"),
        ("create", "mat"),
        ("create", "top"),
        ("create", "upper"),
        ("refresh", "upper"),
    ]
    build, move = plan.actions[0], next(a for a in plan.actions if a.verb is Verb.CREATE and a.key.name == "mat")
    schema = build.statements[0].removeprefix("CREATE SCHEMA ").strip('"')
    assert schema.startswith("samizdat_swap_")
    assert f'CREATE MATERIALIZED VIEW "{schema}"."mat" AS' in build.statements[1] and "WITH DATA" in build.statements[1]
    assert move.statements[:2] == (
        f'ALTER MATERIALIZED VIEW "{schema}"."mat" SET SCHEMA "public"',
        f'DROP SCHEMA "{schema}"',
    )


def test_no_swap_when_what_it_reads_changes_too_and_the_populate_moves_into_the_unit() -> None:
    # The view below loses its column: rebuilt, so the matview is rebuilt after it and populated in the unit.
    plan = plan_sync(make_registry(*_mat_stack(2, "SELECT 1 AS x, 2 AS z")).graph(), _state_for(_mat_stack(1)))
    assert all(a.verb is not Verb.BUILD for a in plan.actions)
    populate = [a for a in plan.actions if a.verb is Verb.REFRESH]
    assert [a.key.name for a in populate] == ["mat", "upper"]
    assert {a.unit for a in populate} == {plan.actions[0].unit}


@pytest.mark.parametrize(
    ("why", "kwargs"),
    [
        ("swap turned off", {"swap": False}),
        ("rebuild asked", {"rebuild": {Key("relation", "public", "mat"): "because"}}),
    ],
)
def test_no_swap_when_asked(why: str, kwargs) -> None:
    plan = plan_sync(make_registry(*_mat_stack(2)).graph(), _state_for(_mat_stack(1)), **kwargs)
    assert all(a.verb is not Verb.BUILD for a in plan.actions), why
    assert ("refresh", "mat") in [s[:2] for s in _steps(plan)]


def test_no_swap_for_an_unpopulated_view_or_a_template_naming_itself() -> None:
    plan = plan_sync(make_registry(*_mat_stack(2)).graph(), _state_for(_mat_stack(1), populated=False))
    assert all(a.verb is not Verb.BUILD for a in plan.actions)
    named = _mat_stack(2, after=';\nCREATE INDEX mat_y ON "mat" (y)')
    plan = plan_sync(
        make_registry(*named).graph(), _state_for(_mat_stack(1, after=';\nCREATE INDEX mat_y ON "mat" (y)'))
    )
    assert all(a.verb is not Verb.BUILD for a in plan.actions)


def test_actions_carry_what_the_alembic_comparator_needs() -> None:
    plan = plan_sync(make_registry(*_mat_stack(2)).graph(), _state_for(_mat_stack(1)))
    drop = next(a for a in plan.actions if a.verb is Verb.DROP and a.key.name == "mat")
    create = next(a for a in plan.actions if a.verb is Verb.CREATE and a.key.name == "mat")
    assert drop.old is not None and drop.drop == 'DROP MATERIALIZED VIEW "public"."mat"'
    assert create.drop == drop.drop and create.scope == "default"
    signature = create.signature()
    assert signature is not None and '"sql"' not in signature and '"scope":"default"' in signature
