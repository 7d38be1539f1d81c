"""Autorefresh triggers, belownodes and refresh order on a real PostgreSQL (classes from alembic_samizdat)."""

from __future__ import annotations

import io
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from helpers import function, make_registry, matview, rows, run_sql, scalar, statement_log, trigger, view

from alembic_samizdat import SamizdatRegistry, TriggerTargetError
from alembic_samizdat.api import plan, refresh, sync
from alembic_samizdat.autorefresh import PREFIX, function_key
from alembic_samizdat.cli import main
from alembic_samizdat.keys import Key
from alembic_samizdat.model import Samizdat
from alembic_samizdat.refresh_plan import UnknownNodeError, select_below

# tgtype bits (pg_trigger.h): ROW 1, BEFORE 2, INSERT 4, DELETE 8, UPDATE 16, TRUNCATE 32, INSTEAD 64.
ROW, BEFORE, INSERT, DELETE, UPDATE, TRUNCATE = 1, 2, 4, 8, 16, 32


def stacked(table: str = "src") -> tuple[type[Samizdat], type[Samizdat], type[Samizdat]]:
    """A <- B <- C, each refreshed by triggers on ``table``; C only sees new rows through a refreshed B."""
    quoted = '"' + table.replace('"', '""') + '"'
    a = matview("A", f"SELECT count(*) AS n, coalesce(sum(x), 0) AS s FROM {quoted}", refresh_triggers={table})
    b = matview("B", 'SELECT n, s FROM "A"', deps_on={a}, refresh_triggers={table})
    c = matview("C", 'SELECT n, s FROM "B"', deps_on={b}, refresh_triggers={table})
    return a, b, c


def generated_triggers(engine: sa.Engine) -> dict[str, tuple[int, int, str]]:
    """tgname -> (oid, tgtype, refreshed view) of every generated trigger."""
    found = rows(
        engine,
        r"""SELECT t.tgname, t.oid::bigint, t.tgtype::int, p.prosrc
            FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid
            WHERE NOT t.tgisinternal AND t.tgname LIKE 'samizdat\_%'""",
    )
    return {r[0]: (r[1], r[2], r[3].split("REFRESH MATERIALIZED VIEW", 1)[1].split(";")[0].strip()) for r in found}


def generated_functions(engine: sa.Engine) -> dict[str, int]:
    """proname -> oid of every generated refresh function."""
    return dict(rows(engine, r"SELECT proname, oid::bigint FROM pg_proc WHERE proname LIKE 'samizdat\_refresh\_%'"))


def sidekick_keys(registry: SamizdatRegistry, *owners: type[Samizdat]) -> set[Key]:
    """The generated function and triggers of ``owners``."""
    graph = registry.graph()
    wanted = {owner.key() for owner in owners}
    return {k for k, item in graph.nodes.items() if item.generated_by in wanted}


@pytest.fixture
def src(engine: sa.Engine) -> sa.Engine:
    run_sql(engine, "CREATE TABLE src (x int)", "INSERT INTO src VALUES (1), (2)")
    return engine


def test_triggers_fire_in_dependency_order(src: sa.Engine) -> None:
    a, b, c = stacked()
    sync(src, make_registry(c, a, b))
    triggers = generated_triggers(src)
    # PostgreSQL fires a table's triggers in name order: A's first, then B's, then C's.
    assert [view for _, (_, _, view) in sorted(triggers.items())] == ['"public"."A"', '"public"."B"', '"public"."C"']
    with src.begin() as conn:
        conn.exec_driver_sql("INSERT INTO src VALUES (10)")
        # Same transaction: C was refreshed after B, which was refreshed after A.
        assert tuple(conn.exec_driver_sql('SELECT n, s FROM "C"').one()) == (3, 13)
    assert tuple(rows(src, 'SELECT n, s FROM "C"')[0]) == (3, 13)
    # Control: with C's trigger renamed to fire first, C reads the old B. The order above is what made it right.
    c_trigger = next(name for name, (_, _, view) in triggers.items() if view == '"public"."C"')
    with src.connect() as conn:
        conn.exec_driver_sql(f'ALTER TRIGGER "{c_trigger}" ON src RENAME TO "samizdat_first"')
        conn.exec_driver_sql("INSERT INTO src VALUES (100)")
        assert tuple(conn.exec_driver_sql('SELECT n, s FROM "B"').one()) == (4, 113)
        assert tuple(conn.exec_driver_sql('SELECT n, s FROM "C"').one()) == (3, 13)
        conn.rollback()


@pytest.mark.parametrize(
    ("statement", "expected"),
    [
        ("INSERT INTO src SELECT g FROM generate_series(10, 12) g", (5, 36)),
        ("UPDATE src SET x = x * 100", (2, 300)),
        ("DELETE FROM src WHERE x = 1", (1, 2)),
        ("TRUNCATE src", (0, 0)),
    ],
)
def test_each_kind_of_statement_refreshes(src: sa.Engine, statement: str, expected: tuple[int, int]) -> None:
    a, b, c = stacked()
    sync(src, make_registry(a, b, c))
    for _, tgtype, _ in generated_triggers(src).values():
        # AFTER, FOR EACH STATEMENT, on every kind of change.
        assert tgtype & (ROW | BEFORE) == 0
        assert tgtype & (INSERT | UPDATE | DELETE | TRUNCATE) == INSERT | UPDATE | DELETE | TRUNCATE
    with src.begin() as conn:
        conn.exec_driver_sql(statement)
        assert tuple(conn.exec_driver_sql('SELECT n, s FROM "C"').one()) == expected
        assert tuple(conn.exec_driver_sql('SELECT n, s FROM "A"').one()) == expected


def test_autorefresh_concurrently(src: sa.Engine) -> None:
    m = matview(
        "M",
        "SELECT x FROM src",
        after=";\nCREATE UNIQUE INDEX ON ${samizdatname} (x)",
        refresh_triggers={"src"},
        refresh_concurrently=True,
    )
    sync(src, make_registry(m))
    assert next(iter(generated_triggers(src).values()))[2] == 'CONCURRENTLY "public"."M"'
    run_sql(src, "INSERT INTO src VALUES (3)")
    assert scalar(src, 'SELECT count(*) FROM "M"') == 3


def test_autorefresh_concurrently_without_a_unique_index_does_not_break_writes(src: sa.Engine) -> None:
    # CONCURRENTLY is impossible here (no unique index): the trigger falls back to a plain refresh.
    m = matview("M", "SELECT x FROM src", refresh_triggers={"src"}, refresh_concurrently=True)
    sync(src, make_registry(m))
    run_sql(src, "INSERT INTO src VALUES (3)")
    assert scalar(src, 'SELECT count(*) FROM "M"') == 3
    run_sql(src, 'CREATE UNIQUE INDEX ON "M" (x)', "INSERT INTO src VALUES (4)")
    assert scalar(src, 'SELECT count(*) FROM "M"') == 4


def test_names_are_stable_when_unrelated_views_come_and_go(src: sa.Engine) -> None:
    run_sql(src, "CREATE TABLE other (y int)")
    a, b, _ = stacked()
    # Unrelated views with autorefresh on the same table (a global counter would renumber A's and B's).
    x = matview("X", "SELECT count(*) AS n FROM src", refresh_triggers={"src", "other"})
    y = matview("Y", "SELECT max(x) AS m FROM src", refresh_triggers={"src"})
    renamed = matview("Renamed", "SELECT max(x) AS m FROM src", refresh_triggers={"src"})
    aa = matview("AA", "SELECT 1 AS one", refresh_triggers={"other"})

    first = make_registry(x, a, b)
    sync(src, first)
    kept = sidekick_keys(first, a, b)
    assert len(kept) == 4  # a function and a trigger for each
    triggers_before = {n: v[0] for n, v in generated_triggers(src).items()}
    functions_before = generated_functions(src)

    for registry in (
        make_registry(x, a, b, y),  # add one
        make_registry(a, b, y, aa),  # remove X, add one sorting before A
        make_registry(a, b, renamed, aa),  # rename Y
        make_registry(a, b),  # remove the rest
    ):
        assert sidekick_keys(registry, a, b) == kept
        planned = plan(src, registry)
        result = sync(src, registry)
        assert [act.describe() for act in result.applied] == [act.describe() for act in planned.actions]
        touched = {action.key for action in planned.actions}
        assert touched, "each step changes something"
        assert not touched & (kept | {a.key(), b.key()})
        now = {n: v[0] for n, v in generated_triggers(src).items()}
        for name, oid in triggers_before.items():
            if name in {k.name for k in kept}:
                assert now[name] == oid, f"trigger {name} was recreated"
        funcs = generated_functions(src)
        for k in kept:
            if k.namespace == "function":
                assert funcs[k.name] == functions_before[k.name]
        assert not sync(src, registry).plan.actions
    # Only A's and B's sidekicks are left, and they still work.
    assert set(generated_triggers(src)) == {k.name for k in kept if k.namespace == "trigger"}
    run_sql(src, "INSERT INTO src VALUES (5)")
    assert tuple(rows(src, 'SELECT n, s FROM "B"')[0]) == (3, 8)


def test_names_are_deterministic_and_fit(src: sa.Engine) -> None:
    a, b, c = stacked()
    sync(src, make_registry(a, b, c))
    names = set(generated_triggers(src)) | set(generated_functions(src))
    # A fresh registry built from the same classes in another order derives the same names.
    again = {k.name for k in sidekick_keys(make_registry(c, b, a), a, b, c)}
    assert names == again and len(names) == 6
    assert all(n.startswith(PREFIX) and len(n.encode()) <= 63 for n in names)
    assert function_key(a.key()).name in names


def test_63_byte_names_cause_no_churn(engine: sa.Engine) -> None:
    long_table = "t" * 60 + "é" + "t"  # 63 bytes, not ASCII
    long_view = "V" * 62 + "w"
    assert len(long_table.encode()) == len(long_view.encode()) == 63
    run_sql(engine, f'CREATE TABLE "{long_table}" (x int)')
    mv = matview(long_view, f'SELECT count(*) AS n FROM "{long_table}"', refresh_triggers={long_table})
    on_top = matview(long_view[:-1] + "x", f'SELECT n FROM "{long_view}"', deps_on={mv}, refresh_triggers={long_table})
    registry = make_registry(mv, on_top)
    first = sync(engine, registry)
    assert len([a for a in first.applied if a.key.namespace == "trigger"]) == 2
    names = set(generated_triggers(engine)) | set(generated_functions(engine))
    assert all(len(n.encode()) <= 63 for n in names)
    assert {k.name for k in sidekick_keys(registry, mv, on_top)} == names  # nothing was truncated
    with statement_log(engine) as log:
        assert not sync(engine, registry).plan.actions
    assert not [s for s in log.statements if s.lstrip().upper().startswith(("CREATE", "DROP"))]
    run_sql(engine, f'INSERT INTO "{long_table}" VALUES (1)')
    assert scalar(engine, f'SELECT n FROM "{long_view[:-1]}x"') == 1


def test_refresh_triggers_on_managed_views_are_refused_before_any_sql(src: sa.Engine) -> None:
    v = view("V", "SELECT x FROM src")
    m = matview("M", "SELECT x FROM src")
    on_view = matview("OnView", 'SELECT x FROM "V"', deps_on={v}, refresh_triggers={"V"})
    on_matview = matview("OnMatview", 'SELECT x FROM "M"', deps_on={m}, refresh_triggers={("public", "M")})
    for registry, target in ((make_registry(v, on_view), '"public"."V"'), (make_registry(m, on_matview), '"M"')):
        with statement_log(src) as log:
            with pytest.raises(TriggerTargetError, match=target):
                sync(src, registry)
            with pytest.raises(TriggerTargetError):
                refresh(src, registry)
        assert log.statements == []
    assert scalar(src, "SELECT count(*) FROM pg_class WHERE relname IN ('V', 'M', 'OnView', 'OnMatview')") == 0


def belownodes_registry() -> tuple[SamizdatRegistry, dict[str, type[Samizdat]]]:
    """One matview reached through each kind of edge from a table, plus an unrelated one."""
    via_unmanaged = matview("ViaUnmanaged", "SELECT count(*) AS n FROM u1", deps_on_unmanaged={"u1"})
    via_deps = matview("ViaDeps", 'SELECT n FROM "ViaUnmanaged"', deps_on={via_unmanaged})
    via_refresh = matview("ViaRefresh", "SELECT count(*) AS n FROM u2", refresh_triggers={"u2"})
    noop = function("noop", "${preamble} RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$")
    trig = trigger(
        "on_u3",
        "${preamble} FOR EACH STATEMENT EXECUTE FUNCTION noop()",
        on_table="u3",
        condition="AFTER INSERT",
        deps_on={noop},
    )
    via_trigger = matview("ViaTrigger", "SELECT count(*) AS n FROM u3", deps_on={trig})
    unrelated = matview("Unrelated", "SELECT 1 AS one")
    classes = [via_unmanaged, via_deps, via_refresh, noop, trig, via_trigger, unrelated]
    return make_registry(*classes), {c.__name__: c for c in classes}


def test_belownodes_through_each_kind_of_edge(engine: sa.Engine) -> None:
    run_sql(engine, "CREATE TABLE u1 (x int)", "CREATE TABLE u2 (x int)", "CREATE TABLE u3 (x int)")
    registry, _ = belownodes_registry()
    graph = registry.graph()

    def below(*nodes: Any) -> list[str]:
        return [k.name for k in select_below(graph, nodes)]

    assert below("u1") == ["ViaUnmanaged", "ViaDeps"]  # deps_on_unmanaged, then deps_on
    assert below("ViaUnmanaged") == ["ViaUnmanaged", "ViaDeps"]  # the view itself and its dependents
    assert below("ViaDeps") == ["ViaDeps"]
    assert below("u2") == ["ViaRefresh"]  # refresh_triggers
    assert below("public.u3") == ["ViaTrigger"]  # a SamizdatTrigger's table
    assert below(("public", "noop")) == ["ViaTrigger"]  # through the function the trigger calls
    both = below("u1", "u2")
    assert sorted(both) == ["ViaDeps", "ViaRefresh", "ViaUnmanaged"]
    assert both.index("ViaUnmanaged") < both.index("ViaDeps")
    assert below("Unrelated") == ["Unrelated"]
    with pytest.raises(UnknownNodeError):
        below("nowhere")

    sync(engine, registry)
    run_sql(engine, "INSERT INTO u1 VALUES (1)", "INSERT INTO u3 VALUES (1)")
    with statement_log(engine) as log:
        result = refresh(engine, registry, belownodes=["u1"])
    assert [k.name for k in result.refreshed] == ["ViaUnmanaged", "ViaDeps"]
    sent = [s for s in log.statements if "REFRESH" in s]
    assert len(sent) == 2 and '"ViaUnmanaged"' in sent[0] and '"ViaDeps"' in sent[1]
    assert scalar(engine, 'SELECT n FROM "ViaDeps"') == 1
    assert scalar(engine, 'SELECT n FROM "ViaTrigger"') == 0  # not below u1
    assert [k.name for k in refresh(engine, registry, belownodes=["u3"]).refreshed] == ["ViaTrigger"]
    assert scalar(engine, 'SELECT n FROM "ViaTrigger"') == 1
    assert [k.name for k in refresh(engine, registry, belownodes=["u2"]).refreshed] == ["ViaRefresh"]


@pytest.mark.parametrize("parallel", [False, True])
def test_three_level_stack_refresh_order(src: sa.Engine, parallel: bool) -> None:
    # No autorefresh here: only an explicit refresh brings C up to date, and only in A, B, C order.
    a = matview("A", "SELECT count(*) AS n FROM src")
    b = matview("B", 'SELECT n FROM "A"', deps_on={a})
    c = matview("C", 'SELECT n FROM "B"', deps_on={b})
    side = matview("Side", "SELECT max(x) AS m FROM src")
    registry = make_registry(c, side, b, a)
    sync(src, registry)
    run_sql(src, "INSERT INTO src VALUES (3)")
    assert scalar(src, 'SELECT n FROM "C"') == 2
    result = refresh(src, registry, parallel=parallel, jobs=2)
    names = [k.name for k in result.refreshed]
    assert names.index("A") < names.index("B") < names.index("C") and sorted(names) == ["A", "B", "C", "Side"]
    assert scalar(src, 'SELECT n FROM "C"') == 3


@pytest.mark.parametrize("parallel", [False, True])
def test_refresh_on_a_connection(src: sa.Engine, parallel: bool) -> None:
    a, b, c = stacked()
    registry = make_registry(a, b, c)
    sync(src, registry)
    with src.connect() as conn:
        result = refresh(conn, registry, parallel=parallel, jobs=2)
        assert not conn.in_transaction()
    assert [k.name for k in result.refreshed] == ["A", "B", "C"]


CLI_MODULE = """
from alembic_samizdat import SamizdatMaterializedView

class A(SamizdatMaterializedView):
    deps_on_unmanaged = {"src"}
    sql_template = "${preamble} SELECT count(*) AS n FROM src ${postamble}"

class B(SamizdatMaterializedView):
    deps_on = {A}
    sql_template = '${preamble} SELECT n FROM "A" ${postamble}'

class C(SamizdatMaterializedView):
    deps_on = {B}
    sql_template = '${preamble} SELECT n FROM "B" ${postamble}'

class Side(SamizdatMaterializedView):
    deps_on_unmanaged = {"src"}
    sql_template = "${preamble} SELECT max(x) AS m FROM src ${postamble}"
"""


class FakeTTY(io.StringIO):
    """A stderr that claims to be a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.fixture
def cli_module(src: sa.Engine, db_url: str, tmp_path: Path) -> str:
    path = tmp_path / "autorefresh_cli_views.py"
    path.write_text(textwrap.dedent(CLI_MODULE))
    assert main(["sync", "-q", db_url, str(path)]) == 0
    run_sql(src, "INSERT INTO src VALUES (3)")
    return str(path)


def test_cli_parallel_refresh(src: sa.Engine, db_url: str, cli_module: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["refresh", "--parallel", "--jobs", "2", db_url, cli_module]) == 0
    captured = capsys.readouterr()
    assert "refreshed 4 materialized view(s)" in captured.out
    lines = [line for line in captured.out.splitlines() if line.strip().startswith("refresh matview")]
    order = [line.split('"public"."')[1].split('"')[0] for line in lines]
    assert order.index("A") < order.index("B") < order.index("C") and len(order) == 4
    # stderr is not a terminal here: no progress line, no control characters.
    assert "\r" not in captured.err and "\x1b" not in captured.err and "[1/4]" not in captured.err
    assert scalar(src, 'SELECT n FROM "C"') == 3

    assert main(["refresh", "--parallel", "-j", "2", db_url, cli_module, "--belownodes", "B"]) == 0
    assert "refreshed 2 materialized view(s)" in capsys.readouterr().out


def test_cli_progress_only_on_a_terminal(
    src: sa.Engine, db_url: str, cli_module: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    tty = FakeTTY()
    monkeypatch.setattr(sys, "stderr", tty)
    assert main(["refresh", "--parallel", "--jobs", "2", db_url, cli_module]) == 0
    assert "[4/4]" in tty.getvalue() and "\r" in tty.getvalue()
    monkeypatch.undo()
    assert main(["refresh", "-q", db_url, cli_module]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
